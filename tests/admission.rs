//! Admission control on tansu with separate processes: behind a backlog worth about 12 s
//! (the mock backend's 4 slots x 100 ms, one worker), requests with a 2 s deadline are
//! refused at once with 503 and Retry-After; while the backlog drains, those that are
//! accepted are served in time. Prints its figures. ADMISSION_BACKLOG_S and
//! ADMISSION_DEADLINE_S scale it (the figure: 30 and 5).

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::pipeline::{
    produce_requests, reader_config, sluice_env, with_env, Ingress, MockLlm, Topics, Worker,
};
use support::{free_port, Tansu};

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_shorter_than_the_expected_wait_are_refused_at_once() {
    let backlog_s = env_secs("ADMISSION_BACKLOG_S", 12);
    let deadline_s = env_secs("ADMISSION_DEADLINE_S", 2);
    let tansu = Tansu::start();
    let topics = Topics::fresh();
    topics.create_on(&tansu).await;
    let mock = MockLlm::start_paced(free_port(), 4, 100, 0).await;
    let env = with_env(
        &sluice_env(&tansu.bootstrap(), &topics, &mock.url()),
        &[
            ("SLUICE__INGRESS__ENQUEUE_TIMEOUT_MS", "5000"),
            ("SLUICE__INGRESS__ADMISSION_INTERVAL_MS", "500"),
            // The backend's 4 slots from the start: the drain rate is the backend's.
            ("SLUICE__BACKEND__CONCURRENCY__INITIAL", "4"),
            ("SLUICE__BACKEND__CONCURRENCY__MAX", "4"),
        ],
    );
    let ingress = Ingress::start(&env).await;
    let mut worker = Worker::start(&env).await;
    worker.wait_ready(Duration::from_secs(30)).await;

    // About 40 a second: the backlog.
    let backlog = produce_requests(
        &tansu.bootstrap(),
        &topics.request,
        40 * backlog_s as usize,
        "bl",
    )
    .await;
    let gauge = |m: &support::pipeline::Metrics| {
        m.get(
            "sluice_ingress_expected_wait_seconds",
            &[("topic", topics.request.as_str())],
        )
    };
    let started = Instant::now();
    let mut expected = None;
    while started.elapsed() < Duration::from_secs(20) {
        expected = gauge(&ingress.metrics().await);
        if expected.is_some_and(|w| w > 2.0 * deadline_s as f64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let expected = expected.expect("the ingress measured the expected wait");
    assert!(
        expected > 2.0 * deadline_s as f64,
        "expected wait {expected} s"
    );

    let http = reqwest::Client::new();
    let send = |deadline_s: u64| {
        let http = http.clone();
        let url = format!("{}/v1/requests", ingress.url);
        async move {
            let deadline_ms = sluice::envelope::now_ms() + deadline_s * 1000;
            let body = json!({"body": {"messages": [{"role": "user", "content": "hi"}]}, "deadline_ms": deadline_ms});
            let sent = Instant::now();
            let response = http.post(url).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let value: serde_json::Value = response.json().await.unwrap();
            (status, retry_after, value, sent.elapsed())
        }
    };
    // Behind the backlog: refused at once, with when to come back.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let (status, retry_after, value, took) = send(deadline_s).await;
        assert_eq!(status, 503, "{value}");
        assert!(
            value["error"]["message"]
                .as_str()
                .unwrap()
                .contains("expected wait"),
            "{value}"
        );
        let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
        assert!(retry_after >= 1, "{retry_after}");
        slowest = slowest.max(took);
    }
    assert!(
        slowest < Duration::from_millis(200),
        "refused at once: {slowest:?}"
    );

    // While it drains: one every 100 ms; the accepted ones must be served in time.
    let mut accepted = Vec::new();
    let mut refused = 0;
    let drain_started = Instant::now();
    while drain_started.elapsed() < Duration::from_secs(backlog_s + 10) {
        let (status, _, value, _) = send(deadline_s).await;
        match status {
            202 => accepted.push(value["id"].as_str().unwrap().to_string()),
            503 => refused += 1,
            other => panic!("unexpected {other}: {value}"),
        }
        if accepted.len() >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        accepted.len() >= 10,
        "the drained backlog admits again: {} accepted",
        accepted.len()
    );
    let mut all = backlog.clone();
    all.extend(accepted.iter().cloned());
    let replies = support::pipeline::collect_replies(
        reader_config(&tansu.bootstrap()),
        &topics.reply,
        &all,
        Duration::from_secs(backlog_s + 60),
        Duration::ZERO,
    )
    .await;
    assert!(
        replies.missing(&all).is_empty(),
        "every accepted request was answered"
    );
    let expired = accepted
        .iter()
        .filter(|id| replies.by_id[*id][0]["status"] == "expired")
        .count();
    let backlog_ok = backlog
        .iter()
        .filter(|id| replies.by_id[*id][0]["status"] == "ok")
        .count();
    eprintln!(
        "admission: backlog {} ({backlog_s} s worth), expected wait measured {expected:.1} s; \
         20 of 20 with a {deadline_s} s deadline refused in at most {slowest:?}; during the \
         drain {} accepted, {refused} refused; of the accepted, {expired} expired; backlog ok {backlog_ok}",
        backlog.len(),
        accepted.len()
    );
    assert_eq!(backlog_ok, backlog.len(), "the backlog itself is served");
    assert!(
        expired * 100 <= accepted.len() * 5,
        "{expired} of {} accepted expired",
        accepted.len()
    );
    drop(mock);
}
