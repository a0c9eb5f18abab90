//! The wire envelope: a request decoded by the worker and encoded by the ingress; a final
//! reply encoded by the worker (as the record it writes) and decoded by every ingress.

use std::hint::black_box;

use gungraun::{library_benchmark, library_benchmark_group};
use serde_json::json;
use sluice::envelope::{self, Reply, Request, ServedBy, Status, Timing, Usage};
use sluice::kafka::reply_record::{self, ReplyRecord};
use sluice::worker::output::Output;

use crate::fixtures;

fn request() -> Request {
    Request {
        v: envelope::VERSION,
        id: "0196f3a2-7c1e-7d40-9a8b-3f5e2c1d0a97".into(),
        tenant: Some("bookshop".into()),
        deadline_ms: Some(1_764_000_030_000),
        lane: Some("interactive".into()),
        reply_to: None,
        ordering_key: Some("conversation-5531".into()),
        fallback: None,
        body: fixtures::chat_body(),
        metadata: Some(json!({"ticket": "SUP-20931", "channel": "web"})),
    }
}

fn reply() -> Reply {
    Reply {
        v: envelope::VERSION,
        id: "0196f3a2-7c1e-7d40-9a8b-3f5e2c1d0a97".into(),
        status: Status::Ok,
        attempts: 1,
        tenant: Some("bookshop".into()),
        body: Some(fixtures::completion()),
        error: None,
        usage: Some(Usage {
            prompt_tokens: 214,
            completion_tokens: 71,
        }),
        timing: Timing {
            enqueued_ms: 1_764_000_000_000,
            started_ms: 1_764_000_000_412,
            finished_ms: 1_764_000_001_630,
            queue_ms: 412,
            backend_ms: 1_218,
        },
        metadata: Some(json!({"ticket": "SUP-20931", "channel": "web"})),
        served_by: Some(Box::new(ServedBy {
            backend: "small-1".into(),
            model: "smollm2-135m".into(),
            fallback_from: None,
            fallback_reason: None,
        })),
    }
}

fn request_bytes() -> Vec<u8> {
    serde_json::to_vec(&request()).expect("a Request always serializes")
}

fn reply_bytes() -> Vec<u8> {
    serde_json::to_vec(&reply()).expect("a Reply always serializes")
}

fn reply_output() -> Output {
    Output::Reply {
        topic: "sluice.replies".into(),
        reply: reply(),
    }
}

// The worker reading a request off the request topic.
#[library_benchmark]
#[bench::typical(request_bytes())]
fn decode_request(bytes: Vec<u8>) -> Request {
    black_box(envelope::decode_request(black_box(&bytes)).expect("a valid request"))
}

// The ingress writing a request to Kafka.
#[library_benchmark]
#[bench::typical(request())]
fn encode_request(request: Request) -> Vec<u8> {
    black_box(serde_json::to_vec(black_box(&request)).expect("a Request always serializes"))
}

// The worker turning a final reply into the record it writes.
#[library_benchmark]
#[bench::typical(reply_output())]
fn encode_reply(output: Output) -> usize {
    black_box(black_box(&output).to_record("sluice.dlq").payload.len())
}

// An ingress reading a final reply off the reply topic.
#[library_benchmark]
#[bench::typical(reply_bytes())]
fn decode_reply(bytes: Vec<u8>) -> ReplyRecord {
    black_box(reply_record::decode_parts(false, black_box(&bytes)).expect("a valid reply"))
}

library_benchmark_group!(
    name = envelope_group,
    benchmarks = [decode_request, encode_request, encode_reply, decode_reply]
);
