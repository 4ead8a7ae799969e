//! The event validator and cleaner: message bytes in, Arrow out.
//!
//! One implementation serves the archiver, the speed layer and the HTTP collector, so that
//! every layer agrees on what is valid and on what a clean event looks like. It is batch
//! oriented: a [`BatchBuilder`] takes many messages and yields one [`RecordBatch`] of clean
//! events (masked, normalised, typed, with their Kafka coordinates and UTC event date) and one
//! of rejects with their reason codes.
//!
//! Parsing walks the JSON once with a `serde` visitor that keeps only the declared keys, as
//! borrowed slices of the input where it can: no per-event map, no per-field allocation for
//! values that need no normalising.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder,
    Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{Int32Type, Int64Type};
use arrow::record_batch::RecordBatch;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::FilterError;
use crate::layout::ViewFilters;
use crate::mask::{self, PayloadMasker};
use crate::reason::Reason;
use crate::schema;
use crate::source::{FieldDef, FieldType, SourceConfig};
use crate::timestamp::{date_of_micros, millis_to_micros, parse_rfc3339_micros};
use crate::view::ViewDef;

/// Where a message came from: its Kafka partition and offset (or, for the HTTP collector, its
/// index in the request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coordinates {
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset within the partition.
    pub offset: i64,
}

/// The outcome of validating a batch of messages.
#[derive(Debug, Clone)]
pub struct Validated {
    /// Clean events, in [`schema::raw_schema`].
    pub events: RecordBatch,
    /// Refused messages, in [`schema::quarantine_schema`].
    pub rejects: RecordBatch,
}

/// A valid event as seen by [`Validator::check`]: enough to key and route it.
#[derive(Debug)]
pub struct Checked<'a> {
    /// The event id.
    pub id: Cow<'a, str>,
    /// Event time, UTC microseconds.
    pub time_us: i64,
    values: Vec<Scalar<'a>>,
    undeclared: Vec<(Cow<'a, str>, &'a RawValue)>,
}

/// Validates and cleans events of one source. Cheap to share: build once per process.
#[derive(Debug, Clone)]
pub struct Validator {
    source: Arc<SourceConfig>,
    slots: HashMap<String, Slot>,
    masker: PayloadMasker,
    max_future_us: i64,
    max_past_us: Option<i64>,
    schema: arrow::datatypes::SchemaRef,
    filters: Option<ViewFilters>,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Id,
    Time,
    Field(usize),
}

