//! `GET /`: the dashboard, one self-contained page built into the binary (no CDN, no build
//! step): each view as a live chart of batch ⊕ speed with the batch side drawn underneath and
//! the seam marked, ingestion rate and lag from `/metrics`, batch runs and quarantine. It reads
//! only the public API, so everything it shows a user can also script.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::http::AppState;

const PAGE: &str = include_str!("dashboard.html");

/// The dashboard route.
pub fn router() -> Router<AppState> {
    Router::new().route("/", get(page))
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}
