//! Configuration layering, pass-through and validation errors.
use super::*;
use std::io::Write;
use std::path::Path;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn defaults_match_the_design_table() {
    let c = Config::load_from(None, env(&[])).unwrap();
    assert_eq!(c.kafka.bootstrap_servers, "127.0.0.1:9092");
    assert_eq!(c.kafka.request_topic, "sluice.requests");
    assert_eq!(c.kafka.reply_topic, "sluice.replies");
    assert_eq!(c.kafka.dlq_topic, "sluice.dlq");
    assert_eq!(c.kafka.group_id, "sluice-workers");
    assert_eq!(c.ingress.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.worker.admin_listen.to_string(), "0.0.0.0:9090");
    assert_eq!(c.worker.max_in_flight, 256);
    assert_eq!(c.backend.url, "http://127.0.0.1:8000");
    assert_eq!(c.backend.api_key, None);
    assert_eq!(c.backend.timeout_ms, 120_000);
    assert_eq!(c.telemetry.otlp_endpoint, None);
    assert_eq!(c.telemetry.service_name, None);
}

#[test]
fn file_overrides_defaults_and_env_overrides_file() {
    let file = toml_file(
        "[kafka]\nrequest_topic = \"from-file\"\nreply_topic = \"replies-file\"\n\
         [worker]\nmax_in_flight = 8\n",
    );
    let c = Config::load_from(
        Some(file.path()),
        env(&[
            ("SLUICE__KAFKA__REQUEST_TOPIC", "from-env"),
            ("SLUICE__BACKEND__TIMEOUT_MS", "5000"),
            ("OTHER__KAFKA__REPLY_TOPIC", "ignored"),
        ]),
    )
    .unwrap();
    assert_eq!(c.kafka.request_topic, "from-env");
    assert_eq!(c.kafka.reply_topic, "replies-file");
    assert_eq!(c.worker.max_in_flight, 8);
    assert_eq!(c.backend.timeout_ms, 5000);
    assert_eq!(c.kafka.group_id, "sluice-workers");
}

#[test]
fn client_properties_pass_through_from_file_and_env() {
    let file = toml_file("[kafka.client]\n\"sasl.mechanisms\" = \"PLAIN\"\n");
    let c = Config::load_from(
        Some(file.path()),
        env(&[("SLUICE__KAFKA__CLIENT__SECURITY_PROTOCOL", "SASL_PLAINTEXT")]),
    )
    .unwrap();
    assert_eq!(c.kafka.client["sasl.mechanisms"], "PLAIN");
    assert_eq!(c.kafka.client["security.protocol"], "SASL_PLAINTEXT");
}

#[test]
fn lanes_parse_from_env_lists() {
    let c = Config::load_from(None, env(&[("SLUICE__KAFKA__LANES", "interactive,batch")])).unwrap();
    assert_eq!(c.kafka.lanes, vec!["interactive", "batch"]);
    assert_eq!(c.request_topic_for(Some("batch")), "sluice.requests.batch");
}

