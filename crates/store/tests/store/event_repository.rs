//! The cqrs-es repository over both backends: optimistic concurrency, snapshots, metadata,
//! checkpoints and the log reader.

use std::sync::Arc;

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, SemanticVersionEventUpcaster, SerializedEvent,
};
use cqrs_es::{Aggregate, AggregateError, CqrsFramework};
use sparc_store::checkpoint::{self, Checkpoint};
use sparc_store::testing::{self, SqliteTestFile};
use sparc_store::{Backend, Database, EventMetadata, EventRepository, LogReader, snapshot_store};
use tokio::sync::Barrier;

use crate::support::{
    Counter, CounterCommand, Lockstep, append, both_backends, execute, postgres_with_pool,
    wait_until_readable,
};

#[tokio::test]
async fn event_repository_detects_optimistic_conflicts_on_both_backends() {
    for (db, _file) in both_backends().await {
        let cqrs = Arc::new(CqrsFramework::new(
            snapshot_store::<Counter>(&db, 2),
            vec![],
            Lockstep(Barrier::new(2)),
        ));
        cqrs.execute("c-1", CounterCommand::Add(1)).await.unwrap();

        // Both commands load version 1, wait for each other, then both commit version 2.
        let racers = [1, 2].map(|amount| {
            let cqrs = Arc::clone(&cqrs);
            tokio::spawn(async move {
                cqrs.execute("c-1", CounterCommand::AddInLockstep(amount))
                    .await
            })
        });
        let mut results = Vec::new();
        for racer in racers {
            results.push(racer.await.unwrap());
        }
        let conflicts = results
            .iter()
            .filter(|r| matches!(r, Err(AggregateError::AggregateConflict)))
            .count();
        assert_eq!(conflicts, 1, "{}: {results:?}", db.backend());
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);

        let stored = EventRepository::new(&db)
            .get_events::<Counter>("c-1")
            .await
            .unwrap();
        assert_eq!(stored.len(), 2, "{}", db.backend());

        // The same conflict straight through the repository.
        let mut duplicate = stored[1].clone();
        duplicate.payload = serde_json::json!({ "Added": { "amount": 99 } });
        let error = EventRepository::new(&db)
            .persist::<Counter>(&[duplicate], None)
            .await
            .unwrap_err();
        assert!(
            matches!(error, PersistenceError::OptimisticLockError),
            "{}: {error:?}",
            db.backend()
        );
    }
}

#[tokio::test]
async fn concurrent_single_event_appends_all_land_and_exactly_one_racer_per_sequence_wins() {
    for (db, _file) in both_backends().await {
        let repo = Arc::new(EventRepository::new(&db));
        let event = |stream: String, sequence: usize, racer: usize| {
            SerializedEvent::new(
                stream,
                sequence,
                Counter::TYPE.to_string(),
                "Added".to_string(),
                "1.0".to_string(),
                serde_json::json!({ "Added": { "amount": racer } }),
                serde_json::json!({ "actor": format!("racer-{racer}") }),
            )
        };
        // 40 streams, each appended to by 5 racers at once with the same first sequence, all
        // 200 appends in flight together (on Postgres they share statements).
        let appends: Vec<_> = (0..200)
            .map(|n| {
                let repo = Arc::clone(&repo);
                let event = event(format!("race-{}", n % 40), 1, n);
                tokio::spawn(async move { (n, repo.persist::<Counter>(&[event], None).await) })
            })
            .collect();
        let mut winners = std::collections::HashMap::new();
        for append in appends {
            let (racer, result) = append.await.unwrap();
            match result {
                Ok(()) => assert!(
                    winners.insert(racer % 40, racer).is_none(),
                    "{}: two winners on stream race-{}",
                    db.backend(),
                    racer % 40
                ),
                Err(PersistenceError::OptimisticLockError) => {}
                Err(other) => panic!("{}: racer {racer} failed: {other:?}", db.backend()),
            }
        }
        assert_eq!(winners.len(), 40, "{}: one winner per stream", db.backend());
        for (stream, winner) in winners {
            let stored = repo
                .get_events::<Counter>(&format!("race-{stream}"))
                .await
                .unwrap();
            assert_eq!(stored.len(), 1, "{}", db.backend());
            assert_eq!(
                stored[0].payload,
                serde_json::json!({ "Added": { "amount": winner } }),
                "{}: the stored event is the winner's",
                db.backend()
            );
            assert_eq!(
                stored[0].metadata,
                serde_json::json!({ "actor": format!("racer-{winner}") })
            );
        }
    }
}

