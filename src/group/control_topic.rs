//! The control topic on Kafka: a producer that writes state records (small, frequent,
//! loss-tolerant: acks=1, no linger, a short timeout) and a reader that assigns every
//! partition from the beginning (the compacted topic then holds each member's latest),
//! with no consumer group ([`crate::kafka::reader`]), and hands every record to the pacer.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::pacer::Bus;
use super::record::StateRecord;
use crate::config::KafkaConfig;
use crate::kafka::log::KafkaLog;
use crate::kafka::reader::{ReaderError, Start, TopicReader};
use crate::kafka::{client_config, ClientKind};

/// Records waiting for the pacer; beyond this the reader waits.
const QUEUE: usize = 1024;
/// Pause after a read error (a missing topic, a broker away) before reading again.
const ERROR_PAUSE: Duration = Duration::from_millis(200);
/// Longest wait for the last record at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the partitions are looked up again while the topic cannot be found.
const METADATA_RETRY: Duration = Duration::from_secs(2);
/// Longest wait of one partition lookup.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// No record for this long: the reader is stuck, not the topic quiet (see [`read`]).
const SILENT: Duration = Duration::from_secs(5);

/// Writes state records to the control topic; clones share one producer.
#[derive(Clone)]
pub(crate) struct KafkaBus {
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
pub(crate) fn start_reader(
    kafka: &KafkaConfig,
    topic: &str,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<StateRecord>, KafkaError> {
    // Fails early on a bad configuration; later readers are made the same way.
    let first = new_reader(kafka, topic)?;
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

fn new_reader(kafka: &KafkaConfig, topic: &str) -> Result<TopicReader, KafkaError> {
    TopicReader::new(
        kafka,
        topic,
        "control",
        &[
            ("fetch.wait.max.ms", "20"),
            ("fetch.error.backoff.ms", "100"),
            ("topic.metadata.refresh.interval.ms", "5000"),
        ],
        METADATA_TIMEOUT,
    )
}

/// Reads until the channel closes. Every live worker writes several records a second, so
/// a topic silent for [`SILENT`] means this reader is stuck (a partition leader that went
/// away and came back can leave it so): it is replaced by a fresh one that starts at the
/// end (the members' next records arrive within a publish interval).
async fn read(
    first: TopicReader,
    kafka: &KafkaConfig,
    topic: &str,
    sender: mpsc::Sender<StateRecord>,
) {
    let mut reader = Some(first);
    let mut start = Start::Beginning;
    loop {
        let mut current = match reader.take() {
            Some(reader) => reader,
            None => match new_reader(kafka, topic) {
                Ok(reader) => reader,
                Err(e) => {
                    tracing::warn!(error = %e, topic, "cannot create a control-topic reader");
                    tokio::time::sleep(METADATA_RETRY).await;
                    continue;
                }
            },
        };
        match current.assign_new(start).await {
            Ok(_) => {}
            // While the topic cannot be found, a fresh reader looks again.
            Err(ReaderError::Topic(_)) => {
                tokio::time::sleep(METADATA_RETRY).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, topic, "cannot assign the control topic");
                tokio::time::sleep(METADATA_RETRY).await;
                continue;
            }
        }
        loop {
            let received = current.recv_or_pause(ERROR_PAUSE, |e| {
                tracing::debug!(error = %e, topic, "reading the control topic failed");
            });
            let message = match tokio::time::timeout(SILENT, received).await {
                Ok(Some(message)) => message,
                Ok(None) => continue,
                Err(_) => {
                    tracing::debug!(topic, "control topic silent; reading it afresh");
                    break;
                }
            };
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
        start = Start::End;
        current.close().await;
    }
}

/// Hands every record of `source` to each of `count` receivers (one per backend's pacer:
/// each keeps its own backend's records). A receiver that is gone is skipped; the others
/// go on.
pub(crate) fn fan_out(
    mut source: mpsc::Receiver<StateRecord>,
    count: usize,
) -> Vec<mpsc::Receiver<StateRecord>> {
    if count == 1 {
        return vec![source];
    }
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..count).map(|_| mpsc::channel(QUEUE)).unzip();
    tokio::spawn(async move {
        while let Some(record) = source.recv().await {
            for sender in &senders {
                let _ = sender.send(record.clone()).await;
            }
        }
    });
    receivers
}
