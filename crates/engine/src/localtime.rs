//! Local wall-clock arithmetic in a customer's time zone, with daylight-saving gaps and folds.

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone,
    Timelike,
};
use chrono_tz::Tz;
use journeyd_types::Millis;

fn local(tz: Tz, t: Millis) -> NaiveDateTime {
    DateTime::from_timestamp_millis(t)
        .unwrap_or_default()
        .with_timezone(&tz)
        .naive_local()
}

/// Minutes after local midnight at `t`.
pub fn minute_of_day(tz: Tz, t: Millis) -> u16 {
    let l = local(tz, t);
    (l.hour() * 60 + l.minute()) as u16
}

/// The instant of a local date and time. In a fold (clocks go back) it is the earlier instant;
/// in a gap (clocks go forward) it is the first instant after the gap.
fn instant(tz: Tz, date: NaiveDate, minute_of_day: u16) -> Millis {
    let time = NaiveTime::from_hms_opt(
        u32::from(minute_of_day) / 60,
        u32::from(minute_of_day) % 60,
        0,
    )
    .unwrap_or_default();
    let mut naive = date.and_time(time);
    for _ in 0..=24 * 4 {
        match tz.from_local_datetime(&naive) {
            LocalResult::Single(t) => return t.timestamp_millis(),
            LocalResult::Ambiguous(a, _) => return a.timestamp_millis(),
            LocalResult::None => naive += Duration::minutes(15),
        }
    }
    tz.from_utc_datetime(&naive).timestamp_millis()
}

/// The moment a date wait ends: the local calendar date of `value` (a `"YYYY-MM-DD"` string,
/// or an RFC 3339 timestamp string taken in `tz`), `offset_days` later, at `minute_of_day`
/// local time. Why not, when `value` is no such string.
pub fn date_moment(
    tz: Tz,
    value: &journeyd_types::Value,
    offset_days: i32,
    minute_of_day: u16,
) -> Result<Millis, String> {
    let journeyd_types::Value::String(text) = value else {
        return Err(format!("is not a date string: {value:?}"));
    };
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .or_else(|| {
            DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| t.with_timezone(&tz).date_naive())
        })
        .ok_or_else(|| {
            format!("is not a date (\"YYYY-MM-DD\" or an RFC 3339 timestamp): \"{text}\"")
        })?;
    let day = date
        .checked_add_signed(Duration::days(i64::from(offset_days)))
        .ok_or_else(|| format!("is out of range with an offset of {offset_days} days"))?;
    Ok(instant(tz, day, minute_of_day))
}

/// The first instant strictly after `after` whose local time is `minute_of_day` on an allowed
/// weekday (`days`: bit 0 = Monday ... bit 6 = Sunday).
pub fn next_local_time(tz: Tz, after: Millis, minute_of_day: u16, days: u8) -> Millis {
    let today = local(tz, after).date();
    let days = if days & 0x7f == 0 { 0x7f } else { days };
    for offset in 0..=8 {
        let date = today + Duration::days(offset);
        if days & (1 << date.weekday().num_days_from_monday()) == 0 {
            continue;
        }
        let t = instant(tz, date, minute_of_day);
        if t > after {
            return t;
        }
    }
    // Unreachable with at least one allowed day; fall back to a week later.
    after + 7 * 86_400_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use journeyd_types::time::{format_rfc3339, parse_rfc3339};

    fn at(s: &str) -> Millis {
        parse_rfc3339(s).unwrap()
    }

    #[test]
    fn next_time_is_strictly_later_and_local() {
        let ny: Tz = "America/New_York".parse().unwrap();
        // 2026-01-05 is a Monday; 09:00 in New York is 14:00Z in winter.
        assert_eq!(
            format_rfc3339(next_local_time(ny, at("2026-01-05T13:00:00Z"), 540, 0x7f)),
            "2026-01-05T14:00:00Z"
        );
        assert_eq!(
            format_rfc3339(next_local_time(ny, at("2026-01-05T14:00:00Z"), 540, 0x7f)),
            "2026-01-06T14:00:00Z"
        );
        // Saturday only (bit 5).
        assert_eq!(
            format_rfc3339(next_local_time(ny, at("2026-01-05T13:00:00Z"), 540, 1 << 5)),
            "2026-01-10T14:00:00Z"
        );
    }

    #[test]
    fn daylight_saving_gaps_and_folds() {
        let london: Tz = "Europe/London".parse().unwrap();
        // 2026-03-29 01:30 does not exist in London: the clocks jump from 01:00 to 02:00 (BST).
        assert_eq!(
            format_rfc3339(next_local_time(
                london,
                at("2026-03-28T12:00:00Z"),
                90,
                0x7f
            )),
            "2026-03-29T01:00:00Z"
        );
        // 2026-10-25 01:30 happens twice; the earlier (BST, 00:30Z) is taken.
        assert_eq!(
            format_rfc3339(next_local_time(
                london,
                at("2026-10-24T12:00:00Z"),
                90,
                0x7f
            )),
            "2026-10-25T00:30:00Z"
        );
        assert_eq!(
            minute_of_day(london, at("2026-07-01T20:30:00Z")),
            21 * 60 + 30
        );
    }
}
