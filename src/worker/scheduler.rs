//! Which buffered message runs next: priority lanes (higher first, each lower lane keeps
//! a minimum share so it never starves), tenants in weighted turns within a lane
//! ([`fair`]), and ordering keys (messages sharing a key run one after another, in
//! arrival order; others run concurrently).
//!
//! Pure data structure: the pull loop pushes what Kafka delivered and pops what may start.

pub(crate) mod fair;

use std::collections::{HashMap, HashSet, VecDeque};

use fair::{FairQueue, TenantKey, Weights};

/// One buffered item and what scheduling needs to know about it.
#[derive(Debug)]
pub struct Entry<T> {
    /// Index into the lanes, 0 = highest priority.
    pub lane: usize,
    /// Same key => one at a time, in order.
    pub ordering_key: Option<String>,
    /// Tenants take turns within a lane.
    pub tenant: TenantKey,
    pub item: T,
}

/// Priority lanes plus ordering-key gating.
#[derive(Debug)]
pub struct Scheduler<T> {
    /// Per lane, entries that may be dispatchable (FIFO per tenant), each with whether
    /// it was promoted from `blocked` (it is then the next of its key and may start).
    lanes: Vec<FairQueue<(Entry<T>, bool)>>,
    /// Entries waiting for an earlier entry with the same key to finish, per key in order.
    blocked: HashMap<String, VecDeque<Entry<T>>>,
    /// Keys with an entry running now.
    running_keys: HashSet<String>,
    /// Buffered entries per lane (queued + blocked), for back-pressure on Kafka.
    buffered: Vec<usize>,
    /// Dispatch credit of each lane: grows by `min_share` whenever a higher lane is served
    /// while this lane waits; at 1 this lane is served next.
    credit: Vec<f64>,
    min_share: f64,
}

impl<T> Scheduler<T> {
    /// `lanes` lanes, highest priority first; `min_share` in [0, 1]; every tenant of
    /// weight 1.
    pub fn new(lanes: usize, min_share: f64) -> Self {
        Self::with_weights(lanes, min_share, Weights::default())
    }

    /// Like [`Scheduler::new`], tenants weighted by `weights`.
    pub fn with_weights(lanes: usize, min_share: f64, weights: Weights) -> Self {
        let lanes = lanes.max(1);
        Self {
            lanes: (0..lanes)
                .map(|_| FairQueue::new(weights.clone()))
                .collect(),
            blocked: HashMap::new(),
            running_keys: HashSet::new(),
            buffered: vec![0; lanes],
            credit: vec![0.0; lanes],
            min_share: min_share.clamp(0.0, 1.0),
        }
    }

    pub fn push(&mut self, entry: Entry<T>) {
        let lane = entry.lane.min(self.lanes.len() - 1);
        self.buffered[lane] += 1;
        let tenant = entry.tenant.clone();
        self.lanes[lane].push_back(tenant, (Entry { lane, ..entry }, false));
    }

    /// Entries buffered in `lane` (waiting to start, blocked ones included).
    pub fn buffered(&self, lane: usize) -> usize {
        self.buffered.get(lane).copied().unwrap_or(0)
    }

