//! Event-time parsing and UTC date arithmetic, in microseconds since the Unix epoch.

use chrono::{DateTime, NaiveDate, TimeZone};
use chrono_tz::Tz;

/// Microseconds in one day.
pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The earliest time an event may carry: 0001-01-01T00:00:00Z, in UTC microseconds.
pub const MIN_EVENT_MICROS: i64 = -62_135_596_800_000_000;
/// The latest time an event may carry: 9999-12-31T23:59:59.999999Z, in UTC microseconds.
/// Every time in between has a calendar date that Delta, Parquet, DataFusion, DuckDB and
/// Spark all write and read, so every later stage can store and bucket it.
pub const MAX_EVENT_MICROS: i64 = 253_402_300_799_999_999;

/// `us` if it lies within [`MIN_EVENT_MICROS`] ..= [`MAX_EVENT_MICROS`].
fn in_range(us: i64) -> Option<i64> {
    (MIN_EVENT_MICROS..=MAX_EVENT_MICROS)
        .contains(&us)
        .then_some(us)
}

/// Parses an RFC 3339 timestamp with offset (`2026-11-20T10:00:00+09:00`) to UTC microseconds;
/// `None` outside years 1 to 9999 (UTC).
pub fn parse_rfc3339_micros(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|t| in_range(t.timestamp_micros()))
}

/// Integer epoch milliseconds to microseconds; `None` outside years 1 to 9999 (UTC).
pub fn millis_to_micros(ms: i64) -> Option<i64> {
    ms.checked_mul(1000).and_then(in_range)
}

/// The UTC date (days since 1970-01-01) holding `us`.
pub fn date_of_micros(us: i64) -> i32 {
    i32::try_from(us.div_euclid(MICROS_PER_DAY)).unwrap_or(if us < 0 { i32::MIN } else { i32::MAX })
}

/// `YYYY-MM-DD` of a day number, as Delta writes partition values.
pub fn format_date(days: i32) -> String {
    NaiveDate::from_epoch_days(days).map_or_else(|| days.to_string(), |d| d.to_string())
}

/// Now, in UTC microseconds.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// UTC microseconds as RFC 3339 with a `Z` suffix.
pub fn format_micros(us: i64) -> String {
    DateTime::from_timestamp_micros(us).map_or_else(
        || us.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    )
}

/// The start of the day in `zone` that holds `us`: local midnight, or the first local time of
/// that day when a daylight-saving change skips midnight. `None` outside chrono's range.
pub fn zoned_day_start(us: i64, zone: Tz) -> Option<i64> {
    let date = DateTime::from_timestamp_micros(us)?
        .with_timezone(&zone)
        .date_naive();
    let midnight = date.and_hms_opt(0, 0, 0)?;
    // A skipped midnight is at most a few hours of one day; the day starts at the first
    // minute that exists.
    (0..=24 * 60).find_map(|minute| {
        let local = midnight + chrono::Duration::minutes(minute);
        zone.from_local_datetime(&local)
            .earliest()
            .map(|t| t.timestamp_micros())
    })
}

/// UTC microseconds as RFC 3339 with `zone`'s offset at that instant
/// (`2026-03-08T00:00:00-05:00`).
pub fn format_micros_in(us: i64, zone: Tz) -> String {
    DateTime::from_timestamp_micros(us).map_or_else(
        || us.to_string(),
        |t| {
            t.with_timezone(&zone)
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoned_days_start_at_local_midnight_across_daylight_saving() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let at = |t: &str| parse_rfc3339_micros(t).unwrap();
        // 2025-03-09 has 23 hours in New York, 2025-11-02 has 25.
        assert_eq!(
            zoned_day_start(at("2025-03-09T23:59:59-04:00"), ny),
            Some(at("2025-03-09T00:00:00-05:00"))
        );
        assert_eq!(
            zoned_day_start(at("2025-11-02T23:30:00-05:00"), ny),
            Some(at("2025-11-02T00:00:00-04:00"))
        );
        assert_eq!(
            zoned_day_start(at("2025-11-03T00:00:00-05:00"), ny),
            Some(at("2025-11-03T00:00:00-05:00"))
        );
        // Havana's clocks skip from midnight to one o'clock on 2025-03-09.
        let havana: Tz = "America/Havana".parse().unwrap();
        assert_eq!(
            zoned_day_start(at("2025-03-09T12:00:00-04:00"), havana),
            Some(at("2025-03-09T01:00:00-04:00"))
        );
        assert_eq!(
            format_micros_in(at("2025-03-09T05:00:00Z"), ny),
            "2025-03-09T00:00:00-05:00"
        );
        let utc: Tz = "UTC".parse().unwrap();
        assert_eq!(format_micros_in(0, utc), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn times_outside_years_1_to_9999_are_refused() {
        assert_eq!(
            parse_rfc3339_micros("0001-01-01T00:00:00Z"),
            Some(MIN_EVENT_MICROS)
        );
        assert_eq!(
            parse_rfc3339_micros("9999-12-31T23:59:59.999999Z"),
            Some(MAX_EVENT_MICROS)
        );
        assert_eq!(parse_rfc3339_micros("0001-01-01T00:00:00+00:01"), None);
        assert_eq!(parse_rfc3339_micros("9999-12-31T23:59:59-00:01"), None);
        assert_eq!(millis_to_micros(-9_000_000_000_000_000), None);
        assert_eq!(millis_to_micros(253_402_300_800_000), None);
        assert_eq!(
            millis_to_micros(253_402_300_799_999),
            Some(253_402_300_799_999_000)
        );
        for us in [MIN_EVENT_MICROS, MAX_EVENT_MICROS] {
            assert!(format_date(date_of_micros(us)).len() == 10, "{us}");
        }
    }

    #[test]
    fn offsets_are_converted_to_utc() {
        let a = parse_rfc3339_micros("2026-11-20T09:00:00+09:00").unwrap();
        let b = parse_rfc3339_micros("2026-11-20T00:00:00Z").unwrap();
        assert_eq!(a, b);
        assert_eq!(format_date(date_of_micros(a)), "2026-11-20");
        assert_eq!(format_micros(b), "2026-11-20T00:00:00Z");
    }

    #[test]
    fn dates_before_the_epoch_round_down() {
        assert_eq!(date_of_micros(-1), -1);
        assert_eq!(format_date(-1), "1969-12-31");
    }

    #[test]
    fn no_offset_is_not_rfc3339() {
        assert!(parse_rfc3339_micros("2026-11-20T00:00:00").is_none());
        assert!(parse_rfc3339_micros("yesterday").is_none());
    }
}
