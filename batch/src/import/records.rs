//! Reading a file's records into the validator, a chunk at a time, off the async runtime.
//!
//! Each record becomes the JSON event the validator takes from Kafka: an NDJSON line as it
//! is, a CSV row as an object keyed by the header (a value typed by the field it fills, an
//! empty cell absent), a Parquet row as Arrow's JSON writer renders it (timestamps as RFC
//! 3339 in UTC, nulls absent). Its coordinates are partition −1 and, as offset, its line
//! (NDJSON, CSV: the header is line 1) or its row (Parquet, from 1).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use lambdaflow_common::reason::Reason;
use lambdaflow_common::source::{FieldType, SourceConfig};
use lambdaflow_common::timestamp::now_micros;
use lambdaflow_common::validate::{BatchBuilder, Coordinates, Validated, Validator};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::files::Format;

/// The partition every imported record carries: files have none.
pub const NO_PARTITION: i32 = -1;

/// Records validated into one chunk, and so committed together at most.
pub const CHUNK_RECORDS: usize = 100_000;

/// Records of a file validated, up to a line or row.
#[derive(Debug)]
pub struct Chunk {
    /// Valid events and refused records, each with its line or row as offset.
    pub validated: Validated,
    /// The last line or row read.
    pub last: i64,
    /// The records read, valid or not.
    pub records: usize,
    /// How far into the file the reading is, in bytes (estimated from rows for Parquet).
    pub bytes_done: u64,
}

/// Why reading stopped short of the file's end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read, or is not of its format at all.
    #[error("{0}")]
    File(String),
    /// The receiver went away (the import stopped).
    #[error("stopped")]
    Stopped,
}

/// Reads the first `size` bytes of `path` (what was hashed) as `format`, validating with
/// `validator` and naming the file `topic` in quarantined rows; hands each chunk to `send`.
pub fn read(
    path: &Path,
    size: u64,
    format: Format,
    validator: &Validator,
    topic: &str,
    mut send: impl FnMut(Chunk) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    let file = File::open(path).map_err(|e| ReadError::File(e.to_string()))?;
    let mut chunker = Chunker::new(validator, topic);
    let max_event_bytes = validator.source().max_event_bytes;
    match format {
        Format::Ndjson => ndjson(file.take(size), max_event_bytes, &mut chunker, &mut send)?,
        Format::Csv => csv(file.take(size), validator.source(), &mut chunker, &mut send)?,
        Format::Parquet => parquet(file, &mut chunker, &mut send)?,
    }
    chunker.flush(&mut send)
}

/// A builder that hands itself on every [`CHUNK_RECORDS`] records.
struct Chunker<'v> {
    validator: &'v Validator,
    topic: &'v str,
    builder: BatchBuilder<'v>,
    last: i64,
    bytes_done: u64,
}

impl<'v> Chunker<'v> {
    fn new(validator: &'v Validator, topic: &'v str) -> Self {
        Self {
            validator,
            topic,
            builder: validator.batch_builder(topic, now_micros()),
            last: 0,
            bytes_done: 0,
        }
    }

    fn at(offset: i64) -> Coordinates {
        Coordinates {
            partition: NO_PARTITION,
            offset,
        }
    }

    fn push(&mut self, payload: &[u8], offset: i64) {
        // A refused record is in the rejects already; the reason is not needed here.
        let _ = self.builder.push(Some(payload), Self::at(offset));
        self.last = offset;
    }

    fn refuse(&mut self, payload: &[u8], reason: &Reason, offset: i64) {
        self.builder
            .push_rejected(Some(payload), reason, Self::at(offset));
        self.last = offset;
    }

    fn maybe_send(
        &mut self,
        bytes_done: u64,
        send: &mut impl FnMut(Chunk) -> Result<(), ReadError>,
    ) -> Result<(), ReadError> {
        self.bytes_done = bytes_done;
        if self.builder.len() >= CHUNK_RECORDS {
            self.flush(send)?;
        }
        Ok(())
    }

