//! Value types that parse their input: once constructed they are valid, so aggregates and
//! projections never re-check them. Parse errors carry a message safe to show to users.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Every time in the domain is UTC.
pub type Timestamp = DateTime<Utc>;

/// Why a value was refused; the message is shown to users as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

fn invalid(msg: impl Into<String>) -> InvalidValue {
    InvalidValue(msg.into())
}

/// Declares a string newtype that (de)serializes as a plain string and re-validates on
/// deserialization, so a value read back from the log is as trustworthy as a parsed one.
macro_rules! string_value {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The value as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                $name::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_value!(
    /// The skill an agent runs for a task: 1..255 of `[A-Za-z0-9_-]`.
    SkillName
);

impl SkillName {
    /// Parses a skill name.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.is_empty() || raw.len() > 255 {
            return Err(invalid("skill_name must be 1 to 255 characters"));
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                "skill_name may contain only letters, digits, '_' and '-'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }
}

/// A standard 5-field cron expression (minute hour day-of-month month day-of-week), with
/// ranges, lists, steps and names such as `MON`.
///
/// The expression is parsed once, when the value is made or deserialized, and the parsed
/// schedule is kept beside its text (shared by clones) for every next run time asked of it.
/// Equality, order, hashing and serialization are those of the text.
#[derive(Clone)]
pub struct CronSchedule {
    text: String,
    parsed: Arc<croner::Cron>,
}

impl CronSchedule {
    /// Parses and validates a 5-field cron expression.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let trimmed = raw.trim();
        if trimmed.split_whitespace().count() != 5 {
            return Err(invalid(
                "schedule_cron must be a 5-field cron expression (minute hour day-of-month month day-of-week)",
            ));
        }
        let text = trimmed.split_whitespace().collect::<Vec<_>>().join(" ");
        let parsed = croner::Cron::new(&text)
            .parse()
            .map_err(|e| invalid(format!("invalid cron expression: {e}")))?;
        Ok(Self {
            text,
            parsed: Arc::new(parsed),
        })
    }

    /// The value as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first time strictly after `after` at which the schedule fires in `zone`, in UTC.
    /// `None` only for expressions that can never fire (such as 31 February).
    pub fn next_after(&self, after: Timestamp, zone: &TimeZoneName) -> Option<Timestamp> {
        let local = after.with_timezone(&zone.tz());
        self.parsed
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The shortest time between two consecutive firings, on the wall clock of the task's
    /// zone (a clock change there can shorten one gap a year by the change), or `None` when
    /// the schedule never fires twice.
    ///
    /// The hour and minute fields give the times of day, the same on every day the schedule
    /// fires; the shortest gap is the closest two of them, or the last of one firing day to the
    /// first of the next, the firing days taken from [`CALENDAR_CYCLE_DAYS`] of the calendar.
    /// A 5-field expression fires at whole minutes, so never less than a minute apart.
    pub fn shortest_interval(&self) -> Option<chrono::Duration> {
        let pattern = &self.parsed.pattern;
        let minutes_of_day: Vec<i64> = (0..24u32)
            .filter(|&h| pattern.hour_match(h).unwrap_or(false))
            .flat_map(|h| {
                (0..60u32)
                    .filter(|&m| pattern.minute_match(m).unwrap_or(false))
                    .map(move |m| i64::from(h * 60 + m))
            })
            .collect();
        let (&first, &last) = (minutes_of_day.first()?, minutes_of_day.last()?);
        let within_a_day = minutes_of_day
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .min();
        let across_days =
            closest_firing_days(&self.parsed).map(|days| days * 24 * 60 - last + first);
        let shortest = match (within_a_day, across_days) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(chrono::Duration::minutes(shortest))
    }
}

/// Days the firing days of a schedule are looked for in: 28 years, the cycle after which dates
/// fall on the same weekdays again (between 1901 and 2099), leap days included.
pub const CALENDAR_CYCLE_DAYS: i64 = 10_227;

/// The fewest days between two days `cron` fires on, over [`CALENDAR_CYCLE_DAYS`] from
/// 2001-01-01 (a Monday after a century's end); `None` if it fires on fewer than two.
fn closest_firing_days(cron: &croner::Cron) -> Option<i64> {
    let pattern = &cron.pattern;
    let start = chrono::NaiveDate::from_ymd_opt(2001, 1, 1)?;
    let mut previous: Option<chrono::NaiveDate> = None;
    let mut closest: Option<i64> = None;
    for offset in 0..CALENDAR_CYCLE_DAYS {
        let day = start + chrono::Duration::days(offset);
        let fires = pattern.month_match(day.month()).unwrap_or(false)
            && pattern
                .day_match(day.year(), day.month(), day.day())
                .unwrap_or(false);
        if !fires {
            continue;
        }
        if let Some(previous) = previous {
            let apart = (day - previous).num_days();
            closest = Some(closest.map_or(apart, |c| c.min(apart)));
            if apart == 1 {
                // Consecutive days: none can be closer.
                break;
            }
        }
        previous = Some(day);
    }
    closest
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CronSchedule").field(&self.text).finish()
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for CronSchedule {}

impl std::hash::Hash for CronSchedule {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl PartialOrd for CronSchedule {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CronSchedule {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl Serialize for CronSchedule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for CronSchedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// An IANA time zone name such as `Europe/Berlin`; `UTC` by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeZoneName(Tz);

impl TimeZoneName {
    /// Parses an IANA time zone name.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        Tz::from_str(raw.trim())
            .map(Self)
            .map_err(|_| invalid(format!("unknown time zone '{raw}'")))
    }

    /// Every name [`TimeZoneName::parse`] accepts (untrimmed), for the API's documentation.
    pub fn names() -> impl Iterator<Item = &'static str> {
        chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name())
    }

    /// The zone for date arithmetic.
    pub fn tz(&self) -> Tz {
        self.0
    }

    /// The IANA name.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }
}

impl Default for TimeZoneName {
    fn default() -> Self {
        Self(Tz::UTC)
    }
}

impl fmt::Display for TimeZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl Serialize for TimeZoneName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name())
    }
}

