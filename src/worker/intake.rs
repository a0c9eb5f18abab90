//! From Kafka into the scheduler: a task receives messages, decodes them once, and
//! buffers them per lane, so backlog stays in Kafka and memory stays bounded whatever
//! the lag:
//!
//! - With one lane, a full buffer stops the receiving: librdkafka's own prefetch (bounded
//!   by `queued.max.messages.kbytes`) holds what comes next. Pausing instead would throw
//!   that prefetch away and restart fetching on every resume, which measurably starves
//!   the worker. Only when the buffer stays full for [`KEEPALIVE`] (the backend is down
//!   or very slow) are the partitions paused, so that receiving — and with it the
//!   consumer's group membership — can go on.
//! - With several lanes, a full lane's partitions are paused (until it drains below
//!   half) so the other lanes keep arriving and priority keeps working.
//!
//! Each message is buffered with the pool of backends that serve its model
//! ([`crate::routing`]): one scheduler per pool, so a pool whose backends are full or down
//! never holds back the messages of another pool once they are buffered. (A lane's buffer
//! counts every pool's messages, so a pool that stays full long enough still fills it and
//! pauses the lane's partitions.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, TopicPartitionList};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::outbox::Outbox;
use super::scheduler::fair::Weights;
use super::scheduler::{Entry, Scheduler};
use crate::envelope::{self, DecodeError, Request};
use crate::kafka::consumer::WorkerConsumer;
use crate::kafka::offsets::Ticket;
use crate::routing::{Route, Routes};

/// A message taken from Kafka, decoded once, with where it goes.
#[derive(Debug)]
pub struct Taken {
    pub message: OwnedMessage,
    pub request: Result<Request, DecodeError>,
    pub ticket: Ticket,
    /// The backends that serve its model, and the model's own name; `None` when it does
    /// not decode or no backend serves its model (it is answered without a backend).
    pub route: Option<Route>,
}

/// The backends a buffered message waits for, by index (empty: none, it is answered
/// without calling a backend).
pub(crate) type PoolKey = Vec<usize>;

/// Pause after a consumer error before asking again.
const CONSUMER_ERROR_PAUSE: Duration = Duration::from_millis(200);
/// How long receiving may stop on a full buffer before the partitions are paused and
/// receiving resumes (librdkafka drops a consumer that stops polling for
/// `max.poll.interval.ms`, 300 s by default).
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(10);

/// The buffers between the Kafka consumer and the dispatchers (one per pool).
pub struct Intake {
    consumer: Arc<WorkerConsumer>,
    /// Gives each message its ticket, and says whether a buffered one is still ours.
    outbox: Arc<Outbox>,
    /// The buffers and which lanes are paused, under one lock so a pause decided on a
    /// full buffer cannot land after the buffer was drained (and then never be undone).
    state: Mutex<State>,
    /// Signalled when an entry leaves the buffer.
    room: Notify,
    /// Which backends serve which model.
    routes: Arc<Routes>,
    /// How each pool's scheduler is made: lanes, each lower lane's minimum share, tenants'
    /// weights.
    lanes: (usize, f64, Weights),
    /// Told of each pool the first time one of its messages arrives (its dispatcher
    /// starts then).
    new_pools: mpsc::UnboundedSender<PoolKey>,
    /// Request topics, highest priority first; the index is the lane.
    lane_topics: Vec<String>,
    /// Buffer size per lane that pauses the lane's partitions.
    lane_buffer: usize,
}

struct State {
    /// Each pool's buffer.
    pools: BTreeMap<PoolKey, Pool>,
    /// Which lanes are paused now.
    paused: Vec<bool>,
}

/// The messages waiting for one pool of backends.
struct Pool {
    scheduler: Scheduler<Taken>,
    /// Signalled when an entry is pushed or a key finishes.
    changed: Arc<Notify>,
}

impl State {
    /// Entries buffered in `lane`, over every pool.
    fn buffered(&self, lane: usize) -> usize {
        self.pools
            .values()
            .map(|p| p.scheduler.buffered(lane))
            .sum()
    }
}

impl Intake {
    /// The intake, and where it announces each pool as its first message arrives.
    pub fn new(
        consumer: Arc<WorkerConsumer>,
        outbox: Arc<Outbox>,
        routes: Arc<Routes>,
        lane_topics: Vec<String>,
        lane_buffer: usize,
        lane_min_share: f64,
        tenant_weights: Weights,
    ) -> (Self, mpsc::UnboundedReceiver<PoolKey>) {
        let lanes = lane_topics.len();
        let (new_pools, pools) = mpsc::unbounded_channel();
        let intake = Self {
            consumer,
            outbox,
            state: Mutex::new(State {
                pools: BTreeMap::new(),
                paused: vec![false; lanes],
            }),
            room: Notify::new(),
            routes,
            lanes: (lanes, lane_min_share, tenant_weights),
            new_pools,
            lane_topics,
            lane_buffer,
        };
        (intake, pools)
    }

