//! The group-pacing task of one worker: it publishes this worker's state for the
//! backend, reads everyone's, and steers the concurrency controller with what the group
//! knows: the newest estimate of the backend's capacity, and this worker's share of it.
//! It never sits on the request path: calls wait only on the controller's permits, which
//! this task resizes beside them.
//!
//! If this worker stops reading its own records back (the control topic is down, or it
//! cannot reach it), it paces on its own controller from the share it held, says so once,
//! and goes back to the group's view when its records come back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::context::GroupContext;
use super::record::{StateRecord, VERSION};
use super::view::{GroupView, Observed};
use crate::backend::breaker::{BreakerHandle, BreakerState};
use crate::backend::concurrency::{Controller, Estimate};
use crate::envelope::now_ms;

/// How often the view is applied and due records are written.
const TICK: Duration = Duration::from_millis(100);
/// A record is written at least this often, and at once when the estimate or the
/// worker's share changes, or its demand starts or stops.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// A record not read back within this long means the control topic does not work for us.
pub(crate) const UNREACHABLE_AFTER: Duration = Duration::from_secs(3);

/// Where records go: the control topic, or anything standing in for it.
pub(crate) trait Bus: Send + 'static {
    /// Hands a record over for writing; does not wait for it to be written.
    fn publish(&self, record: &StateRecord);

    /// Waits (briefly) for what was handed over to be written: the last record frees
    /// this worker's share.
    fn flush(&self) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }
}

/// What the worker has for the backend right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Messages taken and not finished (calling, or waiting to retry) plus messages
    /// buffered: what this worker would send if it could.
    pub demand: usize,
}

impl Load {
    /// A worker's load: its calls in flight, plus its buffered messages unless it is
    /// draining (those go back to the group through Kafka, not to the backend from here,
    /// so holding a share for them would idle it until this worker has left).
    pub fn of(in_flight: usize, buffered: usize, draining: bool) -> Self {
        let buffered = if draining { 0 } else { buffered };
        Self {
            demand: in_flight + buffered,
        }
    }
}

/// Read by the worker's metrics. Updated by the task on every tick.
#[derive(Debug, Default)]
pub struct GroupStatus {
    grouped: AtomicBool,
    members: AtomicUsize,
    estimate: AtomicUsize,
    permits: AtomicUsize,
}

impl GroupStatus {
    /// Whether this worker paces with the group now (false: on its own).
    pub(crate) fn grouped(&self) -> bool {
        self.grouped.load(Ordering::Relaxed)
    }
    /// Live members, this worker included.
    pub fn members(&self) -> usize {
        self.members.load(Ordering::Relaxed)
    }
    /// The group's estimate of the backend's capacity (calls at once).
    pub fn estimate(&self) -> usize {
        self.estimate.load(Ordering::Relaxed)
    }
    /// This worker's share of it.
    pub fn permits(&self) -> usize {
        self.permits.load(Ordering::Relaxed)
    }
}

/// The task's parts.
pub(crate) struct Pacer<B> {
    pub backend: String,
    pub worker: String,
    pub controller: Arc<Controller>,
    pub load: Arc<dyn Fn() -> Load + Send + Sync>,
    pub bus: B,
    pub incoming: mpsc::Receiver<StateRecord>,
    pub status: Arc<GroupStatus>,
    /// The backend's circuit breaker, whose state the records carry (`None`: no breaker).
    pub breaker: Option<BreakerHandle>,
}

/// Whether records make the round trip, and which are still on their way.
struct Link {
    grouped: bool,
    /// Ever read one of our own records back.
    echoed: bool,
    seq: u64,
    /// Written and not read back yet, oldest first.
    unechoed: VecDeque<(u64, Instant)>,
    /// How long our records take to come back (smoothed): how long the others take to
    /// hear of a change of ours.
    echo: Duration,
    started: Instant,
}

/// What was last written, to write again only when it matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Published {
    version: u64,
    busy: bool,
    permits: usize,
    /// Calls at the backend: the others add it to their own to know the level their
    /// calls reach the backend at.
    in_flight: usize,
    grouped: bool,
    breaker: BreakerState,
}

