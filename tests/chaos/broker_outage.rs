//! The broker goes away under traffic and comes back. While it is down the ingress
//! answers 503 with Retry-After within about its enqueue timeout and turns not-ready;
//! nothing answered 202 is lost; once it is back, traffic resumes without restarting any
//! process. The broker is librdkafka's mock cluster in this test process (the only one
//! here that can be taken down and brought back with its data), so volumes stay small.
//! `CHAOS_TIMELINE=1` also prints every submission around the outage.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::kafka::embedded::EmbeddedBroker;

use crate::support::pipeline::{
    collect_replies, reader_config, sluice_env, Ingress, MockLlm, Topics, Worker,
};
use crate::support::unique_name;

/// Concurrent submitters, each pausing this long between submissions.
const SENDERS: usize = 4;
const PAUSE: Duration = Duration::from_millis(100);
/// How long the outage lasts once both signs of it (a 503, not ready) were seen.
const HOLD_OUTAGE: Duration = Duration::from_secs(3);

/// One submission as the client saw it.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    /// When it was sent, from the test's start.
    at: Duration,
    took: Duration,
    /// HTTP status, or 0 for no answer.
    status: u16,
    retry_after: Option<String>,
}

impl Sent {
    fn answered_at(&self) -> Duration {
        self.at + self.took
    }
}

/// `/readyz` answers seen, as (time from the test's start, status) transitions.
type Readiness = Arc<Mutex<Vec<(Duration, u16)>>>;

/// The first time at or after `since` when `/readyz` answered `wanted` (200) or not.
fn readiness_turned(readiness: &Readiness, since: Duration, ready: bool) -> Option<Duration> {
    readiness
        .lock()
        .expect("not poisoned")
        .iter()
        .find(|(at, status)| *at >= since && (*status == 200) == ready)
        .map(|(at, _)| *at)
}

