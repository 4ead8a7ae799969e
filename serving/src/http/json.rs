//! Request bodies: the one JSON extractor every handler that reads a JSON object uses, and the raw
//! body the collector splits itself. Their rejections are [`ApiError`]s, so a body over
//! `serving.max_body_bytes` is a 413 `payload_too_large` and a body that does not parse is a
//! 400 with the route's code and the shape it expected — never axum's plain-text rejection.
//!
//! serde_json refuses nesting deeper than 128 levels, so a deep document is a 400, not a stack
//! overflow. The content type was checked before: [`crate::http::guard`].

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::http::AppState;
use crate::http::error::ApiError;

/// A request type read from a JSON body, with what its route says when the body is wrong.
pub trait JsonBody: DeserializeOwned {
    /// The code of the 400 for a body that is not this type's JSON.
    const INVALID: &'static str;
    /// What the body should look like, named in the 400's message.
    const EXPECTED: &'static str;

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
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| body_error(rejection, state, T::INVALID))?;
        if body.iter().all(u8::is_ascii_whitespace)
            && let Some(empty) = T::when_empty()
        {
            return Ok(Self(empty));
        }
        // serde reads a struct from a JSON array too (its fields in order); every body here
        // is an object, so an array is refused as the document says.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::bad(
                T::INVALID,
                format!("expected {}: the body is not a JSON object", T::EXPECTED),
            ));
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
