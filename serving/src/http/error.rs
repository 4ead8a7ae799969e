//! One error model for every route: `{"error":{"code","message"}}` with a 4xx/5xx status.
//! 5xx bodies stay generic; their detail goes to the log.
//!
//! Handlers return `Result<_, ApiError>` and use `?`: the errors of the layers below convert
//! with `From` (a refused query keeps its code, a batch run in progress is a 409, SQL errors
//! keep theirs), request bodies are read by [`crate::http::json`], whose rejections are
//! `ApiError`s too, and [`json_errors`] gives axum's own rejections the same shape.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lambdaflow_batch::Error as BatchError;
use lambdaflow_batch::lake::reader::TravelError;
use lambdaflow_common::query::QueryError;
use serde_json::json;

use crate::sql::SqlError;

/// An error a handler returns.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; the message says how.
    #[error("{message}")]
    BadRequest {
        /// Machine-readable code.
        code: &'static str,
        /// What was wrong.
        message: String,
    },
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with work in progress, named by `id`.
    #[error("{message}")]
    Conflict {
        /// What is in the way.
        message: String,
        /// The id of the work in progress.
        id: String,
    },
    /// The body is over the limit.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The work ran longer than its limit and was cancelled.
    #[error("{0}")]
    Timeout(String),
    /// A dependency (the broker) is not available; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// The view's batch side was computed under another definition: it is not merged with
    /// the speed side until a batch run recomputes it.
    #[error(
        "view `{0}` was redefined and is being recomputed under its new definition; retry once the batch run started for it has published"
    )]
    Rebuilding(String),
    /// No token, or one the API does not know.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller may not do this: its token lacks the scope, or the request comes from a page
    /// of another origin.
    #[error("{message}")]
    Forbidden {
        /// Machine-readable code.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// The body's content type is not one the route reads.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Too many requests of this kind are running; retry after the given seconds.
    #[error("{message}")]
    TooManyRequests {
        /// Why.
        message: String,
        /// Seconds to wait before trying again.
        retry_after: u64,
    },
    /// A bug or an unexpected failure; the detail is logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 with `code`.
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A 403 `forbidden`: the caller's token lacks what the request needs.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden {
            code: "forbidden",
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict { .. } => (StatusCode::CONFLICT, "run_in_progress"),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "query_timeout"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Rebuilding(_) => (StatusCode::SERVICE_UNAVAILABLE, "view_rebuilding"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden { code, .. } => (StatusCode::FORBIDDEN, code),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
            "internal error; see the server log".to_owned()
        } else {
            self.to_string()
        };
        let mut error = json!({ "code": code, "message": message });
        if let Self::Conflict { id, .. } = &self {
            error["id"] = id.clone().into();
        }
        let mut response = (status, Json(json!({ "error": error }))).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"lambdaflow\""),
                );
            }
            Self::TooManyRequests { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        response
    }
}

impl From<QueryError> for ApiError {
    /// A refused view query: a 400 with the query's own code and message; one that ran out
    /// of time a 504.
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Timeout { .. } => Self::Timeout(e.to_string()),
            e => Self::bad(e.code(), e.to_string()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    /// A query string that does not fit the route's parameters.
    fn from(e: QueryRejection) -> Self {
        Self::bad("invalid_query", e.body_text())
    }
}

impl From<SqlError> for ApiError {
    /// Refusals of the statement are 400s with their own code; a timeout is a 504 and a
    /// process still starting a 503.
    fn from(e: SqlError) -> Self {
        let code = match &e {
            SqlError::NotAQuery(_) => "not_a_query",
            SqlError::Invalid(_) => "invalid_sql",
            SqlError::InexactRollup(_) => "inexact_rollup",
            SqlError::TooManyRows(_) => "row_limit_exceeded",
            SqlError::Memory { .. } => "memory_limit_exceeded",
            SqlError::Timeout(_) => return Self::Timeout(e.to_string()),
            SqlError::Forbidden(_) | SqlError::NoQueryScope => {
                return Self::forbidden(e.to_string());
            }
            SqlError::Starting => return Self::Unavailable(e.to_string()),
            SqlError::Rebuilding(view) => return Self::Rebuilding(view.clone()),
            SqlError::Internal(detail) => return Self::Internal(detail.clone()),
        };
        Self::bad(code, e.to_string())
    }
}

impl From<BatchError> for ApiError {
    /// A run in progress is a 409 naming it; anything else went wrong on our side.
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::RunInProgress { running, .. } => Self::Conflict {
                message: format!("batch run {running} is in progress; runs never overlap"),
                id: running,
            },
            e => Self::Internal(e.to_string()),
        }
    }
}

impl From<TravelError> for ApiError {
    /// A version that is not there (never made, or no longer held) is a 404 whose message names
    /// the versions that are; one computed under another definition cannot be read as the view
    /// is now.
    fn from(e: TravelError) -> Self {
        match e {
            TravelError::Lake(e) => e.into(),
            e @ TravelError::OtherDefinition { .. } => Self::bad("view_redefined", e.to_string()),
            e => Self::NotFound(e.to_string()),
        }
    }
}

impl From<serde_json::Error> for ApiError {
    /// Writing an answer as JSON failed: a bug, not the client's. (Request bodies that do
    /// not parse are rejected by the extractor with a 400 before a handler runs.)
    fn from(e: serde_json::Error) -> Self {
        Self::Internal(format!("rendering an answer as JSON: {e}"))
    }
}

/// Turns every error response that did not come from an [`ApiError`] — axum's rejections for
/// methods, paths, bodies over the limit, missing content types — into the same JSON shape,
/// keeping its status and its text as the message.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "invalid_request",
    };
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_owned();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_owned();
    }
    let mut response = (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    response
}
