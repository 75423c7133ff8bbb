//! Old events are upcast wherever they are read: a `TaskScheduled` stored at version 1.0 (when
//! the cron field was called `cron_expression`) loads into the aggregate and rebuilds into the
//! read model as the current event, on both backends.

use serde_json::json;
use sparc_domain::task::{Task, TaskChanges, TaskCommand};
use sparc_projections::catalog::read_model;
use sparc_projections::rebuild::rebuild;
use sparc_projections::runner::catch_up;
use sparc_store::testing::{postgres_database, sqlite_database};
use sparc_store::{CommandBus, Database, EventMetadata};
use uuid::Uuid;

async fn store_version_1_0_task(db: &Database) -> Uuid {
    let id = Uuid::now_v7();
    let payload = json!({"TaskScheduled": {
        "task_id": id,
        "user_id": Uuid::now_v7(),
        "skill_name": "lint",
        "cron_expression": "*/5 * * * *",
        "timezone": "UTC",
        "params": {},
        "status": "pending",
        "project_id": null,
        "next_run_at": "2026-03-02T09:05:00Z",
        "at": "2026-03-02T09:00:00Z"
    }})
    .to_string();
    let sql = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
               VALUES ('Task', $1, 1, 'TaskScheduled', '1.0', $2, '{}')";
    match db {
        Database::Postgres(pool) => {
            sqlx::query(&sql.replace("$2, '{}'", "$2::json, '{}'::json"))
                .bind(id.to_string())
                .bind(&payload)
                .execute(pool)
                .await
                .expect("the old event should be stored");
        }
        Database::Sqlite(pool) => {
            sqlx::query(sql)
                .bind(id.to_string())
                .bind(&payload)
                .execute(pool)
                .await
                .expect("the old event should be stored");
        }
    }
    id
}

async fn old_events_are_upcast_in_loads_and_rebuilds(db: Database) {
    let id = store_version_1_0_task(&db).await;
    let commands = CommandBus::new(&db);

    let (task, version) = commands
        .load::<Task>(&id.to_string())
        .await
        .expect("the aggregate should load");
    assert_eq!(version, 1);
    assert_eq!(
        task.schedule_cron.as_ref().map(|c| c.as_str()),
        Some("*/5 * * * *")
    );
    let updated = commands
        .execute::<Task>(
            &id.to_string(),
            TaskCommand::Update {
                changes: TaskChanges {
                    params: Some(json!({"depth": 1})),
                    ..TaskChanges::default()
                },
                at: chrono::Utc::now(),
            },
            &EventMetadata::new("test", "upcasting"),
            None,
        )
        .await
        .expect("an upcast aggregate should take commands");
    assert_eq!(updated.version, 2);

    let tasks = read_model("tasks").expect("the tasks read model");
    catch_up(&db, tasks.live(), 100)
        .await
        .expect("the live projection should read the old event");
    let live = sparc_projections::tasks::get(&db, id)
        .await
        .expect("a read")
        .expect("the projected task");
    assert_eq!(live.version, 2);
    assert_eq!(
        live.state.schedule_cron.as_ref().map(|c| c.as_str()),
        Some("*/5 * * * *")
    );
    assert_eq!(live.state.params, json!({"depth": 1}));

    rebuild(&db, tasks, &|_| {})
        .await
        .expect("the rebuild should read the old event");
    let rebuilt = sparc_projections::tasks::get(&db, id)
        .await
        .expect("a read")
        .expect("the rebuilt task");
    assert_eq!(rebuilt, live);
}

#[tokio::test]
async fn old_events_are_upcast_in_loads_and_rebuilds_on_postgres() {
    if let Some(db) = postgres_database().await {
        old_events_are_upcast_in_loads_and_rebuilds(db).await;
    }
}

#[tokio::test]
async fn old_events_are_upcast_in_loads_and_rebuilds_on_sqlite() {
    let (db, _file) = sqlite_database().await;
    old_events_are_upcast_in_loads_and_rebuilds(db).await;
}
