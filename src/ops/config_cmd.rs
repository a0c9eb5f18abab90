//! `sluice config print` (the effective configuration, as TOML, secrets masked),
//! `sluice config check FILE` (load a file as a role would, and say what is wrong),
//! `sluice config reference` (what every key does) and `sluice config hash-key` (the
//! SHA-256 of an API key, as the tenants' settings take it).

use std::path::PathBuf;

use toml::Value;

use crate::config::Config;

/// `sluice config <command>`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ConfigCommand {
    /// Print the configuration a role would run with (defaults, then --config, then
    /// SLUICE__* variables) as TOML; secrets (backend.api_key, passwords, tokens and keys in
    /// [kafka.client]) are masked. Every key is listed, so this is also the reference.
    Print,
    /// Load FILE as a role would (with the SLUICE__* variables over it) and exit 0 if it is
    /// valid, 2 with the reason (naming the file or the key) if not.
    Check {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Print the configuration reference: every section and key, its default and what it
    /// does (docs/configuration.md, built into the binary).
    Reference,
    /// Read an API key from standard input (its first line) and print its SHA-256, as
    /// `ingress.tenants.<name>.api_key_sha256` takes it: `printf %s "$KEY" | sluice config
    /// hash-key`. The key itself never needs to be in the configuration.
    HashKey,
}

/// The configuration reference, as shipped with this build.
const REFERENCE: &str = include_str!("../../docs/configuration.md");

/// Property names whose values are secrets.
const SECRET_WORDS: &[&str] = &["password", "secret", "api_key", "token", "key", "jaas"];

/// Runs a `config` subcommand; returns the process exit code.
pub fn run(config: &Config, command: &ConfigCommand) -> u8 {
    match command {
        ConfigCommand::Print => {
            print!("{}", render(config));
            0
        }
        ConfigCommand::Reference => {
            print!("{REFERENCE}");
            0
        }
        ConfigCommand::HashKey => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() || line.trim().is_empty() {
                eprintln!("sluice config hash-key: no key on standard input");
                return 2;
            }
            println!("{}", crate::config::tenants::hash_key(line.trim()));
            0
        }
        ConfigCommand::Check { file } => match Config::load(Some(file)) {
            Ok(_) => {
                println!("{}: valid", file.display());
                0
            }
            Err(e) => {
                eprintln!("{e}");
                2
            }
        },
    }
}

/// The configuration as TOML with secrets masked.
pub(crate) fn render(config: &Config) -> String {
    let mut value = Value::try_from(config).expect("the configuration always serializes");
    mask(&mut value, "");
    format!(
        "# sluice's effective configuration (defaults, then --config, then SLUICE__*).\n\
         # What each key does: `sluice config reference`.\n\
         # Unset options (backend.api_key, telemetry.otlp_endpoint, ...) are not listed.\n\n{}",
        toml::to_string(&value).expect("a TOML table always renders")
    )
}

fn mask(value: &mut Value, path: &str) {
    match value {
        Value::Table(table) => {
            for (key, field) in table.iter_mut() {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let secret = SECRET_WORDS
                    .iter()
                    .any(|w| key.to_ascii_lowercase().contains(w));
                if secret && !matches!(field, Value::Table(_)) && !is_not_secret(&path) {
                    *field = Value::String("***".into());
                } else {
                    mask(field, &path);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mask(v, path)),
        _ => {}
    }
}

/// Keys that contain a secret word but hold no secret.
fn is_not_secret(path: &str) -> bool {
    path.ends_with(".ssl.key.location") || path == "kafka.client.sasl.kerberos.keytab"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_everything_else_is_shown() {
        let mut config = Config::default();
        config.backend.api_key = Some("sk-live-123".into());
        for (key, value) in [
            ("sasl.password", "hunter2"),
            ("sasl.username", "svc"),
            ("client.id", "edge-7"),
        ] {
            config.kafka.client.insert(key.into(), value.into());
        }
        let text = render(&config);
        for secret in ["sk-live-123", "hunter2"] {
            assert!(!text.contains(secret), "{secret} shown:\n{text}");
        }
        for shown in [
            "svc",
            "edge-7",
            "max_in_flight = 256",
            "[backend.concurrency]",
        ] {
            assert!(text.contains(shown), "{shown} missing:\n{text}");
        }
        // What is printed loads back to the same settings (masked values aside).
        let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(file.path(), &text).unwrap();
        let loaded = Config::load_from(Some(file.path()), Vec::new())
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(loaded.worker.max_in_flight, 256);
        assert_eq!(loaded.kafka.client["sasl.username"], "svc");
    }
}
