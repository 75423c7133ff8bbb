//! Property-based black-box test (issue 20, point 5), on both backends: `proptest` generates
//! request bodies as raw JSON text for every write endpoint (tasks, runs, projects, agents,
//! activity reports, registration, login, profile, password change, an admin's account
//! change) with every kind of code point (controls, U+0000, noncharacters, astral), free-form
//! JSON nested past the parser's limit, strings up to ~70k characters, large and precise
//! number literals, repeated and unknown keys, truncated and non-object bodies. Every answer
//! must be a 2xx or a 4xx in the contract's error shape; a 2xx must hold every field as sent
//! (after the documented trimming and cron spacing) and read back the same; a refused update
//! must change nothing. Afterwards every consumer of the log is live with lag 0 and nothing
//! parked, and the hash chain verifies.
//!
//! `PROPTEST_CASES` sets the cases per endpoint (default [`CASES`]); a failure prints the
//! shrunk body that fails.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fmt;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::support::{Backend, PASSWORD, TestApp, TestUser, id_of};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::strategy::{BoxedStrategy, Union};
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sparc_domain::user::Role;

/// Cases per endpoint: enough for every kind of value to come up on each run, few enough that
/// a debug build runs the file in well under a minute per backend.
const CASES: u32 = 64;

// ---------------------------------------------------------------------------------------------
// JSON as text: what is sent is written by hand, so that repeated keys, any escaping and any
// number literal can be expressed, and compared with what comes back without a lossy parse.
// ---------------------------------------------------------------------------------------------

/// A JSON value as it will be written.
#[derive(Clone)]
enum Json {
    Null,
    Bool(bool),
    /// A number literal, written exactly so (it may be malformed on purpose).
    Num(String),
    Str(Text),
    Arr(Vec<Json>),
    /// Members in order; a key may repeat.
    Obj(Vec<(Text, Json)>),
}

/// A JSON string: its value and how it is escaped.
#[derive(Clone)]
struct Text {
    value: String,
    escape: Escape,
    /// Followed by a lone surrogate escape (`\ud800`), which no string can hold.
    lone: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// Only what must be escaped, with the short forms (`\n`).
    Minimal,
    /// And every non-ASCII character as `\uXXXX` (astral ones as surrogate pairs).
    NonAscii,
    /// Every character as `\uXXXX`, `/` as `\/`.
    All,
}

impl Text {
    fn plain(value: &str) -> Self {
        Self {
            value: value.to_owned(),
            escape: Escape::Minimal,
            lone: false,
        }
    }

    fn write(&self, out: &mut String) {
        out.push('"');
        for c in self.value.chars() {
            let short = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '\n' => Some("\\n"),
                '\t' => Some("\\t"),
                '\r' => Some("\\r"),
                '\u{8}' => Some("\\b"),
                '\u{c}' => Some("\\f"),
                '/' if self.escape == Escape::All => Some("\\/"),
                _ => None,
            };
            match short {
                Some(escaped) if self.escape != Escape::All || c == '/' => out.push_str(escaped),
                _ if c < ' '
                    || self.escape == Escape::All
                    || (self.escape == Escape::NonAscii && !c.is_ascii()) =>
                {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                _ => out.push(c),
            }
        }
        if self.lone {
            out.push_str("\\ud800");
        }
        out.push('"');
    }
}

impl Json {
    fn str(value: &str) -> Self {
        Json::Str(Text::plain(value))
    }

    fn write(&self, out: &mut String, pretty: bool) {
        let (comma, colon) = if pretty { (",\n\t", " : ") } else { (",", ":") };
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(literal) => out.push_str(literal),
            Json::Str(text) => text.write(out),
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(comma);
                    }
                    item.write(out, pretty);
                }
                out.push(']');
            }
            Json::Obj(members) => {
                out.push('{');
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push_str(comma);
                    }
                    key.write(out);
                    out.push_str(colon);
                    value.write(out, pretty);
                }
                out.push('}');
            }
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, false);
        out
    }

    /// Nested objects and arrays (`{}` is 1).
    fn depth(&self) -> usize {
        match self {
            Json::Arr(items) => 1 + items.iter().map(Json::depth).max().unwrap_or(0),
            Json::Obj(members) => 1 + members.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Whether some object in it repeats a key with values that differ: a service that
    /// accepted it cannot have kept what was sent.
    fn ambiguous(&self) -> bool {
        match self {
            Json::Arr(items) => items.iter().any(Json::ambiguous),
            Json::Obj(members) => {
                members.iter().enumerate().any(|(i, (key, value))| {
                    members[..i]
                        .iter()
                        .any(|(k, v)| k.value == key.value && !equivalent(v, value))
                }) || members.iter().any(|(_, v)| v.ambiguous())
            }
            _ => false,
        }
    }
}

/// Shown as the JSON it is written as (long ones clipped), in proptest's reports.
impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", clip(&self.text(), 300))
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Json::Str(self.clone()), f)
    }
}

/// Whether two sent values mean the same JSON value.
fn equivalent(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Null, Json::Null) => true,
        (Json::Bool(x), Json::Bool(y)) => x == y,
        (Json::Num(x), Json::Num(y)) => decimal(x).is_some() && decimal(x) == decimal(y),
        (Json::Str(x), Json::Str(y)) => !x.lone && !y.lone && x.value == y.value,
        (Json::Arr(x), Json::Arr(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equivalent(p, q))
        }
        (Json::Obj(x), Json::Obj(y)) => {
            let covers = |from: &[(Text, Json)], to: &[(Text, Json)]| {
                from.iter().all(|(key, value)| {
                    to.iter()
                        .filter(|(k, _)| k.value == key.value)
                        .any(|(_, v)| equivalent(value, v))
                })
            };
            covers(x, y) && covers(y, x)
        }
        _ => false,
    }
}

/// Whether the service's `got` is the value `sent`: equal strings, numbers of equal decimal
/// value (so a rounded integer or fraction is caught), objects with the same members, where a
/// repeated key must match every value sent under it.
fn same(sent: &Json, got: &Value) -> bool {
    match (sent, got) {
        (Json::Null, Value::Null) => true,
        (Json::Bool(x), Value::Bool(y)) => x == y,
        (Json::Num(literal), Value::Number(n)) => {
            decimal(literal).is_some() && decimal(literal) == decimal(&n.to_string())
        }
        (Json::Str(text), Value::String(s)) => !text.lone && text.value == *s,
        (Json::Arr(items), Value::Array(got)) => {
            items.len() == got.len() && items.iter().zip(got).all(|(i, g)| same(i, g))
        }
        (Json::Obj(members), Value::Object(got)) => {
            let mut keys = HashSet::new();
            for (key, value) in members {
                if key.lone || !got.get(&key.value).is_some_and(|g| same(value, g)) {
                    return false;
                }
                keys.insert(key.value.as_str());
            }
            keys.len() == got.len()
        }
        _ => false,
    }
}

/// A number literal's exact value as (negative, significant digits, power of ten); `None` for
/// what is not a JSON number. Zero is one value whatever its sign.
fn decimal(literal: &str) -> Option<(bool, String, i64)> {
    let (negative, rest) = match literal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, literal),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], rest[at + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits_only(int) || !digits_only(frac) {
        return None;
    }
    let digits = format!("{int}{frac}");
    let leading = digits.trim_start_matches('0');
    if leading.is_empty() {
        return Some((false, "0".to_owned(), 0));
    }
    let significant = leading.trim_end_matches('0');
    let power = exponent
        .checked_sub(i64::try_from(frac.len()).ok()?)?
        .checked_add(i64::try_from(leading.len() - significant.len()).ok()?)?;
    Some((negative, significant.to_owned(), power))
}

/// A request body: a JSON value written compactly or spaced out, possibly cut short.
#[derive(Debug, Clone)]
struct Body {
    value: Json,
    pretty: bool,
    /// Cut before the closing brace, at this offset (modulo the length).
    cut: Option<usize>,
}

impl Body {
    fn text(&self) -> String {
        let mut out = String::new();
        if self.pretty {
            out.push_str("\n ");
        }
        self.value.write(&mut out, self.pretty);
        if self.pretty {
            out.push_str(" \r\n");
        }
        if let (Some(cut), Json::Obj(_)) = (self.cut, &self.value)
            && let Some(close) = out.rfind('}')
        {
            let mut at = cut % close.max(1);
            while !out.is_char_boundary(at) {
                at -= 1;
            }
            out.truncate(at);
        }
        out
    }

