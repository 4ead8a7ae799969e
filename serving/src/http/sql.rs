//! `POST /v1/sql`: read-only SQL over the merged views and the lake tables (`crate::sql`),
//! answered as `{"columns":[{"name","type"}],"rows":[[...]]}`.
//!
//! Cells render as JSON the way the query API renders values: integers and floats as numbers
//! (NaN and infinities as null), timestamps as RFC 3339 in UTC, dates as `YYYY-MM-DD`,
//! binary (sketches) as hex, anything else as Arrow's display string.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Date32Type, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType, UInt64Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use axum::Router;
use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use lambdaflow_common::auth::Scope;
use lambdaflow_common::timestamp::{format_date, format_micros};
use serde::Deserialize;
use serde::ser::{Serialize, SerializeSeq, SerializeStruct, Serializer};

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::guard::Caller;
use crate::http::json::{ApiJson, JsonBody};
use crate::sql::{Answer, Tables, query};

/// SQL routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/sql", post(sql))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
}

impl JsonBody for SqlRequest {
    const INVALID: &'static str = "invalid_json";
    const EXPECTED: &'static str = "{\"sql\": \"SELECT ...\"}";
}

async fn sql(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<SqlRequest>,
) -> Result<Response, ApiError> {
    let Ok(_slot) = state.sql_slots.clone().try_acquire_owned() else {
        return Err(ApiError::TooManyRequests {
            message: format!(
                "{} SQL queries are running, the most allowed at once (serving.sql_max_concurrent); retry shortly",
                state.config.serving.sql_max_concurrent
            ),
            retry_after: 1,
        });
    };
    let tables = if caller.may(Scope::Admin) {
        Tables::All
    } else {
        Tables::Views
    };
    let answer = query(
        &state.config,
        &state.lake,
        &state.speeds,
        &request.sql,
        tables,
    )
    .await?;
    let limit = state.config.serving.sql_max_answer_bytes;
    let mut body = Capped {
        bytes: Vec::new(),
        limit,
    };
    if let Err(e) = serde_json::to_writer(&mut body, &Rendered::new(&answer)?) {
        return Err(match e.io_error_kind() {
            Some(std::io::ErrorKind::FileTooLarge) => ApiError::bad(
                "answer_too_large",
                format!(
                    "the answer is larger than {limit} bytes of JSON; select fewer columns or rows (serving.sql_max_answer_bytes)"
                ),
            ),
            _ => e.into(),
        });
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], body.bytes).into_response())
}

/// A buffer that refuses to grow past `limit` bytes.
struct Capped {
    bytes: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            return Err(std::io::ErrorKind::FileTooLarge.into());
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A column normalised once to the few array types cells are written from.
enum Column {
    Int(ArrayRef),
    UInt(ArrayRef),
    Float(ArrayRef),
    Bool(ArrayRef),
    Str(ArrayRef),
    Time(ArrayRef),
    Date(ArrayRef),
    Binary(ArrayRef),
    Other(ArrayRef),
}

impl Column {
    fn new(array: &ArrayRef) -> Result<Self, arrow::error::ArrowError> {
        let to = |t: DataType| cast(array, &t);
        Ok(match array.data_type() {
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                Self::Int(to(DataType::Int64)?)
            }
            DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
                Self::UInt(to(DataType::UInt64)?)
            }
            DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                Self::Float(to(DataType::Float64)?)
            }
            DataType::Boolean => Self::Bool(array.clone()),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                Self::Str(to(DataType::Utf8)?)
            }
            DataType::Timestamp(_, _) => Self::Time(to(DataType::Timestamp(
                TimeUnit::Microsecond,
                Some("UTC".into()),
            ))?),
            DataType::Date32 | DataType::Date64 => Self::Date(to(DataType::Date32)?),
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                Self::Binary(to(DataType::Binary)?)
            }
            _ => Self::Other(array.clone()),
        })
    }

    fn array(&self) -> &ArrayRef {
        match self {
            Self::Int(a)
            | Self::UInt(a)
            | Self::Float(a)
            | Self::Bool(a)
            | Self::Str(a)
            | Self::Time(a)
            | Self::Date(a)
            | Self::Binary(a)
            | Self::Other(a) => a,
        }
    }

    fn write<S: SerializeSeq>(&self, row: usize, seq: &mut S) -> Result<(), S::Error> {
        if self.array().is_null(row) {
            return seq.serialize_element(&());
        }
        match self {
            Self::Int(a) => seq.serialize_element(&a.as_primitive::<Int64Type>().value(row)),
            Self::UInt(a) => seq.serialize_element(&a.as_primitive::<UInt64Type>().value(row)),
            Self::Float(a) => {
                let v = a.as_primitive::<Float64Type>().value(row);
                seq.serialize_element(&v.is_finite().then_some(v))
            }
            Self::Bool(a) => seq.serialize_element(&a.as_boolean().value(row)),
            Self::Str(a) => seq.serialize_element(a.as_string::<i32>().value(row)),
            Self::Time(a) => seq.serialize_element(&format_micros(
                a.as_primitive::<TimestampMicrosecondType>().value(row),
            )),
            Self::Date(a) => {
                seq.serialize_element(&format_date(a.as_primitive::<Date32Type>().value(row)))
            }
            Self::Binary(a) => seq.serialize_element(&hex::encode(a.as_binary::<i32>().value(row))),
            Self::Other(a) => {
                let options = FormatOptions::default();
                let text = ArrayFormatter::try_new(a.as_ref(), &options)
                    .map(|f| f.value(row).to_string())
                    .map_err(serde::ser::Error::custom)?;
                seq.serialize_element(&text)
            }
        }
    }
}

/// The answer, serialised in one pass.
struct Rendered<'a> {
    answer: &'a Answer,
    batches: Vec<(&'a RecordBatch, Vec<Column>)>,
}

impl<'a> Rendered<'a> {
    fn new(answer: &'a Answer) -> Result<Self, ApiError> {
        let batches = answer
            .batches
            .iter()
            .map(|b| {
                Ok((
                    b,
                    b.columns()
                        .iter()
                        .map(Column::new)
                        .collect::<Result<_, _>>()?,
                ))
            })
            .collect::<Result<_, arrow::error::ArrowError>>()
            .map_err(|e| ApiError::Internal(format!("rendering an SQL answer: {e}")))?;
        Ok(Self { answer, batches })
    }
}

impl Serialize for Rendered<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("Answer", 2)?;
        let columns: Vec<_> = self
            .answer
            .schema
            .fields()
            .iter()
            .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()}))
            .collect();
        out.serialize_field("columns", &columns)?;
        out.serialize_field("rows", &Rows(&self.batches))?;
        out.end()
    }
}

struct Rows<'a>(&'a [(&'a RecordBatch, Vec<Column>)]);

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let total = self.0.iter().map(|(b, _)| b.num_rows()).sum();
        let mut rows = serializer.serialize_seq(Some(total))?;
        for (batch, columns) in self.0 {
            for row in 0..batch.num_rows() {
                rows.serialize_element(&Cells { columns, row })?;
            }
        }
        rows.end()
    }
}

struct Cells<'a> {
    columns: &'a [Column],
    row: usize,
}

impl Serialize for Cells<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut cells = serializer.serialize_seq(Some(self.columns.len()))?;
        for column in self.columns {
            column.write(self.row, &mut cells)?;
        }
        cells.end()
    }
}
