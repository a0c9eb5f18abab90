//! The outbox: the one place where a message's output leaves the worker and its offset
//! becomes committable. It owns the offset tracker's working side: a message is taken
//! ([`Outbox::take`]), and once its output is written its ticket is completed, which
//! stores the contiguous completed prefix for commit. Two flavours:
//!
//! - at least once: the output is written (acks=all, retried until Kafka takes it), then
//!   the offset is stored; librdkafka commits stored offsets in the background and on
//!   revoke, and [`Outbox::close`] commits what is left;
//! - transactional (`worker.exactly_once`): the output and the offsets it completes go
//!   into one Kafka transaction ([`super::transactions`]).
//!
//! (The consumer's rebalance callback forgets revoked partitions in the same tracker, so
//! late completions of a revoked partition commit nothing.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::metrics::WorkerMetrics;
use super::output::{Output, FORWARDED};
use super::transactions::{Transactions, TxnOutput};
use crate::envelope::now_ms;
use crate::kafka::consumer::WorkerConsumer;
use crate::kafka::offsets::{complete_and_store, OffsetTracker, Ticket};
use crate::kafka::producer::{is_too_large, Outgoing, Producer};

/// Pause before the first retry of a failed Kafka write; doubles up to the cap.
const WRITE_RETRY_INITIAL: Duration = Duration::from_millis(100);
const WRITE_RETRY_MAX: Duration = Duration::from_secs(5);
/// How long the last writes may take to flush when the worker stops.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);
/// How long the transaction committer may take to finish its batch when the worker stops.
const CLOSE_COMMITTER: Duration = Duration::from_secs(2);
/// How long flushing the last writes and committing may take when the worker stops.
const CLOSE_COMMIT: Duration = Duration::from_secs(10);

/// How outputs are written.
enum Flavour {
    AtLeastOnce {
        producer: Producer,
    },
    Transactional {
        /// Dropped by `close`: the committer ends once the last handle is gone.
        transactions: Mutex<Option<Transactions>>,
        committer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    },
}

/// See the module documentation. Shared by every message task.
pub struct Outbox {
    flavour: Flavour,
    /// Begun on take, completed on delivery; the consumer's callback forgets revoked
    /// partitions in it.
    tracker: Arc<Mutex<OffsetTracker>>,
    consumer: Arc<WorkerConsumer>,
    dlq_topic: String,
    metrics: WorkerMetrics,
    /// Cancelled when the shutdown grace period is over: stop retrying writes.
    hard_stop: CancellationToken,
}

impl Outbox {
    /// Writes with `producer`, then stores the offset.
    pub(crate) fn at_least_once(
        producer: Producer,
        tracker: Arc<Mutex<OffsetTracker>>,
        consumer: Arc<WorkerConsumer>,
        dlq_topic: &str,
        metrics: WorkerMetrics,
    ) -> Self {
        Self {
            flavour: Flavour::AtLeastOnce { producer },
            tracker,
            consumer,
            dlq_topic: dlq_topic.to_string(),
            metrics,
            hard_stop: CancellationToken::new(),
        }
    }

    /// Writes through transactions with `producer` (transactional, initialised), which
    /// commit the offsets too; `failed` is cancelled when one fails.
    pub fn transactional(
        producer: Producer,
        linger: Duration,
        failed: CancellationToken,
        tracker: Arc<Mutex<OffsetTracker>>,
        consumer: Arc<WorkerConsumer>,
        dlq_topic: &str,
        metrics: WorkerMetrics,
    ) -> Self {
        let (transactions, committer) =
            Transactions::start(producer, consumer.clone(), tracker.clone(), linger, failed);
        Self {
            flavour: Flavour::Transactional {
                transactions: Mutex::new(Some(transactions)),
                committer: Mutex::new(Some(committer)),
            },
            tracker,
            consumer,
            dlq_topic: dlq_topic.to_string(),
            metrics,
            hard_stop: CancellationToken::new(),
        }
    }

    pub fn exactly_once(&self) -> bool {
        matches!(self.flavour, Flavour::Transactional { .. })
    }

    /// Records that `message` was taken for processing: its ticket.
    pub fn take(&self, message: &OwnedMessage) -> Ticket {
        self.tracker()
            .begin(message.topic(), message.partition(), message.offset())
    }

    /// Whether `ticket` still belongs to its partition's current assignment.
    pub(crate) fn is_current(&self, ticket: &Ticket) -> bool {
        self.tracker().is_current(ticket)
    }

    /// Stops retrying writes (the grace period is over): their messages are re-delivered.
    pub(crate) fn hard_stop(&self) {
        self.hard_stop.cancel();
    }

    /// Writes `output`, the one outcome of the message `ticket` took, then makes its offset
    /// committable. True once both happened; false when abandoned (hard stop) or the
    /// transaction failed, and then the message is re-delivered.
    pub(crate) async fn deliver(
        &self,
        output: Output,
        enqueued_ms: Option<u64>,
        ticket: Ticket,
    ) -> bool {
        let producer = match &self.flavour {
            Flavour::Transactional { transactions, .. } => {
                let transactions = transactions
                    .lock()
                    .expect("the transactions lock is never poisoned")
                    .clone();
                let Some(transactions) = transactions else {
                    return false;
                };
                let record = output.to_record(&self.dlq_topic);
                let outcome = record.outcome;
                let committed = transactions
                    .write(TxnOutput {
                        topic: record.topic,
                        key: record.key,
                        payload: record.payload,
                        headers: record.headers,
                        timestamp: record.timestamp,
                        ticket,
                    })
                    .await;
                if committed {
                    self.finished(outcome, enqueued_ms);
                }
                return committed;
            }
            Flavour::AtLeastOnce { producer } => producer,
        };
        let Some(outcome) = self.write(producer, output).await else {
            return false;
        };
        self.finished(outcome, enqueued_ms);
        complete_and_store(&self.tracker, &ticket, |position| {
            self.store_position(&ticket.topic, ticket.partition, position)
        });
        true
    }

