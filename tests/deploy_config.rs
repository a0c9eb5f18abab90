//! Every `SLUICE_…` variable the deploy files set (docker-compose.yml, deploy/kubernetes,
//! the Dockerfile) goes through sluice's own config loader, so a misspelt or renamed key
//! fails CI rather than a user's deployment.

use std::path::Path;

use sluice::config::{unknown_env_warnings, Config};

/// A value the cluster fills in at run time (`valueFrom`): any string will do.
const FROM_THE_CLUSTER: &str = "set-by-the-cluster";

/// The `SLUICE_…` variables one YAML or Dockerfile text sets, with their values:
/// `KEY: value` (compose maps, ConfigMaps), `- KEY=value` (compose lists),
/// `- name: KEY` then `value:` or `valueFrom:` (pod env), `ENV KEY=value` (Dockerfile).
fn variables(text: &str) -> Vec<(String, String)> {
    let unquote = |v: &str| v.trim().trim_matches('"').trim_matches('\'').to_string();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        let line = line.trim_start_matches("- ").trim_start_matches("ENV ");
        if let Some(name) = line.strip_prefix("name: ") {
            let name = unquote(name);
            if !name.to_uppercase().starts_with("SLUICE_") {
                continue;
            }
            let next = lines.get(i + 1).copied().unwrap_or_default();
            let value = match next.strip_prefix("value: ") {
                Some(value) => unquote(value),
                None => FROM_THE_CLUSTER.to_string(),
            };
            found.push((name, value));
        } else if line.to_uppercase().starts_with("SLUICE_") {
            let (name, value) = line
                .split_once(": ")
                .or_else(|| line.split_once('='))
                .unwrap_or((line, ""));
            found.push((unquote(name), unquote(value)));
        }
    }
    found
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Loads `vars` as the environment of one deployment; panics naming `what`.
fn assert_loads(what: &str, vars: &[(String, String)]) {
    assert!(!vars.is_empty(), "{what}: no SLUICE_ variables found");
    let warnings = unknown_env_warnings(vars.iter().map(|(name, _)| name.clone()));
    assert!(warnings.is_empty(), "{what}: {warnings:#?}");
    if let Err(e) = Config::load_from(None, vars.to_vec()) {
        panic!("{what}: {e}\nvariables: {vars:#?}");
    }
}

#[test]
fn docker_compose_sets_only_real_keys() {
    let vars = variables(&read(Path::new("docker-compose.yml")));
    assert!(
        vars.iter().any(|(n, _)| n == "SLUICE__BACKEND__URL"),
        "{vars:?}"
    );
    assert_loads("docker-compose.yml", &vars);
}

#[test]
fn the_kubernetes_manifests_set_only_real_keys() {
    let mut vars = Vec::new();
    let mut files = std::fs::read_dir("deploy/kubernetes")
        .expect("deploy/kubernetes")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect::<Vec<_>>();
    files.sort();
    for file in &files {
        vars.extend(variables(&read(file)));
    }
    assert!(
        vars.iter()
            .any(|(n, v)| n == "SLUICE__BACKEND__API_KEY" && v == FROM_THE_CLUSTER),
        "valueFrom entries are found: {vars:?}"
    );
    assert_loads("deploy/kubernetes", &vars);
}

#[test]
fn the_dockerfile_sets_only_real_keys() {
    let vars = variables(&read(Path::new("deploy/Dockerfile")));
    if vars.is_empty() {
        // The image sets nothing of its own; nothing to check.
        assert!(!read(Path::new("deploy/Dockerfile")).contains("SLUICE_"));
        return;
    }
    assert_loads("deploy/Dockerfile", &vars);
}

#[test]
fn the_extractor_reads_every_form_and_a_misspelt_key_fails() {
    let text = "env:\n  SLUICE__WORKER__MAX_IN_FLIGHT: \"8\"\n  - SLUICE__KAFKA__GROUP_ID=g\n\
                - name: SLUICE__BACKEND__URL\n  value: http://b:8000\n\
                - name: SLUICE__BACKEND__API_KEY\n  valueFrom:\n\
                # SLUICE__NOT__READ: in a comment\nENV SLUICE__TELEMETRY__LOG_FORMAT=json\n";
    let vars = variables(text);
    assert_eq!(
        vars,
        [
            ("SLUICE__WORKER__MAX_IN_FLIGHT", "8"),
            ("SLUICE__KAFKA__GROUP_ID", "g"),
            ("SLUICE__BACKEND__URL", "http://b:8000"),
            ("SLUICE__BACKEND__API_KEY", FROM_THE_CLUSTER),
            ("SLUICE__TELEMETRY__LOG_FORMAT", "json"),
        ]
        .map(|(n, v)| (n.to_string(), v.to_string()))
    );
    assert_loads("a good text", &vars);
    let misspelt = variables("SLUICE__WORKER__MAX_INFLIGHT: 8\n");
    assert!(Config::load_from(None, misspelt).is_err());
    let single = variables("SLUICE_WORKER_MAX_IN_FLIGHT: 8\n");
    assert!(!unknown_env_warnings(single.into_iter().map(|(n, _)| n)).is_empty());
}
