//! The relay against real databases (SQLite, and Postgres at 127.0.0.1:5432) and a real NATS
//! server (127.0.0.1:4222): what it publishes, in which order, when, and what survives a crash.
//!
//! The outbox rows and checkpoints are written here directly, as the projections would write
//! them, so each test controls exactly which rows are committed and how far each projection got.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use sparc_bus::{
    BusStatus, Change, ChangeBus, ChangeKind, ChangeStream, InProcessBus, NatsBus, Outbox, Relay,
    ReplaySize, Subjects, Visibility,
};
use sparc_store::outbox::NumberedChange;
use sparc_store::{Checkpoint, Database, Generations};
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

/// Writes an outbox row as a projection would: `(transaction_id, position)` in the log, a task
/// of `owner` (or an agent when `owner` is `None`).
async fn outbox_row(db: &Database, transaction_id: i64, position: i64, owner: Option<Uuid>) {
    outbox_row_at(db, transaction_id, position, owner, &now()).await;
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

async fn outbox_row_at(
    db: &Database,
    transaction_id: i64,
    position: i64,
    owner: Option<Uuid>,
    recorded_at: &str,
) {
    let kind = if owner.is_some() { "tasks" } else { "agents" };
    let sql = "INSERT INTO outbox (position, transaction_id, kind, aggregate_id, audience, version, \
               event_type, state, recorded_at) VALUES ($1, $2, $3, $4, $5, 1, 'Happened', $6, $7)";
    let state = format!(r#"{{"position":{position}}}"#);
    let audience = owner.map(|o| o.to_string());
    let id = format!("aggregate-{position}");
    match db {
        Database::Postgres(pool) => {
            sqlx::query(sql)
                .bind(position)
                .bind(transaction_id)
                .bind(kind)
                .bind(id)
                .bind(audience)
                .bind(state)
                .bind(recorded_at)
                .execute(pool)
                .await
                .expect("the outbox row should insert");
        }
        Database::Sqlite(pool) => {
            sqlx::query(sql)
                .bind(position)
                .bind(transaction_id)
                .bind(kind)
                .bind(id)
                .bind(audience)
                .bind(state)
                .bind(recorded_at)
                .execute(pool)
                .await
                .expect("the outbox row should insert");
        }
    }
}

/// Moves the four publishing projections' checkpoints to `(transaction_id, position)`, except
/// `laggard`, which stays at `laggard_at`.
async fn checkpoints(db: &Database, at: Checkpoint, laggard: Option<(ChangeKind, Checkpoint)>) {
    let mut tx = db.begin().await.expect("a transaction should begin");
    for kind in ChangeKind::ALL {
        let checkpoint = match laggard {
            Some((slow, slow_at)) if slow == kind => slow_at,
            _ => at,
        };
        tx.save_checkpoint(kind.read_model(), checkpoint)
            .await
            .expect("the checkpoint should save");
    }
    tx.commit().await.expect("the checkpoints should commit");
}

fn at(transaction_id: i64, position: i64) -> Checkpoint {
    Checkpoint {
        transaction_id,
        position,
    }
}

async fn next(stream: &mut ChangeStream) -> Arc<Change> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a change should arrive within 10 s")
        .expect("the subscription should stay open")
}

async fn nothing_more(stream: &mut ChangeStream) {
    let extra = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(extra.is_err(), "no further change expected: {extra:?}");
}

/// A NATS bus with names of its own, or `None` (after saying so) when NATS is not running
/// outside CI.
async fn nats_bus(url: &str) -> Option<NatsBus> {
    let reachable = tokio::net::TcpStream::connect(url.trim_start_matches("nats://")).await;
    if reachable.is_err() {
        sparc_store::testing::service_missing(&format!("NATS at {url}"));
        return None;
    }
    let namespace = format!("t{}", Uuid::new_v4().simple());
    Some(
        NatsBus::connect(url, Subjects::new(namespace))
            .await
            .expect("the NATS client should start"),
    )
}

async fn delete_stream(bus: &NatsBus) {
    let _ = bus.jetstream().delete_stream(bus.subjects().stream()).await;
}

async fn stream_messages(bus: &NatsBus) -> u64 {
    let mut stream = bus
        .jetstream()
        .get_stream(bus.subjects().stream())
        .await
        .expect("the stream should exist");
    stream
        .info()
        .await
        .expect("the stream should describe itself")
        .state
        .messages
}

async fn relay_publishes_only_rows_every_projection_has_passed_in_log_order(db: Database) {
    let bus = Arc::new(InProcessBus::new());
    let mut changes = bus.subscribe().await.expect("subscribes");
    let relay = Relay::new(db.clone(), bus.clone());
    let alice = Uuid::new_v4();
    // Inserted out of log order: the relay must order by (transaction_id, position).
    outbox_row(&db, 5, 12, Some(alice)).await;
    outbox_row(&db, 5, 10, None).await;
    outbox_row(&db, 7, 11, Some(alice)).await;
    outbox_row(&db, 9, 13, Some(alice)).await;

    assert_eq!(
        relay.step().await.expect("a pass"),
        0,
        "no projection has a checkpoint yet"
    );
    checkpoints(&db, at(9, 13), Some((ChangeKind::Agent, at(7, 11)))).await;
    assert_eq!(relay.step().await.expect("a pass"), 3);
    let first: Vec<(i64, String)> = [
        next(&mut changes).await,
        next(&mut changes).await,
        next(&mut changes).await,
    ]
    .iter()
    .map(|c| (c.event_id, c.aggregate_id.clone()))
    .collect();
    assert_eq!(
        first,
        vec![
            (1, "aggregate-10".to_owned()),
            (2, "aggregate-12".to_owned()),
            (3, "aggregate-11".to_owned())
        ]
    );
    nothing_more(&mut changes).await;

    checkpoints(&db, at(9, 13), None).await;
    assert_eq!(relay.step().await.expect("a pass"), 1);
    let last = next(&mut changes).await;
    assert_eq!(
        (last.event_id, last.aggregate_id.as_str()),
        (4, "aggregate-13")
    );
    assert_eq!(last.kind, ChangeKind::Task);
    assert_eq!(last.audience, Some(alice));
    assert_eq!(relay.step().await.expect("a pass"), 0, "all done");
    nothing_more(&mut changes).await;
}

async fn replay_reads_what_a_user_may_see_in_event_order(db: Database) {
    let bus = Arc::new(InProcessBus::new());
    let relay = Relay::new(db.clone(), bus);
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    outbox_row(&db, 1, 1, Some(alice)).await;
    outbox_row(&db, 1, 2, Some(bob)).await;
    outbox_row(&db, 1, 3, None).await;
    outbox_row(&db, 1, 4, Some(alice)).await;
    checkpoints(&db, at(1, 4), None).await;
    relay.step().await.expect("a pass");

    let outbox = Outbox::new(&db);
    let ids = |changes: Vec<Change>| changes.iter().map(|c| c.event_id).collect::<Vec<_>>();
    let retained = outbox.retained().await.expect("reads");
    assert_eq!((retained.head, retained.pruned_through), (4, 0));
    let alices = outbox
        .between(Visibility::User(alice), 0, 4, 100)
        .await
        .expect("reads");
    assert_eq!(ids(alices), vec![1, 3, 4]);
    let bobs = outbox
        .between(Visibility::User(bob), 1, 4, 100)
        .await
        .expect("reads");
    assert_eq!(ids(bobs), vec![2, 3]);
    let everything = outbox
        .between(Visibility::Everything, 1, 3, 100)
        .await
        .expect("reads");
    assert_eq!(ids(everything), vec![2, 3]);
    // Each state is `{"position":N}`: 14 bytes.
    assert_eq!(
        outbox
            .size_between(Visibility::User(alice), 0, 4, 100)
            .await
            .expect("counts"),
        ReplaySize {
            changes: 3,
            bytes: 3 * 14
        }
    );
    assert_eq!(
        outbox
            .size_between(Visibility::Everything, 0, 4, 2)
            .await
            .expect("counts")
            .changes,
        2,
        "the count stops at its cap"
    );
}

/// A change of `owner`'s task that the read-model loop numbered `event_id`, as it hands it over.
fn numbered(event_id: i64, owner: Uuid) -> NumberedChange {
    NumberedChange {
        event_id,
        kind: "tasks".to_owned(),
        aggregate_id: format!("aggregate-{event_id}"),
        audience: Some(owner.to_string()),
        version: 1,
        event_type: "Happened".to_owned(),
        state: format!(r#"{{"position":{event_id}}}"#),
        recorded_at: now(),
    }
}

/// Writes an outbox row already numbered `event_id` (at position `event_id`), as the read-model
/// loop of another instance would.
async fn numbered_row(db: &Database, event_id: i64, owner: Uuid) {
    outbox_row(db, 1, event_id, Some(owner)).await;
    let sql = "UPDATE outbox SET published_seq = $1 WHERE position = $1";
    match db {
        Database::Postgres(pool) => sqlx::query(sql)
            .bind(event_id)
            .execute(pool)
            .await
            .map(drop),
        Database::Sqlite(pool) => sqlx::query(sql)
            .bind(event_id)
            .execute(pool)
            .await
            .map(drop),
    }
    .expect("the row should be numbered");
}

async fn a_fed_relay_publishes_what_follows_at_once_and_reads_the_outbox_after_a_gap(db: Database) {
    let bus = Arc::new(InProcessBus::new());
    let mut changes = bus.subscribe().await.expect("subscribes");
    let (feed, fed) = broadcast::channel(16);
    let (stop, stopped) = watch::channel(false);
    // It polls once an hour: within this test only what it is fed wakes it.
    let relay = Relay::new(db.clone(), bus.clone())
        .with_poll_interval(Duration::from_secs(3600))
        .with_feed(fed);
    let running = tokio::spawn(relay.run(stopped));
    let owner = Uuid::new_v4();

    // Rows that follow the last published change go out as they were handed over: these two
    // are not even in the outbox, so only the feed can have delivered them.
    feed.send(vec![numbered(1, owner), numbered(2, owner)].into())
        .expect("the relay listens");
    assert_eq!(next(&mut changes).await.event_id, 1);
    let second = next(&mut changes).await;
    assert_eq!(
        (second.event_id, second.aggregate_id.as_str()),
        (2, "aggregate-2")
    );
    assert_eq!(second.audience, Some(owner));

    // Another instance numbered 3 and 4: handed 5, the relay sees the gap and reads the outbox.
    for event_id in 3..=5 {
        numbered_row(&db, event_id, owner).await;
    }
    feed.send(vec![numbered(5, owner)].into())
        .expect("the relay listens");
    for expected in 3..=5 {
        assert_eq!(next(&mut changes).await.event_id, expected);
    }
    nothing_more(&mut changes).await;

    // A batch that left its row unnumbered only wakes the relay, which numbers and publishes it.
    outbox_row(&db, 1, 6, Some(owner)).await;
    checkpoints(&db, at(1, 6), None).await;
    feed.send(Vec::new().into()).expect("the relay listens");
    let sixth = next(&mut changes).await;
    assert_eq!(
        (sixth.event_id, sixth.aggregate_id.as_str()),
        (6, "aggregate-6")
    );
    nothing_more(&mut changes).await;

    stop.send(true).expect("the relay listens");
    running.await.expect("the relay stops cleanly");
}

/// While the read-model loop runs in another instance the feed is silent: that instance's
/// change notices wake the relay, which reads what it numbered from the outbox.
async fn a_relay_whose_read_models_run_elsewhere_publishes_at_their_change_notice(db: Database) {
    let bus = Arc::new(InProcessBus::new());
    let mut changes = bus.subscribe().await.expect("subscribes");
    let (feed, fed) = broadcast::channel(16);
    let (_loop_moved, loop_runs_here) = watch::channel(false);
    let generations = Generations::default();
    let (stop, stopped) = watch::channel(false);
    // It polls once an hour: within this test only a notice wakes it.
    let relay = Relay::new(db.clone(), bus.clone())
        .with_poll_interval(Duration::from_secs(3600))
        .with_feed(fed)
        .with_change_notices(generations.clone(), loop_runs_here);
    let running = tokio::spawn(relay.run(stopped));
    let owner = Uuid::new_v4();
    // The loop ran here for a batch, then moved to another instance.
    feed.send(vec![numbered(1, owner)].into())
        .expect("the relay listens");
    assert_eq!(next(&mut changes).await.event_id, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    numbered_row(&db, 2, owner).await;
    // The notice may come before the relay waits for one: it is sent until the change is out.
    let published = async {
        loop {
            generations.bump("tasks");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let second = tokio::select! {
        change = next(&mut changes) => change,
        () = published => unreachable!("the notices go on until the change is out"),
    };
    assert_eq!((second.event_id, second.audience), (2, Some(owner)));
    stop.send(true).expect("the relay listens");
    running.await.expect("the relay stops cleanly");
}

async fn changes_beyond_retention_are_pruned_and_numbering_carries_on(db: Database) {
    let bus = Arc::new(InProcessBus::new());
    let relay = Relay::new(db.clone(), bus).with_retention(Duration::from_secs(3600));
    let alice = Uuid::new_v4();
    let old = "2020-01-01T00:00:00.000000Z";
    outbox_row_at(&db, 1, 1, Some(alice), old).await;
    outbox_row_at(&db, 1, 2, Some(alice), old).await;
    checkpoints(&db, at(1, 2), None).await;
    relay.step().await.expect("a pass");

    assert_eq!(relay.prune().await.expect("prunes"), 2);
    assert_eq!(
        relay.prune().await.expect("prunes"),
        0,
        "nothing more is old"
    );
    let outbox = Outbox::new(&db);
    let retained = outbox.retained().await.expect("reads");
    assert_eq!((retained.head, retained.pruned_through), (2, 2));

    // The outbox is empty now; the next change still gets the next event id.
    outbox_row(&db, 1, 3, Some(alice)).await;
    checkpoints(&db, at(1, 3), None).await;
    relay.step().await.expect("a pass");
    let left = outbox
        .between(Visibility::Everything, 0, 3, 10)
        .await
        .expect("reads");
    assert_eq!(left.iter().map(|c| c.event_id).collect::<Vec<_>>(), vec![3]);
    let retained = outbox.retained().await.expect("reads");
    assert_eq!((retained.head, retained.pruned_through), (3, 2));
}

mod sqlite {
    #[tokio::test]
    async fn a_fed_relay_publishes_what_follows_at_once_and_reads_the_outbox_after_a_gap() {
        let (db, _file) = sparc_store::testing::sqlite_database().await;
        super::a_fed_relay_publishes_what_follows_at_once_and_reads_the_outbox_after_a_gap(db)
            .await;
    }

    #[tokio::test]
    async fn relay_publishes_only_rows_every_projection_has_passed_in_log_order() {
        let (db, _file) = sparc_store::testing::sqlite_database().await;
        super::relay_publishes_only_rows_every_projection_has_passed_in_log_order(db).await;
    }

    #[tokio::test]
    async fn replay_reads_what_a_user_may_see_in_event_order() {
        let (db, _file) = sparc_store::testing::sqlite_database().await;
        super::replay_reads_what_a_user_may_see_in_event_order(db).await;
    }

    #[tokio::test]
    async fn changes_beyond_retention_are_pruned_and_numbering_carries_on() {
        let (db, _file) = sparc_store::testing::sqlite_database().await;
        super::changes_beyond_retention_are_pruned_and_numbering_carries_on(db).await;
    }
}

mod postgres {
    use super::*;

    #[tokio::test]
    async fn a_fed_relay_publishes_what_follows_at_once_and_reads_the_outbox_after_a_gap() {
        if let Some(db) = sparc_store::testing::postgres_database().await {
            super::a_fed_relay_publishes_what_follows_at_once_and_reads_the_outbox_after_a_gap(db)
                .await;
        }
    }

    #[tokio::test]
    async fn relay_publishes_only_rows_every_projection_has_passed_in_log_order() {
        if let Some(db) = sparc_store::testing::postgres_database().await {
            super::relay_publishes_only_rows_every_projection_has_passed_in_log_order(db).await;
        }
    }

    #[tokio::test]
    async fn replay_reads_what_a_user_may_see_in_event_order() {
        if let Some(db) = sparc_store::testing::postgres_database().await {
            super::replay_reads_what_a_user_may_see_in_event_order(db).await;
        }
    }

    #[tokio::test]
    async fn changes_beyond_retention_are_pruned_and_numbering_carries_on() {
        if let Some(db) = sparc_store::testing::postgres_database().await {
            super::changes_beyond_retention_are_pruned_and_numbering_carries_on(db).await;
        }
    }

    #[tokio::test]
    async fn a_relay_whose_read_models_run_elsewhere_publishes_at_their_change_notice() {
        if let Some(db) = sparc_store::testing::postgres_database().await {
            super::a_relay_whose_read_models_run_elsewhere_publishes_at_their_change_notice(db)
                .await;
        }
    }

    #[tokio::test]
    async fn only_one_relay_is_active_and_a_standby_takes_over_when_it_stops() {
        let Some(db) = sparc_store::testing::postgres_database().await else {
            return;
        };
        let bus = Arc::new(InProcessBus::new());
        let mut changes = bus.subscribe().await.expect("subscribes");
        let fast = |relay: Relay| {
            relay
                .with_poll_interval(Duration::from_millis(20))
                .with_standby_interval(Duration::from_millis(50))
        };
        let (stop_first, first_stopped) = watch::channel(false);
        let (stop_second, second_stopped) = watch::channel(false);
        let first = tokio::spawn(fast(Relay::new(db.clone(), bus.clone())).run(first_stopped));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = tokio::spawn(fast(Relay::new(db.clone(), bus.clone())).run(second_stopped));

        let owner = Uuid::new_v4();
        for position in 1..=20 {
            outbox_row(&db, 1, position, Some(owner)).await;
            checkpoints(&db, at(1, position), None).await;
        }
        for expected in 1..=20 {
            assert_eq!(next(&mut changes).await.event_id, expected);
        }
        stop_first.send(true).expect("the first relay listens");
        first.await.expect("the first relay stops cleanly");
        for position in 21..=30 {
            outbox_row(&db, 1, position, Some(owner)).await;
        }
        checkpoints(&db, at(1, 30), None).await;
        for expected in 21..=30 {
            assert_eq!(
                next(&mut changes).await.event_id,
                expected,
                "the standby took over"
            );
        }
        nothing_more(&mut changes).await;
        stop_second.send(true).expect("the second relay listens");
        second.await.expect("the second relay stops cleanly");
    }

    #[tokio::test]
    async fn a_change_numbered_before_a_crash_is_published_once_after_restart() {
        let Some(db) = sparc_store::testing::postgres_database().await else {
            return;
        };
        let Some(nats) = nats_bus("nats://127.0.0.1:4222").await else {
            return;
        };
        let bus: Arc<dyn ChangeBus> = Arc::new(nats.clone());
        let mut changes = bus.subscribe().await.expect("subscribes");
        let owner = Uuid::new_v4();
        outbox_row(&db, 1, 1, Some(owner)).await;
        outbox_row(&db, 1, 2, Some(owner)).await;
        checkpoints(&db, at(1, 2), None).await;

        // The relay numbers the rows and crashes before publishing.
        let crashed = Relay::new(db.clone(), bus.clone());
        assert_eq!(crashed.number().await.expect("numbers"), 2);
        drop(crashed);

        // The restarted relay publishes them, with the numbers they were given.
        let restarted = Relay::new(db.clone(), bus.clone());
        assert_eq!(restarted.step().await.expect("a pass"), 2);
        assert_eq!(next(&mut changes).await.event_id, 1);
        assert_eq!(next(&mut changes).await.event_id, 2);
        assert_eq!(stream_messages(&nats).await, 2);

        // A crash after the bus acknowledged but before the relay recorded it: the same changes
        // go out again and the stream de-duplicates them by `Nats-Msg-Id`.
        let again = Outbox::new(&db)
            .between(Visibility::Everything, 0, 2, 10)
            .await
            .expect("reads")
            .into_iter()
            .map(Arc::new)
            .collect::<Vec<_>>();
        bus.publish(&again).await.expect("publishes again");
        assert_eq!(stream_messages(&nats).await, 2, "the repeats were dropped");
        assert_eq!(nats.status(), BusStatus::Connected);
        delete_stream(&nats).await;
    }
}
