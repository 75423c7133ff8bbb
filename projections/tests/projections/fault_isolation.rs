//! Fault isolation in the pipeline, on both backends: an event put into the log with a payload
//! no upcaster can read is parked by the read model that cannot apply it (with the rest of its
//! stream), while the read models sharing its batch go on; and after a fix, a retry applies the
//! parked stream in order, once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};
use sparc_domain::task::{Task, TaskChanges, TaskCommand};
use sparc_projections::catalog::READ_MODELS;
use sparc_projections::outbox::Outgoing;
use sparc_projections::retry::retry;
use sparc_projections::runner::catch_up;
use sparc_projections::status::{STALLED_AFTER, statuses};
use sparc_projections::{Projection, ProjectionError, ProjectionRunner};
use sparc_store::on_backend;
use sparc_store::testing::{postgres_database, sqlite_database};
use sparc_store::{CommandBus, Database, EventMetadata, LogReader, RecordedEvent, StoreTx, parked};
use uuid::Uuid;

/// Appends one event to the log around the service, as an operator's script or an old version
/// might have.
async fn insert_event(
    db: &Database,
    (aggregate_type, aggregate_id, sequence): (&str, &str, i64),
    (event_type, event_version): (&str, &str),
    payload: &str,
) {
    let sql = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
               event_version, payload, metadata) VALUES ($1, $2, $3, $4, $5, $6, $7)";
    let sql = match db {
        Database::Postgres(_) => sql.replace("$6, $7", "$6::json, $7::json"),
        Database::Sqlite(_) => sql.to_owned(),
    };
    let metadata = json!({"actor": "test", "request_id": "fault-isolation"}).to_string();
    on_backend!(Database db, pool => sqlx::query(&sql)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .bind(event_type)
        .bind(event_version)
        .bind(payload)
        .bind(&metadata)
        .execute(pool)
        .await
        .map(|_| ()))
    .expect("the event should be stored");
}

async fn schedule_task(db: &Database) -> String {
    let id = Uuid::now_v7();
    let payload = json!({"TaskScheduled": {
        "task_id": id,
        "user_id": Uuid::now_v7(),
        "skill_name": "lint",
        "schedule_cron": "*/5 * * * *",
        "timezone": "UTC",
        "params": {},
        "status": "pending",
        "project_id": null,
        "next_run_at": "2026-03-02T09:05:00Z",
        "at": "2026-03-02T09:00:00Z"
    }});
    insert_event(
        db,
        ("Task", &id.to_string(), 1),
        ("TaskScheduled", "1.1"),
        &payload.to_string(),
    )
    .await;
    id.to_string()
}

/// Counts the events it is handed, per stream, in a table of its own: a read model that can
/// take any event, sharing the loop with the real ones.
struct EveryEvent;

#[async_trait]
impl Projection for EveryEvent {
    fn name(&self) -> &str {
        "every_event"
    }

    async fn apply(
        &self,
        tx: &mut StoreTx,
        events: &[RecordedEvent],
        _outgoing: &mut Outgoing,
    ) -> Result<(), ProjectionError> {
        for event in events {
            sparc_store::on_backend!(StoreTx tx, conn => {
                sqlx::query("INSERT INTO every_event (position) VALUES ($1)")
                    .bind(event.position)
                    .execute(conn)
                    .await?;
            });
        }
        Ok(())
    }
}

async fn execute(db: &Database, sql: &str) {
    on_backend!(Database db, pool => sqlx::query(sql).execute(pool).await.map(|_| ()))
        .expect("the statement should run");
}

async fn scalar(db: &Database, sql: &str) -> i64 {
    on_backend!(Database db, pool => sqlx::query_scalar(sql).fetch_one(pool).await)
        .expect("the query should run")
}

