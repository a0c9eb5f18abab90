//! Opt-in exactly-once output (`worker.exactly_once`): final replies (and dead letters)
//! are written inside Kafka transactions together with the consumed offsets they
//! complete, so a `read_committed` reader sees each final reply once even when a worker
//! dies mid-flight, and nothing is committed that was not answered.
//!
//! One committer task owns the transactional producer (`transactional.id` =
//! `sluice-<group>-<worker id>`: a restarted worker with the same id fences its zombie;
//! the consumer-group metadata sent with the offsets fences a member that lost its
//! partitions in a rebalance, KIP-447). It gathers outputs for `transaction_linger_ms`,
//! then: begin, produce them, add the contiguous-prefix offsets, commit. A transaction
//! that fails is aborted and the worker stops (non-zero exit): its uncommitted work is
//! re-delivered from the last committed offsets when it restarts, the only state known
//! to be consistent.
//!
//! The brokers available to this repository's tests do not isolate transactions, so
//! this path's calls are exercised there and its isolation is documented, not tested.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::kafka::consumer::WorkerConsumer;
use crate::kafka::offsets::{OffsetTracker, Ticket};
use crate::kafka::producer::{Outgoing, Producer};

/// Most outputs in one transaction.
const MAX_BATCH: usize = 512;

/// One output to write in a transaction, and the message it completes.
pub(crate) struct TxnOutput {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// See [`crate::kafka::producer::Outgoing::timestamp`].
    pub timestamp: Option<i64>,
    pub ticket: Ticket,
}

/// An output waiting for its transaction.
struct Pending {
    output: TxnOutput,
    /// Told whether the transaction holding this output committed.
    done: oneshot::Sender<bool>,
}

/// Hands outputs to the committer.
#[derive(Clone)]
pub(crate) struct Transactions {
    queue: mpsc::Sender<Pending>,
}

impl Transactions {
    /// Starts the committer; `failed` is cancelled when a transaction fails (the worker
    /// then stops).
    pub fn start(
        producer: Producer,
        consumer: Arc<WorkerConsumer>,
        tracker: Arc<Mutex<OffsetTracker>>,
        linger: Duration,
        failed: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(MAX_BATCH * 4);
        let task = tokio::spawn(async move {
            if let Err(e) = commit_loop(producer, consumer, tracker, linger, receiver).await {
                tracing::error!(error = %e, "a transaction failed; stopping so uncommitted work is re-delivered");
                failed.cancel();
            }
        });
        (Self { queue }, task)
    }

    /// Writes one output in a transaction; true once that transaction committed.
    pub async fn write(&self, output: TxnOutput) -> bool {
        let (done, committed) = oneshot::channel();
        if self.queue.send(Pending { output, done }).await.is_err() {
            return false;
        }
        committed.await.unwrap_or(false)
    }
}

async fn commit_loop(
    producer: Producer,
    consumer: Arc<WorkerConsumer>,
    tracker: Arc<Mutex<OffsetTracker>>,
    linger: Duration,
    mut receiver: mpsc::Receiver<Pending>,
) -> Result<(), KafkaError> {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + linger;
        while batch.len() < MAX_BATCH {
            tokio::select! {
                next = receiver.recv() => match next {
                    Some(pending) => batch.push(pending),
                    None => break,
                },
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        let result = commit_batch(&producer, &consumer, &tracker, &batch).await;
        let committed = result.is_ok();
        if !committed {
            let p = producer.clone();
            let _ = tokio::task::spawn_blocking(move || p.abort_transaction_blocking()).await;
        }
        for pending in batch {
            let _ = pending.done.send(committed);
        }
        result?;
    }
    Ok(())
}

/// One transaction: the outputs, then the offsets they complete, then commit.
async fn commit_batch(
    producer: &Producer,
    consumer: &Arc<WorkerConsumer>,
    tracker: &Arc<Mutex<OffsetTracker>>,
    batch: &[Pending],
) -> Result<(), KafkaError> {
    producer.begin_transaction()?;
    for Pending { output: p, .. } in batch {
        producer
            .send(Outgoing {
                topic: &p.topic,
                key: &p.key,
                payload: &p.payload,
                headers: p
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_deref()))
                    .collect(),
                timestamp: p.timestamp,
            })
            .await?;
    }
    let mut positions: BTreeMap<(String, i32), i64> = BTreeMap::new();
    {
        let mut tracker = tracker
            .lock()
            .expect("offset tracker lock is never poisoned");
        for Pending { output: p, .. } in batch {
            if let Some(position) = tracker.complete(&p.ticket) {
                let entry = positions
                    .entry((p.ticket.topic.clone(), p.ticket.partition))
                    .or_insert(position);
                *entry = (*entry).max(position);
            }
        }
    }
    let (producer, consumer) = (producer.clone(), consumer.clone());
    tokio::task::spawn_blocking(move || {
        if !positions.is_empty() {
            let mut offsets = TopicPartitionList::new();
            for ((topic, partition), position) in &positions {
                offsets.add_partition_offset(topic, *partition, Offset::Offset(*position))?;
            }
            let group = consumer
                .group_metadata()
                // Only before the first group join; a transaction cannot carry offsets then.
                .ok_or(KafkaError::Global(rdkafka::types::RDKafkaErrorCode::State))?;
            producer.send_offsets_blocking(&offsets, &group)?;
        }
        producer.commit_transaction_blocking()
    })
    .await
    .expect("the commit task does not panic")
}
