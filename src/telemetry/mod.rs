//! Tracing and OpenTelemetry: structured logs on stderr (with `trace_id` on request
//! spans), OTLP/HTTP span export when an endpoint is configured, and W3C propagation.
//!
//! Call [`init`] before the Tokio runtime starts and [`Telemetry::shutdown`] after it
//! stops: the exporter's blocking HTTP client must not be dropped on an async thread,
//! and queued spans are lost unless flushed.

pub(crate) mod propagation;
pub(crate) mod semconv;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};

/// Standard OpenTelemetry variable honoured when `telemetry.otlp_endpoint` is unset.
pub(crate) const OTEL_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Owns the tracer provider; flushes and shuts it down on [`Telemetry::shutdown`].
pub struct Telemetry {
    /// `None` when no endpoint is configured: spans still drive logs, nothing is exported.
    provider: Option<SdkTracerProvider>,
}

/// Errors setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("building the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("installing the global tracing subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// The OTLP base URL in force: config first, then the standard environment variable.
pub(crate) fn otlp_endpoint(config: &TelemetryConfig) -> Option<String> {
    config
        .otlp_endpoint
        .clone()
        .or_else(|| std::env::var(OTEL_ENDPOINT_ENV).ok())
        .filter(|e| !e.trim().is_empty())
}

/// Installs the global subscriber and propagator. `default_service` names the role.
pub fn init(config: &TelemetryConfig, default_service: &str) -> Result<Telemetry, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let service = config
        .service_name
        .clone()
        .unwrap_or_else(|| default_service.to_string());

    let provider = match otlp_endpoint(config) {
        Some(base) => {
            let endpoint = format!("{}/v1/traces", base.trim_end_matches('/'));
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|source| TelemetryError::Exporter { endpoint, source })?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(service.clone())
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };

    // Without an exporter the tracing-opentelemetry layer still gives every span a
    // trace context (from a non-exporting SDK provider), so propagation and the
    // `trace_id` log field work the same with or without a collector.
    let tracer = match &provider {
        Some(p) => p.tracer("sluice"),
        None => SdkTracerProvider::builder().build().tracer("sluice"),
    };
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
    }

    // RUST_LOG filters logs; the spans (all made in `semconv`, which logs nothing) stay
    // enabled whatever it says, or quieting the logs would switch off tracing. One global
    // filter: per-layer filters were seen to drop spans now and then under concurrency.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| {
            EnvFilter::new("info,rdkafka=warn,opentelemetry=warn,opentelemetry_sdk=warn,hyper=warn,reqwest=warn")
        })
        .add_directive(
            "sluice::telemetry::semconv=info"
                .parse()
                .expect("a constant, valid filter directive"),
        );
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match config.log_format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
    }
    tracing::debug!(service = %service, exporting = provider.is_some(), "telemetry initialised");
    Ok(Telemetry { provider })
}

impl Telemetry {
    /// Flushes queued spans and stops the exporter. Call outside the async runtime.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.force_flush() {
                eprintln!("sluice: flushing spans failed: {e}");
            }
            if let Err(e) = provider.shutdown() {
                eprintln!("sluice: stopping the span exporter failed: {e}");
            }
        }
    }
}
