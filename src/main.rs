//! The `sluice` binary: parses the command line, loads configuration, sets up telemetry
//! and runs one role until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sluice::config::help::{settings_help, INGRESS_KEYS, WORKER_KEYS};
use sluice::config::Config;
use sluice::dev::DevArgs;
use sluice::loadgen::LoadgenArgs;
use sluice::mock_llm::MockLlmArgs;
use sluice::ops::config_cmd::ConfigCommand;
use sluice::ops::lag::LagArgs;
use sluice::ops::DlqCommand;
use sluice::{dev, ingress, loadgen, mock_llm, ops, shutdown, telemetry, worker};

/// sluice: a Kafka-backed peak-shaving layer for LLM calls.
///
/// Bursts of LLM requests wait in Kafka; workers release them to the backend at the
/// rate it can sustain; every request ends in one final reply on the reply topic.
///
/// Configuration is layered: built-in defaults, then the TOML file given with
/// --config, then environment variables SLUICE__SECTION__KEY
/// (e.g. SLUICE__KAFKA__BOOTSTRAP_SERVERS=broker:9092). Every key and its value:
/// `sluice config print`; what each does: `sluice config reference`.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, max_term_width = 100)]
struct Cli {
    /// TOML configuration file, layered over the defaults and under SLUICE__* variables.
    #[arg(long, short, global = true, value_name = "FILE", env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// HTTP API: accept requests into Kafka (202 once stored, 503 when Kafka cannot take
    /// them) and serve their results. Listens on ingress.listen.
    #[command(after_help = settings_help(INGRESS_KEYS))]
    Ingress,
    /// Consumer-group member: take requests from Kafka while there is room, call the
    /// backend, write one final reply each, commit. Admin routes on worker.admin_listen.
    #[command(after_help = settings_help(WORKER_KEYS))]
    Worker,
    /// Everything in one process for a first run: an embedded in-memory Kafka-protocol
    /// broker (about 5 MiB kept per partition, nothing kept after exit), the mock backend,
    /// Kafka clients on 127.0.0.1:9092, the ingress on 127.0.0.1:8080 and a worker. Prints a
    /// ready line and curl examples.
    Dev(DevArgs),
    /// OpenAI-compatible simulated backend with a capacity model, for demos, tests and
    /// benchmarks.
    MockLlm(MockLlmArgs),
    /// Load generator: a burst through sluice (or straight to a backend), then a report of
    /// loss, duplicates, latency and backend utilisation.
    ///
    /// Sends through the ingress, straight to the request topic, or (the baseline, no
    /// sluice) straight to an OpenAI-compatible backend; reads every final reply from the
    /// reply topic itself (first reply per id wins, later ones count as duplicates);
    /// reports sent / accepted / completed / lost / duplicated, latency and queue-wait
    /// percentiles, drain throughput and, with --backend-metrics, the backend's
    /// utilisation and overload responses. Exits 0 when nothing was lost, 3 when some
    /// accepted request had no final reply by --timeout, 1 (2 for bad configuration)
    /// when it could not run.
    Loadgen(LoadgenArgs),
    /// Dead-letter topic tools: inspect and re-drive what the workers could not process.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The worker group's backlog per request-topic partition (committed offset, end
    /// offset, lag), its drain rate and the time to drain, from two samples --interval
    /// apart. Never joins the group.
    Lag(LagArgs),
    /// Configuration tools: the effective configuration (secrets masked), a check of a
    /// file, the reference of every key.
    #[command(subcommand)]
    Config(ConfigCommand),
}

impl Command {
    fn role(&self) -> &'static str {
        match self {
            Command::Ingress => "ingress",
            Command::Worker => "worker",
            Command::Dev(_) => "dev",
            Command::MockLlm(_) => "mock-llm",
            Command::Loadgen(_) => "loadgen",
            Command::Dlq(_) => "dlq",
            Command::Lag(_) => "lag",
            Command::Config(_) => "config",
        }
    }
}

/// How long Tokio may take to stop stray tasks after a role returned. The role has
/// written, committed and flushed what it must by then; what is left are blocking
/// broker queries (metadata, watermarks) that would only delay the exit.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let role = cli.command.role();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sluice {role}: {e}");
            return ExitCode::from(2);
        }
    };
    let unread = sluice::config::unknown_env_warnings(
        std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()),
    );
    if let Command::Config(command) = &cli.command {
        for warning in &unread {
            eprintln!("warning: {warning}");
        }
        return ExitCode::from(ops::config_cmd::run(&config, command));
    }
    let telemetry = match telemetry::init(&config.telemetry, &format!("sluice-{role}")) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("sluice {role}: {e}");
            return ExitCode::from(2);
        }
    };
    for warning in unread {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sluice {role}: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = shutdown::on_signal();
        let done = match cli.command {
            Command::Ingress => ingress::run(config, shutdown).await,
            Command::Worker => worker::run(config, shutdown).await,
            Command::Dev(args) => dev::run(config, args, shutdown).await,
            Command::MockLlm(args) => mock_llm::run(args, shutdown).await.map_err(Into::into),
            Command::Loadgen(args) => return loadgen::run(config, args, shutdown).await,
            Command::Dlq(command) => ops::run_dlq(config, command, shutdown).await,
            Command::Lag(args) => ops::lag::run(config, args, shutdown).await,
            Command::Config(_) => unreachable!("answered before the runtime starts"),
        };
        done.map(|()| ExitCode::SUCCESS)
    });
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    telemetry.shutdown();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice {role}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
