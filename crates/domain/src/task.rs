//! The Task aggregate: a skill run on a cron schedule in a time zone. It decides scheduling,
//! changes, soft deletion, firing a due slot exactly once, and the run counts of finished runs.
//!
//! Firing is keyed by the slot (`scheduled_for`): a slot fires only while it is the task's
//! `next_run_at`, and never twice, so two schedulers racing on the same slot are resolved by the
//! store's optimistic concurrency (the loser reloads and is refused).

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::execution::ExecutionStatus;
use crate::values::{
    CatchUp, CronSchedule, Overlap, SkillName, TimeZoneName, TimeoutSeconds, Timestamp, text_enum,
};
use crate::{DomainError, ErrorKind};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TaskStatus {
    /// Fires on its schedule.
    #[default]
    Pending,
    /// A run is in progress.
    Running,
    /// Set by its owner: done, no longer fires.
    Completed,
    /// Set by its owner: failed, no longer fires.
    Failed,
    /// Paused: does not fire until set back to pending.
    Disabled,
    /// Soft-deleted: kept for history, refused for every change.
    Deleted,
}

text_enum!(TaskStatus {
    Pending => "pending",
    Running => "running",
    Completed => "completed",
    Failed => "failed",
    Disabled => "disabled",
    Deleted => "deleted",
});

impl TaskStatus {
    /// Whether an owner may set this status directly (running and deleted are reached only
    /// through firing and deletion).
    pub fn is_settable(self) -> bool {
        !matches!(self, TaskStatus::Running | TaskStatus::Deleted)
    }

    /// The statuses an owner may set, in declaration order.
    pub fn settable() -> impl Iterator<Item = TaskStatus> {
        Self::ALL
            .iter()
            .copied()
            .filter(|status| status.is_settable())
    }
}

/// How a task's runs behave: how long one may take, whether slots may overlap a run still
/// going, and whether slots missed while no scheduler ran fire on recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunPolicy {
    /// A run not finished by then becomes `timeout`.
    #[serde(default)]
    pub timeout_seconds: TimeoutSeconds,
    /// What a slot does while a run is still going.
    #[serde(default)]
    pub overlap: Overlap,
    /// What becomes of missed slots.
    #[serde(default)]
    pub catch_up: CatchUp,
}

/// The most runs of one task going at once under `overlap: allow`; a slot beyond is skipped
/// and a manual run refused, as under `skip`.
pub const MAX_RUNS_AT_ONCE: usize = 100;

/// How long after its time a slot counts as missed (for `catch_up: none`): longer than any
/// scheduler pass takes, shorter than the shortest schedule interval.
pub const MISSED_AFTER_SECONDS: i64 = 60;

/// The fields a `PUT /tasks/{id}` may change; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TaskChanges {
    /// A new schedule.
    pub schedule_cron: Option<CronSchedule>,
    /// A new time zone.
    pub timezone: Option<TimeZoneName>,
    /// New parameters for the skill.
    pub params: Option<Value>,
    /// A new status (only settable ones).
    pub status: Option<TaskStatus>,
    /// Move to another project (`Some(None)` detaches it; stored as `null`, absent when unchanged).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_or_null"
    )]
    pub project_id: Option<Option<Uuid>>,
    /// A new run time limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<TimeoutSeconds>,
    /// A new overlap rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<Overlap>,
    /// A new catch-up rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<CatchUp>,
}

/// Reads a field that is present (possibly `null`) as `Some(_)`; an absent one defaults to `None`.
fn present_or_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<Uuid>>, D::Error> {
    Option::<Uuid>::deserialize(d).map(Some)
}

impl TaskChanges {
    fn is_empty(&self) -> bool {
        self.schedule_cron.is_none()
            && self.timezone.is_none()
            && self.params.is_none()
            && self.status.is_none()
            && self.project_id.is_none()
            && self.timeout_seconds.is_none()
            && self.overlap.is_none()
            && self.catch_up.is_none()
    }
}

/// What can be asked of a task.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskCommand {
    /// Create the task.
    Schedule {
        /// Its id.
        task_id: Uuid,
        /// Its owner.
        user_id: Uuid,
        /// The skill to run.
        skill_name: SkillName,
        /// When to run it.
        schedule_cron: CronSchedule,
        /// The zone the schedule is read in.
        timezone: TimeZoneName,
        /// Parameters for the skill.
        params: Value,
        /// Initial status: pending or disabled (or another settable status).
        status: TaskStatus,
        /// The owner's project it belongs to, if any.
        project_id: Option<Uuid>,
        /// How its runs behave.
        run: RunPolicy,
        /// Decision time.
        at: Timestamp,
    },
    /// Change some fields; recorded as one event.
    Update {
        /// The changes.
        changes: TaskChanges,
        /// Decision time.
        at: Timestamp,
    },
    /// Soft delete; deleting a deleted task is a no-op, so policies may repeat it.
    Delete {
        /// Decision time.
        at: Timestamp,
    },
    /// Fire the due slot `scheduled_for` (the scheduler's command).
    Fire {
        /// The execution the run becomes.
        execution_id: Uuid,
        /// The slot, which must be the task's current `next_run_at`.
        scheduled_for: Timestamp,
        /// Decision time.
        at: Timestamp,
    },
    /// Run now, outside the schedule (`POST /tasks/{id}/run`, or an agent reporting a run it
    /// started).
    RunNow {
        /// The execution the run becomes.
        execution_id: Uuid,
        /// The agent running it, when an agent started it.
        agent_id: Option<Uuid>,
        /// Decision time.
        at: Timestamp,
    },
    /// Record which agent took the running execution; other executions are ignored.
    Assign {
        /// The execution the agent took.
        execution_id: Uuid,
        /// The agent.
        agent_id: Uuid,
        /// Decision time.
        at: Timestamp,
    },
    /// Record that the running execution finished; other executions are ignored.
    FinishRun {
        /// The execution that finished.
        execution_id: Uuid,
        /// Its final status.
        status: ExecutionStatus,
        /// What the agent reported with it.
        report: RunReport,
        /// Decision time.
        at: Timestamp,
    },
}

impl TaskCommand {
    /// The command's name (its variant), for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Schedule { .. } => "Schedule",
            Self::Update { .. } => "Update",
            Self::Delete { .. } => "Delete",
            Self::Fire { .. } => "Fire",
            Self::RunNow { .. } => "RunNow",
            Self::Assign { .. } => "Assign",
            Self::FinishRun { .. } => "FinishRun",
        }
    }
}

