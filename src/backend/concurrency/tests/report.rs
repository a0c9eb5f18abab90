//! The figures of one simulated run, computed from the backend's record of answers and the
//! controller's snapshots, and checked against the scenario's bands.

use super::scenario::Scenario;
use super::sim_backend::Record;
use crate::backend::concurrency::stats::ControllerStats;

/// A 1 s bucket breaches the steady overload target above this fraction.
const OVERLOAD_TARGET: f64 = 0.01;
/// A 1 s bucket counts as recovered at this fraction of capacity.
const RECOVERED: f64 = 0.9;

#[derive(Debug)]
pub(super) struct Report {
    /// Over the measured window.
    pub throughput: f64,
    pub mean_limit: f64,
    pub overload: f64,
    pub calls: usize,
    /// Over the whole run, start-up included.
    pub throughput_all: f64,
    pub overload_all: f64,
    /// Seconds after the first capacity change until overload stays at or below 1% per
    /// 1 s bucket.
    pub overload_stops_after: Option<f64>,
    /// Seconds after the first capacity change until the limit stays at or below 1.25 times
    /// the new capacity.
    pub settled_after: Option<f64>,
    /// Seconds after the last outage until a 1 s bucket reaches 90% of capacity.
    pub recovered_after: Option<f64>,
    /// Seconds after the last change, when it added slots, until a 1 s bucket reaches 90%
    /// of the new capacity.
    pub grown_after: Option<f64>,
    pub final_limit: usize,
    pub failed_probes: u64,
    pub failed_messages: u64,
}

/// Capacity per second at `secs`: slot-seconds, or requests when rate-limited.
fn capacity_at(scenario: &Scenario, secs: f64) -> f64 {
    match scenario.backend.rate_per_second {
        Some(rate) => rate,
        None => scenario.backend.slots_at(secs) as f64,
    }
}

impl Report {
    pub fn new(
        scenario: &Scenario,
        record: Record,
        window_opens: ControllerStats,
        end: ControllerStats,
        trace: Vec<(f64, usize)>,
        failed_messages: u64,
    ) -> Self {
        let from = scenario.measure_from_secs;
        let until = scenario.duration_secs;
        let rated = scenario.backend.rate_per_second.is_some();
        // Useful work done in [a, b): service seconds, or requests when rate-limited.
        let work = |a: f64, b: f64| -> f64 {
            let done = record.successes.iter().filter(|(t, _)| (a..b).contains(t));
            if rated {
                done.count() as f64
            } else {
                done.map(|(_, service)| service).sum()
            }
        };
        // Capacity over [a, b), integrated in 10 ms steps (changes are step functions).
        let capacity = |a: f64, b: f64| -> f64 {
            let steps = ((b - a) / 0.01).round().max(1.0) as usize;
            let step = (b - a) / steps as f64;
            (0..steps)
                .map(|i| capacity_at(scenario, a + (i as f64 + 0.5) * step) * step)
                .sum()
        };
        let count =
            |times: &[f64], a: f64, b: f64| times.iter().filter(|t| (a..b).contains(t)).count();
        let calls = |a: f64, b: f64| {
            record
                .successes
                .iter()
                .filter(|(t, _)| (a..b).contains(t))
                .count()
                + count(&record.overloads, a, b)
                + count(&record.outage_answers, a, b)
        };
        let overload =
            |a: f64, b: f64| count(&record.overloads, a, b) as f64 / calls(a, b).max(1) as f64;

        let buckets =
            |after: f64| (after.floor() as usize..until.ceil() as usize).map(|s| s as f64);
        let overload_stops_after = scenario.backend.changes.first().map(|change| {
            buckets(change.at_secs)
                .rev()
                .find(|&s| overload(s, s + 1.0) > OVERLOAD_TARGET)
                .map_or(0.0, |s| s + 1.0 - change.at_secs)
        });
        let settled_after = scenario.backend.changes.first().map(|change| {
            let ceiling = 1.25 * change.slots as f64;
            trace
                .iter()
                .rev()
                .find(|(t, limit)| *t >= change.at_secs && *limit as f64 > ceiling)
                .map_or(0.0, |(t, _)| t + 0.05 - change.at_secs)
        });
        let recovered_after = scenario.backend.outages.last().and_then(|outage| {
            buckets(outage.until_secs)
                .find(|&s| work(s, s + 1.0) >= RECOVERED * capacity(s, s + 1.0))
                .map(|s| s + 1.0 - outage.until_secs)
        });
        let grown_after = scenario
            .backend
            .changes
            .last()
            .filter(|change| change.slots > scenario.backend.slots_at(change.at_secs - 1e-6))
            .and_then(|change| {
                buckets(change.at_secs)
                    .find(|&s| work(s, s + 1.0) >= RECOVERED * capacity(s, s + 1.0))
                    .map(|s| s + 1.0 - change.at_secs)
            });
        let window = (until - from).max(f64::EPSILON);
        if std::env::var_os("SLUICE_SIM_TRACE").is_some() {
            let limits: Vec<String> = trace
                .iter()
                .step_by(10)
                .map(|(t, l)| format!("{t:.1}:{l}"))
                .collect();
            println!("limit every 0.5 s: {}", limits.join(" "));
        }
        Self {
            throughput: work(from, until) / capacity(from, until),
            mean_limit: (end.limit_seconds - window_opens.limit_seconds) / window,
            overload: overload(from, until),
            calls: calls(from, until),
            throughput_all: work(0.0, until) / capacity(0.0, until),
            overload_all: overload(0.0, until),
            overload_stops_after,
            settled_after,
            recovered_after,
            grown_after,
            final_limit: end.limit,
            failed_probes: end.failed_probes,
            failed_messages,
        }
    }

