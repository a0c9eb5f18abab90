//! `sluice worker`: a consumer-group member that calls the backend and writes replies.
//!
//! Delivery hazard, and how it is avoided: an offset committed before its reply is
//! acknowledged would lose the request if the worker died in between. So the worker
//! takes up to `worker.max_in_flight` messages at once, they finish out of order, and
//! an offset is stored for commit only when it and every offset before it in its
//! partition have had their final reply (or dead letter) acknowledged by Kafka
//! (`kafka::offsets`). A crash re-delivers everything after the last such prefix: backend
//! calls are at-least-once, and a re-delivered request may produce a second final reply
//! with the same id, which every sluice reader deduplicates.
//!
//! Back-pressure: a message starts only when an in-flight slot is free and the backend
//! stack is ready (rate, adaptive concurrency and circuit breaker all agree); until
//! then it waits in a small per-lane buffer, and a full buffer pauses its partitions. So
//! backlog stays in Kafka and memory stays bounded whatever the lag.
//!
//! One message, from the consumer to the commit:
//!
//! 1. [`intake`] receives it, takes a ticket from the [`outbox`](mod@outbox) and buffers it by lane
//!    ([`scheduler`]);
//! 2. [`Worker::run`]'s dispatch loop starts it when an in-flight slot is free and the
//!    backend stack is ready;
//! 3. [`process`] decides its one [`output`] (a reply, or a dead letter), calling the
//!    backend through the stack;
//! 4. the [`outbox`](mod@outbox) writes that output and makes the offset committable (at least once,
//!    or in a transaction with [`transactions`]).
//!
//! Beside the path: [`housekeeping`] (rate share and metrics), group pacing
//! ([`crate::group`]) and the backend's saturation gauges ([`crate::backend::saturation`]).

pub mod chunks;
pub mod dead_letter;
pub mod housekeeping;
pub(crate) mod intake;
pub mod lag;
pub mod metrics;
pub(crate) mod outbox;
pub mod output;
pub mod process;
pub mod scheduler;
pub mod summary;
pub mod transactions;

use lag::LagMeter;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use rdkafka::consumer::Consumer;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::admin::{AdminState, Readiness};
use crate::backend::classify::Outcome;
use crate::backend::saturation;
use crate::backend::stack::{build_stack, BackendStack, Stack};
use crate::config::Config;
use crate::group::control_topic::{self, KafkaBus};
use crate::group::{GroupStatus, Load, Pacer};
use crate::kafka::consumer::{worker_consumer, WorkerConsumer};
use crate::kafka::offsets::OffsetTracker;
use crate::kafka::producer::{Producer, ProducerLimits};
use housekeeping::{PartitionTotal, StackHandles, Upkeep};
use intake::Intake;
use metrics::{ClassLabel, WorkerMetrics};
use outbox::Outbox;
use process::Shared;

/// librdkafka `message.timeout.ms` for replies: a failed write is retried by the outbox.
const REPLY_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// After the grace period, how long abandoned tasks get to notice before the commit.
const HARD_STOP_SETTLE: Duration = Duration::from_millis(200);
/// How long leaving the consumer group may take at shutdown.
const LEAVE_GROUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The producer's limits for replies and dead letters.
const REPLY_LIMITS: ProducerLimits = ProducerLimits {
    delivery_timeout: REPLY_DELIVERY_TIMEOUT,
    queue_wait: REPLY_DELIVERY_TIMEOUT,
    queue_max_kbytes: 64 * 1024,
};

/// Binds `worker.admin_listen` and runs until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let admin = TcpListener::bind(config.worker.admin_listen)
        .await
        .with_context(|| format!("binding worker.admin_listen {}", config.worker.admin_listen))?;
    serve(admin, config, shutdown).await
}

/// Runs the worker with its admin routes on an already-bound listener.
pub async fn serve(
    admin: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    Worker::build(admin, config, shutdown).await?.run().await
}

