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
//! 1. [`intake`] receives it, takes a ticket from the [`outbox`](mod@outbox) and buffers it
//!    with the pool of backends that serve its model ([`crate::routing`]), by lane
//!    ([`scheduler`]);
//! 2. the pool's [`dispatch`]er starts it when an in-flight slot is free and one of the
//!    pool's [`backends`] is ready (each backend has its own stack);
//! 3. [`process`] decides its one [`output`] (a reply, or a dead letter), calling the
//!    backend through the stack;
//! 4. the [`outbox`](mod@outbox) writes that output and makes the offset committable (at least once,
//!    or in a transaction with [`transactions`]).
//!
//! Beside the path: [`housekeeping`] (rate share and metrics), group pacing
//! ([`crate::group`]) and the backend's saturation gauges ([`crate::backend::saturation`]).

pub mod backends;
pub mod chunks;
pub mod dead_letter;
pub mod dispatch;
pub(crate) mod fallback;
pub mod housekeeping;
pub(crate) mod intake;
pub mod lag;
pub mod metrics;
pub(crate) mod outbox;
pub mod output;
pub(crate) mod overflow;
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
use rdkafka::TopicPartitionList;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{AdminState, Readiness};
use crate::backend::classify::Outcome;
use crate::backend::saturation;
use crate::config::Config;
use crate::group::control_topic::{self, KafkaBus};
use crate::group::{GroupStatus, Load, Pacer};
use crate::kafka::consumer::{worker_consumer, WorkerConsumer};
use crate::kafka::offsets::OffsetTracker;
use crate::kafka::producer::{Producer, ProducerLimits};
use crate::routing::Routes;
use backends::Backends;
use dispatch::Dispatch;
use housekeeping::{Observed, PartitionTotal, Upkeep};
use intake::{Intake, IntakeSettings, PoolKey};
use metrics::{ClassLabel, WorkerMetrics};
use outbox::Outbox;
use overflow::Overflow;
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
    /// The backends' call paths; their handles went to housekeeping and group pacing.
    backends: Arc<Backends>,
    /// Each pool of backends as its first message arrives: it gets a dispatcher.
    new_pools: mpsc::UnboundedReceiver<PoolKey>,
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
    /// Where started messages and forwards run, drained at shutdown.
    tasks: TaskTracker,
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
        let backends =
            Arc::new(Backends::build(&config, &metrics).context("creating the backend clients")?);
        let routes = Arc::new(Routes::from_config(&config));

        let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
        let ready = Readiness::default();
        ready.register(registry.sub_registry_with_prefix("sluice_worker"));
        let total_partitions = PartitionTotal::default();
        let on_assignment = {
            let shares: Vec<_> = backends
                .iter()
                .map(|b| b.handles.rate_share.clone())
                .collect();
            let total = total_partitions.clone();
            let lanes = config.lane_topics();
            // The share counts the lanes' partitions, as the total does (not overflow topics).
            Box::new(move |held: &TopicPartitionList| {
                let assigned = held
                    .elements()
                    .iter()
                    .filter(|e| lanes.iter().any(|t| t == e.topic()))
                    .count();
                if total.get() > 0 || assigned == 0 {
                    for share in &shares {
                        share.set_share(assigned, total.get().max(assigned));
                    }
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
        let overflow = Overflow::prepare(&config, &routes, &consumer).await;
        // What the worker reads: the lanes, then the pools' overflow topics.
        let read_topics: Vec<String> = request_topics
            .iter()
            .chain(overflow.topics())
            .cloned()
            .collect();
        let topics: Vec<&str> = read_topics.iter().map(String::as_str).collect();
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
        let tasks = TaskTracker::new();
        let (intake, new_pools) = Intake::new(
            consumer.clone(),
            outbox.clone(),
            routes.clone(),
            IntakeSettings {
                lane_topics: request_topics.clone(),
                lane_buffer: config.worker.lane_buffer,
                lane_min_share: config.worker.lane_min_share,
                tenant_weights: Arc::new(
                    config.worker.tenant_weights.clone().into_iter().collect(),
                ),
                overflow,
                tasks: tasks.clone(),
                group_id: config.kafka.group_id.clone(),
            },
        );
        let intake = Arc::new(intake);
        let shared = Arc::new(Shared {
            config: config.clone(),
            worker_id: config.worker_id(),
            metrics: metrics.clone(),
            // `reply_to` may name none of them.
            request_topics: read_topics.clone(),
            // Its own producer, outside any transaction: a chunk is useful only at once.
            chunk_producer: Producer::new(&config.kafka, REPLY_LIMITS)
                .context("creating the Kafka producer for stream chunks")?,
            routes: routes.clone(),
            backends: backends.clone(),
        });

        let after_drain = CancellationToken::new();
        let mut companions: Vec<JoinHandle<()>> = config
            .named_backends()
            .into_iter()
            .zip(backends.iter())
            .map(|((_, settings), backend)| {
                tokio::spawn(
                    saturation::Poller {
                        url: settings.metrics_url(),
                        source: settings.saturation,
                        interval: Duration::from_millis(settings.metrics_interval_ms),
                        api_key: settings.api_key.clone(),
                        controller: backend.handles.concurrency.clone(),
                    }
                    .run(after_drain.clone()),
                )
            })
            .collect();
        let groups = if config.worker.group_pacing {
            tokio::spawn({
                let kafka = config.kafka.clone();
                async move { crate::kafka::admin::ensure_control_topic(&kafka).await }
            });
            let (statuses, tasks) =
                start_group_pacing(&config, &backends, &intake, &stop, after_drain.clone())?;
            companions.extend(tasks);
            statuses.into_iter().map(Some).collect()
        } else {
            vec![None; backends.iter().count()]
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
                    backends: backends
                        .iter()
                        .zip(groups)
                        .map(|(b, group)| Observed::new(&b.name, b.handles.clone(), group))
                        .collect(),
                    intake: intake.clone(),
                    metrics,
                    lag: LagMeter::new(consumer.clone(), read_topics, tracker),
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
            backends,
            new_pools,
            shared,
            ready,
            stop,
            transaction_failed,
            loops,
            after_drain,
            admin,
            companions,
            tasks,
        })
    }

    /// Starts buffered messages until the stop signal, then drains: a dispatcher per pool
    /// of backends, each started as the pool's first message arrives.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let tasks = self.tasks.clone();
        let dispatch = Arc::new(Dispatch {
            shared: self.shared.clone(),
            outbox: self.outbox.clone(),
            intake: self.intake.clone(),
            backends: self.backends.clone(),
            slots: Arc::new(Semaphore::new(self.config.worker.max_in_flight)),
            tasks: tasks.clone(),
        });
        let mut dispatchers = Vec::new();
        loop {
            let pool = tokio::select! {
                _ = self.stop.cancelled() => break,
                pool = self.new_pools.recv() => pool,
            };
            let Some(pool) = pool else { break };
            dispatchers.push(tokio::spawn(dispatch.clone().run(pool, self.stop.clone())));
        }
        for dispatcher in dispatchers {
            let _ = dispatcher.await;
        }
        drop(dispatch);
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

/// Counts every attempt on `backend` by its classified outcome.
fn count_attempts(metrics: WorkerMetrics, backend: &str) -> crate::backend::retry::AttemptObserver {
    let backend = backend.to_string();
    Arc::new(move |outcome: Outcome| {
        metrics
            .backend_calls
            .get_or_create(&ClassLabel {
                backend: backend.clone(),
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

/// A task that outlives the drain (see `Worker::companions`).
type Companion = JoinHandle<()>;

/// Starts group pacing for every backend: one control-topic reader whose records every
/// backend's pacer reads (each keeps its own backend's), one writer they share, and a
/// pacer per backend that steers its controller with the group's view, until `stop`. From
/// `draining` on, only the calls in flight are demand ([`Load::of`]).
fn start_group_pacing(
    config: &Config,
    backends: &Arc<Backends>,
    intake: &Arc<Intake>,
    draining: &CancellationToken,
    stop: CancellationToken,
) -> anyhow::Result<(Vec<Arc<GroupStatus>>, Vec<Companion>)> {
    let topic = &config.kafka.control_topic;
    let bus = KafkaBus::new(&config.kafka, topic).context("creating the control-topic producer")?;
    let reader = control_topic::start_reader(&config.kafka, topic, stop.clone())
        .context("creating the control-topic reader")?;
    let count = backends.iter().count();
    let mut incoming = control_topic::fan_out(reader, count).into_iter();
    let (mut statuses, mut tasks) = (Vec::new(), Vec::new());
    for (index, backend) in backends.iter().enumerate() {
        let load = {
            let (intake, draining, backends) = (intake.clone(), draining.clone(), backends.clone());
            Arc::new(move || {
                let busy = backends.get(index).busy();
                Load::of(busy, intake.buffered_for(index), draining.is_cancelled())
            })
        };
        let status = Arc::new(GroupStatus::default());
        let pacer = Pacer {
            backend: backend.name.clone(),
            worker: config.worker_id(),
            controller: backend.handles.concurrency.clone(),
            load,
            bus: bus.clone(),
            incoming: incoming.next().expect("one channel per backend"),
            status: status.clone(),
            breaker: Some(backend.handles.breaker.clone()),
        };
        statuses.push(status);
        tasks.push(tokio::spawn(pacer.run(stop.clone())));
    }
    Ok((statuses, tasks))
}
