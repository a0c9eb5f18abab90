//! The intake's bookkeeping, under its one lock: each pool's buffer and pace, which
//! topics are paused, which pools overflow; and the rules read from it: when a request
//! belongs in its pool's overflow topic, when a lane stops and resumes, how long a request
//! entering a pool would wait.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::Taken;
use crate::routing::PoolKey;
use crate::worker::fallback::{self, Pace};
use crate::worker::overflow::Overflow;
use crate::worker::scheduler::Scheduler;

pub(super) struct State {
    /// Each pool's buffer.
    pub(super) pools: BTreeMap<PoolKey, Pool>,
    /// The lane and overflow topics paused now.
    pub(super) paused: HashSet<String>,
    /// Pools that forwarded since their buffer was last empty: their requests keep going
    /// to the overflow topic, behind the ones already there, rather than overtake them.
    pub(super) overflowing: HashSet<PoolKey>,
}

/// The messages waiting for one pool of backends.
pub(super) struct Pool {
    pub(super) scheduler: Scheduler<Taken>,
    /// Signalled when an entry is pushed or a key finishes.
    pub(super) changed: Arc<Notify>,
    /// How fast its requests have been ending, for their expected wait.
    pub(super) pace: Pace,
    /// Its requests taken from the buffer and not ended: calling, or waiting to retry.
    pub(super) started: usize,
    /// Its requests this worker forwarded to its overflow topic, less those it read back
    /// (the others' forwards and reads even out over the group).
    pub(super) in_overflow: usize,
}

impl State {
    /// Entries buffered in `lane`, over every pool.
    pub(super) fn buffered(&self, lane: usize) -> usize {
        self.pools
            .values()
            .map(|p| p.scheduler.buffered(lane))
            .sum()
    }

    /// Entries of `pool` buffered in `lane`.
    pub(super) fn in_pool(&self, pool: &[usize], lane: usize) -> usize {
        self.pools
            .get(pool)
            .map_or(0, |p| p.scheduler.buffered(lane))
    }

    /// Entries of `pool` buffered, over every lane.
    pub(super) fn pool_total(&self, pool: &[usize]) -> usize {
        self.pools.get(pool).map_or(0, |p| p.scheduler.len())
    }

    /// How long a request entering `pool` now would wait for its turn: what is ahead of
    /// it (buffered, started but not ended as retries wait too, and in its overflow topic)
    /// over the pool's recent pace (`None` when not known yet).
    pub(super) fn expected_wait(
        &self,
        pool: &[usize],
        now: std::time::Instant,
    ) -> Option<Duration> {
        let Some(entry) = self.pools.get(pool) else {
            return Some(Duration::ZERO);
        };
        let ahead = entry.scheduler.len() + entry.started + entry.in_overflow;
        fallback::expected_wait(ahead, entry.pace.per_second(now))
    }

    /// Whether a request of `pool` in `lane` belongs in the pool's overflow topic: the pool
    /// has one and is at `bound` there (or forwarded since its buffer was last empty), and
    /// another pool waits for the lane (it has room there and is not overflowing itself:
    /// its room fills from its own topic).
    pub(super) fn overflows(
        &self,
        overflow: &Overflow,
        bound: usize,
        pool: &[usize],
        lane: usize,
    ) -> bool {
        let full = self.in_pool(pool, lane) >= bound || self.overflowing.contains(pool);
        let waiting_elsewhere = overflow.pools().any(|other| {
            other.as_slice() != pool
                && self.in_pool(other, lane) < bound
                && !self.overflowing.contains(other)
        });
        overflow.topic_of(pool).is_some() && full && waiting_elsewhere
    }

