//! The hash chain: chaining in global order, and verification finding tampered events.

use sparc_store::chain::{CHAIN_CHECKPOINT, GENESIS_HASH, chain_hash};
use sparc_store::testing::{self, SqliteTestFile};
use sparc_store::{AuditFilter, Chainer, Checkpoint, Database, LogReader, VerifyReport, verify};
use sqlx::migrate::Migrator;

use crate::support::{
    append, both_backends, chain, execute, postgres_with_pool, wait_until_readable,
};

/// 20 events over 4 counters (interleaved), chained; 2 more left unchained; then one payload
/// edited and one event deleted behind the chain's back.
async fn verify_finds_an_edited_payload_and_a_deleted_event(db: &Database) {
    for round in 0..5 {
        for id in ["a", "b", "c", "d"] {
            append(db, id, round + 1, 1).await;
        }
    }
    wait_until_readable(db, 20).await;
    chain(db, 20, 7).await;
    let report = verify(db).await.unwrap();
    assert!(report.ok, "{}: {report:?}", db.backend());
    assert_eq!((report.events_checked, report.unchained), (20, 0));

    append(db, "e", 1, 2).await;
    let report = verify(db).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!((report.events_checked, report.unchained), (22, 2));

    let events = LogReader::new(db)
        .read_after(Checkpoint::ORIGIN, 20)
        .await
        .unwrap();
    let edited = events[4].position;
    let deleted = events[11].position;
    let after_deleted = events[12].position;
    let changed = execute(
        db,
        &format!(
            r#"UPDATE events SET payload = '{{"Added":{{"amount":1000}}}}' WHERE global_position = {edited}"#
        ),
    )
    .await;
    assert_eq!(changed, 1);
    let changed = execute(
        db,
        &format!("DELETE FROM events WHERE global_position = {deleted}"),
    )
    .await;
    assert_eq!(changed, 1);

    let report = verify_flags(db, vec![edited, after_deleted]).await;
    assert_eq!(report.first_bad_position, Some(edited));
    assert_eq!((report.events_checked, report.unchained), (21, 2));
}

#[tokio::test]
async fn verify_finds_an_edited_payload_and_a_deleted_event_on_sqlite() {
    let (db, _file): (Database, SqliteTestFile) = testing::sqlite_database().await;
    verify_finds_an_edited_payload_and_a_deleted_event(&db).await;
}

#[tokio::test]
async fn verify_finds_an_edited_payload_and_a_deleted_event_on_postgres() {
    let Some(db) = testing::postgres_database().await else {
        return;
    };
    verify_finds_an_edited_payload_and_a_deleted_event(&db).await;
}

/// 6 events chained; then one stored link overwritten: verification names that event (its
/// link no longer follows from its content) and the next (its link no longer follows from
/// the stored one before it).
#[tokio::test]
async fn verify_finds_an_overwritten_link() {
    for (db, _file) in both_backends().await {
        verify_finds_an_overwritten_link_in(&db).await;
    }
}

async fn verify_finds_an_overwritten_link_in(db: &Database) {
    for round in 0..3 {
        for id in ["a", "b"] {
            append(db, id, round + 1, 1).await;
        }
    }
    wait_until_readable(db, 6).await;
    chain(db, 6, 100).await;
    let positions = positions(db, 6).await;
    let changed = execute(
        db,
        &format!(
            "UPDATE event_hashes SET hash = '{}' WHERE global_position = {}",
            "f".repeat(64),
            positions[2]
        ),
    )
    .await;
    assert_eq!(changed, 1);
    verify_flags(db, vec![positions[2], positions[3]]).await;
}

/// Chaining writes beside the log: every event row keeps the version its insert wrote (an
/// updated row would have a new `xmin`), so the log stays append-only.
#[tokio::test]
async fn chaining_leaves_every_event_row_as_it_was_inserted() {
    let Some((db, pool)) = postgres_with_pool().await else {
        return;
    };
    for id in ["a", "b", "c"] {
        append(&db, id, 1, 2).await;
    }
    wait_until_readable(&db, 6).await;
    let versions = "SELECT global_position, xmin::text FROM events ORDER BY global_position";
    let before: Vec<(i64, String)> = sqlx::query_as(versions).fetch_all(&pool).await.unwrap();
    chain(&db, 6, 100).await;
    let after: Vec<(i64, String)> = sqlx::query_as(versions).fetch_all(&pool).await.unwrap();
    assert_eq!(before.len(), 6);
    assert_eq!(after, before);
    assert!(hashes(&db).await.iter().all(Option::is_some), "all chained");
}

