//! `sluice loadgen`: sends a burst at a chosen rate through the ingress, straight to
//! Kafka, or (the baseline) straight to the backend; collects every final reply from the
//! reply topic; reports loss, duplicates, latency and the backend's utilisation.
//!
//! - [`plan`]: durations, and how many requests to send at what rate.
//! - [`send`]: one request to the ingress or the request topic; the loop starting each on time.
//! - [`direct`]: one request straight to the backend, no sluice.
//! - [`collect`]: the reply-topic reader, positioned before the first send.
//! - [`ledger`]: per-id books; the first final reply wins, later ones are duplicates.
//! - [`scrape`]: the mock backend's `/metrics`, before and after.
//! - [`report`]: percentiles and the text / JSON report.
//! - [`timeline`]: the run sampled every 250 ms, for `--plot`.
//! - [`plot`]: the peak-shaving picture drawn from the timeline, as SVG.

pub mod collect;
pub mod direct;
pub mod ledger;
pub(crate) mod plan;
pub mod plot;
pub mod report;
pub mod scrape;
pub mod send;
pub(crate) mod timeline;

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use ledger::Ledger;
use plan::{parse_duration, Plan};
use report::Report;
use send::{Payload, Target};

/// Exit status when some accepted request got no final reply by the timeout.
pub(crate) const EXIT_LOST: u8 = 3;
/// How often the wait loop checks for completion and redraws progress.
const TICK: Duration = Duration::from_millis(100);

/// Flags of `sluice loadgen`. Exactly one of --ingress, --kafka, --direct.
#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["ingress", "kafka", "direct"])))]
pub struct LoadgenArgs {
    /// Send through the ingress: POST URL/v1/requests (non-202 answers are counted as
    /// refused, by status). Replies are read from the reply topic on
    /// kafka.bootstrap_servers.
    #[arg(long, value_name = "URL")]
    pub ingress: Option<String>,
    /// Produce version-1 envelopes straight to the request topic (acks=all, idempotent,
    /// `sluice-id` header). BOOTSTRAP, if given, replaces kafka.bootstrap_servers.
    #[arg(long, value_name = "BOOTSTRAP", num_args = 0..=1, default_missing_value = "")]
    pub kafka: Option<String>,
    /// Baseline without sluice: POST URL/v1/chat/completions straight to an
    /// OpenAI-compatible backend, open loop, unbounded concurrency, each request once
    /// (see --direct-retries). A request with no answer by the timeout counts as lost.
    #[arg(long, value_name = "URL")]
    pub direct: Option<String>,
    /// With --direct: retry 429, 5xx and transport errors up to N times (exponential
    /// backoff from 100 ms, full jitter, honouring retry-after-ms / Retry-After).
    /// Default 0: a naive client.
    #[arg(long, value_name = "N")]
    pub direct_retries: Option<u32>,
    /// Requests to send (as fast as --concurrency allows, or at --rate).
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Open-loop rate in requests per second: each request goes at its own instant,
    /// however many are still outstanding.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// With --rate: send for this long (e.g. 30s, 500ms, 2m); requests = rate × duration.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Without --rate: most sends outstanding at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub concurrency: usize,
    /// `model` of every chat request.
    #[arg(long, default_value = "mock")]
    pub model: String,
    /// The user message of every chat request.
    #[arg(long, default_value = "Say hello.")]
    pub prompt: String,
    /// `max_tokens` of every chat request.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: u64,
    /// `temperature` of every chat request (unset: the backend's default).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Relative deadline: each request gets deadline_ms = send time + this many ms.
    #[arg(long, value_name = "MS")]
    pub deadline_ms: Option<u64>,
    /// Stop waiting this long after the last send (e.g. 120s, 10m); what has no final
    /// reply by then is lost.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "120s")]
    pub timeout: Duration,
    /// sluice mock-llm's /metrics URL: scraped before and after, for the backend's
    /// utilisation (Δbusy_seconds / (slots × (last outcome - first send))) and overloads.
    #[arg(long, value_name = "URL")]
    pub backend_metrics: Option<String>,
    /// Print one JSON object on stdout instead of the text report (no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to FILE (whatever is printed), for scripts that show
    /// the text and keep the figures.
    #[arg(long, value_name = "FILE")]
    pub json_file: Option<std::path::PathBuf>,
    /// Draw the run over time as an SVG picture in FILE: requests arriving and backend
    /// calls per second against the backend's capacity, the backlog in Kafka, and the
    /// backend's in-flight against its slots (sampled every 250 ms). The backend lines
    /// need --backend-metrics.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
}

