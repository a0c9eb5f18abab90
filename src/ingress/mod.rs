//! `sluice ingress`: the HTTP API. Accepts requests and answers 202 only once Kafka has
//! acknowledged them (acks=all, idempotent producer), 503 with Retry-After when Kafka
//! cannot take them in time; serves results from a cache fed by the reply topic.
//!
//! Layout, from the router down (no module imports one above it):
//!
//! - [`routes`]: the router and its layers; [`openapi`] documents the handlers.
//! - Handlers, one module per thing served: [`requests`] (`POST /v1/requests`,
//!   `GET /v1/requests/{id}`), [`batch`], [`chat`] (the OpenAI front door; its streamed
//!   answers in [`stream`], replies shaped as OpenAI answers in [`openai`]), [`models`]
//!   (`GET /v1/models`), [`status`].
//! - [`enqueue`]: the one accept path every handler that takes a request goes through
//!   (the model's route, idempotent repeats, [`admission`], [`tenants`]' limits, the
//!   Kafka write, the cache, the metrics).
//! - [`state`]: what the handlers share; [`api`]: the bodies as types; [`submit`] reads a
//!   body into an envelope; [`error`] is every failure's answer; [`quota`] the rate-limit
//!   headers.
//! - Fed in the background: [`cache`] and [`waiters`] by the reply reader
//!   ([`replies`]), [`group_watch`] by the control topic, [`admission`]'s samples.

pub mod admission;
pub mod api;
pub mod batch;
pub mod cache;
pub mod chat;
pub mod enqueue;
pub mod error;
pub(crate) mod group_watch;
pub mod metrics;
pub mod models;
pub mod openai;
pub mod openapi;
pub(crate) mod quota;
pub mod replies;
pub mod requests;
pub mod routes;
pub mod state;
pub mod status;
pub mod stream;
pub mod submit;
pub mod tenants;
pub(crate) mod traced;
pub mod waiters;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminState, Readiness};
use crate::config::Config;
use crate::kafka::producer::{Producer, ProducerLimits};
use cache::ReplyCache;
use metrics::IngressMetrics;
use state::IngressState;

/// How often Kafka connectivity is checked for `/readyz`.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long queued writes may take to drain at shutdown. Every request has been answered
/// by then (the server drained first), and a write still queued is one already answered
/// 503, so there is nothing to wait long for.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(500);
/// Local producer queue bound (librdkafka `queue.buffering.max.kbytes`): a full queue
/// answers 503 at once instead of growing memory while Kafka is away.
const PRODUCER_QUEUE_KBYTES: u32 = 64 * 1024;

/// Binds `ingress.listen` and serves until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.ingress.listen)
        .await
        .with_context(|| format!("binding ingress.listen {}", config.ingress.listen))?;
    serve(listener, config, shutdown).await
}

/// The state routes need, built from config (also used by route tests).
pub fn build_state(config: Arc<Config>, registry: &mut Registry) -> anyhow::Result<IngressState> {
    let producer = Producer::new(
        &config.kafka,
        ProducerLimits {
            delivery_timeout: Duration::from_millis(config.ingress.enqueue_timeout_ms),
            queue_wait: Duration::ZERO,
            queue_max_kbytes: PRODUCER_QUEUE_KBYTES,
        },
    )
    .context("creating the Kafka producer")?;
    let cache = Arc::new(ReplyCache::new(
        Duration::from_millis(config.ingress.result_ttl_ms),
        config.ingress.result_cache_capacity,
    ));
    let metrics = IngressMetrics::register(registry);
    Ok(IngressState {
        waiters: Arc::new(waiters::Waiters::with_gauge(metrics.waiters.clone())),
        tenants: Arc::new(tenants::Tenants::from_config(&config.ingress)),
        group: Arc::new(group_watch::GroupWatch::default()),
        routes: Arc::new(crate::routing::Routes::from_config(&config)),
        admission: Arc::new(admission::Admission::new(
            &config,
            metrics.expected_wait_seconds.clone(),
        )),
        metrics,
        config,
        producer,
        cache,
    })
}

/// Serves the ingress on an already-bound listener until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let mut registry = Registry::default();
    let state = build_state(config.clone(), &mut registry)?;
    let ready = Readiness::default();
    ready.register(registry.sub_registry_with_prefix("sluice_ingress"));
    let reader_assigned = Readiness::default();

    let reader = tokio::spawn(replies::run(
        config.clone(),
        replies::ReplySink {
            cache: state.cache.clone(),
            waiters: state.waiters.clone(),
            tenants: state.tenants.clone(),
            metrics: state.metrics.clone(),
        },
        reader_assigned.clone(),
        shutdown.clone(),
    ));
    state
        .group
        .start(&config.kafka, &config.kafka.control_topic, shutdown.clone());
    // Not awaited at shutdown: a sample in progress may block for seconds, and nothing
    // depends on it.
    {
        let (admission, config, ready, shutdown) = (
            state.admission.clone(),
            config.clone(),
            ready.clone(),
            shutdown.clone(),
        );
        let interval = Duration::from_millis(config.ingress.admission_interval_ms);
        tokio::task::spawn_blocking(move || {
            admission.run_blocking(config, interval, ready, shutdown)
        });
    }
    let probe = tokio::spawn(probe_kafka(
        state.producer.clone(),
        reader_assigned,
        ready.clone(),
        shutdown.clone(),
    ));

    let producer = state.producer.clone();
    let app = routes::app(
        state,
        AdminState {
            registry: Arc::new(registry),
            ready,
        },
    );
    tracing::info!(listen = %listener.local_addr()?, "ingress listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("serving HTTP")?;

    probe.await.context("readiness probe task")?;
    reader.await.context("reply reader task")??;
    tokio::task::spawn_blocking(move || producer.flush_blocking(FLUSH_TIMEOUT))
        .await
        .context("producer flush task")?
        .context("flushing the producer")?;
    tracing::info!("ingress stopped");
    Ok(())
}

/// Keeps `ready` true while Kafka answers and the reply reader is assigned.
async fn probe_kafka(
    producer: Producer,
    reader_assigned: Readiness,
    ready: Readiness,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(PROBE_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => { ready.set(false); return; }
            _ = interval.tick() => {}
        }
        let p = producer.clone();
        let reachable = tokio::select! {
            _ = shutdown.cancelled() => { ready.set(false); return; }
            probed = tokio::task::spawn_blocking(move || p.probe_blocking(PROBE_INTERVAL)) => {
                probed.unwrap_or(false)
            }
        };
        let now_ready = reachable && reader_assigned.is_ready();
        if now_ready != ready.is_ready() {
            tracing::info!(
                ready = now_ready,
                kafka_reachable = reachable,
                "ingress readiness changed"
            );
        }
        ready.set(now_ready);
    }
}
