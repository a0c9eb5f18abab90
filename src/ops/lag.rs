//! `sluice lag`: the worker group's backlog on every request-topic partition (committed
//! offset, end offset, lag), and — from two samples `--interval` apart — how fast the
//! group drains it and how long that takes at that pace. Read-only: it never joins the
//! group or commits (see [`crate::kafka::watermarks`] for how offsets are read).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, KafkaConfig};
use crate::kafka::watermarks::{PartitionSample, Sampler};
use crate::routing::Routes;

/// Flags of `sluice lag`.
#[derive(clap::Args, Debug, Clone)]
pub struct LagArgs {
    /// Consumer group to report on. Default: kafka.group_id (the workers).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Time between the two samples the drain rate is measured over, e.g. 5s, 500ms, 1m;
    /// 0 takes one sample and reports no rates.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One partition's backlog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// `null` when the group has committed nothing here.
    pub committed: Option<i64>,
    pub end: i64,
    pub lag: i64,
}

/// What `sluice lag` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LagReport {
    pub group: String,
    /// Seconds between the two samples; `null` with `--interval 0`.
    pub interval_s: Option<f64>,
    pub partitions: Vec<PartitionLag>,
    pub total_lag: i64,
    /// Committed offsets advanced per second over the interval.
    pub drain_rate_per_s: Option<f64>,
    /// End offsets advanced per second over the interval (new requests).
    pub incoming_rate_per_s: Option<f64>,
    /// `total_lag / drain_rate_per_s`; 0 without lag; `null` when nothing drains.
    pub time_to_drain_s: Option<f64>,
}

/// Where the group resumes: its committed offset, or the log start when it has none or
/// the committed offset fell out of retention (workers read from the earliest offset).
fn position(s: &PartitionSample) -> i64 {
    s.committed.map_or(s.low, |c| c.max(s.low))
}

/// Builds the report from the last sample and, for rates, an earlier one `elapsed` before.
pub fn report(
    group: &str,
    first: Option<&[PartitionSample]>,
    last: &[PartitionSample],
    elapsed: Duration,
) -> LagReport {
    let partitions: Vec<PartitionLag> = last
        .iter()
        .map(|s| PartitionLag {
            topic: s.topic.clone(),
            partition: s.partition,
            committed: s.committed,
            end: s.high,
            lag: (s.high - position(s)).max(0),
        })
        .collect();
    let total_lag = partitions.iter().map(|p| p.lag).sum();
    let secs = elapsed.as_secs_f64();
    let rates = first.filter(|_| secs > 0.0).map(|first| {
        let (mut drained, mut incoming) = (0, 0);
        for now in last {
            let before = first
                .iter()
                .find(|b| b.topic == now.topic && b.partition == now.partition);
            if let Some(before) = before {
                drained += (position(now) - position(before)).max(0);
                incoming += (now.high - before.high).max(0);
            }
        }
        (drained as f64 / secs, incoming as f64 / secs)
    });
    let drain_rate = rates.map(|r| r.0);
    let time_to_drain_s = match (total_lag, drain_rate) {
        (0, _) => Some(0.0),
        (lag, Some(rate)) if rate > 0.0 => Some(lag as f64 / rate),
        _ => None,
    };
    LagReport {
        group: group.to_string(),
        interval_s: rates.map(|_| secs),
        partitions,
        total_lag,
        drain_rate_per_s: drain_rate,
        incoming_rate_per_s: rates.map(|r| r.1),
        time_to_drain_s,
    }
}

/// Reports the lag of the group on `Config::lane_topics()` and the pools' overflow topics
/// that exist (the backlog of each pool that overflowed).
pub async fn run(config: Config, args: LagArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| config.kafka.group_id.clone());
    let topics = config.lane_topics();
    let overflow: Vec<String> = Routes::from_config(&config)
        .overflow_topics(&config.kafka.request_topic)
        .into_iter()
        .map(|(_, topic)| topic)
        .collect();
    let interval = args.interval;
    let report = tokio::task::spawn_blocking(move || {
        measure(
            &config.kafka,
            &group,
            (&topics, &overflow),
            interval,
            &shutdown,
        )
    })
    .await
    .context("the lag task panicked")??;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

fn measure(
    kafka: &KafkaConfig,
    group: &str,
    (topics, optional): (&[String], &[String]),
    interval: Duration,
    cancel: &CancellationToken,
) -> anyhow::Result<LagReport> {
    let sampler = Sampler::new(kafka, group, topics, optional)?;
    let (t0, first) = sampler.sample(cancel)?;
    if interval.is_zero() {
        return Ok(report(group, None, &first, Duration::ZERO));
    }
    let until = Instant::now() + interval;
    while Instant::now() < until {
        if cancel.is_cancelled() {
            bail!("interrupted");
        }
        sampler.idle(
            until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200)),
        );
    }
    let (t1, last) = sampler.sample(cancel)?;
    Ok(report(group, Some(&first), &last, t1 - t0))
}

/// The report as an aligned table and a few lines of rates.
pub(crate) fn render(report: &LagReport) -> String {
    let mut out = format!("consumer group {}", report.group);
    match report.interval_s {
        Some(s) => out.push_str(&format!(", sampled {s:.1} s apart\n\n")),
        None => out.push_str(", one sample\n\n"),
    }
    let width = report
        .partitions
        .iter()
        .map(|p| p.topic.chars().count())
        .chain(["TOPIC".len(), "total".len()])
        .max()
        .unwrap_or(5);
    let dash = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    out.push_str(&format!(
        "{:<width$}  {:>9}  {:>12}  {:>12}  {:>12}\n",
        "TOPIC", "PARTITION", "COMMITTED", "END", "LAG"
    ));
    for p in &report.partitions {
        out.push_str(&format!(
            "{:<width$}  {:>9}  {:>12}  {:>12}  {:>12}\n",
            p.topic,
            p.partition,
            dash(p.committed),
            p.end,
            p.lag
        ));
    }
    out.push_str(&format!(
        "{:<width$}  {:>9}  {:>12}  {:>12}  {:>12}\n",
        "total", "", "", "", report.total_lag
    ));
    if let (Some(drain), Some(incoming)) = (report.drain_rate_per_s, report.incoming_rate_per_s) {
        out.push_str(&format!(
            "\ndrain rate     {drain:.1}/s  (committed offsets advanced)\n"
        ));
        out.push_str(&format!(
            "incoming       {incoming:.1}/s  (end offsets advanced)\n"
        ));
        let eta = report.time_to_drain_s.map_or_else(
            || "never at this pace: nothing was committed during the interval".to_string(),
            |s| format!("{}  (lag / drain rate)", human_duration(s)),
        );
        out.push_str(&format!("time to drain  {eta}\n"));
    }
    out
}

/// `42 s`, `4 min 10 s`, `2 h 5 min`.
fn human_duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// Parses `5s`, `500ms`, `1.5s`, `2m`, or a bare number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit_s) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(Duration::from_secs_f64(n * unit_s)),
        _ => Err(format!(
            "{text:?}: expected a duration such as 5s, 500ms or 1m"
        )),
    }
}

#[cfg(test)]
mod tests;
