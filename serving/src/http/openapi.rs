//! `GET /openapi.json`: the OpenAPI 3.1 document of this API, kept beside the routes and
//! checked against them by the HTTP tests (every documented operation is routed).
//!
//! The file is the API's shape; the document served is that file with this deployment's view
//! names as the only values of the `{name}` path parameter and its source names as those of
//! `{source}`, so that clients and fuzzers generated from it reach the views and the
//! collector instead of 404s.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use lambdaflow_common::config::Config;
use serde_json::{Value, json};

use crate::http::AppState;

/// The document as written, with `{name}` any string.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// The document's route.
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(document))
}

/// [`DOCUMENT`] for `config`: the view routes' `{name}` enumerates its views, the
/// collector's `{source}` its sources.
pub fn document_for(config: &Config) -> String {
    let mut document: Value = serde_json::from_str(DOCUMENT).expect("the document is JSON");
    let views: Vec<&str> = config.views.iter().map(|v| v.name.as_str()).collect();
    let sources = [config.source.name.as_str()];
    let paths = document["paths"]
        .as_object_mut()
        .expect("the document has paths");
    for operation in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
    {
        let parameters = operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut);
        for parameter in parameters.into_iter().flatten() {
            if parameter["in"] != "path" {
                continue;
            }
            let values = match parameter["name"].as_str() {
                Some("name") => &views[..],
                Some("source") => &sources[..],
                _ => continue,
            };
            parameter["schema"] = json!({"type": "string", "enum": values});
        }
    }
    document.to_string()
}

async fn document(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.to_string(),
    )
}
