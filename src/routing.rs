//! Which backends serve a request: the model it names (an alias resolved first) picks its
//! pool, the backends whose `models` match it. Built once from the configuration; the
//! ingress refuses a model nothing serves and lists what is served, and the worker sends
//! each request to one backend of its pool. A deployment of several pools names a topic
//! for each pool's overflow ([`Routes::overflow_topics`]). A model's fallback chain
//! (`[models.fallbacks]`) gives the routes to try instead when a trigger fires
//! ([`Routes::fallbacks`]).

use std::collections::BTreeMap;

use crate::config::{model_matches, Config, FallbackTrigger};

/// See the module documentation. Cheap to share; lives as long as its role.
#[derive(Debug, Clone)]
pub struct Routes {
    /// Backend names, in configuration order: a pool is a list of indices into it.
    backends: Vec<String>,
    /// Each backend's model patterns (names, or globs with `*`).
    patterns: Vec<Vec<String>>,
    /// alias -> model.
    aliases: BTreeMap<String, String>,
    /// model (an alias resolved) -> its chain: the models to try instead (aliases
    /// resolved), and what sends a request down it.
    fallbacks: BTreeMap<String, (Vec<String>, Vec<FallbackTrigger>)>,
}

/// A pool of backends, by index into [`Routes::backends`] (empty: none; a request that
/// does not decode or names a model nothing serves is answered without a backend).
pub(crate) type PoolKey = Vec<usize>;

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The model the backends are called with (an alias resolved).
    pub model: String,
    /// The backends that serve it, by index, never empty.
    pub pool: Vec<usize>,
    /// Set when this route is a fallback: the model the request named, and why.
    pub fell_back: Option<FellBack>,
}

/// Why a request is served by another model than the one it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FellBack {
    /// The model the request named (an alias resolved).
    pub from: String,
    pub reason: FallbackTrigger,
}

impl Routes {
    /// The routes of `config`'s backends ([`Config::named_backends`]) and aliases.
    pub fn from_config(config: &Config) -> Self {
        let named = config.named_backends();
        Self {
            backends: named.iter().map(|(name, _)| name.to_string()).collect(),
            patterns: named
                .iter()
                .map(|(_, backend)| backend.models.clone())
                .collect(),
            aliases: config.models.aliases.clone(),
            fallbacks: config
                .models
                .fallbacks
                .iter()
                .map(|(model, chain)| {
                    let resolve = |name: &str| {
                        let model = config.models.aliases.get(name).map_or(name, String::as_str);
                        model.to_string()
                    };
                    let to = chain.to.iter().map(|m| resolve(m)).collect();
                    (resolve(model), (to, chain.on.clone()))
                })
                .collect(),
        }
    }

    /// The backend names, indexed as pools index them.
    pub fn backends(&self) -> &[String] {
        &self.backends
    }

    /// The route of a request for `model` (`None` when it names no model: as `""`), or
    /// `None` when no backend serves it.
    pub fn resolve(&self, model: Option<&str>) -> Option<Route> {
        let asked = model.unwrap_or("");
        let model = self.aliases.get(asked).map_or(asked, String::as_str);
        let pool = self.pool(model)?;
        Some(Route {
            model: model.to_string(),
            pool,
            fell_back: None,
        })
    }

    /// Whether `model` (an alias resolved) has a chain that `trigger` sends requests down.
    pub fn falls_back_on(&self, model: &str, trigger: FallbackTrigger) -> bool {
        self.fallbacks
            .get(model)
            .is_some_and(|(_, on)| on.contains(&trigger))
    }

    /// The routes to try instead of `route`, in order, when `trigger` fires: the chain of
    /// the model the request named, after `route`'s model when `route` is already one of
    /// it (each model of a chain is tried at most once, in order; a fallback model's own
    /// chain is not followed); none when the chain is not for `trigger`.
    pub fn fallbacks(&self, route: &Route, trigger: FallbackTrigger) -> Vec<Route> {
        let named = route.fell_back.as_ref().map_or(&route.model, |f| &f.from);
        if !self.falls_back_on(named, trigger) {
            return Vec::new();
        }
        let (to, _) = &self.fallbacks[named];
        let after = match &route.fell_back {
            None => 0,
            Some(_) => to
                .iter()
                .position(|m| *m == route.model)
                .map_or(to.len(), |at| at + 1),
        };
        to[after..]
            .iter()
            .filter_map(|model| self.resolve(Some(model)))
            .map(|next| Route {
                fell_back: Some(FellBack {
                    from: named.clone(),
                    reason: trigger,
                }),
                ..next
            })
            .collect()
    }

    /// The backends that serve `model` by name or pattern (aliases not resolved).
    fn pool(&self, model: &str) -> Option<Vec<usize>> {
        let pool: Vec<usize> = (0..self.backends.len())
            .filter(|&i| self.patterns[i].iter().any(|p| model_matches(p, model)))
            .collect();
        (!pool.is_empty()).then_some(pool)
    }

    /// The distinct pools of the models served by name (and of the aliases' models), in
    /// order: the pools known before any request arrives. (A model that only a `*`
    /// pattern matches may make another pool at run time.)
    pub fn named_pools(&self) -> Vec<Vec<usize>> {
        let named = self.patterns.iter().flatten().filter(|p| !p.contains('*'));
        let mut pools: Vec<Vec<usize>> = named
            .chain(self.aliases.values())
            .filter_map(|model| self.pool(model))
            .collect();
        pools.sort();
        pools.dedup();
        pools
    }

