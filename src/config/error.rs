//! The one error of configuration: loading, parsing, or a value out of range, naming its
//! key. A leaf: every component's settings validate into it without importing the config
//! that gathers them.

/// Configuration failures, each naming the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration file {}: {source}", path.display())]
    File {
        path: std::path::PathBuf,
        source: config::ConfigError,
    },
    #[error("configuration from the environment (SLUICE__*): {0}")]
    Env(config::ConfigError),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    /// `key` is invalid for `reason`.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
