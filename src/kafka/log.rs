//! What librdkafka says, made readable: while the brokers cannot be reached it reports
//! every failed connection attempt of every broker thread (tens of lines a second), so
//! those become one line, "cannot reach Kafka at ... (connection refused), retrying",
//! repeated at most every [`REPEAT_EVERY`] with a count of what it stands for, and one line
//! when a broker is up again. Everything else passes through at its own level.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use serde::Deserialize;

/// Longest silence while Kafka stays unreachable.
pub(crate) const REPEAT_EVERY: Duration = Duration::from_secs(10);

/// How often librdkafka reports its statistics to these contexts, which is how a
/// recovery is noticed: `statistics.interval.ms` for clients created with them.
pub(crate) const STATS_INTERVAL_MS: &str = "1000";

/// Creates a client from `config` with a [`KafkaLog`] context (and the statistics it
/// needs to notice recovery).
pub fn create<T>(mut config: ClientConfig, brokers: &str) -> KafkaResult<T>
where
    T: FromClientConfigAndContext<KafkaLog>,
{
    config.set("statistics.interval.ms", STATS_INTERVAL_MS);
    config.create_with_context(KafkaLog::new(brokers))
}

/// The connectivity of one client, as its logs tell it.
#[derive(Debug, Default)]
struct Link {
    /// When the current outage was first reported; `None` while reachable.
    down_since: Option<Instant>,
    /// When the last summary line was written.
    said_at: Option<Instant>,
    /// Reports of the outage since that line.
    unsaid: u64,
}

/// A client context that summarises connection failures; use it (or embed it) for every
/// long-lived client.
/// The clients of one process that talk to the same brokers share one [`Link`], so an
/// outage is told once, not once per client.
#[derive(Debug)]
pub struct KafkaLog {
    /// The bootstrap servers, named in the lines.
    brokers: String,
    link: Arc<Mutex<Link>>,
}

impl KafkaLog {
    pub fn new(brokers: &str) -> Self {
        static LINKS: OnceLock<Mutex<HashMap<String, Arc<Mutex<Link>>>>> = OnceLock::new();
        let link = LINKS
            .get_or_init(Mutex::default)
            .lock()
            .expect("links lock is never poisoned: no panics while held")
            .entry(brokers.to_string())
            .or_default()
            .clone();
        Self {
            brokers: brokers.to_string(),
            link,
        }
    }

    /// A context with a link of its own (tests).
    #[cfg(test)]
    fn unshared(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_string(),
            link: Arc::default(),
        }
    }

    /// Whether the client is in an outage it has reported.
    pub(crate) fn is_down(&self) -> bool {
        self.lock().down_since.is_some()
    }

    /// One report of a failed connection: a line now if none was written for this
    /// outage or for [`REPEAT_EVERY`], else counted.
    fn unreachable(&self, reason: &str, now: Instant) {
        let mut link = self.lock();
        let since = *link.down_since.get_or_insert(now);
        let due = link
            .said_at
            .is_none_or(|at| now.duration_since(at) >= REPEAT_EVERY);
        if !due {
            link.unsaid += 1;
            return;
        }
        let more = std::mem::take(&mut link.unsaid);
        link.said_at = Some(now);
        drop(link);
        let cause = cause_of(reason);
        if more == 0 {
            tracing::warn!(brokers = %self.brokers, "cannot reach Kafka at {} ({cause}), retrying", self.brokers);
        } else {
            tracing::warn!(brokers = %self.brokers, reports = more,
                "cannot reach Kafka at {} ({cause}), retrying; {:.0} s so far", self.brokers,
                now.duration_since(since).as_secs_f64());
        }
    }

    /// A broker is up: ends an outage with one line.
    fn reachable(&self, now: Instant) {
        let mut link = self.lock();
        if let Some(since) = link.down_since.take() {
            *link = Link::default();
            drop(link);
            tracing::info!(brokers = %self.brokers, "Kafka at {} is reachable again after {:.1} s",
                self.brokers, now.duration_since(since).as_secs_f64());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link
            .lock()
            .expect("link lock is never poisoned: no panics while held")
    }

    /// [`ClientContext::log`] for contexts that embed this one.
    pub(crate) fn on_log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if is_connection_failure(facility, message) {
            return self.unreachable(message, Instant::now());
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "{facility} {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "{facility} {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "{facility} {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{facility} {message}"),
        }
    }

    /// [`ClientContext::error`] for contexts that embed this one.
    pub(crate) fn on_error(&self, error: KafkaError, reason: &str) {
        if is_transport_error(&error) {
            return self.unreachable(reason, Instant::now());
        }
        tracing::error!(target: "librdkafka", error = %error, "{reason}");
    }

    /// [`ClientContext::stats_raw`] for contexts that embed this one: notices recovery.
    pub(crate) fn on_stats(&self, statistics: &[u8]) {
        if !self.is_down() {
            return;
        }
        if let Ok(stats) = serde_json::from_slice::<BrokerStates>(statistics) {
            if stats.brokers.values().any(|b| b.state == "UP") {
                self.reachable(Instant::now());
            }
        }
    }
}

