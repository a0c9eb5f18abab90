//! `sluice mock-llm` as a whole: serving over a real socket until cancelled, and the
//! command-line flags.

use std::time::Duration;

use clap::{CommandFactory, Parser};
use serde_json::{json, Value};

use super::*;

#[tokio::test]
async fn serve_answers_over_a_socket_and_stops_when_cancelled() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("port 0 is always bindable");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let shutdown = CancellationToken::new();
    let args = MockLlmArgs {
        latency_ms: 1,
        per_token_ms: 0,
        ..MockLlmArgs::default()
    };
    let server = tokio::spawn(serve(listener, args, shutdown.clone()));
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}))
        .send()
        .await
        .expect("the mock is listening");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("the body is JSON");
    assert_eq!(body["usage"]["completion_tokens"], 3);
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(5), server).await;
    stopped
        .expect("serve returns soon after cancel")
        .expect("serve does not panic")
        .expect("serve ends cleanly");
}

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: MockLlmArgs,
}

#[test]
fn the_flags_parse_with_the_documented_defaults() {
    Cli::command().debug_assert();
    let help = Cli::command().render_long_help().to_string();
    assert!(
        help.contains("Default: the base latency"),
        "every flag's doc is its help: {help}"
    );
    let parsed = Cli::try_parse_from(["mock-llm"])
        .expect("every flag has a default")
        .args;
    assert_eq!(parsed, MockLlmArgs::default());
    assert_eq!(parsed.listen.to_string(), "127.0.0.1:8000");
    assert_eq!(
        parsed.retry_after(),
        Duration::from_millis(100),
        "defaults to the base latency"
    );
    let parsed = Cli::try_parse_from([
        "mock-llm",
        "--listen",
        "0.0.0.0:9000",
        "--slots",
        "4",
        "--latency-ms",
        "0",
        "--per-token-ms",
        "5",
        "--overflow",
        "reject",
    ])
    .expect("valid flags")
    .args;
    assert_eq!(parsed.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(
        (parsed.slots, parsed.overflow, parsed.per_token_ms),
        (4, Overflow::Reject, 5)
    );
    assert_eq!(
        parsed.retry_after(),
        Duration::from_millis(1),
        "at least 1 ms"
    );
    let parsed = Cli::try_parse_from(["mock-llm", "--retry-after-ms", "2500"])
        .expect("valid flags")
        .args;
    assert_eq!(
        parsed.capacity_settings().retry_after,
        Duration::from_millis(2500)
    );
}

#[test]
fn out_of_range_slots_tokens_or_overflow_are_refused() {
    assert!(Cli::try_parse_from(["mock-llm", "--slots", "0"]).is_err());
    assert!(Cli::try_parse_from(["mock-llm", "--overflow", "drop"]).is_err());
    assert!(Cli::try_parse_from(["mock-llm", "--max-tokens-cap", "0"]).is_err());
    assert!(Cli::try_parse_from(["mock-llm", "--slots", &u64::MAX.to_string()]).is_err());
}
