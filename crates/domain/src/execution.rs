//! The Execution aggregate: one run of a task, started by a fire (scheduled or manual), claimed
//! by the agent that runs it, and finished once with a final status, output and error.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::task::Task;
use crate::values::{SkillName, TimeoutSeconds, Timestamp, text_enum};
use crate::{DomainError, ErrorKind};

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExecutionStatus {
    /// In progress.
    #[default]
    Running,
    /// Finished well.
    Success,
    /// Finished with an error.
    Failed,
    /// Did not finish in time.
    Timeout,
    /// Stopped before finishing.
    Cancelled,
}

text_enum!(ExecutionStatus {
    Running => "running",
    Success => "success",
    Failed => "failed",
    Timeout => "timeout",
    Cancelled => "cancelled",
});

impl ExecutionStatus {
    /// Whether the run is over.
    pub fn is_final(self) -> bool {
        self != ExecutionStatus::Running
    }

    /// Whether the run counts as an error of its task.
    pub fn is_error(self) -> bool {
        matches!(self, ExecutionStatus::Failed | ExecutionStatus::Timeout)
    }
}

/// What can be asked of an execution.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecutionCommand {
    /// Open the execution for a fired task.
    Start {
        /// Its id (the one the task's fire event named).
        execution_id: Uuid,
        /// The task.
        task_id: Uuid,
        /// The task's owner, who may see the execution.
        user_id: Uuid,
        /// The agent already running it, if known.
        agent_id: Option<Uuid>,
        /// The skill it runs, which decides the agents that may take it.
        skill_name: Option<SkillName>,
        /// How long it may take.
        timeout_seconds: TimeoutSeconds,
        /// The slot it runs for.
        scheduled_for: Timestamp,
        /// Decision time.
        at: Timestamp,
    },
    /// An agent takes this execution; one that another agent took is refused.
    Claim {
        /// The agent.
        agent_id: Uuid,
        /// Decision time.
        at: Timestamp,
    },
    /// The run passed its deadline without finishing (the scheduler's sweep).
    TimeOut {
        /// Decision time, at or after the deadline.
        at: Timestamp,
    },
    /// The run is over.
    Finish {
        /// The agent reporting, if any.
        agent_id: Option<Uuid>,
        /// The final status.
        status: ExecutionStatus,
        /// Captured output.
        output: Option<String>,
        /// Captured error.
        error: Option<String>,
        /// Measured duration; computed from start and finish when absent.
        duration_ms: Option<u64>,
        /// Decision time.
        at: Timestamp,
    },
}

impl ExecutionCommand {
    /// The command's name (its variant), for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start { .. } => "Start",
            Self::Claim { .. } => "Claim",
            Self::TimeOut { .. } => "TimeOut",
            Self::Finish { .. } => "Finish",
        }
    }
}

impl ExecutionCommand {
    /// Start the run `execution_id` that `task` just fired for `scheduled_for`, with the
    /// task's skill and time limit.
    pub fn start_of(
        task: &Task,
        execution_id: Uuid,
        agent_id: Option<Uuid>,
        scheduled_for: Timestamp,
        at: Timestamp,
    ) -> Self {
        ExecutionCommand::Start {
            execution_id,
            task_id: task.id,
            user_id: task.user_id,
            agent_id,
            skill_name: task.skill_name.clone(),
            timeout_seconds: task.run.timeout_seconds,
            scheduled_for,
            at,
        }
    }
}

