//! sluice deployed as separate processes for end-to-end tests: fresh topics, the mock
//! backend, the ingress and workers, their `/metrics` read back, and readers that collect
//! what reached the reply and dead-letter topics. Everything here takes bootstrap
//! servers, so it works against tansu and against the in-process mock cluster alike.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;
use serde_json::{json, Value};

use super::process::{free_port, SluiceProcess};
use super::tansu::{consumer_config, unique_name, Tansu, TEST_GROUP_PROPERTIES};

/// A test's own request, reply and dead-letter topics.
#[derive(Debug, Clone)]
pub struct Topics {
    pub request: String,
    pub reply: String,
    pub dlq: String,
}

impl Topics {
    /// Names no other test uses.
    pub fn fresh() -> Topics {
        Topics {
            request: unique_name("req"),
            reply: unique_name("rep"),
            dlq: unique_name("dlq"),
        }
    }

    /// Creates them on tansu: 4 request and reply partitions, 1 dead-letter partition.
    pub async fn create_on(&self, tansu: &Tansu) {
        tansu.create_topic(&self.request, 4).await;
        tansu.create_topic(&self.reply, 4).await;
        tansu.create_topic(&self.dlq, 1).await;
    }
}

/// The environment every sluice role of one deployment shares: brokers, topics, a fresh
/// worker group, the backend, and [`TEST_GROUP_PROPERTIES`] for fast rebalances.
pub fn sluice_env(bootstrap: &str, topics: &Topics, backend_url: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("SLUICE__KAFKA__BOOTSTRAP_SERVERS".into(), bootstrap.into()),
        (
            "SLUICE__KAFKA__REQUEST_TOPIC".into(),
            topics.request.clone(),
        ),
        ("SLUICE__KAFKA__REPLY_TOPIC".into(), topics.reply.clone()),
        ("SLUICE__KAFKA__DLQ_TOPIC".into(), topics.dlq.clone()),
        ("SLUICE__KAFKA__GROUP_ID".into(), unique_name("grp")),
        ("SLUICE__BACKEND__URL".into(), backend_url.into()),
    ];
    for (key, value) in TEST_GROUP_PROPERTIES {
        env.push((
            format!(
                "SLUICE__KAFKA__CLIENT__{}",
                key.replace('.', "_").to_uppercase()
            ),
            value.to_string(),
        ));
    }
    env
}

