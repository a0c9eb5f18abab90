//! [`AdaptiveConcurrencyLayer`]: configuration only, plus the controller shared by every
//! service it wraps (and every clone of those), so one worker has one limit.

use std::sync::Arc;

use tower::Layer;

use super::{AdaptiveConcurrency, ConcurrencySettings, Controller};

/// Wraps a backend service in [`AdaptiveConcurrency`].
#[derive(Debug, Clone)]
pub(crate) struct AdaptiveConcurrencyLayer {
    controller: Arc<Controller>,
}

impl AdaptiveConcurrencyLayer {
    pub fn new(settings: ConcurrencySettings) -> Self {
        Self {
            controller: Arc::new(Controller::new(settings)),
        }
    }

    /// The shared controller, for metrics.
    pub fn controller(&self) -> Arc<Controller> {
        Arc::clone(&self.controller)
    }
}

impl<S> Layer<S> for AdaptiveConcurrencyLayer {
    type Service = AdaptiveConcurrency<S>;

    fn layer(&self, inner: S) -> AdaptiveConcurrency<S> {
        AdaptiveConcurrency::new(inner, self.controller())
    }
}
