//! `GET /v1/quarantine?limit=N`: the latest refused events with their reasons, read from the
//! quarantine Delta table through the lake reader (newest ingestion first; within one
//! ingestion time, latest offset first). The answer's `ETag` follows the table's version, so
//! a poll while nothing was refused costs a listing of its log ([`crate::http::etag`]).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lambdaflow_batch::lake::reader::QuarantinedEvent;
use lambdaflow_common::timestamp::format_micros;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::etag::ETag;

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
    source: Option<String>,
}

async fn latest(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad("invalid_request", e.body_text()))?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_LIMIT}, got {limit}"),
        ));
    }
    let config = &state.config;
    let source = match params.source.as_deref() {
        Some(name) => config.source_named(name).map_err(ApiError::NotFound)?,
        None => config
            .pick_source(None)
            .map_err(|why| ApiError::bad("source_required", format!("{why} with ?source=")))?,
    };
    let unreadable = |e| ApiError::Internal(format!("reading the quarantine table: {e}"));
    let version = state
        .lake
        .quarantine_version(source)
        .await
        .map_err(unreadable)?;
    let tag = ETag::of(("quarantine", &source.name, version, limit));
    if tag.matches(&headers) {
        return Ok(tag.not_modified());
    }
    let events = state
        .lake
        .latest_quarantined(source, limit)
        .await
        .map_err(unreadable)?;
    let events: Vec<Value> = events.iter().map(render).collect();
    Ok(tag.on(Json(json!({ "events": events })).into_response()))
}

/// One refused event; its payload as text when it is UTF-8, else as hex under `raw_hex`.
fn render(event: &QuarantinedEvent) -> Value {
    let mut rendered = json!({
        "reason": event.reason,
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "ingest_time": format_micros(event.ingest_time),
    });
    match &event.raw {
        None => rendered["raw"] = Value::Null,
        Some(raw) => match std::str::from_utf8(raw) {
            Ok(text) => rendered["raw"] = text.into(),
            Err(_) => rendered["raw_hex"] = hex::encode(raw).into(),
        },
    }
    rendered
}
