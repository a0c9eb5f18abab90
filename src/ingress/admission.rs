//! Admission control: a request whose deadline ends before its expected turn is refused
//! at once (503 with Retry-After) rather than accepted to expire in Kafka.
//!
//! The expected wait of a request on lane topic T is the backlog ahead of it (the
//! workers' group's end minus committed offsets, on T and every higher lane) divided by
//! the group's drain rate. Both come from a background sampler, the same reading as
//! `sluice lag`, once per `ingress.admission_interval_ms`. The drain rate counts only
//! intervals that began with a backlog (an idle group drains nothing, which says nothing
//! of its speed); a backlog that did not move for 5 s of such intervals means the workers
//! are stalled, and every request with a deadline waits longer than it has. Until a
//! rate is known, everything is admitted. The same samples feed the status page
//! ([`Admission::snapshot`]), also with admission off.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::family::Family;

use super::error::AppError;
use super::metrics::{SecondsGauge, TopicLabel};
use crate::admin::Readiness;
use crate::config::Config;
use crate::envelope::now_ms;
use crate::kafka::watermarks::{PartitionSample, Sampler};
use crate::routing::Routes;

/// How far back the drain rate looks.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Busy time without progress after which the group counts as stalled.
const STALLED_AFTER: Duration = Duration::from_secs(5);
/// Pause after a failed sample.
const RETRY_PAUSE: Duration = Duration::from_secs(2);
/// Longest Retry-After sent.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The latest view of the request topics' backlog and the group's speed.
#[derive(Debug, Default)]
pub struct Admission {
    enabled: bool,
    /// Request topics, highest priority first.
    topics: Vec<String>,
    /// The pools' overflow topics (several backends): their backlog is shown and counts
    /// as work, and what is forwarded to them is not counted as drained.
    overflow: Vec<String>,
    /// The dead-letter topic, sampled for the status page.
    dlq_topic: String,
    state: Mutex<View>,
    /// The expected wait per topic, for `/metrics`.
    gauges: Family<TopicLabel, SecondsGauge>,
}

#[derive(Debug, Default, Clone)]
struct View {
    /// Backlog per topic of `topics`, then of `overflow`, at the last sample.
    backlog: Vec<u64>,
    /// Messages per second drained while there was a backlog; `None` until measured.
    rate: Option<f64>,
    stalled: bool,
    sampled: Option<Instant>,
    /// Records held on the dead-letter topic.
    dead_letters: Option<u64>,
}

/// What the sampler saw last, for the status page.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct Snapshot {
    /// Backlog per request topic, highest priority first, then per overflow topic.
    pub backlog: Vec<(String, u64)>,
    /// Messages per second the workers drained while busy.
    pub drain_rate: Option<f64>,
    pub stalled: bool,
    /// Records on the dead-letter topic (retained).
    pub dead_letters: Option<u64>,
    /// How long ago the last sample was taken.
    pub age_ms: Option<u64>,
}

/// One busy interval: when it ended, how long it was, what it drained.
#[derive(Debug, Clone, Copy)]
struct Interval {
    at: Instant,
    length: Duration,
    drained: u64,
}

impl Admission {
    pub fn new(config: &Config, gauges: Family<TopicLabel, SecondsGauge>) -> Self {
        Admission {
            enabled: config.ingress.admission,
            topics: config.lane_topics(),
            overflow: Routes::from_config(config)
                .overflow_topics(&config.kafka.request_topic)
                .into_iter()
                .map(|(_, topic)| topic)
                .collect(),
            dlq_topic: config.kafka.dlq_topic.clone(),
            state: Mutex::default(),
            gauges,
        }
    }

