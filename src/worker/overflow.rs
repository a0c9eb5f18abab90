//! A full pool's overflow topics: with several pools of backends, a request whose pool has
//! a full buffer, while another pool still has room, is forwarded as it is to the pool's
//! own topic, `<request_topic>.pool.<backends>` ([`crate::routing::Routes::overflow_topics`]),
//! and its offset committed once the copy is written (in the same transaction in
//! exactly-once mode). Every worker of the group reads the pool topics too, pausing each
//! while its pool is full, so a slow or broken backend's backlog waits in its own topic and
//! never stands in front of another pool's requests. The copy keeps the request's record
//! timestamp (its queue wait and deadline run on), its trace (the forward is a span of the
//! request's trace) and the lane it came from (header `sluice-source-topic`).
//!
//! The worker creates the topics it needs (as many partitions as the request topic) when
//! the cluster lets it; a topic that does not exist and cannot be created leaves its pool
//! without overflow (its requests are buffered as with one pool).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;
use tracing::Instrument;

use super::outbox::Outbox;
use super::output::{Forward, Output};
use crate::config::Config;
use crate::envelope::headers;
use crate::kafka::consumer::WorkerConsumer;
use crate::kafka::metadata::partition_ids;
use crate::kafka::offsets::Ticket;
use crate::routing::{PoolKey, Routes};
use crate::telemetry::{propagation, semconv};

/// How long the metadata lookups of [`Overflow::prepare`] may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Room kept below the producer's `message.max.bytes` for the forwarded copy's header
/// and record overhead: a larger request is buffered instead of forwarded.
const FORWARD_MARGIN_BYTES: usize = 4096;
/// Headers not copied: the forward's own trace context replaces them.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Which pools have an overflow topic, and the largest request forwarded.
#[derive(Debug, Default)]
pub(crate) struct Overflow {
    topics: BTreeMap<PoolKey, String>,
    pools: HashMap<String, PoolKey>,
    max_bytes: usize,
}

