//! Event schema changes. A stored event is never rewritten; when an event's shape changes, its
//! `event_version` goes up and an upcaster here turns older payloads into the current shape as
//! they are read: by aggregate loads, by projections and by as-of rebuilds alike.
//!
//! | event | from | to | change |
//! |---|---|---|---|
//! | `TaskScheduled` | 1.0 | 1.1 | field `cron_expression` renamed to `schedule_cron` |

use std::borrow::Cow;
use std::sync::OnceLock;

use cqrs_es::persist::{EventUpcaster, SemanticVersionEventUpcaster, SerializedEvent};
use serde_json::Value;

/// Renames `from` to `to` inside the externally tagged payload `{"<EventType>": {...}}`.
fn rename_field(
    event_type: &'static str,
    from: &'static str,
    to: &'static str,
) -> impl Fn(Value) -> Value + Send + Sync {
    move |mut payload| {
        if let Some(fields) = payload.get_mut(event_type).and_then(Value::as_object_mut)
            && let Some(value) = fields.remove(from)
        {
            fields.insert(to.to_owned(), value);
        }
        payload
    }
}

/// Every upcaster, in the order they apply.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(SemanticVersionEventUpcaster::new(
        "TaskScheduled",
        "1.1",
        Box::new(rename_field(
            "TaskScheduled",
            "cron_expression",
            "schedule_cron",
        )),
    ))]
}

/// [`upcasters`], built once for the readers here.
fn registered() -> &'static [Box<dyn EventUpcaster>] {
    static UPCASTERS: OnceLock<Vec<Box<dyn EventUpcaster>>> = OnceLock::new();
    UPCASTERS.get_or_init(upcasters)
}

/// `payload` in its current shape without copying it when no upcaster applies (every event
/// written by this version): for readers that only deserialize it.
pub fn upcast_ref<'a>(event_type: &str, event_version: &str, payload: &'a Value) -> Cow<'a, Value> {
    let applies = registered()
        .iter()
        .any(|upcaster| upcaster.can_upcast(event_type, event_version));
    if applies {
        Cow::Owned(upcast(event_type, event_version, payload.clone()))
    } else {
        Cow::Borrowed(payload)
    }
}

/// Brings one stored payload to its current shape.
pub fn upcast(event_type: &str, event_version: &str, payload: Value) -> Value {
    let mut event = SerializedEvent {
        aggregate_id: String::new(),
        sequence: 0,
        aggregate_type: String::new(),
        event_type: event_type.to_owned(),
        event_version: event_version.to_owned(),
        payload,
        metadata: Value::Null,
    };
    for upcaster in registered() {
        if upcaster.can_upcast(&event.event_type, &event.event_version) {
            event = upcaster.upcast(event);
        }
    }
    event.payload
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::task::TaskEvent;

    #[test]
    fn a_version_1_0_task_scheduled_payload_reads_as_the_current_event() {
        let old = json!({"TaskScheduled": {
            "task_id": "00000000-0000-0000-0000-000000000001",
            "user_id": "00000000-0000-0000-0000-000000000002",
            "skill_name": "lint",
            "cron_expression": "*/5 * * * *",
            "timezone": "UTC",
            "params": {},
            "status": "pending",
            "project_id": null,
            "next_run_at": null,
            "at": "2026-03-02T09:00:00Z"
        }});
        let event: TaskEvent = serde_json::from_value(upcast("TaskScheduled", "1.0", old)).unwrap();
        let TaskEvent::TaskScheduled { schedule_cron, .. } = event else {
            panic!("wrong event")
        };
        assert_eq!(schedule_cron.as_str(), "*/5 * * * *");
    }

    #[test]
    fn current_payloads_pass_through_unchanged() {
        let current = json!({"TaskScheduled": {"schedule_cron": "* * * * *"}});
        assert_eq!(upcast("TaskScheduled", "1.1", current.clone()), current);
        assert_eq!(
            upcast("TaskDeleted", "1.0", json!({"TaskDeleted": {}})),
            json!({"TaskDeleted": {}})
        );
    }

    #[test]
    fn a_current_payload_is_borrowed_and_an_old_one_upcast_from_a_copy() {
        let current = json!({"TaskScheduled": {"schedule_cron": "* * * * *"}});
        assert!(matches!(
            upcast_ref("TaskScheduled", "1.1", &current),
            Cow::Borrowed(payload) if std::ptr::eq(payload, &current)
        ));
        let old = json!({"TaskScheduled": {"cron_expression": "* * * * *"}});
        let upcast = upcast_ref("TaskScheduled", "1.0", &old);
        assert!(matches!(upcast, Cow::Owned(_)));
        assert_eq!(upcast.as_ref(), &current);
        assert_eq!(old["TaskScheduled"]["cron_expression"], "* * * * *");
    }
}
