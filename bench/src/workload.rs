//! The create-task workload: `POST /tasks` as the API runs it, by dashboard users each working
//! in one project from one browser.

use chrono::Utc;
use serde_json::{Value, json};
use sparc_domain::task::{Task, TaskCommand, TaskEvent, TaskStatus};
use sparc_domain::values::{CronSchedule, InvalidValue, SkillName, TimeZoneName};
use sparc_store::{CommandBus, EventMetadata};
use uuid::Uuid;

const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

/// What every created task shares, parsed once.
#[derive(Debug, Clone)]
pub struct Template {
    skill: SkillName,
    cron: CronSchedule,
    timezone: TimeZoneName,
}

impl Template {
    /// A weekday code review every 15 minutes during Paris office hours.
    pub fn new() -> Result<Self, InvalidValue> {
        Ok(Self {
            skill: SkillName::parse("code-review")?,
            cron: CronSchedule::parse("*/15 9-18 * * 1-5")?,
            timezone: TimeZoneName::parse("Europe/Paris")?,
        })
    }
}

/// One benchmark writer: a dashboard user working in one project, from one browser.
#[derive(Debug, Clone)]
pub struct Writer {
    user_id: Uuid,
    project_id: Uuid,
    ip: String,
}

/// `n` writers with fresh ids.
pub fn population(n: usize) -> Vec<Writer> {
    (0..n)
        .map(|i| Writer {
            user_id: Uuid::now_v7(),
            project_id: Uuid::now_v7(),
            ip: format!("10.0.{}.{}", i / 250, i % 250 + 1),
        })
        .collect()
}

/// The `params` of the `n`th task a writer creates: a code review of this repository.
pub fn params(n: u64) -> Value {
    json!({
        "repository": "git@github.com:example/sparc.git",
        "branch": "main",
        "paths": ["crates/", "projections/"],
        "max_findings": 50,
        "run": n,
    })
}

fn metadata(writer: &Writer) -> EventMetadata {
    EventMetadata::new(writer.user_id.to_string(), Uuid::now_v7().to_string())
        .with_ip(writer.ip.clone())
        .with_user_agent(USER_AGENT)
}

/// The `n`-th task of `writer`, created through the command bus on a fresh UUIDv7 id.
pub async fn create_task(
    bus: &CommandBus,
    template: &Template,
    writer: &Writer,
    n: u64,
) -> Result<(), String> {
    let task_id = Uuid::now_v7();
    let command = TaskCommand::Schedule {
        task_id,
        user_id: writer.user_id,
        skill_name: template.skill.clone(),
        schedule_cron: template.cron.clone(),
        timezone: template.timezone,
        params: params(n),
        status: TaskStatus::Pending,
        project_id: Some(writer.project_id),
        run: sparc_domain::task::RunPolicy::default(),
        at: Utc::now(),
    };
    bus.create::<Task>(&task_id.to_string(), command, &metadata(writer))
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The event row the same command would write, for raw-SQL comparisons: the aggregate id,
/// payload and metadata, serialized as the event store serializes them.
pub fn event_row(template: &Template, writer: &Writer, n: u64) -> (String, Value, Value) {
    let task_id = Uuid::now_v7();
    let at = Utc::now();
    let event = TaskEvent::TaskScheduled {
        task_id,
        user_id: writer.user_id,
        skill_name: template.skill.clone(),
        schedule_cron: template.cron.clone(),
        timezone: template.timezone,
        params: params(n),
        status: TaskStatus::Pending,
        project_id: Some(writer.project_id),
        next_run_at: template.cron.next_after(at, &template.timezone),
        run: sparc_domain::task::RunPolicy::default(),
        at,
    };
    let payload = serde_json::to_value(event).unwrap_or(Value::Null);
    let metadata = serde_json::to_value(metadata(writer).into_map()).unwrap_or(Value::Null);
    (task_id.to_string(), payload, metadata)
}
