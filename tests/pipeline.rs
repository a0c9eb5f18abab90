//! The whole pipeline as separate processes against a real broker (tansu): requests
//! through the ingress, a worker, the mock backend, replies read back through the reply
//! topic and `GET /v1/requests/{id}`; a worker killed mid-run; poison input.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use serde_json::{json, Value};
use support::{SluiceProcess, Tansu};

/// The peers of one test: broker, mock backend, ingress and (restartable) worker.
struct Pipeline {
    tansu: Tansu,
    topics: Topics,
    mock: SluiceProcess,
    _ingress: SluiceProcess,
    worker: SluiceProcess,
    ingress_url: String,
    env: Vec<(String, String)>,
    http: reqwest::Client,
}

struct Topics {
    request: String,
    reply: String,
    dlq: String,
}

impl Pipeline {
    /// `slots` and `latency_ms` shape the mock backend's capacity.
    async fn start(slots: u32, latency_ms: u32) -> Pipeline {
        let tansu = Tansu::start();
        let topics = Topics {
            request: support::unique_name("req"),
            reply: support::unique_name("rep"),
            dlq: support::unique_name("dlq"),
        };
        tansu.create_topic(&topics.request, 4).await;
        tansu.create_topic(&topics.reply, 4).await;
        tansu.create_topic(&topics.dlq, 1).await;

        let mock_port = support::free_port();
        let mut mock = SluiceProcess::spawn(
            [
                "mock-llm",
                "--listen",
                &format!("127.0.0.1:{mock_port}"),
                "--slots",
                &slots.to_string(),
                "--latency-ms",
                &latency_ms.to_string(),
                "--per-token-ms",
                "0",
            ],
            Vec::<(String, String)>::new(),
        );
        mock.wait_for_http_ok(
            &format!("http://127.0.0.1:{mock_port}/healthz"),
            Duration::from_secs(20),
        )
        .await;

        let mut env: Vec<(String, String)> = vec![
            ("SLUICE__KAFKA__BOOTSTRAP_SERVERS".into(), tansu.bootstrap()),
            (
                "SLUICE__KAFKA__REQUEST_TOPIC".into(),
                topics.request.clone(),
            ),
            ("SLUICE__KAFKA__REPLY_TOPIC".into(), topics.reply.clone()),
            ("SLUICE__KAFKA__DLQ_TOPIC".into(), topics.dlq.clone()),
            (
                "SLUICE__KAFKA__GROUP_ID".into(),
                support::unique_name("grp"),
            ),
            (
                "SLUICE__BACKEND__URL".into(),
                format!("http://127.0.0.1:{mock_port}"),
            ),
            ("SLUICE__INGRESS__ENQUEUE_TIMEOUT_MS".into(), "5000".into()),
        ];
        for (key, value) in support::TEST_GROUP_PROPERTIES {
            env.push((
                format!(
                    "SLUICE__KAFKA__CLIENT__{}",
                    key.replace('.', "_").to_uppercase()
                ),
                value.to_string(),
            ));
        }
        let ingress_port = support::free_port();
        let mut ingress_env = env.clone();
        ingress_env.push((
            "SLUICE__INGRESS__LISTEN".into(),
            format!("127.0.0.1:{ingress_port}"),
        ));
        let mut ingress = SluiceProcess::spawn(["ingress"], ingress_env);
        let ingress_url = format!("http://127.0.0.1:{ingress_port}");
        ingress
            .wait_for_http_ok(&format!("{ingress_url}/readyz"), Duration::from_secs(30))
            .await;
        let worker = spawn_worker(&env).await;
        Pipeline {
            tansu,
            topics,
            mock,
            _ingress: ingress,
            worker,
            ingress_url,
            env,
            http: reqwest::Client::new(),
        }
    }

