//! `[ingress.tenants.<name>]`: who may call the ingress when `ingress.auth` is on, by
//! the SHA-256 of their API keys (never the keys themselves), and each tenant's limits.
//!
//! ```toml
//! [ingress]
//! auth = true
//! [ingress.tenants.acme]
//! api_key_sha256 = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
//! requests_per_minute = 600
//! tokens_per_minute = 200000
//! max_queued = 1000
//! ```
//!
//! In the environment: `SLUICE__INGRESS__TENANTS__ACME__API_KEY_SHA256=<hex>,<hex>`.
//! `sluice config hash-key` prints the hash of a key read from standard input.

use serde::{Deserialize, Deserializer, Serialize};

/// One tenant: its keys and limits (a limit left out is no limit).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantConfig {
    /// Lower-case hex SHA-256 of each API key that acts as this tenant; a list, or one
    /// comma-separated string.
    #[serde(deserialize_with = "hashes")]
    pub api_key_sha256: Vec<String>,
    /// Requests accepted per minute (a bucket that refills evenly; a full bucket allows
    /// a minute's worth at once, as OpenAI's limits do).
    pub requests_per_minute: Option<u64>,
    /// Estimated tokens per minute: about a quarter of the prompt's characters plus
    /// `max_tokens` (256 when not given).
    pub tokens_per_minute: Option<u64>,
    /// Most requests accepted and not yet answered at once.
    pub max_queued: Option<u64>,
}

impl TenantConfig {
    /// What is wrong with this tenant's settings, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.api_key_sha256.is_empty() {
            return Some("api_key_sha256 lists no key hash".into());
        }
        // The entry is named by its place only: it may be a key pasted by mistake.
        if let Some(bad) = self.api_key_sha256.iter().position(|h| !is_sha256_hex(h)) {
            return Some(format!(
                "api_key_sha256 entry {} is not 64 lower-case hex digits (the SHA-256 of \
                 a key; `sluice config hash-key` prints it)",
                bad + 1
            ));
        }
        for (name, limit) in [
            ("requests_per_minute", self.requests_per_minute),
            ("tokens_per_minute", self.tokens_per_minute),
            ("max_queued", self.max_queued),
        ] {
            if limit == Some(0) {
                return Some(format!(
                    "{name} must be at least 1 (leave it out for no limit)"
                ));
            }
        }
        None
    }
}

/// The hex SHA-256 of an API key, as `api_key_sha256` holds it.
pub fn hash_key(key: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A list of hashes, or one string of them separated by commas (the environment's form).
fn hashes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<String>),
        Text(String),
    }
    let list = match Form::deserialize(deserializer)? {
        Form::List(list) => list,
        Form::Text(text) => text.split(',').map(str::to_string).collect(),
    };
    Ok(list
        .into_iter()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_to_lower_case_hex() {
        assert_eq!(
            hash_key("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn hashes_come_as_a_list_or_a_comma_separated_string() {
        let a = hash_key("a");
        let b = hash_key("b");
        let listed: TenantConfig =
            serde_json::from_value(serde_json::json!({"api_key_sha256": [a, b]})).unwrap();
        let joined: TenantConfig = serde_json::from_value(
            serde_json::json!({"api_key_sha256": format!("{a}, {b}"), "max_queued": 3}),
        )
        .unwrap();
        assert_eq!(listed.api_key_sha256, joined.api_key_sha256);
        assert_eq!(listed.problem(), None);
        assert_eq!(joined.max_queued, Some(3));
    }

    #[test]
    fn every_mistake_is_named() {
        let good = hash_key("k");
        for (tenant, says) in [
            (TenantConfig::default(), "lists no key hash"),
            (
                TenantConfig {
                    api_key_sha256: vec!["sk-live-plaintext".into()],
                    ..TenantConfig::default()
                },
                "not 64 lower-case hex",
            ),
            (
                TenantConfig {
                    api_key_sha256: vec![good.to_uppercase()],
                    ..TenantConfig::default()
                },
                "not 64 lower-case hex",
            ),
            (
                TenantConfig {
                    api_key_sha256: vec![good],
                    requests_per_minute: Some(0),
                    ..TenantConfig::default()
                },
                "requests_per_minute must be at least 1",
            ),
        ] {
            let problem = tenant.problem().expect("a problem");
            assert!(problem.contains(says), "{problem}");
            assert!(!problem.contains("plain"), "a key is never echoed");
        }
    }
}
