//! Several backends in one worker, on tansu with separate processes: each request goes to
//! a backend that serves its model (an alias to its model) and its reply says which
//! (`served_by`), a model served by two backends is split between them, a model nothing serves ends `rejected` with
//! `model_not_found` without a backend call, and a backend that is down holds back only
//! its own model's requests. A slow backend's backlog is forwarded to its pool's overflow
//! topic rather than stand in front of the other pool's requests, and is served from there
//! in full. Fallback chains serve a prompt too long for its model's context, and requests
//! for a model whose backend is down, by another model, unless a request opts out. The `openai` SDK lists the models and gets `NotFoundError` for one nothing
//! serves.

mod support;

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};
use support::pipeline::{
    collect_replies, produce_requests_with, reader_config, sluice_env, with_env, Ingress, MockLlm,
    Topics, Worker,
};
use support::{free_port, python, Tansu};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// The final replies to `ids` on the reply topic of `topics`, read until all came, for at
/// most `timeout`, and then `quiet` longer.
async fn replies_of(
    bootstrap: &str,
    topics: &Topics,
    ids: &[String],
    timeout: Duration,
    quiet: Duration,
) -> support::pipeline::Replies {
    collect_replies(reader_config(bootstrap), &topics.reply, ids, timeout, quiet).await
}

/// A request body for `model`.
fn body(model: &str) -> Value {
    json!({"body": {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}})
}

