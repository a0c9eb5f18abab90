//! With Kafka unreachable, the ingress and the worker say so in one clear line (not the
//! tens of librdkafka lines a second they used to), keep serving their admin routes, and
//! stop promptly on SIGTERM.

mod support;

use std::time::{Duration, Instant};

use support::{free_port, SluiceProcess};

/// Runs `role` against a port nothing listens on for a few seconds, then stops it.
/// Returns its log and how long it took to exit after SIGTERM.
async fn run_without_kafka(role: &str, listen_key: &str) -> (String, Duration) {
    let port = free_port();
    let mut process = SluiceProcess::spawn(
        [role],
        [
            (
                "SLUICE__KAFKA__BOOTSTRAP_SERVERS",
                "127.0.0.1:1".to_string(),
            ),
            (listen_key, format!("127.0.0.1:{port}")),
        ],
    );
    process
        .wait_for_http_ok(
            &format!("http://127.0.0.1:{port}/healthz"),
            Duration::from_secs(20),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stopping = Instant::now();
    process.terminate();
    let status = process.wait_exit(Duration::from_secs(20)).await;
    let took = stopping.elapsed();
    assert!(
        status.success(),
        "{role} exited {status:?}: {}",
        process.logs()
    );
    (process.logs(), took)
}

fn assert_quiet(role: &str, logs: &str) {
    let summaries = logs
        .lines()
        .filter(|l| l.contains("cannot reach Kafka at 127.0.0.1:1 (connection refused), retrying"))
        .count();
    assert!(
        (1..=3).contains(&summaries),
        "{role}: {summaries} summary lines in about 5 s:\n{logs}"
    );
    let errors = logs.lines().filter(|l| l.contains(" ERROR ")).count();
    assert_eq!(
        errors, 0,
        "{role}: no ERROR lines for a known outage:\n{logs}"
    );
    let lines = logs.lines().count();
    assert!(
        lines <= 15,
        "{role}: {lines} log lines in about 5 s:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_says_it_once_and_stops_promptly() {
    let (logs, took) = run_without_kafka("ingress", "SLUICE__INGRESS__LISTEN").await;
    assert_quiet("ingress", &logs);
    assert!(took < Duration::from_millis(2500), "SIGTERM took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_says_it_once_and_stops_promptly() {
    let (logs, took) = run_without_kafka("worker", "SLUICE__WORKER__ADMIN_LISTEN").await;
    assert_quiet("worker", &logs);
    assert!(took < Duration::from_millis(2500), "SIGTERM took {took:?}");
}
