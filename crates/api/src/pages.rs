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
//!
//! An answer read for a client that accepts gzip is kept compressed too ([`Page`]), so that
//! the next ones are not compressed again at every request.

use std::convert::Infallible;
use std::io::Write;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
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

/// A kept answer: its JSON, and the same gzip-compressed if it was read for a client that
/// accepts gzip and is large enough to be sent compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The JSON bytes.
    pub json: Bytes,
    /// `json` gzip-compressed.
    pub gzip: Option<Bytes>,
}

impl Page {
    /// The answer `json`, compressed too if `gzip` and it is large enough to be sent so.
    pub fn new(json: Bytes, gzip: AcceptsGzip) -> Self {
        let gzip = (gzip.0 && json.len() as u64 >= crate::middleware::COMPRESS_FROM_BYTES)
            .then(|| compress(&json))
            .flatten();
        Self { json, gzip }
    }
}

/// `json` gzip-compressed at the compression layer's level (`None` if that failed).
fn compress(json: &[u8]) -> Option<Bytes> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(json).ok()?;
    encoder.finish().ok().map(Bytes::from)
}

/// Whether the request's `Accept-Encoding` takes gzip: named (or `x-gzip`) with a nonzero
/// weight, or not named and `*` with a nonzero weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptsGzip(pub bool);

impl AcceptsGzip {
    fn of(headers: &HeaderMap) -> Self {
        let (mut gzip, mut any) = (None, None);
        let values = headers.get_all(header::ACCEPT_ENCODING);
        for item in values
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let weight = match parts.find_map(|p| {
                let p = p.trim();
                p.strip_prefix("q=").or_else(|| p.strip_prefix("Q="))
            }) {
                Some(q) => q.trim().parse::<f32>().ok(),
                None => Some(1.0),
            };
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = weight;
            } else if coding == "*" {
                any = weight;
            }
        }
        Self(gzip.or(any).is_some_and(|q| q > 0.0))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AcceptsGzip {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self::of(&parts.headers))
    }
}

/// The cache; see the module documentation.
#[derive(Debug)]
pub struct PageCache {
    generations: Generations,
    /// Each answer with the generation it was read at.
    pages: moka::sync::Cache<CacheKey, (u64, Page)>,
}

impl Default for PageCache {
    fn default() -> Self {
        Self::new(Generations::default())
    }
}

/// What keeping `page` costs the budget.
fn cost(page: &Page) -> u32 {
    let bytes = page.json.len() + page.gzip.as_ref().map_or(0, Bytes::len);
    u32::try_from(bytes + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
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
                .weigher(|_, (_, page): &(u64, Page)| cost(page))
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
    pub fn get(&self, key: ListKey<'_>, generation: u64) -> Option<Page> {
        self.pages
            .get(&CacheKey::of(&key))
            .filter(|(at, _)| *at == generation)
            .map(|(_, page)| page)
    }

    /// Keeps `page` under `key`, read at `generation`.
    pub fn put(&self, key: ListKey<'_>, generation: u64, page: Page) {
        self.pages.insert(CacheKey::of(&key), (generation, page));
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

    /// An answer kept as read for a client that does not take gzip.
    fn page(json: &'static [u8]) -> Page {
        Page::new(Bytes::from_static(json), AcceptsGzip(false))
    }

    #[test]
    fn a_long_filter_costs_no_more_than_a_short_one() {
        let cache = PageCache::with_budget(Generations::default(), 1 << 20);
        let long = skill("x".repeat(100_000));
        cache.put(ListKey::Tasks(&long), 1, page(b"[]"));
        assert_eq!(cache.usage(), (1, 2 + OVERHEAD));
        assert_eq!(cache.get(ListKey::Tasks(&long), 1), Some(page(b"[]")));
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
            page(b"projects"),
        );
        assert_eq!(cache.get(ListKey::Agents(&AgentQuery::default()), 1), None);
        assert_eq!(
            cache.get(ListKey::Projects(&ProjectQuery::default()), 1),
            Some(page(b"projects"))
        );
    }

    #[test]
    fn keys_count_in_the_budget_so_empty_answers_cannot_grow_it_without_bound() {
        let budget = 10 * OVERHEAD;
        let cache = PageCache::with_budget(Generations::default(), budget);
        for i in 0..1000 {
            cache.put(ListKey::Tasks(&skill(format!("filter {i}"))), 1, page(b""));
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
        cache.put(ListKey::Tasks(&key), 1, page(b"old answer"));
        cache.put(ListKey::Tasks(&key), 2, page(b"new"));
        assert_eq!(cache.usage(), (1, 3 + OVERHEAD));
    }

    #[test]
    fn an_answer_read_for_gzip_is_kept_compressed_too_and_charged_for_both() {
        let json = Bytes::from(format!("[{}]", r#"{"skill_name": "lint"},"#.repeat(100)));
        let read = Page::new(json.clone(), AcceptsGzip(true));
        let gzip = read.gzip.clone().expect("compressed");
        let mut unpacked = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gzip[..]), &mut unpacked)
            .expect("valid gzip");
        assert_eq!(unpacked, json);
        assert!(gzip.len() < json.len());

        let cache = PageCache::with_budget(Generations::default(), 1 << 20);
        cache.put(ListKey::Tasks(&skill("k".into())), 1, read);
        let charged = (json.len() + gzip.len()) as u64 + OVERHEAD;
        assert_eq!(cache.usage(), (1, charged));

        let small = Page::new(Bytes::from_static(b"[]"), AcceptsGzip(true));
        assert_eq!(small.gzip, None, "too small to be sent compressed");
        let plain = Page::new(json, AcceptsGzip(false));
        assert_eq!(plain.gzip, None, "not asked for");
    }

    #[test]
    fn accept_encoding_takes_gzip_by_name_or_wildcard_with_a_nonzero_weight() {
        let takes = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::ACCEPT_ENCODING,
                value.parse().expect("a header value"),
            );
            AcceptsGzip::of(&headers).0
        };
        assert!(takes("gzip"));
        assert!(takes("br, GZIP;q=0.5"));
        assert!(takes("x-gzip"));
        assert!(takes("*"));
        assert!(takes("deflate, gzip ; q=1.0"));
        assert!(!takes("gzip;q=0"));
        assert!(
            !takes("gzip;q=0.000, *"),
            "named with no weight: the wildcard does not count"
        );
        assert!(!takes("br, deflate"));
        assert!(!takes("*;q=0"));
        assert!(!takes("gzip;q=bogus"));
        assert!(!takes(""));
        assert!(!AcceptsGzip::of(&HeaderMap::new()).0);
    }
}
