//! The call path to the OpenAI-compatible backend, a stack of small tower layers
//! assembled in [`stack::build_stack`] (outer to inner):
//!
//! `Retry -> RateLimit -> AdaptiveConcurrency -> CircuitBreaker -> Timeout -> OpenAiClient`
//!
//! Every layer is a `Service<ChatRequest, Response = ChatResponse, Error = BackendError>`,
//! so decisions stay typed end to end; one classifier ([`classify`]) says what each
//! outcome means, and retry, the concurrency controller and the breaker all read it.
//! Where the backend publishes its own load ([`saturation`]), the controller reads that
//! too.

pub mod breaker;
pub(crate) mod classify;
pub mod client;
pub mod concurrency;
pub mod rate;
pub mod retry;
pub(crate) mod saturation;
pub mod stack;
pub mod stream;
pub mod timeout;

use std::time::Duration;

use serde_json::{Map, Value};

use crate::envelope::Usage;

/// `max_tokens` assumed for cost estimates when a request does not set it.
pub(crate) const DEFAULT_MAX_TOKENS_ESTIMATE: u64 = 256;

/// One chat-completion call, as the worker hands it to the backend path.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The OpenAI `chat.completions` request body, sent as is.
    pub body: Map<String, Value>,
    /// Unix milliseconds after which no attempt may start.
    pub deadline_ms: Option<u64>,
    /// Set for a streamed call: the backend is asked to stream, and each chunk goes here
    /// as it arrives (the response is still the whole completion).
    pub stream: Option<stream::ChunkSink>,
}

impl ChatRequest {
    pub fn new(body: Map<String, Value>, deadline_ms: Option<u64>) -> Self {
        Self {
            body,
            deadline_ms,
            stream: None,
        }
    }

    /// The same call, streamed into `sink`.
    pub(crate) fn streaming(mut self, sink: stream::ChunkSink) -> Self {
        self.stream = Some(sink);
        self
    }

    /// Chunks already passed on by a streamed call (0 for others): a retry after any
    /// would replay tokens.
    pub(crate) fn chunks_relayed(&self) -> u64 {
        self.stream.as_ref().map_or(0, stream::ChunkSink::relayed)
    }

    /// What the call may cost in tokens: estimated prompt plus `max_tokens`
    /// (or [`DEFAULT_MAX_TOKENS_ESTIMATE`]). Used by the tokens/min budget and to
    /// normalise latency for the concurrency controller.
    pub(crate) fn estimated_tokens(&self) -> u64 {
        estimated_tokens(&self.body)
    }

    /// The `model` field, or `unknown` (only used for span names).
    pub fn model(&self) -> &str {
        self.body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
    }

    /// `max_tokens` (or the newer `max_completion_tokens`) when given.
    pub fn max_tokens(&self) -> Option<u64> {
        max_tokens(&self.body)
    }
}

/// Estimated prompt tokens of a chat request body: about four characters of message
/// text per token.
pub(crate) fn estimated_prompt_tokens(body: &Map<String, Value>) -> u64 {
    let chars: usize = body
        .get("messages")
        .and_then(Value::as_array)
        .map(|messages| {
            messages
                .iter()
                .map(|m| match &m["content"] {
                    Value::String(text) => text.len(),
                    other => other.to_string().len(),
                })
                .sum()
        })
        .unwrap_or(0);
    (chars as u64).div_ceil(4).max(1)
}

/// Estimated prompt plus `max_tokens` (or [`DEFAULT_MAX_TOKENS_ESTIMATE`]) of a chat
/// request body.
pub(crate) fn estimated_tokens(body: &Map<String, Value>) -> u64 {
    estimated_prompt_tokens(body) + max_tokens(body).unwrap_or(DEFAULT_MAX_TOKENS_ESTIMATE)
}

/// `max_tokens` (or the newer `max_completion_tokens`) of a chat request body.
pub fn max_tokens(body: &Map<String, Value>) -> Option<u64> {
    body.get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
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
    /// The circuit breaker is open: the backend was not called.
    #[error("circuit breaker open; backend not called (next probe in {retry_in:?})")]
    CircuitOpen { retry_in: Duration },
    /// The request's deadline passed before this attempt could start.
    #[error("the request's deadline passed before the backend could be called")]
    DeadlineExceeded,
    /// A streamed call failed after some of its chunks had been passed on; it is not
    /// retried, since a new attempt would send its tokens again.
    #[error("the backend's stream broke after {chunks} chunks were relayed, so it was not retried: {cause}")]
    StreamInterrupted { chunks: u64, cause: String },
}

impl BackendError {
    /// The `error.type` written into replies.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Status { .. } => "backend_status",
            BackendError::Timeout(_) => "timeout",
            BackendError::Transport(_) => "transport",
            BackendError::InvalidResponse(_) => "invalid_response",
            BackendError::CircuitOpen { .. } => "circuit_open",
            BackendError::DeadlineExceeded => "expired",
            BackendError::StreamInterrupted { .. } => "stream_interrupted",
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
            BackendError::CircuitOpen { retry_in } => Some(*retry_in),
            _ => None,
        }
    }
}
