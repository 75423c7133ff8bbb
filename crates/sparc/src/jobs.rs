//! Runs reach agents in production through NATS JetStream: [`JobDispatch`], a policy on the
//! log, queues every run that starts without an agent on the work-queue stream
//! ([`sparc_bus::jobs`]), and [`JetStreamQueue`] is the jobs endpoint's queue over that stream.
//! Embedded, the endpoint reads the executions read model instead
//! (`sparc_api::job_queue::ReadModelQueue`) and no dispatch runs.

use async_trait::async_trait;
use chrono::Utc;
use sparc_api::job_queue::{JobQueue, Receipt, WaitingRun};
use sparc_bus::{FetchedJob, JobStream};
use sparc_domain::execution::ExecutionEvent;
use sparc_projections::{Projection, ProjectionError};
use sparc_store::RecordedEvent;

/// The jobs endpoint's queue: jobs fetched from the stream.
pub struct JetStreamQueue(pub JobStream);

#[async_trait]
impl JobQueue for JetStreamQueue {
    async fn waiting(
        &self,
        skills: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<WaitingRun>, Box<dyn std::error::Error + Send + Sync>> {
        let fetched = self.0.fetch(skills, limit).await?;
        Ok(fetched
            .into_iter()
            .map(|job| WaitingRun {
                execution_id: job.execution_id,
                receipt: Some(Box::new(JobReceipt(job))),
            })
            .collect())
    }
}

struct JobReceipt(FetchedJob);

#[async_trait]
impl Receipt for JobReceipt {
    async fn done(&self) {
        self.0.done().await;
    }

    async fn hand_back(&self) {
        self.0.hand_back().await;
    }
}

/// Queues each run that starts without an agent, at least once (the stream drops a repeat
/// within its de-duplication window, and a claim refuses a run taken already). Runs already
/// past their deadline when the policy reaches them (a first start on an old log) are left to
/// the scheduler's time-out.
pub struct JobDispatch {
    jobs: JobStream,
}

impl JobDispatch {
    /// The policy, publishing to `jobs`.
    pub fn new(jobs: JobStream) -> Self {
        Self { jobs }
    }
}

#[async_trait]
impl Projection for JobDispatch {
    fn name(&self) -> &str {
        "policy_job_dispatch"
    }

    fn reacts(&self) -> bool {
        true
    }

    fn concerns(&self, event: &RecordedEvent) -> bool {
        event.aggregate_type == "Execution" && event.event_type == "ExecutionStarted"
    }

    async fn react(&self, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        for event in events.iter().filter(|e| self.concerns(e)) {
            let started: ExecutionEvent = serde_json::from_value(event.payload.clone())
                .map_err(|e| ProjectionError::Command(e.into()))?;
            let ExecutionEvent::ExecutionStarted {
                execution_id,
                agent_id: None,
                skill_name: Some(skill),
                timeout_seconds,
                at,
                ..
            } = started
            else {
                continue;
            };
            if at + timeout_seconds.duration() <= Utc::now() {
                continue;
            }
            self.jobs
                .publish(skill.as_str(), execution_id)
                .await
                .map_err(|e| ProjectionError::Command(e.into()))?;
        }
        Ok(())
    }
}
