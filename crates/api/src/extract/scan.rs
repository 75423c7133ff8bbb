//! One lexical pass over a JSON request body before serde reads it, refusing what serde would
//! accept but the service could not keep exactly:
//!
//! - a string or an object key holding U+0000 (PostgreSQL text and `jsonb` cannot store it);
//! - an integer beyond 64 bits (serde_json, without `arbitrary_precision`, would round it to a
//!   float), and a number whose nearest 64-bit float reads back as another decimal value
//!   (`0.30000000000000000001`, `1e400`);
//! - a key repeated in one object (serde_json would keep the last silently);
//! - nesting deeper than the limit (serde_json itself stops at 128 levels, with a syntax error).
//!
//! The pass keeps the path to the current value (keys as slices of the body, array indices) so
//! that a refusal names the field, and allocates only for keys written with escapes and for
//! objects with many keys. It stops at the first refusal. It is not the judge of syntax: on
//! anything malformed it gives up ([`Scan::Malformed`]) and the caller lets serde_json say what
//! is wrong, so malformed bodies keep their 400.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io;

use crate::error::FieldError;

/// What the pass found.
#[derive(Debug)]
pub(crate) enum Scan {
    /// Nothing to refuse (the body may still not fit the request type).
    Clean,
    /// Not JSON; serde_json gives the precise error.
    Malformed,
    /// The first value the service must refuse, as a 422 field error.
    Refused(FieldError),
}

/// Scans `body`, allowing `max_depth` nested containers (the body itself counts as one).
pub(crate) fn scan(body: &[u8], max_depth: usize) -> Scan {
    let mut scanner = Scanner {
        bytes: body,
        pos: 0,
        stack: Vec::new(),
        keys: Vec::new(),
        max_depth,
    };
    match scanner.run() {
        Ok(()) => Scan::Clean,
        Err(Stop::Malformed) => Scan::Malformed,
        Err(Stop::Refused(error)) => Scan::Refused(error),
    }
}

enum Stop {
    Malformed,
    Refused(FieldError),
}

type Step<T = ()> = Result<T, Stop>;

/// An object key as written between its quotes.
#[derive(Debug, Clone, Copy, Default)]
struct Key<'a> {
    raw: &'a [u8],
    /// Written with a backslash escape: compare and show it decoded.
    escaped: bool,
}

impl<'a> Key<'a> {
    fn decoded(self) -> Cow<'a, [u8]> {
        if self.escaped {
            Cow::Owned(unescape(self.raw))
        } else {
            Cow::Borrowed(self.raw)
        }
    }

    fn same_as(self, other: Key<'_>) -> bool {
        if self.escaped || other.escaped {
            self.decoded() == other.decoded()
        } else {
            self.raw == other.raw
        }
    }
}

/// An open object or array.
struct Frame<'a> {
    object: bool,
    /// Array: the index of the current element.
    index: usize,
    /// Object: the key of the current member.
    key: Key<'a>,
    /// Object: where its keys start in [`Scanner::keys`].
    keys_start: usize,
    /// Object with many keys: every key so far, decoded (comparing each new key with all the
    /// others would be quadratic).
    seen: Option<HashSet<Cow<'a, [u8]>>>,
}

/// Keys an object may have before duplicates are found by hashing instead of comparing.
const LINEAR_KEYS: usize = 16;

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Frame<'a>>,
    /// The keys of the open objects, innermost last.
    keys: Vec<Key<'a>>,
    max_depth: usize,
}

