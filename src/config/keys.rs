//! Every configuration key, read off the defaults themselves, and the `SLUICE_…`
//! environment variables that set none of them: a variable with single underscores or in
//! lower case is otherwise silently ignored, so each gets a start-up warning with the
//! name it probably meant.

use serde_json::Value;

use super::{Config, ENV_PREFIX, ENV_SEPARATOR};

/// Environment variables that are not settings and are read as they are.
const NOT_SETTINGS: &[&str] = &["SLUICE_CONFIG"];

/// The environment variable of every key (`SLUICE__WORKER__MAX_IN_FLIGHT`, ...);
/// `kafka.client` takes any property beneath it and appears as `SLUICE__KAFKA__CLIENT__`.
pub(crate) fn env_names() -> Vec<String> {
    let defaults =
        serde_json::to_value(Config::default()).expect("the configuration always serializes");
    let mut names = Vec::new();
    collect(&defaults, ENV_PREFIX.to_string(), &mut names);
    names.sort();
    names
}

fn collect(value: &Value, prefix: String, names: &mut Vec<String>) {
    match value {
        Value::Object(fields) if !is_open_map(&prefix) => {
            for (key, field) in fields {
                let name = format!("{prefix}{ENV_SEPARATOR}{}", key.to_uppercase());
                collect(field, name, names);
            }
        }
        Value::Object(_) => names.push(format!("{prefix}{ENV_SEPARATOR}")),
        _ => names.push(prefix),
    }
}

/// Sections whose keys are the operator's own: librdkafka properties, tenant names,
/// backend names, model aliases.
fn is_open_map(prefix: &str) -> bool {
    OPEN_MAPS.iter().any(|map| prefix.ends_with(map))
}

/// See [`is_open_map`].
const OPEN_MAPS: &[&str] = &[
    "KAFKA__CLIENT",
    "INGRESS__TENANTS",
    "SLUICE__BACKENDS",
    "MODELS__ALIASES",
];

/// A warning for each variable of `names` that looks meant for sluice but is not read:
/// `SLUICE_`-prefixed in any case without the exact `SLUICE__` form. (Misspelt keys in
/// the `SLUICE__` form are errors at load, naming the key.)
pub fn unknown_env_warnings(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let known = env_names();
    let exact = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    names
        .into_iter()
        .filter(|name| name.to_uppercase().starts_with(&format!("{ENV_PREFIX}_")))
        .filter(|name| !name.starts_with(&exact) && !NOT_SETTINGS.contains(&name.as_str()))
        .map(|name| {
            let squashed = squash(&name);
            let meant = known.iter().find(|k| {
                let k = squash(k);
                k == squashed
                    || (OPEN_MAPS.iter().any(|map| k.ends_with(&squash(map)))
                        && squashed.starts_with(&k))
            });
            match meant {
                Some(meant) if meant.ends_with(ENV_SEPARATOR) => format!(
                    "environment variable {name} is not read; did you mean {meant}…? \
                     (settings are SLUICE__SECTION__KEY: upper case, double underscores)"
                ),
                Some(meant) => format!(
                    "environment variable {name} is not read; did you mean {meant}? \
                     (settings are SLUICE__SECTION__KEY: upper case, double underscores)"
                ),
                None => format!(
                    "environment variable {name} is not read: it names no setting \
                     (settings are SLUICE__SECTION__KEY: upper case, double underscores; \
                     see `sluice config print`)"
                ),
            }
        })
        .collect()
}

/// Upper case without underscores: how a near-miss is matched to the key it meant.
fn squash(name: &str) -> String {
    name.to_uppercase().replace('_', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_its_variable() {
        let names = env_names();
        for name in [
            "SLUICE__KAFKA__BOOTSTRAP_SERVERS",
            "SLUICE__WORKER__MAX_IN_FLIGHT",
            "SLUICE__BACKEND__CONCURRENCY__INITIAL",
            "SLUICE__BACKEND__API_KEY",
            "SLUICE__KAFKA__CLIENT__",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
    }

    #[test]
    fn near_misses_are_named_with_what_they_meant() {
        let warnings = unknown_env_warnings(
            [
                "SLUICE_WORKER_MAX_IN_FLIGHT",
                "sluice__worker__max_in_flight",
                "SLUICE_KAFKA_CLIENT_SECURITY_PROTOCOL",
                "SLUICE_NOTHING_LIKE_IT",
                "SLUICE__WORKER__MAX_IN_FLIGHT",
                "SLUICE_CONFIG",
                "PATH",
            ]
            .map(String::from),
        );
        assert_eq!(warnings.len(), 4, "{warnings:#?}");
        assert!(warnings[0].contains("did you mean SLUICE__WORKER__MAX_IN_FLIGHT?"));
        assert!(warnings[1].starts_with("environment variable sluice__worker__max_in_flight"));
        assert!(warnings[1].contains("did you mean SLUICE__WORKER__MAX_IN_FLIGHT?"));
        assert!(warnings[2].contains("did you mean SLUICE__KAFKA__CLIENT__…?"));
        assert!(warnings[3].contains("names no setting"));
    }
}
