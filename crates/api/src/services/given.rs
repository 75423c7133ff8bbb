//! The "given" of the workflows' tests: a migrated SQLite database with its command bus, and
//! the users, tasks and agents a test starts from, recorded through the same commands the API
//! issues.

use chrono::Utc;
use serde_json::json;
use sparc_domain::DomainError;
use sparc_domain::agent::{Agent, AgentCommand, AgentStatus, AgentType};
use sparc_domain::task::{RunPolicy, Task, TaskCommand, TaskStatus};
use sparc_domain::values::{AgentName, CronSchedule, SkillName, TimeZoneName};
use sparc_store::testing::{SqliteTestFile, sqlite_database};
use sparc_store::{CommandBus, EventMetadata, Routed};
use uuid::Uuid;

use crate::answered_creates::Written;

/// A fresh database, the bus over it, and one user on whose behalf the commands run.
pub(super) struct Given {
    pub commands: CommandBus,
    pub metadata: EventMetadata,
    pub user: Uuid,
    _file: SqliteTestFile,
}

impl Given {
    pub async fn new() -> Self {
        let (db, file) = sqlite_database().await;
        Self {
            commands: CommandBus::new(&db),
            metadata: EventMetadata::new("test", Uuid::now_v7().to_string()),
            user: Uuid::now_v7(),
            _file: file,
        }
    }

    /// A pending task of the user, every minute, with `params` `{"n": 1}`.
    pub async fn task(&self) -> Uuid {
        let task_id = Uuid::now_v7();
        let schedule = TaskCommand::Schedule {
            task_id,
            user_id: self.user,
            skill_name: SkillName::parse("build").expect("skill"),
            schedule_cron: CronSchedule::parse("* * * * *").expect("cron"),
            timezone: TimeZoneName::parse("UTC").expect("zone"),
            params: json!({"n": 1}),
            status: TaskStatus::Pending,
            project_id: None,
            run: RunPolicy::default(),
            at: Utc::now(),
        };
        self.record::<Task>(task_id, schedule).await;
        task_id
    }

    /// Deletes task `task_id`.
    pub async fn delete(&self, task_id: Uuid) {
        self.record::<Task>(task_id, TaskCommand::Delete { at: Utc::now() })
            .await;
    }

    /// An idle coder agent named `name`.
    pub async fn agent(&self, name: &str) -> Uuid {
        let agent_id = Uuid::now_v7();
        let register = AgentCommand::Register {
            agent_id,
            name: AgentName::parse(name).expect("name"),
            agent_type: AgentType::Coder,
            capabilities: Vec::new(),
            status: AgentStatus::Idle,
            registered_by: self.user,
            at: Utc::now(),
        };
        self.record::<Agent>(agent_id, register).await;
        agent_id
    }

    /// The state of aggregate `id` of `A`, from its events.
    pub async fn state<A>(&self, id: Uuid) -> A
    where
        A: Routed,
        A::Error: DomainError,
    {
        let (state, _) = self
            .commands
            .load::<A>(&id.to_string())
            .await
            .expect("load");
        state
    }

    /// The read models `writes` must be settled in, in order.
    pub fn tables(&self, writes: &[Written]) -> Vec<&'static str> {
        writes.iter().map(|w| w.table).collect()
    }

    async fn record<A>(&self, id: Uuid, command: A::Command)
    where
        A: Routed,
        A::Command: Clone,
        A::Error: DomainError,
    {
        self.commands
            .execute::<A>(&id.to_string(), command, &self.metadata, None)
            .await
            .expect("the given command is accepted");
    }
}
