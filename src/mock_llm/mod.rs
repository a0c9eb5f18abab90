//! `sluice mock-llm`: an OpenAI-compatible simulated LLM backend with a capacity model, for
//! demos, tests and benchmarks. It serves `slots` requests at once, each for
//! `latency + per_token × tokens`, and above that queues them FIFO (like vLLM) or answers
//! 429 with Retry-After (like OpenAI).
//!
//! - [`capacity`]: the capacity model, independent of HTTP (simulations reuse it in-process).
//! - [`request`]: reading and validating a chat request body.
//! - [`completion`]: the `chat.completion` and `chat.completion.chunk` shapes.
//! - [`stream`]: paced server-sent events.
//! - [`metrics`]: the `sluice_mock_*` Prometheus metrics.
//! - [`server`]: the routes and the state they share.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod capacity;
pub mod completion;
pub mod metrics;
pub mod request;
pub mod server;
pub mod stream;

#[cfg(test)]
mod tests;

pub(crate) use capacity::{CapacitySettings, Overflow};
pub use server::app;
pub(crate) use server::MockState;

/// Default `--listen`.
pub(crate) const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8000));

/// Most `--slots`: what a tokio semaphore can count.
const SLOTS_MAX: u64 = tokio::sync::Semaphore::MAX_PERMITS as u64;

/// Flags of `sluice mock-llm`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct MockLlmArgs {
    /// Address to serve HTTP on.
    #[arg(long, default_value_t = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Requests served at once (the backend's batch slots); at least 1.
    #[arg(long, default_value_t = 16, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=SLOTS_MAX))]
    pub slots: usize,
    /// Service time of every request, in milliseconds, whatever its length (time to first token).
    #[arg(long, default_value_t = 100)]
    pub latency_ms: u64,
    /// Service time added per generated token, in milliseconds.
    #[arg(long, default_value_t = 2)]
    pub per_token_ms: u64,
    /// What happens to a request while every slot is busy.
    #[arg(long, value_enum, default_value_t = Overflow::Queue)]
    pub overflow: Overflow,
    /// Tokens generated when a request sets neither `max_completion_tokens` nor `max_tokens`;
    /// at least 1.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub default_max_tokens: u64,
    /// Most tokens generated for one request, whatever it asks; at least 1.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tokens_cap: u64,
    /// Retry delay sent with a 429 in reject mode, in milliseconds, as `retry-after-ms` and
    /// as `Retry-After` in whole seconds rounded up. Default: the base latency, at least 1.
    #[arg(long)]
    pub retry_after_ms: Option<u64>,
    /// The model's context, in tokens: a prompt longer than this is refused with 400 and
    /// OpenAI's "maximum context length" message. Default: no limit.
    #[arg(long)]
    pub context_tokens: Option<u64>,
}

impl Default for MockLlmArgs {
    /// The same values as the command line's defaults.
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            slots: 16,
            latency_ms: 100,
            per_token_ms: 2,
            overflow: Overflow::Queue,
            default_max_tokens: 64,
            max_tokens_cap: 4096,
            retry_after_ms: None,
            context_tokens: None,
        }
    }
}

impl MockLlmArgs {
    /// The retry delay told to a rejected request.
    pub fn retry_after(&self) -> Duration {
        Duration::from_millis(self.retry_after_ms.unwrap_or(self.latency_ms.max(1)))
    }

    pub(crate) fn capacity_settings(&self) -> CapacitySettings {
        CapacitySettings {
            slots: self.slots,
            latency: Duration::from_millis(self.latency_ms),
            per_token: Duration::from_millis(self.per_token_ms),
            overflow: self.overflow,
            retry_after: self.retry_after(),
        }
    }

    pub(crate) fn token_limits(&self) -> completion::TokenLimits {
        completion::TokenLimits {
            default: self.default_max_tokens,
            cap: self.max_tokens_cap,
        }
    }
}

/// Binds `args.listen` and serves until `shutdown` is cancelled.
pub async fn run(args: MockLlmArgs, shutdown: CancellationToken) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    serve(listener, args, shutdown).await
}

/// Serves on an already bound listener (tests and `sluice dev` bind port 0) until
/// `shutdown` is cancelled, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    args: MockLlmArgs,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_state(listener, MockState::new(&args), shutdown).await
}

/// Like [`serve`], with a state the caller keeps a handle on (to read capacity stats).
pub(crate) async fn serve_state(
    listener: TcpListener,
    state: MockState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let args = state.args();
    tracing::info!(
        %addr,
        slots = args.slots,
        latency_ms = args.latency_ms,
        per_token_ms = args.per_token_ms,
        overflow = ?args.overflow,
        retry_after_ms = u64::try_from(args.retry_after().as_millis()).unwrap_or(u64::MAX),
        default_max_tokens = args.default_max_tokens,
        max_tokens_cap = args.max_tokens_cap,
        "mock LLM listening"
    );
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
