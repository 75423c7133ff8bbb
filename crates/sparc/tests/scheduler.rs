//! The scheduler fires a due slot exactly once however many schedulers race on it (in one
//! process, and in three `sparc serve` processes on one PostgreSQL), collapses slots missed
//! while no scheduler ran into one run, never fires a disabled task, and fires a daily task
//! once on both days of a daylight-saving change (its clock injected); a run past its deadline
//! times out once however many schedulers sweep.

use chrono::{Duration, TimeZone, Timelike, Utc};
use serde_json::json;
use sparc_domain::execution::{Execution, ExecutionCommand};
use sparc_domain::task::{RunPolicy, Task, TaskCommand, TaskStatus};
use sparc_domain::values::{CronSchedule, Overlap, SkillName, TimeZoneName};
use sparc_projections::catalog::read_model;
use sparc_projections::runner::catch_up;
use sparc_store::testing::{postgres_database, postgres_test_database, sqlite_database};
use sparc_store::{CommandBus, Database, EventMetadata, LogReader};
use uuid::Uuid;

async fn schedule(commands: &CommandBus, status: TaskStatus, at: chrono::DateTime<Utc>) -> Uuid {
    schedule_in(
        commands,
        "*/5 * * * *",
        TimeZoneName::default(),
        RunPolicy::default(),
        status,
        at,
    )
    .await
}

async fn schedule_in(
    commands: &CommandBus,
    cron: &str,
    timezone: TimeZoneName,
    run: RunPolicy,
    status: TaskStatus,
    at: chrono::DateTime<Utc>,
) -> Uuid {
    let task_id = Uuid::now_v7();
    commands
        .execute::<Task>(
            &task_id.to_string(),
            TaskCommand::Schedule {
                task_id,
                user_id: Uuid::now_v7(),
                skill_name: SkillName::parse("lint").expect("a skill"),
                schedule_cron: CronSchedule::parse(cron).expect("a cron"),
                timezone,
                params: json!({}),
                status,
                project_id: None,
                run,
                at,
            },
            &EventMetadata::new("test", "scheduler"),
            None,
        )
        .await
        .expect("the task should be scheduled");
    task_id
}

