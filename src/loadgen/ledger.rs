//! The run's books, one entry per request id: when it was sent, whether the target
//! accepted it, and its first final outcome. Later final replies for an id are counted as
//! duplicates and never change the outcome; replies for ids this run did not send (older
//! runs, other clients) are counted and ignored.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Sent; the target has not answered yet.
    Pending,
    /// The target took it (202 from the ingress, an acknowledged Kafka write).
    Accepted,
    /// The target refused it; no reply is expected.
    Refused,
}

#[derive(Debug)]
struct Entry {
    sent_at: Instant,
    admission: Admission,
    /// Whether a final outcome was recorded (the first one wins).
    finished: bool,
}

/// What [`Ledger::finish`] recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The first final outcome for a request of this run.
    First,
    /// A later final reply for an id that already had one.
    Duplicate,
    /// A reply for an id this run did not send.
    Foreign,
}

/// One final outcome, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `ok`, `error`, `expired` or `rejected`.
    pub status: &'static str,
    /// For a non-ok outcome, why: an HTTP status (`429`), an error type, or the status.
    pub failure: Option<String>,
    /// The reply's `timing.queue_ms` (sluice targets only).
    pub queue_ms: Option<u64>,
}

/// Counts and samples gathered so far; a snapshot of the ledger.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Books {
    pub sent: u64,
    pub accepted: u64,
    /// Sent and not yet answered by the target.
    pub pending: u64,
    /// Refusals by HTTP status or error kind.
    pub refused: BTreeMap<String, u64>,
    /// First final outcomes by status.
    pub completed: BTreeMap<&'static str, u64>,
    /// Non-ok first outcomes by cause.
    pub failed: BTreeMap<String, u64>,
    /// Accepted (or pending) requests without a final outcome yet.
    pub unanswered: u64,
    pub duplicates: u64,
    pub foreign: u64,
    /// Send -> outcome seen, milliseconds, one per first outcome.
    pub latency_ms: Vec<f64>,
    /// The same, for `ok` outcomes only.
    pub ok_latency_ms: Vec<f64>,
    /// `timing.queue_ms` of first outcomes that carried it.
    pub queue_ms: Vec<f64>,
    pub first_send: Option<Instant>,
    pub last_send: Option<Instant>,
    /// When the target first took a request: from then on there was work for the backend.
    pub first_accepted: Option<Instant>,
    pub first_outcome: Option<Instant>,
    pub last_outcome: Option<Instant>,
}

impl Books {
    /// Final outcomes recorded (first ones only).
    pub fn finished(&self) -> u64 {
        self.completed.values().sum()
    }
}

/// Headline counts, see [`Books`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    pub sent: u64,
    pub accepted: u64,
    pub pending: u64,
    pub unanswered: u64,
    pub finished: u64,
}

/// Shared by the senders, the reply reader and the progress loop. The lock is never
/// held across an `.await`.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Every id this run sent; lives for the whole run.
    entries: HashMap<String, Entry>,
    books: Books,
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("ledger lock is never poisoned: nothing panics while holding it")
    }

    /// Records that `id` is being sent now. Call before the send, so a reply that
    /// overtakes the target's answer still finds its entry.
    pub fn sending(&self, id: &str) {
        let now = Instant::now();
        let mut inner = self.lock();
        let fresh = inner
            .entries
            .insert(
                id.to_string(),
                Entry {
                    sent_at: now,
                    admission: Admission::Pending,
                    finished: false,
                },
            )
            .is_none();
        debug_assert!(fresh, "ids are generated fresh for every request");
        let books = &mut inner.books;
        books.sent += 1;
        books.pending += 1;
        books.unanswered += 1;
        books.first_send.get_or_insert(now);
        books.last_send = Some(now);
    }

    /// The target took `id`.
    pub fn accepted(&self, id: &str) {
        self.admit(id, Admission::Accepted, None);
    }

    /// The target refused `id` for `reason` (an HTTP status or error kind).
    pub fn refused(&self, id: &str, reason: String) {
        self.admit(id, Admission::Refused, Some(reason));
    }

    fn admit(&self, id: &str, admission: Admission, reason: Option<String>) {
        let mut inner = self.lock();
        let Inner { entries, books } = &mut *inner;
        let Some(entry) = entries.get_mut(id) else {
            return;
        };
        if entry.admission != Admission::Pending {
            return;
        }
        entry.admission = admission;
        books.pending -= 1;
        match admission {
            Admission::Accepted => {
                books.accepted += 1;
                books.first_accepted.get_or_insert_with(Instant::now);
            }
            Admission::Refused => {
                *books.refused.entry(reason.unwrap_or_default()).or_default() += 1;
                // A refused request is not waited for, unless its reply already came.
                if !entry.finished {
                    books.unanswered -= 1;
                }
            }
            Admission::Pending => unreachable!("admit is never called with Pending"),
        }
    }

    /// Records a final outcome for `id` seen at `seen_at`; the first one per id wins.
    pub fn finish(&self, id: &str, outcome: Outcome, seen_at: Instant) -> Recorded {
        let mut inner = self.lock();
        let Inner { entries, books } = &mut *inner;
        let Some(entry) = entries.get_mut(id) else {
            books.foreign += 1;
            return Recorded::Foreign;
        };
        if entry.finished {
            books.duplicates += 1;
            return Recorded::Duplicate;
        }
        entry.finished = true;
        if entry.admission != Admission::Refused {
            books.unanswered -= 1;
        }
        *books.completed.entry(outcome.status).or_default() += 1;
        if let Some(failure) = outcome.failure {
            *books.failed.entry(failure).or_default() += 1;
        }
        let latency = seen_at.saturating_duration_since(entry.sent_at);
        let latency_ms = latency.as_secs_f64() * 1000.0;
        books.latency_ms.push(latency_ms);
        if outcome.status == "ok" {
            books.ok_latency_ms.push(latency_ms);
        }
        if let Some(queue_ms) = outcome.queue_ms {
            books.queue_ms.push(queue_ms as f64);
        }
        books.first_outcome.get_or_insert(seen_at);
        books.last_outcome = Some(books.last_outcome.map_or(seen_at, |t| t.max(seen_at)));
        Recorded::First
    }

    /// A copy of the books as they stand.
    pub(crate) fn snapshot(&self) -> Books {
        self.lock().books.clone()
    }

    /// The progress loop's cheap view.
    pub(crate) fn progress(&self) -> Progress {
        let b = &self.lock().books;
        Progress {
            sent: b.sent,
            accepted: b.accepted,
            pending: b.pending,
            unanswered: b.unanswered,
            finished: b.finished(),
        }
    }
}

#[cfg(test)]
mod tests;
