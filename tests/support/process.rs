//! Child processes of a test: the `sluice` binary under test ([`SluiceProcess`]), and
//! what every peer process needs: a free port, a log file in its own temp dir (its tail
//! printed when a test panics while the process runs), being killed and reaped on drop,
//! and polling an HTTP endpoint until it answers.

use std::ffi::OsStr;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How much of a child's log is printed when a test panics while it runs.
pub(super) const LOG_TAIL_ON_PANIC: usize = 64 * 1024;

/// A TCP port on 127.0.0.1 that was free a moment ago. Another process can take it
/// before the caller binds it; [`super::tansu::Tansu::start`] retries on a new port when
/// that happens.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0 always yields a port")
        .port()
}

/// The Python interpreter for helper processes: `$SLUICE_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The last `max` bytes of a file, lossily decoded; empty if it cannot be read.
pub(super) fn tail(path: &Path, max: usize) -> String {
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
pub(super) fn log_file(name: &str) -> (TempDir, PathBuf, Stdio, Stdio) {
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
pub(super) fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `url` until it answers 2xx, `timeout` passes, or `alive` reports the server is
/// gone. Returns the last failure on error.
pub(super) async fn poll_http_ok(
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