impl Overflow {
    /// The overflow topics of `routes` that exist, created first where missing.
    pub(crate) async fn prepare(
        config: &Config,
        routes: &Routes,
        consumer: &Arc<WorkerConsumer>,
    ) -> Self {
        let wanted = routes.overflow_topics(&config.kafka.request_topic);
        if wanted.is_empty() {
            return Self::default();
        }
        let partitions = {
            let (consumer, topic) = (consumer.clone(), config.kafka.request_topic.clone());
            tokio::task::spawn_blocking(move || {
                partition_ids(consumer.as_ref(), &topic, METADATA_TIMEOUT)
            })
            .await
        };
        let count = match partitions {
            Ok(Ok(ids)) => ids.len() as i32,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "no overflow topics: the request topic's partitions are unknown");
                return Self::default();
            }
            Err(e) => {
                tracing::warn!(error = %e, "no overflow topics: the metadata task failed");
                return Self::default();
            }
        };
        let create: Vec<(String, i32)> = wanted.iter().map(|(_, t)| (t.clone(), count)).collect();
        if let Err(e) = crate::kafka::admin::ensure_topics(&config.kafka, &create).await {
            tracing::warn!(error = %e, "creating the overflow topics failed; using those that exist");
        }
        let mut found = Vec::new();
        for (pool, topic) in wanted {
            let (c, t) = (consumer.clone(), topic.clone());
            let exists = tokio::task::spawn_blocking(move || {
                partition_ids(c.as_ref(), &t, METADATA_TIMEOUT)
            })
            .await;
            match exists {
                Ok(Ok(_)) => found.push((pool, topic)),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, topic = %topic, "this pool has no overflow topic")
                }
                Err(e) => tracing::warn!(error = %e, topic = %topic, "metadata task failed"),
            }
        }
        let max_bytes = config
            .kafka_message_max_bytes()
            .unwrap_or(crate::config::LIBRDKAFKA_MESSAGE_MAX_BYTES);
        Self::new(found, max_bytes)
    }

    /// Overflow through `topics` (pool, topic), forwarding requests up to `max_bytes`
    /// (the producer's `message.max.bytes`).
    pub(crate) fn new(topics: Vec<(PoolKey, String)>, max_bytes: usize) -> Self {
        Self {
            pools: topics.iter().map(|(p, t)| (t.clone(), p.clone())).collect(),
            topics: topics.into_iter().collect(),
            max_bytes: max_bytes.saturating_sub(FORWARD_MARGIN_BYTES),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// The pools that have an overflow topic.
    pub(crate) fn pools(&self) -> impl Iterator<Item = &PoolKey> {
        self.topics.keys()
    }

    /// The overflow topics, to subscribe to and to measure.
    pub(crate) fn topics(&self) -> impl Iterator<Item = &String> {
        self.topics.values()
    }

    /// The overflow topic of `pool`, if it has one.
    pub(crate) fn topic_of(&self, pool: &[usize]) -> Option<&str> {
        self.topics.get(pool).map(String::as_str)
    }

    /// The pool whose overflow topic `topic` is.
    pub(crate) fn pool_of(&self, topic: &str) -> Option<&PoolKey> {
        self.pools.get(topic)
    }

    /// Whether `message` is small enough to forward.
    pub(crate) fn fits(&self, message: &OwnedMessage) -> bool {
        let headers: usize = message.headers().map_or(0, |h| {
            h.iter()
                .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                .sum()
        });
        let size = message.payload().map_or(0, <[u8]>::len)
            + message.key().map_or(0, <[u8]>::len)
            + headers;
        size <= self.max_bytes
    }
}

/// One forward counted (in the intake's count of unwritten forwards) until dropped.
pub(crate) struct Unwritten(Arc<AtomicUsize>);

impl Unwritten {
    pub(crate) fn count(unwritten: &Arc<AtomicUsize>) -> Self {
        unwritten.fetch_add(1, Ordering::Relaxed);
        Self(unwritten.clone())
    }
}

impl Drop for Unwritten {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The topic a forwarded request first arrived on (its lane), from its last
/// `sluice-source-topic` header.
pub(crate) fn source_topic(message: &OwnedMessage) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .filter(|h| h.key == headers::SOURCE_TOPIC)
        .filter_map(|h| h.value)
        .filter_map(|v| std::str::from_utf8(v).ok())
        .last()
        .map(str::to_string)
}

/// `message` as its copy on `topic`: key, value and headers as they came (but the trace
/// context), the source topic added, the original timestamp kept.
pub(crate) fn copy(message: &OwnedMessage, topic: &str) -> Forward {
    let mut record_headers: Vec<(String, Option<Vec<u8>>)> = message
        .headers()
        .map(|h| {
            h.iter()
                .filter(|h| !TRACE_HEADERS.iter().any(|t| h.key.eq_ignore_ascii_case(t)))
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    record_headers.push((
        headers::SOURCE_TOPIC.to_string(),
        Some(message.topic().as_bytes().to_vec()),
    ));
    let key = message.key().unwrap_or_default();
    Forward {
        topic: topic.to_string(),
        key: match std::str::from_utf8(key) {
            Ok(text) => text.to_string(),
            Err(_) => key.iter().map(|b| format!("{b:02x}")).collect(),
        },
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers: record_headers,
        timestamp: message.timestamp().to_millis(),
    }
}

/// Forwards `message` (taken as `ticket`) to `topic` inside a `process` span of the
/// request's trace, so the copy's trace context continues it. True once written and its
/// offset committable.
pub(crate) async fn forward(
    outbox: Arc<Outbox>,
    message: OwnedMessage,
    topic: String,
    ticket: Ticket,
    group: String,
) -> bool {
    let span = semconv::kafka_process_span(&semconv::Consumed {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        group: Some(&group),
    });
    propagation::adopt_remote_parent(&span, propagation::extract_kafka(message.headers()));
    let output = Output::Forward(copy(&message, &topic));
    outbox.deliver(output, None, ticket).instrument(span).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::Timestamp;

    fn message(topic: &str, headers: &[(&str, &str)]) -> OwnedMessage {
        let mut owned = OwnedHeaders::new();
        for (key, value) in headers {
            owned = owned.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        OwnedMessage::new(
            Some(b"{\"v\":1}".to_vec()),
            Some(b"id-1".to_vec()),
            topic.into(),
            Timestamp::CreateTime(1_700_000_000_000),
            3,
            42,
            Some(owned),
        )
    }

    #[test]
    fn a_copy_keeps_the_request_and_names_where_it_came_from() {
        let original = message(
            "req.high",
            &[("sluice-id", "id-1"), ("traceparent", "00-abc-def-01")],
        );
        let forward = copy(&original, "req.pool.big");
        assert_eq!(forward.topic, "req.pool.big");
        assert_eq!(forward.key, "id-1");
        assert_eq!(forward.payload, b"{\"v\":1}");
        assert_eq!(forward.timestamp, Some(1_700_000_000_000));
        let names: Vec<&str> = forward.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["sluice-id", "sluice-source-topic"],
            "trace context dropped"
        );
        // Read back from the pool topic, the copy says which lane it belongs to.
        let pairs: Vec<(&str, &str)> = forward
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    std::str::from_utf8(v.as_deref().unwrap()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            source_topic(&message("req.pool.big", &pairs)).as_deref(),
            Some("req.high")
        );
        assert_eq!(source_topic(&original), None);
    }

    #[test]
    fn pools_and_topics_both_ways_and_only_small_requests_forward() {
        let overflow = Overflow::new(
            vec![
                (vec![0], "t.pool.a".into()),
                (vec![1, 2], "t.pool.b.c".into()),
            ],
            4096 + 40,
        );
        assert_eq!(overflow.topic_of(&[1, 2]), Some("t.pool.b.c"));
        assert_eq!(overflow.topic_of(&[1]), None);
        assert_eq!(overflow.pool_of("t.pool.a"), Some(&vec![0]));
        assert!(overflow.fits(&message("t", &[("sluice-id", "id-1")])));
        let large = message("t", &[("sluice-id", &"x".repeat(64))]);
        assert!(
            !overflow.fits(&large),
            "over the margin below message.max.bytes"
        );
        assert!(Overflow::default().is_empty());
    }
}
