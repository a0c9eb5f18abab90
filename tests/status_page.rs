//! The status page (`GET /status`) in headless Chromium against a live `sluice dev`:
//! after a burst, the numbers the page shows agree with the ingress's `/metrics` and
//! `/status.json`. Leaves a screenshot in target/status-page.png.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::pipeline::{scrape, Dev};

fn chromium() -> String {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if std::process::Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return name.to_string();
        }
    }
    panic!(
        "no chromium: apt-get install chromium (scripts/test-peers.sh does it when run as root)"
    );
}

/// The text of every element with an id, as the page shows it after its scripts ran.
fn shown(dom: &str) -> HashMap<String, String> {
    let mut values = HashMap::new();
    for piece in dom.split("id=\"").skip(1) {
        let Some((id, rest)) = piece.split_once('"') else {
            continue;
        };
        let Some(text) = rest.split_once('>').map(|(_, after)| after) else {
            continue;
        };
        let text = text.split('<').next().unwrap_or("").trim();
        values.insert(id.to_string(), text.to_string());
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_burst_the_page_shows_what_the_metrics_say() {
    let browser = chromium();
    let dev = Dev::start(&[]).await;
    let base = dev.url.clone();

    let http = reqwest::Client::new();
    let burst = 150;
    for _ in 0..burst {
        let response = http
            .post(format!("{base}/v1/requests"))
            .json(&json!({"body": {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    // Settled: every reply read and the committed offsets caught up.
    let started = Instant::now();
    let status = loop {
        let status: Value = http
            .get(format!("{base}/status.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["replies"]["ok"] == burst
            && status["backlog_total"] == 0
            && !status["backends"].as_array().unwrap().is_empty()
        {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not settled: {status}\n{}",
            dev.process.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let screenshot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/status-page.png");
    let run = |args: Vec<String>| {
        let browser = browser.clone();
        async move {
            tokio::process::Command::new(&browser)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                ])
                .args(args)
                .output()
                .await
                .unwrap_or_else(|e| panic!("running {browser}: {e}"))
        }
    };
    let url = format!("{base}/status");
    let dom = run(vec![
        "--virtual-time-budget=3000".into(),
        "--dump-dom".into(),
        url.clone(),
    ])
    .await;
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let page = shown(&String::from_utf8_lossy(&dom.stdout));
    let metrics = scrape(&format!("{base}/metrics")).await;
    let metric =
        |name: &str, labels: &[(&str, &str)]| format!("{}", metrics.value(name, labels) as u64);
    assert_eq!(page["error"], "", "the page read status.json");
    assert_eq!(
        page["replies-ok"],
        metric("sluice_ingress_replies_total", &[("status", "ok")])
    );
    assert_eq!(page["replies-ok"], burst.to_string());
    assert_eq!(
        page["replies-error"],
        metric("sluice_ingress_replies_total", &[("status", "error")])
    );
    assert_eq!(
        page["accepted"],
        metric("sluice_ingress_submissions_total", &[("status", "202")])
    );
    assert_eq!(page["backlog"], "0");
    assert_eq!(page["dead-letters"], status["dead_letters"].to_string());
    let capacity = status["backends"][0]["capacity_estimate"]
        .as_u64()
        .expect("an estimate");
    assert_eq!(page["capacity"], capacity.to_string());
    assert_eq!(
        status["backends"][0]["breaker"], "closed",
        "each backend's breaker, as the workers report it"
    );
    assert!(
        page["drain-rate"].parse::<f64>().is_ok_and(|r| r > 0.0),
        "{:?}",
        page["drain-rate"]
    );
    assert!(
        page["updated"].starts_with("updated "),
        "{:?}",
        page["updated"]
    );

    let shot = run(vec![
        "--virtual-time-budget=3000".into(),
        "--window-size=1280,900".into(),
        format!("--screenshot={screenshot}"),
        url,
    ])
    .await;
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let size = std::fs::metadata(screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a screenshot of the page: {size} bytes");
    eprintln!("status page: {page:?}; screenshot {screenshot}");
}
