//! `GET /v1/quarantine?limit=N`: the latest refused events with their reasons, read from the
//! quarantine Delta table (newest ingestion first; within one ingestion time, latest offset
//! first).

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimestampMicrosecondType};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use datafusion::prelude::SessionContext;
use lambdaflow_common::schema::INGEST_TIME;
use lambdaflow_common::timestamp::format_micros;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::AppState;
use crate::http::error::ApiError;

/// Events returned when no limit is given.
const DEFAULT_LIMIT: usize = 50;
/// Most events one request returns.
const MAX_LIMIT: usize = 1_000;

/// Quarantine routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/quarantine", get(latest))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    limit: Option<usize>,
}

async fn latest(
    State(state): State<AppState>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad("invalid_request", e.body_text()))?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_LIMIT}, got {limit}"),
        ));
    }
    let url = state.batches.lake().quarantine(&state.config.source.name);
    let table = match deltalake::open_table(url).await {
        Ok(table) => table,
        Err(
            deltalake::DeltaTableError::NotATable(_)
            | deltalake::DeltaTableError::InvalidTableLocation(_),
        ) => return Ok(Json(json!({ "events": [] }))),
        Err(e) => {
            return Err(ApiError::Internal(format!(
                "opening the quarantine table: {e}"
            )));
        }
    };
    let read = |e: datafusion::error::DataFusionError| {
        ApiError::Internal(format!("reading the quarantine table: {e}"))
    };
    let ctx = SessionContext::new();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    ctx.register_table("quarantine", table.table_provider().await.map_err(read)?)
        .map_err(read)?;
    let batches = ctx
        .sql(&format!(
            "SELECT raw, reason, topic, \"partition\", \"offset\", {INGEST_TIME} FROM quarantine \
             ORDER BY {INGEST_TIME} DESC, \"offset\" DESC LIMIT {limit}"
        ))
        .await
        .map_err(read)?
        .collect()
        .await
        .map_err(read)?;
    let mut events = Vec::with_capacity(limit);
    for batch in &batches {
        events.extend(render(batch).map_err(|e| ApiError::Internal(e.to_string()))?);
    }
    Ok(Json(json!({ "events": events })))
}

/// The rows of `batch`; payloads as text when they are UTF-8, else as hex under `raw_hex`.
fn render(batch: &RecordBatch) -> Result<Vec<Value>, arrow::error::ArrowError> {
    let column = |i: usize, t: &DataType| cast(batch.column(i), t);
    let raw = column(0, &DataType::Binary)?;
    let reason = column(1, &DataType::Utf8)?;
    let topic = column(2, &DataType::Utf8)?;
    let partition = column(3, &DataType::Int32)?;
    let offset = column(4, &DataType::Int64)?;
    let time = column(5, batch.schema().field(5).data_type())?;
    let (raw, reason, topic) = (
        raw.as_binary::<i32>(),
        reason.as_string::<i32>(),
        topic.as_string::<i32>(),
    );
    Ok((0..batch.num_rows())
        .map(|row| {
            let mut event = json!({
                "reason": reason.value(row),
                "topic": topic.value(row),
                "partition": partition.as_primitive::<Int32Type>().value(row),
                "offset": offset.as_primitive::<Int64Type>().value(row),
                "ingest_time": format_micros(time.as_primitive::<TimestampMicrosecondType>().value(row)),
            });
            if raw.is_null(row) {
                event["raw"] = Value::Null;
            } else {
                match std::str::from_utf8(raw.value(row)) {
                    Ok(text) => event["raw"] = text.into(),
                    Err(_) => event["raw_hex"] = hex::encode(raw.value(row)).into(),
                }
            }
            event
        })
        .collect())
}