    /// Whether `lane` holds `limit` entries in the sense that stops it: what overflow
    /// cannot take (entries beyond each overflow pool's bound, and every other pool's)
    /// reaches `limit`, or no overflow pool has fewer than `limit`. Without overflow
    /// topics: the lane's entries reach `limit`.
    pub(super) fn lane_at(
        &self,
        overflow: &Overflow,
        bound: usize,
        lane: usize,
        limit: usize,
    ) -> bool {
        let within: usize = overflow
            .pools()
            .map(|pool| self.in_pool(pool, lane).min(bound))
            .sum();
        let beyond = self.buffered(lane) - within;
        let no_room = !overflow.is_empty()
            && overflow
                .pools()
                .all(|pool| self.in_pool(pool, lane) >= limit);
        beyond >= limit || no_room
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::DecodeError;
    use crate::worker::intake::Taken;
    use crate::worker::scheduler::Entry;
    use rdkafka::message::OwnedMessage;

    const BOUND: usize = 4;

    /// Buffers holding `counts` (pool, lane, entries), `overflowing` pools marked so.
    fn state(counts: &[(&[usize], usize, usize)], overflowing: &[&[usize]]) -> State {
        let mut pools: BTreeMap<PoolKey, Pool> = BTreeMap::new();
        for &(pool, lane, n) in counts {
            let entry = pools.entry(pool.to_vec()).or_insert_with(|| Pool {
                scheduler: Scheduler::new(2, 0.0),
                changed: Arc::new(Notify::new()),
                pace: Pace::default(),
                started: 0,
                in_overflow: 0,
            });
            for _ in 0..n {
                entry.scheduler.push(Entry {
                    lane,
                    ordering_key: None,
                    tenant: None,
                    item: empty_taken(),
                });
            }
        }
        State {
            pools,
            paused: HashSet::new(),
            overflowing: overflowing.iter().map(|p| p.to_vec()).collect(),
        }
    }

    fn empty_taken() -> Taken {
        let message = OwnedMessage::new(
            None,
            None,
            "t".into(),
            rdkafka::Timestamp::NotAvailable,
            0,
            0,
            None,
        );
        Taken {
            message,
            request: Err(DecodeError::Empty),
            ticket: crate::kafka::offsets::OffsetTracker::new().begin("t", 0, 0),
            route: None,
        }
    }

    fn two_pools() -> Overflow {
        Overflow::new(
            vec![(vec![0], "t.pool.a".into()), (vec![1], "t.pool.b".into())],
            1 << 20,
        )
    }

    #[test]
    fn without_overflow_topics_a_lane_stops_at_its_bound_as_before() {
        let none = Overflow::default();
        let s = state(&[(&[0], 0, 3), (&[1], 0, 1)], &[]);
        assert!(s.lane_at(&none, BOUND, 0, BOUND), "4 over both pools");
        assert!(!s.lane_at(&none, BOUND, 1, BOUND));
        assert!(
            !s.overflows(&none, BOUND, &[0], 0),
            "no topic to forward to"
        );
    }

    #[test]
    fn a_full_pool_overflows_while_another_waits_and_the_lane_goes_on() {
        let overflow = two_pools();
        let s = state(&[(&[0], 0, BOUND)], &[]);
        assert!(s.overflows(&overflow, BOUND, &[0], 0));
        assert!(!s.overflows(&overflow, BOUND, &[1], 0), "b has room");
        assert!(!s.lane_at(&overflow, BOUND, 0, BOUND), "b still has room");
        // Once a has forwarded, its next requests follow to its topic even with room.
        let s = state(&[(&[0], 0, 1)], &[&[0]]);
        assert!(s.overflows(&overflow, BOUND, &[0], 0));
    }

    #[test]
    fn no_pool_overflows_into_one_that_fills_from_its_own_topic_or_is_full() {
        let overflow = two_pools();
        let s = state(&[(&[0], 0, BOUND), (&[1], 0, 1)], &[&[1]]);
        assert!(!s.overflows(&overflow, BOUND, &[0], 0), "b is overflowing");
        let s = state(&[(&[0], 0, BOUND), (&[1], 0, BOUND)], &[]);
        assert!(!s.overflows(&overflow, BOUND, &[0], 0));
        assert!(
            s.lane_at(&overflow, BOUND, 0, BOUND),
            "no pool has room: the lane stops"
        );
        // Resumes below half: both pools at 2 of 4 are not "at 3".
        let s = state(&[(&[0], 0, 2), (&[1], 0, 2)], &[]);
        assert!(!s.lane_at(&overflow, BOUND, 0, BOUND / 2 + 1));
    }

    #[test]
    fn what_cannot_overflow_still_stops_the_lane_at_its_bound() {
        let overflow = two_pools();
        // a holds 4 beyond its bound (keyed requests), and a third pool without a topic 1.
        let s = state(
            &[(&[0], 0, 2 * BOUND - 1), (&[0, 1], 0, 1), (&[1], 0, 0)],
            &[],
        );
        assert!(
            s.lane_at(&overflow, BOUND, 0, BOUND),
            "3 beyond a's bound + 1"
        );
        let s = state(&[(&[0], 0, BOUND + 2), (&[0, 1], 0, 1)], &[]);
        assert!(!s.lane_at(&overflow, BOUND, 0, BOUND));
    }
}
