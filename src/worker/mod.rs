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

pub mod dead_letter;
pub mod housekeeping;
pub mod intake;
pub mod metrics;
pub mod process;
pub mod scheduler;
pub mod transactions;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{AdminState, Readiness};
use crate::backend::classify::Outcome;
use crate::backend::stack::{build_stack, BackendStack};
use crate::config::Config;
use crate::kafka::consumer::{worker_consumer, WorkerConsumer};
use crate::kafka::offsets::OffsetTracker;
use crate::kafka::producer::{Producer, ProducerLimits};
use housekeeping::{PartitionTotal, StackHandles, Upkeep};
use intake::Intake;
use metrics::{ClassLabel, WorkerMetrics};
use process::Shared;
use tower::ServiceExt;
use transactions::Transactions;

use crate::group::control_topic::{self, KafkaBus};
use crate::group::{GroupStatus, Load, Pacer};

/// librdkafka `message.timeout.ms` for replies: a failed write is retried by `process`.
const REPLY_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// After the grace period, how long abandoned tasks get to notice before the commit.
const HARD_STOP_SETTLE: Duration = Duration::from_millis(200);

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
    let config = Arc::new(config);
    let mut registry = Registry::default();
    let metrics = WorkerMetrics::register(&mut registry);
    metrics
        .max_in_flight
        .set(config.worker.max_in_flight as i64);

    let request_topics = config.lane_topics();
    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    let observer_metrics = metrics.clone();
    let stack = build_stack(
        &config.backend,
        Arc::new(move |outcome: Outcome| {
            observer_metrics
                .backend_calls
                .get_or_create(&ClassLabel {
                    class: outcome.label().into(),
                })
                .inc();
        }),
    )
    .context("creating the backend client")?;

    // Ready once the consumer has joined the group (assignment received).
    let ready = Readiness::default();
    let total_partitions = PartitionTotal::default();
    let lag = Arc::new(std::sync::atomic::AtomicI64::new(0));
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
            lag.clone(),
            config.worker.exactly_once,
        )
        .context("creating the Kafka consumer")?,
    );
    let topics: Vec<&str> = request_topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .context("subscribing to the request topics")?;
    let topics = topics.join(",");

    // A failed transaction stops the worker as a signal would, but it exits non-zero.
    let transaction_failed = CancellationToken::new();
    let shutdown = {
        let stop = shutdown.child_token();
        let (failed, trigger) = (transaction_failed.clone(), stop.clone());
        tokio::spawn(async move {
            failed.cancelled().await;
            trigger.cancel();
        });
        stop
    };
    let (transactions, committer) = if config.worker.exactly_once {
        let (kafka, id) = (
            config.kafka.clone(),
            format!("sluice-{}-{}", config.kafka.group_id, config.worker_id()),
        );
        let limits = ProducerLimits {
            delivery_timeout: REPLY_DELIVERY_TIMEOUT,
            queue_wait: REPLY_DELIVERY_TIMEOUT,
            queue_max_kbytes: 64 * 1024,
        };
        let producer = tokio::task::spawn_blocking(move || {
            Producer::transactional_blocking(&kafka, limits, &id)
        })
        .await
        .context("transactional producer task")?
        .context("initialising the transactional producer (worker.exactly_once)")?;
        let linger = Duration::from_millis(config.worker.transaction_linger_ms);
        let (transactions, task) = Transactions::start(
            producer,
            consumer.clone(),
            tracker.clone(),
            linger,
            transaction_failed.clone(),
        );
        (Some(transactions), Some(task))
    } else {
        (None, None)
    };

    let hard_stop = CancellationToken::new();
    let shared = Arc::new(Shared {
        worker_id: config.worker_id(),
        producer: Producer::new(
            &config.kafka,
            ProducerLimits {
                delivery_timeout: REPLY_DELIVERY_TIMEOUT,
                queue_wait: REPLY_DELIVERY_TIMEOUT,
                queue_max_kbytes: 64 * 1024,
            },
        )
        .context("creating the Kafka producer")?,
        metrics,
        request_topics: request_topics.clone(),
        hard_stop: hard_stop.clone(),
        transactions,
        config: config.clone(),
    });
    let intake = Arc::new(Intake::new(
        consumer.clone(),
        tracker.clone(),
        request_topics,
        config.worker.lane_buffer,
        config.worker.lane_min_share,
    ));

    let pacing_stop = CancellationToken::new();
    let saturation = tokio::spawn(
        crate::backend::saturation::Poller {
            url: config.backend_metrics_url(),
            source: config.backend.saturation,
            interval: Duration::from_millis(config.backend.metrics_interval_ms),
            api_key: config.backend.api_key.clone(),
            controller: stack.concurrency.clone(),
        }
        .run(pacing_stop.clone()),
    );
    let pacing = if config.worker.group_pacing {
        Some(start_group_pacing(
            &config,
            &stack,
            &intake,
            &shared.metrics,
            pacing_stop.clone(),
        )?)
    } else {
        None
    };

    let admin_app = crate::admin::routes(AdminState {
        registry: Arc::new(registry),
        ready: ready.clone(),
    });
    tracing::info!(admin = %admin.local_addr()?, worker_id = %shared.worker_id, topics = %topics,
        group = %config.kafka.group_id, max_in_flight = config.worker.max_in_flight, "worker started");
    // The admin routes outlive the pull loop so /metrics and /readyz answer while draining.
    let admin_stop = CancellationToken::new();
    let admin_server = tokio::spawn({
        let stop = admin_stop.clone();
        async move {
            axum::serve(admin, admin_app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
    });
    let upkeep = tokio::spawn(housekeeping::run(
        Upkeep {
            consumer: consumer.clone(),
            topics: shared.request_topics.clone(),
            total: total_partitions,
            stack: StackHandles::of(&stack),
            intake: intake.clone(),
            metrics: shared.metrics.clone(),
            lag,
            backend: config.backend.url.clone(),
            group: pacing.as_ref().map(|(status, _)| status.clone()),
            max_in_flight: config.worker.max_in_flight,
        },
        shutdown.clone(),
    ));
    let receiving = tokio::spawn({
        let intake = intake.clone();
        let stop = shutdown.clone();
        async move { intake.run(stop).await }
    });

    let tasks = TaskTracker::new();
    dispatch_loop(
        &intake,
        stack.service,
        &consumer,
        &shared,
        &tracker,
        &tasks,
        &shutdown,
    )
    .await;
    receiving.await.context("intake task")?;
    upkeep.await.context("housekeeping task")?;

    // Drain: stop taking, let in-flight calls finish within the grace period.
    ready.set(false);
    tasks.close();
    let grace = Duration::from_millis(config.worker.shutdown_grace_ms);
    let in_flight = shared.metrics.in_flight.get();
    tracing::info!(
        in_flight,
        buffered = intake.buffered(),
        grace_ms = grace.as_millis() as u64,
        "draining in-flight requests (buffered ones are re-delivered)"
    );
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!("grace period over; unfinished requests will be re-delivered");
        hard_stop.cancel();
        let _ = tokio::time::timeout(HARD_STOP_SETTLE, tasks.wait()).await;
    }
    drop(intake);
    let exactly_once = shared.transactions.is_some();
    leave_group(consumer, shared).await;
    if let Some(committer) = committer {
        // The last Transactions handle went with `shared`: the committer finishes its batch.
        let _ = tokio::time::timeout(HARD_STOP_SETTLE * 10, committer).await;
    }
    pacing_stop.cancel();
    if let Some((_, task)) = pacing {
        let _ = task.await;
    }
    let _ = saturation.await;
    admin_stop.cancel();
    admin_server
        .await
        .context("admin server task")?
        .context("serving admin routes")?;
    if transaction_failed.is_cancelled() {
        anyhow::bail!(
            "a Kafka transaction failed; restart to resume from the last committed offsets"
        );
    }
    tracing::info!(exactly_once, "worker stopped");
    Ok(())
}

