//! `/v1/batch/runs`: trigger a batch run and read the run history.
//!
//! `POST` answers 202 with the new run's id at once (the run goes on in the background) or
//! 409 naming the run in progress; records are read from `<lake>/_lambdaflow/runs/`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use lambdaflow_batch::Error as BatchError;
use lambdaflow_batch::views::records::{RunRecord, Trigger, is_run_id};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::AppState;
use crate::http::error::ApiError;

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

async fn trigger(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request: TriggerRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TriggerRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest {
            code: "invalid_json",
            message: format!("expected {{\"full\": true|false}} or an empty body: {e}"),
        })?
    };
    match state.batches.submit(Trigger::Api, request.full).await {
        Ok(id) => Ok((StatusCode::ACCEPTED, Json(json!({ "id": id })))),
        Err(BatchError::RunInProgress { running, .. }) => Err(ApiError::Conflict {
            message: format!("batch run {running} is in progress; runs never overlap"),
            id: running,
        }),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
}

async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest {
        code: "invalid_query",
        message: e.body_text(),
    })?;
    let limit = query.limit.unwrap_or(20);
    if limit == 0 || limit > MAX_LIST {
        return Err(ApiError::BadRequest {
            code: "invalid_query",
            message: format!("limit must be between 1 and {MAX_LIST}"),
        });
    }
    let runs = state
        .batches
        .history()
        .list(limit)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(json!({ "runs": runs })))
}

async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunRecord>, ApiError> {
    if !is_run_id(&id) {
        return Err(ApiError::BadRequest {
            code: "invalid_run_id",
            message: "a run id is letters, digits and '-', at most 64 characters".into(),
        });
    }
    state
        .batches
        .history()
        .get(&id)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no batch run `{id}`")))
}
