//! The SSE relay's ordering and endings: seq order, repeats, gaps, restarts, failures.
use super::*;
use crate::envelope::{ReplyError, Timing};
use crate::ingress::waiters::Waiters;

fn relay() -> Relay {
    let waiters = Arc::new(Waiters::default());
    let waiter = waiters.register("req");
    Relay::new(
        waiter,
        Instant::now() + Duration::from_secs(60),
        Histogram::new([1.0]),
    )
}

fn chunk(seq: u64, generation: &str, text: &str) -> ReplyEvent {
    ReplyEvent::Chunk(Arc::new(Chunk {
        v: 1,
        id: "req".into(),
        seq,
        chunk: json!({"id": generation, "choices": [{"index": 0, "delta": {"content": text}}]}),
    }))
}

fn final_reply(status: Status, body: Option<Value>, error: Option<ReplyError>) -> ReplyEvent {
    ReplyEvent::Final(Arc::new(Reply {
        tenant: None,
        v: 1,
        id: "req".into(),
        status,
        attempts: 1,
        body,
        error,
        usage: None,
        timing: Timing::default(),
        metadata: None,
        served_by: None,
    }))
}

/// The text of the relayed chunks, `[DONE]`, or the error code, in order.
fn sent(relay: &Relay) -> Vec<String> {
    relay
        .out
        .iter()
        .map(|data| match serde_json::from_str::<Value>(data) {
            Ok(v) if v.get("error").is_some() => format!("error:{}", v["error"]["code"]),
            Ok(v) => v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            Err(_) => data.clone(),
        })
        .collect()
}

#[test]
fn chunks_go_out_in_seq_order_without_repeats() {
    let mut r = relay();
    for event in [
        chunk(1, "g", "b"),
        chunk(0, "g", "a"),
        chunk(0, "g", "a"),
        chunk(3, "g", "d"),
        chunk(2, "g", "c"),
        chunk(1, "g", "b"),
    ] {
        r.take(event);
    }
    r.take(final_reply(Status::Ok, Some(json!({"choices": []})), None));
    assert_eq!(sent(&r), ["a", "b", "c", "d", "[DONE]"]);
    assert!(r.finished);
}

#[test]
fn a_gap_at_the_end_is_an_error_not_a_silent_cut() {
    let mut r = relay();
    r.take(chunk(0, "g", "a"));
    r.take(chunk(2, "g", "c"));
    r.take(final_reply(Status::Ok, Some(json!({"choices": []})), None));
    assert_eq!(sent(&r), ["a", "error:\"stream_gap\""]);
}

#[test]
fn a_restarted_answer_is_not_replayed() {
    let mut r = relay();
    r.take(chunk(0, "first", "a"));
    r.take(chunk(1, "first", "b"));
    r.take(chunk(2, "second", "x"));
    r.take(chunk(3, "second", "y"));
    assert_eq!(sent(&r), ["a", "b", "error:\"stream_restarted\""]);
    assert!(r.finished, "nothing more is sent");
}

#[test]
fn a_restarted_answer_that_never_passes_the_relayed_seq_is_not_taken_as_complete() {
    let mut r = relay();
    for seq in 0..4 {
        r.take(chunk(seq, "first", "a"));
    }
    r.take(chunk(0, "second", "x"));
    r.take(chunk(1, "second", "y"));
    r.take(final_reply(Status::Ok, Some(json!({"choices": []})), None));
    assert_eq!(sent(&r), ["a", "a", "a", "a", "error:\"stream_restarted\""]);
}

#[test]
fn a_failure_after_chunks_is_an_error_event() {
    let mut r = relay();
    r.take(chunk(0, "g", "a"));
    let error = ReplyError {
        kind: "stream_interrupted".into(),
        message: "broke".into(),
        status: None,
    };
    r.take(final_reply(Status::Error, None, Some(error)));
    assert_eq!(sent(&r), ["a", "error:\"stream_interrupted\""]);
}

#[test]
fn an_answer_without_chunks_is_sent_whole() {
    let mut r = relay();
    let body = json!({"id": "c", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "whole"}, "finish_reason": "stop"}
    ]});
    r.take(final_reply(Status::Ok, Some(body), None));
    assert_eq!(sent(&r), ["whole", "[DONE]"]);
}
