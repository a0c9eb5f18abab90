//! Workers crash: 5,000 requests through the ingress to two workers, one of which is
//! `kill -9`ed and restarted every few seconds. Nothing may be lost; re-delivery may
//! write a second final reply for an id (counted, and never surfaced by the ingress) and
//! call the backend again (counted from the mock's own metrics).

use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::support::pipeline::{get_request, submit, Pipeline, Worker};

const REQUESTS: usize = 5_000;
/// Time between kills; each restarted worker rejoins within about 2 s.
const KILL_EVERY: Duration = Duration::from_secs(4);
/// Kills stop once the backend has served this share of the requests (or after
/// `MAX_KILLS`), so the last restarted workers can finish.
const STOP_KILLING_AT: f64 = 0.9;
const MAX_KILLS: usize = 8;
const MIN_KILLS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about a minute of load; run by `make test-chaos`"]
async fn workers_killed_repeatedly_lose_nothing() {
    let _serial = crate::serial().await;
    let started = Instant::now();
    // 16 slots x 80 ms: about 200 calls/s, so the run spans several kills.
    let mut pipeline = Pipeline::start_with(16, 80, 2, &[]).await;

    let submitting = tokio::spawn({
        let (http, url) = (pipeline.http.clone(), pipeline.ingress.url.clone());
        async move { submit(&http, &url, REQUESTS).await }
    });
    let mut kills = 0;
    let mut victim = 0;
    let stop_at = (REQUESTS as f64 * STOP_KILLING_AT) as u64;
    loop {
        tokio::time::sleep(KILL_EVERY).await;
        if kills >= MAX_KILLS || pipeline.mock.requests("ok").await >= stop_at {
            break;
        }
        let worker = &mut pipeline.workers[victim].process;
        worker.kill();
        worker.wait_exit(Duration::from_secs(10)).await;
        kills += 1;
        pipeline.workers[victim] = Worker::start(&pipeline.env).await;
        victim = 1 - victim;
    }
    let killing_took = started.elapsed();
    let ids = submitting.await.expect("every submission got 202");

    let replies = pipeline
        .collect_replies(&ids, Duration::from_secs(180), Duration::from_secs(5))
        .await;
    let lost = replies.missing(&ids).len();
    let duplicates = replies.duplicates();
    let ids_with_duplicates = replies.by_id.values().filter(|c| c.len() > 1).count();
    let not_ok: Vec<String> = replies
        .by_id
        .values()
        .flatten()
        .filter(|r| r["status"] != "ok")
        .map(|r| r.to_string())
        .take(5)
        .collect();

    // Through the ingress each id shows one reply: the first one on the topic.
    let (http, base) = (&pipeline.http, &pipeline.ingress.url);
    let replies_ref = &replies;
    let surfaced: usize = futures::stream::iter(&ids)
        .map(|id| async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (status, body) = get_request(http, base, id).await;
                assert_eq!(status, 200, "GET {id}: {body}");
                if body["status"] != "queued" || Instant::now() >= deadline {
                    let first = replies_ref.first(id);
                    return usize::from(first != Some(&body["reply"]));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<usize>>()
        .await
        .into_iter()
        .sum();
    let ingress_duplicates = pipeline
        .ingress
        .metrics()
        .await
        .value("sluice_ingress_duplicate_replies_total", &[]) as usize;
    let backend_ok = pipeline.mock.requests("ok").await;
    let backend_cancelled = pipeline.mock.requests("cancelled").await;
    let repeated_calls = backend_ok.saturating_sub(REQUESTS as u64);

    eprintln!(
        "crash test: {REQUESTS} requests, {kills} kills (every {KILL_EVERY:?}, 2 workers), \
         lost {lost}, duplicate final replies on the topic {duplicates} (over {ids_with_duplicates} ids), \
         duplicates surfaced by GET {surfaced}, ingress counted {ingress_duplicates} duplicates, \
         backend calls ok {backend_ok} (repeated {repeated_calls}), cancelled by the kills {backend_cancelled}; \
         kills over after {:.1} s, all done in {:.1} s",
        killing_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(lost, 0, "requests without a final reply");
    assert!(not_ok.is_empty(), "replies other than ok: {not_ok:?}");
    assert!(
        kills >= MIN_KILLS,
        "only {kills} kills before the backlog drained; the test proves little"
    );
    assert_eq!(surfaced, 0, "GET showed a reply other than the first");
    assert_eq!(
        ingress_duplicates, duplicates,
        "the ingress counts every duplicate final reply it read"
    );
    assert!(
        backend_ok >= REQUESTS as u64,
        "every request was served at least once"
    );
}
