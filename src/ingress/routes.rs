//! The ingress router: which handler serves which path (the API, `/openapi.json`, the
//! status page, the admin routes), and the layers around them: the request span, the
//! body limit, CORS and gzip when configured. Handlers live in modules named for what
//! they serve; none of them imports this one.

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method};
use axum::routing::{get, post};
use axum::Router;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer, ExposeHeaders};

use super::error::AppError;
use super::state::IngressState;
use super::{batch, chat, models, openapi, requests, status, traced};
use crate::admin::{self, AdminState};

/// The ingress router: API routes plus `/healthz`, `/readyz`, `/metrics`, with CORS and
/// gzip when configured.
pub fn app(state: IngressState, admin: AdminState) -> Router {
    let config = state.config.clone();
    let limit = config.ingress.max_body_bytes;
    let mut router = Router::new()
        .route("/v1/requests", post(requests::submit_request))
        .route("/v1/requests:batch", post(batch::submit))
        // Under `/v1` as an SDK's `base_url` of `.../v1` implies, and without it.
        .route("/v1/chat/completions", post(chat::completions))
        .route("/chat/completions", post(chat::completions))
        // A trace per request, not per poll of its status: only the routes above.
        .route_layer(axum::middleware::from_fn(traced::span))
        .route("/v1/requests/{id}", get(requests::get_request))
        .route("/v1/models", get(models::list))
        .route("/models", get(models::list))
        .route("/openapi.json", get(openapi::serve))
        .route("/status", get(status::page))
        .route("/status.json", get(status::json))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
        .merge(admin::routes(admin))
        .fallback(|| async { AppError::NoRoute })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed });
    if let Some(cors) = cors(&config.ingress.cors_allowed_origins) {
        router = router.layer(cors);
    }
    if config.ingress.gzip {
        // tower-http's default predicate leaves server-sent events and tiny bodies alone.
        router = router.layer(CompressionLayer::new().gzip(true));
    }
    router
}

/// CORS for `origins` (`*`: any); `None` when there are none.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allowed = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers(ExposeHeaders::any())
            .max_age(Duration::from_secs(600)),
    )
}
