//! The simulated backend: `mock_llm::capacity::CapacityModel` (slots, latency + per-token
//! time, queue or reject) behind an in-process `Service<ChatRequest>`, plus what the model
//! leaves to its callers: network time, jitter, batch slowdown, a requests/s limit, capacity changes
//! (another tenant taking slots) and outages. Every answer is recorded with its time.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tower::Service;

use super::scenario::{BackendParams, OutageAnswer, OverflowParam};
use crate::backend::{BackendError, ChatRequest, ChatResponse};
use crate::envelope::Usage;
use crate::mock_llm::capacity::{CapacityModel, CapacitySettings, Overflow};

/// Every answer, in seconds since the start.
#[derive(Debug, Clone, Default)]
pub(crate) struct Record {
    /// (done, service seconds) of each success.
    pub successes: Vec<(f64, f64)>,
    /// 429s for lack of slots or rate.
    pub overloads: Vec<f64>,
    /// Answers during an outage.
    pub outage_answers: Vec<f64>,
}

/// Cheap to clone; clones share one backend.
#[derive(Debug, Clone)]
pub(crate) struct SimBackend {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    params: BackendParams,
    /// Sized for the most slots the scenario ever has; fewer are enforced by
    /// `slots_now` (reject) or by ghost calls holding slots (queue).
    model: Arc<CapacityModel>,
    start: Instant,
    slots_now: AtomicUsize,
    rng: Mutex<StdRng>,
    /// Token bucket: (tokens, last refill).
    bucket: Mutex<(f64, Instant)>,
    record: Mutex<Record>,
}

impl SimBackend {
    pub fn new(params: BackendParams, start: Instant) -> Self {
        let model = CapacityModel::new(CapacitySettings {
            slots: params.most_slots(),
            latency: Duration::from_secs_f64(params.latency_ms / 1e3),
            per_token: Duration::from_secs_f64(params.per_token_ms / 1e3),
            overflow: match params.overflow {
                OverflowParam::Queue => Overflow::Queue,
                OverflowParam::Reject => Overflow::Reject,
            },
            retry_after: Duration::from_millis(params.retry_after_ms),
        });
        Self {
            shared: Arc::new(Shared {
                model: Arc::new(model),
                start,
                slots_now: AtomicUsize::new(params.slots),
                rng: Mutex::new(StdRng::seed_from_u64(params.seed)),
                bucket: Mutex::new((params.rate_burst, start)),
                record: Mutex::default(),
                params,
            }),
        }
    }

    /// Applies the capacity changes at their times. In queue mode "ghost" calls of another
    /// tenant take the missing slots (waiting their turn in the FIFO queue like anyone).
    pub(crate) async fn run_changes(self) {
        let shared = &self.shared;
        let mut ghosts: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        let mut apply = |slots: usize| {
            shared.slots_now.store(slots, Ordering::Relaxed);
            if shared.params.overflow == OverflowParam::Queue {
                let wanted = shared.params.most_slots() - slots;
                while ghosts.len() > wanted {
                    if let Some(ghost) = ghosts.pop() {
                        ghost.abort();
                    }
                }
                while ghosts.len() < wanted {
                    let model = Arc::clone(&shared.model);
                    ghosts.push(tokio::spawn(async move {
                        let _slot = model.admit().await;
                        std::future::pending::<()>().await;
                    }));
                }
            }
        };
        apply(shared.params.slots);
        for change in shared.params.changes.clone() {
            tokio::time::sleep_until(shared.start + Duration::from_secs_f64(change.at_secs)).await;
            apply(change.slots);
        }
        std::future::pending::<()>().await;
    }

    pub fn record(&self) -> Record {
        lock(&self.shared.record).clone()
    }

    /// The gauges a llama.cpp or vLLM server would publish now.
    pub fn signal(&self) -> crate::backend::saturation::Signal {
        let stats = self.shared.model.stats();
        crate::backend::saturation::Signal {
            publisher: crate::backend::saturation::Publisher::Llamacpp,
            running: stats.in_flight as f64,
            waiting: stats.queued as f64,
            kv_cache_usage: None,
        }
    }

