//! Errors of the lifecycle API: `{code, message}` with a stable code; internals stay in the log.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid API key (header OPEN-SANDBOX-API-KEY)")]
    Unauthorized,
    /// Another tenant's sandbox and a nonexistent one look the same.
    #[error("sandbox {0} not found")]
    SandboxNotFound(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A request body over the server's `max_body_bytes`.
    #[error("the request body is larger than the server's limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    Quota(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: String,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Self::SandboxNotFound(_) => (StatusCode::NOT_FOUND, "SANDBOX_NOT_FOUND"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            Self::Quota(_) => (StatusCode::TOO_MANY_REQUESTS, "QUOTA_EXCEEDED"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        (
            status,
            Json(Body {
                code,
                message: self.to_string(),
            }),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::ApiError;
    use crate::openapi::ErrorCode;

    /// The documented code of each case; the match is exhaustive, so a new case must be
    /// documented in `ErrorCode` (and so in docs/api/openapi.json) before this compiles.
    fn documented(e: &ApiError) -> ErrorCode {
        match e {
            ApiError::BadRequest(_) => ErrorCode::InvalidRequest,
            ApiError::Unauthorized => ErrorCode::Unauthorized,
            ApiError::SandboxNotFound(_) => ErrorCode::SandboxNotFound,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            ApiError::Quota(_) => ErrorCode::QuotaExceeded,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::Internal(_) => ErrorCode::InternalError,
        }
    }

    #[test]
    fn every_code_answered_is_a_documented_code() {
        let s = || "x".to_owned();
        for e in [
            ApiError::BadRequest(s()),
            ApiError::Unauthorized,
            ApiError::SandboxNotFound(s()),
            ApiError::NotFound(s()),
            ApiError::Conflict(s()),
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::Quota(s()),
            ApiError::Unavailable(s()),
            ApiError::Internal(s()),
        ] {
            let (_, code) = e.parts();
            assert_eq!(
                serde_json::to_value(documented(&e)).ok(),
                Some(code.into()),
                "{e:?}"
            );
        }
    }

    #[test]
    fn a_body_over_the_limit_is_413_and_names_the_limit() {
        let e = ApiError::PayloadTooLarge { limit: 1 << 20 };
        assert_eq!(e.parts().0, axum::http::StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.to_string().contains("1048576"), "{e}");
    }
}
