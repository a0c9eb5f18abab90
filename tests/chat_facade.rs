//! `POST /v1/chat/completions` through the whole pipeline as separate processes on
//! tansu: a sync call answered as the backend would, a stream relayed chunk by chunk
//! with keep-alives while it waits, a backend 400 passed through, a wait that runs out,
//! and a client that goes away mid-stream.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use support::pipeline::{sluice_env, with_env, Ingress, MockLlm, Topics, Worker};
use support::{free_port, Tansu};

/// The mock backend's answer for `max_tokens: n` is its first n words.
fn words(n: usize) -> String {
    sluice::mock_llm::completion::content(n as u64)
}

struct Deployment {
    _tansu: Tansu,
    _mock: MockLlm,
    ingress: Ingress,
    worker: Worker,
    http: reqwest::Client,
}

impl Deployment {
    /// A backend taking `latency_ms` before its first token and `per_token_ms` per token;
    /// keep-alives every 200 ms.
    async fn start(latency_ms: u32, per_token_ms: u32) -> Deployment {
        let tansu = Tansu::start();
        let topics = Topics::fresh();
        topics.create_on(&tansu).await;
        let mock = MockLlm::start_paced(free_port(), 8, latency_ms, per_token_ms).await;
        let env = with_env(
            &sluice_env(&tansu.bootstrap(), &topics, &mock.url()),
            &[
                ("SLUICE__INGRESS__ENQUEUE_TIMEOUT_MS", "5000"),
                ("SLUICE__INGRESS__STREAM_KEEPALIVE_MS", "200"),
            ],
        );
        let ingress = Ingress::start(&env).await;
        let mut worker = Worker::start(&env).await;
        worker.wait_ready(Duration::from_secs(30)).await;
        Deployment {
            _tansu: tansu,
            _mock: mock,
            ingress,
            worker,
            http: reqwest::Client::new(),
        }
    }

    fn post(&self, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/v1/chat/completions", self.ingress.url))
            .json(body)
            .timeout(Duration::from_secs(60))
    }
}

