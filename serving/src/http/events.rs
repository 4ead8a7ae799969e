//! `POST /v1/events/{source}` (and `POST /v1/events` for the only source): the HTTP
//! collector.
//!
//! Takes a JSON array or NDJSON, checks each event with the shared validator at the request's
//! arrival time, produces the valid ones keyed by event id with the idempotent producer and
//! that time as their message timestamp (so that the archiver and the speed layer reach the
//! same verdict), and answers only after the broker acknowledged every one of them. Invalid events are reported by index and not
//! produced; a client that retries a failed request cannot double-count, as the archiver and
//! the speed layer drop repeated ids.

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use futures::future::join_all;
use lambdaflow_common::config::Config;
use lambdaflow_common::timestamp::now_micros;
use lambdaflow_common::validate::Validator;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::json::RawBody;

/// Collector routes, with the body limit of `serving.max_body_bytes`.
pub fn router(config: &Config) -> Router<AppState> {
    Router::new()
        .route("/v1/events", post(collect_only))
        .route("/v1/events/{source}", post(collect_into))
        .layer(DefaultBodyLimit::max(config.serving.max_body_bytes))
}

/// The reply of `POST /v1/events`.
#[derive(Debug, Serialize)]
pub struct CollectReply {
    /// Events produced and acknowledged.
    pub accepted: usize,
    /// Events refused.
    pub rejected: usize,
    /// Why each refused event was refused.
    pub errors: Vec<EventError>,
}

/// One refused event.
#[derive(Debug, Serialize)]
pub struct EventError {
    /// Position in the array, or line number (from 0) among the non-empty NDJSON lines.
    pub index: usize,
    /// The reason code.
    pub reason: String,
}

/// `POST /v1/events/{source}`: the events of the source called `source`.
async fn collect_into(
    State(state): State<AppState>,
    Path(source): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<CollectReply>), ApiError> {
    let named = state
        .config
        .source_named(&source)
        .map_err(ApiError::NotFound)?;
    let validator = state
        .validators
        .iter()
        .find(|v| v.source().name == named.name);
    collect(
        &state,
        validator.expect("a validator per source"),
        &headers,
        &body,
    )
    .await
}

/// `POST /v1/events`: the events of the deployment's only source.
async fn collect_only(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<CollectReply>), ApiError> {
    let [validator] = state.validators.as_slice() else {
        return Err(ApiError::bad(
            "source_required",
            "the deployment has several sources: post to /v1/events/{source}",
        ));
    };
    collect(&state, validator, &headers, &body).await
}

/// Validates the events of `body` as `validator`'s source does and produces the valid ones to
/// its topic.
async fn collect(
    state: &AppState,
    validator: &Validator,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(StatusCode, Json<CollectReply>), ApiError> {
    let events = split_events(headers, body)?;
    // The arrival time, to the millisecond a Kafka timestamp holds: each event is judged
    // against it here and, as its message's timestamp, by every layer that reads it.
    let arrival_ms = now_micros().div_euclid(1000);
    let now = arrival_ms * 1000;
    let topic = &validator.source().topic;
    let mut errors = Vec::new();
    let mut deliveries = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        match validator.check(Some(event), now) {
            Ok(checked) => {
                let delivery = state
                    .producer
                    .queue_at(topic, checked.id.as_bytes(), event, Some(arrival_ms))
                    .map_err(|e| {
                        ApiError::Unavailable(format!("the broker did not take the events: {e}"))
                    })?;
                deliveries.push(delivery);
            }
            Err(reason) => errors.push(EventError {
                index,
                reason: reason.to_string(),
            }),
        }
    }
    let accepted = deliveries.len();
    for outcome in join_all(deliveries).await {
        match outcome {
            Ok(_) => {}
            Err(lambdaflow_kafka::Error::Dropped) => {
                return Err(ApiError::Internal(
                    "the producer was dropped before delivery".into(),
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "event delivery failed");
                return Err(ApiError::Unavailable(format!(
                    "the broker did not acknowledge every event ({e}); retry the request: repeated ids are not counted twice"
                )));
            }
        }
    }
    let rejected = errors.len();
    Ok((
        StatusCode::OK,
        Json(CollectReply {
            accepted,
            rejected,
            errors,
        }),
    ))
}

/// A JSON array (the body starts with `[`) gives its elements; anything else is NDJSON, one
/// event per non-empty line.
fn split_events<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<Vec<&'a [u8]>, ApiError> {
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("ndjson") || ct.contains("jsonlines"));
    let starts_array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if starts_array && !ndjson {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad("invalid_utf8", "the body is not UTF-8"))?;
        let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| {
            ApiError::bad(
                "malformed_json",
                format!("the body starts with `[` but is not a JSON array: {e}"),
            )
        })?;
        return Ok(items.into_iter().map(|raw| raw.get().as_bytes()).collect());
    }
    Ok(body
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| line.iter().any(|b| !b.is_ascii_whitespace()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_and_ndjson_split_into_events() {
        let h = HeaderMap::new();
        assert_eq!(
            split_events(&h, b" [{\"a\":1}, 2 ,\"x\"]").unwrap(),
            vec![&b"{\"a\":1}"[..], b"2", b"\"x\""]
        );
        assert_eq!(
            split_events(&h, b"{\"a\":1}\r\n\n  \n{\"b\":2}").unwrap(),
            vec![&b"{\"a\":1}"[..], b"{\"b\":2}"]
        );
        assert!(split_events(&h, b"[{\"a\":1}").is_err());
    }
}
