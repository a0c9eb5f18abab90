//! Every terminal path of a request, in one run, each ending in exactly one outcome: one
//! final reply with the expected status, attempts and error type (or one dead letter and
//! no reply), and exactly as many backend calls as the path implies. The backend is a
//! fake in this test process that answers by the prompt's first word.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use serde_json::{json, Value};

use crate::support::pipeline::{
    collect_replies, header, read_topic, reader_config, request_value, sluice_env, with_env,
    Topics, Worker,
};
use crate::support::{unique_name, Tansu};

/// Attempts per request in this run (`backend.max_attempts`).
const MAX_ATTEMPTS: u64 = 3;
/// Per-attempt timeout; the `slow` behaviour takes longer.
const TIMEOUT_MS: u64 = 500;
const SLOW: Duration = Duration::from_millis(3_000);
/// `retry-after-ms` of the `later` behaviour: longer than the request's deadline.
const LATER_RETRY_AFTER_MS: u64 = 10_000;

/// Calls the fake backend received, by prompt.
type Calls = Arc<Mutex<HashMap<String, u64>>>;

/// An OpenAI-compatible fake on 127.0.0.1:0. The prompt is `<behaviour>:<request id>`:
/// `ok` answers 200; `bad` 400; `down` 503 always; `flaky` 503 on the first call and
/// 200 after; `slow` sleeps past the worker's timeout; `later` 503 asking to retry
/// after 10 s; `garbage` 200 with a body that is not JSON.
async fn start_fake_backend() -> (String, Calls) {
    async fn chat(State(calls): State<Calls>, Json(body): Json<Value>) -> Response {
        let prompt = body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let call = {
            let mut calls = calls.lock().expect("not poisoned");
            let count = calls.entry(prompt.clone()).or_default();
            *count += 1;
            *count
        };
        let completion = || {
            Json(json!({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_700_000_000u64,
                "model": "fake",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
            }))
            .into_response()
        };
        let error = |status: StatusCode| {
            (
                status,
                Json(json!({"error": {"message": format!("fake {status}"), "type": "fake"}})),
            )
                .into_response()
        };
        match prompt.split(':').next().unwrap_or_default() {
            "ok" => completion(),
            "bad" => error(StatusCode::BAD_REQUEST),
            "down" => error(StatusCode::SERVICE_UNAVAILABLE),
            "flaky" if call == 1 => error(StatusCode::SERVICE_UNAVAILABLE),
            "flaky" => completion(),
            "slow" => {
                tokio::time::sleep(SLOW).await;
                completion()
            }
            "later" => {
                let mut response = error(StatusCode::SERVICE_UNAVAILABLE);
                response.headers_mut().insert(
                    HeaderName::from_static("retry-after-ms"),
                    LATER_RETRY_AFTER_MS.into(),
                );
                response
            }
            "garbage" => (StatusCode::OK, "this is not a chat completion").into_response(),
            other => panic!("the test sent an unknown behaviour {other:?}"),
        }
    }
    let calls = Calls::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

/// One path: what is sent and the one outcome it must end in.
struct Case {
    name: &'static str,
    /// The request id (also the Kafka key and, after the behaviour, the prompt).
    id: String,
    /// The record value written to the request topic.
    value: Vec<u8>,
    expected: Expected,
    /// Backend calls the fake must have seen for this request.
    calls: u64,
}

enum Expected {
    /// A final reply on `topic`.
    Reply {
        topic: String,
        status: &'static str,
        attempts: u64,
        /// `error.type`, or `None` for a reply without an error.
        error: Option<&'static str>,
        /// `error.status` (the backend's HTTP status).
        http_status: Option<u64>,
        /// Text the error message must contain.
        message: Option<&'static str>,
    },
    /// A dead letter with this `sluice-error-class`, and no reply anywhere.
    DeadLetter { class: &'static str },
}

/// A request just under the producer's limit (librdkafka's `message.max.bytes`,
/// 1,000,000) whose reply, echoing its metadata next to the completion, is over it.
fn reply_too_large(reply_topic: &str) -> Case {
    const REQUEST_BYTES: usize = 999_850;
    let id = unique_name("reply-too-large");
    let value = |pad: usize| {
        request_value(
            &id,
            &format!("ok:{id}"),
            json!({"metadata": {"blob": "x".repeat(pad)}}),
        )
    };
    let value = value(REQUEST_BYTES - value(0).len());
    assert_eq!(value.len(), REQUEST_BYTES);
    Case {
        name: "reply-too-large",
        id,
        value,
        expected: Expected::Reply {
            topic: reply_topic.to_string(),
            status: "error",
            attempts: 1,
            error: Some("reply_too_large"),
            http_status: None,
            message: Some("body and metadata were dropped"),
        },
        calls: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_terminal_path_ends_in_exactly_one_outcome() {
    let _serial = crate::serial().await;
    let started = Instant::now();
    let tansu = Tansu::start();
    let topics = Topics::fresh();
    topics.create_on(&tansu).await;
    let custom_reply = unique_name("custom");
    tansu.create_topic(&custom_reply, 1).await;
    let (backend_url, calls) = start_fake_backend().await;
    let max_attempts = MAX_ATTEMPTS.to_string();
    let timeout_ms = TIMEOUT_MS.to_string();
    let env = with_env(
        &sluice_env(&tansu.bootstrap(), &topics, &backend_url),
        &[
            ("SLUICE__BACKEND__MAX_ATTEMPTS", &max_attempts),
            ("SLUICE__BACKEND__TIMEOUT_MS", &timeout_ms),
            ("SLUICE__BACKEND__RETRY_INITIAL_BACKOFF_MS", "50"),
            // Above LATER_RETRY_AFTER_MS, so the backend's Retry-After is obeyed.
            ("SLUICE__BACKEND__RETRY_MAX_BACKOFF_MS", "20000"),
            // The breaker off: every path must end the same way whatever runs beside it.
            ("SLUICE__BACKEND__BREAKER__CONSECUTIVE_FAILURES", "0"),
            ("SLUICE__BACKEND__BREAKER__ERROR_RATIO", "2"),
        ],
    );
    let mut worker = Worker::start(&env).await;
    worker.wait_ready(Duration::from_secs(30)).await;

    let now_ms = sluice::envelope::now_ms();
    let reply = |status, attempts, error, http_status, message| Expected::Reply {
        topic: topics.reply.clone(),
        status,
        attempts,
        error,
        http_status,
        message,
    };
    let case = |name: &'static str, behaviour: &str, extra: Value, expected, calls| {
        let id = unique_name(name);
        Case {
            name,
            value: request_value(&id, &format!("{behaviour}:{id}"), extra),
            id,
            expected,
            calls,
        }
    };
    let cases = vec![
        case("ok", "ok", json!({}), reply("ok", 1, None, None, None), 1),
        case(
            "backend-4xx",
            "bad",
            json!({}),
            reply("error", 1, Some("backend_status"), Some(400), None),
            1,
        ),
        case(
            "retries-exhausted-503",
            "down",
            json!({}),
            reply(
                "error",
                MAX_ATTEMPTS,
                Some("backend_status"),
                Some(503),
                None,
            ),
            MAX_ATTEMPTS,
        ),
        case(
            "retries-exhausted-timeout",
            "slow",
            json!({}),
            reply("error", MAX_ATTEMPTS, Some("timeout"), None, None),
            MAX_ATTEMPTS,
        ),
        case(
            "retries-exhausted-invalid-answer",
            "garbage",
            json!({}),
            reply("error", MAX_ATTEMPTS, Some("invalid_response"), None, None),
            MAX_ATTEMPTS,
        ),
        case(
            "retryable-then-ok",
            "flaky",
            json!({}),
            reply("ok", 2, None, None, None),
            2,
        ),
        case(
            "deadline-passed-when-taken",
            "ok",
            json!({"deadline_ms": now_ms - 60_000}),
            reply(
                "expired",
                0,
                Some("expired"),
                None,
                Some("before the backend was called"),
            ),
            0,
        ),
        case(
            "deadline-passes-during-retries",
            "later",
            json!({"deadline_ms": now_ms + 5_000}),
            reply("expired", 1, Some("expired"), None, Some("last error")),
            1,
        ),
        case(
            "reply-to-request-topic",
            "ok",
            json!({"reply_to": topics.request}),
            reply("rejected", 0, Some("invalid_request"), None, None),
            0,
        ),
        case(
            "reply-to-dead-letter-topic",
            "ok",
            json!({"reply_to": topics.dlq}),
            reply("rejected", 0, Some("invalid_request"), None, None),
            0,
        ),
        case(
            "reply-to-own-topic",
            "ok",
            json!({"reply_to": custom_reply}),
            Expected::Reply {
                topic: custom_reply.clone(),
                status: "ok",
                attempts: 1,
                error: None,
                http_status: None,
                message: None,
            },
            1,
        ),
        reply_too_large(&topics.reply),
        Case {
            name: "undecodable",
            id: unique_name("undecodable"),
            value: br#"{"v":1,"id":"#.to_vec(),
            expected: Expected::DeadLetter { class: "decode" },
            calls: 0,
        },
    ];

    let producer: FutureProducer = tansu.producer_config().create().unwrap();
    for case in &cases {
        producer
            .send(
                FutureRecord::to(&topics.request)
                    .key(&case.id)
                    .payload(&case.value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("the broker takes the request");
    }

    // Read every topic an outcome may land on, until each case has its outcome and
    // nothing more came for 3 s (so a second outcome would be seen).
    let ids_on = |topic: &str| -> Vec<String> {
        cases
            .iter()
            .filter(|c| matches!(&c.expected, Expected::Reply { topic: t, .. } if t == topic))
            .map(|c| c.id.clone())
            .collect()
    };
    let quiet = Duration::from_secs(3);
    let timeout = Duration::from_secs(60);
    let config = reader_config(&tansu.bootstrap());
    let dead_letters = Arc::new(Mutex::new(Vec::new()));
    let sink = dead_letters.clone();
    let expected_dead = cases
        .iter()
        .filter(|c| matches!(c.expected, Expected::DeadLetter { .. }))
        .count();
    let (default_ids, custom_ids) = (ids_on(&topics.reply), ids_on(&custom_reply));
    let (default_replies, custom_replies, _) = tokio::join!(
        collect_replies(config.clone(), &topics.reply, &default_ids, timeout, quiet),
        collect_replies(config.clone(), &custom_reply, &custom_ids, timeout, quiet),
        read_topic(config, &topics.dlq, timeout, quiet, move |message| {
            let mut dead = sink.lock().expect("not poisoned");
            dead.push(message);
            dead.len() >= expected_dead
        }),
    );
    let dead_letters = dead_letters.lock().expect("not poisoned").clone();
    let calls = calls.lock().expect("not poisoned").clone();

    let mut failures = Vec::new();
    for case in &cases {
        let prompt_calls = calls
            .iter()
            .filter(|(prompt, _)| prompt.ends_with(&format!(":{}", case.id)))
            .map(|(_, n)| *n)
            .sum::<u64>();
        let on_default = default_replies.by_id.get(&case.id).map_or(0, Vec::len);
        let on_custom = custom_replies.by_id.get(&case.id).map_or(0, Vec::len);
        let dead: Vec<_> = dead_letters
            .iter()
            .filter(|m| m.key() == Some(case.id.as_bytes()))
            .collect();
        let mut problems = Vec::new();
        if prompt_calls != case.calls {
            problems.push(format!(
                "{prompt_calls} backend calls, expected {}",
                case.calls
            ));
        }
        match &case.expected {
            Expected::Reply {
                topic,
                status,
                attempts,
                error,
                http_status,
                message,
            } => {
                let (copies, elsewhere, replies) = if *topic == topics.reply {
                    (on_default, on_custom, &default_replies)
                } else {
                    (on_custom, on_default, &custom_replies)
                };
                if copies != 1 || elsewhere != 0 || !dead.is_empty() {
                    problems.push(format!(
                        "{copies} replies on {topic}, {elsewhere} on the other reply topic, {} dead letters; expected exactly one reply",
                        dead.len()
                    ));
                }
                if let Some(reply) = replies.first(&case.id) {
                    let error_type = reply["error"]["type"].as_str();
                    let error_message = reply["error"]["message"].as_str().unwrap_or_default();
                    if reply["status"] != *status
                        || reply["attempts"] != *attempts
                        || error_type != *error
                        || reply["error"]["status"].as_u64() != *http_status
                        || message.is_some_and(|m| !error_message.contains(m))
                        || (*status == "ok") != reply["body"].is_object()
                    {
                        problems.push(format!(
                            "expected status {status}, attempts {attempts}, error {error:?} \
                             (HTTP {http_status:?}, message with {message:?}); got {reply}"
                        ));
                    }
                }
            }
            Expected::DeadLetter { class } => {
                if dead.len() != 1 || on_default + on_custom != 0 {
                    problems.push(format!(
                        "{} dead letters and {} replies; expected exactly one dead letter",
                        dead.len(),
                        on_default + on_custom
                    ));
                }
                if let Some(letter) = dead.first() {
                    let got = header(letter, "sluice-error-class");
                    if got.as_deref() != Some(class) || letter.payload() != Some(&case.value[..]) {
                        problems.push(format!(
                            "dead letter class {got:?} (expected {class}), value kept: {}",
                            letter.payload() == Some(&case.value[..])
                        ));
                    }
                }
            }
        }
        let outcome = match (&case.expected, default_replies.first(&case.id)) {
            (Expected::DeadLetter { .. }, _) => format!("dead letter x{}", dead.len()),
            (_, Some(r)) => format!(
                "{} attempts {} {}",
                r["status"],
                r["attempts"],
                r["error"]["type"].as_str().unwrap_or("-")
            ),
            (_, None) => match custom_replies.first(&case.id) {
                Some(r) => format!("{} attempts {} (own topic)", r["status"], r["attempts"]),
                None => "no reply".into(),
            },
        };
        eprintln!(
            "outcome path {:<34} -> {outcome}, {} cop(ies), backend calls {prompt_calls}{}",
            case.name,
            on_default + on_custom + dead.len(),
            if problems.is_empty() {
                ""
            } else {
                "  <-- WRONG"
            }
        );
        if !problems.is_empty() {
            failures.push(format!("{}: {}", case.name, problems.join("; ")));
        }
    }

    // The worker's own count of outcomes agrees.
    let metrics = worker.metrics().await;
    let count = |outcome: &str| {
        metrics
            .get("sluice_worker_messages_total", &[("outcome", outcome)])
            .unwrap_or(0.0) as u64
    };
    let counted: Vec<(&str, u64)> = ["ok", "error", "expired", "rejected", "dead_letter"]
        .into_iter()
        .map(|o| (o, count(o)))
        .collect();
    eprintln!(
        "outcome paths: {} cases in {:.1} s; worker counted {counted:?}",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        counted,
        vec![
            ("ok", 3),
            ("error", 5),
            ("expired", 2),
            ("rejected", 2),
            ("dead_letter", 1)
        ]
    );
}
