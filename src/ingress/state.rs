//! What every ingress handler shares: one cheap-to-clone bundle of the config, the
//! routes, the producer, the reply cache, the waiters and the limits. Its own module so that the
//! handlers depend on it and the router depends on the handlers, never the reverse.

use std::sync::Arc;

use super::admission::Admission;
use super::cache::ReplyCache;
use super::group_watch::GroupWatch;
use super::metrics::IngressMetrics;
use super::tenants::Tenants;
use super::waiters::Waiters;
use crate::config::Config;
use crate::kafka::producer::Producer;
use crate::routing::Routes;

/// Everything a route needs; cheap to clone.
#[derive(Clone)]
pub struct IngressState {
    pub config: Arc<Config>,
    pub producer: Producer,
    pub cache: Arc<ReplyCache>,
    pub waiters: Arc<Waiters>,
    pub tenants: Arc<Tenants>,
    pub admission: Arc<Admission>,
    /// The workers' view of each backend, from the control topic (status page).
    pub group: Arc<GroupWatch>,
    /// Which models are served, and by which backends.
    pub routes: Arc<Routes>,
    pub metrics: IngressMetrics,
}