/// `env` with `overrides` set (replacing earlier values of the same variables).
pub fn with_env(env: &[(String, String)], overrides: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = env
        .iter()
        .filter(|(key, _)| !overrides.iter().any(|(k, _)| k == key))
        .cloned()
        .collect();
    env.extend(
        overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    env
}

// ---------------------------------------------------------------------------------------
// The roles
// ---------------------------------------------------------------------------------------

/// `sluice mock-llm` on 127.0.0.1, killed on drop.
pub struct MockLlm {
    pub process: SluiceProcess,
    pub port: u16,
}

impl MockLlm {
    /// On a free port; `slots` requests at once, each `latency_ms` long (no per-token time).
    pub async fn start(slots: u32, latency_ms: u32) -> MockLlm {
        MockLlm::start_on(free_port(), slots, latency_ms).await
    }

    /// On `port` (to replace a stopped one at the same address); waits for `/healthz`.
    pub async fn start_on(port: u16, slots: u32, latency_ms: u32) -> MockLlm {
        MockLlm::start_paced(port, slots, latency_ms, 0).await
    }

    /// Like [`MockLlm::start_on`], each token taking `per_token_ms` more.
    pub async fn start_paced(port: u16, slots: u32, latency_ms: u32, per_token_ms: u32) -> MockLlm {
        MockLlm::start_with(port, slots, latency_ms, per_token_ms, &[]).await
    }

    /// Like [`MockLlm::start_paced`], with more `mock-llm` flags.
    pub async fn start_with(
        port: u16,
        slots: u32,
        latency_ms: u32,
        per_token_ms: u32,
        flags: &[&str],
    ) -> MockLlm {
        let (listen, slots, latency_ms, per_token_ms) = (
            format!("127.0.0.1:{port}"),
            slots.to_string(),
            latency_ms.to_string(),
            per_token_ms.to_string(),
        );
        let mut args = vec![
            "mock-llm",
            "--listen",
            &listen,
            "--slots",
            &slots,
            "--latency-ms",
            &latency_ms,
            "--per-token-ms",
            &per_token_ms,
        ];
        args.extend_from_slice(flags);
        let mut process = SluiceProcess::spawn(args, Vec::<(String, String)>::new());
        process
            .wait_for_http_ok(
                &format!("http://127.0.0.1:{port}/healthz"),
                Duration::from_secs(20),
            )
            .await;
        MockLlm { process, port }
    }

    /// What `SLUICE__BACKEND__URL` expects.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `sluice_mock_requests_total{outcome}` now.
    pub async fn requests(&self, outcome: &str) -> u64 {
        scrape(&format!("{}/metrics", self.url()))
            .await
            .value("sluice_mock_requests_total", &[("outcome", outcome)]) as u64
    }
}

/// `sluice worker` with its admin routes on a free port, killed on drop.
pub struct Worker {
    pub process: SluiceProcess,
    /// `http://127.0.0.1:<admin port>`.
    pub admin: String,
}

impl Worker {
    /// Starts a worker and waits until its admin routes answer (not until it joined the
    /// group: see [`Worker::wait_ready`]).
    pub async fn start(env: &[(String, String)]) -> Worker {
        let admin_port = free_port();
        let mut worker_env = env.to_vec();
        worker_env.push((
            "SLUICE__WORKER__ADMIN_LISTEN".into(),
            format!("127.0.0.1:{admin_port}"),
        ));
        let mut process = SluiceProcess::spawn(["worker"], worker_env);
        let admin = format!("http://127.0.0.1:{admin_port}");
        process
            .wait_for_http_ok(&format!("{admin}/healthz"), Duration::from_secs(30))
            .await;
        Worker { process, admin }
    }

    /// Waits until `/readyz` answers 200: the worker joined its group.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let url = format!("{}/readyz", self.admin);
        self.process.wait_for_http_ok(&url, timeout).await;
    }

    pub async fn metrics(&self) -> Metrics {
        scrape(&format!("{}/metrics", self.admin)).await
    }
}

/// `sluice dev` (embedded broker, mock backend, ingress, worker) on free ports, killed
/// on drop; ready once both roles answer `/readyz`.
pub struct Dev {
    pub process: SluiceProcess,
    /// `http://127.0.0.1:<ingress port>`.
    pub url: String,
}

impl Dev {
    pub async fn start(env: &[(&str, &str)]) -> Dev {
        let (port, kafka_port, admin_port) = (free_port(), free_port(), free_port());
        let mut process = SluiceProcess::spawn(
            [
                "dev",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--kafka-listen",
                &format!("127.0.0.1:{kafka_port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin_port}"),
            ],
            env.iter().copied(),
        );
        let url = format!("http://127.0.0.1:{port}");
        for ready in [
            format!("{url}/readyz"),
            format!("http://127.0.0.1:{admin_port}/readyz"),
        ] {
            process
                .wait_for_http_ok(&ready, Duration::from_secs(60))
                .await;
        }
        Dev { process, url }
    }
}

/// `sluice ingress` on a free port, killed on drop.
pub struct Ingress {
    pub process: SluiceProcess,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Ingress {
    /// Starts the ingress and waits until `/readyz` answers 200 (Kafka reachable, reply
    /// topic being read).
    pub async fn start(env: &[(String, String)]) -> Ingress {
        let port = free_port();
        let mut ingress_env = env.to_vec();
        ingress_env.push((
            "SLUICE__INGRESS__LISTEN".into(),
            format!("127.0.0.1:{port}"),
        ));
        let mut process = SluiceProcess::spawn(["ingress"], ingress_env);
        let url = format!("http://127.0.0.1:{port}");
        process
            .wait_for_http_ok(&format!("{url}/readyz"), Duration::from_secs(30))
            .await;
        Ingress { process, url }
    }

    pub async fn metrics(&self) -> Metrics {
        scrape(&format!("{}/metrics", self.url)).await
    }
}

// ---------------------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------------------

/// One scrape of a `/metrics` endpoint.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
}

