//! Operator tools: `sluice dlq inspect`, `sluice dlq replay`, `sluice lag` and
//! `sluice config`. They are short-lived edges (anyhow errors, output on stdout, diagnostics on stderr) that read
//! Kafka without joining any consumer group, so running them never moves a partition.
//!
//! - [`dlq_read`]: reads the DLQ topic from the beginning to its end; [`dlq_read::DlqRecord`].
//! - [`filter`]: `--reason`, `--class`, `--id`, `--since`/`--until`, `--limit`.
//! - [`rfc3339`]: the times of `sluice-error-at` and of `--since`/`--until`.
//! - [`preview`]: escaped, bounded renderings of keys, values and headers.
//! - [`inspect`]: `sluice dlq inspect` (text or JSON lines).
//! - [`replay`]: `sluice dlq replay` (re-drive, rate-limited by [`pace`], or dry run).
//! - [`lag`]: `sluice lag`; committed and end offsets come from
//!   [`crate::kafka::watermarks`], shared with the ingress's admission control.
//! - [`config_cmd`]: `sluice config print | check | reference`.

pub mod config_cmd;
pub(crate) mod dlq_read;
pub mod filter;
pub mod inspect;
pub mod lag;
pub mod pace;
pub mod preview;
pub mod replay;
pub(crate) mod rfc3339;

use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// `sluice dlq <command>`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum DlqCommand {
    /// List dead letters readably: where, when, why, which worker, source
    /// topic/partition/offset, key, id and a safe preview of the value. Reads the whole DLQ topic from the
    /// beginning without a consumer group; filters narrow what is shown.
    Inspect(inspect::InspectArgs),
    /// Re-drive dead letters to their source topic (or --to) with their original key, value
    /// and headers plus `sluice-replayed-from`, so a replayed request keeps its id. Waits
    /// for every write to be acknowledged; exits non-zero if any failed.
    Replay(replay::ReplayArgs),
}

/// Runs a `dlq` subcommand until it is done or `shutdown`.
pub async fn run_dlq(
    config: Config,
    command: DlqCommand,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    match command {
        DlqCommand::Inspect(args) => inspect::run(config, args, shutdown).await,
        DlqCommand::Replay(args) => replay::run(config, args, shutdown).await,
    }
}
