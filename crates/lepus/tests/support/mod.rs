//! Helpers shared by the broker-backed tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use lepus::{Channel, Connection, ConnectionOptions};

/// The broker to test against: `LEPUS_TEST_URL`, or the local RabbitMQ.
pub(crate) fn url() -> String {
    std::env::var("LEPUS_TEST_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

pub(crate) fn options() -> ConnectionOptions {
    ConnectionOptions::from_uri(&url()).unwrap()
}

/// Connects, failing with instructions when no broker answers.
pub(crate) async fn connect() -> Connection {
    match Connection::connect(&url()).await {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot reach RabbitMQ at {} ({e}); start one with `scripts/ensure-broker.sh` \
             or set LEPUS_TEST_URL",
            url()
        ),
    }
}

pub(crate) async fn channel() -> (Connection, Channel) {
    let conn = connect().await;
    let ch = conn.open_channel().await.unwrap();
    (conn, ch)
}

/// Declares a queue only this connection may use; the broker deletes it with the connection.
pub(crate) async fn exclusive_queue(ch: &Channel, prefix: &str) -> String {
    let name = unique(prefix);
    ch.queue_declare(
        &name,
        lepus::QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    name
}

/// Publishes `body` to `queue` through the default exchange, without properties.
pub(crate) async fn publish(
    ch: &Channel,
    queue: &str,
    body: impl Into<lepus::bytes::Bytes>,
) -> lepus::PublisherConfirm {
    ch.basic_publish(
        "",
        queue,
        lepus::BasicPublishOptions::default(),
        &lepus::BasicProperties::default(),
        body,
    )
    .await
    .unwrap()
}

/// Fetches one message, retrying for up to a second while it is still on its way.
pub(crate) async fn get_eventually(ch: &Channel, queue: &str, no_ack: bool) -> lepus::GetMessage {
    for _ in 0..100 {
        if let Some(got) = ch.basic_get(queue, no_ack).await.unwrap() {
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no message arrived in {queue} within a second");
}

/// A name no other test (or earlier run) uses.
/// Publishes `n` copies of `body` to `queue` with at most `window` unconfirmed, calling
/// `each` after every publish, and checks that every one is acked.
pub(crate) async fn publish_confirmed(
    ch: &Channel,
    queue: &str,
    body: &lepus::bytes::Bytes,
    n: usize,
    window: usize,
    mut each: impl FnMut(),
) {
    let props = lepus::BasicProperties::default();
    let mut pending = std::collections::VecDeque::with_capacity(window);
    for _ in 0..n {
        if pending.len() == window {
            let confirm: lepus::PublisherConfirm = pending.pop_front().unwrap();
            assert!(confirm.await.unwrap().is_ack());
        }
        let confirm = ch
            .basic_publish(
                "",
                queue,
                lepus::BasicPublishOptions::default(),
                &props,
                body.clone(),
            )
            .await
            .unwrap();
        pending.push_back(confirm);
        each();
    }
    for confirm in pending {
        assert!(confirm.await.unwrap().is_ack());
    }
}

pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "lepus-test.{prefix}.{}.{nanos}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) mod broker;
pub(crate) mod counting;
pub(crate) mod fake_broker;
pub(crate) mod proxy;
pub(crate) mod tls_proxy;
pub(crate) mod zero_loss;

/// Waits until `queue` holds `want` messages, and returns the last count seen after at most
/// `patience`. Messages published without confirms may be counted late even after the
/// connection closed cleanly: RabbitMQ's queue process answers a passive declare before the
/// deliveries already waiting in its mailbox.
pub(crate) async fn depth_eventually(
    ch: &lepus::Channel,
    queue: &str,
    want: u32,
    patience: std::time::Duration,
) -> u32 {
    let started = std::time::Instant::now();
    loop {
        let depth = ch.queue_declare_passive(queue).await.unwrap().message_count;
        if depth == want || started.elapsed() > patience {
            return depth;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
