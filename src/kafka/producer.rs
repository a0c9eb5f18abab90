//! The traced, idempotent Kafka producer used by the ingress (requests) and the worker
//! (replies, dead letters). A send resolves only when the broker acknowledged the write
//! (acks=all), so callers may answer 202 or commit offsets on its success.

use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use rdkafka::TopicPartitionList;
use tracing::Instrument;

use super::log::KafkaLog;
use crate::config::KafkaConfig;
use crate::telemetry::{propagation, semconv};

/// Longest a transaction call (init, send offsets, commit, abort) may block.
pub(crate) const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Where an acknowledged message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// One message to write; the trace context is added by [`Producer::send`].
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: &'a str,
    pub payload: &'a [u8],
    /// `None` is a header without a value, which Kafka keeps distinct from an empty one.
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
    /// The record's timestamp (unix ms); `None`: now. A forwarded request keeps its
    /// original one, which is when it was enqueued.
    pub timestamp: Option<i64>,
}

/// Whether Kafka refused a record for its size (librdkafka's `message.max.bytes`, or the
/// broker's limit): the same record can never be written, so retrying cannot help.
pub(crate) fn is_too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
    )
}

/// How a producer behaves when the broker is slow or gone.
#[derive(Debug, Clone, Copy)]
pub struct ProducerLimits {
    /// librdkafka `message.timeout.ms`: a write not acknowledged by then fails (and is
    /// not retried later behind the caller's back).
    pub delivery_timeout: Duration,
    /// How long to wait for room in the local queue when it is full; zero fails at once.
    pub queue_wait: Duration,
    /// librdkafka `queue.buffering.max.kbytes`: bounds the producer's memory.
    pub queue_max_kbytes: u32,
}

/// Idempotent acks=all producer that opens a PRODUCER span per message.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer<KafkaLog>,
    limits: ProducerLimits,
}

impl Producer {
    pub fn new(kafka: &KafkaConfig, limits: ProducerLimits) -> Result<Self, KafkaError> {
        Self::create(kafka, limits, None)
    }

    /// A transactional producer (`transactional.id`), initialised: blocking, run it on a
    /// blocking thread. Starting it fences any older producer with the same id.
    pub(crate) fn transactional_blocking(
        kafka: &KafkaConfig,
        limits: ProducerLimits,
        transactional_id: &str,
    ) -> Result<Self, KafkaError> {
        let producer = Self::create(kafka, limits, Some(transactional_id))?;
        producer.inner.init_transactions(TRANSACTION_TIMEOUT)?;
        Ok(producer)
    }

    fn create(
        kafka: &KafkaConfig,
        limits: ProducerLimits,
        transactional_id: Option<&str>,
    ) -> Result<Self, KafkaError> {
        let timeout_ms = limits.delivery_timeout.as_millis().max(1).to_string();
        let kbytes = limits.queue_max_kbytes.to_string();
        let mut config = super::client_config(
            kafka,
            super::ClientKind::Producer,
            &[("linger.ms", "2"), ("compression.type", "lz4")],
            &[
                ("acks", "all"),
                ("enable.idempotence", "true"),
                ("message.timeout.ms", &timeout_ms),
                ("queue.buffering.max.kbytes", &kbytes),
            ],
        );
        if let Some(id) = transactional_id {
            config.set("transactional.id", id);
        }
        Ok(Self {
            inner: super::log::create(config, &kafka.bootstrap_servers)?,
            limits,
        })
    }

    /// Starts a transaction (transactional producers only).
    pub(crate) fn begin_transaction(&self) -> Result<(), KafkaError> {
        self.inner.begin_transaction()
    }

    /// Adds consumed offsets to the open transaction. Blocking.
    pub(crate) fn send_offsets_blocking(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), KafkaError> {
        self.inner
            .send_offsets_to_transaction(offsets, group, TRANSACTION_TIMEOUT)
    }

    /// Commits the open transaction. Blocking.
    pub(crate) fn commit_transaction_blocking(&self) -> Result<(), KafkaError> {
        self.inner.commit_transaction(TRANSACTION_TIMEOUT)
    }

    /// Aborts the open transaction. Blocking.
    pub(crate) fn abort_transaction_blocking(&self) -> Result<(), KafkaError> {
        self.inner.abort_transaction(TRANSACTION_TIMEOUT)
    }

    /// Writes one message inside a `send {topic}` PRODUCER span (a child of the current
    /// span) whose context travels in the `traceparent`/`tracestate` headers.
    pub async fn send(&self, message: Outgoing<'_>) -> Result<Delivered, KafkaError> {
        let span = semconv::kafka_send_span(message.topic, message.key);
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 2);
        for (key, value) in &message.headers {
            headers = headers.insert(Header { key, value: *value });
        }
        let headers = propagation::inject_kafka(&span, headers);
        let mut record = FutureRecord::to(message.topic)
            .key(message.key)
            .payload(message.payload)
            .headers(headers);
        if let Some(timestamp) = message.timestamp {
            record = record.timestamp(timestamp);
        }
        let result = self
            .inner
            .send(record, Timeout::After(self.limits.queue_wait))
            .instrument(span.clone())
            .await;
        match result {
            Ok(delivery) => {
                semconv::record_delivery(&span, delivery.partition, delivery.offset);
                Ok(Delivered {
                    partition: delivery.partition,
                    offset: delivery.offset,
                })
            }
            Err((error, _)) => {
                semconv::record_error(&span, &error.to_string());
                Err(error)
            }
        }
    }

    /// Asks the cluster for metadata: true when a broker answered within `timeout`.
    /// Blocking; run it on a blocking thread.
    pub(crate) fn probe_blocking(&self, timeout: Duration) -> bool {
        self.inner.client().fetch_metadata(None, timeout).is_ok()
    }

    /// Waits up to `timeout` for queued messages to be delivered. Blocking.
    pub(crate) fn flush_blocking(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(timeout)
    }
}
