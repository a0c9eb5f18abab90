//! The one error type of the HTTP API: every failure becomes
//! `{"error": {"type", "message"}}` with the matching status. Internal detail is logged,
//! not returned.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An API failure and the status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is malformed; the message says how to fix it.
    #[error("{0}")]
    BadRequest(String),
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// Within `ingress.max_body_bytes`, but Kafka refuses a record this large.
    #[error(
        "the request is {bytes} bytes as stored, more than Kafka accepts (message.max.bytes); \
         it was not accepted"
    )]
    TooLargeForKafka { bytes: usize },
    #[error("no request with id {0:?} is known here")]
    NotFound(String),
    #[error("no such route; see POST /v1/requests and GET /v1/requests/{{id}}")]
    NoRoute,
    #[error("this route does not take that HTTP method")]
    MethodNotAllowed,
    /// Kafka did not take the write in time; nothing was accepted.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::PayloadTooLarge { .. } | AppError::TooLargeForKafka { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            AppError::NotFound(_) | AppError::NoRoute => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `error.type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            AppError::BadRequest(_) => "invalid_request",
            AppError::PayloadTooLarge { .. } | AppError::TooLargeForKafka { .. } => {
                "payload_too_large"
            }
            AppError::NotFound(_) | AppError::NoRoute => "not_found",
            AppError::MethodNotAllowed => "method_not_allowed",
            AppError::Unavailable { .. } => "unavailable",
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": { "type": self.kind(), "message": self.to_string() } }));
        let mut response = (self.status(), body).into_response();
        if let AppError::Unavailable {
            retry_after_secs, ..
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}