#[tokio::test]
async fn single_event_appends_go_on_after_the_database_dropped_every_connection() {
    let Some((db, pool)) = postgres_with_pool().await else {
        return;
    };
    let repo = EventRepository::new(&db);
    let event = |stream: &str| {
        SerializedEvent::new(
            stream.to_string(),
            1,
            Counter::TYPE.to_string(),
            "Added".to_string(),
            "1.0".to_string(),
            serde_json::json!({ "Added": { "amount": 1 } }),
            serde_json::json!({ "actor": "test" }),
        )
    };
    // One after the other, so that each worker (they take turns) opens its connection.
    for n in 0..8 {
        repo.persist::<Counter>(&[event(&format!("before-{n}"))], None)
            .await
            .expect("an append before");
    }

    // As a database restart or an administrator would: every other session of this database
    // ends, the group commit's own connections among them.
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!ended.is_empty(), "the group commit holds connections");
    // Idle for longer than a connection is trusted without a test.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    for n in 0..8 {
        let stream = format!("after-{n}");
        repo.persist::<Counter>(&[event(&stream)], None)
            .await
            .expect("an append after the connections were dropped");
        assert_eq!(repo.get_events::<Counter>(&stream).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn events_land_with_their_metadata_and_snapshots_hold_the_right_state() {
    for (db, _file) in both_backends().await {
        let cqrs = CqrsFramework::new(
            snapshot_store::<Counter>(&db, 2),
            vec![],
            Lockstep(Barrier::new(1)),
        );
        let metadata = EventMetadata::new("user-7", "req-1")
            .with_ip("192.0.2.1")
            .with_user_agent("test-agent/1");

        cqrs.execute_with_metadata("c-2", CounterCommand::Add(5), metadata.clone().into_map())
            .await
            .unwrap();
        // Two more commands, across a snapshot (every 2 events), and a rejected one.
        cqrs.execute("c-2", CounterCommand::Add(1)).await.unwrap();
        cqrs.execute("c-2", CounterCommand::Add(2)).await.unwrap();
        let rejected = cqrs.execute("c-2", CounterCommand::Add(-1)).await;
        assert!(matches!(rejected, Err(AggregateError::UserError(_))));
        cqrs.execute("c-2", CounterCommand::Add(4)).await.unwrap();

        let events = LogReader::new(&db)
            .aggregate_events("Counter", "c-2", 0, 100)
            .await
            .unwrap();
        let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, vec![1, 2, 3, 4]);
        assert_eq!(
            EventMetadata::from_json(&events[0].metadata).unwrap(),
            metadata,
            "{}",
            db.backend()
        );
        assert_eq!(
            events[0].payload,
            serde_json::json!({ "Added": { "amount": 5 } })
        );
        assert_eq!(
            events[3].payload,
            serde_json::json!({ "Added": { "amount": 4 } })
        );

        let snapshot = EventRepository::new(&db)
            .get_snapshot::<Counter>("c-2")
            .await
            .unwrap()
            .expect("a snapshot every 2 events");
        assert_eq!(snapshot.current_sequence, 4);
        assert_eq!(snapshot.aggregate, serde_json::json!({ "value": 12 }));
    }
}

#[tokio::test]
async fn log_reader_reads_the_log_in_global_order_and_reports_lag() {
    for (db, _file) in both_backends().await {
        append(&db, "a", 1, 3).await;
        append(&db, "b", 1, 2).await;
        append(&db, "a", 4, 1).await;
        wait_until_readable(&db, 6).await;
        let reader = LogReader::new(&db);

        let first = reader.read_after(Checkpoint::ORIGIN, 4).await.unwrap();
        let rest = reader.read_after(first[3].checkpoint(), 4).await.unwrap();
        let all: Vec<(String, i64)> = first
            .iter()
            .chain(&rest)
            .map(|e| (e.aggregate_id.clone(), e.sequence))
            .collect();
        let expected = [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("a", 4)];
        assert_eq!(all, expected.map(|(id, seq)| (id.to_string(), seq)));
        let checkpoints: Vec<Checkpoint> =
            first.iter().chain(&rest).map(|e| e.checkpoint()).collect();
        assert!(
            checkpoints.windows(2).all(|w| w[0] < w[1]),
            "{checkpoints:?}"
        );
        if db.backend() == Backend::Sqlite {
            let positions: Vec<i64> = checkpoints.iter().map(|c| c.position).collect();
            assert_eq!(positions, vec![1, 2, 3, 4, 5, 6], "gap-free on SQLite");
        }

        let stats = reader.stats().await.unwrap();
        assert_eq!(stats.events, 6);
        assert_eq!(stats.last_position, checkpoints[5].position);
        assert!(stats.last_recorded_at.is_some());
        assert_eq!(reader.count_after(Checkpoint::ORIGIN).await.unwrap(), 6);
        assert_eq!(reader.count_after(checkpoints[1]).await.unwrap(), 4);
        assert_eq!(reader.count_after(checkpoints[5]).await.unwrap(), 0);

        let tail = reader
            .aggregate_events("Counter", "a", 2, 10)
            .await
            .unwrap();
        let tail: Vec<i64> = tail.iter().map(|e| e.sequence).collect();
        assert_eq!(tail, vec![3, 4]);
    }
}