/// The worker's parts, built by [`Worker::build`], then [`Worker::run`] until the
/// shutdown signal, which drains them.
pub struct Worker {
    config: Arc<Config>,
    consumer: Arc<WorkerConsumer>,
    intake: Arc<Intake>,
    outbox: Arc<Outbox>,
    /// The backend call path; its handles went to housekeeping and group pacing.
    backend: BackendStack,
    shared: Arc<Shared>,
    /// Ready while a member of the group.
    ready: Readiness,
    /// The signal to stop taking work (a failed transaction also trips it).
    stop: CancellationToken,
    /// Cancelled when a transaction fails: the worker then exits non-zero.
    transaction_failed: CancellationToken,
    /// Tasks that run until `stop`: receiving, housekeeping.
    loops: Vec<JoinHandle<()>>,
    /// Tasks that outlive the drain (admin routes answer, group pacing publishes this
    /// worker's leaving, the saturation poller) until `after_drain`.
    after_drain: CancellationToken,
    admin: JoinHandle<std::io::Result<()>>,
    companions: Vec<JoinHandle<()>>,
}

impl Worker {
    /// Creates the consumer, outbox, backend stack, intake and side tasks, and subscribes.
    pub async fn build(
        admin: TcpListener,
        config: Config,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Worker> {
        let config = Arc::new(config);
        let mut registry = Registry::default();
        let metrics = WorkerMetrics::register(&mut registry);
        metrics
            .max_in_flight
            .set(config.worker.max_in_flight as i64);
        let stack = build_stack(&config.backend, count_attempts(metrics.clone()))
            .context("creating the backend client")?;

        let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
        let ready = Readiness::default();
        ready.register(registry.sub_registry_with_prefix("sluice_worker"));
        let total_partitions = PartitionTotal::default();
        let on_assignment = {
            let (share, total) = (stack.rate_share.clone(), total_partitions.clone());
            Box::new(move |assigned: usize| {
                if total.get() > 0 || assigned == 0 {
                    share.set_share(assigned, total.get().max(assigned));
                }
            })
        };
        let consumer = Arc::new(
            worker_consumer(
                &config.kafka,
                tracker.clone(),
                ready.clone(),
                on_assignment,
                config.worker.exactly_once,
            )
            .context("creating the Kafka consumer")?,
        );
        let request_topics = config.lane_topics();
        let topics: Vec<&str> = request_topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .context("subscribing to the request topics")?;

        // A failed transaction stops the worker as a signal would, but it exits non-zero.
        let transaction_failed = CancellationToken::new();
        let stop = shutdown.child_token();
        tokio::spawn({
            let (failed, stop) = (transaction_failed.clone(), stop.clone());
            async move {
                failed.cancelled().await;
                stop.cancel();
            }
        });
        let outbox = Arc::new(
            outbox(
                &config,
                tracker.clone(),
                consumer.clone(),
                &metrics,
                &transaction_failed,
            )
            .await?,
        );
        let intake = Arc::new(Intake::new(
            consumer.clone(),
            outbox.clone(),
            request_topics.clone(),
            config.worker.lane_buffer,
            config.worker.lane_min_share,
            Arc::new(config.worker.tenant_weights.clone().into_iter().collect()),
        ));
        let shared = Arc::new(Shared {
            config: config.clone(),
            worker_id: config.worker_id(),
            metrics: metrics.clone(),
            request_topics: request_topics.clone(),
            // Its own producer, outside any transaction: a chunk is useful only at once.
            chunk_producer: Producer::new(&config.kafka, REPLY_LIMITS)
                .context("creating the Kafka producer for stream chunks")?,
        });

        let after_drain = CancellationToken::new();
        let mut companions = vec![tokio::spawn(
            saturation::Poller {
                url: config.backend.metrics_url(),
                source: config.backend.saturation,
                interval: Duration::from_millis(config.backend.metrics_interval_ms),
                api_key: config.backend.api_key.clone(),
                controller: stack.concurrency.clone(),
            }
            .run(after_drain.clone()),
        )];
        let group = if config.worker.group_pacing {
            tokio::spawn({
                let kafka = config.kafka.clone();
                async move { crate::kafka::admin::ensure_control_topic(&kafka).await }
            });
            let (status, task) = start_group_pacing(
                &config,
                &stack,
                &intake,
                &metrics,
                &stop,
                after_drain.clone(),
            )?;
            companions.push(task);
            Some(status)
        } else {
            None
        };

        let admin_app = crate::admin::routes(AdminState {
            registry: Arc::new(registry),
            ready: ready.clone(),
        });
        tracing::info!(admin = %admin.local_addr()?, worker_id = %shared.worker_id,
            topics = %topics.join(","), group = %config.kafka.group_id,
            max_in_flight = config.worker.max_in_flight, "worker started");
        let admin = tokio::spawn({
            let stop = after_drain.clone();
            async move {
                axum::serve(admin, admin_app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            }
        });
        let loops = vec![
            tokio::spawn(housekeeping::run(
                Upkeep {
                    consumer: consumer.clone(),
                    topics: request_topics.clone(),
                    total: total_partitions,
                    stack: StackHandles::of(&stack),
                    intake: intake.clone(),
                    metrics,
                    lag: LagMeter::new(consumer.clone(), request_topics, tracker),
                    backend: config.backend.url.clone(),
                    group,
                    max_in_flight: config.worker.max_in_flight,
                },
                stop.clone(),
            )),
            tokio::spawn({
                let (intake, stop) = (intake.clone(), stop.clone());
                async move { intake.run(stop).await }
            }),
        ];
        Ok(Worker {
            config,
            consumer,
            intake,
            outbox,
            backend: stack.service,
            shared,
            ready,
            stop,
            transaction_failed,
            loops,
            after_drain,
            admin,
            companions,
        })
    }

    /// Starts buffered messages until the stop signal, then drains.
    pub async fn run(self) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.config.worker.max_in_flight));
        let mut backend = self.backend.clone();
        loop {
            let permit = tokio::select! {
                _ = self.stop.cancelled() => break,
                permit = slots.clone().acquire_owned() => permit.expect("the in-flight semaphore is never closed"),
            };
            let entry = tokio::select! {
                _ = self.stop.cancelled() => break,
                entry = self.intake.next() => entry,
            };
            let ready = tokio::select! {
                _ = self.stop.cancelled() => break,
                ready = backend.ready() => ready.map(|_| ()),
            };
            if let Err(e) = ready {
                // No layer fails readiness today; if one does, the message is re-delivered.
                tracing::error!(error = %e, "backend stack failed; stopping");
                break;
            }
            // The ready instance holds what readiness reserved; a fresh clone waits for the next.
            let fresh = backend.clone();
            let call = std::mem::replace(&mut backend, fresh);
            let key = entry.ordering_key;
            let (shared, outbox, intake) = (
                self.shared.clone(),
                self.outbox.clone(),
                self.intake.clone(),
            );
            shared.metrics.in_flight.inc();
            tasks.spawn(async move {
                process::handle(&shared, &outbox, entry.item, call).await;
                shared.metrics.in_flight.dec();
                drop(permit);
                intake.finished(key.as_deref());
            });
        }
        self.drain(tasks).await
    }

    /// Stops taking work, lets calls in flight finish within the grace period, writes and
    /// commits what finished, leaves the group, then stops the side tasks.
    async fn drain(self, tasks: TaskTracker) -> anyhow::Result<()> {
        for task in self.loops {
            task.await.context("a worker task")?;
        }
        self.ready.set(false);
        tasks.close();
        let grace = Duration::from_millis(self.config.worker.shutdown_grace_ms);
        tracing::info!(
            in_flight = self.shared.metrics.in_flight.get(),
            buffered = self.intake.buffered(),
            grace_ms = grace.as_millis() as u64,
            "draining in-flight requests (buffered ones are re-delivered)"
        );
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!("grace period over; unfinished requests will be re-delivered");
            self.outbox.hard_stop();
            let _ = tokio::time::timeout(HARD_STOP_SETTLE, tasks.wait()).await;
        }
        drop(self.intake);
        self.outbox.close().await;
        let exactly_once = self.outbox.exactly_once();
        // The outbox holds the consumer too; the last handle closes it, off the async threads.
        drop(self.outbox);
        let consumer = self.consumer;
        // Leaving the group waits for its coordinator: not for long when there is none.
        let leave_within = if consumer.context().log.is_down() {
            Duration::from_secs(1)
        } else {
            LEAVE_GROUP_TIMEOUT
        };
        let left = tokio::task::spawn_blocking(move || {
            consumer.unsubscribe();
            drop(consumer);
        });
        match tokio::time::timeout(leave_within, left).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "leaving the group failed"),
            Err(_) => tracing::warn!(
                "leaving the group did not finish within {leave_within:?}; \
                 the group notices at the session timeout"
            ),
        }
        self.after_drain.cancel();
        for task in self.companions {
            let _ = task.await;
        }
        self.admin
            .await
            .context("admin server task")?
            .context("serving admin routes")?;
        if self.transaction_failed.is_cancelled() {
            anyhow::bail!(
                "a Kafka transaction failed; restart to resume from the last committed offsets"
            );
        }
        tracing::info!(exactly_once, "worker stopped");
        Ok(())
    }
}

