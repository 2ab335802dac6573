//! Helpers for the CLI tests: the broker URL, unique names, running `lepus`, cleanup.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub(crate) mod fake_broker;

use std::io::Read;
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use assert_cmd::Command;

/// The broker to test against: `LEPUS_TEST_URL`, or the local RabbitMQ.
pub(crate) fn url() -> String {
    std::env::var("LEPUS_TEST_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// A URL nothing listens on.
pub(crate) const UNREACHABLE: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

/// `lepus` with `--url` set to the test broker and `$AMQP_URL` cleared.
pub(crate) fn lepus() -> Command {
    let mut cmd = bare();
    cmd.arg("--url").arg(url());
    cmd
}

/// The path of the `lepus` binary under test.
pub(crate) fn lepus_path() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("lepus")
}

/// `lepus` without `--url`, `$AMQP_URL` cleared, and no trace context from the environment
/// the tests run in.
pub(crate) fn bare() -> Command {
    let mut cmd = Command::cargo_bin("lepus").unwrap();
    cmd.env_remove("AMQP_URL")
        .env_remove("TRACEPARENT")
        .env_remove("TRACESTATE")
        .timeout(Duration::from_secs(60));
    cmd
}

/// A name no other test (or earlier run) uses.
pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "lepus-cli-test.{prefix}.{}.{nanos}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fails with instructions when no broker answers.
pub(crate) fn require_broker() {
    let out = lepus()
        .args(["declare", "exchange", "amq.direct", "--passive"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cannot reach RabbitMQ at {} ({}); start one with `scripts/ensure-broker.sh` or set \
         LEPUS_TEST_URL",
        url(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A queue declared for one test and deleted when dropped.
pub(crate) struct TempQueue(pub(crate) String);

impl TempQueue {
    pub(crate) fn new(prefix: &str) -> Self {
        require_broker();
        let name = unique(prefix);
        lepus().args(["declare", "queue", &name]).assert().success();
        Self(name)
    }

    /// A name only: created by the test itself (or never), deleted on drop.
    pub(crate) fn named(prefix: &str) -> Self {
        Self(unique(prefix))
    }

    pub(crate) fn name(&self) -> &str {
        &self.0
    }

    /// Publishes each body with `--body`.
    pub(crate) fn publish(&self, bodies: &[&str]) {
        for body in bodies {
            lepus()
                .args(["publish", "--routing-key", &self.0, "--body", body])
                .assert()
                .success();
        }
    }

    /// Publishes one message per line through stdin.
    pub(crate) fn publish_lines(&self, lines: &str) {
        lepus()
            .args(["publish", "--routing-key", &self.0, "--lines"])
            .write_stdin(lines.to_string())
            .assert()
            .success();
    }

    /// Ready messages now.
    pub(crate) fn depth(&self) -> u64 {
        let out = lepus()
            .args(["declare", "queue", &self.0, "--passive"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).unwrap();
        line.split('\t').nth(1).unwrap().trim().parse().unwrap()
    }

    /// Takes every message off the queue with `get` and returns them as JSON values.
    pub(crate) fn drain(&self) -> Vec<serde_json::Value> {
        lepus_lines(&["get", "--queue", &self.0, "--count", "100000"])
    }
}

/// Runs `lepus` with `args`, checks that it succeeded, and returns its JSON output lines.
pub(crate) fn lepus_lines(args: &[&str]) -> Vec<serde_json::Value> {
    let out = lepus().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "lepus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out.stdout)
}

impl Drop for TempQueue {
    fn drop(&mut self) {
        let _ = lepus().args(["delete", "queue", &self.0]).output();
    }
}

/// An exchange deleted when dropped.
pub(crate) struct TempExchange(pub(crate) String);

impl TempExchange {
    pub(crate) fn new(prefix: &str, kind: &str) -> Self {
        require_broker();
        let name = unique(prefix);
        lepus()
            .args(["declare", "exchange", &name, "--type", kind])
            .assert()
            .success();
        Self(name)
    }
}

impl Drop for TempExchange {
    fn drop(&mut self) {
        let _ = lepus().args(["delete", "exchange", &self.0]).output();
    }
}

/// Each stdout line parsed as JSON.
pub(crate) fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8(stdout.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The bodies of JSON messages.
pub(crate) fn bodies(messages: &[serde_json::Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect()
}

/// Asserts a failed run printed exactly one error line on stderr and returns it.
pub(crate) fn one_error_line(stderr: &[u8]) -> String {
    let text = String::from_utf8(stderr.to_vec()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got: {text:?}");
    assert!(
        lines[0].starts_with("lepus: error: "),
        "error line does not start with 'lepus: error: ': {text:?}"
    );
    assert!(!text.contains("panicked"), "{text}");
    lines[0].to_string()
}

/// Runs the command, expects `code`, nothing on stdout when it fails, one error line; returns
/// that line.
pub(crate) fn fails(cmd: &mut Command, code: i32) -> String {
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {} stderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "stdout not empty: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    one_error_line(&out.stderr)
}

/// A `lepus` process running in the background, its output collected as it comes, killed when
/// dropped: for tests that act while it runs (send a signal, write more input).
pub(crate) struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

/// How a [`Running`] process ended.
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Running {
    /// Starts `lepus --url <test broker> <args>` with stdin, stdout and stderr piped.
    pub(crate) fn start(args: &[&str]) -> Self {
        Self::start_with_url(&url(), args)
    }

    /// Starts `lepus --url <url> <args>` with stdin, stdout and stderr piped.
    pub(crate) fn start_with_url(url: &str, args: &[&str]) -> Self {
        let mut cmd = std::process::Command::new(lepus_path());
        cmd.env_remove("AMQP_URL").arg("--url").arg(url).args(args);
        Self::spawn(cmd)
    }

    /// Starts any command with stdin, stdout and stderr piped.
    pub(crate) fn spawn(mut cmd: std::process::Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), Arc::clone(&stdout)),
            collect(child.stderr.take().unwrap(), Arc::clone(&stderr)),
        ];
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// The process's stdin (dropping the `Running` closes it).
    pub(crate) fn stdin(&mut self) -> &mut ChildStdin {
        self.child.stdin.as_mut().unwrap()
    }

    /// Closes stdin.
    pub(crate) fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Waits until stdout satisfies `done` (at most `limit`); returns it.
    pub(crate) fn wait_for_stdout(&self, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        wait_for(&self.stdout, limit, done, "stdout")
    }

    /// Waits until stderr satisfies `done` (at most `limit`); returns it.
    pub(crate) fn wait_for_stderr(&self, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        wait_for(&self.stderr, limit, done, "stderr")
    }

    /// Sends a signal (`TERM`, `INT`) with `kill`.
    pub(crate) fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits for the process to exit; kills it and fails the test when it takes longer than
    /// `limit`.
    pub(crate) fn finish(mut self, limit: Duration) -> Finished {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "lepus still running after {limit:?}; killed. stdout: {:?} stderr: {:?}",
                    text(&self.stdout),
                    text(&self.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        Finished {
            status,
            stdout: text(&self.stdout),
            stderr: text(&self.stderr),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    })
}

fn text(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

fn wait_for(
    buf: &Mutex<Vec<u8>>,
    limit: Duration,
    done: impl Fn(&str) -> bool,
    what: &str,
) -> String {
    let started = Instant::now();
    loop {
        let now = text(buf);
        if done(&now) {
            return now;
        }
        assert!(
            started.elapsed() < limit,
            "{what} not as expected after {limit:?}: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` until it holds, for at most `limit`.
pub(crate) fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "not after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