impl<B: Bus> Pacer<B> {
    /// Runs until `shutdown`, then writes a last record that frees this worker's share.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut view = GroupView::new(&self.backend, &self.worker);
        let mut link = Link {
            grouped: true,
            echoed: false,
            seq: 0,
            unechoed: VecDeque::new(),
            echo: Duration::ZERO,
            started: Instant::now(),
        };
        let mut last: Option<(Published, Instant)> = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reader_gone = false;
        loop {
            let mut force = false;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                received = self.incoming.recv(), if !reader_gone => match received {
                    Some(record) => {
                        self.observe(&mut view, &mut link, record);
                        while let Ok(record) = self.incoming.try_recv() {
                            self.observe(&mut view, &mut link, record);
                        }
                    }
                    // The reader is gone (it stops with the same signal): stop asking it,
                    // and keep listening for that signal. (Waiting here for ever hung the
                    // worker's shutdown whenever the reader ended first.)
                    None => reader_gone = true,
                },
                _ = tick.tick() => {}
                _ = self.controller.changed() => force = true,
            }
            let now = Instant::now();
            self.apply(&mut view, &mut link, now);
            // Another member's estimate may have raised the limit.
            self.controller.keep_pacing();
            self.publish(&mut link, &mut last, now, force, false);
        }
        self.publish(&mut link, &mut last, Instant::now(), true, true);
        self.bus.flush().await;
    }

    fn observe(&self, view: &mut GroupView, link: &mut Link, record: StateRecord) {
        let now = Instant::now();
        if let Observed::Own { seq } = view.observe(record, now, now_ms()) {
            while let Some((s, at)) = link.unechoed.front().copied().filter(|(s, _)| *s <= seq) {
                link.unechoed.pop_front();
                if s == seq {
                    let took = now.duration_since(at);
                    link.echo = if link.echoed {
                        (link.echo * 7 + took) / 8
                    } else {
                        took
                    };
                }
            }
            link.echoed = true;
            if !link.grouped {
                self.rejoin(view, link);
            }
        }
    }

    /// Back to the group: take its estimate if a member paces with it, else build one
    /// from what everyone holds now.
    fn rejoin(&self, view: &GroupView, link: &mut Link) {
        link.grouped = true;
        let mine = self.controller.estimate();
        let estimate = match view.newest_estimate(now_ms()) {
            Some(group) if view.any_grouped() => group,
            newest => {
                let limit = self.controller.permits() + view.held_by_others();
                let version = newest.map_or(0, |e| e.version).max(mine.version) + 1;
                Estimate {
                    limit,
                    recover_to: limit,
                    version,
                }
            }
        };
        // The share first, so the group's limit never lands on this worker alone.
        self.controller
            .set_peers(Some(context(view, (self.load)().demand, link.echo)));
        self.controller.rejoin(estimate);
        tracing::info!(backend = %self.backend, members = view.size(), limit = estimate.limit,
            "control topic reachable again: pacing with the group");
    }

    fn apply(&self, view: &mut GroupView, link: &mut Link, now: Instant) {
        view.expire(now);
        let overdue = |since: Instant| now.duration_since(since) >= UNREACHABLE_AFTER;
        let lost = link.unechoed.front().is_some_and(|(_, at)| overdue(*at))
            || (!link.echoed && overdue(link.started));
        if link.grouped && lost {
            link.grouped = false;
            self.controller.set_peers(None);
            tracing::warn!(backend = %self.backend,
                "cannot read this worker's records back from the control topic: pacing on this \
                 worker's own controller until it can");
        }
        let load = (self.load)();
        if link.grouped {
            match view.newest_estimate(now_ms()) {
                Some(estimate) => {
                    self.controller.adopt(estimate);
                }
                None => self.start_from_remembered(view),
            }
            self.controller
                .set_peers(Some(context(view, load.demand, link.echo)));
        }
        let limit = self.controller.limit();
        let s = &self.status;
        s.grouped.store(link.grouped, Ordering::Relaxed);
        s.members.store(view.size(), Ordering::Relaxed);
        let estimate = if link.grouped {
            limit
        } else {
            limit + view.held_by_others()
        };
        s.estimate.store(estimate, Ordering::Relaxed);
        s.permits
            .store(self.controller.permits(), Ordering::Relaxed);
    }

    /// A group that starts again (every member new, or back after a long idle with no
    /// estimate recent enough to adopt) begins at the estimate it last wrote rather than
    /// at the initial limit: a controller that has not moved yet takes it. Its first
    /// answers verify it and back-pressure lowers it at once, as for any adopted estimate.
    fn start_from_remembered(&self, view: &GroupView) {
        if self.controller.estimate().version != 0 {
            return;
        }
        let Some(remembered) = view.remembered_estimate(now_ms()) else {
            return;
        };
        if self.controller.adopt(remembered) {
            tracing::info!(backend = %self.backend, limit = remembered.limit,
                "starting at the capacity the group last found");
        }
    }

    fn publish(
        &self,
        link: &mut Link,
        last: &mut Option<(Published, Instant)>,
        now: Instant,
        force: bool,
        leaving: bool,
    ) {
        let load = (self.load)();
        let estimate = self.controller.estimate();
        let permits = if leaving {
            0
        } else {
            self.controller.permits()
        };
        let summary = Published {
            version: estimate.version,
            busy: load.demand > 0,
            permits,
            in_flight: self.controller.in_flight(),
            grouped: link.grouped,
            breaker: self
                .breaker
                .as_ref()
                .map_or(BreakerState::Closed, BreakerHandle::state),
        };
        let due = match last {
            None => true,
            Some((previous, at)) => {
                *previous != summary || now.duration_since(*at) >= PUBLISH_EVERY
            }
        };
        if !(force || due || leaving) {
            return;
        }
        link.seq += 1;
        self.bus.publish(&StateRecord {
            v: VERSION,
            backend: self.backend.clone(),
            worker: self.worker.clone(),
            at_ms: now_ms(),
            seq: link.seq,
            demand: if leaving { 0 } else { load.demand },
            in_flight: self.controller.in_flight(),
            permits,
            estimate: estimate.into(),
            grouped: link.grouped,
            leaving,
            breaker: (summary.breaker != BreakerState::Closed)
                .then(|| summary.breaker.label().to_string()),
        });
        // Bounded: while nothing comes back the oldest entry alone decides.
        if link.unechoed.len() < 256 {
            link.unechoed.push_back((link.seq, now));
        }
        *last = Some((summary, now));
    }
}

