//! Request bodies: the one JSON extractor every handler that reads a JSON body uses, and the raw
//! body the collector splits itself. Their rejections are [`ApiError`]s, so a body over
//! `serving.max_body_bytes` is a 413 `payload_too_large` and a body that does not parse is a
//! 400 with the route's code and the shape it expected — never axum's plain-text rejection.
//!
//! serde_json refuses nesting deeper than 128 levels, so a deep document is a 400, not a stack
//! overflow.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::http::AppState;
use crate::http::error::ApiError;

/// A request type read from a JSON body, with what its route says when the body is wrong.
pub trait JsonBody: DeserializeOwned {
    /// The code of the 400 for a body that is not this type's JSON.
    const INVALID: &'static str;
    /// What the body should look like, named in the 400's message.
    const EXPECTED: &'static str;
    /// Whether a request must say `Content-Type: application/json` (or `+json`).
    const NEEDS_JSON_CONTENT_TYPE: bool = false;

    /// What an empty (or all white-space) body stands for, on routes where it may be empty.
    fn when_empty() -> Option<Self> {
        None
    }
}

/// A JSON request body parsed into `T`; rejected with an [`ApiError`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T: JsonBody> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        if T::NEEDS_JSON_CONTENT_TYPE && !is_json(request.headers()) {
            return Err(ApiError::bad(
                T::INVALID,
                "Expected request with `Content-Type: application/json`",
            ));
        }
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| body_error(rejection, state, T::INVALID))?;
        if body.iter().all(u8::is_ascii_whitespace)
            && let Some(empty) = T::when_empty()
        {
            return Ok(Self(empty));
        }
        serde_json::from_slice(&body)
            .map(Self)
            .map_err(|e| ApiError::bad(T::INVALID, format!("expected {}: {e}", T::EXPECTED)))
    }
}

/// A request body as bytes, for the collector, which splits a JSON array or NDJSON itself;
/// rejected with an [`ApiError`] like [`ApiJson`], its 400 coded `bad_body`.
#[derive(Debug, Clone)]
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        Bytes::from_request(request, state)
            .await
            .map(Self)
            .map_err(|rejection| body_error(rejection, state, "bad_body"))
    }
}

/// A body that could not be read: over the limit, or broken off.
fn body_error(rejection: BytesRejection, state: &AppState, code: &'static str) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge {
            limit: state.config.serving.max_body_bytes,
        }
    } else {
        ApiError::bad(code, rejection.body_text())
    }
}

/// Whether the content type is JSON: `application/json` or `application/<anything>+json`,
/// parameters ignored.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence
        .strip_prefix("application/")
        .is_some_and(|sub| sub == "json" || sub.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn json_content_types_are_recognised() {
        let with = |ct: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            is_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/vnd.api+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-ndjson"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
