//! The ingress routes without a socket (`app().oneshot`), against librdkafka's in-process
//! mock cluster for the 202 path and an unreachable broker for the 503 path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message};
use serde_json::{json, Value};
use tower::ServiceExt;

use sluice::admin::{AdminState, Readiness};
use sluice::config::Config;
use sluice::kafka::embedded::EmbeddedBroker;

fn app_for(config: Config) -> Router {
    let mut registry = Registry::default();
    let state = sluice::ingress::build_state(Arc::new(config), &mut registry).unwrap();
    sluice::ingress::routes::app(
        state,
        AdminState {
            registry: Arc::new(registry),
            ready: Readiness::default(),
        },
    )
}

fn config_for(bootstrap: &str) -> Config {
    let mut config = Config::default();
    config.kafka.bootstrap_servers = bootstrap.to_string();
    config.kafka.request_topic = "req".into();
    config.kafka.lanes = vec!["batch".into()];
    config.ingress.max_body_bytes = 4096;
    // A cold idempotent producer needs a round of InitProducerId first (~0.6 s here).
    config.ingress.enqueue_timeout_ms = 5000;
    config
}

/// Trace context is only injected with the OpenTelemetry layer installed, as in `main`.
fn init_telemetry() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::mem::forget(
            sluice::telemetry::init(&Default::default(), "ingress-routes-test").unwrap(),
        );
    });
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: impl Into<Body>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, value)
}

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#;

