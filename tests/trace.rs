//! One trace per request across two separate `sluice` processes (ingress and worker),
//! checked span by span in an in-test OTLP receiver, with the `traceparent` the worker
//! forwards to an in-test fake OpenAI backend.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use support::{describe_spans, OtlpReceiver, ReceivedSpan, SluiceProcess, SpanKind, Tansu};

/// What the fake backend saw of one call.
#[derive(Debug, Clone)]
struct BackendCall {
    traceparent: Option<String>,
    tracestate: Option<String>,
    authorization: Option<String>,
    body: Value,
}

/// Token counts the fake backend reports, so the test can find them on the CLIENT span.
const PROMPT_TOKENS: u64 = 11;
const COMPLETION_TOKENS: u64 = 3;

/// A minimal OpenAI-compatible backend on 127.0.0.1:0 that records every call.
async fn start_fake_backend() -> (String, Arc<Mutex<Vec<BackendCall>>>) {
    async fn chat(
        State(calls): State<Arc<Mutex<Vec<BackendCall>>>>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> Json<Value> {
        let header = |name: &str| {
            headers
                .get(name)
                .map(|v| v.to_str().expect("ASCII header").to_string())
        };
        let model = body["model"].clone();
        calls.lock().unwrap().push(BackendCall {
            traceparent: header("traceparent"),
            tracestate: header("tracestate"),
            authorization: header("authorization"),
            body,
        });
        Json(json!({
            "id": "chatcmpl-trace-test",
            "object": "chat.completion",
            "created": 1_700_000_000u64,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "fake answer"},
                "finish_reason": "stop"
            }],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS
            }
        }))
    }

    let calls = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

/// Polls `GET /v1/requests/{id}` until the request leaves `queued`; returns that body.
async fn wait_for_final(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let response = client
            .get(format!("{base}/v1/requests/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET of an accepted id");
        let body: Value = response.json().await.unwrap();
        if body["status"] != "queued" {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "request {id} still queued after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The one span with this service, kind and name; panics listing all spans otherwise.
fn one<'a>(
    spans: &'a [ReceivedSpan],
    service: &str,
    kind: SpanKind,
    name: &str,
) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.service_name == service && s.kind == kind && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {service} {kind:?} {name:?} span; got:\n{}",
        describe_spans(spans)
    );
    found[0]
}

/// Both roles as separate processes on fresh topics, exporting to `receiver` and calling
/// the fake backend.
struct Pipeline {
    ingress: SluiceProcess,
    worker: SluiceProcess,
    receiver: OtlpReceiver,
    calls: Arc<Mutex<Vec<BackendCall>>>,
    /// `http://127.0.0.1:<ingress port>`.
    base: String,
    request_topic: String,
    reply_topic: String,
    group: String,
    api_key: String,
    client: reqwest::Client,
    /// Dropped last: the processes above are killed first.
    _tansu: Tansu,
}

