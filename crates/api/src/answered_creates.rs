//! Creates answered before the read models have them. A create answers as soon as its event is
//! committed and notes here what it wrote (read model, id, version, whose it is); a request
//! through this instance that reads a read model first waits until the notes it could see,
//! taken before it arrived, are applied ([`crate::state::App::answered_creates_visible`]). So
//! whoever reads through this instance after a create answered sees it, a burst of creates does
//! not wait on the read models one by one, and one user's creates never hold up another user's
//! reads (admins and auditors, who see everything, wait for all). Notes are in memory, per
//! instance: a create through another instance is seen once a projection loop has applied it.

use std::collections::VecDeque;
use std::sync::Mutex;

use uuid::Uuid;

/// Notes kept at most; beyond it the oldest are forgotten (by then long applied, unless the
/// read models are stuck, and then waiting for each would not help).
const MAX_NOTES: usize = 10_000;

/// One create a later read must see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The read model's table.
    pub table: &'static str,
    /// The resource.
    pub id: Uuid,
    /// The version the write gave it.
    pub version: usize,
    /// The one user (besides admins and auditors) who sees it; `None`: everyone.
    pub audience: Option<Uuid>,
}

impl Written {
    /// Whether `reader` (`None`: one who sees everything) could see this write.
    fn seen_by(&self, reader: Option<Uuid>) -> bool {
        reader.is_none() || self.audience.is_none() || self.audience == reader
    }
}

/// The creates this instance answered and has not yet seen applied, oldest first.
#[derive(Debug, Default)]
pub struct AnsweredCreates {
    notes: Mutex<Notes>,
}

#[derive(Debug, Default)]
struct Notes {
    /// Numbers each note, so that a reader forgets exactly the notes it waited for.
    next: u64,
    pending: VecDeque<(u64, Written)>,
}

/// The notes a reader waits for: what it could see of what was pending when it arrived.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The creates.
    pub writes: Vec<Written>,
    /// Their notes' numbers, ascending.
    numbers: Vec<u64>,
}

impl AnsweredCreates {
    /// Notes `written`, first dropping the oldest notes that `applied` says are in the read
    /// models already (so that under a stream of creates and no reads the list stays short).
    pub fn note(&self, written: Written, applied: impl Fn(&Written) -> bool) {
        let mut notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        while notes.pending.front().is_some_and(|(_, w)| applied(w)) {
            notes.pending.pop_front();
        }
        if notes.pending.len() >= MAX_NOTES {
            notes.pending.pop_front();
        }
        let number = notes.next;
        notes.pending.push_back((number, written));
        notes.next += 1;
    }

    /// What a read by `reader` (`None`: one who sees everything) arriving now must wait for
    /// (usually nothing).
    pub fn pending(&self, reader: Option<Uuid>) -> Snapshot {
        let notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        let (numbers, writes) = notes
            .pending
            .iter()
            .filter(|(_, w)| w.seen_by(reader))
            .copied()
            .unzip();
        Snapshot { writes, numbers }
    }

    /// Forgets the notes of `snapshot`, once waited for (applied, or given up on).
    pub fn done(&self, snapshot: &Snapshot) {
        if snapshot.numbers.is_empty() {
            return;
        }
        let mut notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        notes
            .pending
            .retain(|(n, _)| snapshot.numbers.binary_search(n).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(version: usize) -> Written {
        Written {
            table: "tasks",
            id: Uuid::now_v7(),
            version,
            audience: None,
        }
    }

    fn task_of(owner: Uuid) -> Written {
        Written {
            audience: Some(owner),
            ..task(1)
        }
    }

    #[test]
    fn nothing_noted_is_nothing_to_wait_for() {
        assert_eq!(
            AnsweredCreates::default().pending(None),
            Snapshot::default()
        );
    }

    #[test]
    fn a_reader_waits_only_for_the_creates_it_could_see() {
        let creates = AnsweredCreates::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let (of_a, of_b, shared) = (task_of(a), task_of(b), task(1));
        creates.note(of_a, |_| false);
        creates.note(of_b, |_| false);
        creates.note(shared, |_| false);
        assert_eq!(creates.pending(Some(a)).writes, vec![of_a, shared]);
        assert_eq!(creates.pending(None).writes, vec![of_a, of_b, shared]);
        creates.done(&creates.pending(Some(a)));
        assert_eq!(
            creates.pending(None).writes,
            vec![of_b],
            "what another user's read waited for is forgotten, the rest kept"
        );
    }

    #[test]
    fn a_reader_waits_for_what_was_noted_before_it_arrived_and_forgets_only_that() {
        let creates = AnsweredCreates::default();
        let (first, second, third) = (task(1), task(1), task(1));
        creates.note(first, |_| false);
        creates.note(second, |_| false);
        let snapshot = creates.pending(None);
        assert_eq!(snapshot.writes, vec![first, second]);
        creates.note(third, |_| false);
        creates.done(&snapshot);
        assert_eq!(creates.pending(None).writes, vec![third]);
        creates.done(&creates.pending(None));
        assert_eq!(creates.pending(None), Snapshot::default());
    }

    #[test]
    fn noting_drops_the_oldest_notes_already_applied() {
        let creates = AnsweredCreates::default();
        let (applied, pending, newest) = (task(1), task(2), task(1));
        creates.note(applied, |_| false);
        creates.note(pending, |_| false);
        creates.note(newest, |w| w.version == 1);
        assert_eq!(creates.pending(None).writes, vec![pending, newest]);
    }

    #[test]
    fn the_notes_are_bounded() {
        let creates = AnsweredCreates::default();
        let first = task(1);
        creates.note(first, |_| false);
        for _ in 0..MAX_NOTES {
            creates.note(task(1), |_| false);
        }
        let pending = creates.pending(None).writes;
        assert_eq!(pending.len(), MAX_NOTES);
        assert!(!pending.contains(&first), "the oldest is forgotten");
    }
}
