//! The wire contract, version 1: request, reply and chunk values and the header names
//! that travel with them. docs/schema/*.json describe the same shapes for other languages.
//!
//! Decoding is strict where a mistake would lose work (version, id, body) and lenient
//! elsewhere (unknown fields are ignored so newer producers can add fields).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The only contract version this build reads and writes.
pub const VERSION: u32 = 1;

/// Kafka header names.
pub mod headers {
    /// The request id, so tools can route without decoding the value.
    pub(crate) const ID: &str = "sluice-id";
    /// `final` or `chunk` on the reply topic.
    pub(crate) const KIND: &str = "sluice-kind";
    /// Dead letters: why the message could not be processed.
    pub(crate) const ERROR_REASON: &str = "sluice-error-reason";
    /// Dead letters: the error class (`decode`, `backend`, ...).
    pub(crate) const ERROR_CLASS: &str = "sluice-error-class";
    /// Dead letters: when it was dead-lettered, RFC 3339 UTC.
    pub(crate) const ERROR_AT: &str = "sluice-error-at";
    /// Dead letters: how many backend attempts were made.
    pub(crate) const ERROR_ATTEMPTS: &str = "sluice-error-attempts";
    /// Dead letters: which worker wrote it.
    pub(crate) const WORKER: &str = "sluice-worker";
    /// Dead letters: what was left out because the whole record was too large for the
    /// dead-letter topic (`value (N bytes)`, then `key and original headers`).
    pub(crate) const ERROR_DROPPED: &str = "sluice-error-dropped";
    /// Dead letters: the topic, partition and offset the message was read from.
    pub(crate) const SOURCE_TOPIC: &str = "sluice-source-topic";
    pub(crate) const SOURCE_PARTITION: &str = "sluice-source-partition";
    pub(crate) const SOURCE_OFFSET: &str = "sluice-source-offset";

    /// Values of [`KIND`].
    pub(crate) const KIND_FINAL: &str = "final";
    pub(crate) const KIND_CHUNK: &str = "chunk";
}

/// A request as it sits on the request topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    /// Idempotency key and correlation id.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Unix milliseconds after which the backend is never called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
    /// Reply topic override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Requests sharing a key are processed in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    /// `false`: served only by the model it names, never by its fallback chain
    /// (`[models.fallbacks]`). Absent: the chain applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<bool>,
    /// An OpenAI `chat.completions` request.
    pub body: Map<String, Value>,
    /// Echoed back untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Error,
    Expired,
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Expired => "expired",
            Status::Rejected => "rejected",
        }
    }
}

/// The one final reply a request ends in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reply {
    pub v: u32,
    pub id: String,
    pub status: Status,
    /// Backend calls made for this request (0 when it never reached the backend).
    pub attempts: u32,
    /// The request's tenant, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub body: Option<Value>,
    pub error: Option<ReplyError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    pub timing: Timing,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// The backend that was called, and the model it was asked for; none when no backend
    /// was called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<Box<ServedBy>>,
}

/// Which backend a request was sent to, by its configured name, and the model it was
/// sent as (an alias resolved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServedBy {
    pub backend: String,
    pub model: String,
    /// When another model than the one named served it (its fallback chain): the model
    /// named (an alias resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_from: Option<String>,
    /// Why it fell back: `breaker_open`, `deadline`, `retries_exhausted` or
    /// `context_too_long`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
}

/// Why a request did not end `ok`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplyError {
    /// `backend_status`, `timeout`, `transport`, `invalid_request`, `expired`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    /// The backend's HTTP status, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// Token counts as the backend reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Where the time went, unix milliseconds and durations in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timing {
    /// When the request was written to Kafka (the record's timestamp).
    pub enqueued_ms: u64,
    /// When a worker took it.
    pub started_ms: u64,
    pub finished_ms: u64,
    pub queue_ms: u64,
    pub backend_ms: u64,
}

/// One streamed piece of a completion (`sluice-kind: chunk`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub v: u32,
    pub id: String,
    pub seq: u64,
    pub chunk: Value,
}

/// Why bytes on the request topic are not a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message value")]
    Empty,
    #[error("not valid JSON for a version-1 request: {0}")]
    Json(String),
    #[error("unsupported contract version {0} (this worker reads version {VERSION})")]
    Version(u64),
    #[error("request id must be a non-empty string of at most 256 characters")]
    BadId,
}

impl DecodeError {
    /// Short stable name for metrics and the `sluice-error-class` header.
    pub fn class(&self) -> &'static str {
        "decode"
    }
}

/// Longest id accepted; ids become Kafka keys and cache keys.
pub(crate) const MAX_ID_LEN: usize = 256;