impl Pipeline {
    async fn start() -> Pipeline {
        let tansu = Tansu::start();
        let request_topic = support::unique_name("trace-requests");
        let reply_topic = support::unique_name("trace-replies");
        let dlq_topic = support::unique_name("trace-dlq");
        let group = support::unique_name("trace-workers");
        for topic in [&request_topic, &reply_topic, &dlq_topic] {
            tansu.create_topic(topic, 1).await;
        }
        let receiver = OtlpReceiver::start();
        let (backend_url, calls) = start_fake_backend().await;

        let ingress_port = support::free_port();
        let admin_port = support::free_port();
        let api_key = format!("sk-{}", support::unique_name("secret-key"));
        let env: Vec<(String, String)> = [
            ("SLUICE__KAFKA__BOOTSTRAP_SERVERS", tansu.bootstrap()),
            ("SLUICE__KAFKA__REQUEST_TOPIC", request_topic.clone()),
            ("SLUICE__KAFKA__REPLY_TOPIC", reply_topic.clone()),
            ("SLUICE__KAFKA__DLQ_TOPIC", dlq_topic),
            ("SLUICE__KAFKA__GROUP_ID", group.clone()),
            ("SLUICE__KAFKA__CLIENT__SESSION_TIMEOUT_MS", "2000".into()),
            ("SLUICE__KAFKA__CLIENT__HEARTBEAT_INTERVAL_MS", "300".into()),
            (
                "SLUICE__INGRESS__LISTEN",
                format!("127.0.0.1:{ingress_port}"),
            ),
            (
                "SLUICE__WORKER__ADMIN_LISTEN",
                format!("127.0.0.1:{admin_port}"),
            ),
            ("SLUICE__BACKEND__URL", backend_url),
            ("SLUICE__BACKEND__API_KEY", api_key.clone()),
            ("SLUICE__TELEMETRY__OTLP_ENDPOINT", receiver.endpoint()),
            // Spans are tracing spans behind the log filter: a RUST_LOG above `info` in
            // the caller's environment would drop them (see the report on telemetry::init).
            ("RUST_LOG", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut ingress = SluiceProcess::spawn(["ingress"], env.clone());
        let mut worker = SluiceProcess::spawn(["worker"], env);
        let base = format!("http://127.0.0.1:{ingress_port}");
        ingress
            .wait_for_http_ok(&format!("{base}/readyz"), Duration::from_secs(20))
            .await;
        worker
            .wait_for_http_ok(
                &format!("http://127.0.0.1:{admin_port}/readyz"),
                Duration::from_secs(20),
            )
            .await;
        Pipeline {
            ingress,
            worker,
            receiver,
            calls,
            base,
            request_topic,
            reply_topic,
            group,
            api_key,
            client: reqwest::Client::new(),
            _tansu: tansu,
        }
    }

    /// Submits a chat request (with extra HTTP `headers`), waits until it is final and
    /// checks it ended `ok` after one backend call. Returns its id.
    async fn run_one(&self, model: &str, prompt: &str, headers: &[(&str, &str)]) -> String {
        let mut post = self
            .client
            .post(format!("{}/v1/requests", self.base))
            .json(&json!({
                "body": {
                    "model": model,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 16
                }
            }));
        for (name, value) in headers {
            post = post.header(*name, *value);
        }
        let response = post.send().await.unwrap();
        assert_eq!(response.status(), 202);
        let accepted: Value = response.json().await.unwrap();
        assert_eq!(accepted["status"], "queued", "{accepted}");
        let id = accepted["id"].as_str().expect("an id").to_string();

        let done = wait_for_final(&self.client, &self.base, &id, Duration::from_secs(20)).await;
        assert_eq!(done["status"], "ok", "{done}");
        assert_eq!(done["reply"]["attempts"], 1, "{done}");
        assert_eq!(
            done["reply"]["body"]["choices"][0]["message"]["content"], "fake answer",
            "{done}"
        );
        id
    }

    /// SIGTERMs both processes (they flush their spans on the way out), checks both exit
    /// 0, and returns every span received.
    async fn stop(&mut self, expected_spans: usize) -> Vec<ReceivedSpan> {
        self.ingress.terminate();
        self.worker.terminate();
        let ingress = self.ingress.wait_exit(Duration::from_secs(20)).await;
        let worker = self.worker.wait_exit(Duration::from_secs(20)).await;
        assert!(
            ingress.success(),
            "ingress exit {ingress}\n{}",
            self.ingress.logs()
        );
        assert!(
            worker.success(),
            "worker exit {worker}\n{}",
            self.worker.logs()
        );
        // Both exited after their exporter's last POST was answered, so everything is
        // here already; the wait only guards against a slow receiver thread.
        let spans = self
            .receiver
            .wait_for(|s| s.len() >= expected_spans, Duration::from_secs(10))
            .await;
        assert_eq!(
            spans.len(),
            expected_spans,
            "one request makes six spans:\n{}",
            describe_spans(&spans)
        );
        spans
    }

    fn backend_calls(&self) -> Vec<BackendCall> {
        self.calls.lock().unwrap().clone()
    }
}

/// The six spans of one request, found by service, kind and name.
struct Chain<'a> {
    server: &'a ReceivedSpan,
    send_request: &'a ReceivedSpan,
    process_request: &'a ReceivedSpan,
    chat: &'a ReceivedSpan,
    send_reply: &'a ReceivedSpan,
    process_reply: &'a ReceivedSpan,
}

/// Checks the parent/child chain, the link and the attributes of one request's spans;
/// returns them.
fn assert_chain<'a>(
    spans: &'a [ReceivedSpan],
    pipeline: &Pipeline,
    model: &str,
    id: &str,
) -> Chain<'a> {
    let all = describe_spans(spans);
    let (request_topic, reply_topic) = (&pipeline.request_topic, &pipeline.reply_topic);
    let chain = Chain {
        server: one(
            spans,
            "sluice-ingress",
            SpanKind::Server,
            "POST /v1/requests",
        ),
        send_request: one(
            spans,
            "sluice-ingress",
            SpanKind::Producer,
            &format!("send {request_topic}"),
        ),
        process_request: one(
            spans,
            "sluice-worker",
            SpanKind::Consumer,
            &format!("process {request_topic}"),
        ),
        chat: one(
            spans,
            "sluice-worker",
            SpanKind::Client,
            &format!("chat {model}"),
        ),
        send_reply: one(
            spans,
            "sluice-worker",
            SpanKind::Producer,
            &format!("send {reply_topic}"),
        ),
        process_reply: one(
            spans,
            "sluice-ingress",
            SpanKind::Consumer,
            &format!("process {reply_topic}"),
        ),
    };
    let Chain {
        server,
        send_request,
        process_request,
        chat,
        send_reply,
        process_reply,
    } = &chain;

    let trace_id = &server.trace_id;
    assert_eq!(trace_id.len(), 32);
    assert_ne!(trace_id, &"0".repeat(32));
    assert!(
        spans.iter().all(|s| &s.trace_id == trace_id),
        "all spans share trace {trace_id}:\n{all}"
    );
    assert!(send_request.is_child_of(server), "{all}");
    assert!(
        process_request.is_child_of(send_request),
        "the worker's CONSUMER span continues the ingress's PRODUCER span:\n{all}"
    );
    assert!(
        process_request.links_to(send_request),
        "the CONSUMER span links the PRODUCER span: {:?}\n{all}",
        process_request.links
    );
    assert!(chat.is_child_of(process_request), "{all}");
    assert!(send_reply.is_child_of(process_request), "{all}");
    assert!(
        process_reply.is_child_of(send_reply),
        "the ingress's reply CONSUMER span continues the worker's reply PRODUCER span:\n{all}"
    );

    assert_eq!(server.attr("http.request.method"), Some("POST"));
    assert_eq!(server.attr("http.route"), Some("/v1/requests"));
    assert_eq!(server.attr("http.response.status_code"), Some("202"));
    for span in [send_request, process_request, send_reply, process_reply] {
        assert_eq!(span.attr("messaging.system"), Some("kafka"), "{span:?}");
    }
    assert_eq!(send_request.attr("messaging.operation.type"), Some("send"));
    assert_eq!(
        send_request.attr("messaging.destination.name"),
        Some(request_topic.as_str())
    );
    assert_eq!(send_request.attr("messaging.kafka.message.key"), Some(id));
    assert_eq!(
        send_request.attr("messaging.destination.partition.id"),
        Some("0")
    );
    assert_eq!(send_request.attr("messaging.kafka.offset"), Some("0"));
    assert_eq!(
        process_request.attr("messaging.operation.type"),
        Some("process")
    );
    assert_eq!(
        process_request.attr("messaging.destination.name"),
        Some(request_topic.as_str())
    );
    assert_eq!(
        process_request.attr("messaging.consumer.group.name"),
        Some(pipeline.group.as_str())
    );
    assert_eq!(process_request.attr("messaging.kafka.offset"), Some("0"));
    assert_eq!(process_request.attr("sluice.status"), Some("ok"));
    assert_eq!(process_request.attr("sluice.attempts"), Some("1"));
    let queue_ms: u64 = process_request
        .attr("sluice.queue_ms")
        .expect("queue wait recorded")
        .parse()
        .expect("queue wait is an integer");
    assert!(queue_ms < 20_000, "queue_ms {queue_ms}");
    assert_eq!(chat.attr("gen_ai.operation.name"), Some("chat"));
    assert_eq!(chat.attr("gen_ai.provider.name"), Some("openai"));
    assert_eq!(chat.attr("gen_ai.request.model"), Some(model));
    assert_eq!(chat.attr("gen_ai.request.max_tokens"), Some("16"));
    assert_eq!(chat.attr("gen_ai.response.model"), Some(model));
    assert_eq!(
        chat.attr("gen_ai.usage.input_tokens"),
        Some(PROMPT_TOKENS.to_string().as_str())
    );
    assert_eq!(
        chat.attr("gen_ai.usage.output_tokens"),
        Some(COMPLETION_TOKENS.to_string().as_str())
    );
    assert_eq!(
        chat.attr("gen_ai.response.finish_reasons"),
        Some(r#"["stop"]"#)
    );
    assert_eq!(
        send_reply.attr("messaging.destination.name"),
        Some(reply_topic.as_str())
    );
    assert_eq!(send_reply.attr("messaging.kafka.message.key"), Some(id));
    assert_eq!(
        process_reply.attr("messaging.destination.name"),
        Some(reply_topic.as_str())
    );
    assert_eq!(
        process_reply.attr("messaging.consumer.group.name"),
        None,
        "the ingress reads replies outside any consumer group"
    );
    chain
}

