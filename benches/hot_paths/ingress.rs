//! The ingress body parse: a `POST /v1/requests` submission and an OpenAI
//! `POST /v1/chat/completions` body, each of a typical chat request, made into the
//! envelope written to Kafka.

use std::hint::black_box;
use std::time::Duration;

use gungraun::{library_benchmark, library_benchmark_group};
use serde_json::{json, Value};
use sluice::config::Config;
use sluice::envelope::Request;
use sluice::ingress::{chat, submit};

use crate::fixtures;

fn config() -> Config {
    let mut config = Config::default();
    config.kafka.lanes = vec!["interactive".into(), "batch".into()];
    config
}

/// A submission with every field a service usually sets; the id is given, so no fresh
/// (time-dependent) id is made.
fn submission() -> (Vec<u8>, Config) {
    let body = json!({
        "id": "0196f3a2-7c1e-7d40-9a8b-3f5e2c1d0a97",
        "body": Value::Object(fixtures::chat_body()),
        // 2100-01-01: always in the future.
        "deadline_ms": 4_102_444_800_000u64,
        "lane": "interactive",
        "ordering_key": "conversation-5531",
        "metadata": {"ticket": "SUP-20931", "channel": "web"}
    });
    let bytes = serde_json::to_vec(&body).expect("a JSON value serializes");
    (bytes, config())
}

fn chat_completion() -> (Vec<u8>, Config) {
    let bytes = serde_json::to_vec(&fixtures::chat_body()).expect("a JSON map serializes");
    (bytes, config())
}

// `POST /v1/requests`.
#[library_benchmark]
#[bench::typical(submission())]
fn parse_submission(input: (Vec<u8>, Config)) -> Request {
    let (bytes, config) = input;
    black_box(
        submit::parse(black_box(&bytes), &config, Some("bookshop".into()))
            .expect("a valid submission"),
    )
}

// `POST /v1/chat/completions`: the id is made here (a UUIDv7).
#[library_benchmark]
#[bench::typical(chat_completion())]
fn parse_chat(input: (Vec<u8>, Config)) -> Request {
    let (bytes, config) = input;
    let options = chat::CallOptions {
        wait: Duration::from_secs(30),
        lane: Some("interactive".into()),
        ordering_key: None,
        fallback: None,
    };
    let (request, _wait) =
        chat::parse(black_box(&bytes), &config, options, Some("bookshop".into()))
            .expect("a valid chat request");
    black_box(request)
}

library_benchmark_group!(
    name = ingress_group,
    benchmarks = [parse_submission, parse_chat]
);
