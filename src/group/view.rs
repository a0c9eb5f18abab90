//! What one worker knows of its group for one backend: the latest record of every live
//! member, and from them this worker's share and the newest estimate (and the last one
//! written, of any age, that a group starting again remembers). Pure: time is
//! passed in, records arrive through [`GroupView::observe`]. The one reading of the
//! records: the ingress's status page sees the group through it too
//! ([`GroupView::observer`]), so it shows the estimate the workers use.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::record::StateRecord;
use super::share::{GroupShare, Member};
use crate::backend::concurrency::Estimate;

/// A member not heard from for this long has left (or died): its share is free.
pub(crate) const MEMBER_TTL: Duration = Duration::from_secs(2);
/// A record written longer ago than this (by its writer's clock, so with room for clock
/// skew) describes no live member, whenever it is read (a compacted topic keeps the last
/// record of workers long gone).
pub(crate) const RECORD_MAX_AGE_MS: u64 = 10_000;
/// An estimate written longer ago than this is not adopted: the backend may have changed.
pub(crate) const ESTIMATE_MAX_AGE_MS: u64 = 60_000;
/// A group that starts again begins at its last estimate up to this old (a week: a
/// weekend's idle and a redeploy after it); older, the deployment has likely changed.
pub(crate) const REMEMBERED_MAX_AGE_MS: u64 = 7 * 24 * 3_600_000;

/// What a record read from the topic was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Observed {
    /// This worker's own record, `seq` as written: the topic works both ways.
    Own { seq: u64 },
    /// Another member's.
    Other,
    /// Another backend's, or too old to matter.
    Ignored,
}

#[derive(Debug)]
struct Seen {
    record: StateRecord,
    received: Instant,
}

/// See the module documentation. Lives as long as the worker.
#[derive(Debug)]
pub(crate) struct GroupView {
    backend: String,
    me: String,
    /// Other members' latest records, by worker id.
    members: HashMap<String, Seen>,
    /// The newest group estimate seen in any record (alive or not), with its writer's time.
    newest: Option<(Estimate, u64)>,
    /// The group estimate written last (by its writer's clock), whatever its age or
    /// version: versions start again with a group that started again.
    last_written: Option<(Estimate, u64)>,
}

impl GroupView {
    pub fn new(backend: &str, me: &str) -> Self {
        Self {
            backend: backend.to_string(),
            me: me.to_string(),
            members: HashMap::new(),
            newest: None,
            last_written: None,
        }
    }

    /// The group seen from outside it (the ingress): every record is another member's.
    pub(crate) fn observer(backend: &str) -> Self {
        Self::new(backend, "")
    }

    /// Takes a record read from the control topic at `now` (`now_ms` on the wall clock).
    pub(crate) fn observe(&mut self, record: StateRecord, now: Instant, now_ms: u64) -> Observed {
        if record.backend != self.backend {
            return Observed::Ignored;
        }
        let age_ms = now_ms.saturating_sub(record.at_ms);
        if record.grouped {
            let estimate = Estimate::from(record.estimate);
            let later = self.last_written.is_none_or(|(last, at_ms)| {
                record.at_ms > at_ms || (record.at_ms == at_ms && estimate.limit < last.limit)
            });
            if later {
                self.last_written = Some((estimate, record.at_ms));
            }
        }
        if record.grouped && age_ms <= ESTIMATE_MAX_AGE_MS {
            let estimate = Estimate::from(record.estimate);
            let newer = self.newest.is_none_or(|(newest, _)| {
                estimate.version > newest.version
                    || (estimate.version == newest.version && estimate.limit < newest.limit)
            });
            if newer {
                self.newest = Some((estimate, record.at_ms));
            }
        }
        if record.worker == self.me {
            return Observed::Own { seq: record.seq };
        }
        if record.leaving || age_ms > RECORD_MAX_AGE_MS {
            self.members.remove(&record.worker);
            return if record.leaving {
                Observed::Other
            } else {
                Observed::Ignored
            };
        }
        self.members.insert(
            record.worker.clone(),
            Seen {
                record,
                received: now,
            },
        );
        Observed::Other
    }

    /// Forgets members not heard from within [`MEMBER_TTL`].
    pub(crate) fn expire(&mut self, now: Instant) {
        self.members
            .retain(|_, seen| now.duration_since(seen.received) < MEMBER_TTL);
    }

    /// The latest record of every live member but this worker.
    pub fn others(&self) -> impl Iterator<Item = &StateRecord> {
        self.members.values().map(|seen| &seen.record)
    }

    /// Live members, this worker included.
    pub fn size(&self) -> usize {
        self.members.len() + 1
    }

    /// This worker's place in the group given its own `demand`, and `echo`, how long its
    /// records take to come back.
    pub fn share(&self, demand: usize, echo: Duration) -> GroupShare {
        let mut others: Vec<Member> = self
            .members
            .values()
            .map(|seen| Member {
                key: seen.record.worker.clone(),
                demand: seen.record.demand,
                held: seen.record.held(),
                in_flight: seen.record.in_flight,
            })
            .collect();
        others.sort_by(|a, b| a.key.cmp(&b.key));
        GroupShare {
            key: self.me.clone(),
            demand,
            others,
            echo,
        }
    }

    /// The newest group estimate seen, if recent enough to adopt.
    pub(crate) fn newest_estimate(&self, now_ms: u64) -> Option<Estimate> {
        self.newest
            .filter(|(_, at_ms)| now_ms.saturating_sub(*at_ms) <= ESTIMATE_MAX_AGE_MS)
            .map(|(estimate, _)| estimate)
    }