/// Starts group pacing: the control topic's reader and writer, and the pacer that
/// steers the concurrency controller with the group's view.
fn start_group_pacing(
    config: &Config,
    stack: &crate::backend::stack::Stack,
    intake: &Arc<Intake>,
    metrics: &WorkerMetrics,
    stop: CancellationToken,
) -> anyhow::Result<(Arc<GroupStatus>, tokio::task::JoinHandle<()>)> {
    let topic = &config.kafka.control_topic;
    let bus = KafkaBus::new(&config.kafka, topic).context("creating the control-topic producer")?;
    let incoming = control_topic::start_reader(&config.kafka, topic, stop.clone())
        .context("creating the control-topic reader")?;
    let load = {
        let (intake, metrics) = (intake.clone(), metrics.clone());
        Arc::new(move || Load {
            demand: metrics.in_flight.get().max(0) as usize + intake.buffered(),
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

/// Starts buffered messages while there is room, until `shutdown`: an in-flight slot,
/// then the next message by lane and ordering key, then a ready backend stack.
async fn dispatch_loop(
    intake: &Arc<Intake>,
    mut stack: BackendStack,
    consumer: &Arc<WorkerConsumer>,
    shared: &Arc<Shared>,
    tracker: &Arc<Mutex<OffsetTracker>>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(shared.config.worker.max_in_flight));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = slots.clone().acquire_owned() => permit.expect("the in-flight semaphore is never closed"),
        };
        let entry = tokio::select! {
            _ = shutdown.cancelled() => return,
            entry = intake.next() => entry,
        };
        let ready = tokio::select! {
            _ = shutdown.cancelled() => return,
            ready = stack.ready() => ready.map(|_| ()),
        };
        if let Err(e) = ready {
            // No layer fails readiness today; if one does, the message is re-delivered.
            tracing::error!(error = %e, "backend stack failed; stopping");
            return;
        }
        // The ready instance holds what readiness reserved; a fresh clone waits for the next.
        let fresh = stack.clone();
        let backend = std::mem::replace(&mut stack, fresh);
        let key = entry.ordering_key;
        let taken = entry.item;
        let ticket = taken.ticket.clone();
        shared.metrics.in_flight.inc();
        let (consumer, shared, tracker, intake) = (
            consumer.clone(),
            shared.clone(),
            tracker.clone(),
            intake.clone(),
        );
        tasks.spawn(async move {
            let delivered = process::handle(&shared, taken, backend).await;
            shared.metrics.in_flight.dec();
            drop(permit);
            intake.finished(key.as_deref());
            // With exactly-once the committer stored the offset inside the transaction.
            if !delivered || shared.transactions.is_some() {
                return;
            }
            let position = tracker
                .lock()
                .expect("offset tracker lock is never poisoned")
                .complete(&ticket);
            if let Some(position) = position {
                store_position(&consumer, &ticket.topic, ticket.partition, position);
            }
        });
    }
}
/// Stores `position` (the next offset to consume) for the next commit. Not
/// `store_offset`: that legacy librdkafka call stores `offset + 1`, which here would
/// skip the lowest unfinished message.
fn store_position(consumer: &WorkerConsumer, topic: &str, partition: i32, position: i64) {
    let mut list = TopicPartitionList::new();
    let stored = list
        .add_partition_offset(topic, partition, Offset::Offset(position))
        .and_then(|()| consumer.store_offsets(&list));
    if let Err(e) = stored {
        // The partition was revoked meanwhile; its new owner re-processes.
        tracing::debug!(error = %e, topic, partition, "offset not stored");
    }
}

/// Commits what was stored, flushes replies and leaves the group (blocking calls, so
/// off the async threads).
async fn leave_group(consumer: Arc<WorkerConsumer>, shared: Arc<Shared>) {
    let result = tokio::task::spawn_blocking(move || {
        if let Err(e) = shared.producer.flush_blocking(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "flushing the producer failed");
        }
        if shared.transactions.is_none() {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => tracing::info!("offsets committed"),
                Err(e) => tracing::info!(error = %e, "no offsets committed"),
            }
        }
        consumer.unsubscribe();
        drop(consumer);
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "leaving the group failed");
    }
}
