//! sluice: a Kafka-backed peak-shaving layer for LLM calls.
//!
//! Services put chat-completion requests on a Kafka request topic (directly or through
//! the HTTP ingress); a consumer group of workers calls an OpenAI-compatible backend at
//! the rate it can sustain; every request ends in one final reply on the reply topic.
//! One OpenTelemetry trace follows each request across every hop.
//!
//! # Layout
//!
//! - [`config`]: typed configuration, layered defaults -> TOML -> `SLUICE__*` env, validated.
//! - [`envelope`]: the wire contract (request, reply, chunk, header names).
//! - [`telemetry`]: logs, OTLP export, W3C propagation, semantic-convention names.
//! - [`shutdown`]: signals -> one cancellation token.
//! - [`metrics`]: the Prometheus registry and its `/metrics` text endpoint.
//! - [`admin`]: `/healthz`, `/readyz` and `/metrics` routes shared by every role.
//! - [`kafka`]: producer, worker consumer, contiguous-prefix offset tracker, embedded
//!   broker, the one decoder of reply-topic records (`reply_record`), and one kit for
//!   clients outside any consumer group: `reader` (every partition of a topic from a
//!   start), `metadata` (a topic's partitions), `watermarks` (where logs end).
//! - [`backend`]: the call path to the backend, a stack of tower layers (outer to inner):
//!   `retry` -> `rate` (token buckets) -> `concurrency` (the adaptive limit and its group
//!   share) -> `breaker` -> `timeout` -> `client` (OpenAI-compatible HTTP), with one
//!   outcome classifier (`classify`) that every layer reads; `saturation` reads the
//!   backend's own gauges (vLLM, llama.cpp) for the concurrency controller; `stream`
//!   reads a streamed answer and assembles it.
//! - [`group`]: group pacing: the workers share one view of each backend through the
//!   control topic.
//! - [`ingress`]: the HTTP API (`sluice ingress`): the router (`routes`), one accept path
//!   (`enqueue`) behind every route that takes a request, the OpenAI front door (`chat`,
//!   SSE relay in `stream`, waiters woken by the reply reader), `requests` and `batch`,
//!   results (reply cache), tenants and their limits, admission, the status page,
//!   `/openapi.json` generated from `api`.
//! - [`worker`]: the pull loop (`sluice worker`): intake -> scheduler (lanes, tenants in
//!   turn, ordering keys) -> process (decide the output; `chunks` relays a stream) ->
//!   outbox (write it, make the offset committable).
//! - [`mock_llm`]: a simulated OpenAI-compatible backend with a capacity model (`sluice mock-llm`).
//! - [`dev`]: everything in one process for a first run (`sluice dev`).
//! - [`loadgen`]: bursts through sluice or straight to a backend; loss, duplicates,
//!   latency and backend-utilisation report, and the run drawn over time (`sluice loadgen`).
//! - [`ops`]: operator tools (`sluice dlq inspect`, `sluice dlq replay`, `sluice lag`).

pub mod admin;
pub mod backend;
pub mod config;
pub mod dev;
pub mod envelope;
pub(crate) mod group;
pub mod ingress;
pub mod kafka;
pub mod loadgen;
pub(crate) mod metrics;
pub mod mock_llm;
pub mod ops;
pub mod shutdown;
pub mod telemetry;
pub mod worker;
