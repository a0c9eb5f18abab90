//! Kafka plumbing, the bottom layer every role builds on (it imports only config,
//! envelope, telemetry and admin): client configuration, the traced producer, the worker's
//! consumer, the contiguous-prefix offset tracker, the reading kit for clients outside any
//! consumer group ([`metadata`] for a topic's partitions, [`reader`] for every partition
//! of a topic, [`watermarks`] for where logs end), and the embedded broker used by
//! `sluice dev`.

pub mod admin;
pub mod consumer;
pub mod embedded;
pub mod log;
pub mod metadata;
pub mod offsets;
pub mod producer;
pub mod reader;
pub mod reply_record;
pub mod watermarks;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// Which kind of client a configuration is for: pass-through properties that only
/// the other kind understands are left out (librdkafka warns about them otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    Producer,
    Consumer,
    Admin,
}

/// Property-name prefixes only consumers use.
const CONSUMER_ONLY: &[&str] = &[
    "group.",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "auto.offset.reset",
    "enable.auto.",
    "auto.commit.",
    "partition.assignment.strategy",
    "fetch.",
    "queued.",
    "isolation.level",
    "check.crcs",
    "enable.partition.eof",
];
/// Property-name prefixes only producers use.
const PRODUCER_ONLY: &[&str] = &[
    "acks",
    "request.required.acks",
    "linger.ms",
    "queue.buffering.",
    "batch.",
    "compression.",
    "enable.idempotence",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "retries",
    "retry.backoff",
    "transactional.id",
    "transaction.timeout.ms",
    "max.in.flight",
    "partitioner",
    "sticky.partitioning",
];

impl ClientKind {
    fn accepts(self, key: &str) -> bool {
        let starts = |list: &[&str]| list.iter().any(|p| key.starts_with(p));
        match self {
            ClientKind::Producer => !starts(CONSUMER_ONLY),
            ClientKind::Consumer => !starts(PRODUCER_ONLY),
            ClientKind::Admin => !starts(CONSUMER_ONLY) && !starts(PRODUCER_ONLY),
        }
    }
}

/// Defaults of every client, before the caller's own.
///
/// `reconnect.backoff.max.ms`: librdkafka backs off reconnecting up to 10 s by default.
/// After a broker outage that kept a client waiting a full backoff after the broker was
/// back (the ingress answered 503 for up to 8 s more), and while it waits it does not
/// time out queued writes either (503s took up to 8 s instead of about the enqueue
/// timeout). Measured in tests/chaos/broker_outage.rs; 1 s bounds both.
const CLIENT_DEFAULTS: &[(&str, &str)] = &[("reconnect.backoff.max.ms", "1000")];

/// A client configuration with the brokers and the operator's pass-through properties.
/// Callers set their own defaults first and their guarantees after this.
pub fn client_config(
    kafka: &KafkaConfig,
    kind: ClientKind,
    defaults: &[(&str, &str)],
    enforced: &[(&str, &str)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in CLIENT_DEFAULTS.iter().chain(defaults) {
        config.set(*key, *value);
    }
    for (key, value) in kafka.client.iter().filter(|(key, _)| kind.accepts(key)) {
        config.set(key, value);
    }
    // What the delivery guarantees rest on is not the operator's to override.
    for (key, value) in enforced {
        config.set(*key, *value);
    }
    config
}

/// A consumer configuration for readers that assign partitions themselves and never
/// join a group or commit (the ingress's reply reader, loadgen, the DLQ tools).
/// librdkafka still wants a `group.id` for offset lookups: see [`unjoined_group_id`].
pub(crate) fn unjoined_reader_config(
    kafka: &KafkaConfig,
    purpose: &str,
    defaults: &[(&str, &str)],
    partition_eof: bool,
) -> ClientConfig {
    let group = unjoined_group_id(purpose);
    let eof = if partition_eof { "true" } else { "false" };
    client_config(
        kafka,
        ClientKind::Consumer,
        defaults,
        &[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", eof),
        ],
    )
}

/// A `group.id` for a client that assigns partitions itself (librdkafka refuses `assign`
/// and offset lookups without one): a fresh `sluice-<purpose>-<uuid>` that no member ever
/// joins (no subscribe) and that never commits, so it leaves no trace on the broker and
/// shares nothing.
pub(crate) fn unjoined_group_id(purpose: &str) -> String {
    format!("sluice-{purpose}-{}", crate::envelope::new_id())
}

/// Owned copy of a message's headers as (key, value) pairs, for dead letters and tests.
pub(crate) fn header_pairs<H: rdkafka::message::Headers>(
    headers: Option<&H>,
) -> Vec<(String, Option<Vec<u8>>)> {
    headers
        .map(|h| {
            h.iter()
                .map(|header| (header.key.to_string(), header.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_through_goes_to_the_clients_that_understand_it() {
        let mut kafka = KafkaConfig::default();
        for (k, v) in [
            ("session.timeout.ms", "2000"),
            ("linger.ms", "9"),
            ("security.protocol", "SSL"),
        ] {
            kafka.client.insert(k.into(), v.into());
        }
        let producer = client_config(
            &kafka,
            ClientKind::Producer,
            &[("linger.ms", "2")],
            &[("acks", "all")],
        );
        assert_eq!(
            producer.get("linger.ms"),
            Some("9"),
            "operator overrides defaults"
        );
        assert_eq!(producer.get("session.timeout.ms"), None);
        assert_eq!(producer.get("security.protocol"), Some("SSL"));
        let consumer = client_config(&kafka, ClientKind::Consumer, &[], &[]);
        assert_eq!(consumer.get("session.timeout.ms"), Some("2000"));
        assert_eq!(consumer.get("linger.ms"), None);
        let admin = client_config(&kafka, ClientKind::Admin, &[], &[]);
        assert_eq!(admin.get("security.protocol"), Some("SSL"));
        assert_eq!(admin.get("linger.ms"), None);
    }

    #[test]
    fn reconnect_backoff_is_short_unless_the_operator_says_otherwise() {
        let mut kafka = KafkaConfig::default();
        for kind in [
            ClientKind::Producer,
            ClientKind::Consumer,
            ClientKind::Admin,
        ] {
            let config = client_config(&kafka, kind, &[], &[]);
            assert_eq!(config.get("reconnect.backoff.max.ms"), Some("1000"));
        }
        kafka
            .client
            .insert("reconnect.backoff.max.ms".into(), "5000".into());
        let config = client_config(&kafka, ClientKind::Producer, &[], &[]);
        assert_eq!(config.get("reconnect.backoff.max.ms"), Some("5000"));
    }

    #[test]
    fn enforced_properties_win_over_pass_through() {
        let mut kafka = KafkaConfig::default();
        kafka.client.insert("acks".into(), "0".into());
        let producer = client_config(&kafka, ClientKind::Producer, &[], &[("acks", "all")]);
        assert_eq!(producer.get("acks"), Some("all"));
    }
}