impl<'a> Scanner<'a> {
    fn run(&mut self) -> Step {
        'value: loop {
            self.skip_whitespace();
            match self.peek() {
                Some(b'{') => {
                    self.open(true)?;
                    self.skip_whitespace();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                        self.close();
                    } else {
                        self.member_key()?;
                        continue 'value;
                    }
                }
                Some(b'[') => {
                    self.open(false)?;
                    self.skip_whitespace();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                        self.close();
                    } else {
                        continue 'value;
                    }
                }
                Some(b'"') => {
                    let (_, nul) = self.string()?;
                    if nul {
                        return Err(self.refuse(
                            "String should not contain the NUL character (U+0000)",
                            "string_nul",
                        ));
                    }
                }
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                _ => return Err(Stop::Malformed),
            }
            // A value has ended: continue its container, close it, or end the body.
            loop {
                self.skip_whitespace();
                let next = self.bytes.get(self.pos).copied();
                let Some(frame) = self.stack.last_mut() else {
                    return if self.pos == self.bytes.len() {
                        Ok(())
                    } else {
                        Err(Stop::Malformed)
                    };
                };
                match (next, frame.object) {
                    (Some(b','), object) => {
                        self.pos += 1;
                        if object {
                            self.skip_whitespace();
                            self.member_key()?;
                        } else {
                            frame.index += 1;
                        }
                        continue 'value;
                    }
                    (Some(b'}'), true) | (Some(b']'), false) => {
                        self.pos += 1;
                        self.close();
                    }
                    _ => return Err(Stop::Malformed),
                }
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Opens the container at `pos` (its bracket), refusing it beyond the depth limit.
    fn open(&mut self, object: bool) -> Step {
        if self.stack.len() >= self.max_depth {
            return Err(self.refuse(
                &format!(
                    "Value is nested deeper than {} levels",
                    self.max_depth.saturating_sub(1)
                ),
                "json_too_deep",
            ));
        }
        self.pos += 1;
        self.stack.push(Frame {
            object,
            index: 0,
            key: Key::default(),
            keys_start: self.keys.len(),
            seen: None,
        });
        Ok(())
    }

    fn close(&mut self) {
        if let Some(frame) = self.stack.pop() {
            self.keys.truncate(frame.keys_start);
        }
    }

    /// Reads `"key":` of the innermost object, refusing a NUL in it or a repeated key.
    fn member_key(&mut self) -> Step {
        if self.peek() != Some(b'"') {
            return Err(Stop::Malformed);
        }
        let (key, nul) = self.string()?;
        self.skip_whitespace();
        if self.peek() != Some(b':') {
            return Err(Stop::Malformed);
        }
        self.pos += 1;
        let Some(frame) = self.stack.last_mut() else {
            return Err(Stop::Malformed);
        };
        frame.key = key;
        if nul {
            return Err(self.refuse(
                "Keys should not contain the NUL character (U+0000)",
                "string_nul",
            ));
        }
        let repeated = match &mut frame.seen {
            Some(seen) => !seen.insert(key.decoded()),
            None => {
                let earlier = &self.keys[frame.keys_start..];
                if earlier.len() < LINEAR_KEYS {
                    let repeated = earlier.iter().any(|k| k.same_as(key));
                    self.keys.push(key);
                    repeated
                } else {
                    let mut seen: HashSet<_> = earlier.iter().map(|k| k.decoded()).collect();
                    let repeated = !seen.insert(key.decoded());
                    frame.seen = Some(seen);
                    repeated
                }
            }
        };
        if repeated {
            return Err(self.refuse("Duplicate key in object", "duplicate_key"));
        }
        Ok(())
    }

    /// Reads the string at `pos` (its opening quote): the text between the quotes and whether
    /// it holds an escaped NUL. Raw control characters are not JSON.
    fn string(&mut self) -> Step<(Key<'a>, bool)> {
        self.pos += 1;
        let start = self.pos;
        let (mut escaped, mut nul) = (false, false);
        loop {
            // Bytes of multi-byte UTF-8 sequences are all >= 0x80, so neither a quote nor a
            // backslash can hide inside one.
            let rest = &self.bytes[self.pos..];
            let run = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .ok_or(Stop::Malformed)?;
            self.pos += run;
            match self.bytes[self.pos] {
                b'"' => {
                    let raw = &self.bytes[start..self.pos];
                    self.pos += 1;
                    return Ok((Key { raw, escaped }, nul));
                }
                b'\\' => {
                    escaped = true;
                    match self.bytes.get(self.pos + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.pos += 2;
                        }
                        Some(b'u') => {
                            let code = self
                                .bytes
                                .get(self.pos + 2..self.pos + 6)
                                .and_then(hex4)
                                .ok_or(Stop::Malformed)?;
                            nul |= code == 0;
                            self.pos += 6;
                        }
                        _ => return Err(Stop::Malformed),
                    }
                }
                _ => return Err(Stop::Malformed),
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Step {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(Stop::Malformed)
        }
    }

    /// Reads the number at `pos`, refusing one that would not read back as the same value.
    fn number(&mut self) -> Step {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Stop::Malformed),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            integer = false;
            self.pos += 1;
            self.required_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            integer = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.required_digits()?;
        }
        let text =
            std::str::from_utf8(&self.bytes[start..self.pos]).map_err(|_| Stop::Malformed)?;
        if integer {
            // serde_json reads integers as u64 or i64 and anything larger as a float.
            let fits = if negative {
                text.parse::<i64>().is_ok()
            } else {
                text.parse::<u64>().is_ok()
            };
            return if fits {
                Ok(())
            } else {
                Err(self.refuse(
                    "Integer should be between -9223372036854775808 and 18446744073709551615",
                    "int_out_of_range",
                ))
            };
        }
        // Rust's parse rounds correctly, as serde_json does with `float_roundtrip`.
        let value: f64 = text.parse().map_err(|_| Stop::Malformed)?;
        if !value.is_finite() {
            return Err(self.refuse(
                "Number is beyond the range of a 64-bit float",
                "float_out_of_range",
            ));
        }
        let mut written = StackText::default();
        serde_json::to_writer(&mut written, &value).map_err(|_| Stop::Malformed)?;
        let written = written.as_str();
        if same_decimal(text, written) {
            Ok(())
        } else {
            Err(self.refuse(
                &format!(
                    "Number would read back as {written}: a 64-bit float cannot hold it exactly"
                ),
                "float_precision",
            ))
        }
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn required_digits(&mut self) -> Step {
        let start = self.pos;
        self.digits();
        if self.pos == start {
            Err(Stop::Malformed)
        } else {
            Ok(())
        }
    }

    /// A refusal at the current path.
    fn refuse(&self, msg: &str, kind: &str) -> Stop {
        let mut loc = Vec::with_capacity(self.stack.len() + 2);
        loc.push("body".to_owned());
        for frame in &self.stack {
            loc.push(if frame.object {
                String::from_utf8_lossy(&frame.key.decoded()).into_owned()
            } else {
                frame.index.to_string()
            });
        }
        Stop::Refused(FieldError::new(loc, msg, kind))
    }
}

