//! `sluice loadgen --json` as a process against the whole pipeline (tansu, mock-llm,
//! ingress, worker as processes): every request answered once, utilisation measured, the
//! run drawn with `--plot`;
//! the `--kafka` mode, a second run on the same reply topic ignoring the first run's
//! replies; and the non-zero exit status when replies are lost.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{SluiceProcess, Tansu};

/// Broker, fresh topics, mock backend, ingress and worker.
struct Stack {
    _tansu: Tansu,
    env: Vec<(String, String)>,
    _mock: SluiceProcess,
    mock_url: String,
    _ingress: SluiceProcess,
    ingress_url: String,
    worker: Option<SluiceProcess>,
}

impl Stack {
    async fn start(with_worker: bool) -> Stack {
        let tansu = Tansu::start();
        let (request, reply, dlq) = (
            support::unique_name("req"),
            support::unique_name("rep"),
            support::unique_name("dlq"),
        );
        tansu.create_topic(&request, 4).await;
        tansu.create_topic(&reply, 4).await;
        tansu.create_topic(&dlq, 1).await;

        let mock_port = support::free_port();
        let mock_url = format!("http://127.0.0.1:{mock_port}");
        let mut mock = SluiceProcess::spawn(
            [
                "mock-llm",
                "--listen",
                &format!("127.0.0.1:{mock_port}"),
                "--slots",
                "32",
                "--latency-ms",
                "10",
                "--per-token-ms",
                "1",
            ],
            Vec::<(String, String)>::new(),
        );
        mock.wait_for_http_ok(&format!("{mock_url}/healthz"), Duration::from_secs(20))
            .await;

        let mut env: Vec<(String, String)> = vec![
            ("SLUICE__KAFKA__BOOTSTRAP_SERVERS".into(), tansu.bootstrap()),
            ("SLUICE__KAFKA__REQUEST_TOPIC".into(), request),
            ("SLUICE__KAFKA__REPLY_TOPIC".into(), reply),
            ("SLUICE__KAFKA__DLQ_TOPIC".into(), dlq),
            (
                "SLUICE__KAFKA__GROUP_ID".into(),
                support::unique_name("grp"),
            ),
            ("SLUICE__BACKEND__URL".into(), mock_url.clone()),
            ("SLUICE__INGRESS__ENQUEUE_TIMEOUT_MS".into(), "5000".into()),
        ];
        for (key, value) in support::TEST_GROUP_PROPERTIES {
            let key = key.replace('.', "_").to_uppercase();
            env.push((format!("SLUICE__KAFKA__CLIENT__{key}"), value.to_string()));
        }
        let ingress_port = support::free_port();
        let ingress_url = format!("http://127.0.0.1:{ingress_port}");
        let mut ingress_env = env.clone();
        ingress_env.push((
            "SLUICE__INGRESS__LISTEN".into(),
            format!("127.0.0.1:{ingress_port}"),
        ));
        let mut ingress = SluiceProcess::spawn(["ingress"], ingress_env);
        ingress
            .wait_for_http_ok(&format!("{ingress_url}/readyz"), Duration::from_secs(30))
            .await;
        let worker = if with_worker {
            let admin_port = support::free_port();
            let mut worker_env = env.clone();
            worker_env.push((
                "SLUICE__WORKER__ADMIN_LISTEN".into(),
                format!("127.0.0.1:{admin_port}"),
            ));
            let mut worker = SluiceProcess::spawn(["worker"], worker_env);
            worker
                .wait_for_http_ok(
                    &format!("http://127.0.0.1:{admin_port}/readyz"),
                    Duration::from_secs(30),
                )
                .await;
            Some(worker)
        } else {
            None
        };
        Stack {
            _tansu: tansu,
            env,
            _mock: mock,
            mock_url,
            _ingress: ingress,
            ingress_url,
            worker,
        }
    }

    /// Runs `sluice loadgen <args> --json` to the end; returns its exit code and report.
    async fn loadgen(&self, args: &[&str]) -> (i32, Value) {
        let mut command = tokio::process::Command::new(SluiceProcess::BIN);
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if name.starts_with("SLUICE__") || name.starts_with("OTEL_") {
                command.env_remove(&key);
            }
        }
        command
            .arg("loadgen")
            .args(args)
            .args(["--json", "--backend-metrics"])
            .arg(format!("{}/metrics", self.mock_url))
            .envs(self.env.iter().cloned())
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(180), command.output())
            .await
            .expect("loadgen finishes within 3 minutes")
            .expect("running sluice loadgen");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!("loadgen printed no JSON ({e}):\n{stdout}\n--- stderr ---\n{stderr}")
        });
        eprintln!("loadgen {args:?}: {report}");
        (output.status.code().unwrap_or(-1), report)
    }
}

