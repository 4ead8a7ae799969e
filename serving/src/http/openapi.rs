//! `GET /openapi.json`: the OpenAPI 3.1 document of this API, kept beside the routes and
//! checked against them by the HTTP tests (every documented operation is routed).

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::http::AppState;

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// The document's route.
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(document))
}

async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