    /// Receives until `shutdown`, buffering what arrives.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            if self.lane_topics.len() == 1 && !self.wait_for_room(&shutdown).await {
                return;
            }
            let received = tokio::select! {
                _ = shutdown.cancelled() => return,
                received = self.consumer.recv() => received,
            };
            match received {
                Ok(message) => self.push(message.detach()),
                Err(e) => {
                    // An unreachable broker is summarised by the consumer's log context.
                    if crate::kafka::log::is_transport_error(&e) {
                        tracing::debug!(error = %e, "consumer error");
                    } else {
                        tracing::warn!(error = %e, "consumer error");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(CONSUMER_ERROR_PAUSE) => {}
                    }
                }
            }
        }
    }

    /// One lane: waits until its buffer has room (or has been paused for keep-alive).
    /// False on shutdown.
    async fn wait_for_room(&self, shutdown: &CancellationToken) -> bool {
        let waiting_since = tokio::time::Instant::now();
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut state = self.lock_state();
                if state.buffered(0) < self.lane_buffer || state.paused[0] {
                    return true;
                }
                if waiting_since.elapsed() >= KEEPALIVE {
                    tracing::debug!("buffer full for a while; pausing to keep polling");
                    self.set_paused(&mut state, 0, true);
                    return true;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = room => {}
                _ = tokio::time::sleep_until(waiting_since + KEEPALIVE) => {}
            }
        }
    }

    fn push(&self, message: OwnedMessage) {
        let ticket = self.outbox.take(&message);
        let request = envelope::decode_request(message.payload().unwrap_or_default());
        let route = request.as_ref().ok().and_then(|r| {
            let model = r.body.get("model").and_then(serde_json::Value::as_str);
            self.routes.resolve(model)
        });
        let key = route.as_ref().map_or_else(Vec::new, |r| r.pool.clone());
        let ordering_key = request.as_ref().ok().and_then(|r| r.ordering_key.clone());
        let tenant = request
            .as_ref()
            .ok()
            .and_then(|r| r.tenant.as_deref())
            .map(Arc::from);
        let lane = self
            .lane_topics
            .iter()
            .position(|t| t == message.topic())
            .unwrap_or(self.lane_topics.len() - 1);
        let changed = {
            let mut state = self.lock_state();
            let pool = state.pools.entry(key.clone()).or_insert_with(|| {
                // A dispatcher that is gone (the worker is stopping) does not matter.
                let _ = self.new_pools.send(key);
                let (lanes, min_share, weights) = self.lanes.clone();
                Pool {
                    scheduler: Scheduler::with_weights(lanes, min_share, weights),
                    changed: Arc::new(Notify::new()),
                }
            });
            pool.scheduler.push(Entry {
                lane,
                ordering_key,
                tenant,
                item: Taken {
                    message,
                    request,
                    ticket,
                    route,
                },
            });
            let changed = pool.changed.clone();
            // Re-pausing a paused lane also covers partitions assigned since the pause.
            let several_lanes = self.lane_topics.len() > 1;
            if (several_lanes && state.buffered(lane) >= self.lane_buffer) || state.paused[lane] {
                self.set_paused(&mut state, lane, true);
            }
            changed
        };
        changed.notify_one();
    }

    /// Waits for the next entry of `pool` allowed to start (the pool exists: it was
    /// announced). Entries of partitions revoked since they were buffered are dropped
    /// (their new owner processes them).
    pub async fn next(&self, pool: &[usize]) -> Entry<Taken> {
        let changed = self.lock_state().pools[pool].changed.clone();
        loop {
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(entry) = self.pop_current(pool) {
                return entry;
            }
            notified.await;
        }
    }

    fn pop_current(&self, pool: &[usize]) -> Option<Entry<Taken>> {
        loop {
            let entry = {
                let mut state = self.lock_state();
                let entry = state.pools.get_mut(pool)?.scheduler.pop()?;
                let lane = entry.lane;
                if state.paused[lane] && state.buffered(lane) <= self.lane_buffer / 2 {
                    self.set_paused(&mut state, lane, false);
                }
                entry
            };
            self.room.notify_one();
            let current = self.outbox.is_current(&entry.item.ticket);
            if current {
                return Some(entry);
            }
            self.finished(pool, entry.ordering_key.as_deref());
        }
    }

    /// Lets the next entry of `pool` with `key` start.
    pub fn finished(&self, pool: &[usize], key: Option<&str>) {
        if key.is_none() {
            return;
        }
        let changed = {
            let mut state = self.lock_state();
            let Some(pool) = state.pools.get_mut(pool) else {
                return;
            };
            pool.scheduler.finished(key);
            pool.changed.clone()
        };
        changed.notify_one();
    }

    /// Entries buffered now, over all lanes and pools.
    pub fn buffered(&self) -> usize {
        self.lock_state()
            .pools
            .values()
            .map(|p| p.scheduler.len())
            .sum()
    }

    /// The entries buffered for `backend`: of each pool it serves, its part (the pool's
    /// entries over the pool's backends). Its demand, for group pacing.
    pub fn buffered_for(&self, backend: usize) -> usize {
        self.lock_state()
            .pools
            .iter()
            .filter(|(key, _)| key.contains(&backend))
            .map(|(key, pool)| pool.scheduler.len().div_ceil(key.len()))
            .sum()
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("intake lock is never poisoned: no panics while held")
    }

    /// Pauses or resumes every assigned partition of `lane`'s topic (local, non-blocking
    /// librdkafka calls, so fine under the lock).
    fn set_paused(&self, state: &mut State, lane: usize, pause: bool) {
        let topic = &self.lane_topics[lane];
        let was = std::mem::replace(&mut state.paused[lane], pause);
        let assignment = match self.consumer.assignment() {
            Ok(assignment) => assignment,
            Err(e) => {
                tracing::warn!(error = %e, "reading the assignment failed");
                return;
            }
        };
        let mut partitions = TopicPartitionList::new();
        for element in assignment.elements_for_topic(topic) {
            partitions.add_partition(topic, element.partition());
        }
        if partitions.count() == 0 {
            return;
        }
        let result = if pause {
            self.consumer.pause(&partitions)
        } else {
            self.consumer.resume(&partitions)
        };
        match result {
            Ok(()) if was != pause => {
                tracing::debug!(topic = %topic, paused = pause, "lane flow changed")
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, topic = %topic, paused = pause, "pausing or resuming failed")
            }
        }
    }
}
