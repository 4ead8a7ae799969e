//! `/v1/batch/runs`: trigger a batch run and read the run history.
//!
//! `POST` answers 202 with the new run's id at once (the run goes on in the background) or
//! 409 naming the run in progress; records are read from `<lake>/_lambdaflow/runs/`. The
//! list's `ETag` follows a listing of the records it holds, so a poll while no run started or
//! moved reads none of them ([`crate::http::etag`]).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lambdaflow_batch::views::records::{RunRecord, Trigger, is_run_id};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::etag::ETag;
use crate::http::json::{ApiJson, JsonBody};

/// Most records one listing returns.
const MAX_LIST: usize = 1_000;

/// Batch routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/batch/runs", get(list).post(trigger))
        .route("/v1/batch/runs/{id}", get(one))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerRequest {
    /// Recompute every date of every view.
    #[serde(default)]
    full: bool,
}

impl JsonBody for TriggerRequest {
    const INVALID: &'static str = "invalid_json";
    const EXPECTED: &'static str = "{\"full\": true|false} or an empty body";

    fn when_empty() -> Option<Self> {
        Some(Self::default())
    }
}

async fn trigger(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TriggerRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = state.batches.submit(Trigger::Api, request.full).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": id }))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
}

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(20);
    if limit == 0 || limit > MAX_LIST {
        return Err(ApiError::bad(
            "invalid_query",
            format!("limit must be between 1 and {MAX_LIST}"),
        ));
    }
    let history = state.batches.history();
    let files = history.newest(limit).await?;
    let tag = ETag::of(
        files
            .iter()
            .map(|f| (f.location.as_ref(), f.last_modified, f.size, &f.e_tag))
            .collect::<Vec<_>>(),
    );
    if tag.matches(&headers) {
        return Ok(tag.not_modified());
    }
    let runs = history.read(&files).await?;
    Ok(tag.on(Json(json!({ "runs": runs })).into_response()))
}

async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunRecord>, ApiError> {
    if !is_run_id(&id) {
        return Err(ApiError::bad(
            "invalid_run_id",
            "a run id is letters, digits and '-', at most 64 characters",
        ));
    }
    state
        .batches
        .history()
        .get(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no batch run `{id}`")))
}