#[test]
fn unknown_env_key_is_rejected_by_name() {
    let err = Config::load_from(None, env(&[("SLUICE__WORKER__MAX_INFLIGHT", "3")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_inflight"), "{err}");
    assert!(err.contains("from the environment"), "{err}");
}

#[test]
fn unknown_file_section_is_rejected_by_name() {
    let file = toml_file("[wroker]\nmax_in_flight = 3\n");
    let err = Config::load_from(Some(file.path()), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("wroker"), "{err}");
    assert!(
        err.contains(&format!("configuration file {}", file.path().display())),
        "the file is named: {err}"
    );
    // The same mistake through the environment, with a valid file, names the environment.
    let good = toml_file("[worker]\nmax_in_flight = 3\n");
    let err = Config::load_from(Some(good.path()), env(&[("SLUICE__WROKER__X", "1")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("from the environment"), "{err}");
}

#[test]
fn a_bad_client_property_is_named_cleanly() {
    let err = Config::load_from(None, env(&[("SLUICE__KAFKA__CLIENT__NOT_A_PROP", "1")]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "configuration key `kafka.client`: librdkafka refuses not.a.prop = \"1\": \
         No such configuration property: \"not.a.prop\""
    );
    let err = Config::load_from(None, env(&[("SLUICE__KAFKA__CLIENT__LINGER_MS", "soon")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("linger.ms = \"soon\""), "{err}");
    // TLS is built in: managed clusters need it.
    Config::load_from(
        None,
        env(&[("SLUICE__KAFKA__CLIENT__SECURITY_PROTOCOL", "SASL_SSL")]),
    )
    .expect("SASL_SSL is supported by this build");
}

#[test]
fn wrong_type_names_the_key() {
    let err = Config::load_from(None, env(&[("SLUICE__WORKER__MAX_IN_FLIGHT", "lots")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_in_flight"), "{err}");
}

#[test]
fn invalid_values_name_the_key() {
    for (var, value, key) in [
        ("SLUICE__WORKER__MAX_IN_FLIGHT", "0", "worker.max_in_flight"),
        ("SLUICE__BACKEND__URL", "not a url", "backend.url"),
        ("SLUICE__BACKEND__URL", "ftp://x", "backend.url"),
        ("SLUICE__KAFKA__REQUEST_TOPIC", " ", "kafka.request_topic"),
        ("SLUICE__KAFKA__LANES", "Bad Lane", "kafka.lanes"),
        ("SLUICE__INGRESS__LISTEN", "nowhere", "listen"),
    ] {
        let err = Config::load_from(None, env(&[(var, value)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{var}={value}: {err}");
    }
}

#[test]
fn missing_config_file_is_an_error() {
    let err = Config::load_from(Some(Path::new("/nonexistent/sluice.toml")), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sluice.toml"), "{err}");
}

#[test]
fn the_body_limit_must_fit_in_a_kafka_record() {
    let c = Config::load_from(None, env(&[])).unwrap();
    assert!(
        c.ingress.max_body_bytes + KAFKA_RECORD_HEADROOM <= LIBRDKAFKA_MESSAGE_MAX_BYTES,
        "the default body limit fits the default record limit"
    );
    let err = Config::load_from(None, env(&[("SLUICE__INGRESS__MAX_BODY_BYTES", "1048576")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ingress.max_body_bytes"), "{err}");
    assert!(err.contains("message.max.bytes is 1000000"), "{err}");
    assert!(err.contains("at most 983616"), "{err}");
    let raised = Config::load_from(
        None,
        env(&[
            ("SLUICE__INGRESS__MAX_BODY_BYTES", "1048576"),
            ("SLUICE__KAFKA__CLIENT__MESSAGE_MAX_BYTES", "2000000"),
        ]),
    )
    .unwrap();
    assert_eq!(raised.kafka_message_max_bytes().unwrap(), 2_000_000);
}

#[test]
fn several_backends_load_from_toml_with_their_models_and_aliases() {
    let file = toml_file(
        r#"
[backends.big]
url = "http://gpu-a:8000"
models = ["llama-3-70b"]
[backends.big.concurrency]
max = 64

[backends.small]
url = "http://cpu-1:8080"
models = ["smollm2-*"]

[models.aliases]
fast = "smollm2-135m"
"#,
    );
    let c = Config::load_from(
        Some(file.path()),
        env(&[("SLUICE__BACKENDS__SMALL__TIMEOUT_MS", "5000")]),
    )
    .unwrap();
    let named: Vec<&str> = c.named_backends().iter().map(|(name, _)| *name).collect();
    assert_eq!(named, ["big", "small"]);
    assert_eq!(c.backends["big"].concurrency.max, 64);
    assert_eq!(
        c.backends["small"].timeout_ms, 5000,
        "the environment reaches a named backend"
    );
    assert_eq!(c.models.aliases["fast"], "smollm2-135m");
    let single = Config::load_from(None, env(&[])).unwrap();
    assert_eq!(single.named_backends()[0].0, "default");
    assert_eq!(single.backend.models, ["*"]);
}

#[test]
fn bad_backends_and_aliases_name_the_key() {
    let with = |text: &str, vars: &[(&str, &str)]| {
        let file = toml_file(text);
        Config::load_from(Some(file.path()), env(vars))
            .unwrap_err()
            .to_string()
    };
    let two = "[backends.big]\nmodels = [\"m\"]\n";
    let err = with(two, &[("SLUICE__BACKEND__URL", "http://elsewhere:8000")]);
    assert!(
        err.contains("`backend`") && err.contains("not both"),
        "{err}"
    );
    let err = with("[backends.big]\nurl = \"ftp://x\"\n", &[]);
    assert!(err.contains("backends.big.url"), "{err}");
    let err = with("[backends.big.concurrency]\nmin = 0\n", &[]);
    assert!(err.contains("backends.big.concurrency.min"), "{err}");
    let err = with("[backends.Big]\n", &[]);
    assert!(err.contains("backends.Big") && err.contains("a-z"), "{err}");
    let err = with("[backends.big]\nmodels = []\n", &[]);
    assert!(err.contains("backends.big.models"), "{err}");
    let err = with(
        "[backends.big]\nmodels = [\"m\"]\n[models.aliases]\nfast = \"other\"\n",
        &[],
    );
    assert!(
        err.contains("models.aliases.fast") && err.contains("no backend serves"),
        "{err}"
    );
    let err = with(
        "[backends.big]\nmodels = [\"m\"]\n[models.aliases]\nm = \"m\"\n",
        &[],
    );
    assert!(
        err.contains("models.aliases.m") && err.contains("may not hide"),
        "{err}"
    );
}

#[test]
fn fallback_chains_load_and_bad_ones_name_the_key() {
    let backends =
        "[backends.big]\nmodels = [\"big-m\"]\n[backends.small]\nmodels = [\"small-*\"]\n\
                    [models.aliases]\nfast = \"small-1\"\n";
    let load = |chains: &str| {
        let file = toml_file(&format!("{backends}{chains}"));
        Config::load_from(Some(file.path()), env(&[]))
    };
    let good = load(
        "[models.fallbacks.big-m]\nto = [\"fast\", \"small-2\"]\non = [\"deadline\", \"breaker_open\"]\n",
    )
    .unwrap();
    let chain = &good.models.fallbacks["big-m"];
    assert_eq!(chain.to, ["fast", "small-2"]);
    assert_eq!(
        chain.on,
        [FallbackTrigger::Deadline, FallbackTrigger::BreakerOpen]
    );
    let err = |chains: &str| load(chains).unwrap_err().to_string();
    let e = err("[models.fallbacks.gpt-5]\nto = [\"fast\"]\non = [\"deadline\"]\n");
    assert!(
        e.contains("models.fallbacks.gpt-5") && e.contains("no backend serves"),
        "{e}"
    );
    let e = err("[models.fallbacks.big-m]\nto = [\"nobody\"]\non = [\"deadline\"]\n");
    assert!(
        e.contains("models.fallbacks.big-m.to") && e.contains("\"nobody\""),
        "{e}"
    );
    let e = err("[models.fallbacks.big-m]\nto = [\"fast\", \"small-1\"]\non = [\"deadline\"]\n");
    assert!(
        e.contains("comes round again"),
        "an alias and its model: {e}"
    );
    let e = err("[models.fallbacks.fast]\nto = [\"small-1\"]\non = [\"deadline\"]\n");
    assert!(
        e.contains("models.fallbacks.fast.to") && e.contains("comes round again"),
        "{e}"
    );
    let e = err("[models.fallbacks.big-m]\nto = [\"fast\"]\n");
    assert!(
        e.contains("models.fallbacks.big-m") && e.contains("`on`"),
        "{e}"
    );
    let e = err("[models.fallbacks.big-m]\nto = [\"fast\"]\non = [\"sometimes\"]\n");
    assert!(e.contains("sometimes"), "{e}");
}
