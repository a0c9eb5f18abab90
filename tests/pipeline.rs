//! The whole pipeline as separate processes against a real broker (tansu): requests
//! through the ingress, a worker, the mock backend, replies read back through the reply
//! topic and `GET /v1/requests/{id}`; a worker killed mid-run; poison input.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use serde_json::{json, Value};
use support::pipeline::{Pipeline, Worker};

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
    pipeline.workers[0].process.kill();
    let before_kill = pipeline.answered(&ids).await;
    assert!(
        before_kill < ids.len(),
        "the kill came after the worker had finished; the test proves nothing"
    );
    pipeline.workers[0]
        .process
        .wait_exit(Duration::from_secs(10))
        .await;
    pipeline.workers[0] = Worker::start(&pipeline.env).await;

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
    let mut pipeline = Pipeline::start(64, 5).await;
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
    let worker = &mut pipeline.workers[0].process;
    assert!(
        worker.try_exit_status().is_none(),
        "worker crashed:\n{}",
        worker.logs()
    );
}
