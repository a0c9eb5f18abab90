//! The replay's producer side: idempotent, acks=all writes with their delivery reports
//! collected, so `sluice dlq replay` knows every outcome before it exits.

use anyhow::Context as _;
use futures::future::{BoxFuture, FutureExt as _};
use futures::stream::{FuturesUnordered, StreamExt as _};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::Replay;
use crate::config::KafkaConfig;
use crate::kafka::{client_config, ClientKind};

/// librdkafka `message.timeout.ms`: a write not acknowledged by then counts as failed.
const DELIVERY_TIMEOUT_MS: &str = "30000";
/// Writes awaiting their delivery report at once; bounds memory on a large replay.
const MAX_IN_FLIGHT: usize = 1000;

/// Writes replays and collects their delivery reports, at most [`MAX_IN_FLIGHT`] pending.
pub(super) struct Writer {
    producer: FutureProducer,
    /// Writes handed to librdkafka whose delivery report has not arrived yet; each
    /// resolves to `Err("<dlq position>: <why>")` on failure.
    pub in_flight: FuturesUnordered<BoxFuture<'static, Result<(), String>>>,
}

impl Writer {
    pub fn new(kafka: &KafkaConfig) -> anyhow::Result<Self> {
        let producer = client_config(
            kafka,
            ClientKind::Producer,
            &[("linger.ms", "5")],
            &[
                ("acks", "all"),
                ("enable.idempotence", "true"),
                ("message.timeout.ms", DELIVERY_TIMEOUT_MS),
            ],
        )
        .create()
        .context("creating the Kafka producer")?;
        Ok(Self {
            producer,
            in_flight: FuturesUnordered::new(),
        })
    }

    /// Hands `replay` to the producer once there is room; reports of earlier writes that
    /// have arrived, and a write librdkafka refuses outright, go to `settle`.
    pub async fn write(&mut self, replay: Replay, mut settle: impl FnMut(Result<(), String>)) {
        let from = replay.from.clone();
        let delivery = loop {
            let full = self.in_flight.len() >= MAX_IN_FLIGHT;
            let enqueued = match full {
                true => Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)),
                false => enqueue(&self.producer, &replay),
            };
            match enqueued {
                // Ours or librdkafka's queue is full: let a delivery finish first.
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                    if !self.in_flight.is_empty() =>
                {
                    let result = self.in_flight.next().await;
                    settle(result.expect("in_flight is not empty"));
                }
                other => break other,
            }
        };
        match delivery {
            Err(e) => settle(Err(format!("{from}: {e}"))),
            Ok(delivery) => self.in_flight.push(Box::pin(async move {
                match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(format!("{from}: {e}")),
                    Err(_) => Err(format!("{from}: the producer dropped the delivery report")),
                }
            })),
        }
        // Reports that have already arrived, so progress shows while the replay runs.
        while let Some(Some(result)) = self.in_flight.next().now_or_never() {
            settle(result);
        }
    }
}

/// Hands one record to the producer; the future resolves with its delivery report.
fn enqueue(producer: &FutureProducer, replay: &Replay) -> Result<DeliveryFuture, KafkaError> {
    let mut headers = OwnedHeaders::new_with_capacity(replay.headers.len());
    for (key, value) in &replay.headers {
        headers = headers.insert(Header {
            key,
            value: value.as_deref(),
        });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&replay.topic).headers(headers);
    if let Some(key) = &replay.key {
        record = record.key(key.as_slice());
    }
    if let Some(value) = &replay.value {
        record = record.payload(value.as_slice());
    }
    producer.send_result(record).map_err(|(e, _)| e)
}