#[tokio::test]
async fn checkpoints_commit_with_the_transaction_and_roll_back_with_it() {
    for (db, _file) in both_backends().await {
        assert_eq!(
            checkpoint::load(&db, "tasks").await.unwrap(),
            Checkpoint::ORIGIN
        );
        let saved = Checkpoint {
            transaction_id: 0,
            position: 5,
        };

        let mut tx = db.begin().await.unwrap();
        assert_eq!(
            tx.lock_checkpoint("tasks").await.unwrap(),
            Checkpoint::ORIGIN
        );
        tx.save_checkpoint("tasks", saved).await.unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(
            checkpoint::load(&db, "tasks").await.unwrap(),
            Checkpoint::ORIGIN
        );

        let mut tx = db.begin().await.unwrap();
        tx.save_checkpoint("tasks", saved).await.unwrap();
        assert_eq!(tx.load_checkpoint("tasks").await.unwrap(), saved);
        tx.commit().await.unwrap();
        assert_eq!(checkpoint::load(&db, "tasks").await.unwrap(), saved);
        assert_eq!(
            checkpoint::list(&db).await.unwrap(),
            vec![("tasks".to_string(), saved)]
        );

        let mut tx = db.begin().await.unwrap();
        tx.delete_checkpoint("tasks").await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            checkpoint::load(&db, "tasks").await.unwrap(),
            Checkpoint::ORIGIN
        );
    }
}

#[tokio::test]
async fn checkpoints_of_several_consumers_lock_and_save_together_in_the_order_asked() {
    for (db, _file) in both_backends().await {
        let tasks_at = Checkpoint {
            transaction_id: 0,
            position: 3,
        };
        let mut tx = db.begin().await.unwrap();
        tx.save_checkpoint("tasks", tasks_at).await.unwrap();
        tx.commit().await.unwrap();

        let mut tx = db.begin().await.unwrap();
        assert_eq!(
            tx.lock_checkpoints(&["users", "tasks", "agents"])
                .await
                .unwrap(),
            vec![Checkpoint::ORIGIN, tasks_at, Checkpoint::ORIGIN],
            "each name's checkpoint, in the order asked; the origin for one never saved"
        );
        let moved = Checkpoint {
            transaction_id: 0,
            position: 9,
        };
        tx.save_checkpoints(&["users", "tasks"], moved)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(
            checkpoint::load(&db, "users").await.unwrap(),
            Checkpoint::ORIGIN
        );

        let mut tx = db.begin().await.unwrap();
        tx.lock_checkpoints(&["users", "tasks"]).await.unwrap();
        tx.save_checkpoints(&["users", "tasks"], moved)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            checkpoint::list(&db).await.unwrap(),
            vec![("tasks".to_string(), moved), ("users".to_string(), moved)]
        );
    }
}

#[tokio::test]
async fn a_consumer_waits_while_a_group_holding_its_checkpoint_is_in_a_transaction() {
    let Some(db) = testing::postgres_database().await else {
        return;
    };
    let mut group = db.begin().await.unwrap();
    group.lock_checkpoints(&["tasks", "users"]).await.unwrap();
    let single = tokio::spawn({
        let db = db.clone();
        async move {
            let mut tx = db.begin().await.unwrap();
            let at = tx.lock_checkpoint("users").await.unwrap();
            tx.rollback().await.unwrap();
            at
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !single.is_finished(),
        "the lock of 'users' is held by the group"
    );
    let moved = Checkpoint {
        transaction_id: 0,
        position: 4,
    };
    group
        .save_checkpoints(&["tasks", "users"], moved)
        .await
        .unwrap();
    group.commit().await.unwrap();
    assert_eq!(
        single.await.unwrap(),
        moved,
        "after the wait it sees the group's commit"
    );
}

/// Whether `lock` is still waiting 300 ms after it started.
async fn still_waiting<T>(lock: &tokio::task::JoinHandle<T>) -> bool {
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    !lock.is_finished()
}

#[tokio::test]
async fn a_transaction_begun_locking_checkpoints_holds_their_locks_and_the_numbering_lock() {
    let Some(db) = testing::postgres_database().await else {
        return;
    };
    // A plain name goes into the `BEGIN` as a literal, one with a quote through a parameter.
    for name in ["tasks", "it's"] {
        let mut group = db.begin_locking_checkpoints(&[name], true).await.unwrap();
        assert_eq!(
            group.read_locked_checkpoints(&[name]).await.unwrap(),
            vec![Checkpoint::ORIGIN]
        );
        let consumer = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin().await.unwrap();
                let at = tx.lock_checkpoint(name).await.unwrap();
                tx.rollback().await.unwrap();
                at
            }
        });
        let relay = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin().await.unwrap();
                tx.lock_outbox_numbering().await.unwrap();
                tx.rollback().await.unwrap();
            }
        });
        assert!(
            still_waiting(&consumer).await,
            "{name}: its checkpoint is held"
        );
        assert!(still_waiting(&relay).await, "{name}: numbering is held");
        let moved = Checkpoint {
            transaction_id: 0,
            position: 7,
        };
        group.save_checkpoint(name, moved).await.unwrap();
        group.commit().await.unwrap();
        assert_eq!(consumer.await.unwrap(), moved);
        relay.await.unwrap();
    }
}

