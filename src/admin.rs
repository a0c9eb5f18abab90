//! `/healthz`, `/readyz` and `/metrics`, served by every role: on the ingress's own
//! listener and on the worker's admin listener.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Whether the role can do its job now (connected to Kafka, assigned, ...). Also a
/// gauge, `<prefix>_ready` (1 or 0), once registered: alerts read it.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    flag: Arc<AtomicBool>,
    gauge: Gauge,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.flag.store(ready, Ordering::Relaxed);
        self.gauge.set(i64::from(ready));
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Exports it as `ready` in `registry` (give it the role's sub-registry).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "ready",
            "1 while /readyz answers 200 (the role can do its job), else 0",
            self.gauge.clone(),
        );
    }
}

/// What the admin routes read.
#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub ready: Readiness,
}

/// The admin routes, to merge into a role's router.
pub fn routes(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: Kafka answers (and, for the ingress, the reply topic is being read).
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready", body = String, content_type = "text/plain"),
    (status = 503, description = "Not ready", body = String, content_type = "text/plain"),
))]
pub async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Prometheus metrics, OpenMetrics text.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "The metrics", body = String,
     content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
))]
pub async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::render(&state.registry),
    )
}
