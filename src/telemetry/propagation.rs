//! W3C trace-context propagation through Kafka headers and HTTP headers.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::Context;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Collects injected fields so they can be turned into Kafka or HTTP headers.
#[derive(Debug, Default)]
pub(crate) struct FieldCollector(pub Vec<(String, String)>);

impl Injector for FieldCollector {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}

/// The trace-context fields (`traceparent`, `tracestate`) of `span`.
pub(crate) fn context_fields(span: &tracing::Span) -> Vec<(String, String)> {
    let cx = span.context();
    let mut collector = FieldCollector::default();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut collector));
    collector.0
}

/// Appends the trace context of `span` to Kafka headers.
pub(crate) fn inject_kafka(span: &tracing::Span, mut headers: OwnedHeaders) -> OwnedHeaders {
    for (key, value) in context_fields(span) {
        headers = headers.insert(Header {
            key: &key,
            value: Some(&value),
        });
    }
    headers
}

/// Reads trace context from Kafka headers (first occurrence of each key wins).
pub(crate) struct KafkaHeaderExtractor<'a, H: Headers>(pub &'a H);

impl<H: Headers> Extractor for KafkaHeaderExtractor<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(key))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}

/// The remote context carried by Kafka headers (empty when there is none).
pub(crate) fn extract_kafka<H: Headers>(headers: Option<&H>) -> Context {
    match headers {
        Some(h) => {
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&KafkaHeaderExtractor(h)))
        }
        None => Context::new(),
    }
}

/// Reads trace context from HTTP headers.
pub(crate) struct HttpHeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HttpHeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The remote context carried by incoming HTTP headers.
pub(crate) fn extract_http(headers: &http::HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HttpHeaderExtractor(headers)))
}

/// Makes `span` a child of `remote` (and links it), then records its `trace_id` field
/// for logs. Must run before the span is entered: otherwise the current span would
/// become the parent and hide a broken propagation.
pub(crate) fn adopt_remote_parent(span: &tracing::Span, remote: Context) {
    use opentelemetry::trace::TraceContextExt;
    let remote_span = remote.span().span_context().clone();
    if remote_span.is_valid() {
        let _ = span.set_parent(remote);
        span.add_link(remote_span);
    }
    record_trace_id(span);
}

/// Records the span's OpenTelemetry trace and span ids in its `trace_id` and `span_id`
/// log fields, so log lines can be found from Jaeger and back.
pub(crate) fn record_trace_id(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt;
    let cx = span.context();
    let context = cx.span().span_context().clone();
    span.record("trace_id", tracing::field::display(context.trace_id()));
    span.record("span_id", tracing::field::display(context.span_id()));
}
