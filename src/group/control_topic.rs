//! The control topic on Kafka: a producer that writes state records (small, frequent,
//! loss-tolerant: acks=1, no linger, a short timeout) and a reader that assigns every
//! partition from the beginning (the compacted topic then holds each member's latest),
//! with no consumer group, and hands every record to the pacer.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::kafka::log::KafkaLog;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::pacer::Bus;
use super::record::StateRecord;
use crate::config::KafkaConfig;
use crate::kafka::{client_config, unjoined_reader_config, ClientKind};

/// Records waiting for the pacer; beyond this the reader waits.
const QUEUE: usize = 1024;
/// Pause after a read error (a missing topic, a broker away) before reading again.
const ERROR_PAUSE: Duration = Duration::from_millis(200);
/// Longest wait for the last record at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the partitions are looked up again while the topic cannot be found.
const METADATA_RETRY: Duration = Duration::from_secs(2);
/// No record for this long: the reader is stuck, not the topic quiet (see [`read`]).
const SILENT: Duration = Duration::from_secs(5);

/// Writes state records to the control topic.
pub struct KafkaBus {
    producer: FutureProducer<KafkaLog>,
    topic: String,
}

impl KafkaBus {
    pub fn new(kafka: &KafkaConfig, topic: &str) -> Result<Self, KafkaError> {
        let producer = client_config(
            kafka,
            ClientKind::Producer,
            &[("linger.ms", "0")],
            &[
                ("acks", "1"),
                ("enable.idempotence", "false"),
                ("message.timeout.ms", "2000"),
                ("queue.buffering.max.kbytes", "1024"),
            ],
        );
        let producer = crate::kafka::log::create(producer, &kafka.bootstrap_servers)?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
        })
    }
}

impl Bus for KafkaBus {
    fn publish(&self, record: &StateRecord) {
        let payload = serde_json::to_vec(record).expect("a state record always serializes");
        let key = record.key();
        // Not awaited: a record that fails is missed when it is not read back.
        if let Err((e, _)) = self
            .producer
            .send_result(FutureRecord::to(&self.topic).key(&key).payload(&payload))
        {
            tracing::debug!(error = %e, "state record not queued");
        }
    }

    async fn flush(&self) {
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || {
            rdkafka::producer::Producer::flush(&producer, FLUSH_TIMEOUT)
        })
        .await;
    }
}

/// Starts reading the control topic; the records arrive on the returned channel until
/// `shutdown`.
pub fn start_reader(
    kafka: &KafkaConfig,
    topic: &str,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<StateRecord>, KafkaError> {
    // Fails early on a bad configuration; later readers are made the same way.
    let first = reader(kafka)?;
    let (sender, receiver) = mpsc::channel(QUEUE);
    let (kafka, topic) = (kafka.clone(), topic.to_string());
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = read(first, &kafka, &topic, sender) => {}
        }
    });
    Ok(receiver)
}

fn reader(kafka: &KafkaConfig) -> Result<StreamConsumer<KafkaLog>, KafkaError> {
    let config = unjoined_reader_config(
        kafka,
        "control",
        &[
            ("fetch.wait.max.ms", "20"),
            ("fetch.error.backoff.ms", "100"),
            ("topic.metadata.refresh.interval.ms", "5000"),
        ],
        false,
    );
    crate::kafka::log::create(config, &kafka.bootstrap_servers)
}

/// Reads until the channel closes. Every live worker writes several records a second, so
/// a topic silent for [`SILENT`] means this reader is stuck (a partition leader that went
/// away and came back can leave it so): it is replaced by a fresh one that starts at the
/// end (the members' next records arrive within a publish interval).
async fn read(
    first: StreamConsumer<KafkaLog>,
    kafka: &KafkaConfig,
    topic: &str,
    sender: mpsc::Sender<StateRecord>,
) {
    let mut consumer = Some(first);
    let mut start = Offset::Beginning;
    loop {
        let current = match consumer.take() {
            Some(consumer) => consumer,
            None => match reader(kafka) {
                Ok(consumer) => consumer,
                Err(e) => {
                    tracing::warn!(error = %e, topic, "cannot create a control-topic reader");
                    tokio::time::sleep(METADATA_RETRY).await;
                    continue;
                }
            },
        };
        let current = std::sync::Arc::new(current);
        let Some(partitions) = partition_count(&current, topic).await else {
            tokio::time::sleep(METADATA_RETRY).await;
            continue;
        };
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            if let Err(e) = assignment.add_partition_offset(topic, partition, start) {
                tracing::warn!(error = %e, topic, "cannot assign the control topic");
                return;
            }
        }
        if let Err(e) = current.assign(&assignment) {
            tracing::warn!(error = %e, topic, "cannot assign the control topic");
            tokio::time::sleep(METADATA_RETRY).await;
            continue;
        }
        loop {
            let received = match tokio::time::timeout(SILENT, current.recv()).await {
                Ok(received) => received,
                Err(_) => {
                    tracing::debug!(topic, "control topic silent; reading it afresh");
                    break;
                }
            };
            match received {
                Ok(message) => {
                    let Some(payload) = message.payload() else {
                        continue;
                    };
                    match serde_json::from_slice::<StateRecord>(payload) {
                        Ok(record) => {
                            if sender.send(record).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "ignoring an unreadable state record")
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, topic, "reading the control topic failed");
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
        }
        start = Offset::End;
        // Dropping a consumer blocks on librdkafka: off the async threads.
        let _ = tokio::task::spawn_blocking(move || drop(current)).await;
    }
}

/// The topic's partition count from cluster metadata (blocking call, off the async
/// threads); `None` while the topic cannot be found.
async fn partition_count(
    consumer: &std::sync::Arc<StreamConsumer<KafkaLog>>,
    topic: &str,
) -> Option<i32> {
    let (consumer, name) = (consumer.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(Some(&name), Duration::from_secs(2))
            .ok()?;
        let topic = metadata.topics().iter().find(|t| t.name() == name)?;
        if topic.error().is_some() || topic.partitions().is_empty() {
            return None;
        }
        Some(topic.partitions().len() as i32)
    })
    .await
    .ok()
    .flatten()
}
