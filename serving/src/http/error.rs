//! One error model for every route: `{"error":{"code","message"}}` with a 4xx/5xx status.
//! 5xx bodies stay generic; their detail goes to the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

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
    /// A dependency (the broker) is not available; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; the detail is logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict { .. } => (StatusCode::CONFLICT, "run_in_progress"),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
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
        (status, Json(json!({ "error": error }))).into_response()
    }
}