impl<'de> Deserialize<'de> for TimeZoneName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

string_value!(
    /// A project name: trimmed, 1..255 characters, not blank.
    ProjectName
);

impl ProjectName {
    /// Parses a project name, trimming surrounding whitespace.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(invalid("name must not be blank"));
        }
        if trimmed.chars().count() > 255 {
            return Err(invalid("name must be at most 255 characters"));
        }
        Ok(Self(trimmed.to_owned()))
    }
}

string_value!(
    /// A login name: 3..50 of `[A-Za-z0-9_-]`.
    Username
);

impl Username {
    /// Parses a username.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let len = raw.chars().count();
        if !(3..=50).contains(&len) {
            return Err(invalid("username must be 3 to 50 characters"));
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                "username may contain only letters, digits, '_' and '-'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }
}

string_value!(
    /// An e-mail address, kept as given but compared case-insensitively for uniqueness.
    Email
);

impl Email {
    /// Parses an e-mail address: one `@`, a non-empty local part and a dotted domain.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let raw = raw.trim();
        let valid = raw.len() <= 254
            && !raw.chars().any(char::is_whitespace)
            && match raw.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && !domain.contains('@')
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                }
                None => false,
            };
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(invalid("value is not a valid email address"))
        }
    }
}

string_value!(
    /// An agent's unique name: trimmed, 1..255 characters.
    AgentName
);

impl AgentName {
    /// Parses an agent name.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.chars().count() > 255 {
            return Err(invalid("name must be 1 to 255 characters"));
        }
        Ok(Self(trimmed.to_owned()))
    }
}

/// Checks an optional free-text field against a maximum length in characters.
pub fn bounded_text(field: &str, raw: &str, max: usize) -> Result<String, InvalidValue> {
    if raw.chars().count() > max {
        Err(invalid(format!("{field} must be at most {max} characters")))
    } else {
        Ok(raw.to_owned())
    }
}