#[tokio::test]
async fn chainer_never_chains_past_an_open_transaction() {
    let Some((db, pool)) = postgres_with_pool().await else {
        return;
    };
    append(&db, "a", 1, 3).await;
    wait_until_readable(&db, 3).await;

    // A takes a position and stays open; B takes a later one and commits first.
    let insert = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                  event_version, payload, metadata) \
                  VALUES ('Counter', $1, 1, 'Added', '1.0', '{}', '{}') RETURNING global_position";
    let mut a = pool.begin().await.unwrap();
    let a_position: i64 = sqlx::query_scalar(insert)
        .bind("slow")
        .fetch_one(&mut *a)
        .await
        .unwrap();
    let b_position: i64 = sqlx::query_scalar(insert)
        .bind("fast")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(a_position < b_position);

    chain(&db, 3, 100).await;
    let chainer = Chainer::new(&db);
    assert_eq!(
        chainer.chain_pending(100).await.unwrap(),
        0,
        "B waits for A"
    );
    let report = verify(&db).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!((report.events_checked, report.unchained), (4, 1));

    a.commit().await.unwrap();
    chain(&db, 2, 100).await;
    let report = verify(&db).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!((report.events_checked, report.unchained), (5, 0));

    // The chain follows commit order: A (older transaction) before B.
    let order = positions(&db, 10).await;
    assert_eq!(order[3..], [a_position, b_position]);
}

/// Verifies the chain of `db`, asserts that it fails at exactly the positions `bad`, and
/// returns the report.
async fn verify_flags(db: &Database, bad: Vec<i64>) -> VerifyReport {
    let report = verify(db).await.unwrap();
    assert!(!report.ok);
    assert_eq!(report.bad_positions, bad, "{}: {report:?}", db.backend());
    report
}

/// The positions of the first `limit` events in global order.
async fn positions(db: &Database, limit: i64) -> Vec<i64> {
    LogReader::new(db)
        .read_after(Checkpoint::ORIGIN, limit)
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect()
}

/// The hashes of every event in global order (as the audit reads them).
async fn hashes(db: &Database) -> Vec<Option<String>> {
    let filter = AuditFilter {
        limit: 1000,
        ..AuditFilter::default()
    };
    LogReader::new(db)
        .audit_events(&filter)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.hash)
        .collect()
}

/// 240 events chained in one pass (several statements of hashes on Postgres); then the pass is
/// repeated from the start, as after a crash that wrote a batch's hashes but not its
/// checkpoint: it writes the very same hashes and the chain verifies.
async fn a_pass_repeated_after_a_crash_writes_the_same_hashes(db: &Database) {
    for round in 0..30 {
        for id in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            append(db, id, round + 1, 1).await;
        }
    }
    wait_until_readable(db, 240).await;
    let chainer = Chainer::new(db);
    assert_eq!(chainer.chain_pending(1000).await.unwrap(), 240);
    let first = hashes(db).await;
    assert!(
        first.iter().all(Option::is_some),
        "{}: all hashed",
        db.backend()
    );

    let mut tx = db.begin().await.unwrap();
    tx.delete_checkpoint(sparc_store::chain::CHAIN_CHECKPOINT)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(chainer.chain_pending(1000).await.unwrap(), 240);
    assert_eq!(hashes(db).await, first, "{}", db.backend());
    let report = verify(db).await.unwrap();
    assert!(report.ok, "{}: {report:?}", db.backend());
    assert_eq!((report.events_checked, report.unchained), (240, 0));
}

#[tokio::test]
async fn a_pass_repeated_after_a_crash_writes_the_same_hashes_on_sqlite() {
    let (db, _file): (Database, SqliteTestFile) = testing::sqlite_database().await;
    a_pass_repeated_after_a_crash_writes_the_same_hashes(&db).await;
}

#[tokio::test]
async fn a_pass_repeated_after_a_crash_writes_the_same_hashes_on_postgres() {
    let Some(db) = testing::postgres_database().await else {
        return;
    };
    a_pass_repeated_after_a_crash_writes_the_same_hashes(&db).await;
}

