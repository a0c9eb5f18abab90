//! The CircuitBreaker layer, and the worker's [`BreakerHandle`] on the state every
//! service it wraps shares (`shared`).

use std::sync::Arc;

use tokio::sync::watch;
use tower::Layer;

use super::service::CircuitBreaker;
use super::shared::{Probe, Shared};
use super::{BreakerSettings, BreakerState};

/// Applies [`BreakerSettings`]. Every service made by one layer (and their clones)
/// shares one breaker.
#[derive(Clone)]
pub(crate) struct CircuitBreakerLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CircuitBreakerLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    /// A breaker that ends each open period with `probe`.
    pub fn new(settings: &BreakerSettings, probe: Probe) -> Self {
        Self {
            shared: Arc::new(Shared::new(settings, probe)),
        }
    }

    /// What the worker observes.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker::new(inner, self.shared.clone())
    }
}

/// The worker's view of the breaker: current state, a channel of transitions, counters.
#[derive(Clone)]
pub struct BreakerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerHandle")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl BreakerHandle {
    /// The state now.
    pub fn state(&self) -> BreakerState {
        self.shared.state()
    }

    /// Every transition, latest value first. Pause Kafka partitions on `Open`, resume
    /// on anything else.
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.shared.subscribe()
    }

    /// Times it opened, re-openings after a failed probe included (a counter).
    pub fn opens_total(&self) -> u64 {
        self.shared.opens_total()
    }
}
