//! Callers as tenants. With `ingress.auth` on, `Authorization: Bearer <key>` names the
//! tenant (keys are looked up by their SHA-256; the key itself is never kept, logged or
//! put on a span), and each tenant's limits are checked before its request is written:
//! requests and estimated tokens per minute (buckets that refill evenly) and requests
//! queued (accepted, no final reply yet). Each ingress instance holds its part of every
//! limit, `limit / ingress.replicas`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;

use super::error::AppError;
use super::quota::{Level, Quota};
use crate::config::tenants::hash_key;
use crate::config::{IngressConfig, TenantConfig};

/// Every tenant, by key hash and by name. Empty with auth off.
#[derive(Debug, Default)]
pub struct Tenants {
    auth: bool,
    by_key_hash: HashMap<String, Arc<Tenant>>,
    by_name: HashMap<String, Arc<Tenant>>,
    /// How long an accepted request counts as queued without a final reply seen
    /// (`ingress.result_ttl_ms`): a reply this instance never reads does not hold a
    /// place for ever.
    queued_ttl: Duration,
}

/// One tenant and the state of its limits on this instance.
#[derive(Debug)]
pub struct Tenant {
    pub name: Arc<str>,
    limits: Mutex<Limits>,
}

#[derive(Debug)]
struct Limits {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    max_queued: Option<u64>,
    /// Accepted ids without a final reply, and when they were accepted (kept only with
    /// `max_queued`).
    queued: HashMap<String, Instant>,
}

impl Tenants {
    pub(crate) fn from_config(config: &IngressConfig) -> Self {
        let mut tenants = Tenants {
            auth: config.auth,
            queued_ttl: Duration::from_millis(config.result_ttl_ms),
            ..Tenants::default()
        };
        for (name, tenant_config) in &config.tenants {
            let tenant = Arc::new(Tenant::new(name, tenant_config, config.replicas));
            for hash in &tenant_config.api_key_sha256 {
                tenants.by_key_hash.insert(hash.clone(), tenant.clone());
            }
            tenants.by_name.insert(name.clone(), tenant);
        }
        tenants
    }

    /// Whether callers must present a key.
    pub fn auth(&self) -> bool {
        self.auth
    }

    /// The caller's tenant: `None` with auth off, 401 for a missing or unknown key.
    pub(crate) fn identify(&self, headers: &HeaderMap) -> Result<Option<Arc<Tenant>>, AppError> {
        if !self.auth {
            return Ok(None);
        }
        let value = headers.get(AUTHORIZATION).ok_or(AppError::Unauthorized(
            "no API key: send Authorization: Bearer <key>",
        ))?;
        let key = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(AppError::Unauthorized(
                "the Authorization header must be `Bearer <key>`",
            ))?;
        self.by_key_hash
            .get(&hash_key(key))
            .cloned()
            .map(Some)
            .ok_or(AppError::Unauthorized("invalid API key"))
    }

    /// Notes the final reply of `id` (its tenant's queued place is free again).
    pub fn finished(&self, tenant: Option<&str>, id: &str) {
        if let Some(tenant) = tenant.and_then(|name| self.by_name.get(name)) {
            tenant.release(id);
        }
    }

    pub(crate) fn queued_ttl(&self) -> Duration {
        self.queued_ttl
    }
}

impl Tenant {
    fn new(name: &str, config: &TenantConfig, replicas: u32) -> Self {
        let share = |limit: u64| (limit / u64::from(replicas.max(1))).max(1);
        Tenant {
            name: name.into(),
            limits: Mutex::new(Limits {
                requests: config
                    .requests_per_minute
                    .map(|l| Bucket::per_minute(share(l))),
                tokens: config
                    .tokens_per_minute
                    .map(|l| Bucket::per_minute(share(l))),
                max_queued: config.max_queued.map(share),
                queued: HashMap::new(),
            }),
        }
    }

    /// Takes one request of `tokens` estimated tokens from the limits and counts `id` as
    /// queued; or 429 with when to retry, taking nothing.
    pub(crate) fn admit(
        &self,
        id: &str,
        tokens: u64,
        queued_ttl: Duration,
    ) -> Result<Quota, AppError> {
        let mut limits = self.lock();
        let now = Instant::now();
        let mut waits = Vec::new();
        if let Some(max) = limits.max_queued {
            // Places whose reply this instance never read expire; looked for only when
            // the tenant is full, not on every request.
            if limits.queued.len() as u64 >= max {
                limits
                    .queued
                    .retain(|_, accepted| now.duration_since(*accepted) < queued_ttl);
            }
            if limits.queued.len() as u64 >= max {
                let message = format!(
                    "tenant {} has {max} requests queued, its most at once on this ingress; \
                     retry when some have finished",
                    self.name
                );
                return Err(AppError::RateLimited {
                    message,
                    retry_after: Duration::from_secs(1),
                    quota: limits.quota(now),
                });
            }
        }
        if let Some(bucket) = &mut limits.requests {
            waits.push(("requests", bucket.wait_for(1.0, now)));
        }
        if let Some(bucket) = &mut limits.tokens {
            // A request larger than the whole bucket waits for a full one.
            let tokens = (tokens as f64).min(bucket.capacity);
            waits.push(("tokens", bucket.wait_for(tokens, now)));
        }
        if let Some((which, wait)) = waits
            .iter()
            .filter(|(_, w)| !w.is_zero())
            .max_by_key(|(_, w)| *w)
        {
            let message = format!(
                "tenant {} is over its {which} per minute limit; retry in {} ms",
                self.name,
                wait.as_millis()
            );
            return Err(AppError::RateLimited {
                message,
                retry_after: *wait,
                quota: limits.quota(now),
            });
        }
        if let Some(bucket) = &mut limits.requests {
            bucket.take(1.0);
        }
        if let Some(bucket) = &mut limits.tokens {
            let tokens = (tokens as f64).min(bucket.capacity);
            bucket.take(tokens);
        }
        // Counted only for a tenant with a most-queued limit.
        if limits.max_queued.is_some() {
            limits.queued.insert(id.to_string(), now);
        }
        Ok(limits.quota(now))
    }

    /// Frees `id`'s queued place: it finished, or it was never stored.
    pub fn release(&self, id: &str) {
        self.lock().queued.remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Limits> {
        self.limits
            .lock()
            .expect("tenant lock is never poisoned: no code panics while holding it")
    }
}

impl Limits {
    fn quota(&mut self, now: Instant) -> Quota {
        Quota {
            requests: self.requests.as_mut().map(|b| b.level(now)),
            tokens: self.tokens.as_mut().map(|b| b.level(now)),
        }
    }
}

/// A bucket of `capacity` that refills evenly over a minute.
#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    per_second: f64,
    level: f64,
    updated: Instant,
}

impl Bucket {
    fn per_minute(limit: u64) -> Self {
        let capacity = limit as f64;
        Bucket {
            capacity,
            per_second: capacity / 60.0,
            level: capacity,
            updated: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
    }

    /// How long until `amount` is there (zero: now).
    fn wait_for(&mut self, amount: f64, now: Instant) -> Duration {
        self.refill(now);
        if self.level >= amount {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((amount - self.level) / self.per_second)
        }
    }

    fn take(&mut self, amount: f64) {
        self.level -= amount;
    }

    fn level(&mut self, now: Instant) -> Level {
        self.refill(now);
        Level {
            limit: self.capacity as u64,
            remaining: self.level.max(0.0).floor() as u64,
            reset: Duration::from_secs_f64((self.capacity - self.level) / self.per_second),
        }
    }
}

#[cfg(test)]
mod tests;