/// The value of four hex digits.
fn hex4(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |code, &digit| {
        Some(code * 16 + char::from(digit).to_digit(16)?)
    })
}

/// The UTF-8 bytes a JSON string's contents (between the quotes) stand for. Only called on
/// text [`Scanner::string`] has checked; a lone surrogate becomes U+FFFD (serde_json refuses
/// such a body anyway).
fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let simple = match raw.get(i + 1) {
            Some(b'b') => Some(b'\x08'),
            Some(b'f') => Some(b'\x0c'),
            Some(b'n') => Some(b'\n'),
            Some(b'r') => Some(b'\r'),
            Some(b't') => Some(b'\t'),
            Some(b'u') => None,
            Some(&other) => Some(other),
            None => break,
        };
        if let Some(byte) = simple {
            out.push(byte);
            i += 2;
            continue;
        }
        let unit = raw.get(i + 2..i + 6).and_then(hex4).unwrap_or(0xFFFD);
        i += 6;
        let code = if (0xD800..0xDC00).contains(&unit) && raw.get(i..i + 2) == Some(b"\\u") {
            match raw.get(i + 2..i + 6).and_then(hex4) {
                Some(low @ 0xDC00..0xE000) => {
                    i += 6;
                    0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                }
                _ => 0xFFFD,
            }
        } else {
            unit
        };
        let ch = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
        out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
    }
    out
}

