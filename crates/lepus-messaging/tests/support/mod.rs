//! Helpers shared by the messaging layer's broker-backed tests.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lepus::ConnectionOptions;

#[path = "../../../lepus/tests/support/proxy.rs"]
pub(crate) mod proxy;

/// The broker to test against: `LEPUS_TEST_URL`, or the local RabbitMQ.
pub(crate) fn url() -> String {
    std::env::var("LEPUS_TEST_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

pub(crate) fn options() -> ConnectionOptions {
    ConnectionOptions::from_uri(&url()).unwrap()
}

/// A client connection, failing with instructions when no broker answers.
pub(crate) async fn client() -> lepus::Connection {
    match lepus::Connection::connect(&url()).await {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot reach RabbitMQ at {} ({e}); start one with `scripts/ensure-broker.sh` \
             or set LEPUS_TEST_URL",
            url()
        ),
    }
}

/// A messaging connection.
pub(crate) async fn connect() -> lepus_messaging::Connection {
    lepus_messaging::Connection::new(client().await)
}

/// A name no other test (or earlier run) uses.
pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "lepus-test.msg.{prefix}.{}.{nanos}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A queue that the broker deletes when unused for a minute, so that failed runs leave
/// nothing behind; named uniquely.
pub(crate) fn scratch_queue(prefix: &str) -> lepus_messaging::Queue {
    lepus_messaging::Queue::new(unique(prefix)).expires(Duration::from_secs(60))
}

/// Waits until the queue holds `want` ready messages (the broker's count may lag deliveries
/// it has accepted), and returns the last count.
pub(crate) async fn depth_eventually(ch: &lepus::Channel, queue: &str, want: u32) -> u32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = ch.queue_declare_passive(queue).await.unwrap().message_count;
        if n == want || tokio::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next message of `consumer` within five seconds.
pub(crate) async fn next(consumer: &mut lepus_messaging::Consumer) -> lepus_messaging::Message {
    tokio::time::timeout(Duration::from_secs(5), consumer.recv())
        .await
        .expect("no message within 5 s")
        .expect("the consumer ended")
        .expect("the consumer failed")
}

/// Publishes `n` JSON numbers to `queue` with message ids `"{i}"`, every one confirmed.
pub(crate) async fn publish_numbered(
    conn: &lepus_messaging::Connection,
    queue: &lepus_messaging::Queue,
    n: u32,
) {
    let producer = conn.producer().build().unwrap();
    let mut confirms = Vec::new();
    for i in 0..n {
        confirms.push(
            producer
                .publish(&i)
                .to_queue(queue)
                .message_id(&i.to_string())
                .pipelined()
                .await
                .unwrap(),
        );
    }
    for c in confirms {
        c.await.unwrap();
    }
}

/// The Python side of the kombu interop tests: `tests/interop/kombu_peer.py` in the
/// environment `scripts/python-env.sh` makes.
pub(crate) mod kombu {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::OnceLock;

    use serde_json::Value;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// The interpreter of the test environment, made once per test process.
    pub(crate) fn python() -> &'static Path {
        static PYTHON: OnceLock<PathBuf> = OnceLock::new();
        PYTHON.get_or_init(|| {
            let out = Command::new("bash")
                .arg(repo().join("scripts/python-env.sh"))
                .output()
                .expect("run scripts/python-env.sh");
            assert!(
                out.status.success(),
                "scripts/python-env.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        })
    }

    /// Runs the kombu peer with `args` and returns its JSON lines.
    pub(crate) async fn peer(args: &[&str]) -> Vec<Value> {
        let script = repo().join("crates/lepus-messaging/tests/interop/kombu_peer.py");
        let mut cmd = tokio::process::Command::new(python());
        cmd.arg(script).args(args);
        let out = cmd.output().await.expect("run kombu_peer.py");
        assert!(
            out.status.success(),
            "kombu_peer.py {args:?} exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}
