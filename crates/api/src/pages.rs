//! Answers to list queries kept in memory, as the JSON bytes sent, while the read-model views
//! they read stay at the generation they were read at ([`sparc_store::Generations`]: a change
//! to rows of that view, committed by any instance, moves it; one owner's writes leave other
//! owners' lists standing). With no generation (not following change notices) nothing is kept
//! and every list is read from the database.
//!
//! A list's key is its filters ([`ListKey`]), which carry the client's text, so each is kept as
//! a [`CacheKey`] (16 bytes whatever the filter), and every entry is charged its key and
//! bookkeeping as well as its body against a byte budget. The entries live in a
//! [`moka`] cache, which evicts the least useful ones past that budget and forgets those
//! nobody has asked for in a while.

use std::time::Duration;

use axum::body::Bytes;
use sparc_projections::CacheKey;
use sparc_projections::agents::AgentQuery;
use sparc_projections::projects::ProjectQuery;
use sparc_projections::tasks::TaskQuery;
use sparc_store::Generations;

/// Bytes of answers kept at most, keys and bookkeeping included.
const BYTES_KEPT: u64 = 64 << 20;

/// What an entry costs besides its body: its key, its generation, the body's handle and the
/// cache's own bookkeeping, rounded up.
const ENTRY_OVERHEAD: usize = 256;

/// How long an answer nobody asks for is kept: one whose view has moved on is never served
/// again, and one for a filter nobody repeats only takes room.
const IDLE_FOR: Duration = Duration::from_secs(15 * 60);

/// The list an answer belongs to, with everything its filter says (the caller's scope
/// included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKey<'a> {
    /// `GET /api/v1/tasks`.
    Tasks(&'a TaskQuery),
    /// `GET /api/v1/projects`.
    Projects(&'a ProjectQuery),
    /// `GET /api/v1/agents`.
    Agents(&'a AgentQuery),
}

/// The cache; see the module documentation.
#[derive(Debug)]
pub struct PageCache {
    generations: Generations,
    /// Each answer with the generation it was read at.
    pages: moka::sync::Cache<CacheKey, (u64, Bytes)>,
}

impl Default for PageCache {
    fn default() -> Self {
        Self::new(Generations::default())
    }
}

/// What keeping `body` costs the budget.
fn cost(body: &Bytes) -> u32 {
    u32::try_from(body.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

impl PageCache {
    /// A cache whose entries hold while `generations` stands still.
    pub fn new(generations: Generations) -> Self {
        Self::with_budget(generations, BYTES_KEPT)
    }

    /// [`PageCache::new`] keeping at most `budget` bytes.
    fn with_budget(generations: Generations, budget: u64) -> Self {
        Self {
            generations,
            pages: moka::sync::Cache::builder()
                .max_capacity(budget)
                .weigher(|_, (_, body): &(u64, Bytes)| cost(body))
                .time_to_idle(IDLE_FOR)
                .build(),
        }
    }

    /// The generations the entries are checked against.
    pub fn generations(&self) -> &Generations {
        &self.generations
    }

    /// The generation of the read-model `views` a page reads, to read it at (take it *before*
    /// reading, so a change committed meanwhile leaves the entry stale), or `None`: do not
    /// cache. Each view's generation only grows, so their sum moves whenever one does.
    pub fn generation(&self, views: &[&str]) -> Option<u64> {
        views
            .iter()
            .map(|view| self.generations.current(view))
            .sum()
    }

    /// The answer kept under `key` at `generation`, if any.
    pub fn get(&self, key: ListKey<'_>, generation: u64) -> Option<Bytes> {
        self.pages
            .get(&CacheKey::of(&key))
            .filter(|(at, _)| *at == generation)
            .map(|(_, body)| body)
    }

    /// Keeps `body` under `key`, read at `generation`.
    pub fn put(&self, key: ListKey<'_>, generation: u64, body: Bytes) {
        self.pages.insert(CacheKey::of(&key), (generation, body));
    }

    /// Entries kept and the bytes they are charged.
    #[cfg(test)]
    fn usage(&self) -> (u64, u64) {
        self.pages.run_pending_tasks();
        (self.pages.entry_count(), self.pages.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skill(name: String) -> TaskQuery {
        TaskQuery {
            skill_name: Some(name),
            ..TaskQuery::default()
        }
    }

    const OVERHEAD: u64 = ENTRY_OVERHEAD as u64;

    #[test]
    fn a_long_filter_costs_no_more_than_a_short_one() {
        let cache = PageCache::with_budget(Generations::default(), 1 << 20);
        let long = skill("x".repeat(100_000));
        cache.put(ListKey::Tasks(&long), 1, Bytes::from_static(b"[]"));
        assert_eq!(cache.usage(), (1, 2 + OVERHEAD));
        assert_eq!(
            cache.get(ListKey::Tasks(&long), 1),
            Some(Bytes::from_static(b"[]"))
        );
        assert_eq!(
            cache.get(ListKey::Tasks(&long), 2),
            None,
            "another generation"
        );
        assert_eq!(cache.get(ListKey::Tasks(&skill("x".into())), 1), None);
    }

    #[test]
    fn lists_with_the_same_filter_values_are_kept_apart() {
        let cache = PageCache::with_budget(Generations::default(), 1 << 20);
        cache.put(
            ListKey::Projects(&ProjectQuery::default()),
            1,
            Bytes::from_static(b"projects"),
        );
        assert_eq!(cache.get(ListKey::Agents(&AgentQuery::default()), 1), None);
        assert_eq!(
            cache.get(ListKey::Projects(&ProjectQuery::default()), 1),
            Some(Bytes::from_static(b"projects"))
        );
    }

    #[test]
    fn keys_count_in_the_budget_so_empty_answers_cannot_grow_it_without_bound() {
        let budget = 10 * OVERHEAD;
        let cache = PageCache::with_budget(Generations::default(), budget);
        for i in 0..1000 {
            cache.put(
                ListKey::Tasks(&skill(format!("filter {i}"))),
                1,
                Bytes::new(),
            );
            let (entries, bytes) = cache.usage();
            assert!(
                bytes <= budget && entries <= 10,
                "{entries} entries, {bytes} bytes"
            );
        }
    }

    #[test]
    fn replacing_an_entry_charges_only_the_new_body() {
        let cache = PageCache::with_budget(Generations::default(), 1 << 20);
        let key = skill("k".into());
        cache.put(ListKey::Tasks(&key), 1, Bytes::from_static(b"old answer"));
        cache.put(ListKey::Tasks(&key), 2, Bytes::from_static(b"new"));
        assert_eq!(cache.usage(), (1, 3 + OVERHEAD));
    }
}