/// A number's decimal value: `0.DIGITS × 10^point`, sign apart, with no leading or trailing
/// zero in `DIGITS` (none at all for zero).
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: [u8; MAX_DIGITS],
    len: usize,
    point: i64,
}

/// More significant digits than any 64-bit float needs (17), so a longer number cannot be one.
const MAX_DIGITS: usize = 24;

impl Decimal {
    /// Reads a JSON number; `None` when it has more than [`MAX_DIGITS`] significant digits.
    fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        let negative = bytes.first() == Some(&b'-');
        let mut decimal = Decimal {
            negative,
            digits: [0; MAX_DIGITS],
            len: 0,
            point: 0,
        };
        let (mut integer_digits, mut position, mut first) = (0i64, 0i64, None);
        let mut zeros = 0usize;
        let mut fraction = false;
        let mut i = usize::from(negative);
        while let Some(&c) = bytes.get(i) {
            match c {
                b'0'..=b'9' => {
                    if !fraction {
                        integer_digits += 1;
                    }
                    if c == b'0' {
                        // Zeros count only once a digit follows them.
                        zeros += usize::from(first.is_some());
                    } else {
                        first.get_or_insert(position);
                        for _ in 0..zeros {
                            decimal.push(0)?;
                        }
                        zeros = 0;
                        decimal.push(c - b'0')?;
                    }
                    position += 1;
                }
                b'.' => fraction = true,
                b'e' | b'E' => break,
                _ => return None,
            }
            i += 1;
        }
        let mut exponent = 0i64;
        let mut exponent_negative = false;
        for &c in bytes.get(i + 1..).unwrap_or_default() {
            match c {
                b'-' => exponent_negative = true,
                b'+' => {}
                b'0'..=b'9' => {
                    exponent = exponent
                        .saturating_mul(10)
                        .saturating_add(i64::from(c - b'0'));
                }
                _ => return None,
            }
        }
        if exponent_negative {
            exponent = -exponent;
        }
        if let Some(first) = first {
            decimal.point = (integer_digits - first).saturating_add(exponent);
        }
        Some(decimal)
    }

    fn push(&mut self, digit: u8) -> Option<()> {
        *self.digits.get_mut(self.len)? = digit;
        self.len += 1;
        Some(())
    }
}