impl Validator {
    /// A validator for `source`.
    pub fn new(source: &SourceConfig) -> Self {
        let mut slots: HashMap<String, Slot> = source
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), Slot::Field(i)))
            .collect();
        slots.insert(source.id_field.clone(), Slot::Id);
        slots.insert(source.time_field.clone(), Slot::Time);
        Self {
            source: Arc::new(source.clone()),
            slots,
            masker: PayloadMasker::new(source),
            max_future_us: i64::try_from(source.max_future.as_micros()).unwrap_or(i64::MAX),
            max_past_us: source
                .max_past
                .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            schema: schema::raw_schema(source),
            filters: None,
        }
    }

    /// Also refuses, as `unprocessable:view_filter`, events that the filter of one of `views`
    /// cannot evaluate ([`ViewFilters`]), so that no layer stops on them. The archiver and the
    /// speed layer validate with the views of their config.
    pub fn with_views(mut self, views: &[ViewDef]) -> Result<Self, FilterError> {
        let filters = ViewFilters::new(&self.source, views, &self.schema)?;
        self.filters = (!filters.is_empty()).then_some(filters);
        Ok(self)
    }

    /// The schema of [`Validated::events`].
    pub fn schema(&self) -> &arrow::datatypes::SchemaRef {
        &self.schema
    }

    /// The source this validator checks.
    pub fn source(&self) -> &SourceConfig {
        &self.source
    }

    /// Checks one payload against the validation rules at time `now_us`: the Kafka message's timestamp
    /// (the HTTP collector's arrival time), so that the verdict never depends on when a layer
    /// reads the message.
    pub fn check<'a>(&self, payload: Option<&'a [u8]>, now_us: i64) -> Result<Checked<'a>, Reason> {
        let bytes = payload.ok_or(Reason::MalformedJson)?;
        if bytes.len() > self.source.max_event_bytes {
            return Err(Reason::TooLarge);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| Reason::InvalidUtf8)?;
        let in_object = Cell::new(false);
        let seed = EventSeed {
            validator: self,
            in_object: &in_object,
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = seed
            .deserialize(&mut de)
            .and_then(|p| de.end().map(|()| p))
            .map_err(|e| {
                if e.classify() == serde_json::error::Category::Data && !in_object.get() {
                    Reason::NotAnObject
                } else {
                    Reason::MalformedJson
                }
            })?;
        let source = &*self.source;
        let id = match parsed.id {
            Scalar::Str(id) => id,
            Scalar::Null => return Err(Reason::MissingField(source.id_field.clone())),
            _ => return Err(Reason::WrongType(source.id_field.clone())),
        };
        let time_us = match parsed.time {
            Scalar::Str(s) => parse_rfc3339_micros(&s).ok_or(Reason::BadTimestamp)?,
            Scalar::Int(ms) => millis_to_micros(ms).ok_or(Reason::BadTimestamp)?,
            Scalar::UInt(_) | Scalar::Float(_) => return Err(Reason::BadTimestamp),
            Scalar::Null => return Err(Reason::MissingField(source.time_field.clone())),
            Scalar::Bool(_) | Scalar::Compound => {
                return Err(Reason::WrongType(source.time_field.clone()));
            }
        };
        if time_us > now_us.saturating_add(self.max_future_us) {
            return Err(Reason::TimeInFuture);
        }
        if let Some(max_past) = self.max_past_us
            && time_us < now_us.saturating_sub(max_past)
        {
            return Err(Reason::TimeTooOld);
        }
        for (def, value) in source.fields.iter().zip(&parsed.values) {
            check_value(def, value)?;
        }
        Ok(Checked {
            id,
            time_us,
            values: parsed.values,
            undeclared: parsed.undeclared,
        })
    }

    /// A builder that collects messages validated at `now_us` (also their ingest time) from
    /// `topic`.
    pub fn batch_builder<'v>(&'v self, topic: &'v str, now_us: i64) -> BatchBuilder<'v> {
        BatchBuilder::new(self, topic, now_us)
    }
}

fn check_value(def: &FieldDef, value: &Scalar<'_>) -> Result<(), Reason> {
    let ok = match (def.kind, value) {
        (_, Scalar::Null) => {
            return if def.required {
                Err(Reason::MissingField(def.name.clone()))
            } else {
                Ok(())
            };
        }
        (FieldType::String, Scalar::Str(_)) => true,
        (FieldType::Int, Scalar::Int(_)) => true,
        (FieldType::Float, Scalar::Int(_) | Scalar::UInt(_) | Scalar::Float(_)) => true,
        (FieldType::Bool, Scalar::Bool(_)) => true,
        (FieldType::Timestamp, Scalar::Str(s)) => parse_rfc3339_micros(s).is_some(),
        (FieldType::Timestamp, Scalar::Int(ms)) => millis_to_micros(*ms).is_some(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Reason::WrongType(def.name.clone()))
    }
}

/// Collects clean events and rejects column by column.
pub struct BatchBuilder<'v> {
    validator: &'v Validator,
    topic: &'v str,
    now_us: i64,
    id: StringBuilder,
    time: TimestampMicrosecondBuilder,
    fields: Vec<ColumnBuilder>,
    undeclared: Option<StringBuilder>,
    partition: Int32Builder,
    offset: Int64Builder,
    rejects: RejectBuilder,
    /// The payloads of the valid events, kept only while view filters may still refuse one.
    payloads: Option<BinaryBuilder>,
    scratch: String,
    valid: usize,
}

impl fmt::Debug for BatchBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchBuilder")
            .field("valid", &self.valid)
            .field("rejected", &self.rejects.len)
            .finish()
    }
}