/// The backend got exactly one call, carrying the CLIENT span's context as its
/// `traceparent`; returns that call.
fn assert_backend_call(
    pipeline: &Pipeline,
    chain: &Chain<'_>,
    model: &str,
    prompt: &str,
) -> BackendCall {
    let calls = pipeline.backend_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = calls[0].clone();
    assert_eq!(call.body["model"], model);
    assert_eq!(call.body["messages"][0]["content"], prompt);
    assert_eq!(
        call.authorization.as_deref(),
        Some(format!("Bearer {}", pipeline.api_key).as_str())
    );
    let traceparent = call
        .traceparent
        .as_deref()
        .expect("the backend call carries a traceparent header");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00", "{traceparent}");
    assert_eq!(parts[1], chain.server.trace_id, "traceparent {traceparent}");
    assert_eq!(
        parts[2], chain.chat.span_id,
        "the traceparent's parent id is the CLIENT span: {traceparent}"
    );
    assert_eq!(parts[3], "01", "sampled: {traceparent}");
    call
}

/// Neither the prompt nor the API key reaches span names, span attributes or logs.
fn assert_private(spans: &[ReceivedSpan], pipeline: &Pipeline, prompt: &str) {
    let api_key = &pipeline.api_key;
    for span in spans {
        assert!(!span.name.contains(prompt), "{:?}", span.name);
        for (key, value) in &span.attributes {
            assert!(
                !value.contains(prompt) && !value.contains(api_key.as_str()),
                "span {:?} attribute {key} leaks a secret: {value}",
                span.name
            );
        }
    }
    for (role, logs) in [
        ("ingress", pipeline.ingress.logs()),
        ("worker", pipeline.worker.logs()),
    ] {
        assert!(!logs.contains(prompt), "{role} logged the prompt:\n{logs}");
        assert!(
            !logs.contains(api_key.as_str()),
            "{role} logged the API key:\n{logs}"
        );
    }
}

