//! Property tests (the fuzz targets): the envelope decoder and the ingress body parser
//! never panic on any input, round-trip every valid value, and the HTTP routes answer
//! every malformed, oversized or wrong-type input with a JSON 4xx, never a 5xx.
//! `make test` runs the default number of cases; `make fuzz` runs many more
//! (PROPTEST_CASES).

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request as HttpRequest;
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tower::ServiceExt;

use sluice::admin::{AdminState, Readiness};
use sluice::config::Config;
use sluice::envelope::{decode_request, Request, VERSION};
use sluice::ingress::{batch, submit};

/// Arbitrary JSON values of bounded depth.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Valid version-1 requests.
fn request() -> impl Strategy<Value = Request> {
    (
        "[A-Za-z0-9._:-]{1,64}",
        prop::option::of("[a-z]{1,10}"),
        prop::option::of(any::<u64>()),
        prop::option::of("[a-z0-9_-]{1,16}"),
        prop::option::of("[a-z.]{1,20}"),
        prop::option::of(".{1,30}"),
        prop::collection::btree_map("[a-z_]{1,12}", json_value(), 0..5),
        prop::option::of(json_value()),
        prop::option::of(any::<bool>()),
    )
        .prop_map(
            |(id, tenant, deadline_ms, lane, reply_to, ordering_key, body, metadata, fallback)| {
                Request {
                    v: VERSION,
                    id,
                    tenant,
                    deadline_ms,
                    lane,
                    reply_to,
                    ordering_key,
                    fallback,
                    body: body.into_iter().collect::<Map<String, Value>>(),
                    // `null` metadata is the same as none on the wire.
                    metadata: metadata.filter(|m| !m.is_null()),
                }
            },
        )
}

proptest! {
    #[test]
    fn decoder_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_request(&bytes);
    }

    #[test]
    fn decoder_never_panics_on_json(value in json_value()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        if let Ok(request) = decode_request(&bytes) {
            prop_assert_eq!(request.v, VERSION);
            prop_assert!(!request.id.is_empty());
        }
    }

    #[test]
    fn valid_requests_round_trip(request in request()) {
        let bytes = serde_json::to_vec(&request).unwrap();
        prop_assert_eq!(decode_request(&bytes).unwrap(), request);
    }

    #[test]
    fn ingress_parser_answers_every_body_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let config = Config::default();
        let _ = submit::parse(&bytes, &config, None);
    }

    #[test]
    fn ingress_parser_accepts_exactly_well_formed_submissions(body in json_value(), with_messages in any::<bool>()) {
        let config = Config::default();
        let mut chat = match body { Value::Object(map) => map, _ => Map::new() };
        if with_messages {
            chat.insert("messages".into(), json!([{"role": "user", "content": "hi"}]));
        } else {
            chat.remove("messages");
        }
        let submission = json!({ "body": chat });
        let result = submit::parse(&serde_json::to_vec(&submission).unwrap(), &config, None);
        prop_assert_eq!(result.is_ok(), with_messages, "{:?}", result.err());
    }
}

/// The ingress app with a broker that does not exist: every bad input must be refused
/// before Kafka is asked.
/// A batch item: a valid submission (with a unique id) or an arbitrary JSON object.
fn batch_item() -> impl Strategy<Value = (bool, Value)> {
    prop_oneof![
        "[a-z0-9]{1,12}".prop_map(|id| (
            true,
            json!({"id": id, "body": {"messages": [{"role": "user", "content": "hi"}]}})
        )),
        prop::collection::btree_map("[a-z_]{1,12}", json_value(), 0..5)
            .prop_map(|m| (false, Value::Object(m.into_iter().collect()))),
    ]
}

