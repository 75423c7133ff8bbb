//! Where the jobs endpoint finds runs waiting for an agent: a port with two adapters. Embedded,
//! the queue is the executions read model itself ([`ReadModelQueue`]: runs no agent has
//! claimed, oldest first); in production a NATS JetStream work-queue stream fed from the log
//! (the composition root's adapter). Either way a waiting run is only a candidate: the claim,
//! a command on the run's own stream, decides who takes it.

use async_trait::async_trait;
use sparc_projections::ReadModels;
use uuid::Uuid;

/// A run waiting for an agent.
pub struct WaitingRun {
    /// The run.
    pub execution_id: Uuid,
    /// What the queue wants to hear once the run is claimed (by anyone) or handed back.
    pub receipt: Option<Box<dyn Receipt>>,
}

/// A queue's hold on a waiting run it handed out.
#[async_trait]
pub trait Receipt: Send + Sync {
    /// The run needs no more handing out: it was claimed, or it ended.
    async fn done(&self);
    /// The run could not be claimed now: hand it to another poll.
    async fn hand_back(&self);
}

/// Runs waiting for an agent.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Up to `limit` runs waiting now for one of `skills` (`None`: any skill), oldest first,
    /// without waiting for more.
    async fn waiting(
        &self,
        skills: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<WaitingRun>, Box<dyn std::error::Error + Send + Sync>>;
}

/// The embedded queue: the executions read model's unclaimed runs.
pub struct ReadModelQueue(pub ReadModels);

#[async_trait]
impl JobQueue for ReadModelQueue {
    async fn waiting(
        &self,
        skills: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<WaitingRun>, Box<dyn std::error::Error + Send + Sync>> {
        // More than wanted: agents polling at once race for the same oldest runs.
        let runs = self.0.unclaimed_runs(skills, 4 * limit as i64).await?;
        Ok(runs
            .into_iter()
            .map(|run| WaitingRun {
                execution_id: run.state.id,
                receipt: None,
            })
            .collect())
    }
}