/// What an agent reported with a finished run. The task keeps the first
/// [`RunReport::EXCERPT_BYTES`] of the output and the error (the execution keeps them whole).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunReport {
    /// The agent that ran it.
    pub agent_id: Option<Uuid>,
    /// Its output.
    pub output: Option<String>,
    /// Its error.
    pub error: Option<String>,
}

impl RunReport {
    /// How much of an output or error a task keeps, in bytes.
    pub const EXCERPT_BYTES: usize = 4096;
}

/// The first [`RunReport::EXCERPT_BYTES`] of `text`, cut at a character boundary.
fn excerpt(text: Option<String>) -> Option<String> {
    text.map(|mut text| {
        if text.len() > RunReport::EXCERPT_BYTES {
            let mut end = RunReport::EXCERPT_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        text
    })
}

/// What happened to a task. Names are stable: they are the `event_type` column of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskEvent {
    /// The task was created.
    TaskScheduled {
        /// Its id.
        task_id: Uuid,
        /// Its owner.
        user_id: Uuid,
        /// The skill.
        skill_name: SkillName,
        /// The schedule.
        schedule_cron: CronSchedule,
        /// The schedule's zone.
        timezone: TimeZoneName,
        /// Skill parameters.
        params: Value,
        /// Initial status.
        status: TaskStatus,
        /// Its project.
        project_id: Option<Uuid>,
        /// First due slot, if pending.
        next_run_at: Option<Timestamp>,
        /// How its runs behave (events recorded before it was kept have the defaults).
        #[serde(default)]
        run: RunPolicy,
        /// When.
        at: Timestamp,
    },
    /// Some fields changed (only the changed ones are present).
    TaskUpdated {
        /// The changes.
        changes: TaskChanges,
        /// The due slot after the change.
        next_run_at: Option<Timestamp>,
        /// When.
        at: Timestamp,
    },
    /// The task was soft-deleted.
    TaskDeleted {
        /// When.
        at: Timestamp,
    },
    /// A run started, for a slot or by hand.
    TaskFired {
        /// The execution.
        execution_id: Uuid,
        /// The slot (the request time for a manual run).
        scheduled_for: Timestamp,
        /// Whether it was started by hand.
        manual: bool,
        /// The agent running it, when an agent started it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_id: Option<Uuid>,
        /// The next due slot.
        next_run_at: Option<Timestamp>,
        /// When.
        at: Timestamp,
    },
    /// An agent took the running execution.
    TaskRunAssigned {
        /// The execution.
        execution_id: Uuid,
        /// The agent.
        agent_id: Uuid,
        /// When.
        at: Timestamp,
    },
    /// A due slot was skipped because a run was still going. Recorded once per run: it
    /// leaves no slot due (`next_run_at` is `None`) until the run finishes, which counts the
    /// slots it blocked ([`TaskEvent::TaskRunFinished`]'s `skipped_slots`).
    TaskRunSkipped {
        /// The skipped slot.
        scheduled_for: Timestamp,
        /// The run still going.
        running_execution_id: Uuid,
        /// The next due slot (`None`: none until the run finishes; events recorded before
        /// that rule name the next slot).
        next_run_at: Option<Timestamp>,
        /// When.
        at: Timestamp,
    },
    /// A slot missed while no scheduler ran did not fire (`catch_up: none`).
    TaskSlotMissed {
        /// The missed slot.
        scheduled_for: Timestamp,
        /// The next due slot, after now.
        next_run_at: Option<Timestamp>,
        /// When.
        at: Timestamp,
    },
    /// The running execution finished.
    TaskRunFinished {
        /// The execution.
        execution_id: Uuid,
        /// Its final status.
        status: ExecutionStatus,
        /// The agent that ran it, if one reported it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_id: Option<Uuid>,
        /// The start of its output (at most [`RunReport::EXCERPT_BYTES`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        /// The start of its error (at most [`RunReport::EXCERPT_BYTES`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The next due slot (the next cron time after the finish).
        next_run_at: Option<Timestamp>,
        /// The slots that came due while it ran and were skipped (at most
        /// [`MAX_COUNTED_SLOTS`]).
        #[serde(default, skip_serializing_if = "is_zero")]
        skipped_slots: u64,
        /// When.
        at: Timestamp,
    },
}

impl DomainEvent for TaskEvent {
    fn event_type(&self) -> String {
        match self {
            TaskEvent::TaskScheduled { .. } => "TaskScheduled",
            TaskEvent::TaskUpdated { .. } => "TaskUpdated",
            TaskEvent::TaskDeleted { .. } => "TaskDeleted",
            TaskEvent::TaskFired { .. } => "TaskFired",
            TaskEvent::TaskRunSkipped { .. } => "TaskRunSkipped",
            TaskEvent::TaskSlotMissed { .. } => "TaskSlotMissed",
            TaskEvent::TaskRunAssigned { .. } => "TaskRunAssigned",
            TaskEvent::TaskRunFinished { .. } => "TaskRunFinished",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            // 1.1 renamed `cron_expression` to `schedule_cron` (see `upcasting`).
            TaskEvent::TaskScheduled { .. } => "1.1",
            _ => "1.0",
        }
        .to_owned()
    }
}

/// Why a task command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    /// Schedule on an existing id.
    #[error("task already exists")]
    AlreadyExists,
    /// Any other command on an unknown id.
    #[error("Task not found")]
    NotFound,
    /// A change to a deleted task.
    #[error("task is deleted")]
    Deleted,
    /// An update that names no field.
    #[error("No fields to update")]
    NoChanges,
    /// A status that cannot be set directly.
    #[error("status cannot be set to '{0}'")]
    StatusNotSettable(TaskStatus),
    /// A scheduled fire of a task that is not pending.
    #[error("task is not pending")]
    NotPending,
    /// The slot fired already.
    #[error("slot {0} has already fired")]
    SlotAlreadyFired(Timestamp),
    /// The slot is not the task's due slot.
    #[error("slot {0} is not due")]
    SlotNotDue(Timestamp),
    /// A manual run while one is going.
    #[error("task is already running")]
    AlreadyRunning,
    /// A finish with a non-final status.
    #[error("a finished run needs a final status")]
    StatusNotFinal,
}

impl DomainError for TaskError {
    fn kind(&self) -> ErrorKind {
        match self {
            TaskError::NotFound => ErrorKind::NotFound,
            TaskError::AlreadyExists
            | TaskError::SlotAlreadyFired(_)
            | TaskError::AlreadyRunning
            | TaskError::NotPending
            | TaskError::Deleted => ErrorKind::Conflict,
            TaskError::NoChanges
            | TaskError::StatusNotSettable(_)
            | TaskError::SlotNotDue(_)
            | TaskError::StatusNotFinal => ErrorKind::Invalid,
        }
    }
}