/// Waits until every consumer named has read the whole log.
async fn wait_until_caught_up(db: &Database, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = statuses(db, STALLED_AFTER).await.expect("statuses");
        let behind: Vec<_> = all
            .iter()
            .filter(|s| names.contains(&s.name.as_str()) && s.lag_events > 0)
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still behind: {behind:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_poisoned_event_is_parked_by_the_read_model_that_cannot_read_it(db: Database) {
    execute(
        &db,
        "CREATE TABLE every_event (position bigint PRIMARY KEY)",
    )
    .await;
    let healthy = schedule_task(&db).await;
    let poisoned = schedule_task(&db).await;
    let commands = CommandBus::new(&db);
    let update = TaskCommand::Update {
        changes: TaskChanges {
            params: Some(json!({"round": 2})),
            ..TaskChanges::default()
        },
        at: chrono::Utc::now(),
    };
    commands
        .execute::<Task>(&healthy, update, &EventMetadata::new("test", "t"), None)
        .await
        .expect("the update should commit");
    let valid_update = LogReader::new(&db)
        .aggregate_events("Task", &healthy, 1, 1)
        .await
        .expect("the update should read back")[0]
        .payload
        .to_string();
    // No upcaster reads this shape; the next event of the same stream is well formed.
    insert_event(
        &db,
        ("Task", &poisoned, 2),
        ("TaskUpdated", "1.0"),
        r#"{"TaskUpdated": 42}"#,
    )
    .await;
    insert_event(
        &db,
        ("Task", &poisoned, 3),
        ("TaskUpdated", "1.0"),
        &valid_update,
    )
    .await;
    let after = schedule_task(&db).await;

    let mut members: Vec<Arc<dyn Projection>> = READ_MODELS.iter().map(|m| m.live()).collect();
    members.push(Arc::new(EveryEvent));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let loops = ProjectionRunner::new(db.clone(), members, Vec::new())
        .with_poll_interval(Duration::from_millis(20))
        .spawn(shutdown);
    let names: Vec<&str> = READ_MODELS
        .iter()
        .map(|m| m.name)
        .chain(["every_event"])
        .collect();
    wait_until_caught_up(&db, &names).await;
    stop.send(true).expect("the loops listen");
    for handle in loops {
        handle.await.expect("the loop should stop cleanly");
    }

    let events = LogReader::new(&db)
        .stats()
        .await
        .expect("log statistics")
        .events;
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM every_event").await,
        events,
        "the read model sharing the batch applied every event, once"
    );
    let parked = parked::list(&db, None, 100).await.expect("parked events");
    let parked: Vec<(&str, &str, i64)> = parked
        .iter()
        .map(|p| (p.consumer.as_str(), p.aggregate_id.as_str(), p.sequence))
        .collect();
    assert_eq!(
        parked,
        vec![
            ("tasks", poisoned.as_str(), 2),
            ("tasks", poisoned.as_str(), 3)
        ],
        "only the tasks read model parks, the event and its stream behind it"
    );
    let listed = parked::list(&db, Some("tasks"), 100).await.expect("parked");
    assert!(listed[0].error.contains("could not be read"), "{listed:?}");
    assert!(
        listed[1].error.contains("stream is parked at position"),
        "{listed:?}"
    );
    for (id, version) in [(&healthy, 2), (&poisoned, 1), (&after, 1)] {
        let row = sparc_projections::tasks::get(&db, id.parse().expect("a uuid"))
            .await
            .expect("a read")
            .expect("the task's row");
        assert_eq!(row.version, version, "task {id}");
    }
    let all = statuses(&db, STALLED_AFTER).await.expect("statuses");
    for status in &all {
        let expected = if status.name == "tasks" {
            ("degraded", 2)
        } else {
            ("live", 0)
        };
        assert_eq!((status.status, status.parked), expected, "{status:?}");
    }

    // Retried without a fix, both stay parked, one more attempt counted.
    let tasks = READ_MODELS[0].live();
    let report = retry(&db, tasks.as_ref(), None).await.expect("a retry");
    assert_eq!((report.applied, report.still_parked), (0, 2));
    let listed = parked::list(&db, Some("tasks"), 100).await.expect("parked");
    assert_eq!(listed[0].attempts, 2, "{listed:?}");
}

#[tokio::test]
async fn a_poisoned_event_is_parked_by_the_read_model_that_cannot_read_it_on_postgres() {
    if let Some(db) = postgres_database().await {
        a_poisoned_event_is_parked_by_the_read_model_that_cannot_read_it(db).await;
    }
}

#[tokio::test]
async fn a_poisoned_event_is_parked_by_the_read_model_that_cannot_read_it_on_sqlite() {
    let (db, _file) = sqlite_database().await;
    a_poisoned_event_is_parked_by_the_read_model_that_cannot_read_it(db).await;
}

/// A read model of `Widget` streams (`{"name": …}` events) whose upcaster for the legacy shape
/// `{"legacy_name": …}` can be "fixed": it keeps each widget's names in order and how many
/// events it applied.
struct Widgets {
    fixed: AtomicBool,
}

#[async_trait]
impl Projection for Widgets {
    fn name(&self) -> &str {
        "widgets"
    }

    async fn apply(
        &self,
        tx: &mut StoreTx,
        events: &[RecordedEvent],
        _outgoing: &mut Outgoing,
    ) -> Result<(), ProjectionError> {
        for event in events {
            let name = match (&event.payload["name"], &event.payload["legacy_name"]) {
                (Value::String(name), _) => name.clone(),
                (_, Value::String(name)) if self.fixed.load(Ordering::SeqCst) => name.clone(),
                _ => {
                    return Err(ProjectionError::Payload {
                        position: event.position,
                        event_type: event.event_type.clone(),
                        source: serde_json::from_value::<String>(event.payload.clone())
                            .expect_err("not a name"),
                    });
                }
            };
            sparc_store::on_backend!(StoreTx tx, conn => {
                sqlx::query(
                    "INSERT INTO widgets (id, names, applied) VALUES ($1, $2, 1) \
                     ON CONFLICT (id) DO UPDATE SET names = widgets.names || ',' || excluded.names, \
                     applied = widgets.applied + 1",
                )
                .bind(&event.aggregate_id)
                .bind(&name)
                .execute(conn)
                .await?;
            });
        }
        Ok(())
    }
}

/// Waits until a log reader sees every stored event (on Postgres it looks past no running
/// transaction of the server, other tests' included).
async fn wait_until_readable(db: &Database) {
    let log = LogReader::new(db);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stored = log.stats().await.expect("log statistics").events;
        let readable = log
            .read_after(sparc_store::Checkpoint::ORIGIN, 10_000)
            .await
            .expect("a read")
            .len() as i64;
        if readable == stored {
            return;
        }
        assert!(Instant::now() < deadline, "{readable} of {stored} readable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn widget(db: &Database, id: &str) -> (String, i64) {
    let sql = format!("SELECT names, applied FROM widgets WHERE id = '{id}'");
    on_backend!(Database db, pool => sqlx::query_as(&sql).fetch_one(pool).await)
        .expect("the widget's row")
}

async fn after_a_fix_a_retry_applies_the_parked_stream_in_order_once(db: Database) {
    execute(
        &db,
        "CREATE TABLE widgets (id text PRIMARY KEY, names text NOT NULL, applied bigint NOT NULL)",
    )
    .await;
    let widget_event = |id, sequence, payload: Value| {
        let db = db.clone();
        async move {
            insert_event(
                &db,
                ("Widget", id, sequence),
                ("WidgetNamed", "1.0"),
                &payload.to_string(),
            )
            .await
        }
    };
    widget_event("w1", 1, json!({"name": "a"})).await;
    widget_event("w1", 2, json!({"legacy_name": "b"})).await;
    widget_event("w2", 1, json!({"name": "x"})).await;
    widget_event("w1", 3, json!({"name": "c"})).await;
    let widgets = Arc::new(Widgets {
        fixed: AtomicBool::new(false),
    });

    wait_until_readable(&db).await;
    catch_up(&db, widgets.clone(), 100)
        .await
        .expect("a failing event is parked, not a failure of the consumer");
    assert_eq!(widget(&db, "w1").await, ("a".to_owned(), 1));
    assert_eq!(widget(&db, "w2").await, ("x".to_owned(), 1));
    let parked: Vec<i64> = parked::list(&db, Some("widgets"), 100)
        .await
        .expect("parked")
        .iter()
        .map(|p| p.sequence)
        .collect();
    assert_eq!(parked, vec![2, 3]);

    widgets.fixed.store(true, Ordering::SeqCst);
    let report = retry(&db, widgets.as_ref(), None).await.expect("a retry");
    assert_eq!((report.applied, report.still_parked), (2, 0));
    assert_eq!(widget(&db, "w1").await, ("a,b,c".to_owned(), 3));
    assert!(
        parked::list(&db, Some("widgets"), 100)
            .await
            .expect("parked")
            .is_empty()
    );

    // Nothing is applied twice: a second retry and the loop find nothing more to do, and the
    // stream's next event applies in its place.
    let report = retry(&db, widgets.as_ref(), None).await.expect("a retry");
    assert_eq!((report.applied, report.still_parked), (0, 0));
    widget_event("w1", 4, json!({"name": "d"})).await;
    wait_until_readable(&db).await;
    catch_up(&db, widgets.clone(), 100)
        .await
        .expect("caught up");
    assert_eq!(widget(&db, "w1").await, ("a,b,c,d".to_owned(), 4));
    assert_eq!(widget(&db, "w2").await, ("x".to_owned(), 1));
}

#[tokio::test]
async fn after_a_fix_a_retry_applies_the_parked_stream_in_order_once_on_postgres() {
    if let Some(db) = postgres_database().await {
        after_a_fix_a_retry_applies_the_parked_stream_in_order_once(db).await;
    }
}

#[tokio::test]
async fn after_a_fix_a_retry_applies_the_parked_stream_in_order_once_on_sqlite() {
    let (db, _file) = sqlite_database().await;
    after_a_fix_a_retry_applies_the_parked_stream_in_order_once(db).await;
}