impl Metrics {
    /// The sample `name` whose labels include all of `labels`, if present.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' '))
            .find_map(|(series, value)| {
                let (series_name, series_labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                let matches = series_name == name
                    && labels.iter().all(|(k, v)| {
                        series_labels
                            .split(',')
                            .any(|pair| pair == format!("{k}=\"{v}\""))
                    });
                matches.then(|| value.parse().ok()).flatten()
            })
    }

    /// Like [`Metrics::get`]; panics with the whole scrape when the sample is missing.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{}", self.text))
    }
}

/// `GET url`; panics unless it answers 200.
pub async fn scrape(url: &str) -> Metrics {
    let response = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("scraping {url}: {e}"));
    assert_eq!(response.status(), 200, "scraping {url}");
    Metrics {
        text: response.text().await.expect("a metrics body"),
    }
}

// ---------------------------------------------------------------------------------------
// Reading topics back
// ---------------------------------------------------------------------------------------

/// Reads `topic` from its start with a fresh group, handing each message to
/// `on_message`, which answers whether everything expected has arrived. Returns true
/// once it has and then nothing new came for `quiet` (so late extras are seen too),
/// false if `timeout` passed first. Runs on a blocking thread.
pub async fn read_topic(
    config: ClientConfig,
    topic: &str,
    timeout: Duration,
    quiet: Duration,
    mut on_message: impl FnMut(OwnedMessage) -> bool + Send + 'static,
) -> bool {
    let mut config = config;
    config.set("group.id", unique_name("check"));
    let consumer: BaseConsumer = config.create().expect("creating a checking consumer");
    consumer.subscribe(&[topic]).expect("subscribing");
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + timeout;
        let mut satisfied = false;
        let mut last = Instant::now();
        loop {
            if satisfied && last.elapsed() >= quiet {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    satisfied = on_message(message.detach());
                    last = Instant::now();
                }
                // A broker away (fault-injection tests take one down) is not the topic's
                // fault: its partitions may live elsewhere.
                Some(Err(rdkafka::error::KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
                    | rdkafka::types::RDKafkaErrorCode::AllBrokersDown,
                ))) => {}
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
    })
    .await
    .expect("the topic reader does not panic")
}

