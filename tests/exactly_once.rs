//! `worker.exactly_once` against tansu: replies and consumed offsets go through Kafka
//! transactions. tansu runs the transactional API but does not isolate transactions
//! (read_committed sees aborted records), so this checks the API path — replies
//! delivered, offsets committed by the transactions alone — not isolation.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use support::{SluiceProcess, Tansu};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_offsets_commit_together_in_transactions() {
    let tansu = Tansu::start();
    let (request, reply, dlq) = (
        support::unique_name("req"),
        support::unique_name("rep"),
        support::unique_name("dlq"),
    );
    let group = support::unique_name("eos");
    tansu.create_topic(&request, 2).await;
    tansu.create_topic(&reply, 2).await;
    tansu.create_topic(&dlq, 1).await;

    let mock_port = support::free_port();
    let mut mock = SluiceProcess::spawn(
        [
            "mock-llm",
            "--listen",
            &format!("127.0.0.1:{mock_port}"),
            "--slots",
            "32",
            "--latency-ms",
            "5",
        ],
        Vec::<(String, String)>::new(),
    );
    mock.wait_for_http_ok(
        &format!("http://127.0.0.1:{mock_port}/healthz"),
        Duration::from_secs(20),
    )
    .await;

    let admin_port = support::free_port();
    let mut env: Vec<(String, String)> = vec![
        ("SLUICE__KAFKA__BOOTSTRAP_SERVERS".into(), tansu.bootstrap()),
        ("SLUICE__KAFKA__REQUEST_TOPIC".into(), request.clone()),
        ("SLUICE__KAFKA__REPLY_TOPIC".into(), reply.clone()),
        ("SLUICE__KAFKA__DLQ_TOPIC".into(), dlq.clone()),
        ("SLUICE__KAFKA__GROUP_ID".into(), group.clone()),
        (
            "SLUICE__BACKEND__URL".into(),
            format!("http://127.0.0.1:{mock_port}"),
        ),
        (
            "SLUICE__WORKER__ADMIN_LISTEN".into(),
            format!("127.0.0.1:{admin_port}"),
        ),
        ("SLUICE__WORKER__EXACTLY_ONCE".into(), "true".into()),
        ("SLUICE__WORKER__TRANSACTION_LINGER_MS".into(), "50".into()),
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
    let mut worker = SluiceProcess::spawn(["worker"], env);
    worker
        .wait_for_http_ok(
            &format!("http://127.0.0.1:{admin_port}/readyz"),
            Duration::from_secs(30),
        )
        .await;

    // 200 valid requests and 2 undecodable ones, straight onto the request topic.
    let producer: FutureProducer = tansu.producer_config().create().unwrap();
    let mut ids = HashSet::new();
    for i in 0..202 {
        let id = format!("eos-{i}");
        let payload = if i % 100 == 50 {
            b"not a request".to_vec()
        } else {
            ids.insert(id.clone());
            serde_json::to_vec(&json!({"v": 1, "id": id, "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}})).unwrap()
        };
        producer
            .send(
                FutureRecord::to(&request).key(&id).payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }

    let replies: BaseConsumer = tansu
        .consumer_config(&support::unique_name("check"))
        .create()
        .unwrap();
    replies.subscribe(&[&reply]).unwrap();
    let seen = tokio::task::spawn_blocking(move || {
        let mut seen = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < 200 && Instant::now() < deadline {
            if let Some(message) = replies.poll(Duration::from_millis(200)) {
                let reply: Value =
                    serde_json::from_slice(message.unwrap().payload().unwrap()).unwrap();
                assert_eq!(reply["status"], "ok", "{reply}");
                seen.insert(reply["id"].as_str().unwrap().to_string());
            }
        }
        seen
    })
    .await
    .unwrap();
    assert_eq!(
        seen, ids,
        "every valid request answered through a transaction"
    );

    // Stop the worker; the offsets it committed came only from its transactions
    // (auto-commit is off in this mode): they must cover all 202 messages.
    worker.terminate();
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "worker exit {status:?}\n{}",
        worker.logs()
    );
    assert!(
        worker.logs().contains("exactly_once=true"),
        "{}",
        worker.logs()
    );

    let checker: BaseConsumer = tansu.consumer_config(&group).create().unwrap();
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(&request, 0);
    wanted.add_partition(&request, 1);
    let committed = tokio::task::spawn_blocking(move || {
        checker
            .committed_offsets(wanted, Duration::from_secs(10))
            .unwrap()
    })
    .await
    .unwrap();
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            other => panic!(
                "partition {} has no committed offset: {other:?}",
                e.partition()
            ),
        })
        .sum();
    assert_eq!(total, 202, "committed offsets cover every consumed message");
    drop(mock);
}
