//! The call path to the OpenAI-compatible backend: the HTTP client, the classifier that
//! decides what every outcome means, and the retry policy that reads it.

pub mod classify;
pub mod client;
pub mod retry;

use std::time::Duration;

use serde_json::{Map, Value};

use crate::envelope::Usage;

/// One chat-completion call, as the worker hands it to the backend path.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The OpenAI `chat.completions` request body, sent as is.
    pub body: Map<String, Value>,
}

impl ChatRequest {
    /// The `model` field, or `unknown` (only used for span names).
    pub fn model(&self) -> &str {
        self.body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
    }

    /// `max_tokens` (or the newer `max_completion_tokens`) when given.
    pub fn max_tokens(&self) -> Option<u64> {
        self.body
            .get("max_completion_tokens")
            .or_else(|| self.body.get("max_tokens"))
            .and_then(Value::as_u64)
    }
}

/// A successful backend answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The `chat.completion` object.
    pub body: Value,
    pub usage: Option<Usage>,
}

/// Why a backend call did not succeed. Variants are decisions for the classifier.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The backend answered with a non-2xx status.
    #[error("backend answered {status}: {message}")]
    Status {
        status: u16,
        message: String,
        /// From `retry-after-ms` or `Retry-After`, when the backend sent one.
        retry_after: Option<Duration>,
    },
    /// No answer within the per-attempt timeout.
    #[error("backend did not answer within {0:?}")]
    Timeout(Duration),
    /// Connection refused, reset, DNS failure, ...
    #[error("could not reach the backend: {0}")]
    Transport(String),
    /// A 2xx answer that is not a chat completion.
    #[error("backend answer is not a chat completion: {0}")]
    InvalidResponse(String),
}

impl BackendError {
    /// The `error.type` written into replies.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Status { .. } => "backend_status",
            BackendError::Timeout(_) => "timeout",
            BackendError::Transport(_) => "transport",
            BackendError::InvalidResponse(_) => "invalid_response",
        }
    }

    /// The backend's HTTP status, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            BackendError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// How long the backend asked us to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BackendError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
