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
//! never holds back the messages of another pool once they are buffered. With several
//! pools, each has its own bound of `worker.lane_buffer` per lane: a request whose pool is
//! at its bound, while another pool has room, is forwarded to its pool's overflow topic
//! ([`super::overflow`]) rather than buffered, so a full pool does not fill the lane and
//! stop it for the others; the overflow topic is paused while its pool is full. A lane
//! stops only when no pool has room, or when what cannot be forwarded (requests with an
//! ordering key, whose order a copy elsewhere could break, and pools without an overflow
//! topic) fills its bound. The bookkeeping behind these rules is [`state`].

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, TopicPartitionList};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::fallback::{self, Pace};
use super::outbox::Outbox;
use super::overflow::{self, Overflow};
use super::scheduler::fair::Weights;
use super::scheduler::{Entry, Scheduler};
use crate::envelope::{self, DecodeError, Request};
use crate::kafka::consumer::WorkerConsumer;
use crate::kafka::offsets::Ticket;
use crate::routing::{Route, Routes};
use state::{Pool, State};

mod state;

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

pub(crate) use crate::routing::PoolKey;

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
    /// Buffer size per lane (and per pool and lane, with overflow topics) that pauses.
    lane_buffer: usize,
    /// The pools' overflow topics (none with one pool).
    overflow: Overflow,
    /// Where forwards run, drained with the calls at shutdown; the group's id for their
    /// spans.
    forwards: (TaskTracker, String),
    /// Forwards not written yet: at `lane_buffer`, requests are buffered instead, so a
    /// slow overflow topic cannot make the worker hold more than its bounds.
    forwarding: Arc<AtomicUsize>,
}

/// How an [`Intake`] is made: what it buffers for, and its bounds.
pub(crate) struct IntakeSettings {
    /// Request topics, highest priority first.
    pub lane_topics: Vec<String>,
    pub lane_buffer: usize,
    pub lane_min_share: f64,
    pub tenant_weights: Weights,
    pub overflow: Overflow,
    /// Where forwards run (the worker drains it).
    pub tasks: TaskTracker,
    pub group_id: String,
}

