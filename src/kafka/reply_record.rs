//! The one way to read a record of the reply topic: a final reply or a stream chunk,
//! told apart by the `sluice-kind` header (a record without it is taken as a final
//! reply, as written before chunks existed). Every reader of the reply topic (the
//! ingress, loadgen) decodes through here.

use rdkafka::message::Headers;
use rdkafka::Message;

use crate::envelope::{headers, Chunk, Reply};

/// A decoded reply-topic record.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyRecord {
    Final(Reply),
    Chunk(Chunk),
}

/// Why a reply-topic record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyDecodeError {
    #[error("empty value")]
    Empty,
    #[error("not a version-1 {kind}: {message}")]
    Json { kind: &'static str, message: String },
}

/// Decodes one record of the reply topic.
pub fn decode<M: Message>(message: &M) -> Result<ReplyRecord, ReplyDecodeError> {
    let payload = message.payload().ok_or(ReplyDecodeError::Empty)?;
    decode_parts(is_chunk(message), payload)
}

/// Decodes a reply-topic value by its kind.
pub fn decode_parts(chunk: bool, payload: &[u8]) -> Result<ReplyRecord, ReplyDecodeError> {
    if payload.is_empty() {
        return Err(ReplyDecodeError::Empty);
    }
    let invalid = |kind| {
        move |e: serde_json::Error| ReplyDecodeError::Json {
            kind,
            message: e.to_string(),
        }
    };
    if chunk {
        serde_json::from_slice(payload)
            .map(ReplyRecord::Chunk)
            .map_err(invalid("chunk"))
    } else {
        serde_json::from_slice(payload)
            .map(ReplyRecord::Final)
            .map_err(invalid("reply"))
    }
}

/// Whether the record is a stream chunk (`sluice-kind: chunk`).
pub(crate) fn is_chunk<M: Message>(message: &M) -> bool {
    message.headers().is_some_and(|h| {
        h.iter().any(|header| {
            header.key == headers::KIND && header.value == Some(headers::KIND_CHUNK.as_bytes())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_decode_to_their_shapes() {
        let chunk = br#"{"v":1,"id":"a","seq":3,"chunk":{"choices":[]}}"#;
        match decode_parts(true, chunk) {
            Ok(ReplyRecord::Chunk(c)) => assert_eq!((c.id.as_str(), c.seq), ("a", 3)),
            other => panic!("{other:?}"),
        }
        let reply = br#"{"v":1,"id":"a","status":"ok","attempts":1,"body":{},"error":null,"timing":{"enqueued_ms":0,"started_ms":0,"finished_ms":0,"queue_ms":0,"backend_ms":0}}"#;
        assert!(matches!(
            decode_parts(false, reply),
            Ok(ReplyRecord::Final(_))
        ));
        let err = decode_parts(false, chunk).unwrap_err().to_string();
        assert!(err.starts_with("not a version-1 reply"), "{err}");
        assert_eq!(decode_parts(true, b""), Err(ReplyDecodeError::Empty));
    }
}
