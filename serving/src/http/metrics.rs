//! `GET /metrics`: the Prometheus text exposition (`crate::metrics`), in the API and, through
//! [`ops`], beside the work of `archive` and `batch schedule`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
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
        crate::metrics::render(state.speeds.sources()),
    )
}

/// `/healthz` and `/metrics` alone, for a process that runs no speed layer and no API; the
/// metrics behind `guard` as on the API.
pub fn ops(guard: Arc<Guard>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                    crate::metrics::render(&[]),
                )
            }),
        )
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
}
