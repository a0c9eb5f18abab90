//! The ingress's result cache: request id -> queued or final reply, bounded in size and
//! evicting by age (TTL) and then oldest-first. The first final reply for an id wins;
//! later ones (a worker crash re-delivered the request) are counted, not surfaced. An id
//! this instance accepted also keeps its submission's fingerprint, so a repeat can be told
//! from a different request reusing the id.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::envelope::Reply;

/// What the ingress knows about one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// Accepted into Kafka, no final reply seen yet.
    Queued,
    /// Accepted into Kafka with `reply_to` naming a topic this ingress does not read: its
    /// reply is never seen here.
    Elsewhere(Arc<str>),
    /// The first final reply for this id.
    Final(Arc<Reply>),
}

/// Whether a final reply was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    First,
    Duplicate,
}

/// A submission's identity for idempotency: a hash of its canonical form (everything but
/// the id, as parsed: key order and whitespace do not count).
pub(crate) type Fingerprint = u64;

/// What is known about one id: see [`ReplyCache::lookup`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Known {
    pub entry: Entry,
    /// Set for ids accepted by this instance; `None` for replies of requests it did not take.
    pub fingerprint: Option<Fingerprint>,
    /// The request's tenant, when it had one.
    pub tenant: Option<Arc<str>>,
}

#[derive(Debug)]
struct Slot {
    entry: Entry,
    /// Set for ids accepted by this instance; `None` for replies of requests it did not take.
    fingerprint: Option<Fingerprint>,
    tenant: Option<Arc<str>>,
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

    /// Remembers an accepted request (`Queued` or `Elsewhere`) of `tenant` unless its
    /// id is already known; a final reply that arrived first gains the fingerprint.
    pub(crate) fn mark_accepted(
        &self,
        id: &str,
        entry: Entry,
        fingerprint: Fingerprint,
        tenant: Option<Arc<str>>,
    ) {
        let mut inner = self.lock();
        match inner.slots.get_mut(id) {
            Some(slot) => {
                slot.fingerprint.get_or_insert(fingerprint);
            }
            None => insert(&mut inner, id, entry, Some(fingerprint), tenant),
        }
        self.evict(&mut inner, Instant::now());
    }

    /// Records a final reply; the first one for an id wins.
    pub(crate) fn record_final(&self, reply: impl Into<Arc<Reply>>) -> Recorded {
        let reply = reply.into();
        let mut inner = self.lock();
        let recorded = match inner.slots.get_mut(&reply.id) {
            Some(Slot {
                entry: Entry::Final(_),
                ..
            }) => Recorded::Duplicate,
            Some(slot) => {
                slot.entry = Entry::Final(reply);
                Recorded::First
            }
            None => {
                let id = reply.id.clone();
                let tenant = reply.tenant.as_deref().map(Arc::from);
                insert(&mut inner, &id, Entry::Final(reply), None, tenant);
                Recorded::First
            }
        };
        self.evict(&mut inner, Instant::now());
        recorded
    }

    /// What is known about `id`, if it has not been evicted.
    pub fn get(&self, id: &str) -> Option<Entry> {
        self.lookup(id).map(|known| known.entry)
    }

    /// What is known about `id`: its entry, the fingerprint it was accepted with here
    /// and its tenant.
    pub(crate) fn lookup(&self, id: &str) -> Option<Known> {
        let mut inner = self.lock();
        self.evict(&mut inner, Instant::now());
        inner.slots.get(id).map(|slot| Known {
            entry: slot.entry.clone(),
            fingerprint: slot.fingerprint,
            tenant: slot.tenant.clone(),
        })
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

fn insert(
    inner: &mut Inner,
    id: &str,
    entry: Entry,
    fingerprint: Option<Fingerprint>,
    tenant: Option<Arc<str>>,
) {
    inner.next_seq += 1;
    let seq = inner.next_seq;
    let slot = Slot {
        entry,
        fingerprint,
        tenant,
        seq,
    };
    inner.slots.insert(id.to_string(), slot);
    inner.order.push_back((seq, id.to_string(), Instant::now()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Status, Timing};

    fn reply(id: &str, status: Status) -> Reply {
        Reply {
            tenant: None,
            v: 1,
            id: id.into(),
            status,
            attempts: 1,
            body: None,
            error: None,
            usage: None,
            timing: Timing::default(),
            metadata: None,
            served_by: None,
        }
    }

    #[test]
    fn queued_then_final_then_duplicate() {
        let cache = ReplyCache::new(Duration::from_secs(60), 10);
        assert_eq!(cache.get("a"), None);
        cache.mark_accepted("a", Entry::Queued, 1, Some("acme".into()));
        let known = cache.lookup("a").unwrap();
        assert_eq!(known.entry, Entry::Queued);
        assert_eq!(known.fingerprint, Some(1));
        assert_eq!(known.tenant.as_deref(), Some("acme"));
        assert_eq!(cache.record_final(reply("a", Status::Ok)), Recorded::First);
        assert_eq!(
            cache.record_final(reply("a", Status::Error)),
            Recorded::Duplicate
        );
        match cache.get("a") {
            Some(Entry::Final(r)) => assert_eq!(r.status, Status::Ok, "first reply wins"),
            other => panic!("expected final, got {other:?}"),
        }
        cache.mark_accepted("a", Entry::Queued, 2, None);
        assert_eq!(
            cache.lookup("a").unwrap().fingerprint,
            Some(1),
            "the first fingerprint stays"
        );
        assert_eq!(cache.lookup("a").unwrap().tenant.as_deref(), Some("acme"));
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
        let known = cache.lookup("other-instance").unwrap();
        assert!(matches!(known.entry, Entry::Final(_)));
        assert_eq!(known.fingerprint, None);
        cache.mark_accepted("other-instance", Entry::Queued, 7, None);
        assert_eq!(cache.lookup("other-instance").unwrap().fingerprint, Some(7));
    }

    #[test]
    fn capacity_evicts_oldest_first() {
        let cache = ReplyCache::new(Duration::from_secs(60), 3);
        for id in ["a", "b", "c", "d"] {
            cache.mark_accepted(id, Entry::Queued, 0, None);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get("d"), Some(Entry::Queued));
    }

    #[test]
    fn ttl_evicts_old_entries() {
        let cache = ReplyCache::new(Duration::from_millis(30), 100);
        cache.mark_accepted("old", Entry::Queued, 0, None);
        std::thread::sleep(Duration::from_millis(40));
        cache.mark_accepted("new", Entry::Queued, 0, None);
        assert_eq!(cache.get("old"), None);
        assert_eq!(cache.get("new"), Some(Entry::Queued));
        assert_eq!(cache.len(), 1);
    }
}
