//! The operator tools against a real broker (tansu) and a real worker: `sluice dlq
//! inspect` lists dead letters the worker wrote, `sluice dlq replay` re-drives a filtered
//! subset with the original key, value and headers (or only counts them in a dry run),
//! a replayed valid request is answered `ok` under its own id, and `sluice lag` reports
//! a known backlog and committed position per partition, and a drain rate.

mod support;

use std::process::Output;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use support::{SluiceProcess, Tansu};

/// Longest any one `sluice` command may run in these tests.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A broker with fresh topics, and the environment that points sluice at them.
struct Setup {
    tansu: Tansu,
    request: String,
    reply: String,
    dlq: String,
    env: Vec<(String, String)>,
}

impl Setup {
    async fn start(request_partitions: i32) -> Setup {
        let tansu = Tansu::start();
        let (request, reply, dlq) = (
            support::unique_name("req"),
            support::unique_name("rep"),
            support::unique_name("dlq"),
        );
        tansu.create_topic(&request, request_partitions).await;
        tansu.create_topic(&reply, 1).await;
        tansu.create_topic(&dlq, 1).await;
        let mut env: Vec<(String, String)> = vec![
            ("SLUICE__KAFKA__BOOTSTRAP_SERVERS".into(), tansu.bootstrap()),
            ("SLUICE__KAFKA__REQUEST_TOPIC".into(), request.clone()),
            ("SLUICE__KAFKA__REPLY_TOPIC".into(), reply.clone()),
            ("SLUICE__KAFKA__DLQ_TOPIC".into(), dlq.clone()),
            (
                "SLUICE__KAFKA__GROUP_ID".into(),
                support::unique_name("grp"),
            ),
        ];
        for (key, value) in support::TEST_GROUP_PROPERTIES {
            let key = key.replace('.', "_").to_uppercase();
            env.push((format!("SLUICE__KAFKA__CLIENT__{key}"), value.to_string()));
        }
        Setup {
            tansu,
            request,
            reply,
            dlq,
            env,
        }
    }

    /// Starts the mock backend and a worker; both are killed when dropped.
    async fn start_worker(&self) -> (SluiceProcess, SluiceProcess) {
        let mock_port = support::free_port();
        let listen = format!("127.0.0.1:{mock_port}");
        let mut mock = SluiceProcess::spawn(
            [
                "mock-llm",
                "--listen",
                &listen,
                "--latency-ms",
                "5",
                "--per-token-ms",
                "0",
            ],
            Vec::<(String, String)>::new(),
        );
        mock.wait_for_http_ok(&format!("http://{listen}/healthz"), Duration::from_secs(20))
            .await;
        let admin_port = support::free_port();
        let mut env = self.env.clone();
        env.push(("SLUICE__BACKEND__URL".into(), format!("http://{listen}")));
        env.push((
            "SLUICE__WORKER__ADMIN_LISTEN".into(),
            format!("127.0.0.1:{admin_port}"),
        ));
        let mut worker = SluiceProcess::spawn(["worker"], env);
        worker
            .wait_for_http_ok(
                &format!("http://127.0.0.1:{admin_port}/healthz"),
                Duration::from_secs(30),
            )
            .await;
        (mock, worker)
    }

    /// Runs `sluice <args>` against this setup's broker and topics.
    async fn sluice(&self, args: &[&str]) -> Output {
        run_sluice(args, &self.env).await
    }

    /// Runs a command that must succeed; returns its stdout.
    async fn sluice_ok(&self, args: &[&str]) -> String {
        let output = self.sluice(args).await;
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(
            output.status.success(),
            "sluice {args:?}: {}\n{stdout}\n{stderr}",
            output.status
        );
        stdout
    }

    /// `dlq inspect --json <extra>`, one JSON value per line.
    async fn inspect(&self, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["dlq", "inspect", "--json"];
        args.extend_from_slice(extra);
        let stdout = self.sluice_ok(&args).await;
        stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn producer(&self) -> FutureProducer {
        self.tansu
            .producer_config()
            .create()
            .expect("creating a producer")
    }

    /// Every record of `topic`, read from the beginning to each partition's end.
    async fn read_to_end(&self, topic: &str) -> Vec<OwnedMessage> {
        let mut config = self.tansu.consumer_config(&support::unique_name("read"));
        config.set("enable.partition.eof", "true");
        let consumer: BaseConsumer = config.create().unwrap();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .unwrap();
            let partitions = metadata.topics()[0].partitions().len();
            let mut assignment = TopicPartitionList::new();
            for p in 0..partitions as i32 {
                assignment
                    .add_partition_offset(&topic, p, Offset::Beginning)
                    .unwrap();
            }
            consumer.assign(&assignment).unwrap();
            let (mut records, mut ended) = (Vec::new(), 0);
            let deadline = Instant::now() + Duration::from_secs(15);
            while ended < partitions {
                assert!(Instant::now() < deadline, "{topic} did not reach its end");
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => records.push(m.detach()),
                    Some(Err(KafkaError::PartitionEOF(_))) => ended += 1,
                    Some(Err(e)) => panic!("reading {topic}: {e}"),
                    None => {}
                }
            }
            records
        })
        .await
        .unwrap()
    }
}