    /// All entries waiting to start.
    pub fn len(&self) -> usize {
        self.buffered.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next entry allowed to start, if any. Its key (if any) counts as running until
    /// [`Scheduler::finished`].
    pub fn pop(&mut self) -> Option<Entry<T>> {
        let candidates = self.lanes_with_work();
        let lane = candidates
            .iter()
            .rev()
            .find(|&&lane| self.credit[lane] >= 1.0)
            .or_else(|| candidates.first())
            .copied()?;
        let entry = self.pop_from(lane)?;
        if self.credit[lane] >= 1.0 {
            self.credit[lane] -= 1.0;
        }
        for &waiting in candidates.iter().filter(|&&l| l > lane) {
            self.credit[waiting] += self.min_share;
        }
        Some(entry)
    }

    /// Marks the entry with `key` finished, letting the next one with that key start.
    pub fn finished(&mut self, key: Option<&str>) {
        let Some(key) = key else { return };
        self.running_keys.remove(key);
        if let Some(queue) = self.blocked.get_mut(key) {
            if let Some(next) = queue.pop_front() {
                let (lane, tenant) = (next.lane, next.tenant.clone());
                // It was behind the finished one, so it goes first among its tenant's.
                self.lanes[lane].push_front(tenant, (next, true));
            }
            if queue.is_empty() {
                self.blocked.remove(key);
            }
        }
    }

    /// Lanes whose queue is not empty, highest priority first. (Entries may still turn
    /// out blocked by their key when popped.)
    fn lanes_with_work(&self) -> Vec<usize> {
        (0..self.lanes.len())
            .filter(|&l| !self.lanes[l].is_empty())
            .collect()
    }

    /// Pops the first entry of `lane` whose key is free, parking blocked ones; falls
    /// through to other lanes when this one holds only blocked entries.
    fn pop_from(&mut self, lane: usize) -> Option<Entry<T>> {
        let order: Vec<usize> = std::iter::once(lane).chain(0..self.lanes.len()).collect();
        for l in order {
            while let Some((entry, promoted)) = self.lanes[l].pop() {
                let blocked = entry.ordering_key.as_ref().is_some_and(|key| {
                    !promoted && (self.running_keys.contains(key) || self.blocked.contains_key(key))
                });
                if blocked {
                    let key = entry
                        .ordering_key
                        .clone()
                        .expect("only keyed entries are blocked");
                    self.blocked.entry(key).or_default().push_back(entry);
                    continue;
                }
                if let Some(key) = &entry.ordering_key {
                    self.running_keys.insert(key.clone());
                }
                self.buffered[l] -= 1;
                return Some(entry);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(lane: usize, key: Option<&str>, item: u32) -> Entry<u32> {
        Entry {
            lane,
            ordering_key: key.map(str::to_string),
            tenant: None,
            item,
        }
    }

    #[test]
    fn tenants_take_turns_within_a_lane_and_lanes_still_rank() {
        let mut s = Scheduler::new(2, 0.0);
        let with = |lane, tenant: &str, item| Entry {
            tenant: Some(tenant.into()),
            ..entry(lane, None, item)
        };
        for i in 0..5 {
            s.push(with(1, "burst", i));
        }
        s.push(with(1, "trickle", 100));
        s.push(with(0, "burst", 50));
        assert_eq!(drain(&mut s), vec![50, 0, 100, 1, 2, 3, 4]);
    }

    fn drain(s: &mut Scheduler<u32>) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some(e) = s.pop() {
            s.finished(e.ordering_key.as_deref());
            out.push(e.item);
        }
        out
    }

    #[test]
    fn higher_lanes_first_fifo_within_a_lane() {
        let mut s = Scheduler::new(2, 0.0);
        for (lane, item) in [(1, 10), (0, 1), (1, 11), (0, 2)] {
            s.push(entry(lane, None, item));
        }
        assert_eq!(s.buffered(1), 2);
        assert_eq!(drain(&mut s), vec![1, 2, 10, 11]);
        assert!(s.is_empty());
    }

    #[test]
    fn lower_lane_keeps_its_minimum_share() {
        let mut s = Scheduler::new(2, 0.25);
        for i in 0..100 {
            s.push(entry(0, None, i));
        }
        for i in 1000..1100 {
            s.push(entry(1, None, i));
        }
        let first_50: Vec<u32> = (0..50).map(|_| s.pop().unwrap().item).collect();
        let low = first_50.iter().filter(|&&i| i >= 1000).count();
        // One in five dispatches (0.25 credit per higher dispatch) goes to the low lane.
        assert!((8..=12).contains(&low), "low lane got {low} of 50");
    }

    #[test]
    fn without_a_share_a_busy_high_lane_starves_the_low_one() {
        let mut s = Scheduler::new(2, 0.0);
        for i in 0..10 {
            s.push(entry(0, None, i));
            s.push(entry(1, None, 100 + i));
        }
        let first: Vec<u32> = (0..10).map(|_| s.pop().unwrap().item).collect();
        assert!(first.iter().all(|&i| i < 100), "{first:?}");
    }

    #[test]
    fn same_key_runs_one_at_a_time_in_order() {
        let mut s = Scheduler::new(1, 0.0);
        for (key, item) in [("a", 1), ("a", 2), ("b", 3), ("a", 4), ("c", 5)] {
            s.push(entry(0, Some(key), item));
        }
        let first = s.pop().unwrap();
        assert_eq!(first.item, 1);
        // "a" is running: the others without that key may start.
        assert_eq!(s.pop().unwrap().item, 3);
        assert_eq!(s.pop().unwrap().item, 5);
        assert!(s.pop().is_none(), "2 and 4 wait for 1");
        assert_eq!(s.len(), 2);
        s.finished(Some("a"));
        let second = s.pop().unwrap();
        assert_eq!(second.item, 2);
        assert!(s.pop().is_none(), "4 waits for 2");
        s.finished(Some("a"));
        assert_eq!(s.pop().unwrap().item, 4);
        s.finished(Some("b"));
        s.finished(Some("c"));
        s.finished(Some("a"));
        assert!(s.is_empty());
    }

    #[test]
    fn a_blocked_lane_does_not_stall_others() {
        let mut s = Scheduler::new(2, 0.0);
        s.push(entry(0, Some("k"), 1));
        s.push(entry(0, Some("k"), 2));
        s.push(entry(1, None, 3));
        assert_eq!(s.pop().unwrap().item, 1);
        assert_eq!(
            s.pop().unwrap().item,
            3,
            "lane 0 holds only a blocked entry"
        );
        assert!(s.pop().is_none());
    }
}
