//! Time as whole milliseconds since the Unix epoch, UTC.
//!
//! The engine never reads a clock: every time it sees is a [`Millis`] handed to it.

use chrono::{DateTime, SecondsFormat, Utc};

/// Milliseconds since 1970-01-01T00:00:00Z.
pub type Millis = i64;

/// One second in milliseconds.
pub const SECOND: Millis = 1_000;
/// One minute in milliseconds.
pub const MINUTE: Millis = 60 * SECOND;
/// One hour in milliseconds.
pub const HOUR: Millis = 60 * MINUTE;
/// One day in milliseconds.
pub const DAY: Millis = 24 * HOUR;
/// One week in milliseconds.
pub const WEEK: Millis = 7 * DAY;

/// Parses an RFC 3339 timestamp (`2026-01-05T09:00:00Z`, any offset) into [`Millis`].
pub fn parse_rfc3339(s: &str) -> Result<Millis, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("`{s}` is not an RFC 3339 timestamp ({e})"))
}

/// Formats [`Millis`] as RFC 3339 in UTC with a `Z` suffix; fractions only when non-zero.
pub fn format_rfc3339(t: Millis) -> String {
    match DateTime::<Utc>::from_timestamp_millis(t) {
        Some(dt) => dt.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => format!("{t}ms"),
    }
}

/// Serde adapter: [`Millis`] as an RFC 3339 string in human-readable formats, an integer otherwise.
pub mod rfc3339 {
    use super::Millis;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises a timestamp.
    pub fn serialize<S: Serializer>(t: &Millis, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&super::format_rfc3339(*t))
        } else {
            s.serialize_i64(*t)
        }
    }

    /// Deserialises a timestamp.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            super::parse_rfc3339(&s).map_err(serde::de::Error::custom)
        } else {
            i64::deserialize(d)
        }
    }

    /// The same for an optional timestamp.
    pub mod option {
        use super::Millis;
        use serde::{Deserialize, Deserializer, Serializer};

        /// Serialises an optional timestamp.
        pub fn serialize<S: Serializer>(t: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        /// Deserialises an optional timestamp.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
            if d.is_human_readable() {
                let s = Option::<String>::deserialize(d)?;
                s.map(|s| crate::time::parse_rfc3339(&s).map_err(serde::de::Error::custom))
                    .transpose()
            } else {
                Option::<i64>::deserialize(d)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_uses_z() {
        let t = parse_rfc3339("2026-01-05T09:00:00Z").unwrap();
        assert_eq!(t, 1_767_603_600_000);
        assert_eq!(format_rfc3339(t), "2026-01-05T09:00:00Z");
        assert_eq!(format_rfc3339(t + 250), "2026-01-05T09:00:00.250Z");
        assert_eq!(parse_rfc3339("2026-01-05T10:00:00+01:00").unwrap(), t);
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