/// Counts every backend attempt by its classified outcome.
fn count_attempts(metrics: WorkerMetrics) -> crate::backend::retry::AttemptObserver {
    Arc::new(move |outcome: Outcome| {
        metrics
            .backend_calls
            .get_or_create(&ClassLabel {
                class: outcome.label().into(),
            })
            .inc();
    })
}

/// The outbox of `worker.exactly_once`'s choice: transactional (its producer initialised,
/// a blocking call) or at least once.
async fn outbox(
    config: &Arc<Config>,
    tracker: Arc<Mutex<OffsetTracker>>,
    consumer: Arc<WorkerConsumer>,
    metrics: &WorkerMetrics,
    transaction_failed: &CancellationToken,
) -> anyhow::Result<Outbox> {
    let dlq = &config.kafka.dlq_topic;
    if !config.worker.exactly_once {
        let producer =
            Producer::new(&config.kafka, REPLY_LIMITS).context("creating the Kafka producer")?;
        return Ok(Outbox::at_least_once(
            producer,
            tracker,
            consumer,
            dlq,
            metrics.clone(),
        ));
    }
    let (kafka, id) = (
        config.kafka.clone(),
        format!("sluice-{}-{}", config.kafka.group_id, config.worker_id()),
    );
    let producer = tokio::task::spawn_blocking(move || {
        Producer::transactional_blocking(&kafka, REPLY_LIMITS, &id)
    })
    .await
    .context("transactional producer task")?
    .context("initialising the transactional producer (worker.exactly_once)")?;
    Ok(Outbox::transactional(
        producer,
        Duration::from_millis(config.worker.transaction_linger_ms),
        transaction_failed.clone(),
        tracker,
        consumer,
        dlq,
        metrics.clone(),
    ))
}