proptest! {
    #[test]
    fn batch_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = batch::parse(&bytes, &Config::default(), None);
    }

    #[test]
    fn batch_items_answer_one_each_in_order(items in prop::collection::vec(batch_item(), 1..20)) {
        // Ids unique, so that only the kind of each item decides.
        let mut seen = std::collections::HashSet::new();
        let items: Vec<(bool, Value)> = items
            .into_iter()
            .filter(|(_, v)| v["id"].as_str().is_none_or(|id| seen.insert(id.to_string())))
            .collect();
        prop_assume!(!items.is_empty());
        let body = json!({"requests": items.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>()});
        let parsed = batch::parse(body.to_string().as_bytes(), &Config::default(), Some("t"))
            .expect("a list of items is a batch");
        prop_assert_eq!(parsed.len(), items.len());
        for ((valid, item), result) in items.iter().zip(&parsed) {
            // Arbitrary values may happen to be valid submissions: only the generated
            // valid ones are required to pass, and they keep their ids and the tenant.
            if *valid {
                let request = result.as_ref().expect("a valid item is accepted");
                prop_assert_eq!(Some(request.id.as_str()), item["id"].as_str());
                prop_assert_eq!(request.tenant.as_deref(), Some("t"));
            } else if item.get("body").is_none() {
                prop_assert!(result.is_err(), "no body, no request: {}", item);
            }
        }
    }

    #[test]
    fn a_batch_with_an_item_that_is_no_object_is_refused_whole(
        items in prop::collection::vec(batch_item(), 0..5),
        stray in json_value().prop_filter("not an object", |v| !v.is_object()),
        at in 0usize..6,
    ) {
        let mut values: Vec<Value> = items.into_iter().map(|(_, v)| v).collect();
        values.insert(at.min(values.len()), stray);
        let body = json!({"requests": values});
        prop_assert!(batch::parse(body.to_string().as_bytes(), &Config::default(), None).is_err());
    }
}

fn app() -> axum::Router {
    let mut config = Config::default();
    config.kafka.bootstrap_servers = "127.0.0.1:1".into();
    config.ingress.max_body_bytes = 2048;
    config.ingress.enqueue_timeout_ms = 200;
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

async fn answer(app: &axum::Router, method: &str, uri: &str, body: Vec<u8>) -> (u16, Value) {
    let request = HttpRequest::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn is_json_error(body: &Value) -> bool {
    body["error"]["type"].is_string() && body["error"]["message"].is_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_malformed_submission_is_a_json_4xx(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (status, body) = runtime.block_on(answer(&app(), "POST", "/v1/requests", bytes.clone()));
        // Random bytes are essentially never a valid submission; if one were, 503 (no broker).
        if status != 503 {
            prop_assert!((400..500).contains(&status), "status {status}");
            prop_assert!(is_json_error(&body), "{body}");
        }
    }

    #[test]
    fn wrong_types_in_every_field_are_json_400s(field in prop_oneof![
        Just("id"), Just("body"), Just("deadline_ms"), Just("lane"), Just("ordering_key"), Just("reply_to")
    ], value in json_value()) {
        let mut submission = json!({"body": {"messages": [{"role": "user", "content": "x"}]}});
        submission[field] = value.clone();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (status, body) = runtime.block_on(answer(&app(), "POST", "/v1/requests", serde_json::to_vec(&submission).unwrap()));
        if status != 503 {
            prop_assert!((400..500).contains(&status), "{field}={value}: status {status}");
            prop_assert!(is_json_error(&body), "{body}");
        }
    }
}

#[tokio::test]
async fn every_route_answers_bad_input_with_json_4xx() {
    let app = app();
    let cases: Vec<(&str, String, Vec<u8>, u16)> = vec![
        ("POST", "/v1/requests".into(), vec![b'{'; 3000], 413),
        ("POST", "/v1/requests".into(), b"\xff\xfe".to_vec(), 400),
        ("POST", "/v1/requests".into(), b"null".to_vec(), 400),
        ("GET", "/v1/requests".into(), vec![], 405),
        ("PUT", "/v1/requests/abc".into(), vec![], 405),
        ("DELETE", "/v1/requests/abc".into(), vec![], 405),
        ("GET", "/v1/requests/%FF%FE".into(), vec![], 400),
        (
            "GET",
            format!("/v1/requests/{}", "x".repeat(5000)),
            vec![],
            404,
        ),
        ("GET", "/v1/nothing-here".into(), vec![], 404),
        ("POST", "/metrics".into(), vec![], 405),
        ("POST", "/v1/chat/completions".into(), vec![b'{'; 3000], 413),
        ("POST", "/v1/chat/completions".into(), b"[1]".to_vec(), 400),
        (
            "POST",
            "/v1/chat/completions".into(),
            br#"{"messages":"hi"}"#.to_vec(),
            400,
        ),
        ("GET", "/v1/chat/completions".into(), vec![], 405),
        ("POST", "/v1/requests:batch".into(), b"{}".to_vec(), 400),
        (
            "POST",
            "/v1/requests:batch".into(),
            br#"{"requests":[]}"#.to_vec(),
            400,
        ),
        ("GET", "/v1/requests:batch".into(), vec![], 405),
    ];
    for (method, uri, body, expected) in cases {
        let (status, answer) = answer(&app, method, &uri, body).await;
        assert_eq!(status, expected, "{method} {uri:.60}: {answer}");
        assert!(is_json_error(&answer), "{method} {uri:.60}: {answer}");
    }
}