    /// Refuses a request on `topic` whose deadline (unix ms) ends before its expected
    /// turn. Without a deadline, or without a measured rate, it is admitted.
    pub fn check(&self, topic: &str, deadline_ms: Option<u64>) -> Result<(), AppError> {
        let (Some(deadline_ms), true) = (deadline_ms, self.enabled) else {
            return Ok(());
        };
        let Some(wait) = self.expected_wait(topic) else {
            return Ok(());
        };
        let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms()));
        if wait <= left {
            return Ok(());
        }
        let retry_after = (wait - left).clamp(Duration::from_secs(1), MAX_RETRY_AFTER);
        let message = if wait == Duration::MAX {
            "the workers have not drained the request topic for a while, so this request \
             would expire before its turn; it was not accepted"
                .to_string()
        } else {
            format!(
                "the expected wait ({:.1} s: the backlog ahead over the workers' drain rate) \
                 is longer than the {:.1} s left to this request's deadline; it was not \
                 accepted",
                wait.as_secs_f64(),
                left.as_secs_f64()
            )
        };
        Err(AppError::Unavailable {
            message,
            retry_after_secs: retry_after.as_secs().max(1),
        })
    }

    /// The expected wait on `topic`: `Duration::MAX` when the workers are stalled,
    /// `None` when not known (no rate measured yet, or an unknown topic).
    pub(crate) fn expected_wait(&self, topic: &str) -> Option<Duration> {
        let index = self.topics.iter().position(|t| t == topic)?;
        // Read under the lock, not copied: this runs for every request with a deadline.
        let view = self.lock();
        let ahead: u64 = view.backlog.iter().take(index + 1).sum();
        if ahead == 0 {
            return Some(Duration::ZERO);
        }
        if view.stalled {
            return Some(Duration::MAX);
        }
        let rate = view.rate.filter(|r| *r > 0.0)?;
        Some(Duration::from_secs_f64(ahead as f64 / rate))
    }

    /// Samples until `shutdown` while `ready` (Kafka answers), a blocking task: the
    /// sampler's calls block. Its clients are dropped while Kafka is away.
    pub(crate) fn run_blocking(
        self: Arc<Self>,
        config: Arc<Config>,
        interval: Duration,
        ready: Readiness,
        shutdown: CancellationToken,
    ) {
        let mut sampler = None;
        let mut sampled_topics = self.topics.clone();
        sampled_topics.push(self.dlq_topic.clone());
        let mut intervals: VecDeque<Interval> = VecDeque::new();
        let mut last: Option<(Instant, Vec<PartitionSample>)> = None;
        while !shutdown.is_cancelled() {
            if !ready.is_ready() {
                sampler = None;
                last = None;
                pause(&shutdown, interval);
                continue;
            }
            if sampler.is_none() {
                let group = &config.kafka.group_id;
                match Sampler::new(&config.kafka, group, &sampled_topics, &self.overflow) {
                    Ok(s) => sampler = Some(s),
                    Err(e) => {
                        tracing::debug!(error = %e, "admission: cannot read the request topics yet");
                        pause(&shutdown, RETRY_PAUSE);
                        continue;
                    }
                }
            }
            let s = sampler.as_ref().expect("set above");
            match s.sample(&shutdown) {
                Ok((at, samples)) => {
                    if let Some((before_at, before)) = &last {
                        let busy = backlog_per_topic(&self.all_topics(), before)
                            .iter()
                            .sum::<u64>()
                            > 0;
                        if busy {
                            intervals.push_back(Interval {
                                at,
                                length: at - *before_at,
                                drained: drained(&self.overflow, before, &samples),
                            });
                        }
                    }
                    while intervals.front().is_some_and(|i| at - i.at > RATE_WINDOW) {
                        intervals.pop_front();
                    }
                    self.update(&samples, &intervals, at);
                    last = Some((at, samples));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "admission: sampling the backlog failed");
                    sampler = None;
                    last = None;
                    pause(&shutdown, RETRY_PAUSE);
                    continue;
                }
            }
            s.idle(interval);
        }
    }

    /// The lanes' topics, then the overflow topics.
    fn all_topics(&self) -> Vec<String> {
        self.topics.iter().chain(&self.overflow).cloned().collect()
    }

    fn update(&self, samples: &[PartitionSample], intervals: &VecDeque<Interval>, at: Instant) {
        let backlog = backlog_per_topic(&self.all_topics(), samples);
        let busy: Duration = intervals.iter().map(|i| i.length).sum();
        let drained: u64 = intervals.iter().map(|i| i.drained).sum();
        let dead_letters = samples
            .iter()
            .filter(|s| s.topic == self.dlq_topic)
            .map(|s| (s.high - s.low).max(0) as u64)
            .sum();
        let mut view = self.lock();
        view.backlog = backlog;
        view.dead_letters = Some(dead_letters);
        view.stalled = drained == 0 && busy >= STALLED_AFTER;
        if drained > 0 && !busy.is_zero() {
            view.rate = Some(drained as f64 / busy.as_secs_f64());
        }
        view.sampled = Some(at);
        drop(view);
        for topic in &self.topics {
            if let Some(wait) = self.expected_wait(topic) {
                let seconds = match wait {
                    Duration::MAX => f64::INFINITY,
                    wait => wait.as_secs_f64(),
                };
                let label = TopicLabel {
                    topic: topic.clone(),
                };
                self.gauges.get_or_create(&label).set(seconds);
            }
        }
    }

    /// The last sample's figures.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let view = self.lock().clone();
        Snapshot {
            backlog: self
                .all_topics()
                .into_iter()
                .zip(view.backlog.iter().copied().chain(std::iter::repeat(0)))
                .collect(),
            drain_rate: view.rate,
            stalled: view.stalled,
            dead_letters: view.dead_letters,
            age_ms: view.sampled.map(|at| at.elapsed().as_millis() as u64),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, View> {
        self.state
            .lock()
            .expect("admission lock is never poisoned: no code panics while holding it")
    }
}

/// End minus committed offset (the start, when nothing is committed) per topic.
fn backlog_per_topic(topics: &[String], samples: &[PartitionSample]) -> Vec<u64> {
    topics
        .iter()
        .map(|topic| {
            samples
                .iter()
                .filter(|s| &s.topic == topic)
                .map(|s| (s.high - s.committed.unwrap_or(s.low)).max(0) as u64)
                .sum()
        })
        .collect()
}

/// Requests served between two samples: committed offsets advanced, less the requests
/// forwarded to the `overflow` topics meanwhile (a forward commits its request and writes
/// it again, to be served later).
fn drained(overflow: &[String], before: &[PartitionSample], after: &[PartitionSample]) -> u64 {
    let forwarded = written(overflow, after).saturating_sub(written(overflow, before));
    committed(after)
        .saturating_sub(committed(before))
        .saturating_sub(forwarded)
}

/// End offsets summed over the partitions of `topics`: how many records were written.
fn written(topics: &[String], samples: &[PartitionSample]) -> u64 {
    samples
        .iter()
        .filter(|s| topics.contains(&s.topic))
        .map(|s| s.high.max(0) as u64)
        .sum()
}

/// Committed offsets summed over every partition (the start where none).
fn committed(samples: &[PartitionSample]) -> u64 {
    samples
        .iter()
        .map(|s| s.committed.unwrap_or(s.low).max(0) as u64)
        .sum()
}

fn pause(shutdown: &CancellationToken, duration: Duration) {
    let until = Instant::now() + duration;
    while !shutdown.is_cancelled() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests;