enum ColumnBuilder {
    Str(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl ColumnBuilder {
    fn new(kind: FieldType) -> Self {
        match kind {
            FieldType::String => Self::Str(StringBuilder::new()),
            FieldType::Int => Self::Int(Int64Builder::new()),
            FieldType::Float => Self::Float(Float64Builder::new()),
            FieldType::Bool => Self::Bool(BooleanBuilder::new()),
            FieldType::Timestamp => {
                Self::Timestamp(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Str(b) => Arc::new(b.finish()),
            Self::Int(b) => Arc::new(b.finish()),
            Self::Float(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

struct RejectBuilder {
    raw: BinaryBuilder,
    reason: StringBuilder,
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    len: usize,
}

impl<'v> BatchBuilder<'v> {
    fn new(validator: &'v Validator, topic: &'v str, now_us: i64) -> Self {
        Self {
            validator,
            topic,
            now_us,
            id: StringBuilder::new(),
            time: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            fields: validator
                .source
                .fields
                .iter()
                .map(|f| ColumnBuilder::new(f.kind))
                .collect(),
            undeclared: validator.source.keep_undeclared.then(StringBuilder::new),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            rejects: RejectBuilder {
                raw: BinaryBuilder::new(),
                reason: StringBuilder::new(),
                topic: StringBuilder::new(),
                partition: Int32Builder::new(),
                offset: Int64Builder::new(),
                len: 0,
            },
            payloads: validator.filters.is_some().then(BinaryBuilder::new),
            scratch: String::new(),
            valid: 0,
        }
    }

    /// Validates one message at the builder's time and adds it to the events or the rejects.
    pub fn push(&mut self, payload: Option<&[u8]>, at: Coordinates) -> Result<(), Reason> {
        self.push_message(payload, at, None)
    }

    /// Validates one Kafka message against its timestamp (`message_time_us`; the builder's
    /// time when the message has none) and adds it to the events or the rejects. The ingest
    /// time stays the builder's.
    pub fn push_message(
        &mut self,
        payload: Option<&[u8]>,
        at: Coordinates,
        message_time_us: Option<i64>,
    ) -> Result<(), Reason> {
        let now = message_time_us.unwrap_or(self.now_us);
        match self.validator.check(payload, now) {
            Ok(event) => {
                self.append(&event, at);
                if let Some(payloads) = &mut self.payloads {
                    payloads.append_option(payload);
                }
                Ok(())
            }
            Err(reason) => {
                self.reject(payload, &reason, at);
                Err(reason)
            }
        }
    }

    /// Adds a message refused before it could be validated (a file record that is not one
    /// event) to the rejects, with `reason`.
    pub fn push_rejected(&mut self, payload: Option<&[u8]>, reason: &Reason, at: Coordinates) {
        self.reject(payload, reason, at);
    }

    /// Messages pushed so far.
    pub fn len(&self) -> usize {
        self.valid + self.rejects.len
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn append(&mut self, event: &Checked<'_>, at: Coordinates) {
        self.id.append_value(&event.id);
        self.time.append_value(event.time_us);
        for ((def, value), column) in self
            .validator
            .source
            .fields
            .iter()
            .zip(&event.values)
            .zip(&mut self.fields)
        {
            append_value(column, def, value);
        }
        if let Some(builder) = &mut self.undeclared {
            if event.undeclared.is_empty() {
                builder.append_null();
            } else {
                self.scratch.clear();
                self.scratch.push('{');
                for (i, (key, raw)) in event.undeclared.iter().enumerate() {
                    if i > 0 {
                        self.scratch.push(',');
                    }
                    self.scratch
                        .push_str(&serde_json::to_string(key).expect("a string serialises"));
                    self.scratch.push(':');
                    self.scratch.push_str(raw.get());
                }
                self.scratch.push('}');
                builder.append_value(&self.scratch);
            }
        }
        self.partition.append_value(at.partition);
        self.offset.append_value(at.offset);
        self.valid += 1;
    }

    fn reject(&mut self, payload: Option<&[u8]>, reason: &Reason, at: Coordinates) {
        let r = &mut self.rejects;
        match payload {
            Some(bytes) => {
                let masked = self.validator.masker.mask(bytes);
                let limit = masked.len().min(self.validator.source.max_event_bytes);
                r.raw.append_value(&masked[..limit]);
            }
            None => r.raw.append_null(),
        }
        r.reason.append_value(reason.to_string());
        r.topic.append_value(self.topic);
        r.partition.append_value(at.partition);
        r.offset.append_value(at.offset);
        r.len += 1;
    }

    /// The clean events and the rejects as record batches.
    pub fn finish(mut self) -> Validated {
        let n = self.valid;
        let time = self.time.finish();
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.id.finish()), Arc::new(time.clone())];
        columns.extend(self.fields.iter_mut().map(ColumnBuilder::finish));
        if let Some(b) = &mut self.undeclared {
            columns.push(Arc::new(b.finish()));
        }
        let now_us = self.now_us;
        let ingest = |len: usize| {
            Arc::new(
                arrow::array::TimestampMicrosecondArray::from(vec![now_us; len])
                    .with_timezone("UTC"),
            ) as ArrayRef
        };
        let dates: Date32Builder =
            time.values()
                .iter()
                .fold(Date32Builder::with_capacity(n), |mut b, us| {
                    b.append_value(date_of_micros(*us));
                    b
                });
        let mut dates = dates;
        columns.extend([
            Arc::new(self.partition.finish()) as ArrayRef,
            Arc::new(self.offset.finish()),
            ingest(n),
            Arc::new(dates.finish()),
        ]);
        let mut events = RecordBatch::try_new(self.validator.schema.clone(), columns)
            .expect("columns are built to the raw schema");
        let validator = self.validator;
        if let (Some(filters), Some(mut payloads)) = (&validator.filters, self.payloads.take()) {
            let failing = filters.failing_rows(&events);
            if !failing.is_empty() {
                let payloads = payloads.finish();
                let column = |name| events.column_by_name(name).expect("a raw-table column");
                let partitions = column(schema::KAFKA_PARTITION).as_primitive::<Int32Type>();
                let offsets = column(schema::KAFKA_OFFSET).as_primitive::<Int64Type>();
                let reason = Reason::Unprocessable("view_filter");
                for &row in &failing {
                    let at = Coordinates {
                        partition: partitions.value(row),
                        offset: offsets.value(row),
                    };
                    self.reject(Some(payloads.value(row)), &reason, at);
                }
                let keep: arrow::array::BooleanArray = (0..events.num_rows())
                    .map(|row| Some(failing.binary_search(&row).is_err()))
                    .collect();
                events = arrow::compute::filter_record_batch(&events, &keep)
                    .expect("a mask as long as the batch");
            }
        }

        let r = &mut self.rejects;
        let today = date_of_micros(self.now_us);
        let rejects = RecordBatch::try_new(
            schema::quarantine_schema(),
            vec![
                Arc::new(r.raw.finish()),
                Arc::new(r.reason.finish()),
                Arc::new(r.topic.finish()),
                Arc::new(r.partition.finish()),
                Arc::new(r.offset.finish()),
                ingest(r.len),
                Arc::new(arrow::array::Date32Array::from(vec![today; r.len])),
            ],
        )
        .expect("columns are built to the quarantine schema");
        Validated { events, rejects }
    }
}

fn append_value(column: &mut ColumnBuilder, def: &FieldDef, value: &Scalar<'_>) {
    match (column, value) {
        (ColumnBuilder::Str(b), Scalar::Str(s)) => {
            let clean = mask::normalize(s, def.normalize);
            if def.mask.is_some() {
                let mut buf = [0u8; 64];
                b.append_value(mask::sha256_hex(clean.as_bytes(), &mut buf));
            } else {
                b.append_value(clean);
            }
        }
        (ColumnBuilder::Int(b), Scalar::Int(v)) => b.append_value(*v),
        (ColumnBuilder::Float(b), Scalar::Int(v)) => b.append_value(*v as f64),
        (ColumnBuilder::Float(b), Scalar::UInt(v)) => b.append_value(*v as f64),
        (ColumnBuilder::Float(b), Scalar::Float(v)) => b.append_value(*v),
        (ColumnBuilder::Bool(b), Scalar::Bool(v)) => b.append_value(*v),
        (ColumnBuilder::Timestamp(b), Scalar::Str(s)) => b.append_option(parse_rfc3339_micros(s)),
        (ColumnBuilder::Timestamp(b), Scalar::Int(ms)) => b.append_option(millis_to_micros(*ms)),
        (ColumnBuilder::Str(b), _) => b.append_null(),
        (ColumnBuilder::Int(b), _) => b.append_null(),
        (ColumnBuilder::Float(b), _) => b.append_null(),
        (ColumnBuilder::Bool(b), _) => b.append_null(),
        (ColumnBuilder::Timestamp(b), _) => b.append_null(),
    }
}

/// A JSON value as far as validation cares: scalars borrowed from the input, containers only
/// noted.
#[derive(Debug, Clone, PartialEq)]
enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Compound,
}

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(Scalar::UInt(v), Scalar::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Compound)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Compound)
            }
        }
        d.deserialize_any(V)
    }
}

/// An object key, borrowed unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

struct Parsed<'a> {
    id: Scalar<'a>,
    time: Scalar<'a>,
    values: Vec<Scalar<'a>>,
    undeclared: Vec<(Cow<'a, str>, &'a RawValue)>,
}