    /// Submits `n` requests through the ingress, 32 at a time; every one must get 202.
    async fn submit(&self, n: usize) -> Vec<String> {
        let ids: Vec<String> = futures::stream::iter(0..n)
            .map(|i| async move {
                let response = self
                    .http
                    .post(format!("{}/v1/requests", self.ingress_url))
                    .json(&json!({
                        "body": {"model": "mock", "messages": [{"role": "user", "content": format!("q{i}")}], "max_tokens": 4},
                        "metadata": {"i": i},
                    }))
                    .send()
                    .await
                    .expect("the ingress answers");
                assert_eq!(response.status(), 202, "submission {i}");
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["status"], "queued");
                body["id"].as_str().unwrap().to_string()
            })
            .buffer_unordered(32)
            .collect()
            .await;
        assert_eq!(
            ids.iter().collect::<HashSet<_>>().len(),
            n,
            "ids are unique"
        );
        ids
    }

    /// Reads the reply topic from the start until every id in `ids` has a final reply.
    /// Returns all final replies seen per id (duplicates included).
    async fn await_replies(
        &self,
        ids: &[String],
        timeout: Duration,
    ) -> HashMap<String, Vec<Value>> {
        let consumer: BaseConsumer = self
            .tansu
            .consumer_config(&support::unique_name("check"))
            .create()
            .unwrap();
        consumer.subscribe(&[&self.topics.reply]).unwrap();
        let wanted: HashSet<String> = ids.iter().cloned().collect();
        tokio::task::spawn_blocking(move || {
            let mut replies: HashMap<String, Vec<Value>> = HashMap::new();
            let deadline = Instant::now() + timeout;
            while wanted.iter().any(|id| !replies.contains_key(id)) {
                assert!(
                    Instant::now() < deadline,
                    "only {} of {} ids got a final reply",
                    wanted.iter().filter(|id| replies.contains_key(*id)).count(),
                    wanted.len()
                );
                let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let message = message.expect("reading the reply topic");
                let kind = message.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "sluice-kind")
                        .and_then(|h| h.value.map(<[u8]>::to_vec))
                });
                assert_eq!(kind.as_deref(), Some(&b"final"[..]));
                let reply: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
                let id = reply["id"].as_str().unwrap().to_string();
                assert_eq!(
                    message.key(),
                    Some(id.as_bytes()),
                    "replies are keyed by id"
                );
                replies.entry(id).or_default().push(reply);
            }
            replies
        })
        .await
        .unwrap()
    }

    /// How many of `ids` have a final reply on the topic now.
    async fn answered(&self, ids: &[String]) -> usize {
        let consumer: BaseConsumer = self
            .tansu
            .consumer_config(&support::unique_name("count"))
            .create()
            .unwrap();
        consumer.subscribe(&[&self.topics.reply]).unwrap();
        let wanted: HashSet<String> = ids.iter().cloned().collect();
        tokio::task::spawn_blocking(move || {
            let mut seen = HashSet::new();
            let mut idle_since = Instant::now();
            // Read until the topic has been quiet for a while (the worker is dead).
            while idle_since.elapsed() < Duration::from_secs(3) {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(message)) => {
                        let reply: Value =
                            serde_json::from_slice(message.payload().unwrap()).unwrap();
                        if let Some(id) = reply["id"].as_str().filter(|id| wanted.contains(*id)) {
                            seen.insert(id.to_string());
                        }
                        idle_since = Instant::now();
                    }
                    Some(Err(e)) => panic!("reading the reply topic: {e}"),
                    None => {}
                }
            }
            seen.len()
        })
        .await
        .unwrap()
    }

    async fn get(&self, id: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}/v1/requests/{id}", self.ingress_url))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

async fn spawn_worker(env: &[(String, String)]) -> SluiceProcess {
    let admin_port = support::free_port();
    let mut worker_env = env.to_vec();
    worker_env.push((
        "SLUICE__WORKER__ADMIN_LISTEN".into(),
        format!("127.0.0.1:{admin_port}"),
    ));
    let mut worker = SluiceProcess::spawn(["worker"], worker_env);
    worker
        .wait_for_http_ok(
            &format!("http://127.0.0.1:{admin_port}/healthz"),
            Duration::from_secs(30),
        )
        .await;
    worker
}