    /// Writes the output, retrying until Kafka acknowledges it or the hard stop (`None`).
    /// An output the cluster refuses as too large is written smaller instead
    /// ([`Output::shrink`]): retrying it as it is could never succeed and would hold back
    /// the partition's commits for good.
    async fn write(&self, producer: &Producer, output: Output) -> Option<&'static str> {
        let mut output = output;
        let mut record = output.to_record(&self.dlq_topic);
        let mut wait = WRITE_RETRY_INITIAL;
        loop {
            let sent = producer
                .send(Outgoing {
                    topic: &record.topic,
                    key: &record.key,
                    payload: &record.payload,
                    headers: record
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_deref()))
                        .collect(),
                    timestamp: record.timestamp,
                })
                .await;
            let e = match sent {
                Ok(_) => return Some(record.outcome),
                Err(e) => e,
            };
            self.metrics.produce_failures.inc();
            if let Some(smaller) = is_too_large(&e).then(|| output.shrink()).flatten() {
                tracing::warn!(error = %e, topic = %record.topic, bytes = record.payload.len(),
                    "outcome too large for the topic; writing it without what does not fit");
                output = smaller;
                record = output.to_record(&self.dlq_topic);
                continue;
            }
            tracing::warn!(error = %e, topic = %record.topic, retry_in_ms = wait.as_millis() as u64,
                "writing the outcome to Kafka failed; retrying");
            tokio::select! {
                _ = self.hard_stop.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(WRITE_RETRY_MAX);
        }
    }

    fn finished(&self, outcome: &str, enqueued_ms: Option<u64>) {
        if outcome == FORWARDED {
            self.metrics.forwarded.inc();
            return;
        }
        self.metrics.finished(outcome);
        match enqueued_ms {
            Some(enqueued) => {
                let e2e_ms = now_ms().saturating_sub(enqueued);
                self.metrics
                    .end_to_end_seconds
                    .observe(e2e_ms as f64 / 1000.0);
            }
            None => {
                self.metrics.dead_letters.inc();
            }
        }
    }

    /// Stores `position` (the next offset to consume) for the next commit. Not
    /// `store_offset`: that legacy librdkafka call stores `offset + 1`, which here would
    /// skip the lowest unfinished message.
    fn store_position(&self, topic: &str, partition: i32, position: i64) {
        let mut list = TopicPartitionList::new();
        let stored = list
            .add_partition_offset(topic, partition, Offset::Offset(position))
            .and_then(|()| self.consumer.store_offsets(&list));
        if let Err(e) = stored {
            // The partition was revoked meanwhile; its new owner re-processes.
            tracing::debug!(error = %e, topic, partition, "offset not stored");
        }
    }

    /// At the end: flushes the last writes and commits what was stored (at least once), or
    /// lets the committer finish its last transaction. Blocking calls run off the async
    /// threads.
    pub async fn close(&self) {
        match &self.flavour {
            Flavour::AtLeastOnce { producer } => {
                if self.consumer.context().log.is_down() {
                    // A commit would wait for a coordinator that cannot be reached. What
                    // it would have committed is re-delivered instead (at least once).
                    tracing::warn!(
                        "Kafka unreachable at shutdown: offsets not committed; \
                        the last finished requests will be re-delivered"
                    );
                    return;
                }
                let (producer, consumer) = (producer.clone(), self.consumer.clone());
                let closed = tokio::task::spawn_blocking(move || {
                    if let Err(e) = producer.flush_blocking(CLOSE_FLUSH) {
                        tracing::warn!(error = %e, "flushing the producer failed");
                    }
                    commit_stored(&consumer);
                });
                match tokio::time::timeout(CLOSE_COMMIT, closed).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "closing the outbox failed"),
                    Err(_) => tracing::warn!(
                        "the last commit did not finish within {CLOSE_COMMIT:?}; \
                         what it held will be re-delivered"
                    ),
                }
            }
            Flavour::Transactional {
                transactions,
                committer,
            } => {
                drop(
                    transactions
                        .lock()
                        .expect("the transactions lock is never poisoned")
                        .take(),
                );
                let task = committer
                    .lock()
                    .expect("the committer lock is never poisoned")
                    .take();
                if let Some(task) = task {
                    // The committer finishes its batch once the last handle is gone; the
                    // message tasks that held one have all ended by now.
                    let _ = tokio::time::timeout(CLOSE_COMMITTER, task).await;
                }
            }
        }
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, OffsetTracker> {
        self.tracker
            .lock()
            .expect("offset tracker lock is never poisoned")
    }
}

/// Commits the stored offsets, saying so only when there was something to commit.
fn commit_stored(consumer: &WorkerConsumer) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!("offsets committed"),
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => tracing::debug!("no new offsets to commit"),
        Err(e) => tracing::warn!(error = %e, "committing offsets failed"),
    }
}