impl Intake {
    /// The intake, and where it announces each pool as its first message arrives.
    pub(crate) fn new(
        consumer: Arc<WorkerConsumer>,
        outbox: Arc<Outbox>,
        routes: Arc<Routes>,
        settings: IntakeSettings,
    ) -> (Self, mpsc::UnboundedReceiver<PoolKey>) {
        let lanes = settings.lane_topics.len();
        let (new_pools, pools) = mpsc::unbounded_channel();
        let intake = Self {
            consumer,
            outbox,
            state: Mutex::new(State {
                pools: BTreeMap::new(),
                paused: HashSet::new(),
                overflowing: HashSet::new(),
            }),
            room: Notify::new(),
            routes,
            lanes: (lanes, settings.lane_min_share, settings.tenant_weights),
            new_pools,
            lane_topics: settings.lane_topics,
            lane_buffer: settings.lane_buffer,
            overflow: settings.overflow,
            forwards: (settings.tasks, settings.group_id),
            forwarding: Arc::default(),
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
                let topic = &self.lane_topics[0];
                if !self.lane_full(&state, 0) || state.paused.contains(topic) {
                    return true;
                }
                if waiting_since.elapsed() >= KEEPALIVE {
                    tracing::debug!("buffer full for a while; pausing to keep polling");
                    self.set_paused(&mut state, topic, true);
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

    /// Whether `lane` is full: it stops receiving (one lane) or is paused.
    fn lane_full(&self, state: &State, lane: usize) -> bool {
        state.lane_at(&self.overflow, self.lane_buffer, lane, self.lane_buffer)
    }

    /// The lane of `message`: its topic's, or for a forwarded copy the topic it first
    /// arrived on; the lowest for a topic no lane has.
    fn lane_of(&self, message: &OwnedMessage) -> usize {
        let topic = match self.overflow.pool_of(message.topic()) {
            Some(_) => overflow::source_topic(message).unwrap_or_default(),
            None => message.topic().to_string(),
        };
        self.lane_topics
            .iter()
            .position(|t| *t == topic)
            .unwrap_or(self.lane_topics.len() - 1)
    }

    /// The overflow topic `message` goes to instead of the buffer: it came from a lane
    /// topic, has no ordering key, fits, its pool overflows ([`State::overflows`]), and
    /// fewer than `lane_buffer` forwards are unwritten. So only what stands in another
    /// pool's way is written twice.
    fn forward_to(
        &self,
        state: &State,
        message: &OwnedMessage,
        pool: &[usize],
        lane: usize,
        keyed: bool,
    ) -> Option<String> {
        let topic = self.overflow.topic_of(pool)?;
        let from_lane = self.overflow.pool_of(message.topic()).is_none();
        let overflows = state.overflows(&self.overflow, self.lane_buffer, pool, lane);
        let room = self.forwarding.load(Ordering::Relaxed) < self.lane_buffer;
        (from_lane && !keyed && overflows && room && self.overflow.fits(message))
            .then(|| topic.to_string())
    }

    /// Where a request goes: the backends of its model, or of its `deadline` chain when
    /// they cannot start it in time ([`fallback::by_deadline`]); `None` when it does not
    /// decode or nothing serves its model. One read back from the overflow topic of a
    /// pool of its chain was moved there already, and stays.
    fn route_of(
        &self,
        request: &Result<Request, DecodeError>,
        read_back_for: Option<&PoolKey>,
    ) -> Option<Route> {
        let request = request.as_ref().ok()?;
        let model = request
            .body
            .get("model")
            .and_then(serde_json::Value::as_str);
        let route = self.routes.resolve(model)?;
        if !fallback::allowed(request) {
            return Some(route);
        }
        if let Some(moved) = read_back_for.and_then(|p| fallback::moved_to(&self.routes, &route, p))
        {
            return Some(moved);
        }
        let state = self.lock_state();
        let now = std::time::Instant::now();
        Some(fallback::by_deadline(
            &self.routes,
            route,
            request.deadline_ms,
            |pool| state.expected_wait(pool, now),
        ))
    }

    /// Writes `message` (taken as `ticket`) to `topic` in the background, counted in
    /// `forwarding` until written.
    fn spawn_forward(&self, message: OwnedMessage, topic: String, ticket: Ticket) {
        let (tasks, group) = &self.forwards;
        let counted = overflow::Unwritten::count(&self.forwarding);
        let forward = overflow::forward(self.outbox.clone(), message, topic, ticket, group.clone());
        tasks.spawn(async move {
            forward.await;
            drop(counted);
        });
    }

    fn push(&self, message: OwnedMessage) {
        let ticket = self.outbox.take(&message);
        let request = envelope::decode_request(message.payload().unwrap_or_default());
        let route = self.route_of(&request, self.overflow.pool_of(message.topic()));
        let key = route.as_ref().map_or_else(Vec::new, |r| r.pool.clone());
        let ordering_key = request.as_ref().ok().and_then(|r| r.ordering_key.clone());
        let tenant = request
            .as_ref()
            .ok()
            .and_then(|r| r.tenant.as_deref())
            .map(Arc::from);
        let lane = self.lane_of(&message);
        let changed = {
            let mut state = self.lock_state();
            if let Some(topic) =
                self.forward_to(&state, &message, &key, lane, ordering_key.is_some())
            {
                if let Some(pool) = state.pools.get_mut(&key) {
                    pool.in_overflow += 1;
                }
                state.overflowing.insert(key);
                drop(state);
                self.spawn_forward(message, topic, ticket);
                return;
            }
            let source = message.topic().to_string();
            let pool = state.pools.entry(key.clone()).or_insert_with(|| {
                // A dispatcher that is gone (the worker is stopping) does not matter.
                let _ = self.new_pools.send(key);
                let (lanes, min_share, weights) = self.lanes.clone();
                Pool {
                    scheduler: Scheduler::with_weights(lanes, min_share, weights),
                    changed: Arc::new(Notify::new()),
                    pace: Pace::default(),
                    started: 0,
                    in_overflow: 0,
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
            // Re-pausing a paused topic also covers partitions assigned since the pause.
            if let Some(source_pool) = self.overflow.pool_of(&source) {
                if let Some(pool) = state.pools.get_mut(source_pool) {
                    pool.in_overflow = pool.in_overflow.saturating_sub(1);
                }
                if state.pool_total(source_pool) >= self.lane_buffer
                    || state.paused.contains(&source)
                {
                    self.set_paused(&mut state, &source, true);
                }
            }
            let lane_topic = &self.lane_topics[lane];
            let several_lanes = self.lane_topics.len() > 1;
            if (several_lanes && self.lane_full(&state, lane)) || state.paused.contains(lane_topic)
            {
                self.set_paused(&mut state, lane_topic, true);
            }
            changed
        };
        changed.notify_one();
    }

    /// Waits for the next entry of `pool` allowed to start (the pool exists: it was
    /// announced); tell [`Intake::ended`] when it ended. Entries of partitions revoked since they were buffered are dropped
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
                self.resume_below_half(&mut state, pool, entry.lane);
                entry
            };
            self.room.notify_one();
            let current = self.outbox.is_current(&entry.item.ticket);
            if current {
                if let Some(started) = self.lock_state().pools.get_mut(pool) {
                    started.started += 1;
                }
                return Some(entry);
            }
            self.finished(pool, entry.ordering_key.as_deref());
        }
    }

    /// Resumes `lane`'s topic, and `pool`'s overflow topic, once below half their bound.
    fn resume_below_half(&self, state: &mut State, pool: &[usize], lane: usize) {
        let half = self.lane_buffer / 2;
        let lane_topic = &self.lane_topics[lane];
        if state.paused.contains(lane_topic)
            && !state.lane_at(&self.overflow, self.lane_buffer, lane, half + 1)
        {
            self.set_paused(state, lane_topic, false);
        }
        if let Some(topic) = self.overflow.topic_of(pool) {
            if state.paused.contains(topic) && state.pool_total(pool) <= half {
                self.set_paused(state, topic, false);
            }
        }
        if state.pool_total(pool) == 0 {
            state.overflowing.remove(pool);
        }
    }

    /// An entry of `pool` that [`Intake::next`] gave ended (answered): the pool's pace.
    pub fn ended(&self, pool: &[usize]) {
        if let Some(pool) = self.lock_state().pools.get_mut(pool) {
            pool.pace.ended(std::time::Instant::now());
            pool.started = pool.started.saturating_sub(1);
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

    /// Pauses or resumes every assigned partition of `topic` (local, non-blocking
    /// librdkafka calls, so fine under the lock).
    fn set_paused(&self, state: &mut State, topic: &str, pause: bool) {
        let was = if pause {
            !state.paused.insert(topic.to_string())
        } else {
            state.paused.remove(topic)
        };
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