/// The task's state, folded from its events.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Task {
    /// Its id (nil until scheduled).
    pub id: Uuid,
    /// Whether it has been scheduled.
    pub exists: bool,
    /// Its owner.
    pub user_id: Uuid,
    /// The skill.
    pub skill_name: Option<SkillName>,
    /// The schedule.
    pub schedule_cron: Option<CronSchedule>,
    /// The schedule's zone.
    pub timezone: TimeZoneName,
    /// Skill parameters.
    pub params: Value,
    /// Current status.
    pub status: TaskStatus,
    /// The status to return to when the running execution finishes.
    pub resume_status: TaskStatus,
    /// Its project.
    pub project_id: Option<Uuid>,
    /// The due slot.
    pub next_run_at: Option<Timestamp>,
    /// The latest slot that fired on schedule.
    pub last_fired_slot: Option<Timestamp>,
    /// The execution in progress.
    pub running_execution_id: Option<Uuid>,
    /// Creation time.
    pub created_at: Option<Timestamp>,
    /// Last change.
    pub updated_at: Option<Timestamp>,
    /// Start of the latest run.
    pub last_run_at: Option<Timestamp>,
    /// Finished runs.
    pub run_count: u64,
    /// Finished runs that failed or timed out.
    pub error_count: u64,
    /// The agent on the running or the last run, if known.
    #[serde(default)]
    pub assignee: Option<Uuid>,
    /// The start of the last finished run's output.
    #[serde(default)]
    pub last_output: Option<String>,
    /// The start of the last finished run's error.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The first slot skipped while the running execution goes on.
    #[serde(default)]
    pub skipped_since: Option<Timestamp>,
    /// Slots skipped in all because a run was still going.
    #[serde(default)]
    pub skipped_slots: u64,
    /// How its runs behave.
    #[serde(default)]
    pub run: RunPolicy,
    /// Earlier runs still going beside `running_execution_id` (`overlap: allow`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlapping_runs: Vec<Uuid>,
}

/// Slots a finished run counts as skipped at most (a run stuck for months on a schedule of
/// every minute is not worth iterating over every slot).
pub const MAX_COUNTED_SLOTS: u64 = 100_000;

fn is_zero(count: &u64) -> bool {
    *count == 0
}

impl Task {
    fn next_slot(
        schedule: &CronSchedule,
        zone: &TimeZoneName,
        status: TaskStatus,
        after: Timestamp,
    ) -> Option<Timestamp> {
        (status == TaskStatus::Pending)
            .then(|| schedule.next_after(after, zone))
            .flatten()
    }

    fn live(&self) -> Result<(), TaskError> {
        if !self.exists {
            Err(TaskError::NotFound)
        } else if self.status == TaskStatus::Deleted {
            Err(TaskError::Deleted)
        } else {
            Ok(())
        }
    }

    /// Whether a new run may start beside the ones going: under `overlap: allow`, up to
    /// [`MAX_RUNS_AT_ONCE`] (the task keeps every run going in its state, so a flood of manual
    /// runs must not grow it without bound).
    fn may_start_beside(&self) -> bool {
        self.run.overlap == Overlap::Allow && 1 + self.overlapping_runs.len() < MAX_RUNS_AT_ONCE
    }

    /// Whether `execution_id` is one of the task's runs still going.
    fn runs(&self, execution_id: Uuid) -> bool {
        self.running_execution_id == Some(execution_id)
            || self.overlapping_runs.contains(&execution_id)
    }

    /// The status this task will have once no run is in progress.
    fn settled_status(&self) -> TaskStatus {
        if self.status == TaskStatus::Running {
            self.resume_status
        } else {
            self.status
        }
    }

    fn decide_update(
        &self,
        mut changes: TaskChanges,
        at: Timestamp,
    ) -> Result<Vec<TaskEvent>, TaskError> {
        if changes.is_empty() {
            return Err(TaskError::NoChanges);
        }
        self.live()?;
        if let Some(status) = changes.status
            && !status.is_settable()
        {
            return Err(TaskError::StatusNotSettable(status));
        }
        // Keep only what differs, so a repeated PUT records nothing.
        if changes.schedule_cron.as_ref() == self.schedule_cron.as_ref() {
            changes.schedule_cron = None;
        }
        if changes.timezone == Some(self.timezone) {
            changes.timezone = None;
        }
        if changes.params.as_ref() == Some(&self.params) {
            changes.params = None;
        }
        if changes.status == Some(self.settled_status()) {
            changes.status = None;
        }
        if changes.project_id == Some(self.project_id) {
            changes.project_id = None;
        }
        if changes.timeout_seconds == Some(self.run.timeout_seconds) {
            changes.timeout_seconds = None;
        }
        if changes.overlap == Some(self.run.overlap) {
            changes.overlap = None;
        }
        if changes.catch_up == Some(self.run.catch_up) {
            changes.catch_up = None;
        }
        if changes.is_empty() {
            return Ok(vec![]);
        }
        let schedule = changes
            .schedule_cron
            .clone()
            .or_else(|| self.schedule_cron.clone())
            .ok_or(TaskError::NotFound)?;
        let zone = changes.timezone.unwrap_or(self.timezone);
        let status = changes.status.unwrap_or(self.settled_status());
        let timing_changed = changes.schedule_cron.is_some()
            || changes.timezone.is_some()
            || changes.status.is_some();
        let next_run_at = if self.status == TaskStatus::Running {
            self.next_run_at
        } else if timing_changed {
            Self::next_slot(&schedule, &zone, status, at)
        } else {
            self.next_run_at
        };
        Ok(vec![TaskEvent::TaskUpdated {
            changes,
            next_run_at,
            at,
        }])
    }