/// A TOML file naming each backend with the models it serves.
fn backends_file(
    backends: &[(&str, &str, &str)],
    aliases: &[(&str, &str)],
) -> tempfile::NamedTempFile {
    let mut text = String::new();
    for (name, url, models) in backends {
        text += &format!("[backends.{name}]\nurl = \"{url}\"\nmodels = [{models}]\n\n");
    }
    text += "[models.aliases]\n";
    for (alias, model) in aliases {
        text += &format!("{alias} = \"{model}\"\n");
    }
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

/// The roles' environment with the backends of `file` in place of `[backend]`.
fn backends_env(
    tansu: &Tansu,
    topics: &Topics,
    file: &tempfile::NamedTempFile,
) -> Vec<(String, String)> {
    let env: Vec<(String, String)> = sluice_env(&tansu.bootstrap(), topics, "unused")
        .into_iter()
        .filter(|(key, _)| key != "SLUICE__BACKEND__URL")
        .collect();
    with_env(&env, &[("SLUICE_CONFIG", file.path().to_str().unwrap())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_model_goes_to_the_backends_that_serve_it() {
    let tansu = Tansu::start();
    let topics = Topics::fresh();
    topics.create_on(&tansu).await;
    let big = MockLlm::start_paced(free_port(), 4, 40, 0).await;
    let small_a = MockLlm::start_paced(free_port(), 4, 40, 0).await;
    let small_b = MockLlm::start_paced(free_port(), 4, 40, 0).await;
    let file = backends_file(
        &[
            ("big", &big.url(), r#""llama-3-70b""#),
            ("small-a", &small_a.url(), r#""smollm2-*""#),
            ("small-b", &small_b.url(), r#""smollm2-135m""#),
        ],
        &[("fast", "smollm2-135m")],
    );
    let env = backends_env(&tansu, &topics, &file);
    let mut worker = Worker::start(&env).await;
    worker.wait_ready(Duration::from_secs(30)).await;

    let bootstrap = tansu.bootstrap();
    let request = &topics.request;
    let llama = produce_requests_with(&bootstrap, request, 30, "big", body("llama-3-70b")).await;
    let fast = produce_requests_with(&bootstrap, request, 60, "fast", body("fast")).await;
    let unknown = produce_requests_with(&bootstrap, request, 5, "nobody", body("gpt-5")).await;
    let ids: Vec<String> = [llama.clone(), fast.clone(), unknown.clone()].concat();
    let replies = replies_of(
        &bootstrap,
        &topics,
        &ids,
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await;
    assert!(replies.missing(&ids).is_empty(), "every request answered");
    for id in llama.iter().chain(&fast) {
        let reply = replies.first(id).expect("answered");
        assert_eq!(reply["status"], "ok", "{reply}");
    }
    for id in &llama {
        let served_by = &replies.first(id).unwrap()["served_by"];
        assert_eq!(
            *served_by,
            json!({"backend": "big", "model": "llama-3-70b"})
        );
    }
    let mut served_by_a = 0;
    for id in &fast {
        let reply = replies.first(id).unwrap();
        assert_eq!(
            reply["body"]["model"], "smollm2-135m",
            "the alias's model was called"
        );
        assert_eq!(reply["served_by"]["model"], "smollm2-135m", "{reply}");
        match reply["served_by"]["backend"].as_str() {
            Some("small-a") => served_by_a += 1,
            Some("small-b") => {}
            other => panic!("served by {other:?}, not the pool: {reply}"),
        }
    }
    for id in &unknown {
        let reply = replies.first(id).unwrap();
        assert_eq!(reply["status"], "rejected", "{reply}");
        assert_eq!(reply["error"]["type"], "model_not_found", "{reply}");
        assert_eq!(reply["attempts"], 0, "no backend was called");
        assert!(reply.get("served_by").is_none(), "{reply}");
    }
    // Each backend served only its models; the pool of two split the alias's requests.
    assert_eq!(big.requests("ok").await, 30);
    let (a, b) = (small_a.requests("ok").await, small_b.requests("ok").await);
    assert_eq!(a + b, 60);
    assert!(a >= 10 && b >= 10, "the pool split its work: {a} and {b}");
    assert_eq!(served_by_a, a, "the replies name the backend that answered");
    let metrics = worker.metrics().await;
    for backend in ["big", "small-a", "small-b"] {
        assert!(
            metrics
                .get("sluice_worker_concurrency_limit", &[("backend", backend)])
                .is_some(),
            "{backend}'s limit is reported under its name"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_down_holds_back_only_its_own_models_requests() {
    let tansu = Tansu::start();
    let topics = Topics::fresh();
    topics.create_on(&tansu).await;
    let up = MockLlm::start_paced(free_port(), 4, 20, 0).await;
    // Nothing listens on this port: every call is refused.
    let down = format!("http://127.0.0.1:{}", free_port());
    let file = backends_file(
        &[("up", &up.url(), r#""small""#), ("down", &down, r#""big""#)],
        &[],
    );
    let env = backends_env(&tansu, &topics, &file);
    let mut worker = Worker::start(&env).await;
    worker.wait_ready(Duration::from_secs(30)).await;

    let bootstrap = tansu.bootstrap();
    // The dead backend's requests come first, enough to fill what it may take at once.
    produce_requests_with(&bootstrap, &topics.request, 20, "big", body("big")).await;
    let small =
        produce_requests_with(&bootstrap, &topics.request, 40, "small", body("small")).await;
    let replies = replies_of(
        &bootstrap,
        &topics,
        &small,
        Duration::from_secs(30),
        Duration::from_millis(500),
    )
    .await;
    assert!(
        replies.missing(&small).is_empty(),
        "the live backend's requests were answered while the other backend is down"
    );
    assert_eq!(up.requests("ok").await, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_pools_backlog_waits_in_its_overflow_topic_not_in_front_of_the_other_pool() {
    let tansu = Tansu::start();
    let topics = Topics::fresh();
    topics.create_on(&tansu).await;
    // 2 calls at once of 500 ms: 60 requests take 15 s.
    let slow = MockLlm::start_paced(free_port(), 2, 500, 0).await;
    let fast = MockLlm::start_paced(free_port(), 8, 20, 0).await;
    let file = backends_file(
        &[
            ("slow", &slow.url(), r#""big""#),
            ("fast", &fast.url(), r#""small""#),
        ],
        &[],
    );
    let env = with_env(
        &backends_env(&tansu, &topics, &file),
        &[("SLUICE__WORKER__LANE_BUFFER", "8")],
    );
    let mut worker = Worker::start(&env).await;
    worker.wait_ready(Duration::from_secs(30)).await;

    let bootstrap = tansu.bootstrap();
    let big = produce_requests_with(&bootstrap, &topics.request, 60, "big", body("big")).await;
    let small =
        produce_requests_with(&bootstrap, &topics.request, 40, "small", body("small")).await;
    // Behind 52 slow requests in a buffer of 8, the fast pool's would wait ~13 s.
    let early = replies_of(
        &bootstrap,
        &topics,
        &small,
        Duration::from_secs(6),
        Duration::from_millis(200),
    )
    .await;
    assert!(
        early.missing(&small).is_empty(),
        "{} of the fast pool's requests were held behind the slow pool's",
        early.missing(&small).len()
    );
    let metrics = worker.metrics().await;
    let forwarded = metrics.value("sluice_worker_forwarded_total", &[]);
    assert!(
        forwarded >= 20.0,
        "the slow pool's overflow was forwarded: {forwarded}"
    );

    let all: Vec<String> = [big.clone(), small.clone()].concat();
    let replies = replies_of(
        &bootstrap,
        &topics,
        &all,
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await;
    assert!(replies.missing(&all).is_empty(), "nothing lost");
    for id in &all {
        let reply = replies.first(id).unwrap();
        assert_eq!(reply["status"], "ok", "{reply}");
    }
    for id in &big {
        assert_eq!(replies.first(id).unwrap()["served_by"]["backend"], "slow");
    }
    assert_eq!(
        slow.requests("ok").await,
        60,
        "each slow request called once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_chains_serve_what_the_named_model_cannot() {
    let tansu = Tansu::start();
    let topics = Topics::fresh();
    topics.create_on(&tansu).await;
    // A context of 20 tokens: a 400-character prompt (100 tokens) is refused.
    let big = MockLlm::start_with(free_port(), 4, 20, 0, &["--context-tokens", "20"]).await;
    let small = MockLlm::start_paced(free_port(), 8, 20, 0).await;
    let down_port = free_port();
    let down = format!("http://127.0.0.1:{down_port}");
    let mut file = backends_file(
        &[
            ("big", &big.url(), r#""big-m""#),
            ("down", &down, r#""down-m""#),
            ("small", &small.url(), r#""small-m""#),
        ],
        &[],
    );
    writeln!(
        file,
        "[models.fallbacks.big-m]\nto = [\"small-m\"]\non = [\"context_too_long\"]\n\
         [models.fallbacks.down-m]\nto = [\"small-m\"]\non = [\"retries_exhausted\", \"breaker_open\"]"
    )
    .unwrap();
    let env = with_env(
        &backends_env(&tansu, &topics, &file),
        &[
            ("SLUICE__BACKENDS__DOWN__MAX_ATTEMPTS", "2"),
            ("SLUICE__BACKENDS__DOWN__RETRY_INITIAL_BACKOFF_MS", "50"),
        ],
    );
    let mut worker = Worker::start(&env).await;
    worker.wait_ready(Duration::from_secs(30)).await;

    let bootstrap = tansu.bootstrap();
    let request = &topics.request;
    let long = json!({"body": {"model": "big-m", "max_tokens": 4,
        "messages": [{"role": "user", "content": "x".repeat(400)}]}});
    let too_long = produce_requests_with(&bootstrap, request, 5, "long", long).await;
    let fits = produce_requests_with(&bootstrap, request, 5, "fits", body("big-m")).await;
    let to_down = produce_requests_with(&bootstrap, request, 20, "down", body("down-m")).await;
    let mut kept = body("down-m");
    kept["fallback"] = json!(false);
    let not_moved = produce_requests_with(&bootstrap, request, 3, "kept", kept).await;
    let ids: Vec<String> = [too_long.clone(), fits.clone(), to_down.clone()].concat();
    let replies = replies_of(
        &bootstrap,
        &topics,
        &ids,
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await;
    let missing = replies.missing(&ids);
    assert!(
        missing.is_empty(),
        "every request answered; not: {missing:?}"
    );
    let served = |id: &String| replies.first(id).unwrap()["served_by"].clone();
    for id in &too_long {
        let reply = replies.first(id).unwrap();
        assert_eq!(reply["status"], "ok", "{reply}");
        assert_eq!(
            served(id),
            json!({"backend": "small", "model": "small-m", "fallback_from": "big-m",
                   "fallback_reason": "context_too_long"})
        );
        assert_eq!(
            reply["body"]["model"], "small-m",
            "the fallback model was called"
        );
    }
    for id in &fits {
        assert_eq!(served(id), json!({"backend": "big", "model": "big-m"}));
    }
    for id in &to_down {
        let reply = replies.first(id).unwrap();
        assert_eq!(reply["status"], "ok", "{reply}");
        assert_eq!(served(id)["backend"], "small", "{reply}");
        let reason = served(id)["fallback_reason"].clone();
        assert!(
            reason == "retries_exhausted" || reason == "breaker_open",
            "{reply}"
        );
    }
    // Those that asked not to fall back wait for their own backend, and it serves them.
    assert!(
        replies.missing(&not_moved).len() == not_moved.len(),
        "not served elsewhere meanwhile"
    );
    let _back = MockLlm::start_paced(down_port, 4, 20, 0).await;
    let later = replies_of(
        &bootstrap,
        &topics,
        &not_moved,
        Duration::from_secs(60),
        Duration::from_millis(200),
    )
    .await;
    assert!(
        later.missing(&not_moved).is_empty(),
        "served once it was back"
    );
    for id in &not_moved {
        let reply = later.first(id).unwrap();
        assert_eq!(reply["status"], "ok", "{reply}");
        assert_eq!(
            reply["served_by"],
            json!({"backend": "down", "model": "down-m"})
        );
    }
    assert_eq!(
        big.requests("invalid").await,
        5,
        "each long prompt tried once on big"
    );
    let metrics = worker.metrics().await;
    let context = metrics.value(
        "sluice_worker_fallbacks_total",
        &[
            ("from", "big-m"),
            ("to", "small-m"),
            ("reason", "context_too_long"),
        ],
    );
    assert_eq!(context, 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_the_big_model_cannot_meet_is_served_by_the_small_one() {
    let tansu = Tansu::start();
    let topics = Topics::fresh();
    topics.create_on(&tansu).await;
    // 2 calls at once of 300 ms: about 6.7 answers a second.
    let big = MockLlm::start_paced(free_port(), 2, 300, 0).await;
    let small = MockLlm::start_paced(free_port(), 8, 20, 0).await;
    let mut file = backends_file(
        &[
            ("big", &big.url(), r#""big-m""#),
            ("small", &small.url(), r#""small-m""#),
        ],
        &[],
    );
    writeln!(
        file,
        "[models.fallbacks.big-m]\nto = [\"small-m\"]\non = [\"deadline\"]"
    )
    .unwrap();
    let env = backends_env(&tansu, &topics, &file);
    let mut worker = Worker::start(&env).await;
    worker.wait_ready(Duration::from_secs(30)).await;

    let bootstrap = tansu.bootstrap();
    let request = &topics.request;
    // 30 without a deadline: 4.5 s of work for the big model, and its pace measured.
    let backlog = produce_requests_with(&bootstrap, request, 30, "backlog", body("big-m")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut hurried = body("big-m");
    hurried["deadline_ms"] = json!(now_ms() + 1_500);
    let urgent = produce_requests_with(&bootstrap, request, 10, "urgent", hurried).await;
    let ids: Vec<String> = [backlog.clone(), urgent.clone()].concat();
    let replies = replies_of(
        &bootstrap,
        &topics,
        &ids,
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await;
    assert!(replies.missing(&ids).is_empty(), "every request answered");
    // None expires behind the backlog: most go to the small model at once (the wait
    // estimate is rough: a few may still be started in time by the big one).
    let mut fell_back = 0;
    for id in &urgent {
        let reply = replies.first(id).unwrap();
        assert_eq!(
            reply["status"], "ok",
            "not expired behind the backlog: {reply}"
        );
        if reply["served_by"]["backend"] == "small" {
            assert_eq!(
                reply["served_by"],
                json!({"backend": "small", "model": "small-m", "fallback_from": "big-m",
                       "fallback_reason": "deadline"})
            );
            fell_back += 1;
        }
    }
    assert!(fell_back >= 5, "only {fell_back} of 10 fell back");
    for id in &backlog {
        let reply = replies.first(id).unwrap();
        assert_eq!(
            reply["served_by"],
            json!({"backend": "big", "model": "big-m"}),
            "{reply}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_lists_the_models_and_is_refused_one_nothing_serves() {
    let tansu = Tansu::start();
    let topics = Topics::fresh();
    topics.create_on(&tansu).await;
    let big = MockLlm::start_paced(free_port(), 4, 5, 0).await;
    let small = MockLlm::start_paced(free_port(), 4, 5, 0).await;
    let file = backends_file(
        &[
            ("big", &big.url(), r#""llama-3-70b""#),
            ("small", &small.url(), r#""smollm2-135m", "smollm2-*""#),
        ],
        &[("fast", "smollm2-135m")],
    );
    let env = backends_env(&tansu, &topics, &file);
    let ingress = Ingress::start(&env).await;
    let mut worker = Worker::start(&env).await;
    worker.wait_ready(Duration::from_secs(30)).await;

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/openai_models.py"
    );
    let output = tokio::process::Command::new(python())
        .args([script, &ingress.url])
        .output()
        .await
        .expect("running openai_models.py");
    assert!(
        output.status.success(),
        "openai_models.py failed:\n{}\n--- ingress ---\n{}",
        String::from_utf8_lossy(&output.stderr),
        ingress.process.logs()
    );
    let found: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    assert_eq!(
        found["models"],
        json!(["fast", "llama-3-70b", "smollm2-135m"]),
        "served by name and aliases; not the pattern"
    );
    assert_eq!(found["alias_model"], "smollm2-135m", "{found}");
    assert_eq!(found["alias_backend"], "small", "{found}");
    assert_eq!(found["unknown"]["status"], 404, "{found}");
    assert_eq!(found["unknown"]["code"], "model_not_found", "{found}");
    assert_eq!(small.requests("ok").await, 1);
    assert_eq!(big.requests("ok").await, 0);
}