    /// The values sent under top-level key `name`, in order.
    fn sent(&self, name: &str) -> Vec<&Json> {
        match &self.value {
            Json::Obj(members) => members
                .iter()
                .filter(|(key, _)| !key.lone && key.value == name)
                .map(|(_, value)| value)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The first string sent under `name`.
    fn sent_str(&self, name: &str) -> Option<&str> {
        self.sent(name).into_iter().find_map(|value| match value {
            Json::Str(text) if !text.lone => Some(text.value.as_str()),
            _ => None,
        })
    }
}

/// Up to `max` characters of `text`, saying how much was left off.
fn clip(text: &str, max: usize) -> String {
    let total = text.chars().count();
    if total <= max {
        return text.to_owned();
    }
    let kept: String = text.chars().take(max).collect();
    format!("{kept}…(+{} more chars)", total - max)
}

fn clip_value(value: &Value) -> String {
    clip(&value.to_string(), 300)
}

// ---------------------------------------------------------------------------------------------
// Generators.
// ---------------------------------------------------------------------------------------------

const NONCHARACTERS: &[char] = &[
    '\u{FFFE}',
    '\u{FFFF}',
    '\u{FDD0}',
    '\u{FDEF}',
    '\u{1FFFE}',
    '\u{1FFFF}',
    '\u{10FFFE}',
    '\u{10FFFF}',
];
const SPACES: &[char] = &[
    ' ', '\t', '\n', '\r', '\u{b}', '\u{85}', '\u{a0}', '\u{2028}', '\u{3000}', '\u{feff}',
];
const PLAIN: &str = "abcxyzABCXYZ0189_-.@:/ ";
const ODD: &[char] = &[
    '"', '\\', '/', '\u{7f}', 'é', 'ß', '€', '\u{301}', '\u{200d}', '😀',
];

/// Any character, with the troublesome ones (controls, U+0000, noncharacters, astral, spaces,
/// what JSON escapes) far more often than chance would give them.
fn any_char() -> BoxedStrategy<char> {
    prop_oneof![
        4 => any::<char>(),
        4 => select(PLAIN.chars().collect::<Vec<_>>()),
        2 => (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap_or('?')),
        1 => (0x7fu32..0xa0).prop_map(|c| char::from_u32(c).unwrap_or('?')),
        1 => Just('\0'),
        2 => select(NONCHARACTERS),
        2 => (0x10000u32..=0x10FFFF).prop_map(|c| char::from_u32(c).unwrap_or('?')),
        1 => select(SPACES),
        1 => select(ODD),
    ]
    .boxed()
}

/// [`any_char`] without U+0000, which the service refuses everywhere.
fn storable_char() -> BoxedStrategy<char> {
    any_char()
        .prop_map(|c| if c == '\0' { '\u{1}' } else { c })
        .boxed()
}

fn repeat_to(pattern: &[char], len: usize) -> String {
    pattern.iter().cycle().take(len).collect()
}

/// Up to `max` characters: mostly short, sometimes long (a short pattern repeated, so that
/// strings of tens of thousands of characters cost little to make and to shrink).
fn text(max: usize, nul: bool) -> BoxedStrategy<String> {
    let ch = if nul { any_char() } else { storable_char() };
    prop_oneof![
        4 => proptest::collection::vec(ch.clone(), 0..=max.min(24))
            .prop_map(|chars| chars.into_iter().collect::<String>()),
        1 => (proptest::collection::vec(ch, 1..6), 0..=max)
            .prop_map(|(pattern, len)| repeat_to(&pattern, len)),
    ]
    .boxed()
}

/// More than `max` characters: just over, or up to ~70k.
fn overlong(max: usize) -> BoxedStrategy<String> {
    (
        proptest::collection::vec(any_char(), 1..6),
        prop_oneof![Just(max + 1), (max + 1)..=70_000usize.max(max + 2)],
    )
        .prop_map(|(pattern, len)| repeat_to(&pattern, len))
        .boxed()
}

fn escape() -> BoxedStrategy<Escape> {
    prop_oneof![6 => Just(Escape::Minimal), 1 => Just(Escape::NonAscii), 1 => Just(Escape::All)]
        .boxed()
}

fn string(strategy: BoxedStrategy<String>) -> BoxedStrategy<Json> {
    (strategy, escape())
        .prop_map(|(value, escape)| {
            Json::Str(Text {
                value,
                escape,
                lone: false,
            })
        })
        .boxed()
}

fn one_of(values: &[&str]) -> BoxedStrategy<String> {
    select(values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>()).boxed()
}

fn owned(values: &[String]) -> BoxedStrategy<String> {
    select(values.to_vec()).boxed()
}

/// `prefix value suffix`, the padding being spaces of several kinds (or none).
fn padded(strategy: BoxedStrategy<String>) -> BoxedStrategy<String> {
    let pad = || one_of(&["", "", "", " ", "\t", "\u{3000} ", "\n"]);
    (pad(), strategy, pad())
        .prop_map(|(before, value, after)| format!("{before}{value}{after}"))
        .boxed()
}

/// Number literals a 64-bit integer or float holds exactly.
fn exact_number() -> BoxedStrategy<Json> {
    let finite = |f: f64, fallback: &str| {
        if f.is_finite() {
            None
        } else {
            Some(fallback.to_owned())
        }
    };
    prop_oneof![
        2 => any::<i64>().prop_map(|n| n.to_string()),
        2 => (0u32..1000).prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        2 => any::<f64>().prop_map(move |f| finite(f, "0.5").unwrap_or_else(|| format!("{f:?}"))),
        1 => any::<f64>().prop_map(move |f| finite(f, "2.5e-3").unwrap_or_else(|| format!("{f:e}"))),
    ]
    .prop_map(Json::Num)
    .boxed()
}

/// Literals that 64 bits cannot hold, that a float would round, on the edges of the ranges,
/// and some that are not JSON at all.
const HARD_NUMBERS: &[&str] = &[
    "123456789012345678901234567890",
    "-123456789012345678901234567890",
    "0.1000000000000000000001",
    "0.30000000000000000001",
    "1e400",
    "-1e400",
    "1e-400",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "9007199254740993",
    "1.7976931348623157e308",
    "1.7976931348623159e308",
    "2.2250738585072014e-308",
    "4.9e-324",
    "5e-324",
    "-0",
    "-0.0",
    "0e0",
    "1E2",
    "1e+2",
    "100.000",
    "01",
    "1.",
    ".5",
    "+1",
    "NaN",
    "Infinity",
    "0x10",
];

/// Any number literal: exact ones, hard ones, long digit strings, full decimal expansions.
fn any_number() -> BoxedStrategy<Json> {
    let digits = (
        any::<bool>(),
        proptest::collection::vec(0u8..10, 1..40),
        proptest::option::of(proptest::collection::vec(0u8..10, 1..30)),
        proptest::option::of(-400i32..400),
    )
        .prop_map(|(negative, int, frac, exponent)| {
            let mut out = String::from(if negative { "-" } else { "" });
            let int: String = int.iter().map(|d| char::from(b'0' + d)).collect();
            out.push_str(if int.len() > 1 {
                int.trim_start_matches('0')
            } else {
                &int
            });
            if out.ends_with('-') || out.is_empty() {
                out.push('1');
            }
            if let Some(frac) = frac {
                out.push('.');
                out.extend(frac.iter().map(|d| char::from(b'0' + d)));
            }
            if let Some(exponent) = exponent {
                let _ = write!(out, "e{exponent}");
            }
            Json::Num(out)
        });
    prop_oneof![
        3 => exact_number(),
        3 => one_of(HARD_NUMBERS).prop_map(Json::Num),
        2 => digits,
        1 => any::<f64>().prop_map(|f| Json::Num(if f.is_finite() { format!("{f}") } else { "1".to_owned() })),
    ]
    .boxed()
}

/// An object key: usually short; with `nul`, U+0000 may come up.
fn key(nul: bool) -> BoxedStrategy<Text> {
    (
        prop_oneof![
            2 => one_of(&["a", "b", "id", "note", "x y", "é", "😀", "", "params", "\u{FFFF}"]),
            3 => text(12, nul),
        ],
        escape(),
    )
        .prop_map(|(value, escape)| Text {
            value,
            escape,
            lone: false,
        })
        .boxed()
}

/// Keeps the first member of each key.
fn distinct(members: Vec<(Text, Json)>) -> Vec<(Text, Json)> {
    let mut seen = HashSet::new();
    members
        .into_iter()
        .filter(|(key, _)| seen.insert(key.value.clone()))
        .collect()
}

/// A scalar; `exact` keeps to what the service can store and give back.
fn scalar(exact: bool) -> BoxedStrategy<Json> {
    let (number, text) = if exact {
        (exact_number(), text(200, false))
    } else {
        (any_number(), text(200, true))
    };
    prop_oneof![
        1 => Just(Json::Null),
        1 => any::<bool>().prop_map(Json::Bool),
        2 => number,
        3 => string(text),
    ]
    .boxed()
}

/// A small free-form tree; when `exact`, objects never repeat a key.
fn tree(exact: bool) -> BoxedStrategy<Json> {
    scalar(exact)
        .prop_recursive(4, 40, 5, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Json::Arr),
                proptest::collection::vec((key(!exact), inner), 0..5).prop_map(move |members| {
                    Json::Obj(if exact { distinct(members) } else { members })
                }),
            ]
        })
        .boxed()
}

