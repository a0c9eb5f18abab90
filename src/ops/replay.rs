//! `sluice dlq replay`: re-drives dead letters to the topic they came from (or `--to`),
//! with their original key, value and headers — so a replayed request keeps its id, and
//! its reply stays deduplicated by id — plus `sluice-replayed-from`.
//!
//! Guarantees: writes are idempotent and acks=all; the command waits for every delivery
//! report before it exits and exits non-zero if any write failed or it was interrupted.
//! Replay is at-least-once: running it twice writes the records twice, which the
//! workers answer twice under the same ids (readers keep the first reply).

use std::io::IsTerminal as _;
use std::ops::ControlFlow;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures::stream::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::dlq_read::{self, DlqRecord};
use super::filter::{Filter, FilterArgs};
use super::pace::{parse_rate, Pacer};
use crate::config::Config;
use summary::{reason_kind, render_summary, summary_json, Summary};
use writer::Writer;

/// Header added to every replayed record: `<dlq topic>/<partition>/<offset>`.
pub(crate) const REPLAYED_FROM: &str = "sluice-replayed-from";

/// Flags of `sluice dlq replay`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Most records written per second: N, N/s or N/m. Default: as fast as Kafka takes them.
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Count what would be replayed, by reason and destination, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write every replayed record to TOPIC instead of its source topic.
    #[arg(long, value_name = "TOPIC")]
    pub to: Option<String>,
    /// Print the final summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One record to write back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Replay {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// `<dlq topic>/<partition>/<offset>`, also the value of [`REPLAYED_FROM`].
    pub from: String,
}

/// The write that re-drives `record`: to `to`, else its source topic, else `request_topic`;
/// the request's own headers, without an older [`REPLAYED_FROM`], plus a new one.
pub(crate) fn plan(record: &DlqRecord, to: Option<&str>, request_topic: &str) -> Replay {
    let from = format!("{}/{}/{}", record.topic, record.partition, record.offset);
    let mut headers: Vec<_> = record
        .original_headers()
        .into_iter()
        .filter(|(k, _)| k != REPLAYED_FROM)
        .collect();
    headers.push((REPLAYED_FROM.to_string(), Some(from.clone().into_bytes())));
    Replay {
        topic: to
            .map(str::to_string)
            .or_else(|| record.source_topic())
            .unwrap_or_else(|| request_topic.to_string()),
        key: record.key.clone(),
        value: record.value.clone(),
        headers,
        from,
    }
}

/// Replays the matching dead letters of `kafka.dlq_topic`.
pub async fn run(
    config: Config,
    args: ReplayArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let dlq = config.kafka.dlq_topic.clone();
    if args.to.as_deref() == Some(dlq.as_str()) {
        bail!("--to {dlq} is the dead-letter topic itself");
    }
    let mut writer = match args.dry_run {
        true => None,
        false => Some(Writer::new(&config.kafka)?),
    };
    // The reader thread filters and hands matches over; a full channel slows it down.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<DlqRecord>(256);
    let reader = {
        let (kafka, topic, cancel) = (config.kafka.clone(), dlq.clone(), shutdown.clone());
        let filter = Filter::from(&args.filter);
        tokio::task::spawn_blocking(move || {
            let mut matched = 0;
            let read = dlq_read::read(&kafka, &topic, &cancel, |record| {
                if !filter.matches(&record) {
                    return ControlFlow::Continue(());
                }
                if tx.blocking_send(record).is_err() {
                    return ControlFlow::Break(());
                }
                matched += 1;
                match filter.limit_reached(matched) {
                    true => ControlFlow::Break(()),
                    false => ControlFlow::Continue(()),
                }
            });
            read.map(|read| (read, matched))
        })
    };

    let progress = progress_bar();
    let mut pacer = args.rate.map(Pacer::new);
    let mut summary = Summary {
        dlq_topic: dlq.clone(),
        dry_run: args.dry_run,
        ..Summary::default()
    };
    let settle = |summary: &mut Summary, result: Result<(), String>| {
        match result {
            Ok(()) => summary.replayed += 1,
            Err(e) => {
                summary.failed += 1;
                progress.suspend(|| eprintln!("replay of {e}"));
            }
        }
        progress.set_message(format!(
            "replayed {}, failed {}",
            summary.replayed, summary.failed
        ));
    };
    let mut interrupted = false;
    loop {
        let record = tokio::select! {
            _ = shutdown.cancelled() => { interrupted = true; break; }
            record = rx.recv() => match record { Some(record) => record, None => break },
        };
        let replay = plan(&record, args.to.as_deref(), &config.kafka.request_topic);
        if replay.topic == dlq {
            tracing::warn!(from = %replay.from, "source topic is the dead-letter topic; skipped");
            summary.skipped += 1;
            continue;
        }
        if let (Some(pacer), Some(_)) = (pacer.as_mut(), &writer) {
            tokio::select! {
                _ = shutdown.cancelled() => { interrupted = true; break; }
                _ = pacer.wait() => {}
            }
        }
        // Counted once it is written (or, in a dry run, would be).
        let reason = reason_kind(&record.reason().unwrap_or_default()).to_string();
        *summary.by_reason.entry(reason).or_default() += 1;
        *summary.by_topic.entry(replay.topic.clone()).or_default() += 1;
        let Some(writer) = writer.as_mut() else {
            continue;
        };
        writer
            .write(replay, |result| settle(&mut summary, result))
            .await;
    }
    drop(rx); // the reader stops at its next match
    if let Some(writer) = writer.as_mut() {
        while let Some(result) = writer.in_flight.next().await {
            settle(&mut summary, result);
        }
    }
    progress.finish_and_clear();
    let (read, matched) = reader.await.context("the dead-letter reader panicked")??;
    summary.read = read.read;
    summary.matched = matched;
    summary.skipped += read.read.saturating_sub(matched);
    match args.json {
        true => println!("{}", summary_json(&summary)),
        false => print!("{}", render_summary(&summary)),
    }
    if summary.failed > 0 {
        let attempted = summary.failed + summary.replayed;
        bail!("{} of {attempted} writes failed", summary.failed);
    }
    if interrupted {
        bail!("interrupted; replayed {} before stopping", summary.replayed);
    }
    Ok(())
}

/// A spinner with counts on stderr when it is a terminal; hidden otherwise.
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .expect("the progress template is a valid indicatif template"),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

mod summary;
mod writer;

#[cfg(test)]
mod tests;
