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

/// [`DOCUMENT`] for `config`: the view routes' `{name}` enumerates its views, the catalog's
/// `{table}` its tables' SQL names, the
/// collector's `{source}` and the quarantine's `source` its sources. With several sources the
/// quarantine's `source` is required and `POST /v1/events`, which takes the events of the only
/// source, is not served.
pub fn document_for(config: &Config) -> String {
    let mut document: Value = serde_json::from_str(DOCUMENT).expect("the document is JSON");
    let views: Vec<&str> = config.views.iter().map(|v| v.name.as_str()).collect();
    let sources: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
    let tables: Vec<String> = sources
        .iter()
        .flat_map(|s| [format!("raw_{s}"), format!("quarantine_{s}")])
        .chain(views.iter().map(|v| (*v).to_owned()))
        .collect();
    let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
    let several = sources.len() > 1;
    let paths = document["paths"]
        .as_object_mut()
        .expect("the document has paths");
    if several {
        paths.remove("/v1/events");
    }
    for operation in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
    {
        let parameters = operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut);
        for parameter in parameters.into_iter().flatten() {
            let values = match parameter["name"].as_str() {
                Some("name") if parameter["in"] == "path" => &views[..],
                Some("table") if parameter["in"] == "path" => &tables[..],
                Some("source") => &sources[..],
                _ => continue,
            };
            if parameter["in"] == "query" {
                parameter["required"] = json!(several);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_sources_are_named_where_one_goes_without_saying() {
        let read =
            |config: &Config| -> Value { serde_json::from_str(&document_for(config)).unwrap() };
        let (one, two) = (read(&Config::shop()), read(&Config::demo()));
        assert!(one["paths"]["/v1/events"].is_object());
        assert!(two["paths"].get("/v1/events").is_none());
        let source = |document: &Value| {
            let parameters = document["paths"]["/v1/quarantine"]["get"]["parameters"].clone();
            let parameters: Vec<Value> = serde_json::from_value(parameters).unwrap();
            parameters
                .into_iter()
                .find(|p| p["name"] == "source")
                .unwrap()
        };
        assert_eq!(source(&one)["required"], false);
        assert_eq!(source(&two)["required"], true);
        assert_eq!(
            source(&two)["schema"]["enum"],
            json!(["events", "pageviews"])
        );
    }
}