/// One branch `levels` containers deep (objects or arrays), ending in a scalar.
fn chain(levels: std::ops::RangeInclusive<usize>, exact: bool) -> BoxedStrategy<Json> {
    (
        proptest::collection::vec((any::<bool>(), key(!exact)), levels),
        scalar(exact),
    )
        .prop_map(|(levels, leaf)| {
            levels.into_iter().rev().fold(leaf, |inner, (array, key)| {
                if array {
                    Json::Arr(vec![inner])
                } else {
                    Json::Obj(vec![(key, inner)])
                }
            })
        })
        .boxed()
}

/// A long string value: up to 60k characters (the limit is 64 KiB as compact JSON).
fn long_string(max: usize, nul: bool) -> BoxedStrategy<Json> {
    let ch = if nul { any_char() } else { storable_char() };
    string(
        (proptest::collection::vec(ch, 1..4), 0..=max)
            .prop_map(|(pattern, len)| repeat_to(&pattern, len))
            .boxed(),
    )
}

/// Free-form JSON a task may hold: an object at most 32 levels deep (31 below it) and, mostly,
/// under 64 KiB.
fn params_valid() -> BoxedStrategy<Json> {
    proptest::collection::vec(
        (
            key(false),
            prop_oneof![
                6 => tree(true),
                2 => chain(1..=31, true),
                1 => long_string(60_000, false),
            ],
        ),
        0..4,
    )
    .prop_map(|members| Json::Obj(distinct(members)))
    .boxed()
}

/// Free-form JSON that should be refused or is borderline: not an object, U+0000, repeated
/// keys, hard numbers, nesting up to past the parser's limit (128), over 64 KiB.
fn params_hostile() -> BoxedStrategy<Json> {
    prop_oneof![
        2 => tree(false),
        2 => proptest::collection::vec((key(true), tree(false)), 1..4).prop_map(Json::Obj),
        3 => (key(false), chain(20..=135, true)).prop_map(|(key, deep)| Json::Obj(vec![(key, deep)])),
        1 => (key(false), chain(1..=135, false)).prop_map(|(key, deep)| Json::Obj(vec![(key, deep)])),
        2 => (key(false), long_string(70_000, false)).prop_map(|(key, long)| Json::Obj(vec![(key, long)])),
        4 => proptest::collection::vec((key(false), any_number()), 1..4)
            .prop_map(|members| Json::Obj(distinct(members))),
        3 => (key(false), scalar(true), tree(true), scalar(true)).prop_map(|(key, first, other, last)| {
            Json::Obj(vec![(key.clone(), first), (Text::plain("other"), other), (key, last)])
        }),
    ]
    .boxed()
}

/// Not a string: a number, a boolean, an array or an object.
fn non_string() -> BoxedStrategy<Json> {
    prop_oneof![
        2 => any_number(),
        1 => any::<bool>().prop_map(Json::Bool),
        1 => proptest::collection::vec(scalar(false), 0..3).prop_map(Json::Arr),
        1 => tree(false),
    ]
    .boxed()
}

/// What a string field of at most `max` characters should refuse, or may take: any
/// characters (U+0000 included), over-long, blank, a lone surrogate, not a string, and the
/// field's own near misses (`extra`).
fn hostile_string(max: usize, extra: &[&str]) -> BoxedStrategy<Json> {
    let with_nul = (text(40, false), any::<Index>())
        .prop_map(|(value, at)| {
            let mut chars: Vec<char> = value.chars().collect();
            chars.insert(at.index(chars.len() + 1), '\0');
            chars.into_iter().collect::<String>()
        })
        .boxed();
    let lone = (text(10, false), escape())
        .prop_map(|(value, escape)| {
            Json::Str(Text {
                value,
                escape,
                lone: true,
            })
        })
        .boxed();
    let mut arms: Vec<(u32, BoxedStrategy<Json>)> = vec![
        (3, string(text(40, true))),
        (2, string(with_nul)),
        (2, string(overlong(max))),
        (1, lone),
        (
            1,
            string(one_of(&["", " ", "\t\n", "\u{3000}", "\u{feff}"])),
        ),
        (2, non_string()),
    ];
    if !extra.is_empty() {
        arms.push((3, string(one_of(extra))));
    }
    Union::new_weighted(arms).boxed()
}

/// A random UUID, in its usual spelling.
fn uuid() -> BoxedStrategy<String> {
    any::<u128>()
        .prop_map(|n| uuid::Uuid::from_u128(n).to_string())
        .boxed()
}

/// Other spellings of `ids` that UUID parsers take (upper case, no hyphens, braces, URN).
fn respelled(ids: &[String]) -> BoxedStrategy<String> {
    (owned(ids), 0u8..4)
        .prop_map(|(id, how)| match how {
            0 => id.to_uppercase(),
            1 => id.replace('-', ""),
            2 => format!("{{{id}}}"),
            _ => format!("urn:uuid:{id}"),
        })
        .boxed()
}

fn hostile_uuid() -> BoxedStrategy<Json> {
    prop_oneof![
        2 => string(uuid()),
        2 => hostile_string(40, &["00000000-0000-0000-0000-000000000000"]),
    ]
    .boxed()
}

/// One field of a body: what it takes and what it should refuse.
struct FieldSpec {
    name: &'static str,
    required: bool,
    valid: BoxedStrategy<Json>,
    hostile: BoxedStrategy<Json>,
}

fn field(
    name: &'static str,
    required: bool,
    valid: BoxedStrategy<Json>,
    hostile: BoxedStrategy<Json>,
) -> FieldSpec {
    FieldSpec {
        name,
        required,
        valid,
        hostile,
    }
}

/// A body for `fields`. Three in ten are clean (each field valid or left out), so that a good
/// share is accepted and read back; five in ten are clean but for one thing (a hostile, null
/// or missing field, a repeated or unknown key, a cut, not an object), so that each defence
/// is tried on its own; the rest mix all of these.
fn body(fields: Vec<FieldSpec>) -> BoxedStrategy<Body> {
    let required: Vec<bool> = fields.iter().map(|f| f.required).collect();
    let names: Vec<&'static str> = fields.iter().map(|f| f.name).collect();
    let picks: Vec<_> = fields
        .into_iter()
        .map(|f| (0u8..10, f.valid, f.hostile, escape()))
        .collect();
    let unknown = proptest::collection::vec((key(true), tree(false)), 1..3);
    let repeat = (any::<bool>(), scalar(false));
    (
        (0u8..10, 0u8..10, any::<Index>()),
        picks,
        (unknown, repeat),
        (any::<usize>(), tree(false), any::<bool>()),
    )
        .prop_map(
            move |((mode, kind, which), picks, (unknown, repeat), (cut, other, pretty))| {
                // Mode 0..=2 clean, 3..=7 one thing wrong (`kind`, at field `which`), else
                // anything goes.
                let chaos = mode >= 8;
                let odd_one =
                    (mode >= 3 && !chaos && !picks.is_empty()).then(|| which.index(picks.len()));
                let mut members = Vec::new();
                for (i, (roll, valid, hostile, escape)) in picks.into_iter().enumerate() {
                    let value = match (chaos, odd_one == Some(i), kind, roll) {
                        (false, true, 0..=3, _) => Some(hostile),
                        (false, true, 4, _) => Some(Json::Null),
                        (false, true, 5, _) => None,
                        (false, _, _, 0..=1) if !required[i] => None,
                        (false, _, _, _) | (true, _, _, 0..=4) => Some(valid),
                        (true, _, _, 5) => None,
                        (true, _, _, 6) => Some(Json::Null),
                        (true, _, _, _) => Some(hostile),
                    };
                    if let Some(value) = value {
                        let key = Text {
                            value: names[i].to_owned(),
                            escape,
                            lone: false,
                        };
                        members.push((key, value));
                    }
                }
                let (repeat_key, add_unknown, cut_short, not_an_object) = match (mode, kind) {
                    (0..=2, _) => (false, false, false, false),
                    (3..=7, 6) => (true, false, false, false),
                    // A body without fields has only these to go wrong.
                    (3..=7, 7) | (3..=7, 0..=5) if odd_one.is_none() => (false, true, false, false),
                    (3..=7, 7) => (false, true, false, false),
                    (3..=7, 8) => (false, false, true, false),
                    (3..=7, 9) => (false, false, false, true),
                    (3..=7, _) => (false, false, false, false),
                    _ => (kind < 3, kind % 3 == 0, kind == 9, kind == 8),
                };
                if repeat_key && !members.is_empty() {
                    let (identical, other_value) = repeat;
                    let (key, value) = members[which.index(members.len())].clone();
                    members.push((key, if identical { value } else { other_value }));
                }
                if add_unknown {
                    members.extend(unknown);
                }
                Body {
                    value: if not_an_object {
                        other
                    } else {
                        Json::Obj(members)
                    },
                    pretty,
                    cut: cut_short.then_some(cut),
                }
            },
        )
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// The endpoints and their cases.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    CreateTask,
    UpdateTask,
    RunTask,
    CreateProject,
    UpdateProject,
    CreateAgent,
    UpdateAgent,
    ReportActivity,
    Register,
    Login,
    UpdateProfile,
    ChangePassword,
    UpdateUser,
}

