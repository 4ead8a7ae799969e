//! Why an event was refused: one code per quarantined event.

use std::fmt;

/// The reason code stored with a quarantined event and returned by `POST /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not parseable as JSON (including an empty or null payload).
    MalformedJson,
    /// Not UTF-8.
    InvalidUtf8,
    /// JSON, but not an object.
    NotAnObject,
    /// Larger than `max_event_bytes`.
    TooLarge,
    /// A required field (or the id or time field) is absent or null.
    MissingField(String),
    /// A present field does not have its declared type.
    WrongType(String),
    /// The time field is a string that is not RFC 3339, or a number that is not integer ms.
    BadTimestamp,
    /// The event time is beyond the message's timestamp + `max_future`.
    TimeInFuture,
    /// The event time is before the message's timestamp − `max_past`.
    TimeTooOld,
    /// A record of an imported file that cannot be read as one event: a CSV row whose number
    /// of fields differs from the header's.
    MalformedRecord,
    /// Accepted by the validator, but a later stage (named) could not handle it; the event
    /// is quarantined there instead of stopping ingestion.
    Unprocessable(&'static str),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MalformedJson => f.write_str("malformed_json"),
            Self::InvalidUtf8 => f.write_str("invalid_utf8"),
            Self::NotAnObject => f.write_str("not_an_object"),
            Self::TooLarge => f.write_str("too_large"),
            Self::MissingField(name) => write!(f, "missing_field:{name}"),
            Self::WrongType(name) => write!(f, "wrong_type:{name}"),
            Self::BadTimestamp => f.write_str("bad_timestamp"),
            Self::TimeInFuture => f.write_str("time_in_future"),
            Self::TimeTooOld => f.write_str("time_too_old"),
            Self::MalformedRecord => f.write_str("malformed_record"),
            Self::Unprocessable(stage) => write!(f, "unprocessable:{stage}"),
        }
    }
}
