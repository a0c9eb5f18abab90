//! The SERVER span of every API route, as middleware: named by method and route
//! template, continuing the caller's trace context (W3C headers), with the answer's
//! status. Handlers add what only they know (the request id, an error's type) to
//! `Span::current()`, which is this span.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::{propagation, semconv};

/// Runs the route inside its span.
pub async fn span(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_string(),
        |m| m.as_str().to_string(),
    );
    let span = semconv::http_server_span(request.method().as_str(), &route);
    propagation::adopt_remote_parent(&span, propagation::extract_http(request.headers()));
    let response = next.run(request).instrument(span.clone()).await;
    span.set_attribute(
        semconv::HTTP_RESPONSE_STATUS_CODE,
        i64::from(response.status().as_u16()),
    );
    response
}
