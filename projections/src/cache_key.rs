//! Fixed-size keys for the in-memory caches of list answers and totals. A list's key is built
//! from its filters, which carry user text (a skill name, a search, capabilities); kept as is,
//! every entry would cost what the request chose. A [`CacheKey`] is 128 bits of SipHash under
//! two keys drawn at random when the process starts: the same size for any filter, and since
//! no client ever sees a key nor knows the hash keys, one cannot aim two filters at one entry
//! (that two filters share a key by chance is below 2^-60 even among 2^32 entries).

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::OnceLock;

/// A cache key: a digest of the text that names a cached answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u64; 2]);

impl CacheKey {
    /// The bytes one key takes in a cache, for the caches' budgets.
    pub const SIZE: usize = std::mem::size_of::<CacheKey>();

    /// The key of `text`.
    pub fn of(text: &str) -> Self {
        static STATES: OnceLock<[RandomState; 2]> = OnceLock::new();
        let states = STATES.get_or_init(|| [RandomState::new(), RandomState::new()]);
        Self(states.each_ref().map(|state| {
            let mut hasher = state.build_hasher();
            hasher.write(text.as_bytes());
            hasher.finish()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_the_same_size_whatever_the_text_and_tells_texts_apart() {
        let long = "x".repeat(1 << 20);
        assert_eq!(CacheKey::of(&long), CacheKey::of(&long));
        assert_ne!(CacheKey::of(&long), CacheKey::of(&long[1..]));
        assert_ne!(CacheKey::of("tasks|a"), CacheKey::of("tasks|b"));
        assert_eq!(CacheKey::SIZE, 16);
    }
}
