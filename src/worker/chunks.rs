//! Relays a streamed call's chunks to the reply topic as `sluice-kind: chunk` records
//! (contract v1: `{v, id, seq, chunk}`), in order, keyed by the request id so they share
//! the final reply's partition. The first text goes at once (time to first token);
//! later pieces gather for `worker.stream_linger_ms` into one record, so a long answer is
//! not one record per token. Each record is a valid `chat.completion.chunk`: pieces are
//! merged only where their texts simply join.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::envelope::{self, headers, Chunk};
use crate::kafka::producer::{Outgoing, Producer};

/// What the relay wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Relayed {
    /// Chunk records acknowledged by Kafka.
    pub records: u64,
    /// Chunk records Kafka did not take; a reader sees a gap in `seq`.
    pub lost: u64,
}

/// Writes every chunk `receiver` yields until it closes (the call is over), then
/// returns once every record is acknowledged.
pub(crate) async fn relay(
    producer: Producer,
    topic: String,
    id: String,
    mut receiver: mpsc::UnboundedReceiver<Value>,
    linger: Duration,
) -> Relayed {
    let mut relayed = Relayed::default();
    let mut seq = 0;
    let mut carried: Option<Value> = None;
    loop {
        let first = match carried.take() {
            Some(chunk) => chunk,
            None => match receiver.recv().await {
                Some(chunk) => chunk,
                None => return relayed,
            },
        };
        let mut record = first;
        // The first record goes as soon as it carries text (the role alone does not count);
        // later ones gather for the linger.
        let until = (seq > 0).then(|| tokio::time::Instant::now() + linger);
        while until.is_some() || is_empty_text(&record) {
            let next = match until {
                Some(until) => tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    next = receiver.recv() => next,
                },
                None => receiver.recv().await,
            };
            match next {
                Some(chunk) if merge(&mut record, &chunk) => {}
                Some(chunk) => {
                    carried = Some(chunk);
                    break;
                }
                None => break,
            }
        }
        if write(&producer, &topic, &id, seq, record).await {
            relayed.records += 1;
        } else {
            relayed.lost += 1;
        }
        seq += 1;
    }
}

async fn write(producer: &Producer, topic: &str, id: &str, seq: u64, chunk: Value) -> bool {
    let record = Chunk {
        v: envelope::VERSION,
        id: id.to_string(),
        seq,
        chunk,
    };
    let payload = serde_json::to_vec(&record).expect("a Chunk always serializes");
    let sent = producer
        .send(Outgoing {
            topic,
            key: id,
            payload: &payload,
            headers: vec![
                (headers::ID, Some(id.as_bytes())),
                (headers::KIND, Some(headers::KIND_CHUNK.as_bytes())),
            ],
            timestamp: None,
        })
        .await;
    if let Err(e) = &sent {
        tracing::warn!(error = %e, id, seq, "writing a stream chunk failed; the stream has a gap");
    }
    sent.is_ok()
}

/// Appends `next` to `into` when both are one choice's plain text pieces (content or
/// reasoning content) and `into` has not finished; false leaves both as they were.
pub(crate) fn merge(into: &mut Value, next: &Value) -> bool {
    let (Some(a), Some(b)) = (single_text_choice(into), single_text_choice(next)) else {
        return false;
    };
    if a != b || !into["choices"][0]["finish_reason"].is_null() {
        return false;
    }
    if !next["usage"].is_null() {
        return false;
    }
    let finish = next["choices"][0]["finish_reason"].clone();
    let delta = next["choices"][0]["delta"].clone();
    let target = &mut into["choices"][0]["delta"];
    for key in ["content", "reasoning_content"] {
        if let Some(text) = delta[key].as_str() {
            let joined = format!("{}{text}", target[key].as_str().unwrap_or(""));
            target[key] = Value::String(joined);
        }
    }
    into["choices"][0]["finish_reason"] = finish;
    true
}

/// Whether a chunk is one choice's text piece with no text yet (the role chunk that
/// opens a stream), nor a finish.
fn is_empty_text(chunk: &Value) -> bool {
    single_text_choice(chunk).is_some()
        && chunk["choices"][0]["finish_reason"].is_null()
        && ["content", "reasoning_content"].iter().all(|key| {
            chunk["choices"][0]["delta"][key]
                .as_str()
                .unwrap_or("")
                .is_empty()
        })
}

/// The choice index of a chunk with exactly one choice whose delta holds only text (and a
/// role), without logprobs.
fn single_text_choice(chunk: &Value) -> Option<u64> {
    let [choice] = chunk["choices"].as_array()?.as_slice() else {
        return None;
    };
    let delta = choice["delta"].as_object()?;
    let plain = delta.iter().all(|(key, value)| match key.as_str() {
        "content" | "reasoning_content" => value.is_string() || value.is_null(),
        "role" => true,
        _ => value.is_null(),
    });
    (plain && choice["logprobs"].is_null()).then(|| choice["index"].as_u64().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn piece(text: &str, finish: Value) -> Value {
        json!({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":text},"finish_reason":finish}]})
    }

    #[test]
    fn text_pieces_join_until_the_finish() {
        let mut record = piece("Hel", Value::Null);
        assert!(merge(&mut record, &piece("lo", Value::Null)));
        assert!(merge(&mut record, &piece("!", json!("stop"))));
        assert_eq!(record["choices"][0]["delta"]["content"], "Hello!");
        assert_eq!(record["choices"][0]["finish_reason"], "stop");
        assert!(
            !merge(&mut record, &piece("more", Value::Null)),
            "nothing joins a finished choice"
        );
    }

    #[test]
    fn the_role_chunk_waits_for_the_first_text() {
        let role = json!({"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]});
        assert!(is_empty_text(&role));
        assert!(!is_empty_text(&piece("a", Value::Null)));
        assert!(
            !is_empty_text(&piece("", json!("stop"))),
            "a finish is sent"
        );
        let mut record = role;
        assert!(merge(&mut record, &piece("Hi", Value::Null)));
        assert_eq!(record["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(record["choices"][0]["delta"]["content"], "Hi");
    }

    #[test]
    fn tool_calls_usage_and_other_choices_stay_apart() {
        let mut record = piece("a", Value::Null);
        let tool = json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]},"finish_reason":null}]});
        let usage = json!({"choices":[],"usage":{"prompt_tokens":1}});
        let other = json!({"choices":[{"index":1,"delta":{"content":"b"},"finish_reason":null}]});
        for next in [&tool, &usage, &other] {
            assert!(!merge(&mut record, next), "{next}");
        }
        assert_eq!(record, piece("a", Value::Null), "unchanged");
    }
}