/// Polls until `found` returns a time; panics with `what` after `timeout`.
async fn wait_until(
    what: &str,
    timeout: Duration,
    found: impl Fn() -> Option<Duration>,
) -> Duration {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(at) = found() {
            return at;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_means_quick_503s_and_back_up_means_traffic_resumes() {
    let _serial = crate::serial().await;
    let broker = EmbeddedBroker::start(1).expect("starting the mock cluster");
    let topics = Topics::fresh();
    broker.create_topic(&topics.request, 4).unwrap();
    broker.create_topic(&topics.reply, 4).unwrap();
    broker.create_topic(&topics.dlq, 1).unwrap();
    let mock = MockLlm::start(64, 20).await;
    // The ingress's enqueue timeout is left at its default (1,000 ms).
    let env = sluice_env(broker.bootstrap_servers(), &topics, &mock.url());
    let mut ingress = Ingress::start(&env).await;
    let mut worker = Worker::start(&env).await;
    worker.wait_ready(Duration::from_secs(30)).await;
    let (ingress_pid, worker_pid) = (ingress.process.pid(), worker.process.pid());

    let t0 = Instant::now();
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let readiness: Readiness = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let (http, url, sent, stop) = (
            http.clone(),
            ingress.url.clone(),
            sent.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = unique_name(&format!("outage-{sender}-{n}"));
                n += 1;
                let at = t0.elapsed();
                let response = http
                    .post(format!("{url}/v1/requests"))
                    .json(&json!({"id": id, "body": {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}}))
                    .send()
                    .await;
                let took = t0.elapsed() - at;
                let (status, retry_after) = match &response {
                    Ok(r) => (
                        r.status().as_u16(),
                        r.headers()
                            .get("retry-after")
                            .map(|v| v.to_str().unwrap_or("?").to_string()),
                    ),
                    Err(_) => (0, None),
                };
                sent.lock().expect("not poisoned").push(Sent {
                    id,
                    at,
                    took,
                    status,
                    retry_after,
                });
                tokio::time::sleep(PAUSE).await;
            }
        }));
    }
    tasks.push(tokio::spawn({
        let (http, url, readiness, stop) = (
            http.clone(),
            format!("{}/readyz", ingress.url),
            readiness.clone(),
            stop.clone(),
        );
        async move {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                let status = match http.get(&url).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                if status != last {
                    readiness
                        .lock()
                        .expect("not poisoned")
                        .push((t0.elapsed(), status));
                    last = status;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }));
    let accepted_since = |since: Duration| {
        sent.lock()
            .expect("not poisoned")
            .iter()
            .filter(|s| s.at >= since && s.status == 202)
            .map(|s| s.answered_at())
            .min()
    };
    wait_until("50 submissions accepted", Duration::from_secs(30), || {
        let accepted = sent
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|s| s.status == 202)
            .count();
        (accepted >= 50).then(|| t0.elapsed())
    })
    .await;

    // Down.
    let down_at = t0.elapsed();
    broker.set_broker_up(1, false).unwrap();
    let first_503 = wait_until(
        "a 503 for a submission sent after the broker went down",
        Duration::from_secs(20),
        || {
            sent.lock()
                .expect("not poisoned")
                .iter()
                .filter(|s| s.at >= down_at && s.status == 503)
                .map(|s| s.answered_at())
                .min()
        },
    )
    .await;
    let not_ready = wait_until(
        "/readyz non-200 after the broker went down",
        Duration::from_secs(20),
        || readiness_turned(&readiness, down_at, false),
    )
    .await;
    tokio::time::sleep(HOLD_OUTAGE).await;

    // Up.
    let up_at = t0.elapsed();
    broker.set_broker_up(1, true).unwrap();
    let first_202 = wait_until(
        "a 202 for a submission sent after the broker came back",
        Duration::from_secs(60),
        || accepted_since(up_at),
    )
    .await;
    let ready_again = wait_until(
        "/readyz 200 after the broker came back",
        Duration::from_secs(60),
        || readiness_turned(&readiness, up_at, true),
    )
    .await;
    // A little traffic after the recovery, then stop.
    let resumed = t0.elapsed();
    wait_until(
        "20 more submissions accepted",
        Duration::from_secs(30),
        || {
            let n = sent
                .lock()
                .expect("not poisoned")
                .iter()
                .filter(|s| s.at >= resumed && s.status == 202)
                .count();
            (n >= 20).then(|| t0.elapsed())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let sent = sent.lock().expect("not poisoned").clone();

    let accepted: Vec<String> = sent
        .iter()
        .filter(|s| s.status == 202)
        .map(|s| s.id.clone())
        .collect();
    let refused: Vec<&Sent> = sent.iter().filter(|s| s.status == 503).collect();
    let by_status: BTreeMap<u16, usize> = sent.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.status).or_default() += 1;
        m
    });
    let replies = collect_replies(
        reader_config(broker.bootstrap_servers()),
        &topics.reply,
        &accepted,
        Duration::from_secs(90),
        Duration::from_secs(2),
    )
    .await;
    let lost = replies.missing(&accepted).len();
    let refused_but_answered = refused
        .iter()
        .filter(|s| replies.by_id.contains_key(&s.id))
        .count();
    let slowest_503 = refused.iter().map(|s| s.took).max().unwrap_or_default();
    let mut latencies: Vec<Duration> = refused.iter().map(|s| s.took).collect();
    latencies.sort();
    let median_503 = latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or_default();
    let accepted_during_outage: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.status == 202 && s.at >= down_at && s.answered_at() < up_at)
        .collect();
    // A copy taken by a worker at another time is a re-delivery, not a re-sent write.
    let reprocessed = replies
        .by_id
        .values()
        .flat_map(|copies| copies.iter().skip(1).map(move |c| (c, &copies[0])))
        .filter(|(copy, first)| copy["timing"]["started_ms"] != first["timing"]["started_ms"])
        .count();
    let ms = |d: Duration| d.as_millis();
    if std::env::var_os("CHAOS_TIMELINE").is_some() {
        for s in sent
            .iter()
            .filter(|s| s.answered_at() + Duration::from_secs(2) >= down_at)
        {
            eprintln!(
                "  sent {:>6} ms after down, answered {} after {:>5} ms",
                s.at.as_millis() as i64 - down_at.as_millis() as i64,
                s.status,
                s.took.as_millis()
            );
        }
        eprintln!("  up at {} ms after down", ms(up_at - down_at));
    }
    eprintln!(
        "broker outage: {} submissions {by_status:?}; down {:.1} s; first 503 {} ms after down, \
         503 answer time median {} ms / max {} ms; /readyz not ready {} ms after down; after up: \
         first 202 {} ms, /readyz ready {} ms; accepted {} lost {lost}; {} refused ids got a reply anyway \
         (written though not acknowledged in time); accepted while down {}; duplicate final replies {} \
         ({reprocessed} of them re-deliveries to the worker)",
        sent.len(),
        (up_at - down_at).as_secs_f64(),
        ms(first_503 - down_at),
        ms(median_503),
        ms(slowest_503),
        ms(not_ready - down_at),
        ms(first_202 - up_at),
        ms(ready_again - up_at),
        accepted.len(),
        refused_but_answered,
        accepted_during_outage.len(),
        replies.duplicates()
    );
    assert_eq!(lost, 0, "accepted requests without a final reply");
    assert_eq!(
        by_status.keys().copied().collect::<Vec<_>>(),
        vec![202, 503],
        "every submission is answered 202 or 503"
    );
    assert!(
        refused
            .iter()
            .all(|s| s.retry_after.as_deref() == Some("1")),
        "every 503 carries Retry-After: 1"
    );
    assert!(
        slowest_503 <= Duration::from_millis(2_500),
        "a 503 took {slowest_503:?} (enqueue timeout 1 s)"
    );
    assert!(
        first_503 - down_at <= Duration::from_secs(3),
        "first 503 only {:?} after the broker went down",
        first_503 - down_at
    );
    assert!(
        first_202 - up_at <= Duration::from_secs(3),
        "submissions were refused for {:?} after the broker was back",
        first_202 - up_at
    );
    assert!(
        accepted_during_outage.is_empty(),
        "202 answered while the broker was down: {accepted_during_outage:?}"
    );
    assert!(
        ingress.process.try_exit_status().is_none() && worker.process.try_exit_status().is_none(),
        "no process exited"
    );
    assert_eq!(
        (ingress.process.pid(), worker.process.pid()),
        (ingress_pid, worker_pid)
    );
}