    fn flush(
        &mut self,
        send: &mut impl FnMut(Chunk) -> Result<(), ReadError>,
    ) -> Result<(), ReadError> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let fresh = self.validator.batch_builder(self.topic, now_micros());
        let builder = std::mem::replace(&mut self.builder, fresh);
        let records = builder.len();
        send(Chunk {
            validated: builder.finish(),
            last: self.last,
            records,
            bytes_done: self.bytes_done,
        })
    }
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// One event per line; a line longer than `max_event_bytes` is refused as `too_large` (its
/// start kept) without being held whole, so a file that is one huge line costs no memory.
fn ndjson(
    file: impl Read,
    max_event_bytes: usize,
    chunker: &mut Chunker<'_>,
    send: &mut impl FnMut(Chunk) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    let unreadable = |e: std::io::Error| ReadError::File(e.to_string());
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut number = 0i64;
    let mut done = 0u64;
    // Room for the longest event, its line end and one byte more that says it is too long.
    let limit = max_event_bytes as u64 + 3;
    loop {
        line.clear();
        let n = (&mut reader)
            .take(limit)
            .read_until(b'\n', &mut line)
            .map_err(unreadable)?;
        if n == 0 {
            return Ok(());
        }
        done += n as u64;
        number += 1;
        if n as u64 == limit && line.last() != Some(&b'\n') {
            done += skip_line(&mut reader).map_err(unreadable)?;
            chunker.refuse(&line, &Reason::TooLarge, number);
        } else {
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            chunker.push(text, number);
        }
        chunker.maybe_send(done, send)?;
    }
}

/// Reads past the next line end (or to the end); the bytes read.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<u64> {
    let mut skipped = 0;
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(skipped);
        }
        match buffer.iter().position(|b| *b == b'\n') {
            Some(at) => {
                reader.consume(at + 1);
                return Ok(skipped + at as u64 + 1);
            }
            None => {
                let n = buffer.len();
                reader.consume(n);
                skipped += n as u64;
            }
        }
    }
}

/// How a CSV column's text becomes a JSON value.
#[derive(Debug, Clone, Copy)]
enum Cell {
    Text,
    Int,
    Float,
    Bool,
    /// The time field: integer milliseconds as a number, anything else as text.
    Time,
}

fn csv(
    file: impl Read,
    source: &SourceConfig,
    chunker: &mut Chunker<'_>,
    send: &mut impl FnMut(Chunk) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(Counting {
            inner: BufReader::with_capacity(1 << 20, file),
            count: 0,
        });
    let unreadable = |e: csv::Error| ReadError::File(format!("not CSV: {e}"));
    let header = reader.headers().map_err(unreadable)?.clone();
    let cells: Vec<(String, Cell)> = header
        .iter()
        .map(|name| {
            let cell = if name == source.time_field {
                Cell::Time
            } else {
                match source
                    .fields
                    .iter()
                    .find(|f| f.name == name)
                    .map(|f| f.kind)
                {
                    Some(FieldType::Int) => Cell::Int,
                    Some(FieldType::Float) => Cell::Float,
                    Some(FieldType::Bool) => Cell::Bool,
                    Some(FieldType::Timestamp) => Cell::Time,
                    Some(FieldType::String) | None => Cell::Text,
                }
            };
            let key = serde_json::to_string(name).expect("a string serialises");
            (key, cell)
        })
        .collect();
    let mut record = csv::ByteRecord::new();
    let mut json = Vec::new();
    let mut line = 1i64;
    while reader.read_byte_record(&mut record).map_err(unreadable)? {
        // The line the record starts on; past the last one when the reader does not say.
        line = record.position().map_or(line + 1, |p| p.line() as i64);
        json.clear();
        let outcome = if record.len() == cells.len() {
            csv_object(&record, &cells, &mut json)
        } else {
            Err(Reason::MalformedRecord)
        };
        match outcome {
            Ok(()) => chunker.push(&json, line),
            Err(reason) => {
                let fields: Vec<String> = record
                    .iter()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect();
                let payload = serde_json::to_vec(&fields).expect("strings serialise");
                chunker.refuse(&payload, &reason, line);
            }
        }
        let done = reader.get_ref().count;
        chunker.maybe_send(done, send)?;
    }
    Ok(())
}

/// Writes `record` as a JSON object keyed by the header; refuses text that is not UTF-8.
fn csv_object(
    record: &csv::ByteRecord,
    cells: &[(String, Cell)],
    json: &mut Vec<u8>,
) -> Result<(), Reason> {
    json.push(b'{');
    let mut first = true;
    for (value, (key, cell)) in record.iter().zip(cells) {
        if value.is_empty() {
            continue;
        }
        let text = std::str::from_utf8(value).map_err(|_| Reason::InvalidUtf8)?;
        if !first {
            json.push(b',');
        }
        first = false;
        json.extend_from_slice(key.as_bytes());
        json.push(b':');
        let written = match cell {
            Cell::Int | Cell::Time => text
                .parse::<i64>()
                .is_ok_and(|n| serde_json::to_writer(&mut *json, &n).is_ok()),
            Cell::Float => text
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .is_some_and(|f| serde_json::to_writer(&mut *json, &f).is_ok()),
            Cell::Bool => match text {
                "true" | "TRUE" | "True" => {
                    json.extend_from_slice(b"true");
                    true
                }
                "false" | "FALSE" | "False" => {
                    json.extend_from_slice(b"false");
                    true
                }
                _ => false,
            },
            Cell::Text => false,
        };
        if !written {
            // Text, or a value that is not of its field's type: the validator says which.
            serde_json::to_writer(&mut *json, text).expect("a string serialises");
        }
    }
    json.push(b'}');
    Ok(())
}

