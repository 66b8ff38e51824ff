//! API errors: each variant becomes a status code and a JSON body with a reason.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Anything a request can do wrong, or the server can fail at.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body or a header is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The peer must register first.
    #[error("unknown peer {0:?}: register with POST /v1/peers first")]
    UnknownPeer(String),
    /// The body was refused by the extractor (too large, wrong type, bad JSON).
    #[error("{1}")]
    Rejected(StatusCode, String),
    /// The request is not proven by the key of the peer it is about.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The caller may not do this (a delisted peer).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Conflicts with the current state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Too many requests from this peer.
    #[error("too many requests; slow down")]
    TooManyRequests,
    /// A dependency (the look-up table) is down.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Nothing at this path or hash.
    #[error("not found")]
    NotFound,
    /// The method is not supported here.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The `Range` cannot be satisfied for an object of this size.
    #[error("range not satisfiable")]
    RangeNotSatisfiable(u64),
    /// The upstream origin failed.
    #[error("bad gateway: {0}")]
    BadGateway(String),
    /// A file could not be read.
    #[error("internal error: {0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Rejected(status, _) => *status,
            ApiError::UnknownPeer(_) | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let retry = matches!(self, ApiError::TooManyRequests | ApiError::Unavailable(_));
        let mut resp = (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if retry {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if let ApiError::RangeNotSatisfiable(size) = self
            && let Ok(v) = axum::http::HeaderValue::from_str(&format!("bytes */{size}"))
        {
            resp.headers_mut()
                .insert(axum::http::header::CONTENT_RANGE, v);
        }
        resp
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        let status = r.status();
        let status = if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        // Malformed JSON is a 400 (axum says 422 for a well-formed body of the wrong shape).
        let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        ApiError::Rejected(status, r.body_text())
    }
}
