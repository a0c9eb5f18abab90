//! OpenTelemetry semantic-convention names (messaging and GenAI) and the constructors of
//! every span sluice creates. Both conventions are still moving, so their names live
//! here and nowhere else.

use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub(crate) const MESSAGING_SYSTEM: &str = "messaging.system";
pub(crate) const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
pub(crate) const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
pub(crate) const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
pub(crate) const MESSAGING_DESTINATION_PARTITION_ID: &str = "messaging.destination.partition.id";
pub(crate) const MESSAGING_KAFKA_OFFSET: &str = "messaging.kafka.offset";
pub(crate) const MESSAGING_KAFKA_MESSAGE_KEY: &str = "messaging.kafka.message.key";
pub(crate) const MESSAGING_CONSUMER_GROUP_NAME: &str = "messaging.consumer.group.name";

pub(crate) const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
pub(crate) const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
pub(crate) const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
pub(crate) const GEN_AI_REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
pub(crate) const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
pub(crate) const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
pub(crate) const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
pub(crate) const GEN_AI_RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";

pub(crate) const HTTP_REQUEST_METHOD: &str = "http.request.method";
pub(crate) const HTTP_ROUTE: &str = "http.route";
pub(crate) const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";

pub(crate) const SLUICE_QUEUE_MS: &str = "sluice.queue_ms";
pub(crate) const SLUICE_STATUS: &str = "sluice.status";
pub(crate) const SLUICE_ATTEMPTS: &str = "sluice.attempts";
/// The configured name of the backend that served the request.
pub(crate) const SLUICE_BACKEND: &str = "sluice.backend";
/// Set when another model than the one named served the request: the model named.
pub(crate) const SLUICE_FALLBACK_FROM: &str = "sluice.fallback_from";
/// Why the request fell back (`deadline`, `breaker_open`, ...).
pub(crate) const SLUICE_FALLBACK_REASON: &str = "sluice.fallback_reason";

const KAFKA: &str = "kafka";

/// SERVER span for an HTTP route, e.g. `POST /v1/requests`.
pub(crate) fn http_server_span(method: &str, route: &str) -> Span {
    let span = tracing::info_span!(
        "http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        request_id = tracing::field::Empty,
    );
    span.set_attribute(HTTP_REQUEST_METHOD, method.to_string());
    span.set_attribute(HTTP_ROUTE, route.to_string());
    span
}

/// PRODUCER span for writing one message to `topic`.
pub(crate) fn kafka_send_span(topic: &str, key: &str) -> Span {
    let span = tracing::info_span!(
        "kafka_send",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
    );
    span.set_attribute(MESSAGING_SYSTEM, KAFKA);
    span.set_attribute(MESSAGING_OPERATION_TYPE, "send");
    span.set_attribute(MESSAGING_OPERATION_NAME, "send");
    span.set_attribute(MESSAGING_DESTINATION_NAME, topic.to_string());
    span.set_attribute(MESSAGING_KAFKA_MESSAGE_KEY, key.to_string());
    span
}

/// Records where a produced message landed.
pub(crate) fn record_delivery(span: &Span, partition: i32, offset: i64) {
    span.set_attribute(MESSAGING_DESTINATION_PARTITION_ID, partition.to_string());
    span.set_attribute(MESSAGING_KAFKA_OFFSET, offset);
}

/// Where a consumed message came from.
pub(crate) struct Consumed<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// `None` for readers outside a consumer group (the ingress's reply reader).
    pub group: Option<&'a str>,
}

/// CONSUMER span for processing one message. Created without a parent: the caller
/// sets the remote parent from the message headers before entering it
/// (`propagation::adopt_remote_parent`).
pub(crate) fn kafka_process_span(consumed: &Consumed<'_>) -> Span {
    let span = tracing::info_span!(
        parent: None,
        "kafka_process",
        otel.name = %format_args!("process {}", consumed.topic),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        request_id = tracing::field::Empty,
    );
    span.set_attribute(MESSAGING_SYSTEM, KAFKA);
    span.set_attribute(MESSAGING_OPERATION_TYPE, "process");
    span.set_attribute(MESSAGING_OPERATION_NAME, "process");
    span.set_attribute(MESSAGING_DESTINATION_NAME, consumed.topic.to_string());
    span.set_attribute(
        MESSAGING_DESTINATION_PARTITION_ID,
        consumed.partition.to_string(),
    );
    span.set_attribute(MESSAGING_KAFKA_OFFSET, consumed.offset);
    if let Some(group) = consumed.group {
        span.set_attribute(MESSAGING_CONSUMER_GROUP_NAME, group.to_string());
    }
    span
}

/// CLIENT span for one chat-completion call to the backend.
pub(crate) fn chat_span(model: &str, provider: &str, max_tokens: Option<u64>) -> Span {
    let span = tracing::info_span!(
        "chat",
        otel.name = %format_args!("chat {model}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
    );
    span.set_attribute(GEN_AI_OPERATION_NAME, "chat");
    span.set_attribute(GEN_AI_PROVIDER_NAME, provider.to_string());
    span.set_attribute(GEN_AI_REQUEST_MODEL, model.to_string());
    if let Some(max) = max_tokens {
        span.set_attribute(GEN_AI_REQUEST_MAX_TOKENS, max as i64);
    }
    span
}

/// Records the backend's answer on a chat span.
pub(crate) fn record_chat_response(
    span: &Span,
    response_model: Option<&str>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    finish_reasons: Vec<String>,
) {
    if let Some(model) = response_model {
        span.set_attribute(GEN_AI_RESPONSE_MODEL, model.to_string());
    }
    if let Some(n) = input_tokens {
        span.set_attribute(GEN_AI_USAGE_INPUT_TOKENS, n as i64);
    }
    if let Some(n) = output_tokens {
        span.set_attribute(GEN_AI_USAGE_OUTPUT_TOKENS, n as i64);
    }
    if !finish_reasons.is_empty() {
        let values: Vec<opentelemetry::StringValue> =
            finish_reasons.into_iter().map(Into::into).collect();
        span.set_attribute(
            GEN_AI_RESPONSE_FINISH_REASONS,
            opentelemetry::Value::Array(values.into()),
        );
    }
}

/// Marks a span as failed with `message` (shown as the span status in Jaeger).
pub(crate) fn record_error(span: &Span, message: &str) {
    span.record("otel.status_code", "error");
    span.set_attribute("error.type", message.to_string());
}
