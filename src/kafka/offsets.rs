//! Contiguous-prefix offset tracking. A worker processes many messages of one partition
//! at once and they finish out of order; only the offset below which *everything* is
//! done may be committed, so a crash re-delivers exactly the unfinished rest.
//!
//! Kafka offsets need not be contiguous (compaction, transaction markers), so the
//! committable position is "the lowest offset still pending", never "last + 1".

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// Identifies one message taken from a partition during one assignment of it.
/// A ticket from before a rebalance cannot complete work of the next assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    generation: u64,
}

/// Per-partition state; dropped when the partition is revoked.
#[derive(Debug)]
struct PartitionState {
    /// Assignment generation this state belongs to.
    generation: u64,
    /// Offsets taken but not yet finished.
    pending: BTreeSet<i64>,
    /// Highest offset taken so far in this assignment.
    highest_taken: i64,
    /// Last position returned as committable (next offset to consume).
    committed: i64,
}

/// Tracks in-flight offsets of every assigned partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<(String, i32), PartitionState>,
    /// Source of generations; increases on every new partition state.
    next_generation: u64,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` was taken for processing.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) -> Ticket {
        let key = (topic.to_string(), partition);
        let next_generation = &mut self.next_generation;
        let state = self.partitions.entry(key).or_insert_with(|| {
            *next_generation += 1;
            PartitionState {
                generation: *next_generation,
                pending: BTreeSet::new(),
                highest_taken: offset,
                // Nothing below the first offset taken is ours to commit.
                committed: offset,
            }
        });
        state.pending.insert(offset);
        state.highest_taken = state.highest_taken.max(offset);
        Ticket {
            topic: topic.to_string(),
            partition,
            offset,
            generation: state.generation,
        }
    }

    /// Records that the ticket's message is fully handled (its output delivered).
    /// Returns the new committable position (the next offset to consume) when it
    /// advanced, `None` when it did not or the partition was revoked meanwhile.
    pub fn complete(&mut self, ticket: &Ticket) -> Option<i64> {
        let state = self
            .partitions
            .get_mut(&(ticket.topic.clone(), ticket.partition))?;
        if state.generation != ticket.generation || !state.pending.remove(&ticket.offset) {
            return None;
        }
        let position = state
            .pending
            .first()
            .copied()
            .unwrap_or(state.highest_taken + 1);
        if position <= state.committed {
            return None;
        }
        state.committed = position;
        Some(position)
    }

    /// Whether the ticket still belongs to the current assignment of its partition
    /// (false once the partition was revoked, even if it was assigned again since).
    pub(crate) fn is_current(&self, ticket: &Ticket) -> bool {
        self.partitions
            .get(&(ticket.topic.clone(), ticket.partition))
            .is_some_and(|s| {
                s.generation == ticket.generation && s.pending.contains(&ticket.offset)
            })
    }

    /// Forgets a revoked partition: its in-flight work may finish but commits nothing.
    pub(crate) fn revoke(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_string(), partition));
    }

    /// The first offset of the partition not yet done in this assignment: the lowest still
    /// pending, else the one after the highest taken; `None` before anything was taken.
    pub(crate) fn first_not_done(&self, topic: &str, partition: i32) -> Option<i64> {
        let state = self.partitions.get(&(topic.to_string(), partition))?;
        Some(
            state
                .pending
                .first()
                .copied()
                .unwrap_or(state.highest_taken + 1),
        )
    }

    /// Messages taken and not yet completed, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.pending.len()).sum()
    }
}

/// Completes `ticket` in the shared `tracker` and, when its partition's committable
/// position advanced, hands the position to `store` before the lock is released.
///
/// Message tasks finish concurrently. Were the position stored after the lock is
/// released, one computed earlier could be stored after a later one and move the
/// partition's next commit back: the messages in between, answered already, would be
/// re-delivered after a graceful stop.
///
/// `store` runs under the lock the consumer's rebalance callback also takes, so it must
/// not wait on anything: librdkafka's `store_offsets` only records the offset locally.
pub(crate) fn complete_and_store(
    tracker: &Mutex<OffsetTracker>,
    ticket: &Ticket,
    store: impl FnOnce(i64),
) {
    let mut tracker = tracker
        .lock()
        .expect("offset tracker lock is never poisoned");
    if let Some(position) = tracker.complete(ticket) {
        store(position);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_not_done_is_the_lowest_pending_or_after_the_highest_taken() {
        let mut t = OffsetTracker::new();
        assert_eq!(t.first_not_done("r", 0), None);
        let a = t.begin("r", 0, 10);
        let b = t.begin("r", 0, 11);
        assert_eq!(t.first_not_done("r", 0), Some(10));
        t.complete(&b);
        assert_eq!(t.first_not_done("r", 0), Some(10));
        t.complete(&a);
        assert_eq!(t.first_not_done("r", 0), Some(12));
    }

    #[test]
    fn in_order_completion_advances_one_by_one() {
        let mut t = OffsetTracker::new();
        let a = t.begin("r", 0, 10);
        let b = t.begin("r", 0, 11);
        assert_eq!(t.complete(&a), Some(11));
        assert_eq!(t.complete(&b), Some(12));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn out_of_order_completion_waits_for_the_gap() {
        let mut t = OffsetTracker::new();
        let tickets: Vec<_> = (0..5).map(|o| t.begin("r", 0, o)).collect();
        assert_eq!(t.complete(&tickets[3]), None);
        assert_eq!(t.complete(&tickets[1]), None);
        assert_eq!(t.complete(&tickets[4]), None);
        assert_eq!(t.complete(&tickets[0]), Some(2), "0 and 1 done, 2 pending");
        assert_eq!(t.complete(&tickets[2]), Some(5), "everything done");
    }

    #[test]
    fn offset_gaps_in_the_log_do_not_block_commits() {
        let mut t = OffsetTracker::new();
        let a = t.begin("r", 0, 100);
        let b = t.begin("r", 0, 105); // 101..104 were transaction markers
        assert_eq!(t.complete(&b), None);
        assert_eq!(t.complete(&a), Some(106));
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::new();
        let p0 = t.begin("r", 0, 5);
        let p1 = t.begin("r", 1, 7);
        let q0 = t.begin("other", 0, 1);
        assert_eq!(t.complete(&p1), Some(8));
        assert_eq!(t.complete(&q0), Some(2));
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.complete(&p0), Some(6));
    }

    #[test]
    fn revoked_partition_commits_nothing_even_when_reassigned() {
        let mut t = OffsetTracker::new();
        let old = t.begin("r", 0, 3);
        t.revoke("r", 0);
        assert_eq!(t.in_flight(), 0);
        // Reassigned: the same offset is delivered again and taken anew.
        let new = t.begin("r", 0, 3);
        assert_eq!(
            t.complete(&old),
            None,
            "stale ticket must not complete new work"
        );
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.complete(&new), Some(4));
    }

    #[test]
    fn completing_twice_or_unknown_is_ignored() {
        let mut t = OffsetTracker::new();
        let a = t.begin("r", 0, 0);
        assert_eq!(t.complete(&a), Some(1));
        assert_eq!(t.complete(&a), None);
        let mut other = OffsetTracker::new();
        assert_eq!(other.complete(&a), None);
    }

    #[test]
    fn positions_are_stored_in_the_order_they_advance_when_tasks_finish_at_once() {
        // Four tasks finish a partition's messages concurrently; a store of uneven length
        // widens the window between computing a position and storing it.
        let tracker = Mutex::new(OffsetTracker::new());
        let tickets: Vec<Ticket> = {
            let mut t = tracker.lock().unwrap();
            (0..800).map(|o| t.begin("r", 0, o)).collect()
        };
        let stored = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for task in 0..4 {
                let (tracker, tickets, stored) = (&tracker, &tickets, &stored);
                scope.spawn(move || {
                    for ticket in tickets.iter().skip(task).step_by(4) {
                        complete_and_store(tracker, ticket, |position| {
                            std::thread::sleep(std::time::Duration::from_micros(
                                10 + 30 * (position % 3) as u64,
                            ));
                            stored.lock().unwrap().push(position);
                        });
                    }
                });
            }
        });
        let stored = stored.into_inner().unwrap();
        assert_eq!(
            stored.last(),
            Some(&800),
            "the last position stored is the end"
        );
        let backwards = stored.windows(2).filter(|w| w[1] < w[0]).count();
        assert_eq!(backwards, 0, "a stored position went back: {stored:?}");
    }
}
