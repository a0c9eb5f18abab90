//! The alert rules in deploy/prometheus/ against real Prometheus tools (Debian's
//! `prometheus` package): promtool checks them and runs their unit tests, and a real
//! Prometheus server scraping a running ingress and worker loads them and finds every
//! series they read, so a renamed metric fails here rather than in an operator's pager.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{free_port, SluiceProcess};

const RULES: &str = "deploy/prometheus/alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/alerts.test.yml";

fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "{name} not found: install Debian's prometheus package \
             (apt-get install prometheus; scripts/test-peers.sh does it when run as root)"
        )
    })
}

fn promtool(args: &[&str]) {
    let output = Command::new(tool("promtool"))
        .args(args)
        .output()
        .expect("running promtool");
    assert!(
        output.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_alert_rules_are_valid_and_their_unit_tests_pass() {
    promtool(&["check", "rules", RULES]);
    promtool(&["test", "rules", RULE_TESTS]);
}

/// Every metric name the rules read or their runbooks name (histograms by their base
/// name).
fn metric_names(rules: &str) -> Vec<String> {
    let mut names: Vec<String> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("sluice_") || *word == "up")
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Prometheus killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(ingress: &str, worker: &str) -> Prometheus {
        let data = tempfile::tempdir().expect("a temporary directory");
        let rules = Path::new(RULES).canonicalize().expect("the rules file");
        let config = data.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [{rules:?}]\n\
                 scrape_configs:\n\
                 - job_name: sluice-ingress\n  static_configs: [{{targets: [\"{ingress}\"]}}]\n\
                 - job_name: sluice-worker\n  static_configs: [{{targets: [\"{worker}\"]}}]\n"
            ),
        )
        .expect("writing prometheus.yml");
        let port = free_port();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _data: data,
        }
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.url), query).ok()?;
        let response = reqwest::Client::new().get(url).send().await.ok()?;
        let body: Value = response.json().await.ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    async fn instant(&self, query: &str) -> Vec<Value> {
        self.api("/api/v1/query", &[("query", query)])
            .await
            .and_then(|data| data["result"].as_array().cloned())
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_finds_every_series_the_rules_read() {
    let (ingress, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut dev = SluiceProcess::spawn(
        [
            "dev",
            "--kafka-listen",
            "127.0.0.1:0",
            "--listen",
            &ingress,
            "--admin-listen",
            &admin,
            "--mock-latency-ms",
            "5",
        ],
        std::iter::empty::<(&str, &str)>(),
    );
    dev.wait_for_http_ok(&format!("http://{admin}/readyz"), Duration::from_secs(30))
        .await;
    dev.wait_for_http_ok(&format!("http://{ingress}/readyz"), Duration::from_secs(30))
        .await;
    // One request end to end, so the histograms have series.
    let client = reqwest::Client::new();
    let accepted: Value = client
        .post(format!("http://{ingress}/v1/requests"))
        .json(&serde_json::json!({"body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}}))
        .send()
        .await
        .expect("the ingress answers")
        .json()
        .await
        .expect("a JSON answer");
    let id = accepted["id"].as_str().expect("accepted").to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status: Value = client
            .get(format!("http://{ingress}/v1/requests/{id}"))
            .send()
            .await
            .expect("the ingress answers")
            .json()
            .await
            .expect("a JSON answer");
        if status["status"] == "ok" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reply: {status}\n{}",
            dev.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let prometheus = Prometheus::start(&ingress, &admin);
    let rules = std::fs::read_to_string(RULES).expect("the rules file");
    let names = metric_names(&rules);
    assert!(names.len() >= 8, "the rules read {names:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let mut missing = Vec::new();
        for name in &names {
            if prometheus
                .instant(&format!(
                    "count({{__name__=~\"{name}(_bucket|_count|_sum)?\"}})"
                ))
                .await
                .is_empty()
            {
                missing.push(name.clone());
            }
        }
        let up = prometheus.instant("up == 1").await.len();
        if missing.is_empty() && up == 2 || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "series the alert rules read that a running ingress and worker do not export: {missing:?}"
    );

    // The server loaded every rule and evaluates each without error.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let groups = prometheus
            .api("/api/v1/rules", &[])
            .await
            .and_then(|data| data["groups"].as_array().cloned())
            .unwrap_or_default();
        let rules: Vec<Value> = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let healthy = rules.iter().filter(|r| r["health"] == "ok").count();
        if rules.len() == 9 && healthy == 9 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules not all loaded and healthy: {rules:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Nothing is wrong with this pipeline, so nothing fires.
    let firing = prometheus.instant("ALERTS{alertstate=\"firing\"}").await;
    assert!(
        firing.is_empty(),
        "alerts firing on a healthy pipeline: {firing:#?}"
    );
    dev.terminate();
    dev.wait_exit(Duration::from_secs(20)).await;
}
