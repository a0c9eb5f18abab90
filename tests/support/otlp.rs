//! An OTLP/HTTP trace receiver in the test process: the spans sluice exports, decoded
//! and flattened ([`ReceivedSpan`]), and waiting until the ones a test expects arrived.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message as _;
use tokio::sync::Notify;

pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// A span as the receiver stored it: ids as lowercase hex, attributes as strings.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The `service.name` resource attribute; empty if absent.
    pub service_name: String,
    /// The instrumentation scope name.
    pub scope_name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub kind: SpanKind,
    /// Strings as they are; other values rendered as JSON (`42`, `true`, `["stop"]`).
    pub attributes: BTreeMap<String, String>,
    pub links: Vec<SpanLink>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
}

/// A span link: the context of another span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanLink {
    pub trace_id: String,
    pub span_id: String,
}

impl ReceivedSpan {
    /// The attribute's value, if present.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// Whether the span has no parent.
    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_empty()
    }

    /// Whether `other` is this span's parent (same trace, parent id matches).
    pub fn is_child_of(&self, other: &ReceivedSpan) -> bool {
        self.trace_id == other.trace_id && self.parent_span_id == other.span_id
    }

    /// Whether this span links to `other`.
    pub fn links_to(&self, other: &ReceivedSpan) -> bool {
        self.links
            .iter()
            .any(|l| l.trace_id == other.trace_id && l.span_id == other.span_id)
    }
}

/// One line per span (service, kind, name, ids), for assertion messages.
pub fn describe_spans(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {:?} {:?} trace={} span={} parent={} links={}",
                s.service_name,
                s.kind,
                s.name,
                s.trace_id,
                s.span_id,
                if s.parent_span_id.is_empty() {
                    "-"
                } else {
                    &s.parent_span_id
                },
                s.links.len()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// State shared between the receiver's HTTP handler and the test.
struct ReceiverState {
    /// Every span received so far, in arrival order; lives as long as the receiver.
    spans: Mutex<Vec<ReceivedSpan>>,
    /// Export requests decoded successfully.
    exports: AtomicUsize,
    /// Woken after each stored export.
    arrived: Notify,
}

/// An OTLP/HTTP receiver on 127.0.0.1 accepting `POST /v1/traces` with protobuf bodies.
/// It runs on its own thread and runtime, so it keeps answering whatever the test's
/// thread is doing; stopped on drop.
pub struct OtlpReceiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Binds a free port and starts serving.
    pub fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        listener
            .set_nonblocking(true)
            .expect("tokio needs a non-blocking listener");
        let state = Arc::new(ReceiverState {
            spans: Mutex::new(Vec::new()),
            exports: AtomicUsize::new(0),
            arrived: Notify::new(),
        });
        let app = Router::new()
            .route("/v1/traces", post(receive_traces))
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(state.clone());
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building the receiver's runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("adopting the bound listener");
                    // Dropping the server future on shutdown (rather than a graceful stop)
                    // cannot hang on an exporter's idle keep-alive connection.
                    tokio::select! {
                        result = axum::serve(listener, app) => {
                            result.expect("the receiver serves until shut down");
                        }
                        _ = stop => {}
                    }
                });
            })
            .expect("spawning the receiver thread");
        OtlpReceiver {
            addr,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Base URL (`http://127.0.0.1:<port>`), as `OTEL_EXPORTER_OTLP_ENDPOINT` and
    /// `SLUICE__TELEMETRY__OTLP_ENDPOINT` expect it; exporters append `/v1/traces`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The full traces URL, for exporters configured with a signal-specific endpoint.
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.endpoint())
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.state
            .spans
            .lock()
            .expect("the span store is never poisoned")
            .clone()
    }

    /// How many export requests were decoded and stored.
    pub fn export_count(&self) -> usize {
        self.state.exports.load(Ordering::SeqCst)
    }

    /// Waits until `done(spans)` holds and returns the spans at that moment. Panics with
    /// the spans received so far if it does not within `timeout`.
    pub async fn wait_for(
        &self,
        done: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedSpan> {
        match self.try_wait_for(done, timeout).await {
            Ok(spans) => spans,
            Err(spans) => panic!(
                "spans did not arrive within {timeout:?}; received {}:\n{}",
                spans.len(),
                describe_spans(&spans)
            ),
        }
    }

    /// Like [`OtlpReceiver::wait_for`], but `Err` with the spans received so far on timeout.
    pub async fn try_wait_for(
        &self,
        done: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before checking, so an export between the check and the wait
            // still wakes us.
            let arrived = self.state.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(self.spans());
            }
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn receive_traces(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/x-protobuf") {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected application/x-protobuf, got {content_type:?}"),
        )
            .into_response();
    }
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        if encoding != "identity" {
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("compressed bodies are not supported: {encoding:?}"),
            )
                .into_response();
        }
    }
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let spans = simplify(request);
    state
        .spans
        .lock()
        .expect("the span store is never poisoned")
        .extend(spans);
    state.exports.fetch_add(1, Ordering::SeqCst);
    state.arrived.notify_waiters();
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

/// Flattens resource -> scope -> span into [`ReceivedSpan`]s.
fn simplify(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.unwrap_or_default();
        let service_name = attributes(&resource.attributes)
            .remove("service.name")
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            let scope_name = scope_spans.scope.map(|s| s.name).unwrap_or_default();
            for span in scope_spans.spans {
                let status = span.status.unwrap_or_default();
                out.push(ReceivedSpan {
                    service_name: service_name.clone(),
                    scope_name: scope_name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                    attributes: attributes(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|l| SpanLink {
                            trace_id: hex(&l.trace_id),
                            span_id: hex(&l.span_id),
                        })
                        .collect(),
                    status_code: status.code,
                    status_message: status.message,
                    start_time_unix_nano: span.start_time_unix_nano,
                    end_time_unix_nano: span.end_time_unix_nano,
                });
            }
        }
    }
    out
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                _ => to_json(kv.value.as_ref()).to_string(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn to_json(value: Option<&AnyValue>) -> serde_json::Value {
    use serde_json::Value as J;
    match value.and_then(|v| v.value.as_ref()) {
        None => J::Null,
        Some(any_value::Value::StringValue(s)) => J::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => J::Bool(*b),
        Some(any_value::Value::IntValue(i)) => J::from(*i),
        Some(any_value::Value::DoubleValue(d)) => J::from(*d),
        Some(any_value::Value::BytesValue(b)) => J::String(hex(b)),
        Some(any_value::Value::ArrayValue(a)) => {
            J::Array(a.values.iter().map(|v| to_json(Some(v))).collect())
        }
        Some(any_value::Value::KvlistValue(kvs)) => J::Object(
            kvs.values
                .iter()
                .map(|kv| (kv.key.clone(), to_json(kv.value.as_ref())))
                .collect(),
        ),
        // Profiles-only string-table reference; meaningless in traces.
        Some(any_value::Value::StringValueStrindex(i)) => J::from(*i),
    }
}

/// Lowercase hex; empty for empty input (a root span's parent id).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