fn assert_all_ok(replies: &HashMap<String, Vec<Value>>, ids: &[String]) {
    for id in ids {
        let first = &replies[id][0];
        assert_eq!(first["status"], "ok", "{first}");
        assert_eq!(first["v"], 1);
        assert_eq!(first["body"]["object"], "chat.completion", "{first}");
        assert_eq!(first["usage"]["completion_tokens"], 4, "{first}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_each_get_one_ok_reply_readable_by_get() {
    let pipeline = Pipeline::start(64, 5).await;
    let ids = pipeline.submit(1000).await;
    let replies = pipeline.await_replies(&ids, Duration::from_secs(90)).await;
    assert_all_ok(&replies, &ids);
    let duplicates: usize = replies.values().map(|r| r.len() - 1).sum();
    assert_eq!(duplicates, 0, "no crash, so no duplicate replies");

    // The ingress has read the same replies: GET answers each with its reply.
    for id in &ids {
        let mut tries = 0;
        loop {
            let (status, body) = pipeline.get(id).await;
            assert_eq!(status, 200, "{body}");
            if body["status"] == "ok" {
                assert_eq!(body["reply"]["id"], id.as_str());
                assert!(
                    body["reply"]["metadata"]["i"].is_u64(),
                    "metadata is echoed: {body}"
                );
                break;
            }
            tries += 1;
            assert!(tries < 100, "GET {id} still {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (status, body) = pipeline.get("never-submitted").await;
    assert_eq!(status, 404, "{body}");
    drop(pipeline.mock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_nothing() {
    // 16 slots x 40 ms: the backlog takes the worker about 2.5 s to drain.
    let mut pipeline = Pipeline::start(16, 40).await;
    let ids = pipeline.submit(1000).await;
    // Let the worker get part of the way, then kill it without warning.
    let some: Vec<String> = ids[..100].to_vec();
    pipeline.await_replies(&some, Duration::from_secs(60)).await;
    pipeline.worker.kill();
    let before_kill = pipeline.answered(&ids).await;
    assert!(
        before_kill < ids.len(),
        "the kill came after the worker had finished; the test proves nothing"
    );
    pipeline.worker.wait_exit(Duration::from_secs(10)).await;
    pipeline.worker = spawn_worker(&pipeline.env).await;

    let replies = pipeline.await_replies(&ids, Duration::from_secs(120)).await;
    assert_all_ok(&replies, &ids);
    let duplicates: usize = replies.values().map(|r| r.len() - 1).sum();
    eprintln!(
        "worker killed mid-run: {} ids, {before_kill} answered before the kill, \
         {duplicates} duplicate final replies (re-delivered)",
        ids.len()
    );
    // Duplicates carry the same id and an ok status; readers keep the first.
    for copies in replies.values() {
        assert!(copies.iter().all(|r| r["status"] == "ok"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_goes_to_the_dlq_while_valid_traffic_continues() {
    let pipeline = Pipeline::start(64, 5).await;
    let producer: FutureProducer = pipeline.tansu.producer_config().create().unwrap();
    let mut valid_ids = Vec::new();
    let poison: &[&[u8]] = &[
        b"not json at all",
        b"{\"v\":2,\"id\":\"x\",\"body\":{}}",
        b"\xff\xfe\x00",
    ];
    for i in 0..30 {
        if i % 10 == 5 {
            let value = poison[i / 10];
            let key = format!("poison-{i}");
            let headers = OwnedHeaders::new().insert(Header {
                key: "origin",
                value: Some("test"),
            });
            producer
                .send(
                    FutureRecord::to(&pipeline.topics.request)
                        .key(&key)
                        .payload(value)
                        .headers(headers),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            continue;
        }
        let id = format!("direct-{i}-{}", support::unique_name("r"));
        let request = json!({"v": 1, "id": id, "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}});
        producer
            .send(
                FutureRecord::to(&pipeline.topics.request)
                    .key(&id)
                    .payload(&serde_json::to_vec(&request).unwrap()),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        valid_ids.push(id);
    }
    let replies = pipeline
        .await_replies(&valid_ids, Duration::from_secs(60))
        .await;
    assert_all_ok(&replies, &valid_ids);

    let consumer: BaseConsumer = pipeline
        .tansu
        .consumer_config(&support::unique_name("dlq"))
        .create()
        .unwrap();
    consumer.subscribe(&[&pipeline.topics.dlq]).unwrap();
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dead.len() < poison.len() && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap().detach();
            dead.push(message);
        }
    }
    assert_eq!(
        dead.len(),
        poison.len(),
        "every malformed message is dead-lettered once"
    );
    for message in &dead {
        let header = |k: &str| {
            message.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == k)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let i: usize = key.trim_start_matches("poison-").parse().unwrap();
        assert_eq!(
            message.payload().unwrap(),
            poison[i / 10],
            "original value kept"
        );
        assert_eq!(
            header("origin").as_deref(),
            Some("test"),
            "original headers kept"
        );
        assert_eq!(header("sluice-error-class").as_deref(), Some("decode"));
        let reason = header("sluice-error-reason").unwrap();
        let expected = if i / 10 == 1 { "version 2" } else { "JSON" };
        assert!(reason.contains(expected), "{key}: {reason}");
        assert!(header("sluice-worker").is_some_and(|w| !w.is_empty()));
        assert!(header("sluice-error-at").is_some_and(|t| t.ends_with('Z')));
        assert_eq!(
            header("sluice-source-topic").as_deref(),
            Some(pipeline.topics.request.as_str())
        );
    }
    // The worker is still the same process: poison did not crash it.
    let mut worker = pipeline.worker;
    assert!(
        worker.try_exit_status().is_none(),
        "worker crashed:\n{}",
        worker.logs()
    );
}
