//! The simulated backend's capacity model, independent of HTTP: `slots` requests are
//! served at once, each for `latency + per_token × tokens`; above that a request either
//! waits FIFO for a slot (like vLLM or llama.cpp) or is refused at once with a retry-after
//! (like OpenAI's 429). Time is tokio's, so under `tokio::time::pause()` a simulation runs
//! in virtual time with exact, repeatable latencies.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// What happens to a request that arrives while every slot is busy.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Wait in a FIFO queue for a slot, like vLLM or llama.cpp server.
    #[default]
    Queue,
    /// Refuse at once with a retry-after, like OpenAI's 429.
    Reject,
}

/// The shape of the simulated backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacitySettings {
    /// Requests served at once; at least 1.
    pub slots: usize,
    /// Service time of every request whatever its length (the time to first token).
    pub latency: Duration,
    /// Service time added per generated token.
    pub per_token: Duration,
    /// What happens above `slots` requests.
    pub overflow: Overflow,
    /// Retry-after told to a refused request (reject mode only).
    pub retry_after: Duration,
}

/// Every slot was busy and the model rejects rather than queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all {slots} slots are busy; retry after {retry_after:?}")]
pub struct Overloaded {
    /// How many slots the model has (all of them were busy).
    pub slots: usize,
    /// How long the caller is told to wait before retrying.
    pub retry_after: Duration,
}

/// A snapshot of the model's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CapacityStats {
    /// Configured slots.
    pub slots: usize,
    /// Requests whose slot has been released (served to the end or abandoned).
    pub served: u64,
    /// Slots held now.
    pub in_flight: usize,
    /// Most slots ever held at once; never above `slots`.
    pub peak_in_flight: usize,
    /// Requests waiting for a slot now (queue mode only).
    pub queued: usize,
    /// Requests refused because every slot was busy (reject mode only).
    pub rejections: u64,
    /// Sum of the time each released slot was held.
    pub busy: Duration,
}

/// Counters shared by the model and its slot guards; they live as long as either.
#[derive(Debug, Default)]
struct Counters {
    /// Slots now (changed at run time with [`CapacityModel::set_slots`]).
    slots: AtomicUsize,
    /// Slots still to take away from the semaphore as held ones are released (a shrink
    /// below the slots in use).
    to_forget: AtomicUsize,
    served: AtomicU64,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    queued: AtomicUsize,
    rejections: AtomicU64,
    busy_nanos: AtomicU64,
}

/// `slots` concurrent servers in front of a FIFO queue or a bouncer.
#[derive(Debug)]
pub struct CapacityModel {
    settings: CapacitySettings,
    /// One permit per free slot. Tokio's semaphore is fair, so waiters are served FIFO.
    /// Never closed.
    slots: Arc<Semaphore>,
    counters: Arc<Counters>,
}

/// What one call of [`CapacityModel::serve`] cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Time spent waiting for a slot.
    pub queued: Duration,
    /// Time the slot was held.
    pub service: Duration,
}

impl CapacityModel {
    /// # Panics
    /// If `settings.slots` is 0 (nothing could ever be served) or above
    /// [`Semaphore::MAX_PERMITS`].
    pub fn new(settings: CapacitySettings) -> Self {
        assert!(
            (1..=Semaphore::MAX_PERMITS).contains(&settings.slots),
            "a capacity model needs between 1 and {} slots, not {}",
            Semaphore::MAX_PERMITS,
            settings.slots
        );
        let counters = Counters {
            slots: AtomicUsize::new(settings.slots),
            ..Counters::default()
        };
        Self {
            slots: Arc::new(Semaphore::new(settings.slots)),
            settings,
            counters: Arc::new(counters),
        }
    }

    /// Changes the slots at run time (another tenant takes some, or gives them back):
    /// more are free at once; fewer take effect as held slots are released, so requests
    /// already served are never cut short. At least 1.
    pub(crate) fn set_slots(&self, slots: usize) {
        let slots = slots.clamp(1, Semaphore::MAX_PERMITS);
        let c = &self.counters;
        let before = c.slots.swap(slots, Ordering::SeqCst);
        if slots > before {
            let mut up = slots - before;
            // Cancel a shrink still waiting for held slots first.
            while up > 0 {
                let owed = c.to_forget.load(Ordering::SeqCst);
                if owed == 0 {
                    break;
                }
                let cancel = owed.min(up);
                if c.to_forget
                    .compare_exchange(owed, owed - cancel, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    up -= cancel;
                }
            }
            self.slots.add_permits(up);
        } else if slots < before {
            let down = before - slots;
            let forgotten = self.slots.forget_permits(down);
            c.to_forget.fetch_add(down - forgotten, Ordering::SeqCst);
        }
    }

