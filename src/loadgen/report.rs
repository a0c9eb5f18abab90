//! The run's report: percentiles, drain throughput, backend utilisation and overloads,
//! as text for people or one JSON object (`--json`) for scripts. Field names and units
//! are part of the JSON contract (docs in `sluice loadgen --help` and the README).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use serde::Serialize;

use super::ledger::Books;
use super::scrape::BackendSample;

/// Nearest-rank percentiles of a sample, in the sample's unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// All zero for an empty sample.
    pub fn of(values: &[f64]) -> Percentiles {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
        sorted.sort_by(f64::total_cmp);
        Percentiles {
            count: sorted.len(),
            p50: nearest_rank(&sorted, 50.0),
            p95: nearest_rank(&sorted, 95.0),
            p99: nearest_rank(&sorted, 99.0),
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }
}

/// The smallest value with at least `p` percent of the sample at or below it.
pub(crate) fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What the backend did between the two scrapes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct BackendReport {
    pub slots: f64,
    /// Calls the backend received (every outcome, 429s included).
    pub calls: f64,
    pub ok_calls: f64,
    /// 429s for want of a free slot.
    pub overload_responses: f64,
    pub overload_per_1000_calls: f64,
    pub busy_seconds: f64,
    /// First send -> last outcome: the time the backend had work to do.
    pub window_seconds: f64,
    /// busy_seconds / (slots × window_seconds).
    pub utilisation: f64,
    pub peak_in_flight: f64,
}

impl BackendReport {
    pub fn between(before: &BackendSample, after: &BackendSample, window_seconds: f64) -> Self {
        let calls = after.calls - before.calls;
        let overloads = after.overload_rejections - before.overload_rejections;
        let busy = after.busy_seconds - before.busy_seconds;
        let capacity = after.slots * window_seconds;
        BackendReport {
            slots: after.slots,
            calls,
            ok_calls: after.ok_calls - before.ok_calls,
            overload_responses: overloads,
            overload_per_1000_calls: if calls > 0.0 {
                overloads * 1000.0 / calls
            } else {
                0.0
            },
            busy_seconds: busy,
            window_seconds,
            utilisation: if capacity > 0.0 { busy / capacity } else { 0.0 },
            peak_in_flight: after.peak_in_flight,
        }
    }
}

/// The client's own view of a direct run (`--direct`): HTTP calls it made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DirectCalls {
    /// HTTP attempts, retries included.
    pub calls: u64,
    pub retries: u64,
    /// 429 answers received, retried ones included.
    pub overload_responses: u64,
}

/// Everything a run reports; serialised as the `--json` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Report {
    /// `ingress`, `kafka` or `direct`.
    pub mode: &'static str,
    pub target: String,
    pub sent: u64,
    pub accepted: u64,
    pub refused: BTreeMap<String, u64>,
    /// First final outcome per request, by status (always all four keys).
    pub completed: BTreeMap<&'static str, u64>,
    /// Non-ok outcomes by cause: HTTP status, error type, or `expired`/`rejected`.
    pub failed: BTreeMap<String, u64>,
    /// Accepted but no final outcome by the timeout.
    pub lost: u64,
    pub duplicates: u64,
    /// Replies on the reply topic for ids this run did not send.
    pub ignored_replies: u64,
    pub latency_ms: Percentiles,
    /// The same, over `ok` outcomes only.
    pub ok_latency_ms: Percentiles,
    /// From each reply's `timing.queue_ms`; `null` for `--direct`.
    pub queue_wait_ms: Option<Percentiles>,
    /// First send -> last send.
    pub send_seconds: f64,
    /// First -> last final outcome.
    pub drain_seconds: f64,
    /// Final outcomes per second over `drain_seconds`.
    pub drain_per_second: f64,
    /// First accepted request (first send when none was) to last final outcome: the
    /// whole time there was work for the backend, first answer's wait included.
    pub window_seconds: f64,
    /// Whether the wait ended by timeout or signal before every outcome arrived.
    pub timed_out: bool,
    pub backend: Option<BackendReport>,
    pub direct: Option<DirectCalls>,
}

const STATUSES: [&str; 4] = ["ok", "error", "expired", "rejected"];