fn parquet(
    file: File,
    chunker: &mut Chunker<'_>,
    send: &mut impl FnMut(Chunk) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    let unreadable =
        |e: parquet::errors::ParquetError| ReadError::File(format!("not Parquet: {e}"));
    let size = file.metadata().map_or(0, |m| m.len());
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(unreadable)?;
    let rows = builder.metadata().file_metadata().num_rows().max(1) as u64;
    let reader = builder.with_batch_size(8192).build().map_err(unreadable)?;
    let mut row = 0i64;
    let mut json = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| ReadError::File(format!("not Parquet: {e}")))?;
        let batch = utc_timestamps(&batch).map_err(|e| ReadError::File(e.to_string()))?;
        json.clear();
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut json);
        writer
            .write(&batch)
            .map_err(|e| ReadError::File(format!("rendering rows as JSON: {e}")))?;
        writer
            .finish()
            .map_err(|e| ReadError::File(format!("rendering rows as JSON: {e}")))?;
        for line in json.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            row += 1;
            chunker.push(line, row);
            let done = u128::from(size) * row as u128 / u128::from(rows);
            chunker.maybe_send(done as u64, send)?;
        }
    }
    Ok(())
}

/// `batch` with its timestamps in UTC: a timestamp without a zone is taken as UTC, so that
/// the JSON writer renders every one as RFC 3339 with an offset.
fn utc_timestamps(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let schema = batch.schema();
    if !schema
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Timestamp(_, None)))
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        match field.data_type() {
            DataType::Timestamp(unit, None) => {
                let utc = DataType::Timestamp(*unit, Some("UTC".into()));
                columns.push(arrow::compute::cast(column, &utc)?);
                fields.push(Field::new(field.name(), utc, field.is_nullable()));
            }
            _ => {
                columns.push(column.clone());
                fields.push(field.as_ref().clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

#[cfg(test)]
mod tests {
    use arrow::array::{
        Array, AsArray, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
    };
    use arrow::datatypes::{Int32Type, Int64Type};
    use lambdaflow_common::source::SourceConfig;

    use super::*;

    fn source() -> SourceConfig {
        toml::from_str(
            r#"
            name = "events"
            id_field = "event_id"
            time_field = "ts"
            [[fields]]
            name = "country"
            type = "string"
            required = true
            [[fields]]
            name = "amount"
            type = "float"
            [[fields]]
            name = "qty"
            type = "int"
            "#,
        )
        .unwrap()
    }

    /// Every chunk of `text` written as a file named `name`.
    fn chunks(name: &str, bytes: &[u8]) -> Vec<Chunk> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let validator = Validator::new(&source());
        let mut chunks = Vec::new();
        let size = bytes.len() as u64;
        read(
            &path,
            size,
            Format::of(name).unwrap(),
            &validator,
            name,
            |c| {
                chunks.push(c);
                Ok(())
            },
        )
        .unwrap();
        chunks
    }

    fn offsets(batch: &RecordBatch, column: &str) -> Vec<i64> {
        batch
            .column_by_name(column)
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    fn reasons(batch: &RecordBatch) -> Vec<String> {
        batch
            .column_by_name("reason")
            .unwrap()
            .as_string::<i32>()
            .iter()
            .map(|r| r.unwrap().to_owned())
            .collect()
    }

    #[test]
    fn ndjson_lines_are_events_numbered_by_line() {
        let text = concat!(
            r#"{"event_id":"a","ts":"2026-11-01T10:00:00Z","country":"FR","qty":2}"#,
            "\n\n",
            r#"{"event_id":"b","ts":"2026-11-01T10:00:00Z"}"#,
            "\nnot json\r\n",
            r#"{"event_id":"c","ts":1793527200000,"country":"DE"}"#,
        );
        let chunks = chunks("e.ndjson", text.as_bytes());
        let [chunk] = chunks.as_slice() else {
            panic!("{chunks:?}")
        };
        assert_eq!((chunk.last, chunk.records), (5, 4));
        let events = &chunk.validated.events;
        assert_eq!(offsets(events, "kafka_offset"), [1, 5]);
        let partitions = events.column_by_name("kafka_partition").unwrap();
        assert!(
            partitions
                .as_primitive::<Int32Type>()
                .values()
                .iter()
                .all(|p| *p == NO_PARTITION)
        );
        let rejects = &chunk.validated.rejects;
        assert_eq!(offsets(rejects, "offset"), [3, 4]);
        assert_eq!(
            reasons(rejects),
            ["missing_field:country", "malformed_json"]
        );
        let topic = rejects.column_by_name("topic").unwrap().as_string::<i32>();
        assert_eq!(topic.value(0), "e.ndjson");
    }

    #[test]
    fn csv_cells_take_their_fields_types_and_bad_rows_are_refused() {
        let text = "event_id,ts,country,amount,qty,note\n\
            a,2026-11-01T10:00:00Z,FR,12.5,3,\"hello, world\"\n\
            b,1793527200000,DE,,,\n\
            c,2026-11-01T10:00:00Z,FR,lots,1,\n\
            d,2026-11-01T10:00:00Z,FR\n\
            e,2026-11-01T10:00:00Z,,1,1,\n";
        let chunks = chunks("e.csv", text.as_bytes());
        let chunk = &chunks[0];
        let events = &chunk.validated.events;
        assert_eq!(offsets(events, "kafka_offset"), [2, 3]);
        let amount = events.column_by_name("amount").unwrap();
        let amount = amount.as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!((amount.value(0), amount.is_null(1)), (12.5, true));
        let qty = events.column_by_name("qty").unwrap();
        assert_eq!(
            qty.as_any().downcast_ref::<Int64Array>().unwrap().value(0),
            3
        );
        let rejects = &chunk.validated.rejects;
        assert_eq!(offsets(rejects, "offset"), [4, 5, 6]);
        assert_eq!(
            reasons(rejects),
            [
                "wrong_type:amount",
                "malformed_record",
                "missing_field:country"
            ]
        );
    }

    #[test]
    fn parquet_rows_are_events_numbered_by_row_with_naive_times_as_utc() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("country", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(TimestampMillisecondArray::from(vec![
                    1_793_527_200_000,
                    1_793_527_200_000,
                ])),
                Arc::new(StringArray::from(vec![Some("FR"), None])),
            ],
        )
        .unwrap();
        let mut bytes = Vec::new();
        let mut writer = parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let chunks = chunks("e.parquet", &bytes);
        let chunk = &chunks[0];
        assert_eq!(offsets(&chunk.validated.events, "kafka_offset"), [1]);
        let time = chunk.validated.events.column_by_name("ts").unwrap();
        assert_eq!(
            time.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(0),
            1_793_527_200_000_000
        );
        assert_eq!(offsets(&chunk.validated.rejects, "offset"), [2]);
        assert_eq!(reasons(&chunk.validated.rejects), ["missing_field:country"]);
    }

    #[test]
    fn a_line_past_the_event_size_is_refused_without_being_held() {
        let limit = source().max_event_bytes;
        let huge = format!("{{\"event_id\":\"{}\"}}", "x".repeat(limit * 3));
        let text = format!(
            "{huge}\n{}\n",
            r#"{"event_id":"a","ts":"2026-11-01T10:00:00Z","country":"FR"}"#
        );
        let chunks = chunks("e.ndjson", text.as_bytes());
        let chunk = &chunks[0];
        assert_eq!(offsets(&chunk.validated.events, "kafka_offset"), [2]);
        assert_eq!(offsets(&chunk.validated.rejects, "offset"), [1]);
        assert_eq!(reasons(&chunk.validated.rejects), ["too_large"]);
        assert_eq!(chunk.bytes_done, text.len() as u64);
    }

    #[test]
    fn a_big_file_is_read_in_chunks_that_end_where_the_next_begins() {
        let mut text = String::new();
        for i in 0..(CHUNK_RECORDS + 10) {
            text.push_str(&format!(
                "{{\"event_id\":\"{i}\",\"ts\":\"2026-11-01T10:00:00Z\",\"country\":\"FR\"}}\n"
            ));
        }
        let chunks = chunks("big.jsonl", text.as_bytes());
        let lasts: Vec<i64> = chunks.iter().map(|c| c.last).collect();
        assert_eq!(lasts, [CHUNK_RECORDS as i64, CHUNK_RECORDS as i64 + 10]);
        assert_eq!(chunks[1].bytes_done, text.len() as u64);
    }
}
