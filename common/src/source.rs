//! The event source: what an event holds (its id, its time, its declared fields) and how each
//! field is cleaned before anything is stored.
//!
//! Both layers and the collector read events through these definitions; the validator, the
//! raw table's schema and the view filters are derived from them.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::humantime_serde;

/// The event source: identity, time and declared fields.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Names the raw and quarantine tables (`raw/<name>`).
    pub name: String,
    /// The Kafka topic its events arrive on; no other source may read it. In the single
    /// `[source]` form, `kafka.topic` when absent.
    #[serde(default)]
    pub topic: String,
    /// The string field that identifies an event; duplicates share it.
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// RFC 3339 string with offset, or integer epoch milliseconds.
    #[serde(default = "default_time_field")]
    pub time_field: String,
    /// Events further in the future than this are rejected with `time_in_future`. "Now" is
    /// the Kafka message's timestamp (the HTTP collector sets it to the request's arrival), so
    /// every layer and every replay judge a message alike.
    #[serde(default = "default_max_future", with = "humantime_serde")]
    pub max_future: Duration,
    /// Events older than the message's timestamp minus this are rejected with
    /// `time_too_old`; absent, there is no limit.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_past: Option<Duration>,
    /// Larger payloads are rejected with `too_large`.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Keep fields that are not declared, as a JSON object in the `_undeclared` column.
    #[serde(default)]
    pub keep_undeclared: bool,
    /// Declared fields, in column order.
    #[serde(default)]
    pub fields: Vec<FieldDef>,
}

impl SourceConfig {
    /// The oldest event date an event read at `now_us` is likely to have, a day early: what
    /// `max_past` lets through from messages stamped about now. Deduplication forgets older
    /// dates (and reloads one if a message stamped long ago still needs it). `None` without
    /// `max_past`.
    pub fn oldest_live_date(&self, now_us: i64) -> Option<i32> {
        let max_past = i64::try_from(self.max_past?.as_micros()).unwrap_or(i64::MAX);
        Some(crate::timestamp::date_of_micros(now_us.saturating_sub(max_past)) - 1)
    }

    /// The declared field called `name`, if any.
    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Checks what serde cannot: plain names, the id and time fields apart, every field
    /// declared once, cleaning only on strings. Which names lambdaflow reserves for its own
    /// columns is the schema's business, checked with the rest of the deployment.
    pub fn check(&self) -> Result<()> {
        let invalid = |key: String, message: String| Err(Error::Invalid { key, message });
        check_name("source.name", &self.name)?;
        check_name("source.id_field", &self.id_field)?;
        check_name("source.time_field", &self.time_field)?;
        if self.id_field == self.time_field {
            return invalid(
                "source.time_field".into(),
                "must differ from id_field".into(),
            );
        }
        if self.max_event_bytes == 0 {
            return invalid("source.max_event_bytes".into(), "must be positive".into());
        }
        let mut seen: HashSet<&str> = [self.id_field.as_str(), self.time_field.as_str()].into();
        for (i, f) in self.fields.iter().enumerate() {
            let key = format!("source.fields[{i}]");
            check_name(&key, &f.name)?;
            if !seen.insert(&f.name) {
                return invalid(
                    key,
                    format!(
                        "field `{}` is declared twice (or is the id or time field)",
                        f.name
                    ),
                );
            }
            if f.kind != FieldType::String && (f.normalize.is_some() || f.mask.is_some()) {
                return invalid(
                    key,
                    format!(
                        "field `{}`: normalize and mask apply to string fields only",
                        f.name
                    ),
                );
            }
        }
        Ok(())
    }

    /// The names of the id, the time and every declared field.
    pub fn column_names(&self) -> impl Iterator<Item = &str> {
        [self.id_field.as_str(), self.time_field.as_str()]
            .into_iter()
            .chain(self.fields.iter().map(|f| f.name.as_str()))
    }
}

/// One declared field of an event.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    /// JSON key and column name.
    pub name: String,
    /// Declared type; values of another type are rejected with `wrong_type:<name>`.
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// Absent or null values are rejected with `missing_field:<name>`.
    #[serde(default)]
    pub required: bool,
    /// String normalisation applied before anything is stored.
    #[serde(default)]
    pub normalize: Option<Normalize>,
    /// Masking applied after normalisation; the clear value is never stored.
    #[serde(default)]
    pub mask: Option<Mask>,
}

/// The type of a declared field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// UTF-8 string.
    String,
    /// 64-bit signed integer.
    Int,
    /// 64-bit float; integers are accepted.
    Float,
    /// true or false.
    Bool,
    /// RFC 3339 string with offset or integer epoch milliseconds; stored as UTC milliseconds.
    Timestamp,
}

impl FieldType {
    /// Whether sums and averages of this type make sense.
    pub fn is_numeric(self) -> bool {
        matches!(self, Self::Int | Self::Float)
    }
}

/// String normalisations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    /// Strip leading and trailing white space.
    Trim,
    /// Trim, then lower-case.
    Lower,
    /// Trim, then upper-case.
    Upper,
}

/// Masking functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mask {
    /// Lowercase hex SHA-256 of the (normalised) value.
    Sha256,
}

/// Names become column, table and path names: keep them to plain identifiers.
pub(crate) fn check_name(key: &str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            key: key.to_owned(),
            message: format!(
                "`{name}` must be a plain identifier: a letter or _, then letters, digits or _"
            ),
        })
    }
}

fn default_id_field() -> String {
    "event_id".into()
}
fn default_time_field() -> String {
    "event_time".into()
}
fn default_max_future() -> Duration {
    Duration::from_secs(86_400)
}
fn default_max_event_bytes() -> usize {
    1024 * 1024
}
