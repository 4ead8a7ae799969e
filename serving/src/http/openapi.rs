//! `GET /openapi.json`: the OpenAPI 3.1 document of this API, kept beside the routes and
//! checked against them by the HTTP tests (every documented operation is routed).
//!
//! The file is the API's shape; the document served is that file with this deployment's view
//! names as the only values of the `{name}` path parameter, so that clients and fuzzers
//! generated from it reach the views instead of 404s.

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

/// [`DOCUMENT`] for `config`: the view routes' `{name}` enumerates its views.
pub fn document_for(config: &Config) -> String {
    let mut document: Value = serde_json::from_str(DOCUMENT).expect("the document is JSON");
    let names: Vec<&str> = config.views.iter().map(|v| v.name.as_str()).collect();
    let paths = document["paths"]
        .as_object_mut()
        .expect("the document has paths");
    for (path, item) in paths.iter_mut() {
        if !path.starts_with("/v1/views/{name}") {
            continue;
        }
        for operation in item
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            let parameters = operation
                .get_mut("parameters")
                .and_then(Value::as_array_mut);
            for parameter in parameters.into_iter().flatten() {
                if parameter["in"] == "path" && parameter["name"] == "name" {
                    parameter["schema"] = json!({"type": "string", "enum": names});
                }
            }
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
