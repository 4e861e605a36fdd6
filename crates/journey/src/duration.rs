//! Durations of the journey language: `30s`, `15m`, `2h`, `3d`, `1w`, `1d12h`.

use std::fmt;

/// One unit with its length in milliseconds, largest first.
const UNITS: [(char, i64); 5] = [
    ('w', 7 * 86_400_000),
    ('d', 86_400_000),
    ('h', 3_600_000),
    ('m', 60_000),
    ('s', 1_000),
];

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError(pub String);

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a duration into milliseconds. Each part is a positive whole number and a unit
/// (`s`, `m`, `h`, `d`, `w`); parts may be combined (`1d12h`), each unit at most once,
/// largest first. The total must be positive.
pub fn parse_duration(text: &str) -> Result<i64, DurationError> {
    let bad = |why: &str| {
        DurationError(format!(
            "`{text}` is not a duration: {why} (write a whole number and a unit s, m, h, d or w, such as 3d or 1d12h)"
        ))
    };
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut total: i64 = 0;
    let mut last_unit: Option<usize> = None;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let Some(unit) = UNITS.iter().position(|(u, _)| *u == c) else {
            return Err(bad(&format!("`{c}` is not a unit")));
        };
        if digits.is_empty() {
            return Err(bad(&format!("unit `{c}` has no number before it")));
        }
        if last_unit.is_some_and(|last| unit <= last) {
            return Err(bad("units must go from largest to smallest, each once"));
        }
        let n: i64 = digits.parse().map_err(|_| bad("the number is too large"))?;
        total = n
            .checked_mul(UNITS[unit].1)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| bad("it is too long"))?;
        digits.clear();
        last_unit = Some(unit);
    }
    if !digits.is_empty() {
        return Err(bad("the last number has no unit"));
    }
    if total <= 0 {
        return Err(bad("it must be longer than zero"));
    }
    Ok(total)
}

/// Formats milliseconds the way a designer would write them (`1d12h`).
pub fn format_duration(mut ms: i64) -> String {
    let mut out = String::new();
    for (u, len) in UNITS {
        // Weeks only when whole: 30 days reads better as `30d` than as `4w2d`.
        if u == 'w' && ms % len != 0 {
            continue;
        }
        if ms >= len {
            out.push_str(&format!("{}{u}", ms / len));
            ms %= len;
        }
    }
    if ms > 0 || out.is_empty() {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("15m"), Ok(900_000));
        assert_eq!(parse_duration("2h"), Ok(7_200_000));
        assert_eq!(parse_duration("3d"), Ok(3 * 86_400_000));
        assert_eq!(parse_duration("1w"), Ok(7 * 86_400_000));
        assert_eq!(parse_duration("1d12h"), Ok(36 * 3_600_000));
        assert_eq!(
            parse_duration("1w2d3h4m5s"),
            Ok(((((7 + 2) * 24 + 3) * 60 + 4) * 60 + 5) * 1000)
        );
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in [
            "",
            "3",
            "d",
            "0d",
            "3x",
            "1h1d",
            "1d1d",
            "-3d",
            "1.5d",
            "3 d",
            "99999999999999999w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
        assert!(parse_duration("1h1d")
            .unwrap_err()
            .0
            .contains("largest to smallest"));
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_duration(36 * 3_600_000), "1d12h");
        assert_eq!(format_duration(7 * 86_400_000), "1w");
        assert_eq!(format_duration(1500), "1s500ms");
        assert_eq!(format_duration(30 * 86_400_000), "30d");
        assert_eq!(format_duration(14 * 86_400_000), "2w");
    }
}
