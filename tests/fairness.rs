//! Fair share between tenants in the worker, on tansu with separate processes: tenant A
//! bursts 2,000 requests while tenant B sends one a second; B's requests are served in
//! their turn among what the worker holds, not behind A's whole backlog. Prints B's
//! queue waits. FAIRNESS_LANE_BUFFER sets `worker.lane_buffer` (default here 4096, deeper
//! than A's burst; with the default 64, B waits behind what the worker has not fetched).

mod support;

use std::time::Duration;

use serde_json::json;
use support::pipeline::{
    collect_replies, produce_requests_with, reader_config, sluice_env, with_env, MockLlm, Topics,
    Worker,
};
use support::{free_port, Tansu};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_burst_does_not_hold_back_anothers_trickle() {
    let lane_buffer = std::env::var("FAIRNESS_LANE_BUFFER").unwrap_or_else(|_| "4096".into());
    let tansu = Tansu::start();
    let topics = Topics::fresh();
    topics.create_on(&tansu).await;
    // 8 slots x 50 ms: 160 a second, so A's burst takes about 12 s.
    let mock = MockLlm::start_paced(free_port(), 8, 50, 0).await;
    let env = with_env(
        &sluice_env(&tansu.bootstrap(), &topics, &mock.url()),
        &[
            ("SLUICE__WORKER__LANE_BUFFER", &lane_buffer),
            ("SLUICE__BACKEND__CONCURRENCY__INITIAL", "8"),
            ("SLUICE__BACKEND__CONCURRENCY__MAX", "8"),
        ],
    );
    let mut worker = Worker::start(&env).await;
    worker.wait_ready(Duration::from_secs(30)).await;

    let bootstrap = tansu.bootstrap();
    let burst = produce_requests_with(
        &bootstrap,
        &topics.request,
        2000,
        "a",
        json!({"tenant": "a"}),
    )
    .await;
    let mut trickle = Vec::new();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        trickle.extend(
            produce_requests_with(&bootstrap, &topics.request, 1, "b", json!({"tenant": "b"}))
                .await,
        );
    }
    let mut all = burst.clone();
    all.extend(trickle.iter().cloned());
    let replies = collect_replies(
        reader_config(&bootstrap),
        &topics.reply,
        &all,
        Duration::from_secs(120),
        Duration::ZERO,
    )
    .await;
    assert!(
        replies.missing(&all).is_empty(),
        "every request was answered"
    );
    let wait = |id: &String| replies.by_id[id][0]["timing"]["queue_ms"].as_u64().unwrap();
    let mut b: Vec<u64> = trickle.iter().map(wait).collect();
    b.sort_unstable();
    let mut a: Vec<u64> = burst.iter().map(wait).collect();
    a.sort_unstable();
    let last_done = |ids: &[String]| {
        ids.iter()
            .map(|id| {
                replies.by_id[id][0]["timing"]["finished_ms"]
                    .as_u64()
                    .unwrap()
            })
            .max()
            .unwrap()
    };
    let (last_b_done, last_a_done) = (last_done(&trickle), last_done(&burst));
    eprintln!(
        "fairness (lane_buffer {lane_buffer}): B's queue waits (ms) {b:?}, p99 {}; A's p50 {} \
         and max {} ms; A's burst drained {} ms after B's last answer",
        b[b.len() - 1],
        a[a.len() / 2],
        a[a.len() - 1],
        last_a_done as i64 - last_b_done as i64
    );
    assert!(
        last_a_done > last_b_done + 1000,
        "B's requests came while A's burst was still being served (else this shows nothing)"
    );
    // A few of the backend's 50 ms calls, not A's seconds-long backlog.
    assert!(
        b[b.len() - 1] < 500,
        "B's worst queue wait {} ms",
        b[b.len() - 1]
    );
}
