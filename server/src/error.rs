//! API errors: each variant becomes a status code and a JSON body with a reason.
//!
//! One rule for what leaves the server: a client's mistake is explained to it
//! (`4xx` with the reason); the server's own failures (`5xx`) are logged with
//! their detail and answered with a fixed sentence, so no file path, OS error or
//! look-up table message ever reaches a response body.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

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
    /// A dependency (the look-up table) is down; the detail is only logged.
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
    /// The upstream origin failed (unreachable, or its response could not be
    /// kept); the detail is only logged.
    #[error("bad gateway: {0}")]
    BadGateway(String),
    /// A file could not be read, a task failed; the detail is only logged.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// An internal failure, its detail kept for the log.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }

    /// An origin failure, its detail kept for the log.
    pub fn bad_gateway(e: impl std::fmt::Display) -> Self {
        ApiError::BadGateway(e.to_string())
    }

    /// What the response body says: the reason for a client's mistake, a
    /// fixed sentence for the server's own failures.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Unavailable(_) => "unavailable: try again shortly".into(),
            ApiError::BadGateway(_) => {
                "bad gateway: origin unreachable, or its response could not be kept".into()
            }
            ApiError::Internal(_) => "internal error".into(),
            other => other.to_string(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownPeer => ApiError::UnknownPeer("(delisted or lapsed)".into()),
            StoreError::Full => ApiError::Unavailable("peer table full".into()),
            StoreError::Unavailable(e) => ApiError::Unavailable(e),
        }
    }
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
            Json(serde_json::json!({ "error": self.public_message() })),
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(e: ApiError) -> (StatusCode, String) {
        let resp = e.into_response();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 4096)
            .await
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn server_failures_never_show_their_detail() {
        let secret = "/srv/site/private/a.bin: Permission denied (os error 13)";
        for (e, status) in [
            (
                ApiError::internal(secret),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (ApiError::bad_gateway(secret), StatusCode::BAD_GATEWAY),
            (
                ApiError::from(StoreError::Unavailable(secret.into())),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ] {
            let (got, body) = body_of(e).await;
            assert_eq!(got, status);
            assert!(!body.contains("Permission"), "{body}");
            assert!(!body.contains("/srv"), "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()), "{body}");
        }
        // A client's mistake is still explained to it.
        let (status, body) = body_of(ApiError::BadRequest("invalid path".into())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("invalid path"), "{body}");
    }
}
