//! The production job queue: runs waiting for an agent, in a NATS JetStream work-queue stream.
//!
//! A started run is published once per skill subject, `<ns>.jobs.<skill>`, with
//! `Nats-Msg-Id = "<execution id>"` (a policy that publishes again after a crash stores it
//! once). The stream `<NS>_JOBS` keeps each message until it is acknowledged, on disk: a job
//! survives restarts of every process until an agent claims it. Each skill has one durable pull
//! consumer (`jobs_<skill>`) that every API instance fetches from, so a message goes to one
//! fetcher at a time; one not acknowledged within [`ACK_WAIT`] (its instance died mid-claim) is
//! delivered again. The message only names the run: the claim itself is a command on the run's
//! stream, which stays the authority on who took it.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind, stream};
use futures::StreamExt as _;
use uuid::Uuid;

use crate::{BusError, Subjects};

/// How long the stream remembers a `Nats-Msg-Id`.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a fetched job may stay unacknowledged before it is delivered again.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How long a request to JetStream waits for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The job stream of one namespace.
#[derive(Clone)]
pub struct JobStream {
    jetstream: jetstream::Context,
    namespace: String,
}

impl std::fmt::Debug for JobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStream")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// A job fetched from the stream: acknowledge it once its run is claimed (or can no longer
/// be), or hand it back.
#[derive(Debug)]
pub struct FetchedJob {
    /// The run.
    pub execution_id: Uuid,
    message: jetstream::Message,
}

impl FetchedJob {
    /// Removes the job from the queue.
    pub async fn done(&self) {
        if let Err(error) = self.message.ack().await {
            // Unacknowledged, it comes back after `ACK_WAIT`; its claim is then refused.
            tracing::warn!(execution_id = %self.execution_id, %error, "job not acknowledged");
        }
    }

    /// Hands the job back for another fetcher, at once.
    pub async fn hand_back(&self) {
        if let Err(error) = self.message.ack_with(AckKind::Nak(None)).await {
            tracing::warn!(execution_id = %self.execution_id, %error, "job not handed back");
        }
    }
}

impl JobStream {
    /// Connects to the NATS server at `url`; the stream is created if it does not exist.
    ///
    /// # Errors
    /// [`BusError::Connect`] if NATS cannot be reached or the stream cannot be made.
    pub async fn connect(url: &str, subjects: &Subjects) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name("sparc-jobs")
            .retry_on_initial_connect()
            .connect(url)
            .await
            .map_err(|e| BusError::Connect(Box::new(e)))?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client);
        let jobs = Self {
            jetstream,
            namespace: subjects.namespace().to_owned(),
        };
        jobs.stream().await?;
        Ok(jobs)
    }

    fn stream_name(&self) -> String {
        format!("{}_JOBS", self.namespace.to_uppercase().replace('-', "_"))
    }

    fn subject(&self, skill: &str) -> String {
        format!("{}.jobs.{skill}", self.namespace)
    }

    async fn stream(&self) -> Result<stream::Stream, BusError> {
        self.jetstream
            .get_or_create_stream(stream::Config {
                name: self.stream_name(),
                subjects: vec![self.subject("*")],
                retention: stream::RetentionPolicy::WorkQueue,
                duplicate_window: DUPLICATE_WINDOW,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Connect(Box::new(e)))
    }

    /// Queues run `execution_id` of `skill` (a skill name: letters, digits, `_`, `-`) and
    /// waits for JetStream to store it.
    ///
    /// # Errors
    /// [`BusError::Publish`] if it was not stored.
    pub async fn publish(&self, skill: &str, execution_id: Uuid) -> Result<(), BusError> {
        let message = PublishMessage::build()
            .payload(execution_id.to_string().into())
            .message_id(execution_id.to_string());
        self.jetstream
            .send_publish(self.subject(skill), message)
            .await
            .map_err(|e| BusError::Publish(Box::new(e)))?
            .await
            .map_err(|e| BusError::Publish(Box::new(e)))?;
        Ok(())
    }

    /// Up to `limit` jobs waiting now for one of `skills` (`None`: any skill), without waiting.
    ///
    /// # Errors
    /// [`BusError::Subscribe`] if JetStream cannot be asked.
    pub async fn fetch(
        &self,
        skills: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<FetchedJob>, BusError> {
        let stream = self.stream().await?;
        // Only skills with jobs waiting: those come from tasks' checked skill names, while an
        // agent's capabilities are free text that must never become a subject or a consumer.
        let skills: Vec<String> = self
            .waiting_skills(&stream)
            .await?
            .into_iter()
            .filter(|skill| skills.is_none_or(|wanted| wanted.contains(skill)))
            .collect();
        let mut jobs = Vec::new();
        for skill in skills {
            if jobs.len() >= limit {
                break;
            }
            let consumer: PullConsumer = stream
                .get_or_create_consumer(
                    &format!("jobs_{skill}"),
                    pull::Config {
                        durable_name: Some(format!("jobs_{skill}")),
                        filter_subject: self.subject(&skill),
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: ACK_WAIT,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| BusError::Subscribe(Box::new(e)))?;
            let mut batch = consumer
                .fetch()
                .max_messages(limit - jobs.len())
                .messages()
                .await
                .map_err(|e| BusError::Subscribe(Box::new(e)))?;
            while let Some(message) = batch.next().await {
                let message = message.map_err(BusError::Subscribe)?;
                let execution_id = std::str::from_utf8(&message.payload)
                    .ok()
                    .and_then(|text| text.parse().ok());
                match execution_id {
                    Some(execution_id) => jobs.push(FetchedJob {
                        execution_id,
                        message,
                    }),
                    None => {
                        tracing::warn!(subject = %message.subject, "a job that names no run dropped");
                        let _ = message.ack().await;
                    }
                }
            }
        }
        Ok(jobs)
    }

    /// The skills with jobs waiting.
    async fn waiting_skills(&self, stream: &stream::Stream) -> Result<Vec<String>, BusError> {
        let prefix = self.subject("");
        let mut subjects = stream
            .info_with_subjects(self.subject("*"))
            .await
            .map_err(|e| BusError::Subscribe(Box::new(e)))?;
        let mut skills = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, count) = subject.map_err(|e| BusError::Subscribe(Box::new(e)))?;
            if let Some(skill) = subject.strip_prefix(&prefix)
                && count > 0
            {
                skills.push(skill.to_owned());
            }
        }
        skills.sort_unstable();
        Ok(skills)
    }
}
