//! The settings `sluice <role> --help` lists: the most used ones, with their environment
//! variables and their defaults read off the built-in configuration (so the help cannot
//! drift from it).

use serde_json::Value;

use super::{Config, ENV_PREFIX, ENV_SEPARATOR};

/// Keys of the ingress's help, with what each is for.
pub const INGRESS_KEYS: &[(&str, &str)] = &[
    (
        "kafka.bootstrap_servers",
        "Kafka brokers, host:port[,host:port]",
    ),
    ("kafka.request_topic", "where requests are written"),
    ("kafka.reply_topic", "where replies are read from"),
    (
        "ingress.listen",
        "the HTTP API, /metrics, /healthz, /readyz",
    ),
    ("ingress.max_body_bytes", "larger bodies get 413"),
    (
        "ingress.enqueue_timeout_ms",
        "503 when Kafka has not acknowledged by then",
    ),
    (
        "telemetry.otlp_endpoint",
        "OTLP/HTTP traces (e.g. Jaeger's :4318)",
    ),
];

/// Keys of the worker's help, with what each is for.
pub const WORKER_KEYS: &[(&str, &str)] = &[
    (
        "kafka.bootstrap_servers",
        "Kafka brokers, host:port[,host:port]",
    ),
    ("kafka.group_id", "the workers' consumer group"),
    ("kafka.request_topic", "where requests are read from"),
    ("kafka.reply_topic", "where replies are written"),
    ("backend.url", "the OpenAI-compatible backend"),
    ("backend.api_key", "bearer token for the backend"),
    (
        "backend.max_attempts",
        "calls per request before it ends `error`",
    ),
    ("worker.max_in_flight", "hard cap on calls at once"),
    ("worker.admin_listen", "/metrics, /healthz, /readyz"),
    (
        "telemetry.otlp_endpoint",
        "OTLP/HTTP traces (e.g. Jaeger's :4318)",
    ),
];

/// The `after_help` of a role: `keys` as `VARIABLE=default  what it is for`, then where
/// the rest is.
pub fn settings_help(keys: &[(&str, &str)]) -> String {
    let defaults =
        serde_json::to_value(Config::default()).expect("the configuration always serializes");
    let rows: Vec<(String, &str)> = keys
        .iter()
        .map(|(key, what)| {
            let pointer = format!("/{}", key.replace('.', "/"));
            let default = match defaults.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => "(unset)".into(),
                Some(other) => other.to_string(),
            };
            let variable = format!(
                "{ENV_PREFIX}{ENV_SEPARATOR}{}",
                key.to_uppercase().replace('.', ENV_SEPARATOR)
            );
            (format!("{variable}={default}"), *what)
        })
        .collect();
    let width = rows.iter().map(|(s, _)| s.len()).max().unwrap_or(0);
    let mut text = String::from(
        "Most-used settings (environment variable=default; the same keys in a --config TOML file):\n",
    );
    for (setting, what) in rows {
        text.push_str(&format!("  {setting:width$}  {what}\n"));
    }
    text.push_str(
        "\nEvery key with the value it would have here: `sluice config print`.\n\
         What each key does: `sluice config reference`.",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_shows_each_variable_with_its_default() {
        let help = settings_help(WORKER_KEYS);
        assert!(
            help.contains("SLUICE__BACKEND__URL=http://127.0.0.1:8000"),
            "{help}"
        );
        assert!(help.contains("SLUICE__WORKER__MAX_IN_FLIGHT=256"), "{help}");
        assert!(help.contains("SLUICE__BACKEND__API_KEY=(unset)"), "{help}");
        assert!(help.contains("sluice config reference"), "{help}");
        let ingress = settings_help(INGRESS_KEYS);
        assert!(
            ingress.contains("SLUICE__INGRESS__LISTEN=0.0.0.0:8080"),
            "{ingress}"
        );
    }
}