#[tokio::test]
async fn accepted_request_is_on_the_topic_with_trace_context() {
    init_telemetry();
    let broker = EmbeddedBroker::start(1).unwrap();
    broker.create_topic("req", 2).unwrap();
    broker.create_topic("req.batch", 1).unwrap();
    let app = app_for(config_for(broker.bootstrap_servers()));

    let body = format!(r#"{{"id":"req-1","body":{CHAT},"metadata":{{"m":1}}}}"#);
    let (status, _, value) = call(&app, "POST", "/v1/requests", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{value}");
    assert_eq!(value, json!({"id": "req-1", "status": "queued"}));

    let (status, _, value) = call(&app, "GET", "/v1/requests/req-1", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(value["status"], "queued");

    let (status, _, value) = call(
        &app,
        "POST",
        "/v1/requests",
        format!(r#"{{"body":{CHAT},"lane":"batch"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{value}");
    let generated = value["id"].as_str().unwrap().to_string();
    assert_eq!(
        uuid::Uuid::parse_str(&generated).unwrap().get_version_num(),
        7
    );

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("group.id", "check")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["req", "req.batch"]).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.len() < 2 && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let envelope: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
            let headers = message.headers().expect("headers are set");
            let header = |k: &str| {
                headers
                    .iter()
                    .find(|h| h.key == k)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8(v.to_vec()).unwrap())
            };
            assert_eq!(header("sluice-id").as_deref(), envelope["id"].as_str());
            assert!(
                header("traceparent").is_some_and(|t| t.starts_with("00-")),
                "traceparent missing"
            );
            assert_eq!(message.key(), envelope["id"].as_str().map(str::as_bytes));
            seen.push((message.topic().to_string(), envelope));
        }
    }
    assert_eq!(seen.len(), 2, "both accepted requests are on their topics");
    let (topic, first) = seen.iter().find(|(_, e)| e["id"] == "req-1").unwrap();
    assert_eq!(topic, "req");
    assert_eq!(first["v"], 1);
    assert_eq!(first["metadata"], json!({"m": 1}));
    assert_eq!(first["body"]["max_tokens"], 4);
    let (topic, _) = seen
        .iter()
        .find(|(_, e)| e["id"] == generated.as_str())
        .unwrap();
    assert_eq!(topic, "req.batch");
}

#[tokio::test]
async fn an_id_repeats_its_own_submission_and_refuses_another() {
    let broker = EmbeddedBroker::start(1).unwrap();
    broker.create_topic("req", 1).unwrap();
    let app = app_for(config_for(broker.bootstrap_servers()));
    let first = format!(r#"{{"id":"same","body":{CHAT},"metadata":{{"a":1,"b":2}}}}"#);
    let (status, _, value) = call(&app, "POST", "/v1/requests", first).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{value}");

    // The same values with other spacing and key order: an idempotent repeat.
    let repeat = format!(r#"{{ "metadata": {{"b":2, "a":1}}, "body": {CHAT}, "id": "same" }}"#);
    let (status, _, value) = call(&app, "POST", "/v1/requests", repeat).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{value}");
    assert_eq!(value, json!({"id": "same", "status": "queued"}));

    let other = r#"{"id":"same","body":{"messages":[{"role":"user","content":"something else"}]}}"#;
    let (status, _, value) = call(&app, "POST", "/v1/requests", other).await;
    assert_eq!(status, StatusCode::CONFLICT, "{value}");
    assert_eq!(value["error"]["type"], "conflict");
    assert!(
        value["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("already used for a different request")),
        "{value}"
    );
}

#[tokio::test]
async fn a_reply_sent_to_another_topic_is_not_shown_as_queued_for_ever() {
    let broker = EmbeddedBroker::start(1).unwrap();
    broker.create_topic("req", 1).unwrap();
    let app = app_for(config_for(broker.bootstrap_servers()));
    let body = format!(r#"{{"id":"mine","body":{CHAT},"reply_to":"team.replies"}}"#);
    let (status, _, value) = call(&app, "POST", "/v1/requests", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{value}");
    assert_eq!(
        value,
        json!({"id": "mine", "status": "queued", "reply_to": "team.replies", "tracked": false})
    );
    let (status, _, value) = call(&app, "GET", "/v1/requests/mine", Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{value}");
    assert_eq!(value["error"]["type"], "not_tracked");
    assert!(
        value["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("team.replies")),
        "{value}"
    );

    // reply_to naming the ingress's own reply topic is tracked as usual.
    let body = format!(r#"{{"id":"own","body":{CHAT},"reply_to":"sluice.replies"}}"#);
    let (status, _, value) = call(&app, "POST", "/v1/requests", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{value}");
    assert_eq!(value, json!({"id": "own", "status": "queued"}));
}

#[tokio::test]
async fn a_body_at_the_documented_limit_is_accepted() {
    let broker = EmbeddedBroker::start(1).unwrap();
    broker.create_topic("req", 1).unwrap();
    let mut config = config_for(broker.bootstrap_servers());
    config.ingress.max_body_bytes = Config::default().ingress.max_body_bytes;
    config.validate().unwrap();
    let app = app_for(config.clone());
    let prefix = format!(r#"{{"body":{CHAT},"metadata":""#);
    let filler = config.ingress.max_body_bytes - prefix.len() - 2;
    let body = format!(r#"{prefix}{}"}}"#, "x".repeat(filler));
    assert_eq!(body.len(), config.ingress.max_body_bytes);
    let (status, _, value) = call(&app, "POST", "/v1/requests", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{value:.200}");

    let over = format!(r#"{prefix}{}"}}"#, "x".repeat(filler + 1));
    let (status, _, value) = call(&app, "POST", "/v1/requests", over).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{value:.200}");
}

#[tokio::test]
async fn a_body_that_is_not_json_by_its_content_type_gets_415() {
    let app = app_for(config_for("127.0.0.1:1"));
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let request = Request::builder()
            .method("POST")
            .uri("/v1/requests")
            .header("content-type", content_type)
            .body(Body::from(format!(r#"{{"body":{CHAT}}}"#)))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["error"]["type"], "unsupported_media_type");
        assert!(
            value["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("application/json")),
            "{value}"
        );
    }
}

#[tokio::test]
async fn bad_input_gets_a_json_4xx() {
    // No broker is needed: every case is refused before Kafka is asked.
    let app = app_for(config_for("127.0.0.1:1"));
    let too_big = format!(r#"{{"body":{CHAT},"metadata":"{}"}}"#, "x".repeat(5000));
    for (body, expected_status, expected_text) in [
        (
            "{oops".to_string(),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        (
            r#"{"id":"x"}"#.to_string(),
            StatusCode::BAD_REQUEST,
            "missing field `body`",
        ),
        (
            r#"{"body":[1]}"#.to_string(),
            StatusCode::BAD_REQUEST,
            "invalid type",
        ),
        (
            format!(r#"{{"body":{CHAT},"deadline_ms":"later"}}"#),
            StatusCode::BAD_REQUEST,
            "invalid type",
        ),
        (
            format!(r#"{{"body":{CHAT},"lane":"gold"}}"#),
            StatusCode::BAD_REQUEST,
            "unknown lane",
        ),
        (too_big, StatusCode::PAYLOAD_TOO_LARGE, "exceeds 4096 bytes"),
    ] {
        let (status, _, value) = call(&app, "POST", "/v1/requests", body.clone()).await;
        assert_eq!(status, expected_status, "{body:.80}: {value}");
        let message = value["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected_text), "{body:.80}: {value}");
        assert!(value["error"]["type"].is_string());
    }
    let (status, _, value) = call(&app, "GET", "/v1/requests/never-seen", Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(value["error"]["type"], "not_found");
    // A long unknown id is not echoed whole.
    let long = "i".repeat(5000);
    let (status, _, value) =
        call(&app, "GET", &format!("/v1/requests/{long}"), Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let message = value["error"]["message"].as_str().unwrap();
    assert!(message.len() < 300, "{message}");
    assert!(message.contains("(5000 bytes)"), "{message}");
    // A JSON array is not a submission, and the message says what is.
    let (status, _, value) = call(&app, "POST", "/v1/requests", "[1, 2]").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        value["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("must be a JSON object") && m.contains("not an array")),
        "{value}"
    );
}

#[tokio::test]
async fn unreachable_kafka_answers_503_quickly_with_retry_after() {
    let mut config = config_for("127.0.0.1:1");
    config.ingress.enqueue_timeout_ms = 1000;
    let app = app_for(config);
    let started = Instant::now();
    let (status, headers, value) = call(
        &app,
        "POST",
        "/v1/requests",
        format!(r#"{{"id":"lost?","body":{CHAT}}}"#),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{value}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(value["error"]["type"], "unavailable");
    // The configured bound plus a small margin (librdkafka alone took about 2 s).
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_millis(1150),
        "503 took {took:?}"
    );
    // Nothing was accepted, so nothing is reported as queued.
    let (status, _, _) = call(&app, "GET", "/v1/requests/lost%3F", Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_body_within_the_limit_but_too_large_for_kafka_gets_413_not_503() {
    // librdkafka's producer refuses records over message.max.bytes (1,000,000 by default)
    // before any broker is asked, so an unreachable one will do.
    let mut config = config_for("127.0.0.1:1");
    config.ingress.max_body_bytes = 2 * 1024 * 1024;
    let app = app_for(config);
    let body = format!(
        r#"{{"body":{CHAT},"metadata":"{}"}}"#,
        "x".repeat(1_010_000)
    );
    let started = Instant::now();
    let (status, headers, value) = call(&app, "POST", "/v1/requests", body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{value}");
    assert_eq!(value["error"]["type"], "payload_too_large");
    assert!(
        value["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("more than Kafka accepts")),
        "{value}"
    );
    assert!(headers.get("retry-after").is_none(), "not worth retrying");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn readyz_reflects_readiness_and_healthz_is_live() {
    let mut registry = Registry::default();
    let state =
        sluice::ingress::build_state(Arc::new(config_for("127.0.0.1:1")), &mut registry).unwrap();
    let ready = Readiness::default();
    let app = sluice::ingress::routes::app(
        state,
        AdminState {
            registry: Arc::new(registry),
            ready: ready.clone(),
        },
    );
    assert_eq!(
        call(&app, "GET", "/healthz", Body::empty()).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "GET", "/readyz", Body::empty()).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    ready.set(true);
    assert_eq!(
        call(&app, "GET", "/readyz", Body::empty()).await.0,
        StatusCode::OK
    );
    call(&app, "POST", "/v1/requests", "{oops").await;
    call(&app, "POST", "/v1/requests", "{oops").await;
    let (status, _, text) = call(&app, "GET", "/metrics", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().unwrap();
    assert!(
        text.contains(r#"sluice_ingress_submissions_total{status="400"} 2"#),
        "{text}"
    );
}

/// Both accept paths (`POST /v1/requests` and the OpenAI front door) count what they put
/// in the result cache.
#[tokio::test]
async fn every_route_that_accepts_counts_its_cache_entry() {
    let broker = EmbeddedBroker::start(1).unwrap();
    broker.create_topic("req", 1).unwrap();
    let app = app_for(config_for(broker.bootstrap_servers()));
    let body = format!(r#"{{"id":"cached-1","body":{CHAT}}}"#);
    let (status, _, value) = call(&app, "POST", "/v1/requests", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{value}");
    // No worker answers: the call is accepted, then its wait runs out.
    let request = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-sluice-timeout-ms", "1000")
        .body(Body::from(CHAT))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let (_, _, text) = call(&app, "GET", "/metrics", Body::empty()).await;
    let text = text.as_str().unwrap();
    assert!(
        text.lines().any(|l| l == "sluice_ingress_cached_results 2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_mixed_batch_answers_each_item_and_stores_only_the_good_ones() {
    let broker = EmbeddedBroker::start(1).unwrap();
    broker.create_topic("req", 1).unwrap();
    broker.create_topic("req.batch", 1).unwrap();
    let app = app_for(config_for(broker.bootstrap_servers()));
    let batch = format!(
        r#"{{"requests":[
            {{"id":"b-1","body":{CHAT}}},
            {{"id":"b-2","body":{{"messages":[]}}}},
            {{"id":"b-5","body":{CHAT},"dedline_ms":1}},
            {{"id":"b-3","body":{CHAT},"lane":"batch"}},
            {{"id":"b-4","body":{CHAT},"lane":"gold"}},
            {{"id":"b-1","body":{CHAT}}}
        ]}}"#
    );
    let (status, _, value) = call(&app, "POST", "/v1/requests:batch", batch).await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{value}");
    let results = value["results"].as_array().expect("results");
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [202, 400, 400, 202, 400, 400], "{value}");
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["index"], i, "in order: {value}");
    }
    assert_eq!(results[0]["body"], json!({"id": "b-1", "status": "queued"}));
    assert_eq!(results[3]["id"], "b-3");
    assert!(results[4]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown lane"));
    assert!(results[5]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("more than once"));

    // Exactly the accepted two are on their topics.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("group.id", "batch-check")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["req", "req.batch"]).unwrap();
    let mut stored = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let envelope: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
            stored.push((
                message.topic().to_string(),
                envelope["id"].as_str().unwrap().to_string(),
            ));
        }
    }
    stored.sort();
    assert_eq!(
        stored,
        [
            ("req".to_string(), "b-1".to_string()),
            ("req.batch".to_string(), "b-3".to_string())
        ]
    );
    // And GET knows them.
    let (status, _, value) = call(&app, "GET", "/v1/requests/b-3", Body::empty()).await;
    assert_eq!(
        (status, value["status"].as_str()),
        (StatusCode::OK, Some("queued"))
    );
}

#[tokio::test]
async fn a_batch_kafka_does_not_take_is_never_answered_202() {
    let mut config = config_for("127.0.0.1:1");
    config.ingress.enqueue_timeout_ms = 500;
    let app = app_for(config);
    let batch = format!(r#"{{"requests":[{{"body":{CHAT}}},{{"body":{CHAT}}},{{"body":{{}}}}]}}"#);
    let (status, _, value) = call(&app, "POST", "/v1/requests:batch", batch).await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{value}");
    let statuses: Vec<u64> = value["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [503, 503, 400], "{value}");
}

#[tokio::test]
async fn cors_and_gzip_only_when_configured() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let preflight = || {
        Request::builder()
            .method("OPTIONS")
            .uri("/v1/chat/completions")
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .body(Body::empty())
            .unwrap()
    };
    let metrics = || {
        Request::builder()
            .uri("/metrics")
            .header("accept-encoding", "gzip")
            .body(Body::empty())
            .unwrap()
    };

    let plain = app_for(config_for(broker.bootstrap_servers()));
    let response = plain.clone().oneshot(preflight()).await.unwrap();
    assert!(!response
        .headers()
        .contains_key("access-control-allow-origin"));
    let response = plain.clone().oneshot(metrics()).await.unwrap();
    assert!(!response.headers().contains_key("content-encoding"));

    let mut config = config_for(broker.bootstrap_servers());
    config.ingress.cors_allowed_origins = vec!["https://app.example.com".into()];
    config.ingress.gzip = true;
    config.validate().unwrap();
    let open = app_for(config);
    let response = open.clone().oneshot(preflight()).await.unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let methods = response.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let other = Request::builder()
        .method("OPTIONS")
        .uri("/v1/chat/completions")
        .header("origin", "https://evil.example.com")
        .header("access-control-request-method", "POST")
        .body(Body::empty())
        .unwrap();
    let response = open.clone().oneshot(other).await.unwrap();
    assert!(!response
        .headers()
        .contains_key("access-control-allow-origin"));
    let response = open.clone().oneshot(metrics()).await.unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");

    let mut bad = config_for(broker.bootstrap_servers());
    bad.ingress.cors_allowed_origins = vec!["app.example.com".into()];
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("ingress.cors_allowed_origins"), "{e}");
}

/// Two backends by model and an alias: a request for an unknown model is refused before
/// Kafka with OpenAI's 404 `model_not_found` on every route; an alias is written as its
/// model; `GET /v1/models` lists the names served and the aliases.
#[tokio::test]
async fn the_model_picks_its_route_and_an_unknown_one_is_refused_before_kafka() {
    let broker = EmbeddedBroker::start(1).unwrap();
    broker.create_topic("req", 1).unwrap();
    broker.create_topic("req.batch", 1).unwrap();
    let mut config = config_for(broker.bootstrap_servers());
    for (name, models) in [("big", "llama-3-70b"), ("small", "smollm2-*")] {
        let backend = sluice::config::BackendConfig {
            models: vec![models.into()],
            ..Default::default()
        };
        config.backends.insert(name.into(), backend);
    }
    config
        .models
        .aliases
        .insert("fast".into(), "smollm2-135m".into());
    let app = app_for(config);

    let (status, _, value) = call(&app, "GET", "/v1/models", Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value["object"], "list");
    let ids: Vec<&str> = value["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["fast", "llama-3-70b"],
        "names and aliases, not patterns"
    );

    let chat = |model: &str| {
        format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":4}}"#
        )
    };
    let (status, _, value) = call(&app, "POST", "/v1/chat/completions", chat("gpt-5")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{value}");
    assert_eq!(value["error"]["code"], "model_not_found");
    assert_eq!(value["error"]["type"], "invalid_request_error");
    assert!(
        value["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpt-5"),
        "{value}"
    );
    let body = format!(r#"{{"id":"unknown-model","body":{}}}"#, chat("gpt-5"));
    let (status, _, value) = call(&app, "POST", "/v1/requests", body).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{value}");
    assert_eq!(value["error"]["code"], "model_not_found");
    let batch = format!(r#"{{"requests":[{{"body":{}}}]}}"#, chat("gpt-5"));
    let (_, _, value) = call(&app, "POST", "/v1/requests:batch", batch).await;
    assert_eq!(value["results"][0]["status"], 404, "{value}");

    let body = format!(r#"{{"id":"by-alias","body":{}}}"#, chat("fast"));
    let (status, _, value) = call(&app, "POST", "/v1/requests", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{value}");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("group.id", "check-routes")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["req"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut written = Vec::new();
    while Instant::now() < deadline && written.is_empty() {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            written.push(serde_json::from_slice::<Value>(message.payload().unwrap()).unwrap());
        }
    }
    assert_eq!(written.len(), 1, "only the served request reached Kafka");
    assert_eq!(written[0]["id"], "by-alias");
    assert_eq!(
        written[0]["body"]["model"], "smollm2-135m",
        "written as the model"
    );
}