/// The value of the last header named `key` (later ones win, as in Kafka's
/// `Headers.lastHeader`: a dead letter's own headers follow the original ones), lossily
/// as text.
pub fn header(message: &OwnedMessage, key: &str) -> Option<String> {
    message.headers().and_then(|h| {
        h.iter()
            .filter(|h| h.key == key)
            .last()
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

/// Final replies read from a reply topic: every copy per id, in topic order.
#[derive(Debug, Default)]
pub struct Replies {
    pub by_id: HashMap<String, Vec<Value>>,
}

impl Replies {
    /// Copies beyond the first, over all ids.
    pub fn duplicates(&self) -> usize {
        self.by_id.values().map(|r| r.len() - 1).sum()
    }

    /// Ids of `ids` without a final reply.
    pub fn missing<'a>(&self, ids: &'a [String]) -> Vec<&'a String> {
        ids.iter()
            .filter(|id| !self.by_id.contains_key(*id))
            .collect()
    }

    /// The first final reply for `id`.
    pub fn first(&self, id: &str) -> Option<&Value> {
        self.by_id.get(id).and_then(|copies| copies.first())
    }
}

/// Reads the final replies on `topic` until every one of `ids` has one and `quiet` passed
/// without another, or `timeout`. Checks every message is a keyed `final` reply. Does
/// not fail on missing replies: callers count them ([`Replies::missing`]).
pub async fn collect_replies(
    config: ClientConfig,
    topic: &str,
    ids: &[String],
    timeout: Duration,
    quiet: Duration,
) -> Replies {
    let mut waiting: HashSet<String> = ids.iter().cloned().collect();
    let collected = std::sync::Arc::new(std::sync::Mutex::new(Replies::default()));
    let sink = collected.clone();
    read_topic(config, topic, timeout, quiet, move |message| {
        assert_eq!(
            header(&message, "sluice-kind").as_deref(),
            Some("final"),
            "only final replies are written"
        );
        let reply: Value = serde_json::from_slice(message.payload().expect("a reply has a value"))
            .expect("a reply is JSON");
        let id = reply["id"].as_str().expect("a reply has an id").to_string();
        assert_eq!(
            message.key(),
            Some(id.as_bytes()),
            "replies are keyed by id"
        );
        waiting.remove(&id);
        sink.lock()
            .expect("not poisoned")
            .by_id
            .entry(id)
            .or_default()
            .push(reply);
        waiting.is_empty()
    })
    .await;
    let mut replies = collected.lock().expect("not poisoned");
    std::mem::take(&mut *replies)
}

// ---------------------------------------------------------------------------------------
// The usual deployment on tansu
// ---------------------------------------------------------------------------------------

/// tansu, the mock backend, an ingress and workers, on fresh topics. Dropped, the
/// processes are killed (the broker last).
pub struct Pipeline {
    pub topics: Topics,
    pub mock: MockLlm,
    pub ingress: Ingress,
    pub workers: Vec<Worker>,
    /// What every role was started with; start more workers with it.
    pub env: Vec<(String, String)>,
    pub http: reqwest::Client,
    pub tansu: Tansu,
}

impl Pipeline {
    /// One worker; `slots` and `latency_ms` shape the mock backend's capacity.
    pub async fn start(slots: u32, latency_ms: u32) -> Pipeline {
        Pipeline::start_with(slots, latency_ms, 1, &[]).await
    }

    /// `workers` workers, every role with `overrides` added to its environment.
    pub async fn start_with(
        slots: u32,
        latency_ms: u32,
        workers: usize,
        overrides: &[(&str, &str)],
    ) -> Pipeline {
        let tansu = Tansu::start();
        let topics = Topics::fresh();
        topics.create_on(&tansu).await;
        let mock = MockLlm::start(slots, latency_ms).await;
        // A loaded test machine must not turn slow acknowledgements into 503s.
        let mut base = vec![("SLUICE__INGRESS__ENQUEUE_TIMEOUT_MS", "5000")];
        base.extend_from_slice(overrides);
        let env = with_env(&sluice_env(&tansu.bootstrap(), &topics, &mock.url()), &base);
        let ingress = Ingress::start(&env).await;
        let mut started = Vec::new();
        for _ in 0..workers {
            started.push(Worker::start(&env).await);
        }
        Pipeline {
            topics,
            mock,
            ingress,
            workers: started,
            env,
            http: reqwest::Client::new(),
            tansu,
        }
    }

    /// Submits `n` requests through the ingress, 32 at a time; every one must get 202.
    pub async fn submit(&self, n: usize) -> Vec<String> {
        submit(&self.http, &self.ingress.url, n).await
    }

    /// Reads the reply topic until every id has a final reply; panics naming how many
    /// are missing after `timeout`. Returns all copies per id (duplicates included).
    pub async fn await_replies(
        &self,
        ids: &[String],
        timeout: Duration,
    ) -> HashMap<String, Vec<Value>> {
        let replies = self.collect_replies(ids, timeout, Duration::ZERO).await;
        let missing = replies.missing(ids);
        assert!(
            missing.is_empty(),
            "only {} of {} ids got a final reply",
            ids.len() - missing.len(),
            ids.len()
        );
        replies.by_id
    }

    /// [`collect_replies`] on this pipeline's reply topic.
    pub async fn collect_replies(
        &self,
        ids: &[String],
        timeout: Duration,
        quiet: Duration,
    ) -> Replies {
        collect_replies(
            reader_config(&self.tansu.bootstrap()),
            &self.topics.reply,
            ids,
            timeout,
            quiet,
        )
        .await
    }

    /// How many of `ids` have a final reply on the topic, read until it was quiet for 3 s.
    pub async fn answered(&self, ids: &[String]) -> usize {
        let wanted: HashSet<String> = ids.iter().cloned().collect();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
        let sink = seen.clone();
        // Satisfied by any message: reading ends once the topic was quiet for 3 s.
        let quiet = read_topic(
            reader_config(&self.tansu.bootstrap()),
            &self.topics.reply,
            Duration::from_secs(120),
            Duration::from_secs(3),
            move |message| {
                let reply: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
                if let Some(id) = reply["id"].as_str().filter(|id| wanted.contains(*id)) {
                    sink.lock().expect("not poisoned").insert(id.to_string());
                }
                true
            },
        )
        .await;
        assert!(quiet, "the reply topic never went quiet");
        let count = seen.lock().expect("not poisoned").len();
        count
    }

    /// `GET /v1/requests/{id}`: the status code and the JSON body.
    pub async fn get(&self, id: &str) -> (u16, Value) {
        get_request(&self.http, &self.ingress.url, id).await
    }
}

/// Submits `n` requests to the ingress at `base`, 32 at a time; every one must get 202.
/// Request `i` asks for 4 tokens with prompt `q<i>` and carries `{"i": i}` as metadata.
pub async fn submit(http: &reqwest::Client, base: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = futures::stream::iter(0..n)
        .map(|i| async move {
            let response = http
                .post(format!("{base}/v1/requests"))
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

/// `GET {base}/v1/requests/{id}`: the status code and the JSON body.
pub async fn get_request(http: &reqwest::Client, base: &str, id: &str) -> (u16, Value) {
    let response = http
        .get(format!("{base}/v1/requests/{id}"))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// A version-1 request value as a producer writes it straight to the request topic.
pub fn request_value(id: &str, content: &str, extra: Value) -> Vec<u8> {
    let mut request = json!({
        "v": 1,
        "id": id,
        "body": {"model": "mock", "messages": [{"role": "user", "content": content}], "max_tokens": 4},
    });
    if let (Some(target), Value::Object(fields)) = (request.as_object_mut(), extra) {
        target.extend(fields);
    }
    serde_json::to_vec(&request).expect("JSON values serialize")
}

/// Writes `n` requests (ids `<prefix>-…`) to `topic` straight, all sends in flight
/// together, and waits for every acknowledgement; returns their ids.
pub async fn produce_requests(bootstrap: &str, topic: &str, n: usize, prefix: &str) -> Vec<String> {
    produce_requests_with(bootstrap, topic, n, prefix, json!({})).await
}

/// Like [`produce_requests`], each request with the fields of `extra` added (a tenant,
/// a deadline, ...).
pub async fn produce_requests_with(
    bootstrap: &str,
    topic: &str,
    n: usize,
    prefix: &str,
    extra: Value,
) -> Vec<String> {
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "10000")
        .create()
        .expect("a producer");
    let mut ids = Vec::new();
    let mut acks = Vec::new();
    for _ in 0..n {
        let id = unique_name(prefix);
        let value = request_value(&id, "hello", extra.clone());
        let record = rdkafka::producer::FutureRecord::to(topic)
            .key(&id)
            .payload(&value);
        acks.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("room in the queue"),
        );
        ids.push(id);
    }
    for ack in acks {
        ack.await
            .expect("not cancelled")
            .expect("the broker takes the request");
    }
    ids
}

/// A consumer config for [`read_topic`] (which sets a fresh group itself).
pub fn reader_config(bootstrap: &str) -> ClientConfig {
    consumer_config(bootstrap, "replaced-by-read_topic")
}