/// Starts group pacing: the control topic's reader and writer, and the pacer that
/// steers the concurrency controller with the group's view, until `stop`. From
/// `draining` on, only the calls in flight are demand ([`Load::of`]).
fn start_group_pacing(
    config: &Config,
    stack: &Stack,
    intake: &Arc<Intake>,
    metrics: &WorkerMetrics,
    draining: &CancellationToken,
    stop: CancellationToken,
) -> anyhow::Result<(Arc<GroupStatus>, JoinHandle<()>)> {
    let topic = &config.kafka.control_topic;
    let bus = KafkaBus::new(&config.kafka, topic).context("creating the control-topic producer")?;
    let incoming = control_topic::start_reader(&config.kafka, topic, stop.clone())
        .context("creating the control-topic reader")?;
    let load = {
        let (intake, metrics, draining) = (intake.clone(), metrics.clone(), draining.clone());
        Arc::new(move || {
            let in_flight = metrics.in_flight.get().max(0) as usize;
            Load::of(in_flight, intake.buffered(), draining.is_cancelled())
        })
    };
    let status = Arc::new(GroupStatus::default());
    let pacer = Pacer {
        backend: config.backend.url.clone(),
        worker: config.worker_id(),
        controller: stack.concurrency.clone(),
        load,
        bus,
        incoming,
        status: status.clone(),
    };
    Ok((status, tokio::spawn(pacer.run(stop))))
}
