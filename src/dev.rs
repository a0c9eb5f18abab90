//! `sluice dev`: the first run. One process starts an embedded Kafka-protocol broker
//! (librdkafka's mock cluster, topics created), the mock LLM backend, the ingress and a
//! worker, then prints a ready line and curl commands to try.
//!
//! Honest limits: the embedded broker keeps everything in memory (lost on exit) and only
//! about 5 MiB per partition. `--bootstrap-servers` uses a real broker instead.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka::embedded::EmbeddedBroker;
use crate::mock_llm::{self, MockLlmArgs};

/// Flags of `sluice dev`.
#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// Use this Kafka cluster instead of the embedded in-memory broker
    /// (topics are created if missing).
    #[arg(long, value_name = "HOST:PORT")]
    pub bootstrap_servers: Option<String>,
    /// Where the embedded broker takes Kafka clients (yours too: produce to it straight).
    /// Port 0 picks a free one.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    pub kafka_listen: SocketAddr,
    /// Where the ingress listens [default: ingress.listen if set in the config file or
    /// SLUICE__INGRESS__LISTEN, else 127.0.0.1:8080].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,
    /// Where the worker serves /metrics, /healthz and /readyz [default:
    /// worker.admin_listen if set in the config file or SLUICE__WORKER__ADMIN_LISTEN,
    /// else 127.0.0.1:9090].
    #[arg(long, value_name = "HOST:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// Call this OpenAI-compatible backend instead of the built-in mock
    /// (for example a local llama.cpp or vLLM server).
    #[arg(long, value_name = "URL")]
    pub backend_url: Option<String>,
    /// Partitions of each topic created.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Concurrent requests the mock backend serves.
    #[arg(long, default_value_t = 8)]
    pub mock_slots: usize,
    /// The mock backend's base latency per request.
    #[arg(long, default_value_t = 200)]
    pub mock_latency_ms: u64,
    /// The mock backend's extra latency per generated token.
    #[arg(long, default_value_t = 5)]
    pub mock_per_token_ms: u64,
}

/// The ingress's address under `dev` unless set: local only, unlike `ingress.listen`.
const DEV_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
/// The worker's admin address under `dev` unless set.
const DEV_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);