    pub fn settings(&self) -> &CapacitySettings {
        &self.settings
    }

    /// Time a request generating `tokens` tokens holds its slot:
    /// `latency + per_token × tokens`, saturating at `u64::MAX` nanoseconds.
    pub(crate) fn service_time(&self, tokens: u64) -> Duration {
        let per_token = self
            .settings
            .per_token
            .as_nanos()
            .saturating_mul(tokens.into());
        let per_token = Duration::from_nanos(u64::try_from(per_token).unwrap_or(u64::MAX));
        self.settings.latency.saturating_add(per_token)
    }

    /// Takes a slot: at once if one is free; otherwise waits in FIFO order (queue mode) or
    /// fails with [`Overloaded`] (reject mode). Dropping the guard frees the slot.
    /// Cancel-safe: a caller dropped while queued leaves the queue.
    pub(crate) async fn admit(&self) -> Result<SlotGuard, Overloaded> {
        let permit = match self.settings.overflow {
            Overflow::Reject => match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(permit) => permit,
                // The semaphore is never closed, so the only failure is "no permits".
                Err(_) => {
                    self.counters.rejections.fetch_add(1, Ordering::Relaxed);
                    return Err(Overloaded {
                        slots: self.counters.slots.load(Ordering::Relaxed),
                        retry_after: self.settings.retry_after,
                    });
                }
            },
            Overflow::Queue => {
                let _waiting = Waiting::enter(&self.counters);
                Arc::clone(&self.slots)
                    .acquire_owned()
                    .await
                    .expect("the slot semaphore is never closed")
            }
        };
        Ok(SlotGuard::new(permit, Arc::clone(&self.counters)))
    }

    /// Admits, holds the slot for the service time of `tokens` tokens, and releases it:
    /// one whole simulated call, for in-process simulations.
    pub async fn serve(&self, tokens: u64) -> Result<Served, Overloaded> {
        let asked = Instant::now();
        let slot = self.admit().await?;
        let queued = asked.elapsed();
        let service = self.service_time(tokens);
        tokio::time::sleep(service).await;
        drop(slot);
        Ok(Served { queued, service })
    }

    pub(crate) fn stats(&self) -> CapacityStats {
        let c = &self.counters;
        CapacityStats {
            slots: c.slots.load(Ordering::Relaxed),
            served: c.served.load(Ordering::Relaxed),
            in_flight: c.in_flight.load(Ordering::Relaxed),
            peak_in_flight: c.peak_in_flight.load(Ordering::Relaxed),
            queued: c.queued.load(Ordering::Relaxed),
            rejections: c.rejections.load(Ordering::Relaxed),
            busy: Duration::from_nanos(c.busy_nanos.load(Ordering::Relaxed)),
        }
    }
}

/// A held slot; dropping it frees the slot and adds the time held to the busy total.
#[derive(Debug)]
pub(crate) struct SlotGuard {
    /// Released after `Drop::drop` has updated the counters, so `in_flight` never
    /// exceeds the slots even momentarily; forgotten instead while the slots shrink.
    permit: Option<OwnedSemaphorePermit>,
    counters: Arc<Counters>,
    since: Instant,
}

impl SlotGuard {
    fn new(permit: OwnedSemaphorePermit, counters: Arc<Counters>) -> Self {
        let now = counters.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        counters.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        Self {
            permit: Some(permit),
            counters,
            since: Instant::now(),
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let held = u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.counters.busy_nanos.fetch_add(held, Ordering::Relaxed);
        self.counters.served.fetch_add(1, Ordering::Relaxed);
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        let c = &self.counters;
        let shrinking = c
            .to_forget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if let (true, Some(permit)) = (shrinking, self.permit.take()) {
            permit.forget();
        }
    }
}

/// Counts a caller in the queue for as long as it waits, cancellation included.
struct Waiting<'a>(&'a Counters);

impl<'a> Waiting<'a> {
    fn enter(counters: &'a Counters) -> Self {
        counters.queued.fetch_add(1, Ordering::Relaxed);
        Self(counters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