impl Report {
    /// Builds the report from the final books; `backend` is (before, after) when scraped.
    pub fn new(
        mode: &'static str,
        target: String,
        books: &Books,
        backend: Option<(BackendSample, BackendSample)>,
        direct: Option<DirectCalls>,
    ) -> Report {
        let span = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let drain_seconds = span(books.first_outcome, books.last_outcome);
        let mut completed = books.completed.clone();
        for status in STATUSES {
            completed.entry(status).or_insert(0);
        }
        // The backend's window opens when there is work for it: the first request the
        // target took (a Kafka producer's start-up, before its first acknowledgement, is
        // not the backend's idle time), or the first send when nothing was taken.
        let opened = books.first_accepted.or(books.first_send);
        let window = span(opened, books.last_outcome.or(books.last_send));
        Report {
            mode,
            target,
            sent: books.sent,
            accepted: books.accepted,
            refused: books.refused.clone(),
            completed,
            failed: books.failed.clone(),
            lost: books.unanswered,
            duplicates: books.duplicates,
            ignored_replies: books.foreign,
            latency_ms: Percentiles::of(&books.latency_ms),
            ok_latency_ms: Percentiles::of(&books.ok_latency_ms),
            queue_wait_ms: (mode != "direct").then(|| Percentiles::of(&books.queue_ms)),
            send_seconds: span(books.first_send, books.last_send),
            drain_seconds,
            window_seconds: window,
            drain_per_second: if drain_seconds > 0.0 {
                books.finished() as f64 / drain_seconds
            } else {
                0.0
            },
            timed_out: books.unanswered > 0,
            backend: backend.map(|(before, after)| BackendReport::between(&before, &after, window)),
            direct,
        }
    }

    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let ok = self.completed.get("ok").copied().unwrap_or(0);
        let _ = writeln!(w, "sluice loadgen: {} -> {}", self.mode, self.target);
        let _ = writeln!(
            w,
            "  sent         {:>8}   over {:.1} s",
            self.sent, self.send_seconds
        );
        let _ = writeln!(
            w,
            "  accepted     {:>8}   refused {}",
            self.accepted,
            counts(&self.refused)
        );
        let _ = writeln!(
            w,
            "  completed    {:>8}   ok {ok}, error {}, expired {}, rejected {}",
            self.completed.values().sum::<u64>(),
            self.completed["error"],
            self.completed["expired"],
            self.completed["rejected"]
        );
        let _ = writeln!(w, "  failed       {}", counts(&self.failed));
        let _ = writeln!(w, "  lost         {:>8}", self.lost);
        let _ = writeln!(
            w,
            "  duplicated   {:>8}   (replies of other runs ignored: {})",
            self.duplicates, self.ignored_replies
        );
        let _ = writeln!(
            w,
            "  latency      {}   (send -> outcome seen)",
            ms(&self.latency_ms)
        );
        let _ = writeln!(w, "  ok latency   {}", ms(&self.ok_latency_ms));
        if let Some(queue) = &self.queue_wait_ms {
            let _ = writeln!(w, "  queue wait   {}   (reply timing.queue_ms)", ms(queue));
        }
        let _ = writeln!(
            w,
            "  drain        {:.1} outcomes/s over {:.1} s (first to last outcome)",
            self.drain_per_second, self.drain_seconds
        );
        if let Some(direct) = &self.direct {
            let _ = writeln!(
                w,
                "  client calls {:>8}   retries {}, 429s received {}",
                direct.calls, direct.retries, direct.overload_responses
            );
        }
        if let Some(b) = &self.backend {
            let _ = writeln!(
                w,
                "  backend      utilisation {:.1}% of {} slots over {:.1} s; {} calls, \
                 {} overload responses ({:.1} per 1,000 calls)",
                b.utilisation * 100.0,
                b.slots,
                b.window_seconds,
                b.calls,
                b.overload_responses,
                b.overload_per_1000_calls
            );
        }
        out
    }
}

fn counts<K: std::fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    parts.join(", ")
}

fn ms(p: &Percentiles) -> String {
    format!(
        "p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        p.p50, p.p95, p.p99, p.max
    )
}

#[cfg(test)]
mod tests;
