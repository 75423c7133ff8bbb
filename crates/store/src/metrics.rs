//! What this process's command bus did, for `/metrics`: commands by aggregate, command and
//! outcome, and the events they recorded by aggregate and event type. Counters only grow and
//! count this bus alone (Prometheus sums instances); [`CommandMetrics::register`] adds them to
//! the registry a scrape encodes.

use std::fmt::{self, Write};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommandOutcome {
    /// It recorded events.
    Committed,
    /// It was accepted and changed nothing (an idempotent repeat).
    Unchanged,
    /// The aggregate refused it.
    Rejected,
    /// Another writer won (a version mismatch or repeated conflicts).
    Conflict,
    /// The store failed.
    Failed,
    /// It was refused unattempted: its deadline passed in a queue, or the queue was full.
    Overloaded,
}

impl CommandOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::Unchanged => "unchanged",
            Self::Rejected => "rejected",
            Self::Conflict => "conflict",
            Self::Failed => "failed",
            Self::Overloaded => "overloaded",
        }
    }
}

impl EncodeLabelValue for CommandOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(self.as_str())
    }
}

/// The labels of `sparc_commands_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CommandLabels {
    aggregate: &'static str,
    command: &'static str,
    outcome: CommandOutcome,
}

/// The labels of `sparc_events_recorded_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabels {
    aggregate: &'static str,
    event_type: String,
}

/// The counters; cheap to update from many tasks.
#[derive(Debug, Default)]
pub struct CommandMetrics {
    commands: Family<CommandLabels, Counter>,
    events: Family<EventLabels, Counter>,
}

impl CommandMetrics {
    /// Counts one command `command` on an `aggregate` that ended as `outcome`.
    pub(crate) fn count_command(
        &self,
        aggregate: &'static str,
        command: &'static str,
        outcome: CommandOutcome,
    ) {
        self.commands
            .get_or_create(&CommandLabels {
                aggregate,
                command,
                outcome,
            })
            .inc();
    }

    /// Counts recorded events of an `aggregate`, by type.
    pub(crate) fn count_events(
        &self,
        aggregate: &'static str,
        event_types: impl IntoIterator<Item = String>,
    ) {
        for event_type in event_types {
            self.events
                .get_or_create(&EventLabels {
                    aggregate,
                    event_type,
                })
                .inc();
        }
    }

    /// Adds `sparc_commands_total` and `sparc_events_recorded_total` to `registry` (the same
    /// counters, not copies).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sparc_commands",
            "Commands this instance ran, by aggregate, command and outcome",
            self.commands.clone(),
        );
        registry.register(
            "sparc_events_recorded",
            "Events this instance's commands recorded, by aggregate and event type",
            self.events.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::prometheus_text::encode;

    #[test]
    fn counters_add_up_by_label() {
        let metrics = CommandMetrics::default();
        metrics.count_command("Task", "Schedule", CommandOutcome::Committed);
        metrics.count_command("Task", "Schedule", CommandOutcome::Committed);
        metrics.count_command("Task", "Delete", CommandOutcome::Rejected);
        metrics.count_events("Task", ["TaskScheduled".to_owned(), "TaskScheduled".into()]);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).expect("a String takes any text");
        for sample in [
            r#"sparc_commands_total{aggregate="Task",command="Schedule",outcome="committed"} 2"#,
            r#"sparc_commands_total{aggregate="Task",command="Delete",outcome="rejected"} 1"#,
            r#"sparc_events_recorded_total{aggregate="Task",event_type="TaskScheduled"} 2"#,
            "# TYPE sparc_commands_total counter",
            "# HELP sparc_events_recorded_total Events this instance's commands recorded, by aggregate and event type.",
        ] {
            assert!(
                text.lines().any(|line| line == sample),
                "{sample} in:\n{text}"
            );
        }
    }
}