impl ClientContext for KafkaLog {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.on_log(level, facility, message);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.on_stats(statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.on_error(error, reason);
    }
}

impl ConsumerContext for KafkaLog {}

/// The part of librdkafka's statistics read here.
#[derive(Deserialize)]
struct BrokerStates {
    #[serde(default)]
    brokers: HashMap<String, BrokerState>,
}

#[derive(Deserialize)]
struct BrokerState {
    state: String,
}

/// Errors that mean "the brokers cannot be reached (yet)".
pub(crate) fn is_transport_error(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
        )
    )
}

/// Log lines that report a failed or lost connection.
fn is_connection_failure(facility: &str, message: &str) -> bool {
    facility == "FAIL"
        || message.contains("Connect to ")
        || message.contains("brokers are down")
        || message.contains("Failed to resolve")
}

/// The cause in librdkafka's wording, without the broker-thread detail:
/// "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after
/// 0ms in state CONNECT)" -> "connection refused".
fn cause_of(reason: &str) -> String {
    let tail = reason.rsplit("failed: ").next().unwrap_or(reason);
    let cause = tail.split(" (after").next().unwrap_or(tail).trim();
    let cause = if cause.is_empty() { reason } else { cause };
    let mut chars = cause.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_cut_from_librdkafkas_wording() {
        assert_eq!(
            cause_of("127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)"),
            "connection refused"
        );
        assert_eq!(cause_of("1/1 brokers are down"), "1/1 brokers are down");
    }

    #[test]
    fn an_outage_is_one_line_then_one_every_ten_seconds_then_one_on_recovery() {
        let log = KafkaLog::unshared("127.0.0.1:1");
        let start = Instant::now();
        for i in 0..100 {
            log.unreachable("Connection refused", start + Duration::from_millis(10 * i));
        }
        {
            let link = log.lock();
            assert_eq!(link.said_at, Some(start), "one line at the first report");
            assert_eq!(link.unsaid, 99);
        }
        log.unreachable("Connection refused", start + REPEAT_EVERY);
        {
            let link = log.lock();
            assert_eq!(link.said_at, Some(start + REPEAT_EVERY));
            assert_eq!(link.unsaid, 0, "the repeat line counted them");
        }
        assert!(log.is_down());
        log.on_stats(br#"{"brokers":{"b/1":{"state":"DOWN"}}}"#);
        assert!(log.is_down(), "no broker is up");
        log.on_stats(br#"{"brokers":{"b/1":{"state":"UP"}},"topics":{}}"#);
        assert!(!log.is_down(), "a broker up ends the outage");
    }

    #[test]
    fn clients_of_the_same_brokers_share_one_link() {
        let (a, b) = (KafkaLog::new("shared:1"), KafkaLog::new("shared:1"));
        a.unreachable("Connection refused", Instant::now());
        assert!(b.is_down());
        assert!(!KafkaLog::new("other:1").is_down());
    }

    #[test]
    fn connection_failures_are_told_from_other_lines() {
        assert!(is_connection_failure(
            "FAIL",
            "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed"
        ));
        assert!(!is_connection_failure(
            "CONFWARN",
            "Configuration property x is ignored"
        ));
        assert!(is_transport_error(&KafkaError::Global(
            RDKafkaErrorCode::AllBrokersDown
        )));
        assert!(!is_transport_error(&KafkaError::Global(
            RDKafkaErrorCode::UnknownTopicOrPartition
        )));
    }
}