fn chat(max_tokens: u64, stream: bool) -> Value {
    json!({
        "model": "mock",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
}

/// One SSE answer, read to its end: its comments and its `data:` payloads in order.
struct SseRead {
    comments: Vec<String>,
    data: Vec<String>,
    first_data_after: Option<Duration>,
}

async fn read_sse(response: reqwest::Response) -> SseRead {
    let started = Instant::now();
    let mut read = SseRead {
        comments: Vec::new(),
        data: Vec::new(),
        first_data_after: None,
    };
    let mut pending = String::new();
    let mut bytes = response.bytes_stream();
    while let Some(piece) = bytes.next().await {
        pending.push_str(&String::from_utf8_lossy(
            &piece.expect("reading the stream"),
        ));
        while let Some(end) = pending.find('\n') {
            let line = pending[..end].trim_end_matches('\r').to_string();
            pending.drain(..=end);
            if let Some(comment) = line.strip_prefix(':') {
                read.comments.push(comment.trim().to_string());
            } else if let Some(data) = line.strip_prefix("data:") {
                read.first_data_after.get_or_insert(started.elapsed());
                read.data.push(data.trim_start().to_string());
            }
        }
    }
    read
}

/// The text the chunks of a stream add up to.
fn streamed_text(data: &[String]) -> String {
    data.iter()
        .filter(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).expect("each data line is JSON"))
        .map(|chunk| {
            assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_streamed_calls_answer_as_the_backend_would() {
    let d = Deployment::start(20, 5).await;

    // Sync: the completion itself, with the sluice id to fetch it again.
    let response = d.post(&chat(12, false)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], words(12));
    let stored: Value = d
        .http
        .get(format!("{}/v1/requests/{id}", d.ingress.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["status"], "ok", "{stored}");
    assert_eq!(stored["reply"]["body"], body);

    // Streamed: 200 tokens at 5 ms each come as chunks, in order, ending in [DONE];
    // gathered by the linger, far fewer records than tokens.
    let before = d
        .worker
        .metrics()
        .await
        .get("sluice_worker_stream_chunks_total", &[])
        .unwrap_or(0.0);
    let response = d.post(&chat(200, true)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "an SSE answer"
    );
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let sse = read_sse(response).await;
    assert_eq!(sse.data.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(streamed_text(&sse.data), words(200));
    let records = d
        .worker
        .metrics()
        .await
        .value("sluice_worker_stream_chunks_total", &[])
        - before;
    eprintln!(
        "200 tokens: {records} chunk records, {} data lines",
        sse.data.len()
    );
    assert!(
        (3.0..=60.0).contains(&records),
        "{records} chunk records for 200 tokens over ~1 s (30 ms linger)"
    );
    assert!(
        sse.data.len() as f64 == records + 1.0,
        "one data line per record, plus [DONE]: {} lines, {records} records",
        sse.data.len()
    );
    // The stored reply is the assembled completion.
    let stored: Value = d
        .http
        .get(format!("{}/v1/requests/{id}", d.ingress.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stored["reply"]["body"]["choices"][0]["message"]["content"],
        words(200),
        "{stored}"
    );
    assert_eq!(stored["reply"]["body"]["object"], "chat.completion");

    // A backend 400, sync and streamed: its status and message, OpenAI's error shape.
    let bad = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1});
    for stream in [false, true] {
        let mut body = bad.clone();
        body["stream"] = json!(stream);
        let response = d.post(&body).send().await.unwrap();
        assert_eq!(response.status(), 400, "stream {stream}");
        assert!(response.headers().contains_key("x-request-id"));
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Invalid 'max_tokens': expected a positive integer"),
            "the backend's own message: {error}"
        );
    }

    // Bad input at the door: 400 before anything is written, OpenAI's shape.
    let response = d
        .http
        .post(format!("{}/v1/chat/completions", d.ingress.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    assert!(error["error"].get("param").is_some(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_streams_are_kept_alive_and_leftover_waits_end() {
    // 1.5 s before the first token: the stream waits, sending keep-alives.
    let d = Deployment::start(1500, 2).await;
    let started = Instant::now();
    let response = d.post(&chat(20, true)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let sse = read_sse(response).await;
    let first_data = sse.first_data_after.expect("data came");
    assert!(
        first_data >= Duration::from_millis(1000),
        "the first token came after the backend's latency: {first_data:?}"
    );
    let keepalives = sse.comments.iter().filter(|c| *c == "keep-alive").count();
    eprintln!("first data after {first_data:?}, {keepalives} keep-alives");
    assert!(
        keepalives >= 3,
        "keep-alives every 200 ms over ~1.3 s of waiting: {keepalives} ({:?})",
        sse.comments
    );
    assert_eq!(streamed_text(&sse.data), words(20));
    assert!(started.elapsed() < Duration::from_secs(10));

    // A wait shorter than the backend (1.5 s to the first token): 504 at the wait's end,
    // with the id.
    let started = Instant::now();
    let response = d
        .post(&chat(5, false))
        .header("x-sluice-timeout-ms", "1000")
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), 504);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"].as_str().unwrap().contains(&id),
        "{error}"
    );
    assert!(
        waited >= Duration::from_millis(1000) && waited < Duration::from_millis(1450),
        "answered when the wait ran out: {waited:?}"
    );

    // A client that leaves mid-wait: its waiter goes at once, not when the reply comes
    // (the backend takes 1.5 s); nothing is left registered.
    let posted = Instant::now();
    let response = d.post(&chat(20, true)).send().await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "the stream opened after one keep-alive"
    );
    let mut bytes = response.bytes_stream();
    let first = bytes.next().await.expect("a keep-alive").unwrap();
    assert!(String::from_utf8_lossy(&first).contains("keep-alive"));
    drop(bytes);
    let mut waiters = f64::NAN;
    for _ in 0..10 {
        waiters = d
            .ingress
            .metrics()
            .await
            .value("sluice_ingress_waiters", &[]);
        if waiters == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(waiters, 0.0, "the departed client's waiter was released");
    assert!(
        posted.elapsed() < Duration::from_millis(1400),
        "released by the disconnect, before the reply could come: {:?}",
        posted.elapsed()
    );
}
