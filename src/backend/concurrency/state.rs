//! The controller's state under its lock, and the one path every event takes through it:
//! the evidence records what happened, the policy decides, and the permits (and the
//! evidence's epochs) follow the limit wherever the policy moved it.

use std::time::Duration;

use tokio::time::Instant;

use super::evidence::{Evidence, Gauges, Verdict};
use super::peers::{Alone, Peers};
use super::permits::Permits;
use super::policy::Estimate;
use super::policy::Policy;
use super::stats::{ControllerStats, Tallies};
use super::ticket::CallTicket;
use super::ConcurrencySettings;
use crate::backend::BackendError;

/// See the module documentation. Created with the controller, lives as long as it.
#[derive(Debug)]
pub(super) struct State {
    pub(super) policy: Policy,
    evidence: Evidence,
    pub(super) permits: Permits,
    /// Who else paces this backend, and what that changes; `None` alone.
    peers: Option<Box<dyn Peers>>,
    tallies: Tallies,
}

impl State {
    pub(super) fn new(settings: ConcurrencySettings, now: Instant) -> Self {
        let policy = Policy::new(settings, now);
        Self {
            evidence: Evidence::new(policy.settings(), now),
            permits: Permits::new(policy.limit()),
            peers: None,
            tallies: Tallies::new(now),
            policy,
        }
    }

    fn peers(&self) -> &dyn Peers {
        self.peers.as_deref().unwrap_or(&Alone)
    }

    pub(super) fn in_flight(&self) -> usize {
        self.evidence.in_flight()
    }

    pub(super) fn estimate(&self) -> Estimate {
        self.policy.estimate()
    }

    /// A call is sent: returns its level (this worker's calls in flight, itself included,
    /// plus the peers' as reckoned), this worker's own calls in flight, and the epoch.
    pub(super) fn start(&mut self, now: Instant) -> (usize, usize, u64) {
        self.permits.release_due(now);
        let (own, epoch) = self
            .evidence
            .sent(self.permits.count(), self.permits.unreleased());
        let others = self.peers().others_in_flight(self.policy.limit(), own);
        (own + others, own, epoch)
    }

    /// A call succeeded after producing `tokens`.
    pub(super) fn succeeded(&mut self, ticket: &CallTicket, tokens: u64, now: Instant) {
        let rtt = ticket.rtt(now);
        self.evidence
            .succeeded(rtt, tokens, (ticket.level, ticket.own, ticket.epoch), now);
        let reckoned = self
            .peers()
            .calls_per_success(self.policy.limit(), self.permits.count());
        self.policy.count_success(reckoned);
        self.judge(now);
    }

    /// A call was refused (429, 503, timeout). Returns how long its permit stays out.
    pub(super) fn refused(
        &mut self,
        ticket: &CallTicket,
        error: &BackendError,
        now: Instant,
    ) -> Duration {
        let counts = &mut self.tallies.back_pressure;
        match error {
            BackendError::Status { status: 429, .. } => counts.too_many_requests += 1,
            BackendError::Timeout(_) => counts.timeouts += 1,
            _ => counts.unavailable += 1,
        }
        counts.with_retry_after += u64::from(error.retry_after().is_some());
        self.evidence.refused();
        let (limit, permits) = (self.policy.limit(), self.permits.count());
        let srtt = self.evidence.srtt();
        let peers = self.peers.as_deref().unwrap_or(&Alone);
        self.policy.on_refusal(
            (ticket.level, ticket.started),
            error.retry_after(),
            srtt,
            peers,
            now,
        );
        self.follow(limit, now);
        self.peers()
            .refusal_hold(srtt, ticket.rtt(now), self.permits.count() < permits)
    }

    /// After every finished call, whatever its outcome.
    pub(super) fn finished(&mut self, now: Instant) {
        self.permits.release_due(now);
        self.evidence.finished(self.permits.count(), now);
    }