#[tokio::test]
async fn connect_creates_the_sqlite_file_and_reports_pending_migrations_until_migrated() {
    let file = SqliteTestFile::new();
    let nested = file.path().with_extension("d").join("deeper/sparc.db");
    let db = Database::connect(&format!("sqlite://{}", nested.display()))
        .await
        .unwrap();
    assert!(nested.exists());
    assert_eq!(db.backend().to_string(), "sqlite");
    assert!(db.ping().await);
    assert!(db.pending_migrations().await.unwrap());
    db.migrate().await.unwrap();
    assert!(!db.pending_migrations().await.unwrap());
    drop(db);
    std::fs::remove_dir_all(file.path().with_extension("d")).unwrap();

    if let Some(pg) = testing::postgres_database().await {
        assert_eq!(pg.backend().to_string(), "postgres");
        assert!(pg.ping().await);
        assert!(!pg.pending_migrations().await.unwrap());
    }
    assert!(Database::connect("mysql://localhost/x").await.is_err());
}

#[tokio::test]
async fn stores_upcast_old_events_and_replay_everything_when_a_snapshot_is_stale() {
    for (db, _file) in both_backends().await {
        // An event stored by an older version: `Added` v0.9 had `n` instead of `amount`.
        let old = SerializedEvent::new(
            "u-1".to_string(),
            1,
            "Counter".to_string(),
            "Added".to_string(),
            "0.9".to_string(),
            serde_json::json!({ "Added": { "n": 3 } }),
            serde_json::json!({}),
        );
        EventRepository::new(&db)
            .persist::<Counter>(&[old], None)
            .await
            .unwrap();
        let upcaster = SemanticVersionEventUpcaster::new(
            "Added",
            "1.0",
            Box::new(|mut payload: serde_json::Value| {
                let n = payload["Added"]["n"].take();
                payload["Added"] = serde_json::json!({ "amount": n });
                payload
            }),
        );
        let cqrs = CqrsFramework::new(
            snapshot_store::<Counter>(&db, 2).with_upcasters(vec![Box::new(upcaster)]),
            vec![],
            Lockstep(Barrier::new(1)),
        );
        cqrs.execute("u-1", CounterCommand::Add(1)).await.unwrap(); // snapshot at 2
        let snapshot = |db: Database| async move {
            EventRepository::new(&db)
                .get_snapshot::<Counter>("u-1")
                .await
                .unwrap()
                .unwrap()
        };
        assert_eq!(
            snapshot(db.clone()).await.aggregate,
            serde_json::json!({ "value": 4 })
        );

        // The aggregate's shape changed: the snapshot no longer deserializes.
        execute(&db, r#"UPDATE snapshots SET payload = '{"valeur": 4}'"#).await;
        cqrs.execute("u-1", CounterCommand::Add(2)).await.unwrap();
        cqrs.execute("u-1", CounterCommand::Add(5)).await.unwrap(); // snapshot at 4
        let rewritten = snapshot(db.clone()).await;
        assert_eq!(rewritten.aggregate, serde_json::json!({ "value": 11 }));
        assert_eq!(
            (rewritten.current_sequence, rewritten.current_snapshot),
            (4, 2)
        );
        let rows = match &db {
            Database::Postgres(pool) => {
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM snapshots")
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
            Database::Sqlite(pool) => {
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM snapshots")
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            rows,
            1,
            "{}: the stale snapshot is overwritten",
            db.backend()
        );
    }
}