struct EventSeed<'v> {
    validator: &'v Validator,
    in_object: &'v Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = Parsed<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = Parsed<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        self.in_object.set(true);
        let v = self.validator;
        let mut parsed = Parsed {
            id: Scalar::Null,
            time: Scalar::Null,
            values: vec![Scalar::Null; v.source.fields.len()],
            undeclared: Vec::new(),
        };
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match v.slots.get(key.as_ref()) {
                Some(Slot::Id) => parsed.id = map.next_value()?,
                Some(Slot::Time) => parsed.time = map.next_value()?,
                Some(Slot::Field(i)) => parsed.values[*i] = map.next_value()?,
                None if v.source.keep_undeclared => {
                    let raw: &'de RawValue = map.next_value()?;
                    parsed.undeclared.push((key, raw));
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::Array;
    use arrow::datatypes::{Float64Type, TimestampMicrosecondType};

    use super::*;
    use crate::config::Config;

    const NOW: i64 = 1_763_600_000_000_000; // 2025-11-20T00:53:20Z

    fn validator() -> Validator {
        Validator::new(Config::shop().source())
    }

    fn reason(payload: &[u8]) -> String {
        validator()
            .check(Some(payload), NOW)
            .unwrap_err()
            .to_string()
    }

    const GOOD: &str = r#"{"event_id":"e1","event_time":"2025-11-19T23:00:00Z","type":"Purchase","user_id":"u1","country":" kr","amount":12,"quantity":2,"email":"Ann@Example.com","extra":[1,2]}"#;

    #[test]
    fn a_good_event_is_accepted() {
        let checked = validator().check(Some(GOOD.as_bytes()), NOW).unwrap();
        assert_eq!(checked.id, "e1");
        assert_eq!(
            checked.time_us,
            parse_rfc3339_micros("2025-11-19T23:00:00Z").unwrap()
        );
    }

    #[test]
    fn every_reason_code() {
        let cases: &[(&[u8], &str)] = &[
            (b"{\"event_id\":", "malformed_json"),
            (b"", "malformed_json"),
            (b"{\"a\":1} trailing", "malformed_json"),
            (b"{\"event_id\":\"\xff\"}", "invalid_utf8"),
            (b"[1,2]", "not_an_object"),
            (b"\"str\"", "not_an_object"),
            (b"42", "not_an_object"),
            (br#"{"event_time":"2025-11-19T23:00:00Z","type":"view","user_id":"u","country":"kr"}"#, "missing_field:event_id"),
            (br#"{"event_id":7,"event_time":"2025-11-19T23:00:00Z","type":"view","user_id":"u","country":"kr"}"#, "wrong_type:event_id"),
            (br#"{"event_id":"a","type":"view","user_id":"u","country":"kr"}"#, "missing_field:event_time"),
            (br#"{"event_id":"a","event_time":null,"type":"view","user_id":"u","country":"kr"}"#, "missing_field:event_time"),
            (br#"{"event_id":"a","event_time":"yesterday","type":"view","user_id":"u","country":"kr"}"#, "bad_timestamp"),
            (br#"{"event_id":"a","event_time":1.5,"type":"view","user_id":"u","country":"kr"}"#, "bad_timestamp"),
            (br#"{"event_id":"a","event_time":-9000000000000000,"type":"view","user_id":"u","country":"kr"}"#, "bad_timestamp"),
            (br#"{"event_id":"a","event_time":"0000-12-31T23:59:59Z","type":"view","user_id":"u","country":"kr"}"#, "bad_timestamp"),
            (br#"{"event_id":"a","event_time":253402300800000,"type":"view","user_id":"u","country":"kr"}"#, "bad_timestamp"),
            (br#"{"event_id":"a","event_time":true,"type":"view","user_id":"u","country":"kr"}"#, "wrong_type:event_time"),
            (br#"{"event_id":"a","event_time":"2030-01-01T00:00:00Z","type":"view","user_id":"u","country":"kr"}"#, "time_in_future"),
            (br#"{"event_id":"a","event_time":"2025-11-19T23:00:00Z","type":"view","user_id":"u"}"#, "missing_field:country"),
            (br#"{"event_id":"a","event_time":"2025-11-19T23:00:00Z","type":"view","user_id":"u","country":null}"#, "missing_field:country"),
            (br#"{"event_id":"a","event_time":"2025-11-19T23:00:00Z","type":"view","user_id":"u","country":"kr","amount":"12"}"#, "wrong_type:amount"),
            (br#"{"event_id":"a","event_time":"2025-11-19T23:00:00Z","type":"view","user_id":"u","country":"kr","quantity":1.5}"#, "wrong_type:quantity"),
            (br#"{"event_id":"a","event_time":"2025-11-19T23:00:00Z","type":"view","user_id":["u"],"country":"kr"}"#, "wrong_type:user_id"),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                reason(payload),
                *expected,
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        let mut big = GOOD.as_bytes().to_vec();
        big.resize(70_000, b' ');
        assert_eq!(reason(&big), "too_large");
        assert_eq!(
            validator().check(None, NOW).unwrap_err(),
            Reason::MalformedJson
        );
    }

    #[test]
    fn epoch_millis_and_offsets_are_accepted() {
        let v = validator();
        let ms = br#"{"event_id":"a","event_time":1763590000000,"type":"view","user_id":"u","country":"kr"}"#;
        assert_eq!(
            v.check(Some(ms), NOW).unwrap().time_us,
            1_763_590_000_000_000
        );
        let off = br#"{"event_id":"a","event_time":"2025-11-20T08:00:00+09:00","type":"view","user_id":"u","country":"kr"}"#;
        assert_eq!(
            v.check(Some(off), NOW).unwrap().time_us,
            parse_rfc3339_micros("2025-11-19T23:00:00Z").unwrap()
        );
    }

    #[test]
    fn batches_hold_clean_masked_normalised_events() {
        let v = validator();
        let mut b = v.batch_builder("events", NOW);
        b.push(
            Some(GOOD.as_bytes()),
            Coordinates {
                partition: 3,
                offset: 17,
            },
        )
        .unwrap();
        b.push(
            Some(b"nope"),
            Coordinates {
                partition: 1,
                offset: 5,
            },
        )
        .unwrap_err();
        let out = b.finish();
        let e = &out.events;
        assert_eq!(e.num_rows(), 1);
        let col = |name: &str| e.column_by_name(name).unwrap().clone();
        assert_eq!(col("type").as_string::<i32>().value(0), "purchase");
        assert_eq!(col("country").as_string::<i32>().value(0), "KR");
        assert_eq!(col("amount").as_primitive::<Float64Type>().value(0), 12.0);
        assert_eq!(col("quantity").as_primitive::<Int64Type>().value(0), 2);
        let mut buf = [0u8; 64];
        assert_eq!(
            col("email").as_string::<i32>().value(0),
            mask::sha256_hex(b"ann@example.com", &mut buf)
        );
        assert!(col("product").is_null(0));
        assert_eq!(col("kafka_offset").as_primitive::<Int64Type>().value(0), 17);
        assert_eq!(
            col("event_date")
                .as_primitive::<arrow::datatypes::Date32Type>()
                .value(0),
            date_of_micros(parse_rfc3339_micros("2025-11-19T23:00:00Z").unwrap())
        );
        assert_eq!(
            col("ingest_time")
                .as_primitive::<TimestampMicrosecondType>()
                .value(0),
            NOW
        );

        let r = &out.rejects;
        assert_eq!(r.num_rows(), 1);
        assert_eq!(r.column(1).as_string::<i32>().value(0), "malformed_json");
        assert_eq!(r.column(0).as_binary::<i32>().value(0), b"nope");
        assert_eq!(r.column(4).as_primitive::<Int64Type>().value(0), 5);
    }

    #[test]
    fn rejected_payloads_are_masked_in_quarantine() {
        let v = validator();
        let mut b = v.batch_builder("events", NOW);
        let bad =
            br#"{"event_id":"a","email":"Secret@Example.com","event_time":"2030-01-01T00:00:00Z"}"#;
        b.push(
            Some(bad),
            Coordinates {
                partition: 0,
                offset: 0,
            },
        )
        .unwrap_err();
        let out = b.finish();
        let stored = out.rejects.column(0).as_binary::<i32>().value(0).to_vec();
        let text = String::from_utf8(stored).unwrap();
        assert!(
            !text.to_lowercase().contains("secret@example.com"),
            "{text}"
        );
    }

    #[test]
    fn undeclared_fields_are_kept_when_asked() {
        let mut source = Config::shop().source().clone();
        source.keep_undeclared = true;
        let v = Validator::new(&source);
        let mut b = v.batch_builder("events", NOW);
        b.push(
            Some(GOOD.as_bytes()),
            Coordinates {
                partition: 0,
                offset: 0,
            },
        )
        .unwrap();
        let out = b.finish();
        let extra = out
            .events
            .column_by_name(schema::UNDECLARED)
            .unwrap()
            .as_string::<i32>()
            .value(0)
            .to_owned();
        assert_eq!(extra, r#"{"extra":[1,2]}"#);
    }

    #[test]
    fn escaped_keys_and_values_are_understood() {
        let payload = br#"{"event\u005fid":"a\"b","event_time":"2025-11-19T23:00:00Z","type":"view","user_id":"u","country":"kr"}"#;
        assert_eq!(validator().check(Some(payload), NOW).unwrap().id, "a\"b");
    }

    #[test]
    fn the_message_timestamp_not_the_clock_decides() {
        let v = validator();
        let day = 86_400_000_000_i64;
        let sent = NOW - 30 * day;
        // A day and a second after the message was sent: in the future of the message,
        // although long past by the wall clock of any reader.
        let time_ms = (sent + day + 1_000_000) / 1000;
        let payload = format!(
            r#"{{"event_id":"a","event_time":{time_ms},"type":"view","user_id":"u","country":"kr"}}"#
        );
        for clock in [NOW, NOW + 365 * day, sent] {
            let mut b = v.batch_builder("events", clock);
            let at = Coordinates {
                partition: 0,
                offset: 0,
            };
            assert_eq!(
                b.push_message(Some(payload.as_bytes()), at, Some(sent)),
                Err(Reason::TimeInFuture),
                "read at {clock}"
            );
            // Sent a second later, it is at the edge of max_future and accepted.
            assert_eq!(
                b.push_message(Some(payload.as_bytes()), at, Some(sent + 1_000_000)),
                Ok(())
            );
            let out = b.finish();
            // The ingest time stays the reader's clock.
            assert_eq!(
                out.events
                    .column_by_name(schema::INGEST_TIME)
                    .unwrap()
                    .as_primitive::<TimestampMicrosecondType>()
                    .value(0),
                clock
            );
        }
        // Without a message timestamp the builder's clock is the reference.
        let mut b = v.batch_builder("events", sent);
        let at = Coordinates {
            partition: 0,
            offset: 0,
        };
        assert_eq!(
            b.push(Some(payload.as_bytes()), at),
            Err(Reason::TimeInFuture)
        );
    }

    #[test]
    fn events_older_than_max_past_are_too_old() {
        let mut source = Config::shop().source().clone();
        let payload = |us: i64| {
            format!(
                r#"{{"event_id":"a","event_time":{},"type":"view","user_id":"u","country":"kr"}}"#,
                us / 1000
            )
        };
        let old = payload(NOW - 400 * 86_400_000_000 - 1000);
        let edge = payload(NOW - 400 * 86_400_000_000);
        let ancient = r#"{"event_id":"a","event_time":"0001-01-01T00:00:00Z","type":"view","user_id":"u","country":"kr"}"#;
        // No limit without max_past.
        let v = Validator::new(&source);
        assert!(v.check(Some(old.as_bytes()), NOW).is_ok());
        assert!(v.check(Some(ancient.as_bytes()), NOW).is_ok());
        source.max_past = Some(std::time::Duration::from_secs(400 * 86_400));
        let v = Validator::new(&source);
        assert!(v.check(Some(edge.as_bytes()), NOW).is_ok());
        assert_eq!(
            v.check(Some(old.as_bytes()), NOW).unwrap_err().to_string(),
            "time_too_old"
        );
        assert_eq!(
            v.check(Some(ancient.as_bytes()), NOW).unwrap_err(),
            Reason::TimeTooOld
        );
        // A huge max_past reaches before year 1: no event is too old.
        source.max_past = Some(std::time::Duration::from_secs(u64::MAX / 4));
        let v = Validator::new(&source);
        assert!(v.check(Some(ancient.as_bytes()), NOW).is_ok());
        // Read from the config as a human duration; absent is no limit.
        let parsed: SourceConfig = toml::from_str("name = \"e\"\nmax_past = \"400d\"\n").unwrap();
        assert_eq!(
            parsed.max_past,
            Some(std::time::Duration::from_secs(400 * 86_400))
        );
        let parsed: SourceConfig = toml::from_str("name = \"e\"\n").unwrap();
        assert_eq!(parsed.max_past, None);
    }

    #[test]
    fn events_a_view_filter_cannot_evaluate_are_unprocessable() {
        let (source, mut views) = crate::view::tests::demo();
        views[0].filter = Some("type = 'purchase' AND abs(quantity) >= 0".into());
        let event = |id: &str, quantity: i64| {
            format!(
                r#"{{"event_id":"{id}","event_time":"2025-11-19T23:00:00Z","type":"purchase","user_id":"u","country":"kr","quantity":{quantity}}}"#
            )
        };
        let poison = event("poison", i64::MIN);
        let payloads = [event("a", 1), poison.clone(), event("b", i64::MAX)];
        let validate = |v: &Validator| {
            let mut b = v.batch_builder("events", NOW);
            for (offset, p) in payloads.iter().enumerate() {
                let at = Coordinates {
                    partition: 2,
                    offset: offset as i64,
                };
                let _ = b.push(Some(p.as_bytes()), at);
            }
            b.finish()
        };
        // Without the views, all three are valid.
        let plain = validate(&Validator::new(&source));
        assert_eq!(plain.events.num_rows(), 3);
        let out = validate(&Validator::new(&source).with_views(&views).unwrap());
        assert_eq!(out.events.num_rows(), 2);
        let ids = out.events.column(0).as_string::<i32>();
        assert_eq!((ids.value(0), ids.value(1)), ("a", "b"));
        let r = &out.rejects;
        assert_eq!(r.num_rows(), 1);
        assert_eq!(
            r.column(1).as_string::<i32>().value(0),
            "unprocessable:view_filter"
        );
        assert_eq!(r.column(0).as_binary::<i32>().value(0), poison.as_bytes());
        assert_eq!(
            r.column(3)
                .as_primitive::<arrow::datatypes::Int32Type>()
                .value(0),
            2
        );
        assert_eq!(r.column(4).as_primitive::<Int64Type>().value(0), 1);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_always_land_somewhere(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let v = validator();
            let mut b = v.batch_builder("events", NOW);
            let _ = b.push(Some(&bytes), Coordinates { partition: 0, offset: 0 });
            let out = b.finish();
            proptest::prop_assert_eq!(out.events.num_rows() + out.rejects.num_rows(), 1);
        }
    }
}
