//! The LLM backend disappears for 30 s under steady traffic and comes back at the same
//! address. Requests without a deadline must all end `ok` once it is back; requests whose
//! deadline passes during the outage end `expired` (never served late); the worker's
//! circuit breaker opens and closes again, visibly in its `/metrics`; the backlog drains.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use sluice::envelope::now_ms;
use tokio_util::sync::CancellationToken;

use crate::support::pipeline::{request_value, sluice_env, with_env, MockLlm, Topics, Worker};
use crate::support::{unique_name, Tansu};

const OUTAGE: Duration = Duration::from_secs(30);
/// Every third request carries a deadline this far from when it is written.
const DEADLINE: Duration = Duration::from_secs(4);

/// One request as written.
#[derive(Debug, Clone)]
struct Written {
    id: String,
    /// Unix ms.
    at_ms: u64,
    deadline_ms: Option<u64>,
}

/// Waits until the worker's metrics satisfy `done`; `None` after `timeout`.
async fn wait_for_metric(
    worker: &Worker,
    timeout: Duration,
    done: impl Fn(f64) -> bool,
    name: &str,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if worker.metrics().await.get(name, &[]).is_some_and(&done) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Runs the scenario with `per_second` requests a second and `overrides` on the worker's
/// settings; prints the figures under `label` and returns what went wrong (nothing when
/// every expectation held).
async fn outage(label: &str, per_second: u64, overrides: &[(&str, &str)]) -> Vec<String> {
    let started = Instant::now();
    let tansu = Tansu::start();
    let topics = Topics::fresh();
    topics.create_on(&tansu).await;
    let mock = MockLlm::start(16, 50).await;
    let port = mock.port;
    let mut mock = Some(mock);
    let env = with_env(
        &sluice_env(
            &tansu.bootstrap(),
            &topics,
            &format!("http://127.0.0.1:{port}"),
        ),
        overrides,
    );
    let mut worker = Worker::start(&env).await;
    worker.wait_ready(Duration::from_secs(30)).await;
    let worker_pid = worker.process.pid();

    // Steady traffic straight onto the request topic.
    let written: Arc<Mutex<Vec<Written>>> = Arc::default();
    let stop = CancellationToken::new();
    let producer: FutureProducer = tansu.producer_config().create().unwrap();
    let traffic = tokio::spawn({
        let (written, stop, topic) = (written.clone(), stop.clone(), topics.request.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_second));
            for n in 0u64.. {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let id = unique_name(&format!("bo-{n}"));
                let at_ms = now_ms();
                let deadline_ms = (n % 3 == 2).then(|| at_ms + DEADLINE.as_millis() as u64);
                let extra = deadline_ms.map_or(json!({}), |d| json!({"deadline_ms": d}));
                let value = request_value(&id, "hi", extra);
                producer
                    .send(
                        FutureRecord::to(&topic).key(&id).payload(&value),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .expect("tansu takes the request");
                written.lock().expect("not poisoned").push(Written {
                    id,
                    at_ms,
                    deadline_ms,
                });
            }
        }
    });

    // Normal operation first.
    let healthy = mock.as_ref().expect("running").requests("ok").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while mock.as_ref().expect("running").requests("ok").await < healthy + 3 * per_second {
        assert!(Instant::now() < deadline, "no traffic reached the backend");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The backend goes away.
    let outage_ms = now_ms();
    let outage_at = Instant::now();
    drop(mock.take());
    let opened_after = wait_for_metric(
        &worker,
        OUTAGE,
        |v| v >= 1.0,
        "sluice_worker_breaker_opens_total",
    )
    .await;
    tokio::time::sleep(OUTAGE.saturating_sub(outage_at.elapsed())).await;
    let back_ms = now_ms();
    let mock = MockLlm::start_on(port, 16, 50).await;
    let closed_after = wait_for_metric(
        &worker,
        Duration::from_secs(120),
        |v| v == 0.0,
        "sluice_worker_breaker_state",
    )
    .await;
    let closed_ms = now_ms();

    // A little more traffic, then wait for every reply.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    traffic.await.unwrap();
    let written = written.lock().expect("not poisoned").clone();
    let ids: Vec<String> = written.iter().map(|w| w.id.clone()).collect();
    let replies = crate::support::pipeline::collect_replies(
        crate::support::pipeline::reader_config(&tansu.bootstrap()),
        &topics.reply,
        &ids,
        Duration::from_secs(120),
        Duration::from_secs(2),
    )
    .await;
    let metrics = worker.metrics().await;

    let mut problems = Vec::new();
    let mut plain: BTreeMap<String, usize> = BTreeMap::new();
    let mut timed: BTreeMap<String, usize> = BTreeMap::new();
    // Attempts of the requests without a deadline that ended ok: count by attempts.
    let mut attempts_ok: BTreeMap<u64, usize> = BTreeMap::new();
    let mut served_late = 0;
    let mut inside_outage = 0;
    // The backlog is drained once everything written before the breaker closed is done.
    let mut drained_ms = closed_ms;
    for w in &written {
        let Some(reply) = replies.first(&w.id) else {
            continue;
        };
        if w.at_ms < closed_ms {
            drained_ms = drained_ms.max(reply["timing"]["finished_ms"].as_u64().unwrap_or(0));
        }
        let status = reply["status"].as_str().unwrap_or("?").to_string();
        let finished = reply["timing"]["finished_ms"].as_u64().unwrap_or(0);
        match w.deadline_ms {
            None => {
                *plain.entry(status.clone()).or_default() += 1;
                if status == "ok" {
                    *attempts_ok
                        .entry(reply["attempts"].as_u64().unwrap_or(0))
                        .or_default() += 1;
                } else if problems.len() < 10 {
                    problems.push(format!("no deadline, not ok: {}", compact(reply)));
                }
            }
            Some(deadline) => {
                *timed.entry(status.clone()).or_default() += 1;
                // Written during the outage with a deadline before its end: the backend
                // could not have served it in time.
                if w.at_ms >= outage_ms && deadline < back_ms {
                    inside_outage += 1;
                    if status != "expired" && problems.len() < 10 {
                        problems.push(format!(
                            "written during the outage, deadline {} ms before its end, not expired: {}",
                            back_ms - deadline,
                            compact(reply)
                        ));
                    }
                }
                // Never served late: an ok reply may finish after the deadline only by
                // the length of a call begun before it (50 ms here, plus slack).
                if status == "ok" && finished > deadline + 1_000 {
                    served_late += 1;
                    if problems.len() < 10 {
                        problems.push(format!(
                            "served {} ms after its deadline: {}",
                            finished - deadline,
                            compact(reply)
                        ));
                    }
                }
            }
        }
    }
    let lost = replies.missing(&ids).len();
    let opens = metrics.value("sluice_worker_breaker_opens_total", &[]);
    let state = metrics.value("sluice_worker_breaker_state", &[]);
    let in_flight = metrics.value("sluice_worker_in_flight", &[]);
    let buffered = metrics.value("sluice_worker_buffered", &[]);
    let restarted =
        worker.process.try_exit_status().is_some() || worker.process.pid() != worker_pid;
    eprintln!(
        "backend outage [{label}]: {} requests over {:.0} s, backend down {:.1} s; breaker opened {:?} after the \
         outage began, closed {:?} after the backend was back, opens_total {opens}, state now {state}; \
         no deadline: {plain:?} (ok by attempts {attempts_ok:?}); with a {DEADLINE:?} deadline: {timed:?} \
         ({inside_outage} written during the outage with a deadline before its end; {served_late} served after their deadline); lost {lost}, \
         duplicates {}; backlog drained {:.1} s after the breaker closed (in flight {in_flight}, buffered {buffered})",
        written.len(),
        started.elapsed().as_secs_f64(),
        (back_ms - outage_ms) as f64 / 1000.0,
        opened_after,
        closed_after,
        replies.duplicates(),
        (drained_ms - closed_ms) as f64 / 1000.0,
    );
    if lost > 0 {
        problems.push(format!("{lost} requests without a final reply"));
    }
    if opened_after.is_none() || opens < 1.0 {
        problems.push("the breaker never opened".into());
    }
    if closed_after.is_none() || state != 0.0 {
        problems.push(format!("the breaker did not close again (state {state})"));
    }
    if in_flight != 0.0 || buffered != 0.0 {
        problems.push(format!(
            "backlog left: {in_flight} in flight, {buffered} buffered"
        ));
    }
    if inside_outage == 0 {
        problems.push("no deadline passed inside the outage; the test proves nothing".into());
    }
    if restarted {
        problems.push("the worker process restarted".into());
    }
    drop(mock);
    problems
}

fn compact(reply: &Value) -> String {
    format!(
        "{} status {} attempts {} error {} timing {}",
        reply["id"], reply["status"], reply["attempts"], reply["error"], reply["timing"]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about a minute (a 30 s outage); run by `make test-chaos`"]
async fn backend_down_for_30_s_ends_ok_or_expired_and_the_breaker_recovers() {
    let _serial = crate::serial().await;
    let problems = outage("defaults", 10, &[]).await;
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// One request in flight, and no other traffic, when the backend goes away for 30 s:
/// how does it end? Returns its reply.
async fn lone_request(overrides: &[(&str, &str)]) -> Value {
    let tansu = Tansu::start();
    let topics = Topics::fresh();
    topics.create_on(&tansu).await;
    // Calls of 1 s, so the request is surely in flight when the backend dies.
    let mock = MockLlm::start(16, 1_000).await;
    let port = mock.port;
    let env = with_env(
        &sluice_env(&tansu.bootstrap(), &topics, &mock.url()),
        overrides,
    );
    let mut worker = Worker::start(&env).await;
    worker.wait_ready(Duration::from_secs(30)).await;
    let producer: FutureProducer = tansu.producer_config().create().unwrap();
    let id = unique_name("lone");
    producer
        .send(
            FutureRecord::to(&topics.request)
                .key(&id)
                .payload(&request_value(&id, "hi", json!({}))),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("tansu takes the request");
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.metrics().await.get("sluice_worker_in_flight", &[]) != Some(1.0) {
        assert!(Instant::now() < deadline, "the request never got in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outage_ms = now_ms();
    drop(mock);
    tokio::time::sleep(OUTAGE).await;
    let _mock = MockLlm::start_on(port, 16, 50).await;
    let replies = crate::support::pipeline::collect_replies(
        crate::support::pipeline::reader_config(&tansu.bootstrap()),
        &topics.reply,
        std::slice::from_ref(&id),
        Duration::from_secs(120),
        Duration::from_secs(1),
    )
    .await;
    let reply = replies
        .first(&id)
        .expect("the request got a final reply")
        .clone();
    let finished = reply["timing"]["finished_ms"].as_u64().unwrap_or(0);
    eprintln!(
        "backend outage, lone request {overrides:?}: {}, finished {:.1} s after the backend went away \
         (down for {OUTAGE:?})",
        compact(&reply),
        finished.saturating_sub(outage_ms) as f64 / 1000.0
    );
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about 35 s (a 30 s outage); run by `make test-chaos`"]
async fn a_lone_request_outlives_a_30_s_outage_given_enough_attempts() {
    let _serial = crate::serial().await;
    // A larger budget of attempts changes nothing once the breaker holds the request.
    let reply = lone_request(&[("SLUICE__BACKEND__MAX_ATTEMPTS", "20")]).await;
    assert_eq!(reply["status"], "ok", "{reply}");
}

/// With the default `backend.max_attempts` (6), a request alone when the backend goes
/// away uses 4 attempts; the failure that opens the breaker and every failed half-open
/// probe come back as the open breaker, which does not use up attempts, so the request
/// waits for the backend and ends `ok` although the outage outlasts 6 attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about 35 s (a 30 s outage); run by `make test-chaos`"]
async fn a_lone_request_outlives_a_30_s_outage_with_default_attempts() {
    let _serial = crate::serial().await;
    let reply = lone_request(&[]).await;
    assert_eq!(
        reply["status"], "ok",
        "a lone request during a backend outage: {reply}"
    );
    assert!(
        reply["attempts"].as_u64().is_some_and(|a| a <= 6),
        "{reply}"
    );
}
