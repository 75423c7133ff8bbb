//! Answers to list queries kept in memory, as the JSON bytes sent, while their read model stays
//! at the generation they were read at ([`sparc_store::Generations`]: any change to the read
//! model, committed by any instance, moves it). With no generation (not listening for change
//! notices, or SQLite) nothing is kept and every list is read from the database.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;
use sparc_store::Generations;

/// Bytes of answers kept at most (all are forgotten when the next would pass it).
const BYTES_KEPT: usize = 64 << 20;

/// The cache; see the module documentation.
#[derive(Debug, Default)]
pub struct PageCache {
    generations: Generations,
    pages: Mutex<Pages>,
}

#[derive(Debug, Default)]
struct Pages {
    by_key: HashMap<String, (u64, Bytes)>,
    bytes: usize,
}

impl PageCache {
    /// A cache whose entries hold while `generations` stands still.
    pub fn new(generations: Generations) -> Self {
        Self {
            generations,
            pages: Mutex::default(),
        }
    }

    /// The generations the entries are checked against.
    pub fn generations(&self) -> &Generations {
        &self.generations
    }

    /// The generation of `read_model` to read a page at (take it *before* reading, so a change
    /// committed meanwhile leaves the entry stale), or `None`: do not cache.
    pub fn generation(&self, read_model: &str) -> Option<u64> {
        self.generations.current(read_model)
    }

    /// The answer kept under `key` at `generation`, if any.
    pub fn get(&self, key: &str, generation: u64) -> Option<Bytes> {
        let pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        pages
            .by_key
            .get(key)
            .filter(|(at, _)| *at == generation)
            .map(|(_, body)| body.clone())
    }

    /// Keeps `body` under `key`, read at `generation`.
    pub fn put(&self, key: String, generation: u64, body: Bytes) {
        let mut pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        if pages.bytes + body.len() > BYTES_KEPT {
            pages.by_key.clear();
            pages.bytes = 0;
        }
        pages.bytes += body.len();
        if let Some((_, old)) = pages.by_key.insert(key, (generation, body)) {
            pages.bytes -= old.len();
        }
    }
}