impl Endpoint {
    const ALL: [Endpoint; 13] = [
        Endpoint::CreateTask,
        Endpoint::UpdateTask,
        Endpoint::RunTask,
        Endpoint::CreateProject,
        Endpoint::UpdateProject,
        Endpoint::CreateAgent,
        Endpoint::UpdateAgent,
        Endpoint::ReportActivity,
        Endpoint::Register,
        Endpoint::Login,
        Endpoint::UpdateProfile,
        Endpoint::ChangePassword,
        Endpoint::UpdateUser,
    ];
}

/// One generated request: its body and which existing resource it targets.
#[derive(Clone)]
struct Case {
    body: Body,
    target: Index,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.body.text();
        write!(f, "body of {} bytes: {:?}", text.len(), clip(&text, 1500))
    }
}

/// Crons that fire at most a few times a year, so that the scheduler leaves the tasks alone
/// while the test compares them.
const RARE_CRONS: &[&str] = &[
    "0 0 1 1 *",
    "30 4 29 2 *",
    "0 12 25 12 *",
    "59 23 31 12 *",
    "*/15 3 2 3 *",
    "0,30 6 15 6 *",
];
const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/Argentina/Buenos_Aires",
    "Etc/GMT+12",
];
const AGENT_TYPES: &[&str] = &[
    "coder",
    "reviewer",
    "tester",
    "planner",
    "api-designer",
    "ml-developer",
    "hierarchical-coordinator",
];
const AGENT_STATUSES: &[&str] = &["active", "idle", "busy", "offline", "error"];
const RUN_STATUSES: &[&str] = &["running", "success", "failed", "timeout", "cancelled"];
const NAME_CHARS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";

fn name_chars(len: std::ops::RangeInclusive<usize>) -> BoxedStrategy<String> {
    proptest::collection::vec(select(NAME_CHARS.chars().collect::<Vec<_>>()), len)
        .prop_map(|chars| chars.into_iter().collect::<String>())
        .boxed()
}

fn cron() -> BoxedStrategy<String> {
    (
        one_of(RARE_CRONS),
        one_of(&[" ", " ", "  ", "\t", " \u{3000}"]),
    )
        .prop_map(|(cron, gap)| cron.split(' ').collect::<Vec<_>>().join(&gap))
        .boxed()
}

/// A name that is not blank once trimmed (mostly), of any characters but U+0000.
fn display_name(max: usize) -> BoxedStrategy<String> {
    padded(
        text(max - 2, false)
            .prop_map(|name| {
                if name.trim().is_empty() {
                    format!("n{name}")
                } else {
                    name
                }
            })
            .boxed(),
    )
}

fn email() -> BoxedStrategy<String> {
    let local = proptest::collection::vec(storable_char(), 1..20).prop_map(|chars| {
        chars
            .into_iter()
            .map(|c| {
                if c.is_whitespace() || c == '@' {
                    'x'
                } else {
                    c
                }
            })
            .collect::<String>()
    });
    padded(
        (
            local,
            name_chars(1..=10),
            one_of(&["com", "org", "example"]),
        )
            .prop_map(|(local, domain, tld)| format!("{local}@{}.{tld}", domain.replace('_', "")))
            .boxed(),
    )
}

/// A password the policy takes: any characters but U+0000, with an upper- and a lower-case
/// letter and a digit.
fn password() -> BoxedStrategy<String> {
    text(100, false)
        .prop_map(|chars| format!("{chars}Aa1"))
        .prop_map(|p| {
            if p.chars().count() < 8 {
                format!("{p}xyzwv")
            } else {
                p
            }
        })
        .boxed()
}

fn avatar_url() -> BoxedStrategy<String> {
    let path = text(200, false).prop_map(|path| {
        path.chars()
            .map(|c| {
                if c.is_whitespace() || c == '\u{feff}' {
                    '_'
                } else {
                    c
                }
            })
            .collect::<String>()
    });
    (one_of(&["http", "https"]), name_chars(1..=20), path)
        .prop_map(|(scheme, host, path)| format!("{scheme}://{host}.example/{path}"))
        .boxed()
}

fn capabilities() -> BoxedStrategy<Json> {
    proptest::collection::vec(
        string(
            text(100, false)
                .prop_map(|c| {
                    let c = c.replace(',', ";");
                    if c.is_empty() { "lint".to_owned() } else { c }
                })
                .boxed(),
        ),
        0..5,
    )
    .prop_map(Json::Arr)
    .boxed()
}

fn hostile_capabilities() -> BoxedStrategy<Json> {
    prop_oneof![
        2 => proptest::collection::vec(hostile_string(100, &["a,b", ""]), 1..4).prop_map(Json::Arr),
        1 => Just(Json::Arr(vec![Json::str("x"); 101])),
        2 => non_string(),
        1 => hostile_string(100, &["lint"]),
    ]
    .boxed()
}

impl Endpoint {
    fn strategy(self, ctx: &Ctx) -> BoxedStrategy<Case> {
        let fields = match self {
            Endpoint::CreateTask | Endpoint::UpdateTask => {
                let create = self == Endpoint::CreateTask;
                let mut fields = Vec::new();
                if create {
                    fields.push(field(
                        "skill_name",
                        true,
                        string(name_chars(1..=40)),
                        hostile_string(255, &["a b", "lint!", "ünïcode"]),
                    ));
                }
                fields.extend([
                    field(
                        "schedule_cron",
                        create,
                        string(cron()),
                        hostile_string(255, &["* * * *", "61 * * * *", "0 0 30 2 *", "@daily"]),
                    ),
                    field(
                        "timezone",
                        false,
                        string(padded(one_of(ZONES))),
                        hostile_string(64, &["utc", "Mars/Olympus", "Europe/Berlin\u{0}"]),
                    ),
                    field("params", false, params_valid(), params_hostile()),
                    field(
                        "status",
                        false,
                        string(one_of(&["pending", "disabled", "completed", "failed"])),
                        hostile_string(64, &["running", "deleted", "PENDING", " pending"]),
                    ),
                    field(
                        "project_id",
                        false,
                        string(owned(&ctx.projects)),
                        prop_oneof![
                            2 => string(owned(std::slice::from_ref(&ctx.foreign_project))),
                            1 => string(respelled(&ctx.projects)),
                            3 => hostile_uuid(),
                        ]
                        .boxed(),
                    ),
                ]);
                fields
            }
            Endpoint::RunTask => Vec::new(),
            Endpoint::CreateProject | Endpoint::UpdateProject => {
                let create = self == Endpoint::CreateProject;
                let mut fields = vec![
                    field(
                        "name",
                        create,
                        string(display_name(120)),
                        hostile_string(255, &[" ", "\u{3000}\u{2028}"]),
                    ),
                    field(
                        "description",
                        false,
                        string(text(2000, false)),
                        hostile_string(2000, &[]),
                    ),
                ];
                if !create {
                    fields.push(field(
                        "status",
                        false,
                        string(one_of(&["active", "archived"])),
                        hostile_string(64, &["deleted", "Active"]),
                    ));
                }
                fields
            }
            Endpoint::CreateAgent | Endpoint::UpdateAgent => {
                let create = self == Endpoint::CreateAgent;
                vec![
                    field(
                        "name",
                        create,
                        string(display_name(120)),
                        hostile_string(255, &[" ", "gen worker"]),
                    ),
                    field(
                        "type",
                        create,
                        string(one_of(AGENT_TYPES)),
                        hostile_string(64, &["Coder", "robot"]),
                    ),
                    field(
                        "capabilities",
                        false,
                        capabilities(),
                        hostile_capabilities(),
                    ),
                    field(
                        "status",
                        false,
                        string(one_of(AGENT_STATUSES)),
                        hostile_string(64, &["dead", "IDLE"]),
                    ),
                ]
            }
            Endpoint::ReportActivity => vec![
                field(
                    "agent_id",
                    true,
                    string(owned(std::slice::from_ref(&ctx.worker))),
                    hostile_uuid(),
                ),
                field(
                    "task_id",
                    true,
                    string(owned(&ctx.runs)),
                    prop_oneof![1 => string(respelled(&ctx.runs)), 2 => hostile_uuid()].boxed(),
                ),
                field("execution_id", false, string(uuid()), hostile_uuid()),
                field(
                    "status",
                    true,
                    string(one_of(RUN_STATUSES)),
                    hostile_string(64, &["pending", "Success"]),
                ),
                field(
                    "output",
                    false,
                    string(text(65_536, false)),
                    hostile_string(65_536, &[]),
                ),
                field(
                    "error",
                    false,
                    string(text(65_536, false)),
                    hostile_string(65_536, &[]),
                ),
                field(
                    "duration_ms",
                    false,
                    prop_oneof![
                        (0i64..=i64::MAX).prop_map(|n| Json::Num(n.to_string())),
                        (0u32..100_000).prop_map(|n| Json::Num(n.to_string())),
                    ]
                    .boxed(),
                    prop_oneof![
                        3 => any_number(),
                        1 => string(one_of(&["12"])),
                        1 => Just(Json::Num("-1".to_owned())),
                    ]
                    .boxed(),
                ),
            ],
            Endpoint::Register => vec![
                field(
                    "username",
                    true,
                    string(name_chars(8..=50)),
                    hostile_string(50, &["ab", "with space", "gen-owner", "ünï"]),
                ),
                field(
                    "email",
                    true,
                    string(email()),
                    hostile_string(254, &["a@b", "no-at.example", "a b@c.example"]),
                ),
                field(
                    "password",
                    true,
                    string(password()),
                    hostile_string(128, &["short1A", "alllowercase1", "NoDigitsHere"]),
                ),
                field(
                    "full_name",
                    false,
                    string(text(100, false)),
                    hostile_string(100, &[]),
                ),
            ],
            Endpoint::Login => {
                let usernames: Vec<String> = ctx.logins.iter().map(|(u, _)| u.clone()).collect();
                let passwords: Vec<String> = ctx.logins.iter().map(|(_, p)| p.clone()).collect();
                vec![
                    field(
                        "username",
                        true,
                        string(owned(&usernames)),
                        hostile_string(50, &["gen-owner"]),
                    ),
                    field(
                        "password",
                        true,
                        string(owned(&passwords)),
                        hostile_string(128, &[PASSWORD]),
                    ),
                ]
            }
            Endpoint::UpdateProfile => vec![
                field(
                    "full_name",
                    false,
                    string(text(100, false)),
                    hostile_string(100, &[]),
                ),
                field(
                    "bio",
                    false,
                    string(text(500, false)),
                    hostile_string(500, &[]),
                ),
                field(
                    "avatar_url",
                    false,
                    string(avatar_url()),
                    hostile_string(
                        500,
                        &[
                            "javascript:alert(1)",
                            "ftp://x.example/a",
                            "https://",
                            "https://a.example/ b",
                            "data:text/html,x",
                        ],
                    ),
                ),
            ],
            Endpoint::ChangePassword => vec![
                field(
                    "current_password",
                    true,
                    string(one_of(&[PASSWORD])),
                    hostile_string(128, &["Sup3rSecret", "sup3rsecret!"]),
                ),
                field(
                    "new_password",
                    true,
                    string(password()),
                    hostile_string(128, &["short1A", "alllowercase1", "NoDigitsHere"]),
                ),
            ],
            Endpoint::UpdateUser => vec![
                field(
                    "role",
                    false,
                    string(one_of(&["admin", "auditor", "agent", "user"])),
                    hostile_string(64, &["Admin", "root", " user"]),
                ),
                field(
                    "is_active",
                    false,
                    any::<bool>().prop_map(Json::Bool).boxed(),
                    prop_oneof![
                        string(one_of(&["true", "false", "yes"])),
                        one_of(&["0", "1", "1e400"]).prop_map(Json::Num),
                        non_string(),
                    ]
                    .boxed(),
                ),
            ],
        };
        (body(fields), any::<Index>())
            .prop_map(|(body, target)| Case { body, target })
            .boxed()
    }
}

