//! The alert rules in deploy/prometheus/ and the Grafana dashboard in deploy/grafana/
//! against real Prometheus tools (Debian's `prometheus` package): promtool checks the rules
//! and runs their unit tests, and a real Prometheus server scraping a running ingress and
//! worker loads the rules, finds every series the rules and the dashboard read, and runs
//! every query of the dashboard, so a renamed metric fails here rather than in an
//! operator's pager or on a blank panel.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{free_port, SluiceProcess};

const RULES: &str = "deploy/prometheus/alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/alerts.test.yml";
const DASHBOARD: &str = "deploy/grafana/sluice.json";

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

/// Every metric name a rules or dashboard file reads or its text names (histograms by
/// their base name).
fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("sluice_") || *word == "up")
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// What a dashboard variable stands for in the queries the test runs: a custom
/// variable all its options (as Grafana writes a multi-value in a regex), a query
/// variable "All" (`.*`), Grafana's intervals one minute.
fn variable_values(dashboard: &Value) -> Vec<(String, String)> {
    let mut values: Vec<(String, String)> = ["__rate_interval", "__interval", "__range"]
        .iter()
        .map(|name| (name.to_string(), "1m".to_string()))
        .collect();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = variable["name"].as_str().expect("a variable has a name");
        let value = match variable["type"].as_str() {
            Some("datasource") => continue,
            Some("custom") => {
                let options: Vec<&str> = variable["query"]
                    .as_str()
                    .expect("a custom variable lists its options in query")
                    .split(',')
                    .map(str::trim)
                    .collect();
                format!("({})", options.join("|"))
            }
            Some("query") => ".*".to_string(),
            other => panic!("variable {name}: type {other:?} has no stand-in here; add one"),
        };
        values.push((name.to_string(), value));
    }
    values
}

/// `query` with every `$name` and `${name}` replaced by its stand-in; a variable
/// without one fails the test (it would reach Prometheus as text).
fn substitute(query: &str, values: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = query;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').expect("a closing brace after ${");
                (&braced[..end], &braced[end + 1..])
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        let value = values
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, value)| value)
            .unwrap_or_else(|| panic!("${name} in {query:?} is no variable of the dashboard"));
        out.push_str(value);
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Every PromQL query of the dashboard, variables substituted, each with where it is:
/// the panels' targets (rows' nested panels too) and the query variables, whose
/// `label_values(selector, label)` becomes `count by (label) (selector)`.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let values = variable_values(dashboard);
    let mut queries = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .expect("a Prometheus target has an expr");
            let place = format!("panel {} target {}", panel["title"], target["refId"]);
            queries.push((place, substitute(expr, &values)));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(definition) = variable["definition"].as_str() else {
            continue;
        };
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| {
                panic!(
                    "variable {}: only label_values(selector, label)",
                    variable["name"]
                )
            });
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let query = format!("count by ({}) ({})", label.trim(), selector.trim());
        queries.push((
            format!("variable {}", variable["name"]),
            substitute(&query, &values),
        ));
    }
    queries
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

    /// The answer's data; its error, or its warnings, as text.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.url), query)
            .map_err(|e| e.to_string())?;
        let response = reqwest::Client::new()
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        if let Some(warnings) = body["warnings"].as_array().filter(|w| !w.is_empty()) {
            return Err(format!("warnings: {warnings:?}"));
        }
        Ok(body["data"].clone())
    }

    /// An instant query's result vector.
    async fn query(&self, query: &str) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/query", &[("query", query)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    async fn instant(&self, query: &str) -> Vec<Value> {
        self.query(query).await.unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_finds_every_series_the_rules_and_the_dashboard_read() {
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

    // And one chat completion, so the completions counter has a series.
    let completion = client
        .post(format!("http://{ingress}/v1/chat/completions"))
        .json(
            &serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
        )
        .send()
        .await
        .expect("the ingress answers");
    assert!(completion.status().is_success(), "{completion:?}");

    let prometheus = Prometheus::start(&ingress, &admin);
    let rules = std::fs::read_to_string(RULES).expect("the rules file");
    let dashboard_text = std::fs::read_to_string(DASHBOARD).expect("the dashboard file");
    let dashboard: Value = serde_json::from_str(&dashboard_text).expect("the dashboard is JSON");
    let rule_names = metric_names(&rules);
    assert!(rule_names.len() >= 8, "the rules read {rule_names:?}");
    let dashboard_names = metric_names(&dashboard_text);
    assert!(
        dashboard_names.len() >= 30,
        "the dashboard reads {dashboard_names:?}"
    );
    let wanted: Vec<(&str, &String)> = (rule_names.iter().map(|name| (RULES, name)))
        .chain(dashboard_names.iter().map(|name| (DASHBOARD, name)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let mut missing = Vec::new();
        for &(file, name) in &wanted {
            if prometheus
                .instant(&format!(
                    "count({{__name__=~\"{name}(_bucket|_count|_sum)?\"}})"
                ))
                .await
                .is_empty()
            {
                missing.push(format!("{name} ({file})"));
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
        "series the alert rules or the dashboard read that a running ingress and worker \
         do not export: {missing:?}"
    );

    // Every query of the dashboard runs without error or warning and, once the rates
    // have two samples, returns something: an empty panel is as broken as a failing one.
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 30, "the dashboard's queries: {queries:#?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut empty = Vec::new();
        for (place, query) in &queries {
            match prometheus.query(query).await {
                Ok(result) if result.is_empty() => empty.push(format!("{place}: {query}")),
                Ok(_) => {}
                Err(error) => panic!("{DASHBOARD}, {place}: {query}\n{error}"),
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{DASHBOARD}: queries with no result on a running pipeline:\n{}",
            empty.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The server loaded every rule and evaluates each without error.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let groups = prometheus
            .api("/api/v1/rules", &[])
            .await
            .ok()
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
