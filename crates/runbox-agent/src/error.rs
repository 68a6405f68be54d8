//! The agent's error type: every failure becomes `{code, message}` with a stable code and the
//! right status, and never leaks internals beyond the message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use runbox_proto::execd::ErrorResponse;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("missing or wrong access token")]
    Unauthorized,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{message}")]
    Runtime {
        message: String,
        #[source]
        source: Option<std::io::Error>,
    },
}

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::BadRequest(msg.into())
    }

    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }

    pub fn runtime(msg: impl Into<String>, source: std::io::Error) -> Self {
        Self::Runtime {
            message: msg.into(),
            source: Some(source),
        }
    }

    /// Maps a filesystem error on `path` to the right API error.
    pub fn from_io(path: &str, e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::NotFound => Self::NotFound(format!("{path}: no such file or directory")),
            K::PermissionDenied | K::ReadOnlyFilesystem => {
                Self::Forbidden(format!("{path}: permission denied ({e})"))
            }
            K::AlreadyExists => Self::Conflict(format!("{path}: already exists")),
            K::InvalidInput | K::NotADirectory | K::IsADirectory | K::DirectoryNotEmpty => {
                Self::BadRequest(format!("{path}: {e}"))
            }
            K::StorageFull | K::QuotaExceeded | K::FileTooLarge => {
                Self::PayloadTooLarge(format!("{path}: {e}"))
            }
            _ => Self::runtime(format!("{path}: {e}"), e),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            Self::Runtime { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "RUNTIME_ERROR"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let body = ErrorResponse {
            code: code.to_owned(),
            message: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

/// JSON body extractor whose rejections use our error shape instead of axum's plain text.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(ApiError::BadRequest(format!(
                "invalid request body: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// Parses an optional JSON body: empty means the type's default.
pub fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
}
