//! `GET /metrics`: the Prometheus text exposition (`crate::metrics`), in the API and, through
//! [`ops`], beside the work of `archive` and `batch schedule`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use lambdaflow_common::config::Config;
use lambdaflow_speed::served::Served;
use serde_json::json;

use crate::http::AppState;
use crate::http::guard::{self, Guard};

/// The metrics route.
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        crate::metrics::render(&state.config, &state.served),
    )
}

/// `/healthz` and `/metrics` alone, for a process that runs no speed layer and no API; the
/// metrics behind `guard` as on the API.
pub fn ops(config: Arc<Config>, guard: Arc<Guard>) -> Router {
    let no_views = Served::new();
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                    crate::metrics::render(&config, &no_views),
                )
            }),
        )
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
}