    pub fn summary(&self, name: &str) -> String {
        let mut line = format!(
            "{name:<22} throughput {:5.1}% (all {:5.1}%)  mean limit {:6.1}  overload {:5.2}% (all {:5.2}%)  calls {:6}  final limit {:3}  failed probes {:3}",
            100.0 * self.throughput,
            100.0 * self.throughput_all,
            self.mean_limit,
            100.0 * self.overload,
            100.0 * self.overload_all,
            self.calls,
            self.final_limit,
            self.failed_probes,
        );
        if let Some(secs) = self.overload_stops_after {
            line += &format!("  overload stopped {secs:.1} s after the change");
        }
        if let Some(secs) = self.settled_after {
            line += &format!(", limit settled in {secs:.2} s");
        }
        if let Some(secs) = self.grown_after {
            line += &format!("  back at 90% {secs:.1} s after the rise");
        }
        if let Some(secs) = self.recovered_after {
            line += &format!("  recovered {secs:.1} s after the outage");
        }
        if self.failed_messages > 0 {
            line += &format!("  FAILED MESSAGES {}", self.failed_messages);
        }
        line
    }

    /// Every band missed, described.
    pub fn check(&self, scenario: &Scenario) -> Vec<String> {
        let expect = &scenario.expect;
        let mut missed = Vec::new();
        let mut band = |what: &str, value: f64, [lo, hi]: [f64; 2]| {
            if !(lo..=hi).contains(&value) {
                missed.push(format!("{what} {value:.4} outside [{lo}, {hi}]"));
            }
        };
        band("throughput", self.throughput, expect.throughput);
        band("mean limit", self.mean_limit, expect.mean_limit);
        band("overload", self.overload, expect.overload);
        if let Some(within) = expect.overload_stops_within_secs {
            band(
                "overload stopped after (s)",
                self.overload_stops_after.unwrap_or(f64::INFINITY),
                [0.0, within],
            );
        }
        if let Some(within) = expect.recovers_within_secs {
            band(
                "recovered after (s)",
                self.recovered_after.unwrap_or(f64::INFINITY),
                [0.0, within],
            );
        }
        if let Some(within) = expect.grows_within_secs {
            band(
                "back at 90% after the rise (s)",
                self.grown_after.unwrap_or(f64::INFINITY),
                [0.0, within],
            );
        }
        if self.failed_messages > 0 {
            missed.push(format!("{} messages failed", self.failed_messages));
        }
        missed
    }
}