    /// Judges the window of evidence once it is complete.
    fn judge(&mut self, now: Instant) {
        let Some(window) =
            self.evidence
                .close_window(now, self.policy.changed_at(), self.permits.unreleased())
        else {
            return;
        };
        tracing::trace!(
            samples = window.samples,
            reached = window.reached_limit,
            back_pressure = window.back_pressure,
            limit = self.policy.limit(),
            permits = self.permits.count(),
            in_flight = self.evidence.in_flight(),
            unreleased = self.permits.unreleased(),
            "adaptive concurrency: window"
        );
        if window.back_pressure {
            return;
        }
        let limit = self.policy.limit();
        let verdict = self
            .evidence
            .verdict(&window, limit, self.policy.steady(), now);
        let srtt = self.evidence.srtt();
        let peers = self.peers.as_deref().unwrap_or(&Alone);
        self.policy.on_window(verdict, srtt, peers, now);
        if let Verdict::Queueing { measured, .. } = verdict {
            self.evidence
                .queueing_cut(measured, limit, self.policy.limit());
        }
        self.follow(limit, now);
    }

    /// A reading of the backend's own gauges (`None`: there are none, or they are gone).
    pub(super) fn on_gauges(&mut self, gauges: Option<Gauges>, now: Instant) {
        self.evidence.set_gauges(gauges);
        if let Some(gauges) = gauges {
            let limit = self.policy.limit();
            self.policy.on_gauges(&gauges, now);
            self.follow(limit, now);
        }
    }

    /// Takes a peer's estimate if it is newer; returns whether it was taken.
    pub(super) fn adopt(&mut self, remote: Estimate, now: Instant) -> bool {
        let limit = self.policy.limit();
        let taken = self.policy.adopt(remote, now);
        self.follow(limit, now);
        taken
    }

    /// Takes the peers' estimate whatever its version.
    pub(super) fn rejoin(&mut self, estimate: Estimate, now: Instant) {
        let limit = self.policy.limit();
        self.policy.rejoin(estimate, now);
        self.follow(limit, now);
    }

    /// Paces with `peers` from now on (`None`: alone). Going alone keeps what this worker
    /// held of the peers' limit as its own, so no worker jumps to the whole of it.
    pub(super) fn set_peers(&mut self, peers: Option<Box<dyn Peers>>, now: Instant) {
        if peers.is_none() && self.peers.is_some() {
            let held = self.permits.count().max(self.evidence.in_flight());
            let own = held.max(self.policy.settings().min);
            self.peers = None;
            let limit = self.policy.limit();
            self.policy.go_alone(own, now);
            self.follow(limit, now);
        }
        self.peers = peers;
        self.resize(false, now);
    }

    /// How long until the next permit of a paced increase is due, if one is owed and is
    /// to be handed out on time (see [`Peers::paces_climbs_on_time`]): only for a climb to
    /// a level known (or not yet known not) to be good. A probe's step comes out as calls
    /// start and finish, which under a steady load is about as soon, and against a rate
    /// limiter's edge a little more gently.
    pub(super) fn next_release(&self, now: Instant) -> Option<Duration> {
        if !self.policy.at_or_below_good() || !self.peers().paces_climbs_on_time() {
            return None;
        }
        self.permits.next_due(now)
    }

    pub(super) fn stats(&mut self, now: Instant) -> ControllerStats {
        let limit = self.policy.limit();
        let (limit_seconds, elapsed, mean_limit) = self.tallies.integral(limit, now);
        let (probes, failed_probes) = self.policy.probe_counts();
        ControllerStats {
            limit,
            permits: self.permits.count(),
            version: self.policy.version(),
            in_flight: self.evidence.in_flight(),
            mean_limit,
            limit_seconds,
            elapsed,
            back_pressure: self.tallies.back_pressure,
            probes,
            failed_probes,
        }
    }

    /// The permits follow the limit, which was `limit` before the policy acted: an
    /// increase paced over a round trip, a decrease at once.
    fn follow(&mut self, limit: usize, now: Instant) {
        let new = self.policy.limit();
        if new == limit {
            return;
        }
        self.tallies.account(limit, now);
        self.evidence.limit_moved(new > limit, now);
        self.resize(true, now);
    }

    /// Brings the permits to this worker's part of the limit: paced over a round trip
    /// when `paced` (the limit rose), at once otherwise (a peer gave up its share).
    fn resize(&mut self, paced: bool, now: Instant) {
        let target = self.peers().permits(self.policy.limit());
        let over = paced.then(|| self.evidence.srtt());
        self.permits.resize(target, over, now);
    }
}