/// Runs the load, prints the report, and returns 0, or [`EXIT_LOST`] if anything was lost.
pub async fn run(
    mut config: Config,
    args: LoadgenArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let plan = Plan::new(args.requests, args.rate, args.duration, args.concurrency)
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        args.direct_retries.is_none() || args.direct.is_some(),
        "--direct-retries applies to --direct only (sluice's worker does its own retrying)"
    );
    if let Some(bootstrap) = args.kafka.as_deref().filter(|b| !b.is_empty()) {
        config.kafka.bootstrap_servers = bootstrap.to_string();
    }
    // The client-wide limit bounds a direct call; ingress posts and scrapes set their own.
    let http = reqwest::Client::builder()
        .timeout(args.timeout.max(Duration::from_secs(1)))
        .build()
        .context("building the HTTP client")?;
    let (target, described) = send::target(&config, &args, &http)?;
    let payload = Payload {
        model: args.model.clone(),
        prompt: args.prompt.clone(),
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        deadline: args.deadline_ms.map(Duration::from_millis),
    };
    let ledger = Arc::new(Ledger::default());
    let stop = CancellationToken::new();

    let before = match &args.backend_metrics {
        Some(url) => Some(scrape::scrape(&http, url).await?),
        None => None,
    };
    let reader = match &target {
        Target::Direct(_) => None,
        _ => {
            let topic = &config.kafka.reply_topic;
            let reader = collect::ReplyReader::position(&config.kafka, topic).await?;
            tracing::info!(topic, partitions = reader.partitions, "reading replies");
            Some(tokio::spawn(reader.run(ledger.clone(), stop.clone())))
        }
    };

    let sampling = CancellationToken::new();
    let timeline = args.plot.as_ref().map(|_| {
        tokio::spawn(timeline::record(
            ledger.clone(),
            http.clone(),
            args.backend_metrics.clone(),
            sampling.clone(),
        ))
    });
    let target = Arc::new(target);
    let sending = tokio::spawn(send::send_all(
        plan,
        target.clone(),
        payload,
        ledger.clone(),
        shutdown.clone(),
    ));
    let progress = progress_bar(plan.requests, args.json);
    wait(&ledger, &sending, args.timeout, &shutdown, &progress).await;
    progress.finish_and_clear();
    stop.cancel();
    sending.abort();
    if let Some(reader) = reader {
        let _ = reader.await;
    }

    let books = ledger.snapshot();
    let after = match &args.backend_metrics {
        Some(url) => Some(scrape::scrape(&http, url).await?),
        None => None,
    };
    let direct = match &*target {
        Target::Direct(direct) => Some(direct.calls()),
        _ => None,
    };
    sampling.cancel();
    if let (Some(path), Some(timeline)) = (&args.plot, timeline) {
        let points = timeline.await.context("the timeline sampler failed")?;
        draw(path, &points, &target, &plan)?;
    }
    let backend = before.zip(after);
    let report = Report::new(target.mode(), described, &books, backend, direct);
    let json = serde_json::to_string(&report).expect("a Report always serializes");
    if let Some(path) = &args.json_file {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", report.text());
    }
    Ok(if report.lost == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_LOST)
    })
}

/// Waits until every accepted request has its outcome, or `timeout` after the last send,
/// or a shutdown signal.
async fn wait(
    ledger: &Ledger,
    sending: &tokio::task::JoinHandle<()>,
    timeout: Duration,
    shutdown: &CancellationToken,
    progress: &ProgressBar,
) {
    let mut sent_all_at = None;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let p = ledger.progress();
        progress.set_position(p.finished);
        progress.set_message(format!(
            "sent {} accepted {} awaiting {}",
            p.sent, p.accepted, p.unanswered
        ));
        if sending.is_finished() {
            let since = *sent_all_at.get_or_insert_with(tokio::time::Instant::now);
            if p.pending == 0 && p.unanswered == 0 {
                return;
            }
            if since.elapsed() >= timeout {
                tracing::warn!(
                    unanswered = p.unanswered,
                    ?timeout,
                    "timed out waiting for replies"
                );
                return;
            }
        }
    }
}

/// Writes the peak-shaving picture of `points` to `path`.
fn draw(
    path: &std::path::Path,
    points: &[timeline::Point],
    target: &Target,
    plan: &Plan,
) -> anyhow::Result<()> {
    let queued = !matches!(target, Target::Direct(_));
    let series = plot::Series::from_points(points, queued);
    let rate = plan.rate.map_or_else(
        || format!("concurrency {}", plan.concurrency),
        |r| format!("{r:.0}/s"),
    );
    let title = format!(
        "sluice loadgen --{}: {} requests at {rate}",
        target.mode(),
        plan.requests
    );
    let svg =
        plot::render(&series, &title).map_err(|e| anyhow::anyhow!("drawing the plot: {e}"))?;
    std::fs::write(path, svg).with_context(|| format!("writing the plot to {}", path.display()))?;
    tracing::info!(path = %path.display(), points = points.len(), "plot written");
    Ok(())
}

/// A progress bar on stderr when it is a terminal and the output is for people.
fn progress_bar(total: u64, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} outcomes, {msg}")
            .expect("the progress template is valid")
            .progress_chars("=> "),
    );
    bar
}
