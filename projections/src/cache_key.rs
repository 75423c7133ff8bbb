//! Fixed-size keys for the in-memory cache of list answers. A list's key is built from its
//! filters (hashed through their `Hash`, field by field), which carry user text (a skill name, a
//! search, capabilities); kept as is, every entry would cost what the request chose. A [`CacheKey`] is 128 bits of SipHash under
//! two keys drawn at random when the process starts: the same size for any filter, and since
//! no client ever sees a key nor knows the hash keys, one cannot aim two filters at one entry
//! (that two filters share a key by chance is below 2^-60 even among 2^32 entries).

use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::OnceLock;

/// A cache key: a digest of the value that names a cached answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u64; 2]);

impl CacheKey {
    /// The bytes one key takes in a cache, for the caches' budgets.
    pub const SIZE: usize = std::mem::size_of::<CacheKey>();

    /// The key of `value`.
    pub fn of(value: &impl Hash) -> Self {
        static STATES: OnceLock<[RandomState; 2]> = OnceLock::new();
        let states = STATES.get_or_init(|| [RandomState::new(), RandomState::new()]);
        Self(states.each_ref().map(|state| state.hash_one(value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_the_same_size_whatever_the_value_and_tells_values_apart() {
        let long = "x".repeat(1 << 20);
        assert_eq!(CacheKey::of(&long), CacheKey::of(&long));
        assert_ne!(CacheKey::of(&long), CacheKey::of(&&long[1..]));
        assert_ne!(CacheKey::of(&("tasks", "a")), CacheKey::of(&("tasks", "b")));
        assert_ne!(CacheKey::of(&("ab", "c")), CacheKey::of(&("a", "bc")));
        assert_eq!(CacheKey::SIZE, 16);
    }
}
