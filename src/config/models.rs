//! `[models]`: other names for the models the backends serve, the fallback chains of a
//! model under load or failure; and what a backend's `models` entry matches (a name, or a
//! pattern with `*`).

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
    /// `[models.fallbacks.<model>]`: where a request for the model (or an alias of it)
    /// goes instead when one of the chain's triggers fires. Default: none.
    pub fallbacks: BTreeMap<String, FallbackConfig>,
}

/// One model's fallback chain.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FallbackConfig {
    /// The models to try instead, in order (names or aliases, each served by some
    /// backend): the first whose backends can take the request serves it.
    pub to: Vec<String>,
    /// What sends a request down the chain; at least one.
    pub on: Vec<FallbackTrigger>,
}

/// What sends a request to its model's fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackTrigger {
    /// Every backend of the model's pool has its circuit breaker open.
    BreakerOpen,
    /// The expected wait for the model's pool is longer than the time left to the
    /// request's deadline.
    Deadline,
    /// The calls to the model's backend failed and its retries are used up (transport
    /// errors, timeouts, 5xx, 429).
    RetriesExhausted,
    /// The backend refused the prompt as longer than the model's context (a 400 that
    /// says so).
    ContextTooLong,
}

impl FallbackTrigger {
    /// Metric label, span attribute and the reply's `served_by.fallback_reason`.
    pub fn label(self) -> &'static str {
        match self {
            FallbackTrigger::BreakerOpen => "breaker_open",
            FallbackTrigger::Deadline => "deadline",
            FallbackTrigger::RetriesExhausted => "retries_exhausted",
            FallbackTrigger::ContextTooLong => "context_too_long",
        }
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
pub(crate) fn model_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names_with_any_run_for_a_star() {
        assert!(model_matches("*", ""));
        assert!(model_matches("*", "llama-3-70b"));
        assert!(model_matches("llama-3-*", "llama-3-70b"));
        assert!(!model_matches("llama-3-*", "llama-2-70b"));
        assert!(model_matches("*-instruct", "qwen-7b-instruct"));
        assert!(model_matches("qwen-*-instruct", "qwen-7b-instruct"));
        assert!(!model_matches("qwen-*-instruct", "qwen-instruct"));
        assert!(model_matches("a*b*c", "abc"));
        assert!(!model_matches("a*b*c", "acb"));
        assert!(model_matches("gpt-4o", "gpt-4o"));
        assert!(!model_matches("gpt-4o", "gpt-4o-mini"));
    }
}