/// Runs `sluice <args>` to completion with only `env` configuring it; panics if it takes
/// over [`COMMAND_TIMEOUT`].
async fn run_sluice(args: &[&str], env: &[(String, String)]) -> Output {
    let mut command = tokio::process::Command::new(SluiceProcess::BIN);
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("SLUICE__") || name.starts_with("OTEL_") {
            command.env_remove(&key);
        }
    }
    command
        .args(args)
        .envs(env.iter().cloned())
        .kill_on_drop(true);
    tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("sluice {args:?} ran over {COMMAND_TIMEOUT:?}"))
        .expect("running the sluice binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn headers_of(message: &OwnedMessage) -> Vec<(String, String)> {
    use rdkafka::message::Headers;
    message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), text(h.value.unwrap_or_default())))
                .collect()
        })
        .unwrap_or_default()
}

fn request_value(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"v": 1, "id": id,
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}}))
    .unwrap()
}

const POISON: [&[u8]; 3] = [
    b"not json at all",
    br#"{"v":2,"id":"x","body":{}}"#,
    b"\xff\xfe\x00",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_counted_and_replayed_selectively() {
    let setup = Setup::start(2).await;
    let out = support::unique_name("out");
    setup.tansu.create_topic(&out, 1).await;
    let (_mock, _worker) = setup.start_worker().await;
    let producer = setup.producer();
    for (i, value) in POISON.iter().enumerate() {
        let headers = OwnedHeaders::new().insert(Header {
            key: "origin",
            value: Some("test"),
        });
        let key = format!("poison-{i}");
        let record = FutureRecord::to(&setup.request)
            .key(&key)
            .payload(*value)
            .headers(headers);
        producer.send(record, Duration::from_secs(5)).await.unwrap();
    }

    // The worker dead-letters all three; inspect lists them with their reasons.
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let listed = setup.inspect(&[]).await;
        if listed.len() >= POISON.len() || Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(listed.len(), POISON.len(), "{listed:#?}");
    for record in &listed {
        let key = record["key"].as_str().unwrap();
        let i: usize = key.trim_start_matches("poison-").parse().unwrap();
        let reason = record["reason"].as_str().unwrap();
        let expected = [
            "not valid JSON",
            "unsupported contract version 2",
            "not valid JSON",
        ][i];
        assert!(reason.contains(expected), "{key}: {reason}");
        assert_eq!(record["class"], "decode");
        assert_eq!(record["attempts"], 0);
        assert_eq!(record["topic"], setup.dlq.as_str());
        assert_eq!(record["source"]["topic"], setup.request.as_str());
        assert!(record["source"]["offset"].is_i64());
        assert!(record["worker"].as_str().is_some_and(|w| !w.is_empty()));
        assert!(record["at"].as_str().is_some_and(|at| at.ends_with('Z')));
        assert_eq!(
            record["headers"],
            json!([["origin", "test"]]),
            "only the request's headers"
        );
        assert_eq!(record["value_bytes"], POISON[i].len());
        let preview = [
            "not json at all",
            r#"{"v":2,"id":"x","body":{}}"#,
            "\\xff\\xfe\\0",
        ][i];
        assert_eq!(
            record["value_preview"], preview,
            "binary is escaped, never raw"
        );
        assert_eq!(record["id"], if i == 1 { json!("x") } else { Value::Null });
    }
    assert_eq!(setup.inspect(&["--reason", "VERSION 2"]).await.len(), 1);
    assert_eq!(setup.inspect(&["--limit", "2"]).await.len(), 2);
    assert_eq!(
        setup
            .inspect(&["--since", "2999-01-01T00:00:00Z"])
            .await
            .len(),
        0
    );
    let text_out = setup.sluice_ok(&["dlq", "inspect"]).await;
    assert_eq!(text_out.matches("class=decode").count(), 3, "{text_out}");

    // A dry run counts them by reason and writes nothing.
    let dry = setup
        .sluice_ok(&["dlq", "replay", "--dry-run", "--to", &out, "--json"])
        .await;
    let dry: Value = serde_json::from_str(dry.trim()).unwrap();
    assert_eq!(
        (dry["matched"].as_u64(), dry["replayed"].as_u64()),
        (Some(3), Some(0)),
        "{dry}"
    );
    let by_reason = dry["by_reason"].as_object().unwrap();
    assert_eq!(
        by_reason.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
        3
    );
    assert_eq!(by_reason.len(), 2, "two JSON errors share a reason: {dry}");
    assert!(setup.read_to_end(&out).await.is_empty(), "a dry run wrote");
    assert_eq!(setup.read_to_end(&setup.request).await.len(), 3);
    let dry_text = setup.sluice_ok(&["dlq", "replay", "--dry-run"]).await;
    assert!(
        dry_text.starts_with("dry run: 3 of 3 dead letters"),
        "{dry_text}"
    );

    // A filtered replay writes the originals, marked, without the error headers.
    let summary = setup
        .sluice_ok(&[
            "dlq",
            "replay",
            "--reason",
            "not valid json",
            "--to",
            &out,
            "--rate",
            "20/s",
            "--json",
        ])
        .await;
    let summary: Value = serde_json::from_str(summary.trim()).unwrap();
    assert_eq!(summary["matched"], 2, "{summary}");
    assert_eq!(summary["replayed"], 2, "{summary}");
    assert_eq!(summary["skipped"], 1, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    let replayed = setup.read_to_end(&out).await;
    assert_eq!(replayed.len(), 2);
    for message in &replayed {
        let key = text(message.key().unwrap());
        let i: usize = key.trim_start_matches("poison-").parse().unwrap();
        assert!(i == 0 || i == 2, "{key} does not match the filter");
        assert_eq!(
            message.payload().unwrap_or_default(),
            POISON[i],
            "original value"
        );
        let source = listed.iter().find(|r| r["key"] == key.as_str()).unwrap();
        let from = format!("{}/0/{}", setup.dlq, source["offset"]);
        assert_eq!(
            headers_of(message),
            vec![
                ("origin".to_string(), "test".to_string()),
                ("sluice-replayed-from".to_string(), from)
            ],
            "original headers plus where it was replayed from, no error headers"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_valid_request_is_answered_ok_under_its_own_id() {
    let setup = Setup::start(1).await;
    let (_mock, _worker) = setup.start_worker().await;
    let producer = setup.producer();
    // Dead letters shaped as the worker writes them, for two valid requests that failed
    // for a reason that has since gone away.
    let ids = [support::unique_name("keep"), support::unique_name("other")];
    for id in &ids {
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "sluice-id",
                value: Some(id.as_str()),
            })
            .insert(Header {
                key: "origin",
                value: Some("test"),
            });
        for (key, value) in [
            ("sluice-error-reason", "backend unavailable"),
            ("sluice-error-class", "backend"),
            ("sluice-error-at", "2026-11-22T03:30:00.000Z"),
            ("sluice-error-attempts", "6"),
            ("sluice-worker", "old-worker"),
            ("sluice-source-topic", setup.request.as_str()),
            ("sluice-source-partition", "0"),
            ("sluice-source-offset", "17"),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let value = request_value(id);
        let record = FutureRecord::to(&setup.dlq)
            .key(id)
            .payload(&value)
            .headers(headers);
        producer.send(record, Duration::from_secs(5)).await.unwrap();
    }

    let summary = setup
        .sluice_ok(&["dlq", "replay", "--id", &ids[0], "--json"])
        .await;
    let summary: Value = serde_json::from_str(summary.trim()).unwrap();
    assert_eq!(
        (summary["replayed"].as_u64(), summary["skipped"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        summary["by_topic"],
        json!({ setup.request.clone(): 1 }),
        "back to its source"
    );

    // The worker answers it under the same id.
    let reply = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let replies = setup.read_to_end(&setup.reply).await;
            if let Some(reply) = replies.first() {
                break (
                    text(reply.key().unwrap()),
                    serde_json::from_slice::<Value>(reply.payload().unwrap()).unwrap(),
                    replies.len(),
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("a reply to the replayed request");
    assert_eq!(reply.0, ids[0], "reply keyed by the original id");
    assert_eq!(reply.1["id"], ids[0].as_str());
    assert_eq!(reply.1["status"], "ok", "{}", reply.1);
    assert_eq!(reply.2, 1, "only the selected id was replayed");
    let requests = setup.read_to_end(&setup.request).await;
    assert_eq!(requests.len(), 1);
    assert_eq!(
        headers_of(&requests[0]),
        vec![
            ("sluice-id".to_string(), ids[0].clone()),
            ("origin".to_string(), "test".to_string()),
            (
                "sluice-replayed-from".to_string(),
                format!("{}/0/0", setup.dlq)
            ),
        ]
    );
}

/// The group's committed offsets of `topic`, read with a consumer that never subscribes.
async fn committed(setup: &Setup, topic: &str, group: &str, partitions: i32) -> Vec<Option<i64>> {
    let consumer: BaseConsumer = setup.tansu.consumer_config(group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    tokio::task::spawn_blocking(move || {
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Commits `offsets` (partition, next offset to read) for `group`, as a worker would.
async fn commit(setup: &Setup, topic: &str, group: &str, offsets: &[(i32, i64)]) {
    let consumer: BaseConsumer = setup.tansu.consumer_config(group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*offset))
            .unwrap();
    }
    tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync).unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_reports_the_backlog_per_partition_and_the_drain_rate() {
    let setup = Setup::start(3).await;
    let group = support::unique_name("lag");
    // Batched writes: tansu's ListOffsets answer is wrong for them, its Fetch is right.
    let mut config = setup.tansu.producer_config();
    config.set("linger.ms", "20");
    let producer: FutureProducer = config.create().unwrap();
    let sends = [(0, 10), (1, 4)].into_iter().flat_map(|(partition, n)| {
        let producer = &producer;
        let topic = &setup.request;
        (0..n).map(move |i| async move {
            let key = format!("k{i}");
            let record = FutureRecord::to(topic)
                .partition(partition)
                .key(&key)
                .payload("v");
            producer.send(record, Duration::from_secs(5)).await.unwrap()
        })
    });
    futures::future::join_all(sends).await;
    commit(&setup, &setup.request, &group, &[(0, 3)]).await;

    let report = setup
        .sluice_ok(&["lag", "--group", &group, "--interval", "0", "--json"])
        .await;
    let report: Value = serde_json::from_str(report.trim()).unwrap();
    let request = setup.request.as_str();
    assert_eq!(
        report["partitions"],
        json!([
            {"topic": request, "partition": 0, "committed": 3, "end": 10, "lag": 7},
            {"topic": request, "partition": 1, "committed": null, "end": 4, "lag": 4},
            {"topic": request, "partition": 2, "committed": null, "end": 0, "lag": 0},
        ]),
        "{report}"
    );
    assert_eq!(report["total_lag"], 11);
    assert_eq!(report["group"], group.as_str());

    // Offsets committed between the two samples make the drain rate.
    let args = ["lag", "--group", &group, "--interval", "4s", "--json"];
    let lag = setup.sluice(&args);
    tokio::pin!(lag);
    let early = tokio::time::timeout(Duration::from_secs(2), &mut lag).await;
    assert!(early.is_err(), "lag finished before its interval was over");
    commit(&setup, &setup.request, &group, &[(0, 8), (1, 1)]).await;
    let output = lag.await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: Value = serde_json::from_str(text(&output.stdout).trim()).unwrap();
    let interval = report["interval_s"].as_f64().unwrap();
    assert!((4.0..6.0).contains(&interval), "{report}");
    let drain = report["drain_rate_per_s"].as_f64().unwrap();
    assert!(
        (drain * interval - 6.0).abs() < 1e-6,
        "6 offsets committed: {report}"
    );
    assert_eq!(report["incoming_rate_per_s"], 0.0);
    assert_eq!(report["total_lag"], 2 + 3);
    let eta = report["time_to_drain_s"].as_f64().unwrap();
    assert!((eta - 5.0 / drain).abs() < 1e-6, "{report}");

    // Reading the group's position never moved it.
    assert_eq!(
        committed(&setup, &setup.request, &group, 3).await,
        [Some(8), Some(1), None]
    );
}

/// The same end-offset method on a broker with Kafka's ListOffsets and Fetch semantics:
/// librdkafka's mock cluster (where `fetch_watermarks` is right and `offsets_for_times`
/// past the last record yields no offset at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_right_on_the_librdkafka_mock_cluster_too() {
    let mock = rdkafka::mocking::MockCluster::new(1).expect("starting the mock cluster");
    let topic = support::unique_name("req");
    let group = support::unique_name("lag");
    mock.create_topic(&topic, 2, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let sends = (0..6).map(|i| {
        let (producer, topic) = (&producer, &topic);
        async move {
            let key = format!("k{i}");
            let record = FutureRecord::to(topic)
                .partition(i % 2)
                .key(&key)
                .payload("v");
            producer.send(record, Duration::from_secs(5)).await.unwrap()
        }
    });
    futures::future::join_all(sends).await;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(1))
        .unwrap();
    tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync).unwrap())
        .await
        .unwrap();

    let env = [
        ("SLUICE__KAFKA__BOOTSTRAP_SERVERS".to_string(), bootstrap),
        ("SLUICE__KAFKA__REQUEST_TOPIC".to_string(), topic.clone()),
    ];
    let args = ["lag", "--group", &group, "--interval", "0", "--json"];
    let output = run_sluice(&args, &env).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: Value = serde_json::from_str(text(&output.stdout).trim()).unwrap();
    assert_eq!(
        report["partitions"],
        json!([
            {"topic": topic, "partition": 0, "committed": 1, "end": 3, "lag": 2},
            {"topic": topic, "partition": 1, "committed": null, "end": 3, "lag": 3},
        ]),
        "{report}"
    );
}