// ---------------------------------------------------------------------------------------------
// The service: what exists before the cases run, and how a case is sent and judged.
// ---------------------------------------------------------------------------------------------

/// The users and resources the cases write to.
struct Ctx {
    admin: TestUser,
    /// An agent service account: it reports activity.
    agent: TestUser,
    /// Owns the projects and tasks.
    owner: TestUser,
    /// Whose profile the cases change.
    profile: TestUser,
    projects: Vec<String>,
    /// A project of `profile`'s, which `owner` may not use.
    foreign_project: String,
    /// Tasks the updates change.
    tasks: Vec<String>,
    /// Tasks that are run and reported on.
    runs: Vec<String>,
    /// Agents the updates change.
    agents: Vec<String>,
    /// The agent that reports activity.
    worker: String,
    /// Accounts to log in to, with passwords of unusual characters.
    logins: Vec<(String, String)>,
    /// Changes their own password.
    changer: TestUser,
    /// `changer`'s password now.
    changer_password: RefCell<String>,
    /// Accounts the admin changes.
    subjects: Vec<String>,
}

async fn created(app: &TestApp, token: &str, path: &str, body: Value) -> String {
    let answer = app.post(path, token, body).await;
    assert_eq!(
        answer.status,
        StatusCode::CREATED,
        "{path}: {}",
        answer.body
    );
    id_of(&answer.body)
}

impl Ctx {
    async fn new(app: &TestApp) -> Ctx {
        let admin = app.user_with_role("gen-admin", Role::Admin).await;
        let agent = app.user_with_role("gen-agent", Role::Agent).await;
        let owner = app.user("gen-owner").await;
        let profile = app.user("gen-profile").await;
        let mut projects = Vec::new();
        for i in 0..4 {
            let body = json!({"name": format!("project {i}")});
            projects.push(created(app, &owner.token, "/api/v1/projects", body).await);
        }
        let foreign_project = created(
            app,
            &profile.token,
            "/api/v1/projects",
            json!({"name": "someone else's"}),
        )
        .await;
        let task =
            |i: usize| json!({"skill_name": format!("skill-{i}"), "schedule_cron": RARE_CRONS[0]});
        let (mut tasks, mut runs) = (Vec::new(), Vec::new());
        for i in 0..4 {
            tasks.push(created(app, &owner.token, "/api/v1/tasks", task(i)).await);
        }
        for i in 0..6 {
            runs.push(created(app, &owner.token, "/api/v1/tasks", task(10 + i)).await);
        }
        let mut agents = Vec::new();
        for i in 0..4 {
            let body = json!({"name": format!("gen agent {i}"), "type": "coder"});
            agents.push(created(app, &admin.token, "/api/v1/agents", body).await);
        }
        let worker = created(
            app,
            &admin.token,
            "/api/v1/agents",
            json!({"name": "gen worker", "type": "tester", "capabilities": ["*"]}),
        )
        .await;
        let logins = vec![
            ("gen-login-1".to_owned(), "Pässwörd1😀".to_owned()),
            (
                "gen-login-2".to_owned(),
                "Ab1\u{7}\u{FFFE}\u{FDD0}\u{10FFFF}xyz".to_owned(),
            ),
            ("gen-login-3".to_owned(), "Zz9 \u{1F}\t\"\\/x".to_owned()),
        ];
        for (username, password) in &logins {
            let body = json!({"username": username, "email": format!("{username}@example.com"), "password": password});
            let answer = app
                .call(Method::POST, "/api/v1/auth/register", None, Some(body))
                .await;
            assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        }
        let changer = app.user("gen-changer").await;
        let mut subjects = Vec::new();
        for i in 0..3 {
            subjects.push(app.user(&format!("gen-subject-{i}")).await.id);
        }
        Ctx {
            changer,
            changer_password: RefCell::new(PASSWORD.to_owned()),
            subjects,
            admin,
            agent,
            owner,
            profile,
            projects,
            foreign_project,
            tasks,
            runs,
            agents,
            worker,
            logins,
        }
    }
}

