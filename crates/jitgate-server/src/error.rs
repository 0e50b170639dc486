//! The one place where failures become HTTP answers: a status and Azure's error body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use jitgate_api_types::error::ErrorBody;
use jitgate_core::invalid::InvalidKind;
use jitgate_core::Invalid;
use jitgate_store::StoreError;

/// An error answer. Only a 429 and a 503 carry `Retry-After`: other 4xx answers must not be
/// retried.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub target: Option<String>,
    /// Seconds for `Retry-After` (429 and 503 only).
    pub retry_after: Option<u64>,
    /// The methods of a 405's `Allow` header.
    pub allow: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError { status, code: code.into(), message: message.into(), target: None, retry_after: None, allow: None }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn unauthorized(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// Logs the answer: `refused` for a 4xx, `failed` for a 5xx. Inside the request's span (see
    /// [`crate::trace`]), so the line names the request, its route and its caller.
    pub fn log(&self) {
        let status = self.status.as_u16();
        if self.status.is_server_error() {
            tracing::error!(status, code = %self.code, detail = %self.message, "failed");
        } else {
            tracing::info!(status, code = %self.code, detail = %self.message, "refused");
        }
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "jitgate could not complete the request; nothing was changed. See the server log.",
        )
    }
}

impl From<Invalid> for ApiError {
    fn from(i: Invalid) -> Self {
        let status = match i.kind {
            InvalidKind::BadInput => StatusCode::BAD_REQUEST,
            InvalidKind::NotFound => StatusCode::NOT_FOUND,
            InvalidKind::Conflict => StatusCode::CONFLICT,
            InvalidKind::Forbidden => StatusCode::FORBIDDEN,
        };
        ApiError { status, code: i.code.into(), message: i.message, target: i.target, retry_after: None, allow: None }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Rejected(i) => i.into(),
            StoreError::Backend(msg) => {
                tracing::error!(error = %msg, "store failure");
                ApiError::internal()
            }
            StoreError::Unavailable(source) => {
                tracing::error!(error = %source, "the store cannot be reached");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "StoreUnavailable",
                    "the database cannot be reached at the moment; try again shortly",
                )
            }
            StoreError::Full(source) => {
                tracing::error!(error = %source, "the data directory is full; the change was refused");
                ApiError {
                    retry_after: Some(FULL_RETRY_AFTER),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "StorageFull",
                        "the data directory is full: jitgate cannot write this change and its audit record, so \
                         nothing was changed. Free space on the server's disk; the same request then succeeds.",
                    )
                }
            }
            StoreError::DiskFailed(source) => {
                tracing::error!(error = %source, "the data directory's disk failed; changes are refused");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "StorageFailed",
                    "the server's disk failed to store changes (fsync failed): jitgate accepts no change until it \
                     is restarted on a sound disk. A change answered with this error may or may not have been \
                     kept; repeat it with the same x-ms-client-request-id to find out.",
                )
            }
            StoreError::Conflict(source) => {
                tracing::warn!(error = %source, "store conflict with a concurrent change");
                ApiError::new(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "another change to the same resource was made at the same time; nothing was changed, try again",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    /// The answer, logged (see [`ApiError::log`]).
    fn into_response(self) -> Response {
        self.log();
        let body = ErrorBody::new(self.code, self.message, self.target);
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = (self.status, bytes).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"jitgate\""));
        }
        let retryable = matches!(self.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE);
        if let Some(secs) = self.retry_after.filter(|_| retryable) {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(v) = self.allow.as_deref().and_then(|a| HeaderValue::from_str(a).ok()) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        resp
    }
}

/// The `Retry-After` of a change refused because the data directory is full (seconds).
pub const FULL_RETRY_AFTER: u64 = 30;

/// A JSON answer with the given status.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut resp = (status, bytes).into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "could not encode a response");
            ApiError::internal().into_response()
        }
    }
}

#[cfg(test)]
mod conflict_tests {
    use super::*;

    #[test]
    fn a_store_conflict_is_a_409_with_an_azure_body() {
        let e = ApiError::from(StoreError::Conflict("serialization failure".into()));
        assert_eq!((e.status, e.code.as_str()), (StatusCode::CONFLICT, "Conflict"));
        assert!(e.message.contains("try again"), "{}", e.message);
    }

    #[test]
    fn a_full_disk_is_a_503_with_retry_after_and_a_failed_fsync_a_503_without() {
        let full = ApiError::from(StoreError::Full("database or disk is full".into()));
        assert_eq!((full.status, full.code.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "StorageFull"));
        assert!(full.message.starts_with("the data directory is full"), "{}", full.message);
        let resp = full.into_response();
        assert_eq!(resp.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("30"));
        let failed = ApiError::from(StoreError::DiskFailed("fsync failed".into()));
        assert_eq!((failed.status, failed.code.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "StorageFailed"));
        assert!(failed.into_response().headers().get(header::RETRY_AFTER).is_none());
    }
}
