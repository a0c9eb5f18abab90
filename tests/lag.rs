//! The worker's lag gauge (`sluice_worker_lag`, read by KEDA and `desired_workers`)
//! follows the real backlog during a burst and falls to zero within seconds of the drain,
//! on both brokers: tansu, and librdkafka's mock cluster that `sluice dev` embeds.

mod support;

use std::time::{Duration, Instant};

use sluice::kafka::embedded::EmbeddedBroker;
use support::pipeline::{produce_requests, sluice_env, with_env, MockLlm, Topics, Worker};
use support::Tansu;

/// Requests in the burst: 4 slots x 50 ms take about 2.5 s to drain them.
const BURST: u64 = 200;

/// Runs a burst through one worker on `bootstrap` and checks the gauge against the
/// backlog the backend sees (requests produced minus those it has answered).
async fn lag_follows_the_backlog(bootstrap: &str, topics: &Topics) {
    let mock = MockLlm::start(4, 50).await;
    let env = with_env(
        &sluice_env(bootstrap, topics, &mock.url()),
        &[("SLUICE__WORKER__GROUP_PACING", "false")],
    );
    let mut worker = Worker::start(&env).await;
    worker.wait_ready(Duration::from_secs(30)).await;
    let lag = |worker: &Worker| {
        let worker = worker.admin.clone();
        async move {
            support::pipeline::scrape(&format!("{worker}/metrics"))
                .await
                .value("sluice_worker_lag", &[])
        }
    };
    assert_eq!(lag(&worker).await, 0.0, "nothing waits before the burst");

    produce_requests(bootstrap, &topics.request, BURST as usize, "lag-req").await;
    let produced = Instant::now();
    let mut samples = Vec::new();
    let mut most_seen = 0.0_f64;
    let drained = loop {
        let gauge = lag(&worker).await;
        let answered = mock.requests("ok").await;
        let backlog = BURST.saturating_sub(answered) as f64;
        most_seen = most_seen.max(gauge);
        samples.push((produced.elapsed().as_secs_f64(), gauge, backlog));
        // Give the gauge one housekeeping tick and one broker round to see the burst.
        if produced.elapsed() > Duration::from_millis(1500) && backlog > 0.0 {
            let tolerance = (backlog * 0.25).max(20.0);
            assert!(
                (gauge - backlog).abs() <= tolerance,
                "lag {gauge} while the backlog was {backlog}; samples (s, lag, backlog): {samples:?}"
            );
        }
        if answered >= BURST {
            break Instant::now();
        }
        assert!(
            produced.elapsed() < Duration::from_secs(60),
            "the burst did not drain: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        most_seen >= BURST as f64 * 0.5,
        "the gauge never showed the burst (most {most_seen}); samples: {samples:?}"
    );
    loop {
        let gauge = lag(&worker).await;
        if gauge == 0.0 {
            println!(
                "lag back to 0 {:?} after the last answer; during the burst (s, lag, backlog): {:?}",
                drained.elapsed(),
                samples.iter().step_by(4).collect::<Vec<_>>()
            );
            break;
        }
        assert!(
            drained.elapsed() < Duration::from_secs(3),
            "lag still {gauge} {:?} after the drain",
            drained.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_follows_the_backlog_on_tansu() {
    let tansu = Tansu::start();
    let topics = Topics::fresh();
    topics.create_on(&tansu).await;
    lag_follows_the_backlog(&tansu.bootstrap(), &topics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_follows_the_backlog_on_the_embedded_broker() {
    let broker = EmbeddedBroker::start(1).expect("starting the mock cluster");
    let topics = Topics::fresh();
    for (topic, partitions) in [(&topics.request, 4), (&topics.reply, 4), (&topics.dlq, 1)] {
        broker.create_topic(topic, partitions).unwrap();
    }
    lag_follows_the_backlog(broker.bootstrap_servers(), &topics).await;
}
