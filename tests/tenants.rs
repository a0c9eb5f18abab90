//! Tenants at the ingress (`ingress.auth` on), through the routes without a socket and
//! librdkafka's in-process mock cluster: a key names the tenant, anything else is 401;
//! a tenant reads only its own requests; over its requests-per-minute limit it gets 429
//! with Retry-After and OpenAI's `x-ratelimit-*` headers.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tower::ServiceExt;

use sluice::admin::{AdminState, Readiness};
use sluice::config::tenants::hash_key;
use sluice::config::{Config, TenantConfig};
use sluice::kafka::embedded::EmbeddedBroker;

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#;

fn app(bootstrap: &str) -> Router {
    let mut config = Config::default();
    config.kafka.bootstrap_servers = bootstrap.to_string();
    config.kafka.request_topic = "req".into();
    config.ingress.enqueue_timeout_ms = 5000;
    config.ingress.auth = true;
    config.ingress.tenants = BTreeMap::from([
        (
            "acme".to_string(),
            TenantConfig {
                api_key_sha256: vec![hash_key("key-acme")],
                requests_per_minute: Some(3),
                ..TenantConfig::default()
            },
        ),
        (
            "globex".to_string(),
            TenantConfig {
                api_key_sha256: vec![hash_key("key-globex")],
                ..TenantConfig::default()
            },
        ),
    ]);
    config.validate().expect("a valid configuration");
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

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: &str,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, value)
}

#[tokio::test]
async fn keys_name_tenants_who_see_only_their_own_requests_within_their_limits() {
    let broker = EmbeddedBroker::start(1).unwrap();
    broker.create_topic("req", 1).unwrap();
    let app = app(broker.bootstrap_servers());
    let submit = format!(r#"{{"body":{CHAT},"tenant":"globex"}}"#);

    for (key, what) in [(None, "no key"), (Some("key-unknown"), "an unknown key")] {
        for (method, uri, body) in [
            ("POST", "/v1/requests", submit.as_str()),
            ("POST", "/v1/chat/completions", CHAT),
            ("GET", "/v1/requests/anything", ""),
        ] {
            let (status, headers, value) = call(&app, method, uri, key, body).await;
            assert_eq!(status, 401, "{what}: {method} {uri}: {value}");
            assert_eq!(headers["www-authenticate"], "Bearer");
            assert!(value["error"]["message"].is_string(), "{value}");
            assert!(
                !value.to_string().contains("key-unknown"),
                "the key is not echoed"
            );
        }
    }

    // acme's request, with a `tenant` field naming another: ignored, acme's it is.
    let (status, headers, value) =
        call(&app, "POST", "/v1/requests", Some("key-acme"), &submit).await;
    assert_eq!(status, 202, "{value}");
    assert_eq!(headers["x-ratelimit-limit-requests"], "3");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "2");
    let id = value["id"].as_str().unwrap().to_string();
    let uri = format!("/v1/requests/{id}");
    let (status, _, value) = call(&app, "GET", &uri, Some("key-acme"), "").await;
    assert_eq!(
        (status.as_u16(), value["status"].as_str()),
        (200, Some("queued"))
    );
    let (status, _, value) = call(&app, "GET", &uri, Some("key-globex"), "").await;
    assert_eq!(
        status, 404,
        "another tenant's request is unknown to globex: {value}"
    );
    // Nor can globex take over acme's id.
    let same_id = format!(r#"{{"id":"{id}","body":{CHAT}}}"#);
    let (status, _, _) = call(&app, "POST", "/v1/requests", Some("key-globex"), &same_id).await;
    assert_eq!(status, 409);

    // Three a minute: two more pass, the fourth waits for a refill (20 s a request).
    for _ in 0..2 {
        let (status, _, value) =
            call(&app, "POST", "/v1/requests", Some("key-acme"), &submit).await;
        assert_eq!(status, 202, "{value}");
    }
    let (status, headers, value) =
        call(&app, "POST", "/v1/requests", Some("key-acme"), &submit).await;
    assert_eq!(status, 429, "{value}");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    let retry_after_ms: u64 = headers["retry-after-ms"].to_str().unwrap().parse().unwrap();
    assert!((19..=20).contains(&retry_after), "{retry_after}");
    assert!(
        (18_000..=20_000).contains(&retry_after_ms),
        "{retry_after_ms}"
    );
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert!(headers["x-ratelimit-reset-requests"]
        .to_str()
        .unwrap()
        .ends_with('s'));
    assert!(value["error"]["message"].as_str().unwrap().contains("acme"));
    // globex has no limits and is not held back by acme's.
    let (status, headers, _) =
        call(&app, "POST", "/v1/requests", Some("key-globex"), &submit).await;
    assert_eq!(status, 202);
    assert!(!headers.contains_key("x-ratelimit-limit-requests"));
}