/// Decodes a request value, checking the version before the shape so an old or new
/// producer gets a version error rather than a confusing field error.
pub fn decode_request(bytes: &[u8]) -> Result<Request, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    #[derive(Deserialize)]
    struct VersionOnly {
        v: Option<Value>,
    }
    let probe: VersionOnly =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string()))?;
    match probe.v {
        Some(Value::Number(n)) if n.as_u64() == Some(u64::from(VERSION)) => {}
        Some(Value::Number(n)) if n.is_u64() => {
            return Err(DecodeError::Version(n.as_u64().unwrap_or(0)))
        }
        Some(_) => {
            return Err(DecodeError::Json(
                "field `v` must be the integer literal 1".into(),
            ))
        }
        None => return Err(DecodeError::Json("missing field `v`".into())),
    }
    let request: Request =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string()))?;
    if !is_valid_id(&request.id) {
        return Err(DecodeError::BadId);
    }
    Ok(request)
}

/// Ids are free-form but must be usable as a Kafka key and a URL path segment.
pub(crate) fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.chars().count() <= MAX_ID_LEN
        && !id.chars().any(|c| c.is_control() || c == '/')
}

/// A fresh, time-ordered request id.
pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Current unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample_request() -> Request {
        serde_json::from_value(json!({
            "v": 1, "id": "01J-abc", "tenant": "acme", "deadline_ms": 1764000000000u64,
            "lane": "interactive", "reply_to": "sluice.replies", "ordering_key": "conv-42",
            "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
            "metadata": {"trace": "x"}
        }))
        .unwrap()
    }

    #[test]
    fn request_round_trips() {
        let request = sample_request();
        let bytes = serde_json::to_vec(&request).unwrap();
        assert_eq!(decode_request(&bytes).unwrap(), request);
    }

    #[test]
    fn minimal_request_omits_optional_fields() {
        let bytes = br#"{"v":1,"id":"x","body":{"model":"m","messages":[]}}"#;
        let request = decode_request(bytes).unwrap();
        assert_eq!(request.deadline_ms, None);
        let text = serde_json::to_string(&request).unwrap();
        assert!(
            !text.contains("deadline_ms") && !text.contains("null"),
            "{text}"
        );
    }

    #[test]
    fn reply_round_trips_with_renamed_error_type() {
        let reply = Reply {
            tenant: None,
            v: 1,
            id: "x".into(),
            status: Status::Error,
            attempts: 2,
            body: None,
            error: Some(ReplyError {
                kind: "backend_status".into(),
                message: "bad request".into(),
                status: Some(400),
            }),
            usage: None,
            timing: Timing {
                enqueued_ms: 1,
                started_ms: 2,
                finished_ms: 5,
                queue_ms: 1,
                backend_ms: 3,
            },
            metadata: Some(json!({"k": 1})),
            served_by: None,
        };
        let value = serde_json::to_value(&reply).unwrap();
        assert_eq!(value["status"], "error");
        assert_eq!(value["error"]["type"], "backend_status");
        assert_eq!(value["body"], Value::Null);
        let back: Reply = serde_json::from_value(value).unwrap();
        assert_eq!(back, reply);
    }

    #[test]
    fn chunk_round_trips() {
        let chunk = Chunk {
            v: 1,
            id: "x".into(),
            seq: 3,
            chunk: json!({"object": "chat.completion.chunk"}),
        };
        let back: Chunk = serde_json::from_slice(&serde_json::to_vec(&chunk).unwrap()).unwrap();
        assert_eq!(back, chunk);
    }

    #[test]
    fn decode_rejects_what_would_lose_work() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"\xff\xfe garbage", "JSON"),
            (b"[1,2]", "JSON"),
            (br#"{"id":"x","body":{}}"#, "missing field `v`"),
            (br#"{"v":2,"id":"x","body":{}}"#, "version 2"),
            (br#"{"v":"1","id":"x","body":{}}"#, "integer literal 1"),
            (br#"{"v":1.0,"id":"x","body":{}}"#, "integer literal 1"),
            (br#"{"v":1,"body":{}}"#, "missing field `id`"),
            (br#"{"v":1,"id":"x"}"#, "missing field `body`"),
            (br#"{"v":1,"id":"x","body":"hi"}"#, "invalid type"),
            (br#"{"v":1,"id":"","body":{}}"#, "non-empty"),
            (br#"{"v":1,"id":"a/b","body":{}}"#, "non-empty"),
            (
                br#"{"v":1,"id":"x","body":{},"deadline_ms":-1}"#,
                "invalid value",
            ),
        ];
        for (bytes, expected) in cases {
            let err = decode_request(bytes).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{:?}: {err}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn id_length_counts_characters_like_json_schema() {
        let ok = format!(r#"{{"v":1,"id":"{}","body":{{}}}}"#, "é".repeat(MAX_ID_LEN));
        assert!(decode_request(ok.as_bytes()).is_ok());
        let long = format!(
            r#"{{"v":1,"id":"{}","body":{{}}}}"#,
            "é".repeat(MAX_ID_LEN + 1)
        );
        assert_eq!(decode_request(long.as_bytes()), Err(DecodeError::BadId));
    }

    #[test]
    fn new_ids_are_unique_uuid_v7() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 7);
    }
}
