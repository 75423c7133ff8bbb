//! Integration tests of the projections against real databases, one module per area, in one
//! binary (one link).

mod fault_isolation;
mod leadership;
mod linger;
mod outbox;
mod upcasting;

use serde_json::json;
use sparc_domain::task::{RunPolicy, Task, TaskCommand, TaskStatus};
use sparc_domain::values::{CronSchedule, SkillName, TimeZoneName};
use sparc_store::{CommandBus, Database, EventMetadata};
use uuid::Uuid;

/// Schedules a task of a user of its own; its id.
async fn schedule_task(db: &Database) -> Uuid {
    let id = Uuid::now_v7();
    let command = TaskCommand::Schedule {
        task_id: id,
        user_id: Uuid::now_v7(),
        skill_name: SkillName::parse("lint").expect("a skill"),
        schedule_cron: CronSchedule::parse("*/15 * * * *").expect("a schedule"),
        timezone: TimeZoneName::default(),
        params: json!({}),
        status: TaskStatus::Pending,
        project_id: None,
        run: RunPolicy::default(),
        at: chrono::Utc::now(),
    };
    CommandBus::new(db)
        .create::<Task>(
            &id.to_string(),
            command,
            &EventMetadata::new("test", "projections"),
        )
        .await
        .expect("the task should be scheduled");
    id
}