/// A whole answer: its status, text and JSON (read at any depth).
struct Answer {
    status: StatusCode,
    text: String,
    json: Option<Value>,
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> Answer {
    let mut request = app.request(method, path, token);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let response = request.send().await.expect("the service should answer");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let json = sparc_store::json::parse(&text).ok();
    Answer { status, text, json }
}

/// The contract's error body: `detail` is a message or a list of `{loc, msg, type}`.
fn error_shaped(body: &Value) -> bool {
    match body.get("detail") {
        Some(Value::String(_)) => true,
        Some(Value::Array(errors)) => errors.iter().all(|e| {
            e["loc"]
                .as_array()
                .is_some_and(|loc| loc.iter().all(Value::is_string))
                && e["msg"].is_string()
                && e["type"].is_string()
        }),
        _ => false,
    }
}

/// A 2xx, or a 4xx in the contract's error shape.
fn within_contract(what: &str, answer: &Answer) -> Result<(), String> {
    if answer.status.is_success() {
        return Ok(());
    }
    if answer.status.is_client_error() {
        return match &answer.json {
            Some(body) if error_shaped(body) => Ok(()),
            _ => Err(format!(
                "{what}: {} without the contract's error shape: {}",
                answer.status,
                clip(&answer.text, 300)
            )),
        };
    }
    Err(format!(
        "{what}: answered {}: {}",
        answer.status,
        clip(&answer.text, 300)
    ))
}

/// `GET path`, which must answer 200 with JSON.
async fn read(app: &TestApp, path: &str, token: &str) -> Result<Value, String> {
    let answer = send(app, Method::GET, path, Some(token), None).await;
    match answer.json {
        Some(body) if answer.status == StatusCode::OK => Ok(body),
        _ => Err(format!(
            "GET {path}: {} {}",
            answer.status,
            clip(&answer.text, 300)
        )),
    }
}

/// Sends a request the test makes itself (not a generated one); it too must keep to the
/// contract.
async fn helper_call(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Result<Answer, String> {
    let answer = send(app, Method::POST, path, token, Some(body.to_string())).await;
    within_contract(&format!("POST {path} {body}"), &answer)?;
    Ok(answer)
}

/// Whether `read` holds every member of `answer` (but `volatile`) unchanged.
fn agrees(what: &str, answer: &Value, read: &Value, volatile: &[&str]) -> Result<(), String> {
    let members = answer
        .as_object()
        .ok_or_else(|| format!("{what}: not an object: {}", clip_value(answer)))?;
    for (key, value) in members {
        if volatile.contains(&key.as_str()) {
            continue;
        }
        if read.get(key) != Some(value) {
            return Err(format!(
                "{what}: `{key}` was {} but reads back as {}",
                clip_value(value),
                read.get(key).map_or("nothing".to_owned(), clip_value)
            ));
        }
    }
    Ok(())
}

/// How the service normalises a field it keeps.
#[derive(Debug, Clone, Copy)]
enum Norm {
    /// Kept exactly.
    Exact,
    /// Surrounding white space removed (names, e-mail, time zone).
    Trim,
    /// A cron expression: fields joined by single spaces.
    Cron,
    /// A UUID, in its usual spelling.
    Uuid,
}

/// What a field holds when it is not sent (or sent as null, unless `null_is_value`).
#[derive(Clone)]
enum Absent {
    /// A 2xx without it is wrong.
    Required,
    /// This value.
    Default(Value),
    /// What it held before the request.
    Kept,
    /// Not checked.
    Unchecked,
}

/// A field to find in an accepted answer: sent as `sent`, answered as `got`.
struct Expect {
    sent: &'static str,
    got: &'static str,
    norm: Norm,
    absent: Absent,
    null_is_value: bool,
}

fn expect(sent: &'static str, norm: Norm, absent: Absent) -> Expect {
    Expect {
        sent,
        got: sent,
        norm,
        absent,
        null_is_value: false,
    }
}

fn normalised(norm: Norm, sent: &Json) -> Json {
    let Json::Str(text) = sent else {
        return sent.clone();
    };
    if text.lone {
        return sent.clone();
    }
    let value = match norm {
        Norm::Exact => return sent.clone(),
        Norm::Trim => text.value.trim().to_owned(),
        Norm::Cron => text.value.split_whitespace().collect::<Vec<_>>().join(" "),
        Norm::Uuid => match uuid::Uuid::parse_str(&text.value) {
            Ok(id) => id.to_string(),
            Err(_) => return sent.clone(),
        },
    };
    Json::Str(Text {
        value,
        ..text.clone()
    })
}

/// Checks an accepted answer against what was sent: each expected field holds the value sent
/// (every value, if its key was repeated), else what `absent` says.
fn holds_what_was_sent(
    what: &str,
    body: &Body,
    expects: &[Expect],
    got: &Value,
    before: Option<&Value>,
) -> Result<(), String> {
    for e in expects {
        let actual = got
            .get(e.got)
            .ok_or_else(|| format!("{what}: the answer has no `{}`", e.got))?;
        let absent = || -> Result<(), String> {
            let wanted = match &e.absent {
                Absent::Required => {
                    return Err(format!("{what}: accepted without a value for `{}`", e.sent));
                }
                Absent::Default(value) => value,
                Absent::Kept => before.and_then(|b| b.get(e.got)).unwrap_or(&Value::Null),
                Absent::Unchecked => return Ok(()),
            };
            if actual == wanted {
                Ok(())
            } else {
                Err(format!(
                    "{what}: `{}` not sent, should be {} but is {}",
                    e.sent,
                    clip_value(wanted),
                    clip_value(actual)
                ))
            }
        };
        let sent = body.sent(e.sent);
        if sent.is_empty() {
            absent()?;
        }
        for value in sent {
            if matches!(value, Json::Null) && !e.null_is_value {
                absent()?;
            } else if !same(&normalised(e.norm, value), actual) {
                return Err(format!(
                    "{what}: `{}` was sent as {} but the service holds {}",
                    e.sent,
                    clip(&value.text(), 300),
                    clip_value(actual)
                ));
            }
        }
    }
    Ok(())
}

/// Accepted and refused answers, per endpoint.
#[derive(Default)]
struct Tally {
    accepted: Cell<u32>,
    refused: Cell<u32>,
    /// The longest accepted body, in bytes.
    largest: Cell<usize>,
    /// The most deeply nested accepted body.
    deepest: Cell<usize>,
}

/// Members a read has that change without a write of the test's (a login's time).
const VOLATILE: &[&str] = &["last_login"];

/// Where a case goes: method, path and who sends it.
struct Request {
    method: Method,
    path: String,
    token: Option<String>,
}

impl Request {
    fn what(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// The id in the path (`/api/v1/tasks/{id}/run` gives the task's).
    fn id(&self) -> &str {
        self.path
            .trim_end_matches("/run")
            .rsplit('/')
            .next()
            .unwrap_or_default()
    }
}

fn request(endpoint: Endpoint, ctx: &Ctx, case: &Case) -> Request {
    let pick = |ids: &[String]| ids[case.target.index(ids.len())].clone();
    let (method, path, user) = match endpoint {
        Endpoint::CreateTask => (Method::POST, "/api/v1/tasks".to_owned(), Some(&ctx.owner)),
        Endpoint::UpdateTask => (
            Method::PUT,
            format!("/api/v1/tasks/{}", pick(&ctx.tasks)),
            Some(&ctx.owner),
        ),
        Endpoint::RunTask => (
            Method::POST,
            format!("/api/v1/tasks/{}/run", pick(&ctx.runs)),
            Some(&ctx.owner),
        ),
        Endpoint::CreateProject => (
            Method::POST,
            "/api/v1/projects".to_owned(),
            Some(&ctx.owner),
        ),
        Endpoint::UpdateProject => (
            Method::PUT,
            format!("/api/v1/projects/{}", pick(&ctx.projects)),
            Some(&ctx.owner),
        ),
        Endpoint::CreateAgent => (Method::POST, "/api/v1/agents".to_owned(), Some(&ctx.admin)),
        Endpoint::UpdateAgent => (
            Method::PUT,
            format!("/api/v1/agents/{}", pick(&ctx.agents)),
            Some(&ctx.admin),
        ),
        Endpoint::ReportActivity => (
            Method::POST,
            "/api/v1/agents/activity".to_owned(),
            Some(&ctx.agent),
        ),
        Endpoint::Register => (Method::POST, "/api/v1/auth/register".to_owned(), None),
        Endpoint::Login => (Method::POST, "/api/v1/auth/login".to_owned(), None),
        Endpoint::UpdateProfile => (
            Method::PUT,
            "/api/v1/auth/me".to_owned(),
            Some(&ctx.profile),
        ),
        Endpoint::ChangePassword => (
            Method::POST,
            "/api/v1/auth/change-password".to_owned(),
            Some(&ctx.changer),
        ),
        Endpoint::UpdateUser => (
            Method::PUT,
            format!("/api/v1/admin/users/{}", pick(&ctx.subjects)),
            Some(&ctx.admin),
        ),
    };
    Request {
        method,
        path,
        token: user.map(|u| u.token.clone()),
    }
}

/// The state of what an update changes, to compare with after it.
async fn state(
    app: &TestApp,
    ctx: &Ctx,
    endpoint: Endpoint,
    req: &Request,
) -> Result<Option<Value>, String> {
    let token = req.token.as_deref().unwrap_or_default();
    Ok(match endpoint {
        Endpoint::UpdateTask
        | Endpoint::UpdateProject
        | Endpoint::UpdateAgent
        | Endpoint::UpdateProfile => Some(read(app, &req.path, token).await?),
        Endpoint::UpdateUser => Some(account(app, ctx, req.id()).await?),
        _ => None,
    })
}

/// Account `id` as the admin's list shows it.
async fn account(app: &TestApp, ctx: &Ctx, id: &str) -> Result<Value, String> {
    for offset in (0..).step_by(100) {
        let path = format!("/api/v1/admin/users?limit=100&offset={offset}");
        let page = read(app, &path, &ctx.admin.token).await?;
        let users = page["users"].as_array().cloned().unwrap_or_default();
        if let Some(user) = users.iter().find(|u| u["id"] == id) {
            return Ok(user.clone());
        }
        if users.is_empty() {
            break;
        }
    }
    Err(format!(
        "account {id} is not listed by GET /api/v1/admin/users"
    ))
}

/// Gets the service ready for the case to be accepted: a run needs its task finished, a final
/// report needs a running execution (under the id it names, if any), a `running` report
/// starts a run when none is running and claims the running one otherwise (both are tried);
/// a password change starts from the known password.
async fn prepare(
    app: &TestApp,
    ctx: &Ctx,
    endpoint: Endpoint,
    req: &Request,
    case: &Case,
) -> Result<(), String> {
    let body = &case.body;
    let activity = "/api/v1/agents/activity";
    let report = |task: &str, status: &str, execution: Option<&str>| {
        let mut report = json!({"agent_id": ctx.worker, "task_id": task, "status": status});
        if let Some(execution) = execution.filter(|e| uuid::Uuid::parse_str(e).is_ok()) {
            report["execution_id"] = json!(execution);
        }
        report
    };
    match endpoint {
        Endpoint::RunTask => {
            let finish = report(req.id(), "success", None);
            helper_call(app, activity, Some(&ctx.agent.token), finish).await?;
        }
        Endpoint::ReportActivity => {
            let Some(task) = body
                .sent_str("task_id")
                .filter(|t| ctx.runs.iter().any(|r| r == t))
            else {
                return Ok(());
            };
            let running = body.sent_str("status") == Some("running");
            if !running || case.target.index(2) == 0 {
                let finish = report(task, "success", None);
                helper_call(app, activity, Some(&ctx.agent.token), finish).await?;
            }
            if !running {
                let start = report(task, "running", body.sent_str("execution_id"));
                helper_call(app, activity, Some(&ctx.agent.token), start).await?;
            }
        }
        Endpoint::ChangePassword => {
            let current = ctx.changer_password.borrow().clone();
            if current != PASSWORD {
                let back = json!({"current_password": current, "new_password": PASSWORD});
                let answer = helper_call(app, &req.path, Some(&ctx.changer.token), back).await?;
                if answer.status != StatusCode::OK {
                    return Err(format!(
                        "changing the password back from {current:?}: {} {}",
                        answer.status,
                        clip(&answer.text, 300)
                    ));
                }
                *ctx.changer_password.borrow_mut() = PASSWORD.to_owned();
            }
        }
        _ => {}
    }
    Ok(())
}

/// Sends one generated request and judges the answer.
async fn check(
    app: &TestApp,
    ctx: &Ctx,
    endpoint: Endpoint,
    case: &Case,
    tally: &Tally,
) -> Result<(), String> {
    let req = request(endpoint, ctx, case);
    let what = req.what();
    let body = &case.body;
    prepare(app, ctx, endpoint, &req, case).await?;
    let before = state(app, ctx, endpoint, &req).await?;
    let answer = send(
        app,
        req.method.clone(),
        &req.path,
        req.token.as_deref(),
        Some(body.text()),
    )
    .await;
    within_contract(&what, &answer)?;

    if !answer.status.is_success() {
        tally.refused.set(tally.refused.get() + 1);
        if let Some(before) = &before {
            let after = state(app, ctx, endpoint, &req).await?.unwrap_or_default();
            agrees(&format!("{what} refused, yet"), before, &after, VOLATILE)?;
        }
        return refused(ctx, endpoint, body, &answer, &what);
    }
    tally.accepted.set(tally.accepted.get() + 1);
    tally
        .largest
        .set(tally.largest.get().max(body.text().len()));
    tally
        .deepest
        .set(tally.deepest.get().max(body.value.depth()));

    // A run takes no body, so what it is sent does not matter.
    if endpoint != Endpoint::RunTask {
        if body.cut.is_some() {
            return Err(format!("{what}: accepted a body cut short"));
        }
        if !matches!(body.value, Json::Obj(_)) {
            return Err(format!("{what}: accepted a body that is not an object"));
        }
        if body.value.ambiguous() {
            return Err(format!(
                "{what}: accepted a key repeated with different values (one of them was dropped)"
            ));
        }
    }
    let got = answer
        .json
        .ok_or_else(|| format!("{what}: a {} without a JSON body", answer.status))?;
    accepted(app, ctx, endpoint, &req, body, &got, before.as_ref()).await
}

/// What a refusal must not be: of a correct login, or of a correct password change.
fn refused(
    ctx: &Ctx,
    endpoint: Endpoint,
    body: &Body,
    answer: &Answer,
    what: &str,
) -> Result<(), String> {
    let plain = matches!(&body.value, Json::Obj(m) if m.len() == 2) && body.cut.is_none();
    let correct = match endpoint {
        Endpoint::Login => ctx.logins.iter().any(|(u, p)| {
            body.sent_str("username") == Some(u.as_str())
                && body.sent_str("password") == Some(p.as_str())
        }),
        Endpoint::ChangePassword => body.sent_str("current_password") == Some(PASSWORD)
            && body.sent_str("new_password").is_some_and(|p| {
                matches!(&body.sent("new_password")[..], [Json::Str(t)] if !t.lone && t.value == p)
                    && password_ok(p)
            }),
        _ => false,
    };
    if plain && correct {
        return Err(format!(
            "{what}: refused a correct request: {} {}",
            answer.status,
            clip(&answer.text, 300)
        ));
    }
    Ok(())
}

/// The password policy: 8 to 128 characters, an upper- and a lower-case letter and a digit
/// (and, as everywhere, no U+0000).
fn password_ok(password: &str) -> bool {
    (8..=128).contains(&password.chars().count())
        && !password.contains('\0')
        && password.chars().any(char::is_uppercase)
        && password.chars().any(char::is_lowercase)
        && password.chars().any(|c| c.is_ascii_digit())
}

/// `Required` when creating, else `Kept`.
fn required_or_kept(create: bool) -> Absent {
    if create {
        Absent::Required
    } else {
        Absent::Kept
    }
}

/// `Default(value)` when creating, else `Kept`.
fn default_or_kept(create: bool, value: Value) -> Absent {
    if create {
        Absent::Default(value)
    } else {
        Absent::Kept
    }
}

/// Checks an accepted answer holds what was sent, and that reading it back gives the same.
async fn accepted(
    app: &TestApp,
    ctx: &Ctx,
    endpoint: Endpoint,
    req: &Request,
    body: &Body,
    got: &Value,
    before: Option<&Value>,
) -> Result<(), String> {
    let what = req.what();
    let create = matches!(
        endpoint,
        Endpoint::CreateTask | Endpoint::CreateProject | Endpoint::CreateAgent
    );
    match endpoint {
        Endpoint::CreateTask | Endpoint::UpdateTask => {
            let mut expects = vec![
                expect("schedule_cron", Norm::Cron, required_or_kept(create)),
                expect(
                    "timezone",
                    Norm::Trim,
                    default_or_kept(create, json!("UTC")),
                ),
                expect("params", Norm::Exact, default_or_kept(create, json!({}))),
                expect(
                    "status",
                    Norm::Exact,
                    default_or_kept(create, json!("pending")),
                ),
                Expect {
                    null_is_value: true,
                    ..expect(
                        "project_id",
                        Norm::Uuid,
                        default_or_kept(create, Value::Null),
                    )
                },
            ];
            if create {
                expects.push(expect("skill_name", Norm::Exact, Absent::Required));
            }
            holds_what_was_sent(&what, body, &expects, got, before)?;
            let path = format!("/api/v1/tasks/{}", id_of(got));
            let again = read(app, &path, &ctx.owner.token).await?;
            agrees(&format!("GET {path}"), got, &again, &[])?;
        }
        Endpoint::RunTask => {
            if got["task_id"] != req.id() || got["status"] != "running" {
                return Err(format!("{what}: answered {}", clip_value(got)));
            }
            let execution = execution(app, ctx, req.id(), &id_of(got)).await?;
            agrees("the run's execution", got, &execution, &[])?;
        }
        Endpoint::CreateProject | Endpoint::UpdateProject => {
            let expects = [
                expect("name", Norm::Trim, required_or_kept(create)),
                expect(
                    "description",
                    Norm::Exact,
                    default_or_kept(create, Value::Null),
                ),
                expect(
                    "status",
                    Norm::Exact,
                    default_or_kept(create, json!("active")),
                ),
            ];
            holds_what_was_sent(&what, body, &expects, got, before)?;
            let path = format!("/api/v1/projects/{}", id_of(got));
            let again = read(app, &path, &ctx.owner.token).await?;
            agrees(&format!("GET {path}"), got, &again, &[])?;
        }
        Endpoint::CreateAgent | Endpoint::UpdateAgent => {
            let expects = [
                expect("name", Norm::Trim, required_or_kept(create)),
                expect("type", Norm::Exact, required_or_kept(create)),
                expect(
                    "capabilities",
                    Norm::Exact,
                    default_or_kept(create, json!([])),
                ),
                expect(
                    "status",
                    Norm::Exact,
                    default_or_kept(create, json!("idle")),
                ),
            ];
            holds_what_was_sent(&what, body, &expects, got, before)?;
            let path = format!("/api/v1/agents/{}", id_of(got));
            let again = read(app, &path, &ctx.admin.token).await?;
            agrees(&format!("GET {path}"), got, &again, &[])?;
        }
        Endpoint::ReportActivity => {
            let expects = [
                expect("agent_id", Norm::Uuid, Absent::Required),
                expect("task_id", Norm::Uuid, Absent::Required),
                expect("execution_id", Norm::Uuid, Absent::Unchecked),
            ];
            holds_what_was_sent(&what, body, &expects, got, None)?;
            let task = got["task_id"].as_str().unwrap_or_default();
            let id = got["execution_id"].as_str().unwrap_or_default();
            let execution = execution(app, ctx, task, id).await?;
            let mut expects = vec![
                expect("status", Norm::Exact, Absent::Required),
                expect("agent_id", Norm::Uuid, Absent::Required),
            ];
            // A final report's texts and duration are the execution's.
            if body.sent_str("status") != Some("running") {
                let stored = |sent, got| Expect {
                    got,
                    ..expect(sent, Norm::Exact, Absent::Unchecked)
                };
                expects.extend([
                    stored("output", "output_text"),
                    stored("error", "error_text"),
                    stored("duration_ms", "duration_ms"),
                ]);
            }
            holds_what_was_sent("the reported execution", body, &expects, &execution, None)?;
        }
        Endpoint::Register => {
            let expects = [
                expect("username", Norm::Exact, Absent::Required),
                expect("email", Norm::Trim, Absent::Required),
                expect("full_name", Norm::Exact, Absent::Default(Value::Null)),
            ];
            holds_what_was_sent(&what, body, &expects, got, None)?;
            // The password reads back as the one that logs in.
            let username = body.sent_str("username").unwrap_or_default();
            let token = logs_in(app, username, body.sent_str("password").unwrap_or_default())
                .await?
                .ok_or_else(|| {
                    format!("{what}: registered, but the password sent does not log in")
                })?;
            let me = read(app, "/api/v1/auth/me", &token).await?;
            agrees("GET /api/v1/auth/me", got, &me, VOLATILE)?;
        }
        Endpoint::Login => {
            if got["user"]["username"].as_str() != body.sent_str("username") {
                return Err(format!(
                    "{what}: logged in as {} for {:?}",
                    clip_value(&got["user"]),
                    body.sent_str("username")
                ));
            }
        }
        Endpoint::UpdateProfile => {
            let expects = [
                expect("full_name", Norm::Exact, Absent::Kept),
                expect("bio", Norm::Exact, Absent::Kept),
                expect("avatar_url", Norm::Exact, Absent::Kept),
            ];
            holds_what_was_sent(&what, body, &expects, got, before)?;
            let again = read(app, "/api/v1/auth/me", &ctx.profile.token).await?;
            agrees("GET /api/v1/auth/me", got, &again, VOLATILE)?;
        }
        Endpoint::ChangePassword => {
            // The new password is the one that logs in now, the old one no longer.
            let new = body.sent_str("new_password").unwrap_or_default().to_owned();
            *ctx.changer_password.borrow_mut() = new.clone();
            let username = ctx.changer.username.as_str();
            if logs_in(app, username, &new).await?.is_none() {
                return Err(format!(
                    "{what}: changed, but the new password does not log in"
                ));
            }
            if new != PASSWORD && logs_in(app, username, PASSWORD).await?.is_some() {
                return Err(format!(
                    "{what}: changed, but the old password still logs in"
                ));
            }
        }
        Endpoint::UpdateUser => {
            let expects = [
                expect("role", Norm::Exact, Absent::Kept),
                expect("is_active", Norm::Exact, Absent::Kept),
            ];
            holds_what_was_sent(&what, body, &expects, got, before)?;
            let again = account(app, ctx, req.id()).await?;
            agrees("GET /api/v1/admin/users", got, &again, VOLATILE)?;
        }
    }
    Ok(())
}

/// Logs in; the access token, or `None` if the service says the credentials are wrong.
async fn logs_in(app: &TestApp, username: &str, password: &str) -> Result<Option<String>, String> {
    let credentials = json!({"username": username, "password": password});
    let login = helper_call(app, "/api/v1/auth/login", None, credentials).await?;
    Ok(login
        .json
        .and_then(|body| body["access_token"].as_str().map(str::to_owned)))
}

/// Execution `id` of task `task`, as its task's list shows it.
async fn execution(app: &TestApp, ctx: &Ctx, task: &str, id: &str) -> Result<Value, String> {
    let path = format!("/api/v1/tasks/{task}/executions?limit=100");
    let list = read(app, &path, &ctx.owner.token).await?;
    list["executions"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["id"] == id))
        .cloned()
        .ok_or_else(|| format!("execution {id} is not listed by GET {path}"))
}

/// Every consumer of the log has read all of it, is live and parked nothing; the chain
/// verifies.
async fn afterwards(app: &TestApp, admin: &TestUser) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let consumers = loop {
        let listed = read(app, "/api/v1/admin/projections", &admin.token).await?;
        let consumers = listed.as_array().cloned().unwrap_or_default();
        if !consumers.is_empty() && consumers.iter().all(|c| c["lag_events"] == 0) {
            break consumers;
        }
        if Instant::now() > deadline {
            return Err(format!("the consumers did not catch up: {listed}"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    for consumer in &consumers {
        if consumer["status"] != "live" || consumer["parked"] != 0 {
            return Err(format!(
                "a consumer is not live or parked events: {consumer}"
            ));
        }
    }
    let verified = read(app, "/api/v1/audit/verify", &admin.token).await?;
    if verified["ok"] != true {
        return Err(format!("the log does not verify: {verified}"));
    }
    Ok(())
}

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES);
    Config {
        cases,
        // Nothing written to the source tree; a failure prints its (shrunk) body.
        failure_persistence: None,
        // Each shrinking step is a round of requests: keep the search short.
        max_shrink_iters: 64,
        max_shrink_time: 30_000,
        ..Config::default()
    }
}

/// Runs every endpoint's cases on `backend`, then the afterwards-check; fails listing every
/// endpoint whose property failed.
fn generated_bodies(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    // The service is dropped inside the runtime, even when a check panics.
    let _entered = runtime.enter();
    // Generated logins fail often: without the per-account backoff, a correct login after them
    // is still answered (the backoff has tests of its own).
    let Some(app) = runtime.block_on(TestApp::spawn_with(backend, |settings| {
        settings.api.login_failures_before_backoff = 0;
    })) else {
        return;
    };
    let ctx = runtime.block_on(Ctx::new(&app));
    let started = Instant::now();
    let mut failures = Vec::new();
    for endpoint in Endpoint::ALL {
        let strategy = endpoint.strategy(&ctx);
        let tally = Tally::default();
        let mut runner = TestRunner::new(config());
        let outcome = runner.run(&strategy, |case| {
            runtime
                .block_on(check(&app, &ctx, endpoint, &case, &tally))
                .map_err(TestCaseError::fail)
        });
        eprintln!(
            "{backend:?} {endpoint:?}: {} accepted (up to {} bytes, {} levels deep), {} refused \
             ({:.1?} so far)",
            tally.accepted.get(),
            tally.largest.get(),
            tally.deepest.get(),
            tally.refused.get(),
            started.elapsed()
        );
        if let Err(error) = outcome {
            failures.push(format!("{endpoint:?}: {error}"));
        }
    }
    if let Err(error) = runtime.block_on(afterwards(&app, &ctx.admin)) {
        failures.push(format!("afterwards: {error}"));
    }
    runtime.block_on(app.stop());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn generated_bodies_on_postgres() {
    generated_bodies(Backend::Postgres);
}

#[test]
fn generated_bodies_on_sqlite() {
    generated_bodies(Backend::Sqlite);
}

// ---------------------------------------------------------------------------------------------
// The test's own instruments, checked without a service.
// ---------------------------------------------------------------------------------------------

/// What is generated as storable is JSON meaning exactly the value it was made from, however
/// it is escaped, spaced and nested; [`same`] says so.
#[test]
fn generated_text_is_the_json_it_stands_for() {
    let values = prop_oneof![tree(true), chain(1..=135, true), params_valid()];
    let mut runner = TestRunner::new(Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(values, any::<bool>()), |(value, pretty)| {
            let text = Body {
                value: value.clone(),
                pretty,
                cut: None,
            }
            .text();
            let parsed = sparc_store::json::parse(&text)
                .map_err(|e| TestCaseError::fail(format!("{e}: {}", clip(&text, 300))))?;
            prop_assert!(same(&value, &parsed), "{}", clip(&text, 300));
            Ok(())
        })
        .expect("the generator and the comparison agree");
}

/// A number is the same only if its decimal value is: a rounded one is caught.
#[test]
fn numbers_compare_by_exact_decimal_value() {
    let parsed = |text: &str| sparc_store::json::parse(text).expect("a number");
    for (sent, read) in [
        ("1E2", "100.0"),
        ("100.000", "100"),
        ("-0", "0"),
        ("0.1", "0.1"),
        ("18446744073709551615", "18446744073709551615"),
        ("5e-324", "5e-324"),
    ] {
        assert!(
            same(&Json::Num(sent.to_owned()), &parsed(read)),
            "{sent} {read}"
        );
    }
    for sent in [
        "123456789012345678901234567890",
        "0.1000000000000000000001",
        "9007199254740993.0",
        "2.0000000000000001",
    ] {
        // What a service that parsed it into a 64-bit float would give back.
        let read = parsed(sent);
        assert!(
            !same(&Json::Num(sent.to_owned()), &read),
            "{sent} read as {read}"
        );
    }
    let repeated = Json::Obj(vec![
        (Text::plain("a"), Json::Num("1".to_owned())),
        (Text::plain("a"), Json::Num("2".to_owned())),
    ]);
    assert!(repeated.ambiguous() && !same(&repeated, &json!({"a": 2})));
}
