//! The mock's routes through `app().oneshot()`, in virtual time so every latency is exact.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::time::Instant;
use tower::ServiceExt;

use super::*;
use crate::mock_llm::{MockLlmArgs, Overflow};

fn args(slots: usize, overflow: Overflow) -> MockLlmArgs {
    MockLlmArgs {
        slots,
        overflow,
        ..MockLlmArgs::default()
    }
}

fn post(body: impl Into<Body>) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .expect("a literal request is well-formed")
}

fn chat(extra: Value) -> Request<Body> {
    let mut body =
        json!({"model": "m1", "messages": [{"role": "user", "content": "hello world!"}]});
    let extra = extra.as_object().cloned().unwrap_or_default();
    body.as_object_mut()
        .expect("the literal is an object")
        .extend(extra);
    post(body.to_string())
}

async fn call(app: &Router, request: Request<Body>) -> Response<Body> {
    app.clone()
        .oneshot(request)
        .await
        .expect("a Router never fails")
}

async fn text(response: Response<Body>) -> String {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("mock bodies do not fail")
        .to_bytes();
    String::from_utf8(bytes.to_vec()).expect("mock bodies are UTF-8")
}

async fn json_of(response: Response<Body>) -> Value {
    serde_json::from_str(&text(response).await).expect("the body is JSON")
}