/// 30 events, chained by two chainers taking small batches at the same moment.
async fn two_chainers_at_once_chain_every_event_exactly_once(db: &Database) {
    for round in 0..10 {
        for id in ["a", "b", "c"] {
            append(db, id, round + 1, 1).await;
        }
    }
    wait_until_readable(db, 30).await;
    let (one, two) = (Chainer::new(db), Chainer::new(db));
    let mut chained = 0;
    loop {
        let (a, b) = tokio::join!(one.chain_pending(4), two.chain_pending(4));
        let both = a.unwrap() + b.unwrap();
        if both == 0 {
            break;
        }
        chained += both;
    }
    assert_eq!(
        chained,
        30,
        "{}: an event chained twice or never",
        db.backend()
    );
    let report = verify(db).await.unwrap();
    assert!(report.ok, "{}: {report:?}", db.backend());
    assert_eq!((report.events_checked, report.unchained), (30, 0));
}

#[tokio::test]
async fn two_chainers_at_once_chain_every_event_exactly_once_on_sqlite() {
    let (db, _file): (Database, SqliteTestFile) = testing::sqlite_database().await;
    two_chainers_at_once_chain_every_event_exactly_once(&db).await;
}

#[tokio::test]
async fn two_chainers_at_once_chain_every_event_exactly_once_on_postgres() {
    let Some(db) = testing::postgres_database().await else {
        return;
    };
    two_chainers_at_once_chain_every_event_exactly_once(&db).await;
}

/// Applies this backend's migrations before the chain moved beside the log (0001–0007), from a
/// directory holding copies of just those files.
async fn migrate_to_before_event_hashes(db: &Database) {
    let backend = db.backend().to_string();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../migrations")
        .join(&backend);
    let earlier = std::env::temp_dir().join(format!("sparc-migrations-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&earlier).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "0008" {
            std::fs::copy(&path, earlier.join(name)).unwrap();
        }
    }
    let migrator = Migrator::new(earlier.as_path()).await.unwrap();
    assert_eq!(migrator.iter().count(), 7, "{backend}");
    match db {
        Database::Postgres(pool) => migrator.run(pool).await.unwrap(),
        Database::Sqlite(pool) => migrator.run(pool).await.unwrap(),
    }
    std::fs::remove_dir_all(&earlier).unwrap();
}

/// A log chained the old way (links in `events.hash`), then upgraded: the links move to
/// `event_hashes`, the chain verifies, and the chainer goes on from where it was.
async fn links_written_before_the_upgrade_move_beside_the_log(db: &Database) {
    migrate_to_before_event_hashes(db).await;
    for round in 0..3 {
        for id in ["a", "b"] {
            append(db, id, round + 1, 1).await;
        }
    }
    wait_until_readable(db, 6).await;
    let events = LogReader::new(db)
        .read_after(Checkpoint::ORIGIN, 100)
        .await
        .unwrap();
    let mut prev = GENESIS_HASH.to_owned();
    for event in &events {
        prev = chain_hash(&prev, event);
        let sql = format!(
            "UPDATE events SET hash = '{prev}' WHERE global_position = {}",
            event.position
        );
        assert_eq!(execute(db, &sql).await, 1);
    }
    let mut tx = db.begin().await.unwrap();
    tx.save_checkpoints(&[CHAIN_CHECKPOINT], events[5].checkpoint())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    db.migrate().await.unwrap();
    assert!(!db.pending_migrations().await.unwrap());
    let report = verify(db).await.unwrap();
    assert!(report.ok, "{}: {report:?}", db.backend());
    assert_eq!((report.events_checked, report.unchained), (6, 0));
    assert_eq!(hashes(db).await.last(), Some(&Some(prev)));

    append(db, "c", 1, 1).await;
    wait_until_readable(db, 7).await;
    chain(db, 1, 100).await;
    let report = verify(db).await.unwrap();
    assert!(report.ok, "{}: {report:?}", db.backend());
    assert_eq!((report.events_checked, report.unchained), (7, 0));
}

#[tokio::test]
async fn links_written_before_the_upgrade_move_beside_the_log_on_sqlite() {
    let file = SqliteTestFile::new();
    let db = Database::connect(&file.url()).await.unwrap();
    links_written_before_the_upgrade_move_beside_the_log(&db).await;
}

#[tokio::test]
async fn links_written_before_the_upgrade_move_beside_the_log_on_postgres() {
    let Some(test) = testing::unmigrated_postgres_test_database().await else {
        return;
    };
    links_written_before_the_upgrade_move_beside_the_log(&test.database).await;
}
