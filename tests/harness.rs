//! Checks the integration-test harness (tests/support) against the real peers: a tansu
//! broker round trip, the OTLP receiver decoding a hand-built export, the llama.cpp
//! server answering a chat completion, and the sluice process wrapper.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message as _;
use serde_json::{json, Value};
use support::{LlamaServer, OtlpReceiver, SluiceProcess, SpanKind, Tansu};

#[test]
fn unique_names_differ_and_free_ports_bind() {
    let names: std::collections::BTreeSet<String> =
        (0..100).map(|_| support::unique_name("t")).collect();
    assert_eq!(names.len(), 100);
    assert!(names
        .iter()
        .all(|n| n.starts_with("t-") && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')));
    let port = support::free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
}

#[tokio::test]
async fn tansu_round_trips_a_message_with_headers() {
    let started = Instant::now();
    let tansu = Tansu::start();
    let startup = started.elapsed();
    let topic = support::unique_name("harness");
    tansu.create_topic(&topic, 3).await;

    let producer: FutureProducer = tansu.producer_config().create().unwrap();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "traceparent",
            value: Some(traceparent),
        })
        .insert(Header {
            key: "sluice-id",
            value: Some("req-1"),
        });
    let delivery = producer
        .send(
            FutureRecord::to(&topic)
                .key("req-1")
                .payload(r#"{"v":1,"id":"req-1","body":{}}"#)
                .partition(2)
                .headers(headers),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("tansu acknowledges the write");
    assert_eq!(delivery.partition, 2);
    assert_eq!(delivery.offset, 0);

    let group = support::unique_name("harness-group");
    let consumer: StreamConsumer = tansu.consumer_config(&group).create().unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(15), consumer.recv())
        .await
        .unwrap_or_else(|_| panic!("no message within 15 s\n{}", tansu.logs()))
        .expect("consumer error");
    assert_eq!(message.topic(), topic);
    assert_eq!(message.partition(), 2);
    assert_eq!(message.offset(), 0);
    assert_eq!(message.key(), Some(&b"req-1"[..]));
    assert_eq!(
        message.payload(),
        Some(&br#"{"v":1,"id":"req-1","body":{}}"#[..])
    );
    let headers: BTreeMap<String, String> = message
        .headers()
        .expect("headers survive the broker")
        .iter()
        .map(|h| {
            (
                h.key.to_string(),
                String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        headers,
        BTreeMap::from([
            ("traceparent".to_string(), traceparent.to_string()),
            ("sluice-id".to_string(), "req-1".to_string()),
        ])
    );
    eprintln!(
        "tansu startup {startup:?}, whole round trip {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn tansu_restart_comes_back_empty_on_the_same_port() {
    let mut tansu = Tansu::start();
    let topic = support::unique_name("restart");
    tansu.create_topic(&topic, 2).await;
    let port = tansu.port();
    assert!(tansu.is_running());

    tansu.stop();
    assert!(!tansu.is_running());
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err(),
        "nothing listens after stop"
    );

    tansu.restart();
    assert!(tansu.is_running());
    assert_eq!(tansu.port(), port);
    assert_eq!(tansu.bootstrap(), format!("127.0.0.1:{port}"));
    // In-memory storage: the topic is gone, and can be created again.
    let client: BaseConsumer = tansu.client_config().create().unwrap();
    let metadata = client.fetch_metadata(None, Duration::from_secs(5)).unwrap();
    assert!(
        metadata.topics().iter().all(|t| t.name() != topic),
        "{:?}",
        metadata
            .topics()
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
    );
    tansu.create_topic(&topic, 2).await;
}

fn string_attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn attr(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

#[tokio::test]
async fn otlp_receiver_decodes_and_stores_posted_spans() {
    let receiver = OtlpReceiver::start();
    assert!(receiver.endpoint().starts_with("http://127.0.0.1:"));
    assert_eq!(
        receiver.traces_url(),
        format!("{}/v1/traces", receiver.endpoint())
    );

    let trace_id: Vec<u8> = (1..=16).collect();
    let server_id = vec![0xaa; 8];
    let producer_id = vec![0xbb; 8];
    let linked_trace = vec![0x11; 16];
    let linked_span = vec![0x22; 8];
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string_attr("service.name", "sluice-ingress")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "sluice".into(),
                    ..Default::default()
                }),
                spans: vec![
                    Span {
                        trace_id: trace_id.clone(),
                        span_id: server_id.clone(),
                        name: "POST /v1/requests".into(),
                        kind: span::SpanKind::Server as i32,
                        start_time_unix_nano: 1,
                        end_time_unix_nano: 5,
                        ..Default::default()
                    },
                    Span {
                        trace_id: trace_id.clone(),
                        span_id: producer_id.clone(),
                        parent_span_id: server_id.clone(),
                        name: "send sluice.requests".into(),
                        kind: span::SpanKind::Producer as i32,
                        attributes: vec![
                            string_attr("messaging.system", "kafka"),
                            attr("messaging.kafka.offset", any_value::Value::IntValue(42)),
                            attr("flag", any_value::Value::BoolValue(true)),
                            attr(
                                "gen_ai.response.finish_reasons",
                                any_value::Value::ArrayValue(ArrayValue {
                                    values: vec![AnyValue {
                                        value: Some(any_value::Value::StringValue("stop".into())),
                                    }],
                                }),
                            ),
                        ],
                        links: vec![span::Link {
                            trace_id: linked_trace.clone(),
                            span_id: linked_span.clone(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };

    let client = reqwest::Client::new();
    let response = client
        .post(receiver.traces_url())
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let answer = ExportTraceServiceResponse::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(answer, ExportTraceServiceResponse::default());

    let spans = receiver
        .wait_for(|spans| spans.len() >= 2, Duration::from_secs(5))
        .await;
    assert_eq!(spans.len(), 2, "{}", support::describe_spans(&spans));
    assert_eq!(receiver.export_count(), 1);
    let (server, producer) = (&spans[0], &spans[1]);
    assert_eq!(server.service_name, "sluice-ingress");
    assert_eq!(server.scope_name, "sluice");
    assert_eq!(server.trace_id, "0102030405060708090a0b0c0d0e0f10");
    assert_eq!(server.span_id, "aaaaaaaaaaaaaaaa");
    assert!(server.is_root());
    assert_eq!(server.kind, SpanKind::Server);
    assert_eq!(server.name, "POST /v1/requests");
    assert_eq!(
        (server.start_time_unix_nano, server.end_time_unix_nano),
        (1, 5)
    );
    assert_eq!(producer.kind, SpanKind::Producer);
    assert_eq!(producer.parent_span_id, "aaaaaaaaaaaaaaaa");
    assert!(producer.is_child_of(server));
    assert!(!server.is_child_of(producer));
    assert_eq!(producer.attr("messaging.system"), Some("kafka"));
    assert_eq!(producer.attr("messaging.kafka.offset"), Some("42"));
    assert_eq!(producer.attr("flag"), Some("true"));
    assert_eq!(
        producer.attr("gen_ai.response.finish_reasons"),
        Some(r#"["stop"]"#)
    );
    assert_eq!(producer.attr("missing"), None);
    assert_eq!(
        producer.links,
        vec![support::SpanLink {
            trace_id: "11".repeat(16),
            span_id: "22".repeat(8),
        }]
    );

    // What the receiver cannot decode is refused and not stored.
    let wrong_type = client
        .post(receiver.traces_url())
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);
    let garbage = client
        .post(receiver.traces_url())
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff, 0xff, 0xff])
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    assert_eq!(receiver.spans().len(), 2);
    assert_eq!(receiver.export_count(), 1);
}

#[tokio::test]
async fn otlp_receiver_wait_for_times_out_with_what_arrived() {
    let receiver = OtlpReceiver::start();
    let started = Instant::now();
    let result = receiver
        .try_wait_for(|spans| !spans.is_empty(), Duration::from_millis(200))
        .await;
    assert_eq!(result, Err(Vec::new()), "nothing was exported");
    assert!(started.elapsed() >= Duration::from_millis(200));
}

async fn chat(client: &reqwest::Client, base_url: &str) -> Value {
    let response = client
        .post(format!("{base_url}/v1/chat/completions"))
        .json(&json!({
            "model": "smollm2",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 8,
            "temperature": 0
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn llama_server_answers_chat_completions_deterministically() {
    let started = Instant::now();
    let llama = LlamaServer::start(2).await;
    let startup = started.elapsed();
    assert_eq!(
        llama.base_url(),
        format!("http://127.0.0.1:{}", llama.port())
    );

    let client = reqwest::Client::new();
    let first = chat(&client, &llama.base_url()).await;
    assert_eq!(first["object"], "chat.completion");
    let content = first["choices"][0]["message"]["content"]
        .as_str()
        .expect("a text completion");
    assert!(!content.trim().is_empty(), "{first}");
    let completion_tokens = first["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=8).contains(&completion_tokens), "{first}");
    assert!(first["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    // temperature 0 is deterministic, also for requests decoded together in one batch;
    // later tests rely on that.
    let base_url = llama.base_url();
    let (second, third) = tokio::join!(chat(&client, &base_url), chat(&client, &base_url));
    assert_eq!(second["choices"][0]["message"]["content"], content);
    assert_eq!(third["choices"][0]["message"]["content"], content);
    eprintln!(
        "llama startup {startup:?}, total {:?}, completion {content:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sluice_process_runs_the_binary_and_collects_its_exit() {
    // `--help` exits 0 whatever the subcommands grow into.
    let mut sluice = SluiceProcess::spawn(["--help"], [("SLUICE__KAFKA__GROUP_ID", "g")]);
    assert!(sluice.pid() > 0);
    let status = sluice.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}\n{}", sluice.logs());
    assert_eq!(sluice.try_exit_status(), Some(status));
    // Signalling an exited process is a no-op, not a failure.
    sluice.terminate();
    sluice.kill();
}

#[tokio::test]
async fn wait_for_http_ok_reports_an_unreachable_url() {
    let port = support::free_port();
    let result = support::wait_for_http_ok(
        &format!("http://127.0.0.1:{port}/healthz"),
        Duration::from_millis(300),
    )
    .await;
    let error = result.expect_err("nothing listens there");
    assert!(error.contains("did not answer 2xx"), "{error}");
}

#[tokio::test]
#[should_panic(expected = "sluice exited (exit status: 0) before")]
async fn sluice_process_wait_for_http_ok_fails_fast_when_the_process_exits() {
    let mut sluice = SluiceProcess::spawn(["--help"], std::iter::empty::<(&str, &str)>());
    let url = format!("http://127.0.0.1:{}/healthz", support::free_port());
    // Without exit detection this would wait the full 60 s and fail differently.
    sluice.wait_for_http_ok(&url, Duration::from_secs(60)).await;
}
