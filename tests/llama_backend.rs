//! Requests through `sluice ingress` and `sluice worker` (separate processes, tansu in
//! between) to a real llama.cpp server with SmolLM2-135M: one through sluice's own API,
//! and the official `openai` Python SDK through the OpenAI front door, sync and streamed.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::pipeline::{sluice_env, with_env, Ingress, Topics, Worker};
use support::{LlamaServer, SluiceProcess, Tansu};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_reaches_llama_cpp_and_its_completion_comes_back() {
    let started = Instant::now();
    let llama = LlamaServer::start(1).await;
    let tansu = Tansu::start();
    let request_topic = support::unique_name("llama-requests");
    let reply_topic = support::unique_name("llama-replies");
    let dlq_topic = support::unique_name("llama-dlq");
    for topic in [&request_topic, &reply_topic, &dlq_topic] {
        tansu.create_topic(topic, 1).await;
    }

    let ingress_port = support::free_port();
    let admin_port = support::free_port();
    let env: Vec<(String, String)> = [
        ("SLUICE__KAFKA__BOOTSTRAP_SERVERS", tansu.bootstrap()),
        ("SLUICE__KAFKA__REQUEST_TOPIC", request_topic.clone()),
        ("SLUICE__KAFKA__REPLY_TOPIC", reply_topic.clone()),
        ("SLUICE__KAFKA__DLQ_TOPIC", dlq_topic.clone()),
        (
            "SLUICE__KAFKA__GROUP_ID",
            support::unique_name("llama-workers"),
        ),
        ("SLUICE__KAFKA__CLIENT__SESSION_TIMEOUT_MS", "2000".into()),
        ("SLUICE__KAFKA__CLIENT__HEARTBEAT_INTERVAL_MS", "300".into()),
        (
            "SLUICE__INGRESS__LISTEN",
            format!("127.0.0.1:{ingress_port}"),
        ),
        (
            "SLUICE__WORKER__ADMIN_LISTEN",
            format!("127.0.0.1:{admin_port}"),
        ),
        ("SLUICE__BACKEND__URL", llama.base_url()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut ingress = SluiceProcess::spawn(["ingress"], env.clone());
    let mut worker = SluiceProcess::spawn(["worker"], env);
    let base = format!("http://127.0.0.1:{ingress_port}");
    ingress
        .wait_for_http_ok(&format!("{base}/readyz"), Duration::from_secs(20))
        .await;
    worker
        .wait_for_http_ok(
            &format!("http://127.0.0.1:{admin_port}/readyz"),
            Duration::from_secs(20),
        )
        .await;

    let client = reqwest::Client::new();
    let response = client
        .post(format!("{base}/v1/requests"))
        .json(&json!({
            "body": {
                "model": "smollm2",
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "temperature": 0,
                "max_tokens": 16
            }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let id = accepted["id"].as_str().expect("an id").to_string();

    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let body: Value = client
            .get(format!("{base}/v1/requests/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["status"] != "queued" {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "still queued after 60 s\n--- worker ---\n{}\n--- llama ---\n{}",
            worker.logs(),
            llama.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    assert_eq!(done["status"], "ok", "{done}");
    let reply = &done["reply"];
    assert_eq!(reply["id"], id.as_str(), "{done}");
    assert_eq!(reply["status"], "ok", "{done}");
    assert_eq!(reply["attempts"], 1, "{done}");
    assert_eq!(reply["body"]["object"], "chat.completion", "{done}");
    let content = reply["body"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("a text completion: {done}"));
    assert!(!content.trim().is_empty(), "{done}");
    let completion_tokens = reply["usage"]["completion_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("usage.completion_tokens: {done}"));
    assert!(
        (1..=16).contains(&completion_tokens),
        "max_tokens 16 bounds the completion: {done}"
    );
    assert!(
        reply["usage"]["prompt_tokens"].as_u64().unwrap_or(0) > 0,
        "{done}"
    );
    // sluice's usage is the backend's own.
    assert_eq!(
        reply["usage"]["completion_tokens"],
        reply["body"]["usage"]["completion_tokens"]
    );

    ingress.terminate();
    worker.terminate();
    let ingress_status = ingress.wait_exit(Duration::from_secs(20)).await;
    let worker_status = worker.wait_exit(Duration::from_secs(20)).await;
    assert!(ingress_status.success(), "ingress exit {ingress_status}");
    assert!(worker_status.success(), "worker exit {worker_status}");
    eprintln!(
        "llama test took {:?}; completion {content:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_works_through_the_front_door_as_against_llama_cpp_itself() {
    let llama = LlamaServer::start(2).await;
    let tansu = Tansu::start();
    let topics = Topics::fresh();
    topics.create_on(&tansu).await;
    let (key, tight_key) = ("sk-sdk-test", "sk-tight-test");
    let hash = |key: &str| sluice::config::tenants::hash_key(key);
    let env = with_env(
        &sluice_env(&tansu.bootstrap(), &topics, &llama.base_url()),
        &[
            ("SLUICE__INGRESS__AUTH", "true"),
            ("SLUICE__INGRESS__TENANTS__SDK__API_KEY_SHA256", &hash(key)),
            (
                "SLUICE__INGRESS__TENANTS__TIGHT__API_KEY_SHA256",
                &hash(tight_key),
            ),
            ("SLUICE__INGRESS__TENANTS__TIGHT__MAX_QUEUED", "1"),
        ],
    );
    let ingress = Ingress::start(&env).await;
    let mut worker = Worker::start(&env).await;
    worker.wait_ready(Duration::from_secs(30)).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/openai_sdk.py");
    let output = tokio::process::Command::new(support::python())
        .args([script, &ingress.url, &llama.base_url(), key, tight_key])
        .output()
        .await
        .expect("running openai_sdk.py");
    assert!(
        output.status.success(),
        "openai_sdk.py failed:\n{}\n--- worker ---\n{}\n--- ingress ---\n{}",
        String::from_utf8_lossy(&output.stderr),
        worker.process.logs(),
        ingress.process.logs()
    );
    let found: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    eprintln!("openai SDK through sluice: {found}");
    let direct = found["direct_content"]
        .as_str()
        .expect("llama.cpp answered");
    assert!(!direct.trim().is_empty(), "{found}");
    assert_eq!(
        found["sync_content"], direct,
        "sync: the same text as llama.cpp's"
    );
    assert!(
        found["sync_request_id"].is_string(),
        "x-request-id: {found}"
    );
    assert_eq!(found["stream_content"], direct, "streamed: the same text");
    assert!(
        found["stream_chunks"].as_u64().unwrap_or(0) >= 2,
        "the stream came in pieces, not as one: {found}"
    );
    assert_eq!(found["bad_request"]["status"], 400, "{found}");
    assert!(
        found["bad_request"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("Expected 'content' to be a string or an array"),
        "llama.cpp's own message: {found}"
    );
    assert_eq!(found["bad_key"]["status"], 401, "{found}");
    let limited = &found["rate_limited"];
    assert_eq!(limited["status"], 429, "{found}");
    assert_eq!(limited["retry_after"], "1", "{found}");
    // Three tries, with the SDK's two waits of about Retry-After's 1 s between them.
    let took = limited["took_s"].as_f64().unwrap_or(0.0);
    assert!(
        (1.8..20.0).contains(&took),
        "the SDK retried, honouring Retry-After, before giving up: {took} s"
    );
}