    /// The group estimate written last, up to [`REMEMBERED_MAX_AGE_MS`] old: where a group
    /// that starts again (no estimate recent enough to adopt) begins.
    pub(crate) fn remembered_estimate(&self, now_ms: u64) -> Option<Estimate> {
        self.last_written
            .filter(|(_, at_ms)| now_ms.saturating_sub(*at_ms) <= REMEMBERED_MAX_AGE_MS)
            .map(|(estimate, _)| estimate)
    }

    /// Members that pace on their own now, and what they hold (to rebuild a group
    /// estimate when the control topic comes back).
    pub(crate) fn held_by_others(&self) -> usize {
        self.members.values().map(|seen| seen.record.held()).sum()
    }

    /// Whether any live member paces with the group (its estimate is the group's).
    pub(crate) fn any_grouped(&self) -> bool {
        self.members.values().any(|seen| seen.record.grouped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::record::{EstimateRecord, VERSION};

    fn record(
        worker: &str,
        at_ms: u64,
        demand: usize,
        permits: usize,
        version: u64,
        limit: usize,
    ) -> StateRecord {
        StateRecord {
            v: VERSION,
            backend: "b".into(),
            worker: worker.into(),
            at_ms,
            seq: 1,
            demand,
            in_flight: 0,
            permits,
            estimate: EstimateRecord {
                limit,
                recover_to: limit,
                version,
            },
            grouped: true,
            leaving: false,
            breaker: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn members_come_and_go() {
        let mut view = GroupView::new("b", "me");
        let now = Instant::now();
        assert_eq!(
            view.observe(record("a", 1000, 5, 8, 1, 16), now, 1000),
            Observed::Other
        );
        assert_eq!(
            view.observe(record("me", 1000, 5, 8, 1, 16), now, 1000),
            Observed::Own { seq: 1 }
        );
        let mut other_backend = record("c", 1000, 5, 8, 1, 16);
        other_backend.backend = "elsewhere".into();
        assert_eq!(view.observe(other_backend, now, 1000), Observed::Ignored);
        assert_eq!(view.size(), 2);
        let share = view.share(100, Duration::ZERO);
        assert_eq!(share.others.len(), 1);
        assert_eq!(share.others[0].held, 8);
        view.expire(now + MEMBER_TTL);
        assert_eq!(view.size(), 1, "not heard from for the TTL");
        view.observe(record("a", 1000, 5, 8, 1, 16), now, 1000);
        let mut leaving = record("a", 1001, 0, 0, 1, 16);
        leaving.leaving = true;
        view.observe(leaving, now, 1001);
        assert_eq!(view.size(), 1, "a leaving record frees the share at once");
    }

    #[tokio::test(start_paused = true)]
    async fn old_records_describe_nobody_but_a_recent_estimate_is_kept() {
        let mut view = GroupView::new("b", "me");
        let now_ms = 100_000;
        let stale = record("gone", now_ms - RECORD_MAX_AGE_MS - 1, 50, 8, 9, 24);
        assert_eq!(
            view.observe(stale, Instant::now(), now_ms),
            Observed::Ignored
        );
        assert_eq!(view.size(), 1);
        assert_eq!(view.newest_estimate(now_ms).map(|e| e.limit), Some(24));
        assert_eq!(
            view.newest_estimate(now_ms + ESTIMATE_MAX_AGE_MS)
                .map(|e| e.limit),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_estimate_written_last_is_remembered_whatever_its_age_or_version() {
        let mut view = GroupView::new("b", "me");
        let now = Instant::now();
        let now_ms = 10 * 60_000;
        // A group gone for ten minutes: an old group's high version, then its last record.
        view.observe(record("old", 1_000, 0, 0, 40, 30), now, now_ms);
        view.observe(record("last", 2_000, 0, 0, 12, 48), now, now_ms);
        let mut solo = record("solo", 3_000, 0, 0, 50, 99);
        solo.grouped = false;
        view.observe(solo, now, now_ms);
        assert_eq!(view.newest_estimate(now_ms), None, "too old to adopt");
        let remembered = view.remembered_estimate(now_ms).expect("remembered");
        assert_eq!(
            (remembered.limit, remembered.version),
            (48, 12),
            "the last grouped record written, not the highest version"
        );
        assert_eq!(
            view.remembered_estimate(2_000 + REMEMBERED_MAX_AGE_MS + 1),
            None,
            "a week old: forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_newest_estimate_wins_and_of_equals_the_lowest() {
        let mut view = GroupView::new("b", "me");
        let now = Instant::now();
        view.observe(record("a", 1000, 5, 8, 3, 16), now, 1000);
        view.observe(record("b", 1000, 5, 8, 2, 10), now, 1000);
        assert_eq!(
            view.newest_estimate(1000).unwrap().limit,
            16,
            "version 3 beats 2"
        );
        view.observe(record("b", 1000, 5, 8, 3, 12), now, 1000);
        assert_eq!(
            view.newest_estimate(1000).unwrap().limit,
            12,
            "same version: the lower"
        );
        let mut solo = record("c", 1000, 5, 8, 9, 99);
        solo.grouped = false;
        view.observe(solo, now, 1000);
        assert_eq!(
            view.newest_estimate(1000).unwrap().limit,
            12,
            "a solo estimate is not the group's"
        );
    }
}
