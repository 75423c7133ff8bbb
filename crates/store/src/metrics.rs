//! What this process's command bus did, for `/metrics`: commands by aggregate, command and
//! outcome, and the events they recorded by aggregate and event type. Counters only grow and
//! count this process alone (Prometheus sums instances).

use std::collections::HashMap;
use std::sync::Mutex;

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

/// `(aggregate type, command, outcome)` → commands.
pub type CommandCounts = Vec<((&'static str, &'static str, CommandOutcome), u64)>;
/// `(aggregate type, event type)` → events.
pub type EventCounts = Vec<((&'static str, String), u64)>;

/// The counters; cheap to update from many tasks.
#[derive(Debug, Default)]
pub struct CommandMetrics {
    commands: Mutex<HashMap<(&'static str, &'static str, CommandOutcome), u64>>,
    events: Mutex<HashMap<(&'static str, String), u64>>,
}

impl CommandMetrics {
    /// Counts one command `command` on an `aggregate` that ended as `outcome`.
    pub(crate) fn count_command(
        &self,
        aggregate: &'static str,
        command: &'static str,
        outcome: CommandOutcome,
    ) {
        let mut commands = self.commands.lock().unwrap_or_else(|e| e.into_inner());
        *commands.entry((aggregate, command, outcome)).or_default() += 1;
    }

    /// Counts recorded events of an `aggregate`, by type.
    pub(crate) fn count_events(
        &self,
        aggregate: &'static str,
        event_types: impl IntoIterator<Item = String>,
    ) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        for event_type in event_types {
            *events.entry((aggregate, event_type)).or_default() += 1;
        }
    }

    /// The command counters, sorted.
    pub fn commands(&self) -> CommandCounts {
        let commands = self.commands.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts: CommandCounts = commands.iter().map(|(k, v)| (*k, *v)).collect();
        counts.sort();
        counts
    }

    /// The event counters, sorted.
    pub fn events(&self) -> EventCounts {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts: EventCounts = events.iter().map(|(k, v)| (k.clone(), *v)).collect();
        counts.sort();
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_by_label() {
        let metrics = CommandMetrics::default();
        metrics.count_command("Task", "Schedule", CommandOutcome::Committed);
        metrics.count_command("Task", "Schedule", CommandOutcome::Committed);
        metrics.count_command("Task", "Delete", CommandOutcome::Rejected);
        metrics.count_events("Task", ["TaskScheduled".to_owned(), "TaskScheduled".into()]);
        assert_eq!(
            metrics.commands(),
            vec![
                (("Task", "Delete", CommandOutcome::Rejected), 1),
                (("Task", "Schedule", CommandOutcome::Committed), 2),
            ]
        );
        assert_eq!(
            metrics.events(),
            vec![(("Task", "TaskScheduled".into()), 2)]
        );
    }
}
