//! Small helpers for writing one SQL text that runs on both backends: `$n` placeholders (which
//! SQLite accepts too), values limited to text and integers, timestamps as fixed-width RFC 3339
//! text (so text order is time order on both engines), and a macro that runs a statement on
//! whichever pool a `Database` holds (through `sparc_store::on_backend!`).

use chrono::{DateTime, SecondsFormat, Utc};

/// A value bound into a read-model statement.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// Text, or NULL.
    Text(Option<String>),
    /// An integer, or NULL.
    Int(Option<i64>),
}

impl From<Option<DateTime<Utc>>> for SqlValue {
    fn from(value: Option<DateTime<Utc>>) -> Self {
        SqlValue::Text(value.map(format_timestamp))
    }
}

impl From<String> for SqlValue {
    fn from(value: String) -> Self {
        SqlValue::Text(Some(value))
    }
}

impl From<Option<String>> for SqlValue {
    fn from(value: Option<String>) -> Self {
        SqlValue::Text(value)
    }
}

impl From<i64> for SqlValue {
    fn from(value: i64) -> Self {
        SqlValue::Int(Some(value))
    }
}

impl From<bool> for SqlValue {
    fn from(value: bool) -> Self {
        SqlValue::Int(Some(i64::from(value)))
    }
}

/// Formats a time as `2026-03-02T09:00:00.000000Z`: fixed width, so comparing the text compares
/// the times.
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Binds a list of [`SqlValue`]s onto a `sqlx::query`.
macro_rules! bind_all {
    ($query:expr, $values:expr) => {{
        let mut query = $query;
        for value in $values {
            query = match value {
                $crate::sql::SqlValue::Text(text) => query.bind(text.clone()),
                $crate::sql::SqlValue::Int(int) => query.bind(*int),
            };
        }
        query
    }};
}
pub(crate) use bind_all;

/// One column of many rows, bound as one Postgres array: statements over `unnest` of such
/// arrays have one text whatever the number of rows (one prepared statement and plan, where a
/// `VALUES` list of `$n` placeholders is a new statement for every row count).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SqlColumn {
    /// Text values (`text[]`).
    Text(Vec<Option<String>>),
    /// Integer values (`bigint[]`).
    Int(Vec<Option<i64>>),
}

impl SqlColumn {
    /// The array's Postgres type, for a cast of its placeholder.
    pub(crate) fn pg_array_type(&self) -> &'static str {
        match self {
            SqlColumn::Text(_) => "text[]",
            SqlColumn::Int(_) => "bigint[]",
        }
    }

    /// Rows (each the same number of values, a column's values all text or all integers) as
    /// columns. `None` if a column mixes text and integers.
    pub(crate) fn of_rows(rows: Vec<Vec<SqlValue>>) -> Option<Vec<SqlColumn>> {
        let width = rows.first().map_or(0, Vec::len);
        let mut columns: Vec<SqlColumn> = match rows.first() {
            None => return Some(Vec::new()),
            Some(first) => first
                .iter()
                .map(|value| match value {
                    SqlValue::Text(_) => SqlColumn::Text(Vec::with_capacity(rows.len())),
                    SqlValue::Int(_) => SqlColumn::Int(Vec::with_capacity(rows.len())),
                })
                .collect(),
        };
        for row in rows {
            if row.len() != width {
                return None;
            }
            for (column, value) in columns.iter_mut().zip(row) {
                match (column, value) {
                    (SqlColumn::Text(values), SqlValue::Text(value)) => values.push(value),
                    (SqlColumn::Int(values), SqlValue::Int(value)) => values.push(value),
                    _ => return None,
                }
            }
        }
        Some(columns)
    }
}

/// The GLOB pattern matching `text` anywhere, literally: `*`, `?` and `[` are bracketed.
pub(crate) fn glob_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('*');
    for c in text.chars() {
        match c {
            '*' | '?' | '[' => {
                pattern.push('[');
                pattern.push(c);
                pattern.push(']');
            }
            _ => pattern.push(c),
        }
    }
    pattern.push('*');
    pattern
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn rows_become_columns_of_one_type_each() {
        let rows = vec![
            vec![SqlValue::Text(Some("a".into())), SqlValue::Int(Some(1))],
            vec![SqlValue::Text(None), SqlValue::Int(Some(2))],
        ];
        assert_eq!(
            SqlColumn::of_rows(rows),
            Some(vec![
                SqlColumn::Text(vec![Some("a".into()), None]),
                SqlColumn::Int(vec![Some(1), Some(2)]),
            ])
        );
        let mixed = vec![vec![SqlValue::Int(Some(1))], vec![SqlValue::Text(None)]];
        assert_eq!(SqlColumn::of_rows(mixed), None);
        let ragged = vec![vec![SqlValue::Int(Some(1))], vec![]];
        assert_eq!(SqlColumn::of_rows(ragged), None);
    }

    #[test]
    fn timestamps_format_to_fixed_width_text_that_sorts_like_time() {
        let a = Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap();
        let b = a + chrono::Duration::milliseconds(1);
        assert_eq!(format_timestamp(a), "2026-03-02T09:00:00.000000Z");
        assert!(format_timestamp(a) < format_timestamp(b));
    }

    #[test]
    fn a_glob_pattern_matches_its_text_literally() {
        assert_eq!(super::glob_pattern("a*b?c[d]%_"), "*a[*]b[?]c[[]d]%_*");
    }
}
