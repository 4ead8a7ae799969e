//! `/v1/batch/runs`: trigger a batch run and read the run history.
//!
//! `POST` answers 202 with the new run's id at once (the run goes on in the background) or
//! 409 naming the run in progress; records are read from `<lake>/_lambdaflow/runs/`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use lambdaflow_batch::views::records::{RunRecord, Trigger, is_run_id};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::AppState;
use crate::http::error::ApiError;
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
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(20);
    if limit == 0 || limit > MAX_LIST {
        return Err(ApiError::bad(
            "invalid_query",
            format!("limit must be between 1 and {MAX_LIST}"),
        ));
    }
    let runs = state.batches.history().list(limit).await?;
    Ok(Json(json!({ "runs": runs })))
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
