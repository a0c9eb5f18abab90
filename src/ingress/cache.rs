//! The ingress's result cache: request id -> queued or final reply, bounded in size and
//! evicting by age (TTL) and then oldest-first. The first final reply for an id wins;
//! later ones (a worker crash re-delivered the request) are counted, not surfaced.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::envelope::Reply;

/// What the ingress knows about one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// Accepted into Kafka, no final reply seen yet.
    Queued,
    /// The first final reply for this id.
    Final(Arc<Reply>),
}

/// Whether a final reply was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    First,
    Duplicate,
}

#[derive(Debug)]
struct Slot {
    entry: Entry,
    /// Insertion sequence number; matches the `order` record that may evict it.
    seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<String, Slot>,
    /// Insertion order for eviction: (seq, id, inserted). Records whose seq no longer
    /// matches the slot are stale and skipped.
    order: VecDeque<(u64, String, Instant)>,
    next_seq: u64,
}

/// Bounded, TTL-evicting map of request outcomes shared by routes and the reply reader.
#[derive(Debug)]
pub struct ReplyCache {
    inner: Mutex<Inner>,
    ttl: Duration,
    capacity: usize,
}

impl ReplyCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// Remembers an accepted request unless its id is already known.
    pub fn mark_queued(&self, id: &str) {
        let mut inner = self.lock();
        if !inner.slots.contains_key(id) {
            insert(&mut inner, id, Entry::Queued);
        }
        self.evict(&mut inner, Instant::now());
    }

    /// Records a final reply; the first one for an id wins.
    pub fn record_final(&self, reply: Reply) -> Recorded {
        let mut inner = self.lock();
        let recorded = match inner.slots.get_mut(&reply.id) {
            Some(Slot {
                entry: Entry::Final(_),
                ..
            }) => Recorded::Duplicate,
            Some(slot) => {
                slot.entry = Entry::Final(Arc::new(reply));
                Recorded::First
            }
            None => {
                let id = reply.id.clone();
                insert(&mut inner, &id, Entry::Final(Arc::new(reply)));
                Recorded::First
            }
        };
        self.evict(&mut inner, Instant::now());
        recorded
    }

    /// What is known about `id`, if it has not been evicted.
    pub fn get(&self, id: &str) -> Option<Entry> {
        let mut inner = self.lock();
        self.evict(&mut inner, Instant::now());
        inner.slots.get(id).map(|slot| slot.entry.clone())
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("reply cache lock is never poisoned: no code panics while holding it")
    }

    /// Drops entries older than the TTL, then the oldest while over capacity.
    fn evict(&self, inner: &mut Inner, now: Instant) {
        while let Some((seq, id, inserted)) = inner.order.front().cloned() {
            let live = inner.slots.get(&id).is_some_and(|slot| slot.seq == seq);
            let expired = now.duration_since(inserted) >= self.ttl;
            if live && !expired && inner.slots.len() <= self.capacity {
                break;
            }
            inner.order.pop_front();
            if live {
                inner.slots.remove(&id);
            }
        }
    }
}

fn insert(inner: &mut Inner, id: &str, entry: Entry) {
    inner.next_seq += 1;
    let seq = inner.next_seq;
    inner.slots.insert(id.to_string(), Slot { entry, seq });
    inner.order.push_back((seq, id.to_string(), Instant::now()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Status, Timing};

    fn reply(id: &str, status: Status) -> Reply {
        Reply {
            v: 1,
            id: id.into(),
            status,
            attempts: 1,
            body: None,
            error: None,
            usage: None,
            timing: Timing::default(),
            metadata: None,
        }
    }

    #[test]
    fn queued_then_final_then_duplicate() {
        let cache = ReplyCache::new(Duration::from_secs(60), 10);
        assert_eq!(cache.get("a"), None);
        cache.mark_queued("a");
        assert_eq!(cache.get("a"), Some(Entry::Queued));
        assert_eq!(cache.record_final(reply("a", Status::Ok)), Recorded::First);
        assert_eq!(
            cache.record_final(reply("a", Status::Error)),
            Recorded::Duplicate
        );
        match cache.get("a") {
            Some(Entry::Final(r)) => assert_eq!(r.status, Status::Ok, "first reply wins"),
            other => panic!("expected final, got {other:?}"),
        }
        cache.mark_queued("a");
        assert!(
            matches!(cache.get("a"), Some(Entry::Final(_))),
            "queued never overwrites final"
        );
    }

    #[test]
    fn reply_for_unseen_id_is_kept() {
        let cache = ReplyCache::new(Duration::from_secs(60), 10);
        assert_eq!(
            cache.record_final(reply("other-instance", Status::Expired)),
            Recorded::First
        );
        assert!(matches!(cache.get("other-instance"), Some(Entry::Final(_))));
    }

    #[test]
    fn capacity_evicts_oldest_first() {
        let cache = ReplyCache::new(Duration::from_secs(60), 3);
        for id in ["a", "b", "c", "d"] {
            cache.mark_queued(id);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get("d"), Some(Entry::Queued));
    }

    #[test]
    fn ttl_evicts_old_entries() {
        let cache = ReplyCache::new(Duration::from_millis(30), 100);
        cache.mark_queued("old");
        std::thread::sleep(Duration::from_millis(40));
        cache.mark_queued("new");
        assert_eq!(cache.get("old"), None);
        assert_eq!(cache.get("new"), Some(Entry::Queued));
        assert_eq!(cache.len(), 1);
    }
}
