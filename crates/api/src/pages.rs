//! Answers to list queries kept in memory, as the JSON bytes sent, while the read-model views
//! they read stay at the generation they were read at ([`sparc_store::Generations`]: a change
//! to rows of that view, committed by any instance, moves it; one owner's writes leave other
//! owners' lists standing). With no generation (not following change notices) nothing is kept
//! and every list is read from the database.
//!
//! A list's key is its filters, which carry the client's text, so each is kept as a
//! [`CacheKey`] (16 bytes whatever the filter), and every entry is charged its key and
//! bookkeeping as well as its body against the budget: many small answers to long filters
//! cannot grow the cache past it.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;
use sparc_projections::CacheKey;
use sparc_store::Generations;

/// Bytes of answers kept at most, keys and bookkeeping included (all are forgotten when the
/// next would pass it).
const BYTES_KEPT: usize = 64 << 20;

/// What an entry costs besides its body: its key, its generation, the body's handle and the
/// map's own share of a slot, rounded up.
const ENTRY_OVERHEAD: usize = 96;

/// The cache; see the module documentation.
#[derive(Debug)]
pub struct PageCache {
    generations: Generations,
    budget: usize,
    pages: Mutex<Pages>,
}

impl Default for PageCache {
    fn default() -> Self {
        Self::new(Generations::default())
    }
}

#[derive(Debug, Default)]
struct Pages {
    by_key: HashMap<CacheKey, (u64, Bytes)>,
    bytes: usize,
}

/// What keeping `body` costs the budget.
fn cost(body: &Bytes) -> usize {
    body.len() + ENTRY_OVERHEAD
}

impl PageCache {
    /// A cache whose entries hold while `generations` stands still.
    pub fn new(generations: Generations) -> Self {
        Self::with_budget(generations, BYTES_KEPT)
    }

    /// [`PageCache::new`] keeping at most `budget` bytes.
    fn with_budget(generations: Generations, budget: usize) -> Self {
        Self {
            generations,
            budget,
            pages: Mutex::default(),
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
    pub fn get(&self, key: impl AsRef<str>, generation: u64) -> Option<Bytes> {
        let key = CacheKey::of(key.as_ref());
        let pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        pages
            .by_key
            .get(&key)
            .filter(|(at, _)| *at == generation)
            .map(|(_, body)| body.clone())
    }

    /// Keeps `body` under `key`, read at `generation`.
    pub fn put(&self, key: impl AsRef<str>, generation: u64, body: Bytes) {
        let key = CacheKey::of(key.as_ref());
        let mut pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        if pages.bytes + cost(&body) > self.budget {
            pages.by_key.clear();
            pages.bytes = 0;
        }
        pages.bytes += cost(&body);
        if let Some((_, old)) = pages.by_key.insert(key, (generation, body)) {
            pages.bytes -= cost(&old);
        }
    }

    /// Entries kept and the bytes they are charged.
    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        let pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        (pages.by_key.len(), pages.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_filter_costs_no_more_than_a_short_one() {
        let cache = PageCache::with_budget(Generations::default(), 1 << 20);
        let long = format!("TaskQuery {{ skill_name: {:?} }}", "x".repeat(100_000));
        cache.put(&long, 1, Bytes::from_static(b"[]"));
        assert_eq!(cache.usage(), (1, 2 + ENTRY_OVERHEAD));
        assert_eq!(cache.get(&long, 1), Some(Bytes::from_static(b"[]")));
        assert_eq!(cache.get(&long, 2), None, "another generation");
        assert_eq!(cache.get("TaskQuery { skill_name: \"x\" }", 1), None);
    }

    #[test]
    fn keys_count_in_the_budget_so_empty_answers_cannot_grow_it_without_bound() {
        let budget = 10 * ENTRY_OVERHEAD;
        let cache = PageCache::with_budget(Generations::default(), budget);
        for i in 0..1000 {
            cache.put(format!("filter {i}"), 1, Bytes::new());
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
        cache.put("k", 1, Bytes::from_static(b"old answer"));
        cache.put("k", 2, Bytes::from_static(b"new"));
        assert_eq!(cache.usage(), (1, 3 + ENTRY_OVERHEAD));
    }
}