/// Every request completed ok exactly once and the backend did the work.
fn assert_clean(report: &Value, sent: u64) {
    assert_eq!(report["sent"], sent, "{report}");
    assert_eq!(report["accepted"], sent, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["completed"]["ok"], sent, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["timed_out"], false, "{report}");
    assert_eq!(report["latency_ms"]["count"], sent, "{report}");
    assert!(
        report["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(report["queue_wait_ms"]["count"], sent, "{report}");
    let backend = &report["backend"];
    assert_eq!(backend["calls"], sent as f64, "{report}");
    assert_eq!(backend["overload_responses"], 0.0, "{report}");
    assert_eq!(backend["slots"], 32.0, "{report}");
    assert!(backend["utilisation"].as_f64().unwrap() > 0.0, "{report}");
    assert!(backend["busy_seconds"].as_f64().unwrap() > 0.0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_ingress_every_request_completes_once() {
    let stack = Stack::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("run.svg");
    let (code, report) = stack
        .loadgen(&[
            "--plot",
            plot.to_str().unwrap(),
            "--ingress",
            &stack.ingress_url,
            "--requests",
            "200",
            "--rate",
            "400",
            "--max-tokens",
            "8",
            "--timeout",
            "60s",
        ])
        .await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["mode"], "ingress");
    assert!(
        report["refused"].as_object().unwrap().is_empty(),
        "{report}"
    );
    assert_clean(&report, 200);
    assert!(report["direct"].is_null());
    // The picture has all six lines, each with points (the legend marks are the others).
    let svg = std::fs::read_to_string(&plot).expect("--plot wrote its file");
    assert!(svg.starts_with("<svg"), "{svg:.80}");
    for label in [
        "requests arriving /s",
        "backend calls /s",
        "backlog in Kafka",
    ] {
        assert!(svg.contains(label), "no {label:?} in the plot");
    }
    assert_eq!(svg.matches(r#"stroke-width="2""#).count(), 12, "{svg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn straight_to_kafka_twice_on_the_same_reply_topic() {
    let stack = Stack::start(true).await;
    let args = [
        "--kafka",
        "--requests",
        "200",
        "--max-tokens",
        "8",
        "--timeout",
        "60s",
    ];
    let (code, first) = stack.loadgen(&args).await;
    assert_eq!(code, 0, "{first}");
    assert_eq!(first["mode"], "kafka");
    assert_clean(&first, 200);
    // The second run must not count the first run's replies as its own, nor miss any of
    // its own (tansu's offset lookups err low; the ledger ignores older ids).
    let (code, second) = stack.loadgen(&args).await;
    assert_eq!(code, 0, "{second}");
    assert_clean(&second, 200);
    assert!(
        second["ignored_replies"].as_u64().unwrap() <= 200,
        "{second}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_worker_every_accepted_request_is_lost_and_the_exit_is_non_zero() {
    let stack = Stack::start(false).await;
    assert!(stack.worker.is_none());
    let (code, report) = stack
        .loadgen(&["--kafka", "--requests", "20", "--timeout", "2s"])
        .await;
    assert_eq!(code, 3, "{report}");
    assert_eq!(report["accepted"], 20, "{report}");
    assert_eq!(report["lost"], 20, "{report}");
    assert_eq!(report["timed_out"], true, "{report}");
    assert_eq!(report["backend"]["calls"], 0.0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_baseline_counts_overloads_without_sluice() {
    // 4 slots that refuse above capacity, hit at ~10x their ~200 req/s capacity.
    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut mock = SluiceProcess::spawn(
        [
            "mock-llm",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--slots",
            "4",
            "--latency-ms",
            "20",
            "--per-token-ms",
            "0",
            "--overflow",
            "reject",
        ],
        Vec::<(String, String)>::new(),
    );
    mock.wait_for_http_ok(&format!("{url}/healthz"), Duration::from_secs(20))
        .await;
    let output = tokio::process::Command::new(SluiceProcess::BIN)
        .args([
            "loadgen",
            "--direct",
            &url,
            "--rate",
            "2000",
            "--duration",
            "500ms",
        ])
        .args(["--json", "--backend-metrics", &format!("{url}/metrics")])
        .env_remove("SLUICE__KAFKA__BOOTSTRAP_SERVERS")
        .kill_on_drop(true)
        .output()
        .await
        .expect("running sluice loadgen --direct");
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert_eq!(report["mode"], "direct");
    assert_eq!(report["sent"], 1000, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    let ok = report["completed"]["ok"].as_u64().unwrap();
    let overloaded = report["failed"]["429"].as_u64().unwrap_or(0);
    assert_eq!(ok + overloaded, 1000, "every failure is a 429: {report}");
    assert!(overloaded > 500, "10x capacity is mostly refused: {report}");
    assert_eq!(
        report["direct"]["calls"], 1000,
        "no retries by default: {report}"
    );
    assert_eq!(
        report["backend"]["overload_responses"], overloaded as f64,
        "{report}"
    );
    assert!(report["queue_wait_ms"].is_null());
}
