//! RateLimit: token buckets for requests/s and tokens/min, configured for the whole
//! consumer group and split by each worker's share of the assigned partitions.
//! Guarantee: over any window a worker starts at most `window × share × limit` calls,
//! plus its saved burst, plus one request per caller already holding a reservation
//! (tokens: plus one call's overshoot), so the group stays within its limits.
//!
//! - `poll_ready` is Pending until one request is available and the token budget is not
//!   in debt; it then reserves the request. Pending means the worker takes no message.
//! - `call` charges [`ChatRequest::estimated_tokens`](crate::backend::ChatRequest::estimated_tokens)
//!   at once. The token bucket may go negative: one request larger than the burst still
//!   passes (it cannot deadlock) and the debt holds back the next ones until repaid.
//! - When the response arrives the estimate is settled against `usage`
//!   (prompt + completion): a refund or an extra debit.
//! - [`RateShare::set_share`] rescales both buckets at once; saved tokens are clamped,
//!   debt is kept, so a rebalance never mints a burst. Share 0 (before the first
//!   assignment) passes nothing: a worker owning no partitions has no budget.
//!
//! Burst: each bucket holds `burst_ms` (default 250 ms) of its rate, and the requests
//! bucket at least one request. Why 250 ms and not a full second: after an idle spell
//! every worker has a full bucket, so the busiest 10 s window holds `10 s + burst` of the
//! group's rate; 250 ms keeps it within 2.5% of the limit (the target is 5%) while still
//! absorbing timer and scheduling jitter, since unspent tokens carry over up to that much.
//! Tokens use the same window: thanks to debt a bucket smaller than one request costs
//! nothing in throughput, and a minute-long bucket would let a fresh worker spend a
//! minute of the group's budget in one go.
//!
//! Not `governor`: its GCRA cannot go into debt (`check_n` refuses a cost above the
//! burst, forever), has no refund for reconciliation, fixes the quota at construction (a
//! rebalance would mean a new limiter and a lost state), and reads its own clock, so
//! tests could not use tokio's paused time. The bucket here is ~100 lines of arithmetic.
//!
//! Waiting clones are each woken at the instant their request is due (one reused `Sleep`
//! per clone, as tower's own rate limiter does); when several wait, one wins and the
//! others sleep again. There is no FIFO order among them.

mod bucket;
mod layer;
mod service;
mod share;
#[cfg(test)]
mod tests;

pub(crate) use crate::config::RateSettings;
pub(crate) use layer::RateLimitLayer;
pub(crate) use share::{RateShare, RateStats};
