//! `GET /v1/catalog` and `GET /v1/catalog/{table}`: every table under the name SQL reads it by,
//! its columns in SQL types, partitioning, size and last commit; by name also its recent
//! commits and its lineage (for a view, the raw version and offsets it was computed from and its
//! definition; for raw, the topic offsets it holds).

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::http::AppState;
use crate::http::error::ApiError;

/// Catalog routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/catalog", get(list))
        .route("/v1/catalog/{table}", get(one))
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let tables = state
        .lake
        .catalog(&state.config)
        .await
        .map_err(|e| ApiError::Internal(format!("reading the catalog: {e}")))?;
    Ok(Json(json!({ "tables": tables })))
}

async fn one(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let table = state
        .lake
        .catalog_table(&state.config, &name)
        .await
        .map_err(|e| ApiError::Internal(format!("reading table `{name}` of the catalog: {e}")))?
        .ok_or_else(|| ApiError::NotFound(format!("no table `{name}` in the catalog")))?;
    Ok(Json(serde_json::to_value(table)?))
}
