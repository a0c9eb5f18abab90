//! The live status page: `GET /status` is one self-contained HTML page (no external
//! assets) that redraws itself every second from `GET /status.json`, which this module
//! assembles from what the ingress knows: the backlog and drain rate it samples
//! ([`super::admission`]), the group's view of each backend ([`super::group_watch`]),
//! dead letters, and the final replies it has read.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Html;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::group_watch::BackendView;
use super::metrics::StatusLabel;
use super::state::IngressState;
use crate::envelope::now_ms;

/// The page.
const PAGE: &str = include_str!("status.html");

/// `GET /status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct StatusBody {
    /// When this was put together, unix ms.
    pub at_ms: u64,
    /// Requests in Kafka not yet done by the workers, over every request topic.
    pub backlog_total: Option<u64>,
    pub topics: Vec<TopicQueued>,
    /// Requests per second the workers drain while they have work.
    pub drain_rate_per_s: Option<f64>,
    /// Backlog over drain rate.
    pub time_to_drain_s: Option<f64>,
    /// The backlog has not moved for a while.
    pub stalled: bool,
    /// Records on the dead-letter topic.
    pub dead_letters: Option<u64>,
    #[schema(value_type = Vec<Object>)]
    pub backends: Vec<BackendView>,
    /// Final replies read by this ingress, by status.
    pub replies: BTreeMap<String, u64>,
    /// Requests this ingress accepted (`POST /v1/requests` and batch items answered 202).
    pub accepted: u64,
    /// Callers waiting on this ingress for a reply (sync or streamed).
    pub waiting: u64,
    /// Age of the backlog sample.
    pub sample_age_ms: Option<u64>,
}

/// One request topic's backlog: a lane's, or a pool's overflow topic.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TopicQueued {
    pub topic: String,
    pub queued: u64,
}

/// The status page: the pipeline as it runs.
#[utoipa::path(get, path = "/status", tag = "operations",
    responses((status = 200, description = "A self-contained HTML page", body = String, content_type = "text/html")))]
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// What the status page shows.
#[utoipa::path(get, path = "/status.json", tag = "operations",
    responses((status = 200, description = "The figures of the status page", body = StatusBody)))]
pub async fn json(State(state): State<IngressState>) -> Json<StatusBody> {
    let sample = state.admission.snapshot();
    let sampled = sample.age_ms.is_some();
    let backlog_total = sampled.then(|| sample.backlog.iter().map(|(_, n)| n).sum::<u64>());
    let time_to_drain_s = match (backlog_total, sample.drain_rate) {
        (Some(0), _) => Some(0.0),
        (Some(backlog), Some(rate)) if rate > 0.0 => Some(backlog as f64 / rate),
        _ => None,
    };
    let replies = ["ok", "error", "expired", "rejected"]
        .into_iter()
        .map(|status| {
            let label = StatusLabel {
                status: status.into(),
            };
            (
                status.to_string(),
                state.metrics.replies.get_or_create(&label).get(),
            )
        })
        .collect();
    let accepted = state
        .metrics
        .submissions
        .get_or_create(&StatusLabel {
            status: "202".into(),
        })
        .get();
    Json(StatusBody {
        at_ms: now_ms(),
        backlog_total,
        topics: sample
            .backlog
            .into_iter()
            .filter(|_| sampled)
            .map(|(topic, queued)| TopicQueued { topic, queued })
            .collect(),
        drain_rate_per_s: sample.drain_rate,
        time_to_drain_s,
        stalled: sample.stalled,
        dead_letters: sample.dead_letters,
        backends: state.group.backends(),
        replies,
        accepted,
        waiting: state.waiters.len() as u64,
        sample_age_ms: sample.age_ms,
    })
}