/// Implements `Display`/`FromStr`-style conversions for enums that are stored and shown in
/// snake case (`"api-designer"` style names are handled with explicit renames).
macro_rules! text_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire name.
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the wire name.
            pub fn parse(raw: &str) -> Result<Self, $crate::values::InvalidValue> {
                match raw {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::values::InvalidValue(format!(
                        "value must be one of: {}",
                        [$($text),+].join(", ")
                    ))),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = <String as ::serde::Deserialize>::deserialize(d)?;
                $name::parse(&raw).map_err(::serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use text_enum;

/// How long a run may take before it becomes `timeout`: 1..=86,400 seconds, 3,600 by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TimeoutSeconds(u32);

impl TimeoutSeconds {
    /// The longest run a task may allow: a day.
    pub const MAX: u32 = 86_400;

    /// Checks the range.
    pub fn new(seconds: i64) -> Result<Self, InvalidValue> {
        u32::try_from(seconds)
            .ok()
            .filter(|s| (1..=Self::MAX).contains(s))
            .map(Self)
            .ok_or_else(|| invalid(format!("timeout_seconds must be 1 to {}", Self::MAX)))
    }

    /// The seconds.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The limit as a duration.
    pub fn duration(self) -> chrono::Duration {
        chrono::Duration::seconds(i64::from(self.0))
    }
}

impl Default for TimeoutSeconds {
    fn default() -> Self {
        Self(3_600)
    }
}

impl<'de> Deserialize<'de> for TimeoutSeconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(i64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// What a due slot does while an earlier run of the task is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Overlap {
    /// The slot is skipped and counted, not run.
    #[default]
    Skip,
    /// The slot runs beside the earlier run.
    Allow,
}

text_enum!(Overlap {
    Skip => "skip",
    Allow => "allow",
});

/// What becomes of slots missed while no scheduler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CatchUp {
    /// They fire once, on recovery.
    #[default]
    Once,
    /// They do not fire; the next slot after recovery does.
    None,
}

text_enum!(CatchUp {
    Once => "once",
    None => "none",
});

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn cron_accepts_standard_expressions_with_ranges_lists_steps_and_names() {
        for ok in [
            "* * * * *",
            "0 9 * * MON-FRI",
            "*/15 0-6 1,15 * *",
            "30 2 * JAN SUN",
        ] {
            assert!(CronSchedule::parse(ok).is_ok(), "{ok} should be accepted");
        }
    }

    #[test]
    fn cron_rejects_the_contracts_invalid_examples() {
        for bad in [
            "invalid",
            "60 0 * * *",
            "0 25 * * *",
            "",
            "* * * *",
            "0 0 0 * * *",
        ] {
            assert!(
                CronSchedule::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    fn shortest(expression: &str) -> Option<i64> {
        CronSchedule::parse(expression)
            .unwrap()
            .shortest_interval()
            .map(|gap| gap.num_minutes())
    }

    #[test]
    fn the_shortest_interval_is_the_closest_two_firings() {
        assert_eq!(shortest("* * * * *"), Some(1));
        assert_eq!(shortest("*/15 * * * *"), Some(15));
        assert_eq!(shortest("0,10,50 * * * *"), Some(10));
        assert_eq!(shortest("0 9 * * MON-FRI"), Some(24 * 60));
        assert_eq!(shortest("0 9 * * MON"), Some(7 * 24 * 60));
        assert_eq!(shortest("30 2 1 * *"), Some(28 * 24 * 60));
        // Only on leap days: four years apart, at the least.
        assert_eq!(shortest("0 0 29 2 *"), Some(4 * 365 * 24 * 60 + 24 * 60));
    }

    #[test]
    fn the_shortest_interval_counts_the_gap_across_midnight() {
        // 23:00 and then 00:00 the next day, on consecutive days only.
        assert_eq!(shortest("0 0,23 * * *"), Some(60));
        assert_eq!(shortest("0 0,23 1,2 * *"), Some(60));
        // Never on consecutive days: the gaps within the day are the shortest.
        assert_eq!(shortest("0 0,23 * * MON"), Some(23 * 60));
        // Month ends: 31 January is followed by 1 February.
        assert_eq!(shortest("58 23 1,31 * *"), Some(24 * 60));
        assert_eq!(shortest("58 0,23 1,31 * *"), Some(60));
    }

    #[test]
    fn a_schedule_that_never_fires_twice_has_no_interval() {
        assert_eq!(shortest("0 0 30 2 *"), None);
    }

    #[test]
    fn next_run_is_computed_in_the_tasks_time_zone_and_reported_in_utc() {
        let cron = CronSchedule::parse("0 9 * * *").unwrap();
        let berlin = TimeZoneName::parse("Europe/Berlin").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap();
        // 09:00 in Berlin in winter is 08:00 UTC, and 12:00 UTC is past it, so the next day.
        assert_eq!(
            cron.next_after(now, &berlin),
            Some(Utc.with_ymd_and_hms(2026, 1, 11, 8, 0, 0).unwrap())
        );
        let summer = Utc.with_ymd_and_hms(2026, 7, 10, 12, 0, 0).unwrap();
        assert_eq!(
            cron.next_after(summer, &berlin),
            Some(Utc.with_ymd_and_hms(2026, 7, 11, 7, 0, 0).unwrap())
        );
    }

    #[test]
    fn unknown_time_zones_are_refused() {
        assert!(TimeZoneName::parse("Mars/Olympus").is_err());
        assert_eq!(TimeZoneName::default().name(), "UTC");
    }

    #[test]
    fn every_listed_time_zone_name_is_accepted_as_itself() {
        let names: Vec<&str> = TimeZoneName::names().collect();
        assert!(names.len() > 400 && names.contains(&"Europe/Berlin"));
        for name in names {
            assert_eq!(TimeZoneName::parse(name).map(|tz| tz.name()), Ok(name));
        }
    }

    #[test]
    fn skill_names_allow_only_the_documented_characters() {
        assert!(SkillName::parse("code-review_2").is_ok());
        assert!(SkillName::parse("").is_err());
        assert!(SkillName::parse("has space").is_err());
        assert!(SkillName::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn project_names_are_trimmed_and_never_blank() {
        assert_eq!(ProjectName::parse("  Alpha ").unwrap().as_str(), "Alpha");
        assert!(ProjectName::parse("   ").is_err());
    }

    #[test]
    fn usernames_and_emails_are_validated() {
        assert!(Username::parse("al").is_err());
        assert!(Username::parse("alice_01").is_ok());
        assert!(Email::parse("alice@example.com").is_ok());
        assert!(Email::parse("alice@").is_err());
        assert!(Email::parse("no-at.example.com").is_err());
    }

    #[test]
    fn values_read_back_from_json_are_validated_again() {
        assert!(serde_json::from_str::<CronSchedule>("\"0 25 * * *\"").is_err());
        let tz: TimeZoneName = serde_json::from_str("\"Asia/Tokyo\"").unwrap();
        assert_eq!(serde_json::to_string(&tz).unwrap(), "\"Asia/Tokyo\"");
    }
}
