//! Who is waiting for which reply: `POST /v1/chat/completions` registers its request id
//! before writing the request, and the reply-topic reader hands each chunk and the
//! final reply for that id straight to it. No polling; a waiter that goes away (the
//! client disconnected, the wait ran out) is removed when it is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;

use crate::envelope::{Chunk, Reply};

/// What the reply topic said about a waited-for request.
#[derive(Debug, Clone)]
pub enum ReplyEvent {
    Chunk(Arc<Chunk>),
    Final(Arc<Reply>),
}

type Senders = Vec<(u64, mpsc::UnboundedSender<ReplyEvent>)>;

/// The waiter map, keyed by request id (an id may have several waiters).
#[derive(Debug, Default)]
pub struct Waiters {
    by_id: Mutex<HashMap<String, Senders>>,
    next_token: AtomicU64,
    /// Ids waited for, for `/metrics`.
    gauge: Gauge,
}

/// One registered wait; dropping it unregisters.
#[derive(Debug)]
pub struct Waiter {
    waiters: Arc<Waiters>,
    id: String,
    token: u64,
    receiver: mpsc::UnboundedReceiver<ReplyEvent>,
}

impl Waiters {
    /// A map whose size `gauge` follows.
    pub(crate) fn with_gauge(gauge: Gauge) -> Self {
        Self {
            gauge,
            ..Self::default()
        }
    }

    /// Starts waiting for `id`'s chunks and final reply.
    pub(crate) fn register(self: &Arc<Self>, id: &str) -> Waiter {
        let (sender, receiver) = mpsc::unbounded_channel();
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut by_id = self.lock();
        by_id
            .entry(id.to_string())
            .or_default()
            .push((token, sender));
        self.gauge.set(by_id.len() as i64);
        drop(by_id);
        Waiter {
            waiters: self.clone(),
            id: id.to_string(),
            token,
            receiver,
        }
    }

    /// Hands `event` to everyone waiting for `id`; a final reply ends their wait.
    pub(crate) fn notify(&self, id: &str, event: ReplyEvent) {
        let mut by_id = self.lock();
        let Some(senders) = by_id.get_mut(id) else {
            return;
        };
        for (_, sender) in senders.iter() {
            // A receiver already gone is removed by its Waiter's drop.
            let _ = sender.send(event.clone());
        }
        if matches!(event, ReplyEvent::Final(_)) {
            by_id.remove(id);
            self.gauge.set(by_id.len() as i64);
        }
    }

    /// Requests being waited for.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Senders>> {
        self.by_id
            .lock()
            .expect("waiter lock is never poisoned: no code panics while holding it")
    }
}

impl Waiter {
    /// The next event for this id; `None` once the final reply was taken.
    pub async fn next(&mut self) -> Option<ReplyEvent> {
        self.receiver.recv().await
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut by_id = self.waiters.lock();
        if let Some(senders) = by_id.get_mut(&self.id) {
            senders.retain(|(token, _)| *token != self.token);
            if senders.is_empty() {
                by_id.remove(&self.id);
            }
            self.waiters.gauge.set(by_id.len() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Status, Timing};

    fn reply(id: &str) -> Arc<Reply> {
        Arc::new(Reply {
            tenant: None,
            v: 1,
            id: id.into(),
            status: Status::Ok,
            attempts: 1,
            body: None,
            error: None,
            usage: None,
            timing: Timing::default(),
            metadata: None,
            served_by: None,
        })
    }

    fn chunk(id: &str, seq: u64) -> ReplyEvent {
        ReplyEvent::Chunk(Arc::new(Chunk {
            v: 1,
            id: id.into(),
            seq,
            chunk: serde_json::json!({}),
        }))
    }

    #[tokio::test]
    async fn events_reach_only_their_waiters_and_the_final_ends_the_wait() {
        let waiters = Arc::new(Waiters::default());
        let mut a = waiters.register("a");
        let mut a_again = waiters.register("a");
        let mut b = waiters.register("b");
        waiters.notify("a", chunk("a", 0));
        waiters.notify("a", ReplyEvent::Final(reply("a")));
        waiters.notify("nobody", ReplyEvent::Final(reply("nobody")));
        for waiter in [&mut a, &mut a_again] {
            assert!(matches!(waiter.next().await, Some(ReplyEvent::Chunk(c)) if c.seq == 0));
            assert!(matches!(waiter.next().await, Some(ReplyEvent::Final(_))));
            assert!(
                waiter.next().await.is_none(),
                "nothing after the final reply"
            );
        }
        assert_eq!(waiters.len(), 1, "only b still waits");
        assert!(b.receiver.try_recv().is_err());
    }

    #[test]
    fn a_dropped_waiter_leaves_nothing_behind() {
        let gauge = Gauge::default();
        let waiters = Arc::new(Waiters::with_gauge(gauge.clone()));
        let first = waiters.register("x");
        let second = waiters.register("x");
        let third = waiters.register("y");
        assert_eq!(gauge.get(), 2);
        drop(first);
        assert_eq!(waiters.len(), 2);
        drop(second);
        drop(third);
        assert!(waiters.is_empty());
        assert_eq!(gauge.get(), 0);
        waiters.notify("x", chunk("x", 1));
        assert!(waiters.is_empty());
    }
}
