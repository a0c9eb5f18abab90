//! `[telemetry]`: traces and logs.

use serde::Deserialize;

/// `[telemetry]`: traces and logs.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP base URL (`/v1/traces` is appended). Unset: `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// is honoured; neither set means no exporter.
    pub otlp_endpoint: Option<String>,
    /// `service.name` resource. Default: the role name (`sluice-ingress`, ...).
    pub service_name: Option<String>,
    /// Log format: `text` or `json`. Default `text`.
    pub log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}
