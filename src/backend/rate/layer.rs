//! The RateLimit layer: one set of buckets per layer, shared by every service it wraps
//! and every clone of them, plus the handles the worker keeps.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::Layer;

use super::bucket::Limiter;
use super::service::{RateLimit, Scaled, Shared};
use super::share::{RateShare, RateStats};
use super::RateSettings;

/// Applies [`RateSettings`] at this worker's [`RateShare`] of them.
#[derive(Debug, Clone)]
pub(crate) struct RateLimitLayer {
    /// `None` when neither limit is set: the services pass straight through.
    shared: Option<Arc<Shared>>,
    share: RateShare,
    stats: RateStats,
}

impl RateLimitLayer {
    /// Buckets start empty at share 0; nothing passes (when a limit is set) until the
    /// worker's first [`RateShare::set_share`].
    pub fn new(settings: &RateSettings) -> Self {
        let share = RateShare::default();
        let stats = RateStats::default();
        let limited =
            settings.requests_per_second.is_some() || settings.tokens_per_minute.is_some();
        let shared = limited.then(|| {
            let limiter = Limiter::new(
                settings.requests_per_second,
                settings.tokens_per_minute.map(|t| t as f64 / 60.0),
                Duration::from_millis(settings.burst_ms),
                Instant::now(),
            );
            Arc::new(Shared {
                buckets: Mutex::new(Scaled {
                    limiter,
                    // Differs from any real generation: the first use reads the share.
                    generation: u64::MAX,
                }),
                share: share.clone(),
                stats: stats.clone(),
            })
        });
        Self {
            shared,
            share,
            stats,
        }
    }

    /// The handle the worker's rebalance callback sets.
    pub fn share(&self) -> RateShare {
        self.share.clone()
    }

    /// Wait counters for /metrics.
    pub(crate) fn stats(&self) -> RateStats {
        self.stats.clone()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit::new(inner, self.shared.clone())
    }
}