    /// Each named pool and the topic a full pool's overflow is forwarded to,
    /// `<request_topic>.pool.<backend>[.<backend>...]`; none with fewer than two pools
    /// (forwarding helps only when another pool has room).
    pub fn overflow_topics(&self, request_topic: &str) -> Vec<(Vec<usize>, String)> {
        let pools = self.named_pools();
        if pools.len() < 2 {
            return Vec::new();
        }
        pools
            .into_iter()
            .map(|pool| {
                let names: Vec<&str> = pool.iter().map(|&i| self.backends[i].as_str()).collect();
                let topic = format!("{request_topic}.pool.{}", names.join("."));
                (pool, topic)
            })
            .collect()
    }

    /// The models served by name, and the aliases, sorted: what `GET /v1/models` lists.
    /// Patterns are not listed (`*` would be every name).
    pub fn models(&self) -> Vec<String> {
        let mut models: Vec<String> = self
            .patterns
            .iter()
            .flatten()
            .filter(|p| !p.contains('*'))
            .cloned()
            .chain(self.aliases.keys().cloned())
            .collect();
        models.sort();
        models.dedup();
        models
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;

    fn config(backends: &[(&str, &[&str])], aliases: &[(&str, &str)]) -> Config {
        let mut config = Config::default();
        for (name, models) in backends {
            let backend = BackendConfig {
                models: models.iter().map(|m| m.to_string()).collect(),
                ..BackendConfig::default()
            };
            config.backends.insert(name.to_string(), backend);
        }
        for (alias, model) in aliases {
            config
                .models
                .aliases
                .insert(alias.to_string(), model.to_string());
        }
        config
    }

    #[test]
    fn one_backend_alone_serves_every_model_as_before() {
        let routes = Routes::from_config(&Config::default());
        assert_eq!(routes.backends(), ["default"]);
        let route = routes.resolve(Some("anything")).expect("served");
        assert_eq!(route.pool, [0]);
        assert_eq!(routes.resolve(None).expect("served").model, "");
        assert!(routes.models().is_empty(), "a pattern lists nothing");
    }

    #[test]
    fn a_model_picks_the_backends_that_serve_it_and_an_alias_its_model() {
        let config = config(
            &[
                ("big", &["llama-3-70b"]),
                ("small-1", &["smollm2-135m"]),
                ("small-2", &["smollm2-*"]),
                ("hosted", &["gpt-4o-mini"]),
            ],
            &[("fast", "smollm2-135m")],
        );
        let routes = Routes::from_config(&config);
        // Configuration order is by name (a BTreeMap): big, hosted, small-1, small-2.
        assert_eq!(routes.backends(), ["big", "hosted", "small-1", "small-2"]);
        assert_eq!(routes.resolve(Some("llama-3-70b")).unwrap().pool, [0]);
        let fast = routes.resolve(Some("fast")).unwrap();
        assert_eq!(
            (fast.model.as_str(), fast.pool.as_slice()),
            ("smollm2-135m", &[2, 3][..])
        );
        assert_eq!(routes.resolve(Some("smollm2-360m")).unwrap().pool, [3]);
        assert_eq!(routes.resolve(Some("gpt-5")), None);
        assert_eq!(routes.resolve(None), None, "no model, no pattern for it");
        assert_eq!(
            routes.models(),
            ["fast", "gpt-4o-mini", "llama-3-70b", "smollm2-135m"]
        );
        assert_eq!(routes.named_pools(), [vec![0], vec![1], vec![2, 3]]);
        let topics = routes.overflow_topics("req");
        assert_eq!(
            topics,
            [
                (vec![0], "req.pool.big".to_string()),
                (vec![1], "req.pool.hosted".to_string()),
                (vec![2, 3], "req.pool.small-1.small-2".to_string()),
            ]
        );
    }

    #[test]
    fn a_chain_gives_its_routes_in_order_for_its_triggers_only() {
        let mut config = config(
            &[
                ("big", &["big-m"]),
                ("small", &["small-*"]),
                ("hosted", &["gpt-4o-mini"]),
            ],
            &[("fast", "small-1"), ("large", "big-m")],
        );
        config.models.fallbacks.insert(
            "large".into(),
            crate::config::FallbackConfig {
                to: vec!["fast".into(), "gpt-4o-mini".into()],
                on: vec![FallbackTrigger::Deadline],
            },
        );
        let routes = Routes::from_config(&config);
        let big = routes.resolve(Some("big-m")).unwrap();
        assert!(routes.falls_back_on("big-m", FallbackTrigger::Deadline));
        let chain = routes.fallbacks(&big, FallbackTrigger::Deadline);
        let models: Vec<&str> = chain.iter().map(|r| r.model.as_str()).collect();
        assert_eq!(
            models,
            ["small-1", "gpt-4o-mini"],
            "aliases resolved, in order"
        );
        assert_eq!(chain[0].pool, [2]);
        assert_eq!(
            chain[0].fell_back,
            Some(FellBack {
                from: "big-m".into(),
                reason: FallbackTrigger::Deadline
            })
        );
        assert!(routes
            .fallbacks(&big, FallbackTrigger::BreakerOpen)
            .is_empty());
        let then: Vec<String> = routes
            .fallbacks(&chain[0], FallbackTrigger::Deadline)
            .into_iter()
            .map(|r| r.model)
            .collect();
        assert_eq!(then, ["gpt-4o-mini"], "on down the chain, not round it");
        assert!(routes
            .fallbacks(&chain[1], FallbackTrigger::Deadline)
            .is_empty());
    }

    #[test]
    fn one_pool_has_no_overflow_topic() {
        let one = config(&[("a", &["m"]), ("b", &["m", "m-*"])], &[]);
        let routes = Routes::from_config(&one);
        assert_eq!(routes.named_pools(), [vec![0, 1]]);
        assert!(routes.overflow_topics("req").is_empty());
        assert!(Routes::from_config(&Config::default())
            .overflow_topics("req")
            .is_empty());
    }
}
