//! `GET /healthz` (the process is up) and `GET /readyz` (it can answer queries: the speed
//! layer has consumed what the topic held when it started, and the batch views are loaded).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::http::AppState;
use crate::http::error::ApiError;

/// Health routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if let Some(reset) = state
        .archivers
        .iter()
        .find_map(|stats| stats.topic_resets().into_iter().next())
    {
        return Err(ApiError::Unavailable(format!(
            "the archiver halted partition {}: {reset}",
            reset.partition
        )));
    }
    let mut speed_ready = true;
    for speed in state.speeds.sources() {
        let progress = speed.served.progress();
        if let Some((partition, reason)) = progress.halted.iter().next() {
            return Err(ApiError::Unavailable(format!(
                "partition {partition} of source {} is not consumed: {reason}",
                speed.config.source().name
            )));
        }
        speed_ready &= speed.served.is_loaded() && progress.caught_up();
    }
    if state.ready.load(Ordering::Acquire) && speed_ready {
        Ok(Json(json!({ "status": "ready" })))
    } else {
        Err(ApiError::Unavailable(
            "starting: loading the batch views and catching up with the topic".into(),
        ))
    }
}
