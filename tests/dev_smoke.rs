//! `sluice dev` as a user first runs it: one process with the embedded broker and the
//! mock backend prints a ready line and curl examples, answers a request end to end and
//! stops cleanly on SIGTERM.

mod support;

use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use support::SluiceProcess;

/// Waits until the process output contains `needle`; panics if it exits or times out.
async fn wait_for_output(sluice: &mut SluiceProcess, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let logs = sluice.logs();
        if logs.contains(needle) {
            return logs;
        }
        if let Some(status) = sluice.try_exit_status() {
            panic!("sluice dev exited ({status}) before printing {needle:?}:\n{logs}");
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} within {timeout:?}:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_a_request_end_to_end_and_stops_on_sigterm() {
    let started = Instant::now();
    let listen = format!("127.0.0.1:{}", support::free_port());
    let admin = format!("127.0.0.1:{}", support::free_port());
    let kafka = format!("127.0.0.1:{}", support::free_port());
    // The ingress address comes from the environment, as in every other role; the
    // worker's from its flag.
    let mut dev = SluiceProcess::spawn(
        [
            "dev",
            "--kafka-listen",
            &kafka,
            "--admin-listen",
            &admin,
            "--mock-latency-ms",
            "20",
            "--mock-per-token-ms",
            "1",
        ],
        [("SLUICE__INGRESS__LISTEN", listen.as_str())],
    );

    let logs = wait_for_output(&mut dev, "sluice dev ready:", Duration::from_secs(30)).await;
    let ready_line = logs
        .lines()
        .find(|line| line.contains("sluice dev ready:"))
        .expect("the line just found");
    assert!(
        ready_line.contains(&format!("ingress http://{listen}")),
        "the ready line names the listen address: {ready_line}"
    );
    assert!(
        ready_line.contains(&format!("embedded in-memory broker at {kafka}")),
        "{ready_line}"
    );
    assert!(
        ready_line.contains("mock-llm at http://127.0.0.1:"),
        "{ready_line}"
    );
    assert!(
        logs.contains(&format!("curl -s -X POST http://{listen}/v1/requests")),
        "the curl example posts to the listen address:\n{logs}"
    );
    assert!(
        logs.contains(&format!("curl -s http://{listen}/v1/requests/<id>")),
        "the curl example reads from the listen address:\n{logs}"
    );

    // "ready" means ready: both roles answer /readyz right away.
    let client = reqwest::Client::new();
    for url in [
        format!("http://{listen}/readyz"),
        format!("http://{admin}/readyz"),
    ] {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url} after the ready line");
    }

    // The OpenAI-style call the ready line prints first: the completion itself.
    assert!(
        logs.contains(&format!("curl -s http://{listen}/v1/chat/completions")),
        "the first example is the OpenAI route:\n{logs}"
    );
    let completion: Value = client
        .post(format!("http://{listen}/v1/chat/completions"))
        .json(&json!({"model": "mock", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        completion["choices"][0]["message"]["content"], "the quick brown fox",
        "{completion}"
    );

    // The request the printed curl example sends.
    let response = client
        .post(format!("http://{listen}/v1/requests"))
        .json(&json!({
            "body": {
                "model": "mock",
                "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": 8
            }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["status"], "queued", "{accepted}");
    let id = accepted["id"].as_str().expect("an id").to_string();

    let deadline = Instant::now() + Duration::from_secs(15);
    let done = loop {
        let response = client
            .get(format!("http://{listen}/v1/requests/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        if body["status"] != "queued" {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "still queued after 15 s:\n{}",
            dev.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["status"], "ok", "{done}");
    let reply = &done["reply"];
    assert_eq!(reply["id"], id.as_str(), "{done}");
    assert_eq!(reply["attempts"], 1, "{done}");
    assert_eq!(reply["body"]["object"], "chat.completion", "{done}");
    assert_eq!(reply["body"]["model"], "mock", "{done}");
    // The mock generates exactly max_tokens words from a fixed cycle.
    assert_eq!(
        reply["body"]["choices"][0]["message"]["content"],
        "the quick brown fox jumps over lazy dogs",
        "{done}"
    );
    assert_eq!(reply["body"]["choices"][0]["finish_reason"], "length");
    assert_eq!(reply["usage"]["completion_tokens"], 8, "{done}");
    // The mock flags reach the mock: 20 ms + 8 x 1 ms of service time, where the
    // defaults (200 ms + 8 x 5 ms) would take at least 240 ms.
    let backend_ms = reply["timing"]["backend_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("timing.backend_ms: {done}"));
    assert!(
        (28..240).contains(&backend_ms),
        "backend_ms {backend_ms}: {done}"
    );

    // Straight to Kafka at the address the ready line printed, as the README shows.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka)
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    let direct = "direct-to-kafka-1";
    let value = json!({"v": 1, "id": direct, "body": {"model": "mock",
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}});
    producer
        .send(
            FutureRecord::to("sluice.requests")
                .key(direct)
                .payload(&value.to_string()),
            Duration::from_secs(10),
        )
        .await
        .expect("the embedded broker takes a write at its fixed address");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = client
            .get(format!("http://{listen}/v1/requests/{direct}"))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["status"], "ok", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reply to the request written straight to Kafka:\n{}",
            dev.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stopping = Instant::now();
    dev.terminate();
    let status = dev.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "exit {status}\n{}", dev.logs());
    // The ports are released with the process.
    std::net::TcpListener::bind(&listen).expect("the ingress port is free after exit");
    std::net::TcpListener::bind(&admin).expect("the admin port is free after exit");
    std::net::TcpListener::bind(&kafka).expect("the Kafka port is free after exit");
    eprintln!(
        "dev smoke took {:?} (backend {backend_ms} ms, shutdown {:?})",
        started.elapsed(),
        stopping.elapsed()
    );
}
