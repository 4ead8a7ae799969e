//! Arrow schemas of the tables the archiver writes, derived from the source config.
//!
//! Timestamps are UTC microseconds, the unit of Delta's `timestamp` type, so that Spark,
//! DuckDB and delta-rs read them without a cast.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::source::{FieldType, SourceConfig};

/// UTC date of the event time; the raw table's partition column.
pub const EVENT_DATE: &str = "event_date";
/// Kafka partition the event was read from.
pub const KAFKA_PARTITION: &str = "kafka_partition";
/// Kafka offset the event was read from.
pub const KAFKA_OFFSET: &str = "kafka_offset";
/// When the archiver validated the event.
pub const INGEST_TIME: &str = "ingest_time";
/// Undeclared fields as a JSON object, when `keep_undeclared` is set.
pub const UNDECLARED: &str = "_undeclared";
/// Columns lambdaflow adds to the raw table; declared fields may not use these names.
pub const RESERVED_COLUMNS: [&str; 5] = [
    EVENT_DATE,
    KAFKA_PARTITION,
    KAFKA_OFFSET,
    INGEST_TIME,
    UNDECLARED,
];

/// UTC date of ingestion; the quarantine table's partition column.
pub const INGEST_DATE: &str = "ingest_date";

/// The Arrow type of every timestamp column.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The Arrow type of a declared field's column.
pub fn field_type(kind: FieldType) -> DataType {
    match kind {
        FieldType::String => DataType::Utf8,
        FieldType::Int => DataType::Int64,
        FieldType::Float => DataType::Float64,
        FieldType::Bool => DataType::Boolean,
        FieldType::Timestamp => timestamp_type(),
    }
}

/// The columns of an event as users declare it: the id, the time and every declared field.
pub fn event_fields(source: &SourceConfig) -> Vec<Field> {
    let mut fields = vec![
        Field::new(&source.id_field, DataType::Utf8, false),
        Field::new(&source.time_field, timestamp_type(), false),
    ];
    fields.extend(
        source
            .fields
            .iter()
            .map(|f| Field::new(&f.name, field_type(f.kind), true)),
    );
    fields
}

/// The raw table: id, time, declared fields, optionally undeclared fields, then the columns
/// lambdaflow adds. Partitioned by [`EVENT_DATE`].
pub fn raw_schema(source: &SourceConfig) -> SchemaRef {
    let mut fields = event_fields(source);
    if source.keep_undeclared {
        fields.push(Field::new(UNDECLARED, DataType::Utf8, true));
    }
    fields.extend([
        Field::new(KAFKA_PARTITION, DataType::Int32, false),
        Field::new(KAFKA_OFFSET, DataType::Int64, false),
        Field::new(INGEST_TIME, timestamp_type(), false),
        Field::new(EVENT_DATE, DataType::Date32, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// The quarantine table: what was received, why it was refused and where it came from.
/// Partitioned by [`INGEST_DATE`].
pub fn quarantine_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("raw", DataType::Binary, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(INGEST_TIME, timestamp_type(), false),
        Field::new(INGEST_DATE, DataType::Date32, false),
    ]))
}