    /// The circuit breaker's probe: the backend is down during an outage, up otherwise.
    pub fn probe(&self) -> crate::backend::breaker::Probe {
        let shared = Arc::clone(&self.shared);
        Arc::new(move || {
            let shared = Arc::clone(&shared);
            Box::pin(async move {
                let now = shared.secs();
                let down = shared
                    .params
                    .outages
                    .iter()
                    .any(|o| (o.from_secs..o.until_secs).contains(&now));
                if down {
                    Err("simulated outage".to_string())
                } else {
                    Ok(())
                }
            })
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    async fn serve(&self, tokens: u64) -> Result<ChatResponse, BackendError> {
        let network = Duration::from_secs_f64(self.params.network_ms / 1e3);
        tokio::time::sleep(network).await;
        let answer = self.answer(tokens).await;
        tokio::time::sleep(network).await;
        answer
    }

    async fn answer(&self, tokens: u64) -> Result<ChatResponse, BackendError> {
        let now = self.secs();
        if let Some(outage) = self
            .params
            .outages
            .iter()
            .find(|o| (o.from_secs..o.until_secs).contains(&now))
        {
            tokio::time::sleep(Duration::from_secs_f64(outage.latency_ms / 1e3)).await;
            lock(&self.record).outage_answers.push(self.secs());
            return Err(match outage.answer {
                OutageAnswer::Unavailable => {
                    status(503, outage.retry_after_ms.map(Duration::from_millis))
                }
                OutageAnswer::Transport => BackendError::Transport("connection refused".into()),
            });
        }
        if let Some(rate) = self.params.rate_per_second {
            let mut bucket = lock(&self.bucket);
            let refill = bucket.1.elapsed().as_secs_f64() * rate;
            *bucket = (
                (bucket.0 + refill).min(self.params.rate_burst),
                Instant::now(),
            );
            if bucket.0 < 1.0 {
                let wait = Duration::from_secs_f64((1.0 - bucket.0) / rate);
                return Err(self.overloaded(wait.max(Duration::from_millis(1))));
            }
            bucket.0 -= 1.0;
        }
        let reject = self.params.overflow == OverflowParam::Reject;
        if reject && self.model.stats().in_flight >= self.slots_now.load(Ordering::Relaxed) {
            return Err(self.overloaded(Duration::from_millis(self.params.retry_after_ms)));
        }
        let slot = match self.model.admit().await {
            Ok(slot) => slot,
            Err(refused) => return Err(self.overloaded(refused.retry_after)),
        };
        let jitter = self.params.jitter * lock(&self.rng).random_range(-1.0..=1.0);
        let stats = self.model.stats();
        let batch = self.params.batch_slowdown * stats.in_flight as f64 / stats.slots as f64;
        let service = self
            .model
            .service_time(tokens)
            .mul_f64((1.0 + jitter) * (1.0 + batch));
        tokio::time::sleep(service).await;
        drop(slot);
        lock(&self.record)
            .successes
            .push((self.secs(), service.as_secs_f64()));
        Ok(ChatResponse {
            body: serde_json::json!({ "object": "chat.completion" }),
            usage: Some(Usage {
                prompt_tokens: 8,
                completion_tokens: tokens,
            }),
        })
    }

    fn overloaded(&self, retry_after: Duration) -> BackendError {
        lock(&self.record).overloads.push(self.secs());
        status(429, Some(retry_after))
    }
}

fn status(status: u16, retry_after: Option<Duration>) -> BackendError {
    BackendError::Status {
        status,
        message: "simulated".into(),
        retry_after,
    }
}

impl Service<ChatRequest> for SimBackend {
    type Response = ChatResponse;
    type Error = BackendError;
    type Future = Pin<Box<dyn Future<Output = Result<ChatResponse, BackendError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BackendError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let tokens = request.max_tokens().unwrap_or(256);
        Box::pin(async move { shared.serve(tokens).await })
    }
}