/// Whether two JSON numbers have the same decimal value (`1.50` and `1.5`, `1e2` and `100.0`).
fn same_decimal(a: &str, b: &str) -> bool {
    match (Decimal::parse(a), Decimal::parse(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// A float as serde_json writes it, without a heap allocation (at most 24 bytes).
#[derive(Default)]
struct StackText {
    bytes: [u8; 32],
    len: usize,
}

impl StackText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl io::Write for StackText {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let end = self.len + buf.len();
        let target = self
            .bytes
            .get_mut(self.len..end)
            .ok_or_else(|| io::Error::other("a float is at most 24 bytes"))?;
        target.copy_from_slice(buf);
        self.len = end;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const DEPTH: usize = 33;

    fn refusal(body: &str) -> FieldError {
        match scan(body.as_bytes(), DEPTH) {
            Scan::Refused(error) => error,
            other => panic!("{body} should be refused, not {other:?}"),
        }
    }

    #[track_caller]
    fn refused_at(body: &str, loc: &[&str], kind: &str) {
        let error = refusal(body);
        assert_eq!(error.loc, loc, "{body}: {}", error.msg);
        assert_eq!(error.kind, kind, "{body}: {}", error.msg);
    }

    #[track_caller]
    fn clean(body: &str) {
        let found = scan(body.as_bytes(), DEPTH);
        assert!(matches!(found, Scan::Clean), "{body}: {found:?}");
    }

    #[track_caller]
    fn malformed(body: &str) {
        let found = scan(body.as_bytes(), DEPTH);
        assert!(matches!(found, Scan::Malformed), "{body}: {found:?}");
    }

    fn nested(levels: usize) -> String {
        format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels))
    }

    #[test]
    fn ordinary_bodies_are_clean() {
        for body in [
            r#"{"name":"p","description":"d","n":[1,-2,3.5,1e2,0.1,-0,0,true,false,null]}"#,
            "  {\n\t\"a\" : { \"b\" : [ ] , \"c\" : { } } }  ",
            r#"[]"#,
            r#""text""#,
            "12",
            r#"{"é\u00e9":"\ud83d\ude00","\"":"\\","/":"\/"}"#,
            r#"{"max":18446744073709551615,"min":-9223372036854775808}"#,
            r#"{"f":[0.30000000000000004,1.7976931348623157e308,5e-324,2.5E+3,1.50,100.000]}"#,
        ] {
            clean(body);
        }
    }

    #[test]
    fn what_is_not_json_is_left_to_serde() {
        for body in [
            "",
            "{",
            r#"{"a":1"#,
            r#"{"a" 1}"#,
            r#"{"a":1,}"#,
            r#"[1,]"#,
            r#"{"a":1} x"#,
            r#"{a:1}"#,
            "01",
            "1.",
            "-",
            "1e",
            ".5",
            "+1",
            "tru",
            "nul",
            r#""\x""#,
            r#""\u12""#,
            "\"a\u{1}b\"",
            "\"unterminated",
            "[1}",
            "{\"a\":1]",
            "\u{feff}{}",
        ] {
            malformed(body);
        }
    }

    #[test]
    fn a_nul_in_a_string_is_refused_at_its_field() {
        refused_at(
            r#"{"name":"p","description":"d\u0000"}"#,
            &["body", "description"],
            "string_nul",
        );
        refused_at(
            r#"{"params":{"a":{"b":"x\u0000y"}}}"#,
            &["body", "params", "a", "b"],
            "string_nul",
        );
        refused_at(
            r#"{"capabilities":["a","\u0000"]}"#,
            &["body", "capabilities", "1"],
            "string_nul",
        );
        refused_at(r#""\u0000""#, &["body"], "string_nul");
    }

    #[test]
    fn a_nul_in_a_key_is_refused_at_that_key() {
        refused_at(
            r#"{"params":{"a\u0000b":1}}"#,
            &["body", "params", "a\0b"],
            "string_nul",
        );
    }

    #[test]
    fn escapes_that_are_not_nul_pass() {
        clean(r#"{"a":"\u0001\u0030\u0100\u000a"}"#);
        // An escaped backslash followed by the text `u0000`.
        clean(r#"{"a":"\\u0000"}"#);
    }

    #[test]
    fn nesting_is_allowed_up_to_the_limit_and_refused_beyond() {
        clean(&nested(DEPTH));
        let deep = nested(DEPTH + 1);
        let error = refusal(&deep);
        assert_eq!(error.kind, "json_too_deep");
        assert_eq!(error.loc.len(), 1 + DEPTH);
        assert!(error.loc[1..].iter().all(|k| k == "a"), "{:?}", error.loc);
        // Far beyond what serde_json reads, the refusal is the same and the scan stays shallow.
        let error = refusal(&"[".repeat(1_000_000));
        assert_eq!(error.kind, "json_too_deep");
        assert_eq!(error.loc.len(), 1 + DEPTH);
        assert!(error.loc[1..].iter().all(|k| k == "0"));
    }

    #[test]
    fn integers_beyond_64_bits_are_refused() {
        refused_at(
            r#"{"params":{"n":18446744073709551616}}"#,
            &["body", "params", "n"],
            "int_out_of_range",
        );
        refused_at(
            r#"{"n":-9223372036854775809}"#,
            &["body", "n"],
            "int_out_of_range",
        );
        refused_at(
            r#"[123456789012345678901234567890]"#,
            &["body", "0"],
            "int_out_of_range",
        );
    }

    #[test]
    fn floats_that_would_read_back_differently_are_refused() {
        for (number, kind) in [
            ("0.30000000000000000001", "float_precision"),
            ("1.00000000000000000000000000000000001", "float_precision"),
            ("9007199254740993.0", "float_precision"),
            ("1e-400", "float_precision"),
            ("1e400", "float_out_of_range"),
            ("-1e400", "float_out_of_range"),
        ] {
            let body = format!(r#"{{"params":{{"x":[1,{number}]}}}}"#);
            refused_at(&body, &["body", "params", "x", "1"], kind);
        }
    }

    #[test]
    fn floats_with_the_same_decimal_value_pass_however_written() {
        for number in [
            "0.1",
            "1.0",
            "1.5000",
            "1e2",
            "1E+2",
            "100e-2",
            "0.000001",
            "123456789.125",
            "-0.0",
            "0e99999999999999999999",
            "1.0000000000000000000000000000000000000000",
            "2.2250738585072014e-308",
        ] {
            clean(&format!("[{number}]"));
        }
    }

    #[test]
    fn every_accepted_float_reads_back_with_the_same_value() {
        // The scan accepts a float only if serde_json writes the same decimal value back.
        for number in ["0.1", "1e2", "-2.5e-3", "1.7976931348623157e308", "4.35"] {
            clean(number);
            let value: Value = serde_json::from_str(number).expect("a number");
            let written = value.to_string();
            assert!(same_decimal(number, &written), "{number} -> {written}");
            let again: Value = serde_json::from_str(&written).expect("a number");
            assert_eq!(value, again);
        }
    }

    #[test]
    fn a_repeated_key_is_refused_at_its_second_occurrence() {
        refused_at(r#"{"a":1,"b":2,"a":3}"#, &["body", "a"], "duplicate_key");
        refused_at(
            r#"{"params":{"x":{"k":1,"\u006b":2}}}"#,
            &["body", "params", "x", "k"],
            "duplicate_key",
        );
        // The same key in sibling or nested objects is not a repeat.
        clean(r#"{"a":{"a":{"a":1}},"b":{"a":2},"c":[{"a":1},{"a":2}]}"#);
    }

    #[test]
    fn repeated_keys_are_found_in_objects_with_many_keys() {
        let members: Vec<String> = (0..5_000).map(|n| format!(r#""k{n}":{n}"#)).collect();
        clean(&format!("{{{}}}", members.join(",")));
        let body = format!(r#"{{{},"k4321":0}}"#, members.join(","));
        refused_at(&body, &["body", "k4321"], "duplicate_key");
        let body = format!(r#"{{{},"k\u0031":0}}"#, members.join(","));
        refused_at(&body, &["body", "k1"], "duplicate_key");
    }

    #[test]
    fn the_first_refusal_is_reported() {
        refused_at(r#"{"a":"\u0000","a":1e400}"#, &["body", "a"], "string_nul");
    }

    #[test]
    fn decimals_compare_by_value() {
        assert!(same_decimal("1.5", "1.50"));
        assert!(same_decimal("1e2", "100.0"));
        assert!(same_decimal("0.0012", "1.2e-3"));
        assert!(same_decimal("0", "0.0"));
        assert!(!same_decimal("0.0", "-0.0"));
        assert!(!same_decimal("1.5", "-1.5"));
        assert!(!same_decimal("1.5", "15"));
        assert!(!same_decimal("0.30000000000000000001", "0.3"));
    }

    #[test]
    fn unescaping_decodes_every_escape() {
        assert_eq!(unescape(br#"a\"\\\/\b\f\n\r\t"#), b"a\"\\/\x08\x0c\n\r\t");
        assert_eq!(unescape(br"\u00e9\ud83d\ude00"), "é😀".as_bytes());
        assert_eq!(unescape(br"\ud83d"), "\u{fffd}".as_bytes());
    }
}