/// What happened to an execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ExecutionEvent {
    /// The run started.
    ExecutionStarted {
        /// Its id.
        execution_id: Uuid,
        /// The task.
        task_id: Uuid,
        /// The task's owner.
        user_id: Uuid,
        /// The agent, if known.
        agent_id: Option<Uuid>,
        /// The skill (absent from events recorded before runs were dispatched).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skill_name: Option<SkillName>,
        /// Its time limit (events recorded before it was kept have the default).
        #[serde(default)]
        timeout_seconds: TimeoutSeconds,
        /// The slot.
        scheduled_for: Timestamp,
        /// When.
        at: Timestamp,
    },
    /// An agent took the run.
    ExecutionClaimed {
        /// The agent.
        agent_id: Uuid,
        /// When.
        at: Timestamp,
    },
    /// The run finished.
    ExecutionFinished {
        /// The agent that reported it.
        agent_id: Option<Uuid>,
        /// Final status.
        status: ExecutionStatus,
        /// Output.
        output: Option<String>,
        /// Error.
        error: Option<String>,
        /// Duration.
        duration_ms: u64,
        /// When.
        at: Timestamp,
    },
}

impl DomainEvent for ExecutionEvent {
    fn event_type(&self) -> String {
        match self {
            ExecutionEvent::ExecutionStarted { .. } => "ExecutionStarted",
            ExecutionEvent::ExecutionClaimed { .. } => "ExecutionClaimed",
            ExecutionEvent::ExecutionFinished { .. } => "ExecutionFinished",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why an execution command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecutionError {
    /// Start on an existing id.
    #[error("execution already exists")]
    AlreadyStarted,
    /// Any other command on an unknown id.
    #[error("Execution not found")]
    NotFound,
    /// A change after the finish.
    #[error("execution has already finished")]
    AlreadyFinished,
    /// A finish with status running.
    #[error("a finished execution needs a final status")]
    StatusNotFinal,
    /// A claim of a run another agent took.
    #[error("execution was claimed by another agent")]
    ClaimedByAnother,
    /// A time-out before the deadline.
    #[error("execution has not reached its deadline")]
    NotOverdue,
}

impl DomainError for ExecutionError {
    fn kind(&self) -> ErrorKind {
        match self {
            ExecutionError::NotFound => ErrorKind::NotFound,
            ExecutionError::AlreadyStarted
            | ExecutionError::AlreadyFinished
            | ExecutionError::ClaimedByAnother
            | ExecutionError::NotOverdue => ErrorKind::Conflict,
            ExecutionError::StatusNotFinal => ErrorKind::Invalid,
        }
    }
}

/// The execution's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Execution {
    /// Its id.
    pub id: Uuid,
    /// Whether it started.
    pub exists: bool,
    /// The task.
    pub task_id: Uuid,
    /// The task's owner.
    pub user_id: Uuid,
    /// The agent running it.
    pub agent_id: Option<Uuid>,
    /// The skill it runs.
    #[serde(default)]
    pub skill_name: Option<SkillName>,
    /// Its time limit.
    #[serde(default)]
    pub timeout_seconds: TimeoutSeconds,
    /// The slot.
    pub scheduled_for: Option<Timestamp>,
    /// Start time.
    pub started_at: Option<Timestamp>,
    /// Finish time.
    pub ended_at: Option<Timestamp>,
    /// Status.
    pub status: ExecutionStatus,
    /// Duration once finished.
    pub duration_ms: Option<u64>,
    /// Output.
    pub output_text: Option<String>,
    /// Error.
    pub error_text: Option<String>,
}

impl Aggregate for Execution {
    const TYPE: &'static str = "Execution";
    type Command = ExecutionCommand;
    type Event = ExecutionEvent;
    type Error = ExecutionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            ExecutionCommand::Start {
                execution_id,
                task_id,
                user_id,
                agent_id,
                skill_name,
                timeout_seconds,
                scheduled_for,
                at,
            } => {
                if self.exists {
                    return Err(ExecutionError::AlreadyStarted);
                }
                ExecutionEvent::ExecutionStarted {
                    execution_id,
                    task_id,
                    user_id,
                    agent_id,
                    skill_name,
                    timeout_seconds,
                    scheduled_for,
                    at,
                }
            }
            ExecutionCommand::Claim { agent_id, at } => {
                self.running()?;
                match self.agent_id {
                    Some(current) if current == agent_id => return Ok(()),
                    Some(_) => return Err(ExecutionError::ClaimedByAnother),
                    None => ExecutionEvent::ExecutionClaimed { agent_id, at },
                }
            }
            ExecutionCommand::TimeOut { at } => {
                self.running()?;
                if self.deadline().is_none_or(|deadline| at < deadline) {
                    return Err(ExecutionError::NotOverdue);
                }
                let limit = self.timeout_seconds.get();
                ExecutionEvent::ExecutionFinished {
                    agent_id: self.agent_id,
                    status: ExecutionStatus::Timeout,
                    output: None,
                    error: Some(match self.agent_id {
                        Some(_) => format!("not finished within {limit} s"),
                        None => format!("no agent took the run within {limit} s"),
                    }),
                    duration_ms: self.measured_until(at),
                    at,
                }
            }
            ExecutionCommand::Finish {
                agent_id,
                status,
                output,
                error,
                duration_ms,
                at,
            } => {
                self.running()?;
                if !status.is_final() {
                    return Err(ExecutionError::StatusNotFinal);
                }
                let measured = self.measured_until(at);
                ExecutionEvent::ExecutionFinished {
                    agent_id: agent_id.or(self.agent_id),
                    status,
                    output,
                    error,
                    duration_ms: duration_ms.unwrap_or(measured),
                    at,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ExecutionEvent::ExecutionStarted {
                execution_id,
                task_id,
                user_id,
                agent_id,
                skill_name,
                timeout_seconds,
                scheduled_for,
                at,
            } => {
                *self = Execution {
                    id: execution_id,
                    exists: true,
                    task_id,
                    user_id,
                    agent_id,
                    skill_name,
                    timeout_seconds,
                    scheduled_for: Some(scheduled_for),
                    started_at: Some(at),
                    ..Execution::default()
                };
            }
            ExecutionEvent::ExecutionClaimed { agent_id, .. } => self.agent_id = Some(agent_id),
            ExecutionEvent::ExecutionFinished {
                agent_id,
                status,
                output,
                error,
                duration_ms,
                at,
            } => {
                self.agent_id = agent_id;
                self.status = status;
                self.output_text = output;
                self.error_text = error;
                self.duration_ms = Some(duration_ms);
                self.ended_at = Some(at);
            }
        }
    }
}

impl Execution {
    /// When the run becomes `timeout` if it has not finished.
    pub fn deadline(&self) -> Option<Timestamp> {
        self.started_at
            .map(|start| start + self.timeout_seconds.duration())
    }

    /// Milliseconds from the start to `at`.
    fn measured_until(&self, at: Timestamp) -> u64 {
        self.started_at
            .map(|start| (at - start).num_milliseconds().max(0) as u64)
            .unwrap_or(0)
    }

    fn running(&self) -> Result<(), ExecutionError> {
        if !self.exists {
            Err(ExecutionError::NotFound)
        } else if self.status.is_final() {
            Err(ExecutionError::AlreadyFinished)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone, Utc};
    use cqrs_es::test::TestFramework;

    use super::*;

    fn t0() -> Timestamp {
        Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()
    }

    fn started() -> ExecutionEvent {
        ExecutionEvent::ExecutionStarted {
            execution_id: Uuid::from_u128(1),
            task_id: Uuid::from_u128(2),
            user_id: Uuid::from_u128(3),
            agent_id: None,
            skill_name: Some(SkillName::parse("lint").unwrap()),
            timeout_seconds: TimeoutSeconds::new(60).unwrap(),
            scheduled_for: t0(),
            at: t0(),
        }
    }

    fn finish(status: ExecutionStatus) -> ExecutionCommand {
        ExecutionCommand::Finish {
            agent_id: Some(Uuid::from_u128(9)),
            status,
            output: Some("ok".into()),
            error: None,
            duration_ms: None,
            at: t0() + Duration::milliseconds(1500),
        }
    }

    #[test]
    fn finishing_records_status_output_and_the_measured_duration() {
        TestFramework::<Execution>::with(())
            .given(vec![started()])
            .when(finish(ExecutionStatus::Success))
            .then_expect_events(vec![ExecutionEvent::ExecutionFinished {
                agent_id: Some(Uuid::from_u128(9)),
                status: ExecutionStatus::Success,
                output: Some("ok".into()),
                error: None,
                duration_ms: 1500,
                at: t0() + Duration::milliseconds(1500),
            }]);
    }

    #[test]
    fn finishing_twice_is_refused() {
        TestFramework::<Execution>::with(())
            .given(vec![
                started(),
                ExecutionEvent::ExecutionFinished {
                    agent_id: None,
                    status: ExecutionStatus::Failed,
                    output: None,
                    error: Some("boom".into()),
                    duration_ms: 5,
                    at: t0(),
                },
            ])
            .when(finish(ExecutionStatus::Success))
            .then_expect_error(ExecutionError::AlreadyFinished);
    }

    #[test]
    fn finishing_with_status_running_is_refused() {
        TestFramework::<Execution>::with(())
            .given(vec![started()])
            .when(finish(ExecutionStatus::Running))
            .then_expect_error(ExecutionError::StatusNotFinal);
    }

    #[test]
    fn claiming_by_the_same_agent_twice_records_it_once() {
        let claim = ExecutionCommand::Claim {
            agent_id: Uuid::from_u128(9),
            at: t0(),
        };
        TestFramework::<Execution>::with(())
            .given(vec![
                started(),
                ExecutionEvent::ExecutionClaimed {
                    agent_id: Uuid::from_u128(9),
                    at: t0(),
                },
            ])
            .when(claim)
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_unknown_execution_cannot_be_finished() {
        TestFramework::<Execution>::with(())
            .given_no_previous_events()
            .when(finish(ExecutionStatus::Success))
            .then_expect_error(ExecutionError::NotFound);
    }
    #[test]
    fn a_run_another_agent_took_cannot_be_claimed() {
        TestFramework::<Execution>::with(())
            .given(vec![
                started(),
                ExecutionEvent::ExecutionClaimed {
                    agent_id: Uuid::from_u128(9),
                    at: t0(),
                },
            ])
            .when(ExecutionCommand::Claim {
                agent_id: Uuid::from_u128(10),
                at: t0(),
            })
            .then_expect_error(ExecutionError::ClaimedByAnother);
    }

    #[test]
    fn an_unclaimed_run_times_out_at_its_deadline_and_not_before() {
        TestFramework::<Execution>::with(())
            .given(vec![started()])
            .when(ExecutionCommand::TimeOut {
                at: t0() + Duration::seconds(59),
            })
            .then_expect_error(ExecutionError::NotOverdue);
        TestFramework::<Execution>::with(())
            .given(vec![started()])
            .when(ExecutionCommand::TimeOut {
                at: t0() + Duration::seconds(60),
            })
            .then_expect_events(vec![ExecutionEvent::ExecutionFinished {
                agent_id: None,
                status: ExecutionStatus::Timeout,
                output: None,
                error: Some("no agent took the run within 60 s".into()),
                duration_ms: 60_000,
                at: t0() + Duration::seconds(60),
            }]);
    }

    #[test]
    fn a_finished_run_does_not_time_out() {
        TestFramework::<Execution>::with(())
            .given(vec![
                started(),
                ExecutionEvent::ExecutionFinished {
                    agent_id: None,
                    status: ExecutionStatus::Success,
                    output: None,
                    error: None,
                    duration_ms: 5,
                    at: t0(),
                },
            ])
            .when(ExecutionCommand::TimeOut {
                at: t0() + Duration::hours(2),
            })
            .then_expect_error(ExecutionError::AlreadyFinished);
    }
}
