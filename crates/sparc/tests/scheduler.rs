//! The scheduler fires a due slot exactly once however many schedulers race on it, collapses
//! slots missed while no scheduler ran into one run, and never fires a disabled task.

use chrono::{Duration, TimeZone, Utc};
use serde_json::json;
use sparc_domain::task::{Task, TaskCommand, TaskStatus};
use sparc_domain::values::{CronSchedule, SkillName, TimeZoneName};
use sparc_projections::catalog::read_model;
use sparc_projections::runner::catch_up;
use sparc_store::testing::{postgres_database, sqlite_database};
use sparc_store::{CommandBus, Database, EventMetadata, LogReader};
use uuid::Uuid;

async fn schedule(commands: &CommandBus, status: TaskStatus, at: chrono::DateTime<Utc>) -> Uuid {
    let task_id = Uuid::now_v7();
    commands
        .execute::<Task>(
            &task_id.to_string(),
            TaskCommand::Schedule {
                task_id,
                user_id: Uuid::now_v7(),
                skill_name: SkillName::parse("lint").expect("a skill"),
                schedule_cron: CronSchedule::parse("*/5 * * * *").expect("a cron"),
                timezone: TimeZoneName::default(),
                params: json!({}),
                status,
                project_id: None,
                run: sparc_domain::task::RunPolicy::default(),
                at,
            },
            &EventMetadata::new("test", "scheduler"),
            None,
        )
        .await
        .expect("the task should be scheduled");
    task_id
}

async fn fired_slots(db: &Database, task_id: Uuid) -> usize {
    LogReader::new(db)
        .aggregate_events("Task", &task_id.to_string(), 0, 1000)
        .await
        .expect("the log")
        .iter()
        .filter(|e| e.event_type == "TaskFired")
        .count()
}

async fn racing_schedulers_fire_a_due_slot_exactly_once(db: Database) {
    let commands = CommandBus::new(&db);
    let t0 = Utc.with_ymd_and_hms(2026, 3, 2, 9, 1, 0).unwrap();
    let due = schedule(&commands, TaskStatus::Pending, t0).await;
    let disabled = schedule(&commands, TaskStatus::Disabled, t0).await;
    let tasks = read_model("tasks").expect("tasks");
    catch_up(&db, tasks.live(), 1000)
        .await
        .expect("the read model");

    // An hour later: eleven slots were missed; three schedulers race.
    let now = t0 + Duration::hours(1);
    let racers: Vec<_> = (0..3)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                sparc::scheduler::fire_due(&db, &CommandBus::new(&db), now).await
            })
        })
        .collect();
    let mut started = 0;
    for racer in racers {
        started += racer.await.expect("a scheduler").expect("a pass");
    }
    assert_eq!(started, 1, "exactly one scheduler starts the run");
    assert_eq!(
        fired_slots(&db, due).await,
        1,
        "the missed slots collapse into one run"
    );
    assert_eq!(
        fired_slots(&db, disabled).await,
        0,
        "a disabled task never fires"
    );

    let (task, _) = commands
        .load::<Task>(&due.to_string())
        .await
        .expect("the task");
    assert_eq!(task.status, TaskStatus::Running);
    assert!(
        task.next_run_at.is_some_and(|next| next > now),
        "the next slot is after now"
    );
    let execution = task.running_execution_id.expect("a running execution");
    let executions = LogReader::new(&db)
        .aggregate_events("Execution", &execution.to_string(), 0, 10)
        .await
        .expect("log");
    assert_eq!(executions.len(), 1, "the fired slot became an execution");

    catch_up(&db, tasks.live(), 1000)
        .await
        .expect("the read model");
    assert_eq!(
        sparc::scheduler::fire_due(&db, &commands, now)
            .await
            .expect("a pass"),
        0,
        "nothing else is due"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_schedulers_fire_a_due_slot_exactly_once_on_postgres() {
    if let Some(db) = postgres_database().await {
        racing_schedulers_fire_a_due_slot_exactly_once(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_schedulers_fire_a_due_slot_exactly_once_on_sqlite() {
    let (db, _file) = sqlite_database().await;
    racing_schedulers_fire_a_due_slot_exactly_once(db).await;
}