/// This worker's place in the group, for the controller.
fn context(view: &GroupView, demand: usize, echo: Duration) -> Box<GroupContext> {
    Box::new(GroupContext::new(view.share(demand, echo)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::{Bus, GroupStatus, Load, Pacer};
    use crate::backend::concurrency::{ConcurrencySettings, Controller};
    use crate::envelope::now_ms;
    use crate::group::record::{EstimateRecord, StateRecord, VERSION};

    /// Writes nowhere.
    struct Nowhere;
    impl Bus for Nowhere {
        fn publish(&self, _: &StateRecord) {}
    }

    /// A record of a group that left `ago_ms` ago with an estimate of `limit`.
    fn left(ago_ms: u64, limit: usize) -> StateRecord {
        StateRecord {
            v: VERSION,
            backend: "b".into(),
            worker: "gone".into(),
            at_ms: now_ms() - ago_ms,
            seq: 9,
            demand: 0,
            in_flight: 0,
            permits: 0,
            estimate: EstimateRecord {
                limit,
                recover_to: limit,
                version: 17,
            },
            grouped: true,
            leaving: true,
            breaker: None,
        }
    }

    /// The limit a new worker's controller has a moment after its pacer read `records`.
    async fn limit_after(controller: Arc<Controller>, records: Vec<StateRecord>) -> usize {
        let (sender, incoming) = mpsc::channel(16);
        for record in records {
            sender.send(record).await.unwrap();
        }
        let pacer = Pacer {
            backend: "b".into(),
            worker: "new".into(),
            controller: controller.clone(),
            load: Arc::new(|| Load { demand: 0 }),
            bus: Nowhere,
            incoming,
            status: Arc::new(GroupStatus::default()),
            breaker: None,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(pacer.run(stop.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        task.await.unwrap();
        controller.limit()
    }

    #[tokio::test]
    async fn a_group_that_starts_again_begins_at_the_estimate_it_last_wrote() {
        let fresh = || Arc::new(Controller::new(ConcurrencySettings::default()));
        let initial = ConcurrencySettings::default().initial;
        let ten_minutes = 10 * 60_000;
        assert_eq!(limit_after(fresh(), vec![left(ten_minutes, 48)]).await, 48);
        assert_eq!(
            limit_after(fresh(), vec![]).await,
            initial,
            "nothing remembered: the initial limit"
        );
        let week = crate::group::view::REMEMBERED_MAX_AGE_MS;
        assert_eq!(
            limit_after(fresh(), vec![left(week + 60_000, 48)]).await,
            initial,
            "forgotten after a week"
        );
        // A controller that has moved by itself has evidence of its own.
        let moved = fresh();
        moved.adopt(crate::backend::concurrency::Estimate {
            limit: 20,
            recover_to: 20,
            version: 1,
        });
        assert_eq!(limit_after(moved, vec![left(ten_minutes, 48)]).await, 20);
    }

    #[test]
    fn a_draining_worker_wants_only_its_calls_in_flight() {
        assert_eq!(Load::of(8, 40, false).demand, 48);
        assert_eq!(Load::of(8, 40, true).demand, 8);
        assert_eq!(Load::of(0, 40, true).demand, 0);
    }
}
