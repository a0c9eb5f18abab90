//! `sluice dlq inspect`: lists dead letters readably — where and when, why, which worker,
//! where from, key, id and a safe preview of the value — or as one JSON object per line.
//! Read-only: no consumer group, no commits.

use std::io::Write;
use std::ops::ControlFlow;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::dlq_read::{self, DlqRecord};
use super::filter::{Filter, FilterArgs};
use super::preview::{display, preview};
use crate::config::Config;
use crate::worker::dead_letter::httpdate_rfc3339;

/// Flags of `sluice dlq inspect`.
#[derive(clap::Args, Debug, Clone)]
pub struct InspectArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// One JSON object per line instead of text blocks.
    #[arg(long)]
    pub json: bool,
    /// Longest preview of a value, in characters after escaping.
    #[arg(long, value_name = "CHARS", default_value_t = 200)]
    pub preview_chars: usize,
}

/// Reasons, ids, worker and topic names are escaped but cut only this long; the preview
/// limit is for keys, values and headers.
const FIELD_MAX_CHARS: usize = 1000;

/// Prints the dead letters of `kafka.dlq_topic` that match the filters.
pub async fn run(
    config: Config,
    args: InspectArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || inspect(&config, &args, &shutdown))
        .await
        .context("the inspect task panicked")?
}

fn inspect(config: &Config, args: &InspectArgs, cancel: &CancellationToken) -> anyhow::Result<()> {
    let topic = &config.kafka.dlq_topic;
    let filter = Filter::from(&args.filter);
    let mut out = std::io::stdout().lock();
    let mut matched = 0u64;
    let mut write_error = None;
    let summary = dlq_read::read(&config.kafka, topic, cancel, |record| {
        if !filter.matches(&record) {
            return ControlFlow::Continue(());
        }
        matched += 1;
        let written = if args.json {
            writeln!(out, "{}", to_json(&record, args.preview_chars))
        } else {
            write_text(&mut out, &record, args.preview_chars)
        };
        if let Err(e) = written {
            write_error = Some(e);
            return ControlFlow::Break(());
        }
        if filter.limit_reached(matched) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    match write_error.map_or_else(|| out.flush(), Err) {
        // A closed pipe (`| head`) is the reader saying it has seen enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        other => other.context("writing to stdout")?,
    }
    if cancel.is_cancelled() {
        anyhow::bail!("interrupted after {} records", summary.read);
    }
    let cut = if summary.complete || filter.limit_reached(matched) {
        ""
    } else {
        " (stopped before the end)"
    };
    eprintln!(
        "{matched} of {} dead letters on {topic} matched ({} partitions){cut}",
        summary.read, summary.partitions
    );
    Ok(())
}

/// When the record was dead-lettered, as the header says it, else its timestamp.
fn at_text(record: &DlqRecord) -> Option<String> {
    record
        .header(crate::envelope::headers::ERROR_AT)
        .or_else(|| {
            let ms = u64::try_from(record.timestamp_ms?).ok()?;
            Some(httpdate_rfc3339(UNIX_EPOCH + Duration::from_millis(ms)))
        })
}

/// `topic/partition@offset`, or `-` when unknown.
fn source_text(record: &DlqRecord) -> String {
    match record.source_topic() {
        None => "-".into(),
        Some(topic) => {
            let part = |v: Option<String>| v.unwrap_or_else(|| "?".into());
            format!(
                "{topic}/{}@{}",
                part(record.source_partition().map(|p| p.to_string())),
                part(record.source_offset().map(|o| o.to_string()))
            )
        }
    }
}

fn write_text(out: &mut impl Write, record: &DlqRecord, max: usize) -> std::io::Result<()> {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let safe = |v: Option<String>| or_dash(v.map(|s| display(s.as_bytes(), FIELD_MAX_CHARS)));
    writeln!(
        out,
        "{}/{}@{}  {}  class={}  attempts={}  worker={}",
        record.topic,
        record.partition,
        record.offset,
        or_dash(at_text(record)),
        safe(record.class()),
        or_dash(record.attempts().map(|a| a.to_string())),
        safe(record.worker()),
    )?;
    writeln!(out, "  reason   {}", safe(record.reason()))?;
    writeln!(
        out,
        "  source   {}",
        display(source_text(record).as_bytes(), FIELD_MAX_CHARS)
    )?;
    writeln!(out, "  id       {}", safe(record.id()))?;
    let key = record.key.as_deref().map(|k| display(k, max));
    writeln!(out, "  key      {}", or_dash(key))?;
    match record.value.as_deref() {
        None => writeln!(out, "  value    - (null)")?,
        Some(v) => writeln!(out, "  value    {} ({} bytes)", display(v, max), v.len())?,
    }
    let originals = record.original_headers();
    if !originals.is_empty() {
        let listed: Vec<String> = originals
            .iter()
            .map(|(k, v)| {
                let value = v.as_deref().map_or("-".into(), |v| display(v, 80));
                format!("{}={value}", display(k.as_bytes(), 80))
            })
            .collect();
        writeln!(out, "  headers  {}", listed.join("  "))?;
    }
    writeln!(out)
}

/// The record as one JSON object; every string from the record is a safe preview.
fn to_json(record: &DlqRecord, max: usize) -> Value {
    let safe = |v: Option<String>| v.map(|s| display(s.as_bytes(), FIELD_MAX_CHARS));
    let value = record.value.as_deref().map(|v| preview(v, max));
    let headers: Vec<Value> = record
        .original_headers()
        .iter()
        .map(|(k, v)| {
            json!([
                display(k.as_bytes(), max),
                v.as_deref().map(|v| display(v, max))
            ])
        })
        .collect();
    json!({
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "at": at_text(record),
        "at_ms": record.at_ms(),
        "reason": safe(record.reason()),
        "class": safe(record.class()),
        "attempts": record.attempts(),
        "worker": safe(record.worker()),
        "source": {
            "topic": safe(record.source_topic()),
            "partition": record.source_partition(),
            "offset": record.source_offset(),
        },
        "key": record.key.as_deref().map(|k| display(k, max)),
        "id": safe(record.id()),
        "value_preview": value.as_ref().map(|p| p.text.clone()),
        "value_truncated": value.as_ref().is_some_and(|p| p.truncated),
        "value_bytes": record.value.as_ref().map(Vec::len),
        "headers": headers,
    })
}

#[cfg(test)]
mod tests;
