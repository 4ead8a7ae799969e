//! How long the lake keeps each table's dates: `[retention]` for the raw and quarantine
//! tables, `retention` on each view.
//!
//! Retention works on whole date partitions, as Druid's drop rules and Pinot's retention work
//! on whole segments: a date is expired once all of it is older than the retention, so a
//! partition is deleted in one metadata-only Delta commit and never rewritten. The dates are
//! the tables' partition dates: the event date for raw and views, the ingest date for the
//! quarantine.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::timestamp::{MICROS_PER_DAY, date_of_micros};

/// How long a table keeps a date.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Retention {
    /// Never expires (`"forever"`, the default).
    #[default]
    Forever,
    /// Dates wholly older than this, counted back from now, expire (`"400d"`).
    For(Duration),
}

impl Retention {
    /// The oldest date (days since the epoch) a table keeps at `now_micros`: every date before
    /// it ends more than the retention ago. `None` keeps everything.
    pub fn cutoff(self, now_micros: i64) -> Option<i32> {
        match self {
            Self::Forever => None,
            Self::For(keep) => {
                let keep = i64::try_from(keep.as_micros()).unwrap_or(i64::MAX);
                Some(date_of_micros(now_micros.saturating_sub(keep)))
            }
        }
    }

    /// When `date` (days since the epoch) expires, in microseconds since the epoch: the moment
    /// [`Retention::cutoff`] passes it. `None` for a table kept forever.
    pub fn expires_at(self, date: i32) -> Option<i64> {
        match self {
            Self::Forever => None,
            Self::For(keep) => {
                let keep = i64::try_from(keep.as_micros()).unwrap_or(i64::MAX);
                Some(
                    (i64::from(date) + 1)
                        .saturating_mul(MICROS_PER_DAY)
                        .saturating_add(keep),
                )
            }
        }
    }

    /// Whether a date can ever expire.
    pub fn is_forever(&self) -> bool {
        *self == Self::Forever
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Forever => f.write_str("forever"),
            Self::For(keep) if keep.subsec_nanos() == 0 && keep.as_secs() % 86_400 == 0 => {
                write!(f, "{}d", keep.as_secs() / 86_400)
            }
            Self::For(keep) => write!(f, "{}", humantime::format_duration(*keep)),
        }
    }
}

impl Serialize for Retention {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "forever" {
            return Ok(Self::Forever);
        }
        humantime::parse_duration(&text)
            .map(Self::For)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is neither \"forever\" nor a duration like \"400d\": {e}"
                ))
            })
    }
}

/// `[retention]`: how long the raw and quarantine tables keep their dates. Views say it on
/// their own (`[[views]] retention`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// The master dataset, by event date. The views keep the dates computed from it.
    #[serde(default)]
    pub raw: Retention,
    /// Refused events, by ingest date.
    #[serde(default)]
    pub quarantine: Retention,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::parse_rfc3339_micros;

    fn at(text: &str) -> i64 {
        parse_rfc3339_micros(text).expect("valid time")
    }

    fn day(text: &str) -> i32 {
        date_of_micros(at(&format!("{text}T00:00:00Z")))
    }

    #[derive(Debug, Deserialize)]
    struct Holder {
        keep: Retention,
    }

    fn parse(text: &str) -> Result<Retention, toml::de::Error> {
        toml::from_str::<Holder>(&format!("keep = \"{text}\"")).map(|h| h.keep)
    }

    #[test]
    fn forever_keeps_every_date() {
        assert_eq!(parse("forever").unwrap(), Retention::Forever);
        assert_eq!(Retention::Forever.cutoff(at("2026-12-01T12:00:00Z")), None);
        assert_eq!(RetentionConfig::default().raw, Retention::Forever);
    }

    #[test]
    fn a_date_expires_once_all_of_it_is_older_than_the_retention() {
        let two_days = parse("2d").unwrap();
        assert_eq!(two_days, Retention::For(Duration::from_secs(2 * 86_400)));
        // At noon on the 1st, two days back is noon on the 29th: the 29th still has hours
        // within the retention, the 28th does not.
        assert_eq!(
            two_days.cutoff(at("2026-12-01T12:00:00Z")),
            Some(day("2026-11-29"))
        );
        assert_eq!(
            two_days.cutoff(at("2026-12-01T00:00:00Z")),
            Some(day("2026-11-29"))
        );
        assert_eq!(
            parse("0s").unwrap().cutoff(at("2026-12-01T00:00:01Z")),
            Some(day("2026-12-01"))
        );
    }

    #[test]
    fn bad_retentions_say_what_is_accepted() {
        let error = parse("a year").unwrap_err().to_string();
        assert!(
            error.contains("neither \"forever\" nor a duration"),
            "{error}"
        );
    }

    #[test]
    fn retentions_print_as_they_are_written() {
        assert_eq!(parse("400d").unwrap().to_string(), "400d");
        assert_eq!(parse("36h").unwrap().to_string(), "1day 12h");
        assert_eq!(Retention::Forever.to_string(), "forever");
    }

    #[test]
    fn a_date_expires_when_the_cutoff_passes_it() {
        let keep = Retention::For(Duration::from_secs(3 * 86_400));
        let date = 20_000;
        let at = keep.expires_at(date).unwrap();
        assert_eq!(keep.cutoff(at - 1), Some(date));
        assert_eq!(keep.cutoff(at), Some(date + 1));
        assert_eq!(Retention::Forever.expires_at(date), None);
    }
}
