//! sluice: a Kafka-backed peak-shaving layer for LLM calls.
//!
//! Services put chat-completion requests on a Kafka request topic (directly or through
//! the HTTP ingress); a consumer group of workers calls an OpenAI-compatible backend at
//! the rate it can sustain; every request ends in one final reply on the reply topic.
//! One OpenTelemetry trace follows each request across every hop.
//!
//! # Layout
//!
//! From the bottom up; no module imports one from a layer above it, and no file imports
//! one that imports it back.
//!
//! - Bottom: [`config`] (typed configuration, layered defaults -> TOML -> `SLUICE__*` env,
//!   validated; one file per section under `config/`), [`envelope`] (the wire contract:
//!   request, reply, chunk, header names), [`kafka`] (client configuration, the traced
//!   producer, the worker's consumer, the contiguous-prefix offset tracker, the reading
//!   kit for clients outside any consumer group: `reader`, `metadata`, `watermarks`;
//!   the embedded broker), [`telemetry`] (logs, OTLP export, W3C propagation,
//!   semantic-convention names), [`shutdown`], `metrics`, [`admin`] (`/healthz`,
//!   `/readyz`, `/metrics` for every role).
//! - [`backend`]: the call path, a stack of tower layers (outer to inner) `retry` ->
//!   `rate` -> `concurrency` -> `breaker` -> `timeout` -> `client`, with one outcome
//!   classifier (`classify`) that every layer reads. `concurrency` finds the backend's
//!   capacity: its `evidence` (windows of round trips, the no-load baseline, noise, the
//!   backend's own gauges read by `saturation`) feeds a pure `policy` of explicit phases
//!   (`Search`, `Steady`, `Regain`), whose limit `permits` enforce; `peers` names what
//!   sharing the backend with other workers changes. `stream` reads a streamed answer.
//! - `group`: group pacing. Workers share one view of each backend through the control
//!   topic (`record`, `view`, `control_topic`); `pacer` steers each worker's controller
//!   with it, and `context` is every rule "in a group" means, as the controller's peers.
//! - [`routing`] (bottom layer): which backends serve a model (`[backends.<name>]`), for
//!   the ingress and the worker.
//! - [`worker`] (`sluice worker`). One message from consume to commit: `intake` takes it
//!   from the consumer and buffers it with its pool of backends, by lane (`scheduler`:
//!   lanes, tenants in turn, ordering keys); the pool's `dispatch`er starts it when one of
//!   the pool's `backends` (a stack each) is ready;
//!   `process` calls the backend through the stack and decides its one `output` (reply
//!   or dead letter; `chunks` relays a stream); `outbox` writes it and makes the offset
//!   committable (`kafka::offsets`: the contiguous prefix), or `transactions` commits
//!   both at once.
//! - [`ingress`] (`sluice ingress`). One request from `POST` to the answer: `routes`
//!   routes it to its handler (`requests`, `batch`, or `chat`, the OpenAI front door);
//!   `submit` reads the body into an envelope; `enqueue`, the one accept path, admits it
//!   (`admission`, `tenants`; a model nothing serves is refused), writes it to Kafka and
//!   answers 202, or, for `chat`,
//!   registers a waiter (`waiters`) that `replies`, the reply-topic reader, wakes with
//!   the final reply; `chat` answers as the backend would (`openai`), or relays chunks as
//!   SSE (`stream`). Results wait in `cache`; `status` and `group_watch` show the backlog
//!   and each backend's group; `/openapi.json` is generated from `api`.
//! - Tools and the first run: [`mock_llm`] (a simulated backend with a capacity model,
//!   `sluice mock-llm`), [`loadgen`] (bursts and their report, `sluice loadgen`), [`ops`]
//!   (`sluice dlq inspect|replay`, `sluice lag`, `sluice config`), [`dev`] (everything in
//!   one process, `sluice dev`).

// Written for its maintainers: items are crate-private wherever nothing outside needs
// them, and the docs (`cargo doc --document-private-items`) link to them all the same.
#![allow(rustdoc::private_intra_doc_links)]

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
pub mod routing;
pub mod shutdown;
pub mod telemetry;
pub mod worker;
