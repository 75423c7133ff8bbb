//! Reading JSON that is already in the database (event payloads and metadata, read-model
//! bodies) without serde_json's nesting limit: what was stored must be readable, however deep.
//! The limit guards the edge against hostile requests (the API refuses deep input); data in the
//! log was accepted once and every consumer must still read it, so it is parsed on a stack that
//! grows as deep as the value goes.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Parses `text` as a [`Value`], at any depth.
pub fn parse(text: &str) -> Result<Value, serde_json::Error> {
    parse_as(text)
}

/// Parses `text` as a `T`, at any depth.
pub fn parse_as<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    deserializer.disable_recursion_limit();
    let value = T::deserialize(serde_stacker::Deserializer::new(&mut deserializer))?;
    deserializer.end()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
    }

    #[test]
    fn reads_what_the_default_parser_refuses_as_too_deep() {
        let deep = nested(5_000);
        assert!(serde_json::from_str::<Value>(&deep).is_err());
        let value = parse(&deep).expect("any depth");
        let mut inner = &value;
        let mut depth = 0;
        while let Some(next) = inner.get("a") {
            inner = next;
            depth += 1;
        }
        assert_eq!((depth, inner), (5_000, &Value::from(1)));
        // The value is dropped here: 5,000 levels must not exhaust the test thread's stack.
    }

    #[test]
    fn refuses_what_is_not_json() {
        assert!(parse(r#"{"a":1"#).is_err());
        assert!(parse(r#"{"a":1} x"#).is_err());
    }
}