/// The `data:` payloads of an SSE body, checking the framing on the way.
fn sse_data(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "every event ends with a blank line: {body:?}"
    );
    body.trim_end_matches("\n\n")
        .split("\n\n")
        .map(|event| {
            event
                .strip_prefix("data: ")
                .expect("every event is one data line")
                .to_owned()
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_completion_has_the_requested_tokens_and_takes_one_service_time() {
    let app = app(MockState::new(&MockLlmArgs::default()));
    let start = Instant::now();
    let response = call(&app, chat(json!({"max_tokens": 5}))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(110),
        "100 ms + 5 × 2 ms"
    );
    let body = json_of(response).await;
    assert_eq!(body["id"], "chatcmpl-1");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "m1");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .expect("content is text");
    assert_eq!(content.split(' ').count(), 5);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_default_and_are_capped() {
    let state = MockState::new(&MockLlmArgs {
        default_max_tokens: 6,
        max_tokens_cap: 9,
        ..MockLlmArgs::default()
    });
    let app = app(state);
    let body = json_of(call(&app, chat(json!({}))).await).await;
    assert_eq!(
        (
            body["usage"]["completion_tokens"].as_u64(),
            &body["choices"][0]["finish_reason"]
        ),
        (Some(6), &json!("stop"))
    );
    let body = json_of(call(&app, chat(json!({"max_completion_tokens": 50}))).await).await;
    assert_eq!(
        (
            body["usage"]["completion_tokens"].as_u64(),
            &body["choices"][0]["finish_reason"]
        ),
        (Some(9), &json!("stop"))
    );
    assert_eq!(body["id"], "chatcmpl-2");
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_role_then_one_delta_per_token_then_finish_usage_and_done() {
    let app = app(MockState::new(&MockLlmArgs::default()));
    let request =
        chat(json!({"max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}));
    let response = call(&app, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let events = sse_data(&text(response).await);
    assert_eq!(events.len(), 1 + 4 + 1 + 1 + 1, "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|data| serde_json::from_str(data).expect("every event but the last is JSON"))
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == "chatcmpl-1"));
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant"})
    );
    let content: String = chunks[1..5]
        .iter()
        .map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .expect("a content delta")
                .to_owned()
        })
        .collect();
    assert_eq!(content, "the quick brown fox");
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(
        chunks[6]["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_without_include_usage_has_no_usage_chunk() {
    let app = app(MockState::new(&MockLlmArgs::default()));
    let events =
        sse_data(&text(call(&app, chat(json!({"max_tokens": 2, "stream": true}))).await).await);
    assert_eq!(events.len(), 1 + 2 + 1 + 1, "{events:?}");
    assert!(events.iter().all(|data| !data.contains("usage")));
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_paced_by_latency_then_per_token() {
    let state = MockState::new(&MockLlmArgs::default());
    let app = app(state.clone());
    let start = Instant::now();
    let response = call(&app, chat(json!({"max_tokens": 3, "stream": true}))).await;
    let mut body = response.into_body();
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        frame.expect("mock bodies do not fail");
        arrivals.push(start.elapsed().as_millis());
        if arrivals.len() == 1 {
            assert_eq!(
                state.capacity().stats().in_flight,
                1,
                "the slot is held while streaming"
            );
        }
    }
    // Role at the latency, a token every 2 ms, then finish and [DONE] at once.
    assert_eq!(arrivals, [100, 102, 104, 106, 106, 106]);
    assert_eq!(
        state.capacity().stats().in_flight,
        0,
        "the slot is freed at the end"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_leaving_a_stream_frees_the_slot_and_counts_cancelled() {
    let state = MockState::new(&MockLlmArgs::default());
    let app = app(state.clone());
    let mut body = call(&app, chat(json!({"max_tokens": 50, "stream": true})))
        .await
        .into_body();
    body.frame()
        .await
        .expect("the role chunk comes")
        .expect("mock bodies do not fail");
    assert_eq!(state.capacity().stats().in_flight, 1);
    drop(body);
    assert_eq!(state.capacity().stats().in_flight, 0);
    let metrics = text(
        call(
            &app,
            Request::get("/metrics")
                .body(Body::empty())
                .expect("well-formed"),
        )
        .await,
    )
    .await;
    assert!(
        metrics.contains("sluice_mock_requests_total{outcome=\"cancelled\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_mock_requests_total{outcome=\"ok\"} 0\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_bodies_get_a_400_naming_the_problem() {
    let app = app(MockState::new(&MockLlmArgs::default()));
    let cases = [
        (r#"{"messages": "#, "could not parse the JSON body", None),
        ("42", "must be a JSON object", None),
        (
            r#"{"model": "m"}"#,
            "Missing required parameter: 'messages'",
            Some("messages"),
        ),
        (r#"{"messages": []}"#, "empty array", Some("messages")),
        (
            r#"{"messages": [{}], "max_tokens": 0}"#,
            "positive integer",
            Some("max_tokens"),
        ),
        (
            r#"{"messages": [{}], "max_tokens": "ten"}"#,
            "positive integer",
            Some("max_tokens"),
        ),
    ];
    for (body, message, param) in cases {
        let response = call(&app, post(body)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error = &json_of(response).await["error"];
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        let text = error["message"].as_str().expect("the message is text");
        assert!(text.contains(message), "{body}: {text}");
        assert_eq!(error["param"].as_str(), param, "{body}");
        assert_eq!(error["code"], Value::Null, "{body}");
    }
}

#[tokio::test(start_paused = true)]
async fn reject_mode_answers_429_with_both_retry_after_headers() {
    let state = MockState::new(&MockLlmArgs {
        retry_after_ms: Some(1500),
        ..args(1, Overflow::Reject)
    });
    let app = app(state.clone());
    let _held = state
        .capacity()
        .admit()
        .await
        .expect("the only slot is free");
    let response = call(&app, chat(json!({}))).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after-ms"], "1500");
    assert_eq!(
        response.headers()[header::RETRY_AFTER],
        "2",
        "whole seconds, rounded up"
    );
    let error = &json_of(response).await["error"];
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("1500ms")),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_default_retry_after_is_the_base_latency() {
    let state = MockState::new(&args(1, Overflow::Reject));
    let app = app(state.clone());
    let _held = state
        .capacity()
        .admit()
        .await
        .expect("the only slot is free");
    let response = call(&app, chat(json!({}))).await;
    assert_eq!(response.headers()["retry-after-ms"], "100");
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
}

#[tokio::test(start_paused = true)]
async fn queue_mode_makes_the_extra_request_wait_for_a_slot() {
    let app = app(MockState::new(&args(1, Overflow::Queue)));
    let start = Instant::now();
    let first = async {
        (
            call(&app, chat(json!({"max_tokens": 10}))).await.status(),
            start.elapsed(),
        )
    };
    let second = async {
        (
            call(&app, chat(json!({"max_tokens": 10}))).await.status(),
            start.elapsed(),
        )
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first, (StatusCode::OK, Duration::from_millis(120)));
    assert_eq!(second, (StatusCode::OK, Duration::from_millis(240)));
}

#[tokio::test(start_paused = true)]
async fn metrics_count_outcomes_tokens_and_capacity() {
    let state = MockState::new(&args(1, Overflow::Reject));
    let app = app(state.clone());
    call(&app, chat(json!({"max_tokens": 5}))).await;
    text(call(&app, chat(json!({"max_tokens": 2, "stream": true}))).await).await;
    call(&app, post("not json")).await;
    let held = state
        .capacity()
        .admit()
        .await
        .expect("the only slot is free");
    call(&app, chat(json!({}))).await;
    drop(held);
    let response = call(
        &app,
        Request::get("/metrics")
            .body(Body::empty())
            .expect("well-formed"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let metrics = text(response).await;
    for line in [
        "sluice_mock_requests_total{outcome=\"ok\"} 2",
        "sluice_mock_requests_total{outcome=\"rejected\"} 1",
        "sluice_mock_requests_total{outcome=\"invalid\"} 1",
        "sluice_mock_requests_total{outcome=\"cancelled\"} 0",
        "sluice_mock_completion_tokens_total 7",
        "sluice_mock_slots 1",
        "sluice_mock_in_flight 0",
        "sluice_mock_peak_in_flight 1",
        "sluice_mock_queued 0",
        "sluice_mock_overload_rejections_total 1",
        // 110 ms + 104 ms of service; the slot held by the test was held for no time.
        "sluice_mock_busy_seconds_total 0.214",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn healthz_and_models_answer() {
    let app = app(MockState::new(&MockLlmArgs::default()));
    let health = call(
        &app,
        Request::get("/healthz")
            .body(Body::empty())
            .expect("well-formed"),
    )
    .await;
    assert_eq!(text(health).await, "ok\n");
    let models = json_of(
        call(
            &app,
            Request::get("/v1/models")
                .body(Body::empty())
                .expect("well-formed"),
        )
        .await,
    )
    .await;
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "mock");
}

#[tokio::test(start_paused = true)]
async fn admin_slots_change_the_capacity_at_run_time() {
    let state = MockState::new(&args(4, Overflow::Reject));
    let app = app(state.clone());
    let set = |body: &str| {
        Request::post("/admin/slots")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("a literal request is well-formed")
    };
    let response = app.clone().oneshot(set(r#"{"slots": 2}"#)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["slots"], 2);
    assert_eq!(state.capacity().stats().slots, 2);
    for bad in [r#"{"slots": 0}"#, r#"{"slots": "x"}"#, "not json"] {
        let response = app.clone().oneshot(set(bad)).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(
        state.capacity().stats().slots,
        2,
        "refused changes change nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_prompt_longer_than_the_context_is_refused_as_openai_does() {
    let state = MockState::new(&MockLlmArgs {
        context_tokens: Some(10),
        ..MockLlmArgs::default()
    });
    let app = app(state);
    let short = call(
        &app,
        chat(json!({"messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(short.status(), StatusCode::OK);
    let long = json!({"messages": [{"role": "user", "content": "x".repeat(400)}]});
    let response = call(&app, chat(long)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = json_of(response).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("maximum context length is 10 tokens"),
        "{message}"
    );
    assert_eq!(body["error"]["param"], "messages");
}
