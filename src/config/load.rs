//! Loading the configuration: built-in defaults, then the TOML file, then `SLUICE__*`
//! environment variables; an error names the layer (the file, or the environment) that
//! brought it.

use std::collections::BTreeMap;
use std::path::Path;

use super::{Config, ConfigError, ENV_PREFIX, ENV_SEPARATOR};

impl Config {
    /// Loads defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Like [`Config::load`] with an explicit environment, for tests.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
            // The file alone first, so that its mistakes are reported as its own.
            let in_file = |source| ConfigError::File {
                path: path.to_path_buf(),
                source,
            };
            builder
                .build_cloned()
                .map_err(in_file)?
                .try_deserialize::<Config>()
                .map_err(in_file)?;
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .list_separator(",")
                .with_list_parse_key("kafka.lanes")
                .with_list_parse_key("ingress.cors_allowed_origins")
                .with_list_parse_key("backend.models")
                .try_parsing(true)
                .source(Some(env)),
        );
        let mut config: Config = builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(ConfigError::Env)?;
        config.kafka.client = normalise_client_keys(std::mem::take(&mut config.kafka.client));
        config.validate()?;
        Ok(config)
    }
}

/// librdkafka property names use dots and never underscores, while environment
/// variable names cannot hold dots; so `_` in a pass-through key means `.`.
fn normalise_client_keys(client: BTreeMap<String, String>) -> BTreeMap<String, String> {
    client
        .into_iter()
        .map(|(k, v)| (k.replace('_', "."), v))
        .collect()
}
