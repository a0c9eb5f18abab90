//! The one error type of the HTTP API: every failure becomes
//! `{"error": {"type", "message", "param", "code"}}` (OpenAI's shape) with the matching
//! status. Internal detail is logged,
//! not returned.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::time::Duration;

use super::api::ErrorBody;
use super::quota::Quota;

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
    /// The body is not JSON by its content type.
    #[error("content-type {0:?} is not accepted; send the body as application/json")]
    UnsupportedMediaType(String),
    /// The id was accepted here before with a different submission.
    #[error(
        "id {0:?} was already used for a different request; an id may only be reused to \
         repeat the same submission (send a new id, or none to get one)"
    )]
    Conflict(String),
    #[error("no request with id {:?} is known here", shorten(.0))]
    NotFound(String),
    /// Accepted with `reply_to` a topic this ingress does not read.
    #[error(
        "request {:?} was accepted with reply_to {topic:?}: its reply goes to that topic, \
         which this ingress does not read, so its status is not known here",
        shorten(id)
    )]
    NotTracked { id: String, topic: String },
    #[error(
        "no such route; see POST /v1/chat/completions, POST /v1/requests and \
         GET /v1/requests/{{id}}"
    )]
    NoRoute,
    #[error("this route does not take that HTTP method")]
    MethodNotAllowed,
    /// No backend serves the model named (see `GET /v1/models`).
    #[error("The model `{}` does not exist or you do not have access to it.", shorten(.0))]
    ModelNotFound(String),
    /// `ingress.auth` is on and the caller's key is missing or unknown.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The caller's tenant is over one of its limits; nothing was accepted.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Duration,
        quota: Quota,
    },
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
            AppError::NotFound(_) | AppError::NotTracked { .. } | AppError::NoRoute => {
                StatusCode::NOT_FOUND
            }
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
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
            AppError::NotTracked { .. } => "not_tracked",
            AppError::MethodNotAllowed => "method_not_allowed",
            AppError::ModelNotFound(_) => "model_not_found",
            AppError::UnsupportedMediaType(_) => "unsupported_media_type",
            AppError::Conflict(_) => "conflict",
            AppError::Unavailable { .. } => "unavailable",
            AppError::Unauthorized(_) => "unauthorized",
            AppError::RateLimited { .. } => "rate_limited",
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        // OpenAI's error shape (SDKs read `message`); `code` repeats the type, except
        // where OpenAI has a code of its own under a type of its own.
        let body = match &self {
            AppError::ModelNotFound(_) => Json(ErrorBody::new(
                "invalid_request_error",
                self.to_string(),
                self.kind(),
            )),
            _ => Json(ErrorBody::new(self.kind(), self.to_string(), self.kind())),
        };
        let mut response = (self.status(), body).into_response();
        let headers = response.headers_mut();
        match self {
            AppError::Unavailable {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            AppError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            AppError::RateLimited {
                retry_after, quota, ..
            } => {
                // Whole seconds, rounded up, for every client; OpenAI's SDKs prefer the
                // milliseconds.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
                headers.insert(
                    "retry-after-ms",
                    HeaderValue::from(retry_after.as_millis().max(1) as u64),
                );
                quota.apply(headers);
            }
            _ => {}
        }
        response
    }
}

/// Ids echoed in messages are cut to this many characters.
const ECHOED_ID_CHARS: usize = 80;

/// `id` as echoed in a message: whole up to [`ECHOED_ID_CHARS`], else its start and its
/// length.
fn shorten(id: &str) -> String {
    match id.char_indices().nth(ECHOED_ID_CHARS) {
        None => id.to_string(),
        Some((end, _)) => format!("{}... ({} bytes)", &id[..end], id.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ids_are_cut_in_messages() {
        let message = AppError::NotFound("é".repeat(5000)).to_string();
        assert!(message.len() < 300, "{} bytes", message.len());
        assert!(message.contains("(10000 bytes)"), "{message}");
        assert_eq!(
            AppError::NotFound("abc".into()).to_string(),
            r#"no request with id "abc" is known here"#
        );
    }
}
