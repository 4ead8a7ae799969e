//! `GET /v1/lake`: what each table of the lake holds and costs on storage (version, live files
//! and bytes, bytes on storage, dates held, last vacuum, next expiry), read from the tables'
//! logs and a listing of their roots.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::http::AppState;
use crate::http::error::ApiError;

/// Lake routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/lake", get(status))
}

async fn status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let tables = state
        .lake
        .status(&state.config)
        .await
        .map_err(|e| ApiError::Internal(format!("reading the lake's storage status: {e}")))?;
    Ok(Json(json!({ "tables": tables })))
}