/// The two tests take turns, so their timings do not depend on each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_request_across_ingress_and_worker() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let mut pipeline = Pipeline::start().await;
    let model = "trace-model";
    let prompt = format!("PRIVATE-PROMPT-{}", support::unique_name("text"));
    let id = pipeline.run_one(model, &prompt, &[]).await;
    let spans = pipeline.stop(6).await;

    let chain = assert_chain(&spans, &pipeline, model, &id);
    assert!(
        chain.server.is_root(),
        "no incoming traceparent, so the SERVER span starts the trace:\n{}",
        describe_spans(&spans)
    );
    assert_backend_call(&pipeline, &chain, model, &prompt);
    assert_private(&spans, &pipeline, &prompt);
    eprintln!(
        "{}\ntrace test took {:?}",
        describe_spans(&spans),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_traceparent_is_continued_through_kafka_to_the_backend() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let mut pipeline = Pipeline::start().await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{caller_trace}-{caller_span}-01");
    let model = "trace-model-2";
    let prompt = format!("PRIVATE-PROMPT-{}", support::unique_name("text"));
    let id = pipeline
        .run_one(
            model,
            &prompt,
            &[
                ("traceparent", &traceparent),
                ("tracestate", "caller=abc123"),
            ],
        )
        .await;
    let spans = pipeline.stop(6).await;

    let chain = assert_chain(&spans, &pipeline, model, &id);
    assert_eq!(
        chain.server.trace_id,
        caller_trace,
        "{}",
        describe_spans(&spans)
    );
    assert_eq!(
        chain.server.parent_span_id, caller_span,
        "the SERVER span is a child of the caller's span"
    );
    let call = assert_backend_call(&pipeline, &chain, model, &prompt);
    assert!(
        call.traceparent.as_deref().unwrap().contains(caller_trace),
        "{call:?}"
    );
    assert_eq!(
        call.tracestate.as_deref(),
        Some("caller=abc123"),
        "the caller's tracestate travels with the trace"
    );
    assert_private(&spans, &pipeline, &prompt);
    eprintln!("incoming-traceparent test took {:?}", started.elapsed());
}
