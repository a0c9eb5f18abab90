//! `[models]`: other names for the models the backends serve.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `[models]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// `alias = "model"`: a request for the alias is served as one for the model (the
    /// backend is called with the model's name, and the reply names it). An alias may not
    /// be a name a backend serves, nor another alias. Default: none.
    pub aliases: BTreeMap<String, String>,
}