    fn decide_fire(
        &self,
        execution_id: Uuid,
        scheduled_for: Timestamp,
        at: Timestamp,
    ) -> Result<Vec<TaskEvent>, TaskError> {
        self.live()?;
        if self
            .last_fired_slot
            .is_some_and(|last| scheduled_for <= last)
        {
            return Err(TaskError::SlotAlreadyFired(scheduled_for));
        }
        if self.settled_status() != TaskStatus::Pending {
            return Err(TaskError::NotPending);
        }
        if self.next_run_at != Some(scheduled_for) || scheduled_for > at {
            return Err(TaskError::SlotNotDue(scheduled_for));
        }
        let schedule = self.schedule_cron.as_ref().ok_or(TaskError::NotFound)?;
        // The next slot is after now, not after the fired slot: slots missed while no scheduler
        // ran collapse into this one run.
        let next_run_at = schedule.next_after(at.max(scheduled_for), &self.timezone);
        if self.run.catch_up == CatchUp::None
            && (at - scheduled_for).num_seconds() > MISSED_AFTER_SECONDS
        {
            return Ok(vec![TaskEvent::TaskSlotMissed {
                scheduled_for,
                next_run_at,
                at,
            }]);
        }
        let overlapped = self
            .running_execution_id
            .filter(|_| !self.may_start_beside());
        Ok(vec![match overlapped {
            Some(running) => TaskEvent::TaskRunSkipped {
                scheduled_for,
                running_execution_id: running,
                next_run_at: None,
                at,
            },
            None => TaskEvent::TaskFired {
                execution_id,
                scheduled_for,
                manual: false,
                agent_id: None,
                next_run_at,
                at,
            },
        }])
    }

    fn decide_run_now(
        &self,
        execution_id: Uuid,
        agent_id: Option<Uuid>,
        at: Timestamp,
    ) -> Result<Vec<TaskEvent>, TaskError> {
        self.live()?;
        if self.running_execution_id.is_some() && !self.may_start_beside() {
            return Err(TaskError::AlreadyRunning);
        }
        Ok(vec![TaskEvent::TaskFired {
            execution_id,
            scheduled_for: at,
            manual: true,
            agent_id,
            next_run_at: self.next_run_at,
            at,
        }])
    }

    fn decide_assign(
        &self,
        execution_id: Uuid,
        agent_id: Uuid,
        at: Timestamp,
    ) -> Result<Vec<TaskEvent>, TaskError> {
        if !self.exists {
            return Err(TaskError::NotFound);
        }
        if !self.runs(execution_id)
            || self.assignee == Some(agent_id)
            || self.status == TaskStatus::Deleted
        {
            return Ok(vec![]);
        }
        Ok(vec![TaskEvent::TaskRunAssigned {
            execution_id,
            agent_id,
            at,
        }])
    }

    fn decide_finish(
        &self,
        execution_id: Uuid,
        status: ExecutionStatus,
        report: RunReport,
        at: Timestamp,
    ) -> Result<Vec<TaskEvent>, TaskError> {
        if !self.exists {
            return Err(TaskError::NotFound);
        }
        if !status.is_final() {
            return Err(TaskError::StatusNotFinal);
        }
        if !self.runs(execution_id) {
            return Ok(vec![]);
        }
        // Under `overlap: allow` the next slot was set when this run fired; it stays while the
        // task is pending. Otherwise it is the next cron time after the finish.
        let keeps_next_slot = self.run.overlap == Overlap::Allow
            && self.resume_status == TaskStatus::Pending
            && self.next_run_at.is_some();
        let next_run_at = match &self.schedule_cron {
            _ if keeps_next_slot => self.next_run_at,
            Some(schedule) => Self::next_slot(schedule, &self.timezone, self.resume_status, at),
            None => None,
        };
        let skipped_slots = match (&self.schedule_cron, self.skipped_since) {
            (Some(schedule), Some(first)) => slots_through(schedule, &self.timezone, first, at),
            _ => 0,
        };
        Ok(vec![TaskEvent::TaskRunFinished {
            execution_id,
            status,
            agent_id: report.agent_id,
            output: excerpt(report.output),
            error: excerpt(report.error),
            next_run_at,
            skipped_slots,
            at,
        }])
    }
}

/// The slots of `schedule` from `first` (a slot itself) through `last`, at most
/// [`MAX_COUNTED_SLOTS`].
fn slots_through(
    schedule: &CronSchedule,
    zone: &TimeZoneName,
    first: Timestamp,
    last: Timestamp,
) -> u64 {
    let mut count = 0;
    let mut slot = Some(first);
    while let Some(at) = slot.filter(|at| *at <= last && count < MAX_COUNTED_SLOTS) {
        count += 1;
        slot = schedule.next_after(at, zone);
    }
    count
}