/// How long the pipeline may take to become ready before `dev` gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the whole pipeline in this process until `shutdown`.
pub async fn run(
    mut config: Config,
    args: DevArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut topics = vec![
        (config.request_topic_for(None), args.partitions),
        (config.kafka.reply_topic.clone(), args.partitions),
        (config.kafka.dlq_topic.clone(), 1),
        (config.kafka.control_topic.clone(), 1),
    ];
    for lane in &config.kafka.lanes {
        topics.push((config.request_topic_for(Some(lane)), args.partitions));
    }

    let mut tasks = tokio::task::JoinSet::new();
    let broker_stop = CancellationToken::new();
    let _stop_broker_on_return = broker_stop.clone().drop_guard();
    // The embedded broker lives until this function returns.
    let (_broker, kafka_description) = match &args.bootstrap_servers {
        Some(servers) => {
            config.kafka.bootstrap_servers = servers.clone();
            crate::kafka::admin::ensure_topics(&config.kafka, &topics)
                .await
                .with_context(|| format!("creating topics on {servers}"))?;
            (None, servers.clone())
        }
        None => {
            let mut broker = EmbeddedBroker::start(1).context("starting the embedded broker")?;
            let kafka_listener = TcpListener::bind(args.kafka_listen)
                .await
                .with_context(|| {
                    format!(
                        "binding {} for the embedded broker (is a Kafka broker already running \
                     there? use --kafka-listen, or --bootstrap-servers to use it)",
                        args.kafka_listen
                    )
                })?;
            let fixed = kafka_listener.local_addr()?;
            let inner = broker.bootstrap_servers().to_string();
            // Stopped after the roles, which still talk to the broker while they drain.
            tokio::spawn(forward(kafka_listener, inner, broker_stop.clone()));
            broker
                .advertise(1, &fixed.ip().to_string(), fixed.port())
                .context("advertising the embedded broker's address")?;
            for (name, partitions) in &topics {
                broker
                    .create_topic(name, *partitions)
                    .with_context(|| format!("creating topic {name}"))?;
            }
            config.kafka.bootstrap_servers = broker.bootstrap_servers().to_string();
            // Quick group joins on the single embedded broker.
            for (key, value) in [
                ("session.timeout.ms", "6000"),
                ("heartbeat.interval.ms", "500"),
            ] {
                config
                    .kafka
                    .client
                    .entry(key.into())
                    .or_insert(value.into());
            }
            let description = format!(
                "embedded in-memory broker at {}",
                broker.bootstrap_servers()
            );
            (Some(broker), description)
        }
    };

    let backend_description = match &args.backend_url {
        Some(url) => {
            config.backend.url = url.clone();
            url.clone()
        }
        None => {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding the mock backend")?;
            let url = format!("http://{}", listener.local_addr()?);
            config.backend.url = url.clone();
            let mock = MockLlmArgs {
                listen: listener.local_addr()?,
                slots: args.mock_slots,
                latency_ms: args.mock_latency_ms,
                per_token_ms: args.mock_per_token_ms,
                ..MockLlmArgs::default()
            };
            let stop = shutdown.clone();
            tasks.spawn(async move {
                mock_llm::serve(listener, mock, stop)
                    .await
                    .context("mock backend")
            });
            format!("mock-llm at {url} ({} slots)", args.mock_slots)
        }
    };
    config.validate().context("dev configuration")?;

    let defaults = Config::default();
    let listen = args
        .listen
        .unwrap_or(if config.ingress.listen != defaults.ingress.listen {
            config.ingress.listen
        } else {
            DEV_LISTEN
        });
    let admin_listen = args.admin_listen.unwrap_or(
        if config.worker.admin_listen != defaults.worker.admin_listen {
            config.worker.admin_listen
        } else {
            DEV_ADMIN_LISTEN
        },
    );
    let ingress_listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen} (is another sluice running? use --listen)"))?;
    let admin_listener = TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("binding {admin_listen} (use --admin-listen)"))?;
    let ingress_url = format!("http://{}", ingress_listener.local_addr()?);
    let admin_url = format!("http://{}", admin_listener.local_addr()?);
    tasks.spawn(crate::ingress::serve(
        ingress_listener,
        config.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(crate::worker::serve(
        admin_listener,
        config.clone(),
        shutdown.clone(),
    ));

    let roles = [ingress_url.as_str(), admin_url.as_str()];
    tokio::select! {
        ready = wait_ready(&roles) => ready?,
        Some(failed) = tasks.join_next() => {
            failed.context("a dev component panicked")??;
            anyhow::bail!("a dev component stopped before the pipeline was ready");
        }
        _ = shutdown.cancelled() => {}
    }
    if !shutdown.is_cancelled() {
        print_ready(&ingress_url, &kafka_description, &backend_description);
    }

    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        let result = done.context("a dev component panicked").and_then(|r| r);
        if let Err(e) = result {
            tracing::error!(error = %format!("{e:#}"), "dev component failed; stopping");
            shutdown.cancel();
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Polls each role's /readyz until all are up: the ingress (Kafka reachable, reply
/// reader assigned) and the worker (a member of its group).
async fn wait_ready(base_urls: &[&str]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let mut ready = true;
        for base in base_urls {
            ready &= client
                .get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
        }
        if ready {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the pipeline was not ready within {READY_TIMEOUT:?}; see the log above");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_ready(ingress_url: &str, kafka: &str, backend: &str) {
    println!(
        "sluice dev ready: ingress {ingress_url} | Kafka: {kafka} | backend: {backend}\n\
         \n\
         Ask as an OpenAI client would (through Kafka; the answer comes back here):\n  \
         curl -s {ingress_url}/v1/chat/completions -H 'content-type: application/json' \\\n    \
         -d '{{\"model\":\"mock\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}],\"max_tokens\":16}}'\n\
         or point an OpenAI SDK at base_url {ingress_url}/v1 (add \"stream\": true to stream).\n\
         \n\
         Or enqueue and come back later (202 with its id once Kafka has it):\n  \
         curl -s -X POST {ingress_url}/v1/requests -H 'content-type: application/json' \\\n    \
         -d '{{\"body\":{{\"model\":\"mock\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}],\"max_tokens\":16}}}}'\n  \
         curl -s {ingress_url}/v1/requests/<id>\n\
         \n\
         Watch a burst turn into lag and drain: {ingress_url}/status\n\
         The API: {ingress_url}/openapi.json. Ctrl-C stops everything (in-memory: nothing is kept)."
    );
}

/// Forwards every connection to `listener` to the embedded broker at `inner` (its own
/// listener takes a random port; this one is fixed and documented). Runs until `shutdown`.
async fn forward(
    listener: TcpListener,
    inner: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let (mut client, _) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted.context("accepting a Kafka client")?,
        };
        let (inner, stop) = (inner.clone(), shutdown.clone());
        tokio::spawn(async move {
            let Ok(mut broker) = tokio::net::TcpStream::connect(&inner).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = broker.set_nodelay(true);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut broker) => {}
            }
        });
    }
}
