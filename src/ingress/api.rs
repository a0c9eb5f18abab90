//! The bodies of the HTTP API as Rust types: what the routes read and write, and what
//! `GET /openapi.json` documents ([`super::openapi`]), so the document cannot drift
//! from the code.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::envelope::Reply;

/// Every error: `{"error": {...}}`, OpenAI's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// sluice's error type (`invalid_request`, `unavailable`, ...) or, for an answer
    /// relayed from the backend, OpenAI's (`invalid_request_error`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// How to fix it, or what the backend said.
    pub message: String,
    /// Always null (OpenAI's field).
    pub param: Option<String>,
    /// A stable code: sluice's error type.
    pub code: Option<String>,
}

impl ErrorBody {
    pub fn new(kind: &str, message: String, code: &str) -> Self {
        ErrorBody {
            error: ErrorDetail {
                kind: kind.to_string(),
                message,
                param: None,
                code: Some(code.to_string()),
            },
        }
    }
}

/// `202` for `POST /v1/requests`: the request is in Kafka.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub id: String,
    /// Always `queued`.
    pub status: String,
    /// Set when the reply goes to another topic than the ingress reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// `false` with `reply_to`: `GET /v1/requests/{id}` will not know its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracked: Option<bool>,
}

/// `GET /v1/requests/{id}`: queued, or finished with its reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestStatus {
    pub id: String,
    /// `queued`, or the reply's status: `ok`, `error`, `expired`, `rejected`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
}

/// The body of `POST /v1/requests` (also each item of a batch).
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Submission {
    /// Idempotency key; a UUIDv7 is made when absent. 1-256 characters, no `/`.
    pub id: Option<String>,
    /// An OpenAI `chat.completions` request; `messages` is required.
    #[schema(value_type = ChatCompletionRequest)]
    pub body: Map<String, Value>,
    /// Unix milliseconds after which the backend is never called.
    pub deadline_ms: Option<u64>,
    /// One of the configured priority lanes.
    pub lane: Option<String>,
    /// Requests with the same key are processed in order.
    pub ordering_key: Option<String>,
    /// Another reply topic (GET then does not know the outcome).
    pub reply_to: Option<String>,
    /// Echoed back in the reply untouched.
    pub metadata: Option<Value>,
    /// `false`: never served by the model's fallback chain (`[models.fallbacks]`).
    pub fallback: Option<bool>,
    /// Ignored: the ingress stamps the tenant from the API key.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub tenant: Option<serde::de::IgnoredAny>,
}

/// An OpenAI chat completions request, passed to the backend as it is (only `messages`
/// and `stream` are read by sluice).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct ChatCompletionRequest {
    pub model: Option<String>,
    /// The conversation; at least one message.
    #[schema(min_items = 1)]
    pub messages: Vec<Map<String, Value>>,
    /// `true`: the answer is relayed as server-sent events.
    pub stream: Option<bool>,
    /// Any other field of the OpenAI request.
    #[serde(flatten)]
    #[schema(ignore)]
    pub other: Map<String, Value>,
}

/// `POST /v1/requests:batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest {
    /// Each a `POST /v1/requests` body; an item that is not valid is answered on its own.
    #[schema(value_type = Vec<Object>, min_items = 1)]
    pub requests: Vec<Value>,
}

/// `207` for a batch: one result per item, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct BatchResponse {
    pub results: Vec<BatchResult>,
}

/// One item's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    /// The item's place in the batch, from 0.
    pub index: usize,
    /// 202 when Kafka acknowledged it, else the item's own error status.
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Accepted>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}