/// Catches the read model `model` up until `ready` holds. One pass can stop short on
/// PostgreSQL: the log is read only below the oldest transaction still running on the server,
/// and other tests' databases share that server.
async fn catch_up_until<F>(db: &Database, model: &str, ready: impl Fn() -> F)
where
    F: std::future::Future<Output = bool>,
{
    let projection = read_model(model).expect("a read model").live();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        catch_up(db, projection.clone(), 1000)
            .await
            .expect("the read model");
        if ready().await {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{model} did not catch up in 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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
    catch_up_until(&db, "tasks", || async {
        let read = |id| sparc_projections::tasks::get(&db, id);
        read(due).await.expect("a read").is_some()
            && read(disabled).await.expect("a read").is_some()
    })
    .await;
    let tasks = read_model("tasks").expect("tasks");

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

/// A daily 02:30 task in Europe/Berlin, stepped through both days of each clock change of
/// 2026 with the scheduler's clock injected, fires once on each: on 29 March 02:30 does not
/// exist, on 25 October it happens twice. Overlapping runs are allowed, so a second fire on one
/// day would show as a second run rather than a skipped slot.
async fn a_daily_task_fires_once_on_both_clock_change_days(db: Database) {
    let commands = CommandBus::new(&db);
    let berlin = TimeZoneName::parse("Europe/Berlin").expect("a zone");
    let allow = RunPolicy {
        overlap: Overlap::Allow,
        ..RunPolicy::default()
    };
    let tasks = read_model("tasks").expect("tasks");
    for day in [(3, 29), (10, 25)] {
        let start = Utc
            .with_ymd_and_hms(2026, day.0, day.1 - 1, 12, 0, 0)
            .unwrap();
        let task_id = schedule_in(
            &commands,
            "30 2 * * *",
            berlin,
            allow,
            TaskStatus::Pending,
            start,
        )
        .await;
        let mut now = start;
        while now < start + Duration::hours(48) {
            catch_up(&db, tasks.live(), 1000)
                .await
                .expect("the read model");
            sparc::scheduler::fire_due(&db, &commands, now)
                .await
                .expect("a pass");
            now += Duration::minutes(10);
        }
        let fired: Vec<_> = LogReader::new(&db)
            .aggregate_events("Task", &task_id.to_string(), 0, 1000)
            .await
            .expect("the log")
            .into_iter()
            .filter(|e| e.event_type == "TaskFired")
            .map(|e| e.payload["TaskFired"]["scheduled_for"].clone())
            .collect();
        let on_the_day: Vec<_> = fired
            .iter()
            .filter(|slot| {
                slot.as_str()
                    .is_some_and(|s| s.starts_with(&format!("2026-{:02}-{:02}", day.0, day.1)))
            })
            .collect();
        assert_eq!(
            on_the_day.len(),
            1,
            "the task fires once on 2026-{:02}-{:02}: {fired:?}",
            day.0,
            day.1
        );
        assert_eq!(fired.len(), 2, "and once on the day after: {fired:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_task_fires_once_on_both_clock_change_days_on_sqlite() {
    let (db, _file) = sqlite_database().await;
    a_daily_task_fires_once_on_both_clock_change_days(db).await;
}

/// Three `sparc serve` processes (each with its scheduler) on one PostgreSQL, with 500 tasks
/// due in the same minute: exactly 500 runs start, one per task.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_scheduler_processes_fire_500_due_tasks_exactly_once() {
    const TASKS: usize = 500;
    let Some(pg) = postgres_test_database().await else {
        return;
    };
    let commands = CommandBus::new(&pg.database);
    // A yearly schedule whose slot passed a minute ago: due now, and not again for a year.
    let slot = (Utc::now() - Duration::minutes(1))
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("a whole minute");
    let cron = format!(
        "{} {} {} {} *",
        slot.format("%M"),
        slot.format("%H"),
        slot.format("%d"),
        slot.format("%m")
    );
    let before = slot - Duration::seconds(30);
    let mut due = Vec::new();
    for _ in 0..TASKS {
        due.push(
            schedule_in(
                &commands,
                &cron,
                TimeZoneName::default(),
                RunPolicy::default(),
                TaskStatus::Pending,
                before,
            )
            .await,
        );
    }
    let env = [
        ("DATABASE_URL", pg.url.as_str()),
        (
            "SPARC_JWT_SECRET",
            "scheduler-test-signing-key-0123456789abcdef",
        ),
        ("RUST_LOG", "warn"),
    ];
    let mut schedulers = Vec::new();
    for _ in 0..3 {
        schedulers.push(crate::support::process::start("serve", &env, "/api/v1/readiness").await);
    }
    let started = |db: Database| async move {
        let (count,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM events WHERE aggregate_type = 'Execution' \
             AND event_type = 'ExecutionStarted'",
        )
        .fetch_one(match &db {
            Database::Postgres(pool) => pool,
            Database::Sqlite(_) => unreachable!("a PostgreSQL test"),
        })
        .await
        .expect("a count");
        count as usize
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while started(pg.database.clone()).await < TASKS && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Give a late duplicate the time to show.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        started(pg.database.clone()).await,
        TASKS,
        "one run per due task"
    );
    for task_id in due.iter().step_by(50) {
        assert_eq!(
            fired_slots(&pg.database, *task_id).await,
            1,
            "task {task_id}"
        );
    }
    drop(schedulers);
}

/// A run past its deadline times out once however many schedulers sweep at once: the
/// execution refuses a second time-out.
async fn racing_sweeps_time_a_run_out_once(db: Database) {
    let commands = CommandBus::new(&db);
    let t0 = Utc.with_ymd_and_hms(2026, 3, 2, 9, 1, 0).unwrap();
    let task_id = schedule(&commands, TaskStatus::Pending, t0).await;
    let (task, _) = commands
        .load::<Task>(&task_id.to_string())
        .await
        .expect("the task");
    let execution_id = Uuid::now_v7();
    commands
        .create::<Execution>(
            &execution_id.to_string(),
            ExecutionCommand::start_of(&task, execution_id, None, t0, t0),
            &EventMetadata::new("test", "scheduler"),
        )
        .await
        .expect("a run");
    catch_up_until(&db, "executions", || async {
        sparc_projections::executions::get(&db, execution_id)
            .await
            .expect("a read")
            .is_some()
    })
    .await;

    let after_deadline = t0 + Duration::hours(2);
    let sweeps: Vec<_> = (0..3)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                sparc::scheduler::time_out_overdue(&db, &CommandBus::new(&db), after_deadline).await
            })
        })
        .collect();
    let mut ended = 0;
    for sweep in sweeps {
        ended += sweep.await.expect("a sweep").expect("a pass");
    }
    assert_eq!(ended, 1, "exactly one sweep ends the run");
    let finished = LogReader::new(&db)
        .aggregate_events("Execution", &execution_id.to_string(), 0, 10)
        .await
        .expect("the log")
        .iter()
        .filter(|e| e.event_type == "ExecutionFinished")
        .count();
    assert_eq!(finished, 1, "the run ended once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_sweeps_time_a_run_out_once_on_postgres() {
    if let Some(db) = postgres_database().await {
        racing_sweeps_time_a_run_out_once(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_sweeps_time_a_run_out_once_on_sqlite() {
    let (db, _file) = sqlite_database().await;
    racing_sweeps_time_a_run_out_once(db).await;
}
