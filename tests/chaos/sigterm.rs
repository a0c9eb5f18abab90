//! SIGTERM with a backlog and calls in flight to a slow backend. Within its grace period
//! the worker finishes what it started, writes those replies, commits and exits 0; past
//! it, it abandons the calls (their requests are re-delivered) and still exits 0. Either
//! way a successor completes the rest with nothing lost.

use std::time::{Duration, Instant};

use crate::support::pipeline::{Metrics, Pipeline, Worker};

/// Waits until the worker's metrics satisfy `done`; panics after `timeout`.
async fn wait_for_metrics(
    worker: &Worker,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Metrics) -> bool,
) -> Metrics {
    let deadline = Instant::now() + timeout;
    loop {
        let metrics = worker.metrics().await;
        if done(&metrics) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not within {timeout:?}:\n{}",
            metrics.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn gauge(metrics: &Metrics, name: &str) -> f64 {
    metrics.get(name, &[]).unwrap_or(0.0)
}

fn finished_ok(metrics: &Metrics) -> f64 {
    metrics
        .get("sluice_worker_messages_total", &[("outcome", "ok")])
        .unwrap_or(0.0)
}

/// What a SIGTERM run measured.
struct Stopped {
    requests: usize,
    in_flight_at_term: u64,
    exit_after: Duration,
    backend_cancelled_by_first: u64,
    /// Backend calls completed over the whole run (both workers).
    backend_ok: u64,
}

/// Submits `requests`, waits until the worker has `in_flight` calls going and has
/// finished at least one round, SIGTERMs it and checks it exits 0 within `exit_within`;
/// then starts a successor and checks nothing is lost or duplicated.
async fn run(pipeline: &mut Pipeline, requests: usize, exit_within: Duration) -> Stopped {
    let ids = pipeline.submit(requests).await;
    let worker = &pipeline.workers[0];
    let metrics = wait_for_metrics(
        worker,
        Duration::from_secs(60),
        "a round of calls done and the next in flight",
        |m| finished_ok(m) >= 1.0 && gauge(m, "sluice_worker_in_flight") >= 16.0,
    )
    .await;
    let in_flight_at_term = gauge(&metrics, "sluice_worker_in_flight") as u64;

    let process = &mut pipeline.workers[0].process;
    let term_at = Instant::now();
    process.terminate();
    let status = process
        .wait_exit(exit_within + Duration::from_secs(20))
        .await;
    let exit_after = term_at.elapsed();
    assert!(
        status.success(),
        "the worker exits 0 on SIGTERM, got {status}:\n{}",
        process.logs()
    );
    assert!(
        exit_after <= exit_within,
        "the worker took {exit_after:?} to exit (limit {exit_within:?}):\n{}",
        process.logs()
    );

    // Every call the backend completed for the stopped worker has its reply.
    let answered_by_first = pipeline.answered(&ids).await;
    let backend_ok_by_first = pipeline.mock.requests("ok").await;
    let backend_cancelled_by_first = pipeline.mock.requests("cancelled").await;
    assert!(
        answered_by_first < requests,
        "the worker had finished everything before the SIGTERM; the test proves nothing"
    );
    assert_eq!(
        answered_by_first as u64, backend_ok_by_first,
        "replies on the topic vs calls the backend completed, after the stop"
    );

    pipeline.workers[0] = Worker::start(&pipeline.env).await;
    let replies = pipeline
        .collect_replies(&ids, Duration::from_secs(120), Duration::from_secs(3))
        .await;
    let lost = replies.missing(&ids).len();
    let duplicates = replies.duplicates();
    let backend_ok = pipeline.mock.requests("ok").await;
    eprintln!(
        "sigterm: {requests} requests, {in_flight_at_term} in flight at SIGTERM, exit 0 after \
         {:.2} s; {answered_by_first} answered before the stop = {backend_ok_by_first} backend \
         calls completed, {backend_cancelled_by_first} calls abandoned; successor done: lost \
         {lost}, duplicate final replies {duplicates}, repeated backend calls {}",
        exit_after.as_secs_f64(),
        backend_ok.saturating_sub(requests as u64)
    );
    assert_eq!(lost, 0, "requests without a final reply");
    assert_eq!(duplicates, 0, "a graceful stop commits what it finished");
    for copies in replies.by_id.values() {
        assert_eq!(copies[0]["status"], "ok", "{}", copies[0]);
    }
    Stopped {
        requests,
        in_flight_at_term,
        exit_after,
        backend_cancelled_by_first,
        backend_ok,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_calls_in_flight_and_a_successor_does_the_rest() {
    let _serial = crate::serial().await;
    // 32 slots x 1.5 s, at most 32 in flight: SIGTERM lands mid-call with a backlog.
    let mut pipeline = Pipeline::start_with(
        32,
        1_500,
        1,
        &[
            ("SLUICE__WORKER__MAX_IN_FLIGHT", "32"),
            ("SLUICE__WORKER__SHUTDOWN_GRACE_MS", "10000"),
        ],
    )
    .await;
    // Calls take 1.5 s; then a flush and a commit.
    let stopped = run(&mut pipeline, 128, Duration::from_secs(5)).await;
    assert_eq!(
        stopped.backend_cancelled_by_first, 0,
        "within the grace period no call is abandoned"
    );
    assert_eq!(
        stopped.backend_ok, stopped.requests as u64,
        "no request was served twice by the backend"
    );
    assert!(stopped.in_flight_at_term > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_period_abandons_calls_for_redelivery() {
    let _serial = crate::serial().await;
    // Calls of 4 s against a 1 s grace period: the worker must give up on them.
    let mut pipeline = Pipeline::start_with(
        32,
        4_000,
        1,
        &[
            ("SLUICE__WORKER__MAX_IN_FLIGHT", "32"),
            ("SLUICE__WORKER__SHUTDOWN_GRACE_MS", "1000"),
        ],
    )
    .await;
    // Grace, a 200 ms settle, up to 5 s of producer flush, the commit and runtime stop.
    let stopped = run(&mut pipeline, 64, Duration::from_secs(8)).await;
    assert!(
        stopped.backend_cancelled_by_first >= 1,
        "calls in flight past the grace period are abandoned, not waited for"
    );
    assert!(stopped.exit_after < Duration::from_secs(4));
}