impl Aggregate for Task {
    const TYPE: &'static str = "Task";
    type Command = TaskCommand;
    type Event = TaskEvent;
    type Error = TaskError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let events = match command {
            TaskCommand::Schedule {
                task_id,
                user_id,
                skill_name,
                schedule_cron,
                timezone,
                params,
                status,
                project_id,
                run,
                at,
            } => {
                if self.exists {
                    return Err(TaskError::AlreadyExists);
                }
                if !status.is_settable() {
                    return Err(TaskError::StatusNotSettable(status));
                }
                let next_run_at = Self::next_slot(&schedule_cron, &timezone, status, at);
                vec![TaskEvent::TaskScheduled {
                    task_id,
                    user_id,
                    skill_name,
                    schedule_cron,
                    timezone,
                    params,
                    status,
                    project_id,
                    next_run_at,
                    run,
                    at,
                }]
            }
            TaskCommand::Update { changes, at } => self.decide_update(changes, at)?,
            TaskCommand::Delete { at } => match (self.exists, self.status) {
                (false, _) => return Err(TaskError::NotFound),
                (true, TaskStatus::Deleted) => vec![],
                (true, _) => vec![TaskEvent::TaskDeleted { at }],
            },
            TaskCommand::Fire {
                execution_id,
                scheduled_for,
                at,
            } => self.decide_fire(execution_id, scheduled_for, at)?,
            TaskCommand::RunNow {
                execution_id,
                agent_id,
                at,
            } => self.decide_run_now(execution_id, agent_id, at)?,
            TaskCommand::Assign {
                execution_id,
                agent_id,
                at,
            } => self.decide_assign(execution_id, agent_id, at)?,
            TaskCommand::FinishRun {
                execution_id,
                status,
                report,
                at,
            } => self.decide_finish(execution_id, status, report, at)?,
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            TaskEvent::TaskScheduled {
                task_id,
                user_id,
                skill_name,
                schedule_cron,
                timezone,
                params,
                status,
                project_id,
                next_run_at,
                run,
                at,
            } => {
                *self = Task {
                    id: task_id,
                    exists: true,
                    user_id,
                    skill_name: Some(skill_name),
                    schedule_cron: Some(schedule_cron),
                    timezone,
                    params,
                    status,
                    resume_status: status,
                    project_id,
                    next_run_at,
                    created_at: Some(at),
                    updated_at: Some(at),
                    run,
                    ..Task::default()
                };
            }
            TaskEvent::TaskUpdated {
                changes,
                next_run_at,
                at,
            } => {
                if let Some(schedule) = changes.schedule_cron {
                    self.schedule_cron = Some(schedule);
                }
                if let Some(zone) = changes.timezone {
                    self.timezone = zone;
                }
                if let Some(params) = changes.params {
                    self.params = params;
                }
                if let Some(status) = changes.status {
                    if self.status == TaskStatus::Running {
                        self.resume_status = status;
                    } else {
                        self.status = status;
                    }
                }
                if let Some(project_id) = changes.project_id {
                    self.project_id = project_id;
                }
                if let Some(timeout) = changes.timeout_seconds {
                    self.run.timeout_seconds = timeout;
                }
                if let Some(overlap) = changes.overlap {
                    self.run.overlap = overlap;
                }
                if let Some(catch_up) = changes.catch_up {
                    self.run.catch_up = catch_up;
                }
                self.next_run_at = next_run_at;
                self.updated_at = Some(at);
            }
            TaskEvent::TaskDeleted { at } => {
                self.status = TaskStatus::Deleted;
                self.resume_status = TaskStatus::Deleted;
                self.next_run_at = None;
                self.updated_at = Some(at);
            }
            TaskEvent::TaskFired {
                execution_id,
                scheduled_for,
                manual,
                agent_id,
                next_run_at,
                at,
            } => {
                if !manual {
                    self.last_fired_slot = Some(scheduled_for);
                }
                self.assignee = agent_id;
                self.last_output = None;
                self.last_error = None;
                self.resume_status = self.settled_status();
                self.status = TaskStatus::Running;
                if let Some(earlier) = self.running_execution_id.replace(execution_id) {
                    self.overlapping_runs.push(earlier);
                }
                self.next_run_at = next_run_at;
                self.last_run_at = Some(at);
                self.updated_at = Some(at);
            }
            TaskEvent::TaskRunSkipped {
                scheduled_for,
                next_run_at,
                at,
                ..
            } => {
                self.last_fired_slot = Some(scheduled_for);
                self.skipped_since.get_or_insert(scheduled_for);
                self.next_run_at = next_run_at;
                self.updated_at = Some(at);
            }
            TaskEvent::TaskSlotMissed {
                scheduled_for,
                next_run_at,
                at,
            } => {
                self.last_fired_slot = Some(scheduled_for);
                self.next_run_at = next_run_at;
                self.updated_at = Some(at);
            }
            TaskEvent::TaskRunAssigned { agent_id, at, .. } => {
                self.assignee = Some(agent_id);
                self.updated_at = Some(at);
            }
            TaskEvent::TaskRunFinished {
                execution_id,
                status,
                agent_id,
                output,
                error,
                next_run_at,
                skipped_slots,
                at,
                ..
            } => {
                self.skipped_since = None;
                self.skipped_slots += skipped_slots;
                self.assignee = agent_id.or(self.assignee);
                self.last_output = output;
                self.last_error = error;
                self.run_count += 1;
                if status.is_error() {
                    self.error_count += 1;
                }
                if self.running_execution_id == Some(execution_id) {
                    self.running_execution_id = self.overlapping_runs.pop();
                } else {
                    self.overlapping_runs.retain(|run| *run != execution_id);
                }
                if self.running_execution_id.is_none() {
                    self.status = self.resume_status;
                }
                self.next_run_at = next_run_at;
                self.updated_at = Some(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use cqrs_es::test::TestFramework;
    use serde_json::json;

    use super::*;

    type TaskTest = TestFramework<Task>;

    fn at(h: u32, m: u32) -> Timestamp {
        Utc.with_ymd_and_hms(2026, 3, 2, h, m, 0).unwrap()
    }

    fn task_id() -> Uuid {
        Uuid::from_u128(1)
    }

    fn scheduled(cron: &str, status: TaskStatus) -> TaskEvent {
        let schedule_cron = CronSchedule::parse(cron).unwrap();
        let next_run_at =
            Task::next_slot(&schedule_cron, &TimeZoneName::default(), status, at(9, 0));
        TaskEvent::TaskScheduled {
            task_id: task_id(),
            user_id: Uuid::from_u128(7),
            skill_name: SkillName::parse("lint").unwrap(),
            schedule_cron,
            timezone: TimeZoneName::default(),
            params: json!({}),
            status,
            project_id: None,
            next_run_at,
            run: RunPolicy::default(),
            at: at(9, 0),
        }
    }

    fn fired(exec: u128, slot: Timestamp, next: Timestamp) -> TaskEvent {
        TaskEvent::TaskFired {
            execution_id: Uuid::from_u128(exec),
            scheduled_for: slot,
            manual: false,
            agent_id: None,
            next_run_at: Some(next),
            at: slot,
        }
    }

    #[test]
    fn scheduling_a_task_computes_its_first_slot() {
        TaskTest::with(())
            .given_no_previous_events()
            .when(TaskCommand::Schedule {
                task_id: task_id(),
                user_id: Uuid::from_u128(7),
                skill_name: SkillName::parse("lint").unwrap(),
                schedule_cron: CronSchedule::parse("*/15 * * * *").unwrap(),
                timezone: TimeZoneName::default(),
                params: json!({}),
                status: TaskStatus::Pending,
                project_id: None,
                run: RunPolicy::default(),
                at: at(9, 0),
            })
            .then_expect_events(vec![TaskEvent::TaskScheduled {
                task_id: task_id(),
                user_id: Uuid::from_u128(7),
                skill_name: SkillName::parse("lint").unwrap(),
                schedule_cron: CronSchedule::parse("*/15 * * * *").unwrap(),
                timezone: TimeZoneName::default(),
                params: json!({}),
                status: TaskStatus::Pending,
                project_id: None,
                next_run_at: Some(at(9, 15)),
                run: RunPolicy::default(),
                at: at(9, 0),
            }]);
    }

    #[test]
    fn scheduling_an_existing_task_is_refused() {
        let result = TaskTest::with(())
            .given(vec![scheduled("* * * * *", TaskStatus::Pending)])
            .when(TaskCommand::Schedule {
                task_id: task_id(),
                user_id: Uuid::from_u128(7),
                skill_name: SkillName::parse("lint").unwrap(),
                schedule_cron: CronSchedule::parse("* * * * *").unwrap(),
                timezone: TimeZoneName::default(),
                params: json!({}),
                status: TaskStatus::Pending,
                project_id: None,
                run: RunPolicy::default(),
                at: at(9, 0),
            })
            .inspect_result();
        assert_eq!(result, Err(TaskError::AlreadyExists));
    }

    #[test]
    fn a_due_pending_slot_fires_and_moves_next_run_after_now() {
        TaskTest::with(())
            .given(vec![scheduled("*/15 * * * *", TaskStatus::Pending)])
            .when(TaskCommand::Fire {
                execution_id: Uuid::from_u128(100),
                scheduled_for: at(9, 15),
                at: at(9, 40),
            })
            .then_expect_events(vec![TaskEvent::TaskFired {
                execution_id: Uuid::from_u128(100),
                scheduled_for: at(9, 15),
                manual: false,
                agent_id: None,
                // Slots 9:30 was missed while no scheduler ran: it collapses into this run.
                next_run_at: Some(at(9, 45)),
                at: at(9, 40),
            }]);
    }

    #[test]
    fn firing_the_same_slot_twice_is_refused() {
        TaskTest::with(())
            .given(vec![
                scheduled("*/15 * * * *", TaskStatus::Pending),
                fired(100, at(9, 15), at(9, 30)),
            ])
            .when(TaskCommand::Fire {
                execution_id: Uuid::from_u128(101),
                scheduled_for: at(9, 15),
                at: at(9, 15),
            })
            .then_expect_error(TaskError::SlotAlreadyFired(at(9, 15)));
    }

    #[test]
    fn a_slot_that_is_not_the_due_one_is_refused() {
        TaskTest::with(())
            .given(vec![scheduled("*/15 * * * *", TaskStatus::Pending)])
            .when(TaskCommand::Fire {
                execution_id: Uuid::from_u128(100),
                scheduled_for: at(9, 30),
                at: at(9, 20),
            })
            .then_expect_error(TaskError::SlotNotDue(at(9, 30)));
    }

    #[test]
    fn firing_a_disabled_task_is_refused() {
        TaskTest::with(())
            .given(vec![scheduled("*/15 * * * *", TaskStatus::Disabled)])
            .when(TaskCommand::Fire {
                execution_id: Uuid::from_u128(100),
                scheduled_for: at(9, 15),
                at: at(9, 15),
            })
            .then_expect_error(TaskError::NotPending);
    }

    #[test]
    fn firing_a_deleted_task_is_refused() {
        TaskTest::with(())
            .given(vec![
                scheduled("*/15 * * * *", TaskStatus::Pending),
                TaskEvent::TaskDeleted { at: at(9, 5) },
            ])
            .when(TaskCommand::Fire {
                execution_id: Uuid::from_u128(100),
                scheduled_for: at(9, 15),
                at: at(9, 15),
            })
            .then_expect_error(TaskError::Deleted);
    }

    #[test]
    fn a_slot_that_would_overlap_a_running_run_is_recorded_as_skipped() {
        TaskTest::with(())
            .given(vec![
                scheduled("*/15 * * * *", TaskStatus::Pending),
                fired(100, at(9, 15), at(9, 30)),
            ])
            .when(TaskCommand::Fire {
                execution_id: Uuid::from_u128(101),
                scheduled_for: at(9, 30),
                at: at(9, 30),
            })
            .then_expect_events(vec![TaskEvent::TaskRunSkipped {
                scheduled_for: at(9, 30),
                running_execution_id: Uuid::from_u128(100),
                next_run_at: None,
                at: at(9, 30),
            }]);
    }

    #[test]
    fn a_stuck_run_is_recorded_once_and_its_finish_counts_the_slots_it_blocked() {
        let skipped = TaskEvent::TaskRunSkipped {
            scheduled_for: at(9, 30),
            running_execution_id: Uuid::from_u128(100),
            next_run_at: None,
            at: at(9, 30),
        };
        let given = || {
            vec![
                scheduled("*/15 * * * *", TaskStatus::Pending),
                fired(100, at(9, 15), at(9, 30)),
                skipped.clone(),
            ]
        };
        // No slot is due any more: a later one is not recorded again.
        TaskTest::with(())
            .given(given())
            .when(TaskCommand::Fire {
                execution_id: Uuid::from_u128(101),
                scheduled_for: at(9, 45),
                at: at(9, 45),
            })
            .then_expect_error(TaskError::SlotNotDue(at(9, 45)));
        // Finished at 10:20: the slots of 9:30, 9:45, 10:00 and 10:15 were blocked.
        TaskTest::with(())
            .given(given())
            .when(TaskCommand::FinishRun {
                execution_id: Uuid::from_u128(100),
                status: ExecutionStatus::Success,
                report: RunReport::default(),
                at: at(10, 20),
            })
            .then_expect_events(vec![TaskEvent::TaskRunFinished {
                execution_id: Uuid::from_u128(100),
                status: ExecutionStatus::Success,
                agent_id: None,
                output: None,
                error: None,
                next_run_at: Some(at(10, 30)),
                skipped_slots: 4,
                at: at(10, 20),
            }]);
    }

    #[test]
    fn a_finished_run_counts_and_moves_next_run_after_the_finish() {
        TaskTest::with(())
            .given(vec![
                scheduled("*/15 * * * *", TaskStatus::Pending),
                fired(100, at(9, 15), at(9, 30)),
            ])
            .when(TaskCommand::FinishRun {
                execution_id: Uuid::from_u128(100),
                status: ExecutionStatus::Failed,
                report: RunReport::default(),
                at: at(9, 50),
            })
            .then_expect_events(vec![TaskEvent::TaskRunFinished {
                execution_id: Uuid::from_u128(100),
                status: ExecutionStatus::Failed,
                agent_id: None,
                output: None,
                error: None,
                next_run_at: Some(at(10, 0)),
                skipped_slots: 0,
                at: at(9, 50),
            }]);
        let mut task = Task::default();
        for event in [
            scheduled("*/15 * * * *", TaskStatus::Pending),
            fired(100, at(9, 15), at(9, 30)),
            TaskEvent::TaskRunFinished {
                execution_id: Uuid::from_u128(100),
                status: ExecutionStatus::Failed,
                agent_id: None,
                output: None,
                error: None,
                next_run_at: Some(at(10, 0)),
                skipped_slots: 0,
                at: at(9, 50),
            },
        ] {
            task.apply(event);
        }
        assert_eq!((task.run_count, task.error_count), (1, 1));
        assert_eq!(task.status, TaskStatus::Pending);
        assert_eq!(task.last_run_at, Some(at(9, 15)));
    }

    #[test]
    fn a_task_shows_who_took_its_run_and_the_start_of_what_the_run_reported() {
        let agent = Uuid::from_u128(77);
        // One byte, then two-byte characters: the limit falls inside a character.
        let long_output = format!("a{}", "é".repeat(RunReport::EXCERPT_BYTES));
        TaskTest::with(())
            .given(vec![
                scheduled("*/15 * * * *", TaskStatus::Pending),
                fired(100, at(9, 15), at(9, 30)),
            ])
            .when(TaskCommand::Assign {
                execution_id: Uuid::from_u128(100),
                agent_id: agent,
                at: at(9, 16),
            })
            .then_expect_events(vec![TaskEvent::TaskRunAssigned {
                execution_id: Uuid::from_u128(100),
                agent_id: agent,
                at: at(9, 16),
            }]);
        let mut task = Task::default();
        for event in [
            scheduled("*/15 * * * *", TaskStatus::Pending),
            fired(100, at(9, 15), at(9, 30)),
            TaskEvent::TaskRunAssigned {
                execution_id: Uuid::from_u128(100),
                agent_id: agent,
                at: at(9, 16),
            },
        ] {
            task.apply(event);
        }
        assert_eq!(task.assignee, Some(agent));
        let finished = TaskTest::with(())
            .given(vec![
                scheduled("*/15 * * * *", TaskStatus::Pending),
                fired(100, at(9, 15), at(9, 30)),
            ])
            .when(TaskCommand::FinishRun {
                execution_id: Uuid::from_u128(100),
                status: ExecutionStatus::Failed,
                report: RunReport {
                    agent_id: Some(agent),
                    output: Some(long_output),
                    error: Some("boom".to_owned()),
                },
                at: at(9, 50),
            })
            .inspect_result()
            .expect("the run finishes");
        let [TaskEvent::TaskRunFinished { output, error, .. }] = &finished[..] else {
            panic!("one TaskRunFinished expected: {finished:?}");
        };
        let output = output.as_deref().expect("an output");
        assert_eq!(
            output.len(),
            RunReport::EXCERPT_BYTES - 1,
            "cut before the split character"
        );
        assert!(output[1..].chars().all(|c| c == 'é'));
        assert_eq!(error.as_deref(), Some("boom"));
        task.apply(finished[0].clone());
        assert_eq!(task.assignee, Some(agent));
        assert_eq!(task.last_error.as_deref(), Some("boom"));
        task.apply(fired(101, at(10, 0), at(10, 15)));
        assert_eq!(
            (task.assignee, task.last_output, task.last_error),
            (None, None, None),
            "a new run starts with a clean slate"
        );
    }

    #[test]
    fn assigning_an_execution_that_is_not_running_records_nothing() {
        TaskTest::with(())
            .given(vec![scheduled("*/15 * * * *", TaskStatus::Pending)])
            .when(TaskCommand::Assign {
                execution_id: Uuid::from_u128(5),
                agent_id: Uuid::from_u128(77),
                at: at(9, 50),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn finishing_an_execution_that_is_not_running_records_nothing() {
        TaskTest::with(())
            .given(vec![scheduled("*/15 * * * *", TaskStatus::Pending)])
            .when(TaskCommand::FinishRun {
                execution_id: Uuid::from_u128(5),
                status: ExecutionStatus::Success,
                report: RunReport::default(),
                at: at(9, 50),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn running_by_hand_is_refused_while_a_run_is_going() {
        TaskTest::with(())
            .given(vec![
                scheduled("*/15 * * * *", TaskStatus::Pending),
                fired(100, at(9, 15), at(9, 30)),
            ])
            .when(TaskCommand::RunNow {
                execution_id: Uuid::from_u128(2),
                agent_id: None,
                at: at(9, 16),
            })
            .then_expect_error(TaskError::AlreadyRunning);
    }

    #[test]
    fn a_cron_change_recomputes_next_run_in_one_event() {
        TaskTest::with(())
            .given(vec![scheduled("*/15 * * * *", TaskStatus::Pending)])
            .when(TaskCommand::Update {
                changes: TaskChanges {
                    schedule_cron: Some(CronSchedule::parse("0 12 * * *").unwrap()),
                    params: Some(json!({"depth": 2})),
                    ..TaskChanges::default()
                },
                at: at(10, 0),
            })
            .then_expect_events(vec![TaskEvent::TaskUpdated {
                changes: TaskChanges {
                    schedule_cron: Some(CronSchedule::parse("0 12 * * *").unwrap()),
                    params: Some(json!({"depth": 2})),
                    ..TaskChanges::default()
                },
                next_run_at: Some(at(12, 0)),
                at: at(10, 0),
            }]);
    }

    #[test]
    fn disabling_clears_next_run_and_enabling_restores_it() {
        let disable = TaskChanges {
            status: Some(TaskStatus::Disabled),
            ..TaskChanges::default()
        };
        TaskTest::with(())
            .given(vec![scheduled("*/15 * * * *", TaskStatus::Pending)])
            .when(TaskCommand::Update {
                changes: disable.clone(),
                at: at(10, 0),
            })
            .then_expect_events(vec![TaskEvent::TaskUpdated {
                changes: disable,
                next_run_at: None,
                at: at(10, 0),
            }]);
    }

    #[test]
    fn an_update_without_fields_is_refused_and_an_unchanged_one_records_nothing() {
        TaskTest::with(())
            .given(vec![scheduled("*/15 * * * *", TaskStatus::Pending)])
            .when(TaskCommand::Update {
                changes: TaskChanges::default(),
                at: at(10, 0),
            })
            .then_expect_error(TaskError::NoChanges);
        TaskTest::with(())
            .given(vec![scheduled("*/15 * * * *", TaskStatus::Pending)])
            .when(TaskCommand::Update {
                changes: TaskChanges {
                    params: Some(json!({})),
                    ..TaskChanges::default()
                },
                at: at(10, 0),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn status_running_or_deleted_cannot_be_set_directly() {
        TaskTest::with(())
            .given(vec![scheduled("*/15 * * * *", TaskStatus::Pending)])
            .when(TaskCommand::Update {
                changes: TaskChanges {
                    status: Some(TaskStatus::Running),
                    ..TaskChanges::default()
                },
                at: at(10, 0),
            })
            .then_expect_error(TaskError::StatusNotSettable(TaskStatus::Running));
    }

    #[test]
    fn updating_a_deleted_task_is_refused_and_deleting_again_is_a_no_op() {
        let given = vec![
            scheduled("*/15 * * * *", TaskStatus::Pending),
            TaskEvent::TaskDeleted { at: at(9, 5) },
        ];
        TaskTest::with(())
            .given(given.clone())
            .when(TaskCommand::Update {
                changes: TaskChanges {
                    params: Some(json!({"a": 1})),
                    ..TaskChanges::default()
                },
                at: at(10, 0),
            })
            .then_expect_error(TaskError::Deleted);
        TaskTest::with(())
            .given(given)
            .when(TaskCommand::Delete { at: at(10, 0) })
            .then_expect_events(vec![]);
    }

    #[test]
    fn commands_on_an_unknown_task_are_not_found() {
        TaskTest::with(())
            .given_no_previous_events()
            .when(TaskCommand::Delete { at: at(10, 0) })
            .then_expect_error(TaskError::NotFound);
    }
    fn with_policy(run: RunPolicy) -> TaskEvent {
        TaskEvent::TaskUpdated {
            changes: TaskChanges {
                timeout_seconds: Some(run.timeout_seconds),
                overlap: Some(run.overlap),
                catch_up: Some(run.catch_up),
                ..Default::default()
            },
            next_run_at: Some(at(9, 5)),
            at: at(9, 0),
        }
    }

    #[test]
    fn under_overlap_allow_a_due_slot_runs_beside_the_run_still_going() {
        let allow = RunPolicy {
            overlap: Overlap::Allow,
            ..RunPolicy::default()
        };
        TaskTest::with(())
            .given(vec![
                scheduled("*/5 * * * *", TaskStatus::Pending),
                with_policy(allow),
                fired(100, at(9, 5), at(9, 10)),
            ])
            .when(TaskCommand::Fire {
                execution_id: Uuid::from_u128(101),
                scheduled_for: at(9, 10),
                at: at(9, 10),
            })
            .then_expect_events(vec![TaskEvent::TaskFired {
                execution_id: Uuid::from_u128(101),
                scheduled_for: at(9, 10),
                manual: false,
                agent_id: None,
                next_run_at: Some(at(9, 15)),
                at: at(9, 10),
            }]);
    }

    #[test]
    fn overlapping_runs_each_count_and_the_task_runs_until_the_last_finishes() {
        let mut task = Task::default();
        for event in [
            scheduled("*/5 * * * *", TaskStatus::Pending),
            with_policy(RunPolicy {
                overlap: Overlap::Allow,
                ..RunPolicy::default()
            }),
            fired(100, at(9, 5), at(9, 10)),
            fired(101, at(9, 10), at(9, 15)),
        ] {
            task.apply(event);
        }
        let finish = |task: &Task, exec: u128, when: Timestamp| {
            let events = task
                .decide_finish(
                    Uuid::from_u128(exec),
                    ExecutionStatus::Success,
                    RunReport::default(),
                    when,
                )
                .unwrap();
            assert_eq!(events.len(), 1, "run {exec} finishes once");
            events
        };
        for event in finish(&task, 100, at(9, 11)) {
            task.apply(event);
        }
        assert_eq!(task.status, TaskStatus::Running, "run 101 still goes");
        assert_eq!(task.next_run_at, Some(at(9, 15)), "the next slot stays");
        for event in finish(&task, 101, at(9, 12)) {
            task.apply(event);
        }
        assert_eq!(task.status, TaskStatus::Pending);
        assert_eq!(task.run_count, 2);
        assert_eq!(task.running_execution_id, None);
    }

    #[test]
    fn under_catch_up_none_a_slot_missed_while_no_scheduler_ran_does_not_fire() {
        let none = RunPolicy {
            catch_up: CatchUp::None,
            ..RunPolicy::default()
        };
        TaskTest::with(())
            .given(vec![
                scheduled("*/5 * * * *", TaskStatus::Pending),
                with_policy(none),
            ])
            .when(TaskCommand::Fire {
                execution_id: Uuid::from_u128(100),
                scheduled_for: at(9, 5),
                at: at(10, 2),
            })
            .then_expect_events(vec![TaskEvent::TaskSlotMissed {
                scheduled_for: at(9, 5),
                next_run_at: Some(at(10, 5)),
                at: at(10, 2),
            }]);
        // A slot on time still fires.
        let on_time = TaskTest::with(())
            .given(vec![
                scheduled("*/5 * * * *", TaskStatus::Pending),
                with_policy(none),
            ])
            .when(TaskCommand::Fire {
                execution_id: Uuid::from_u128(100),
                scheduled_for: at(9, 5),
                at: at(9, 5) + chrono::Duration::seconds(2),
            })
            .inspect_result();
        assert!(matches!(
            on_time.as_deref(),
            Ok([TaskEvent::TaskFired { .. }])
        ));
    }

    #[test]
    fn run_policy_changes_are_recorded_only_when_they_differ() {
        TaskTest::with(())
            .given(vec![scheduled("*/5 * * * *", TaskStatus::Pending)])
            .when(TaskCommand::Update {
                changes: TaskChanges {
                    timeout_seconds: Some(TimeoutSeconds::default()),
                    overlap: Some(Overlap::Skip),
                    catch_up: Some(CatchUp::Once),
                    ..Default::default()
                },
                at: at(9, 1),
            })
            .then_expect_events(vec![]);
        let mut task = Task::default();
        task.apply(scheduled("*/5 * * * *", TaskStatus::Pending));
        task.apply(with_policy(RunPolicy {
            timeout_seconds: TimeoutSeconds::new(30).unwrap(),
            overlap: Overlap::Allow,
            catch_up: CatchUp::None,
        }));
        assert_eq!(task.run.timeout_seconds.get(), 30);
        assert_eq!(task.run.overlap, Overlap::Allow);
        assert_eq!(task.run.catch_up, CatchUp::None);
    }

    #[test]
    fn under_overlap_allow_runs_at_once_are_capped() {
        let mut task = Task::default();
        task.apply(scheduled("*/5 * * * *", TaskStatus::Pending));
        task.apply(with_policy(RunPolicy {
            overlap: Overlap::Allow,
            ..RunPolicy::default()
        }));
        for n in 0..MAX_RUNS_AT_ONCE as u128 {
            let events = task
                .decide_run_now(Uuid::from_u128(100 + n), None, at(9, 1))
                .expect("room for another run");
            for event in events {
                task.apply(event);
            }
        }
        assert_eq!(
            task.decide_run_now(Uuid::from_u128(1), None, at(9, 2)),
            Err(TaskError::AlreadyRunning)
        );
        let due = task.next_run_at.expect("a due slot");
        assert!(matches!(
            task.decide_fire(Uuid::from_u128(2), due, due).as_deref(),
            Ok([TaskEvent::TaskRunSkipped { .. }])
        ));
    }
}
