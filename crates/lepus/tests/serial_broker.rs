//! Tests that change broker-wide state: a memory alarm (connection.blocked) and an operator
//! closing connections. They must not run beside other tests, so they are `#[ignore]`d here and
//! run one at a time by `scripts/test.sh` (`--ignored --test-threads=1`) after everything else.
//! Each puts the broker back as it was, even when it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::process::Command;
use std::time::Duration;

use lepus::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, Connection, ConnectionError,
    ConnectionEvent, Error, ReplyCode,
};
use support::unique;

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run rabbitmqctl {args:?}: {e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Restores the memory watermark when dropped, also when the test panics.
struct Watermark;

impl Watermark {
    fn alarm() -> Self {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0"]);
        Self
    }
}

impl Drop for Watermark {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["set_vm_memory_high_watermark", "0.4"])
            .output();
    }
}

async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<ConnectionEvent>,
) -> ConnectionEvent {
    tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("no connection event within 20 s")
        .unwrap()
}

#[tokio::test]
#[ignore = "changes broker-wide state; run serially by scripts/test.sh"]
async fn memory_alarm_blocks_publishers_until_cleared() {
    let mut o = support::options();
    o.blocked_publish_timeout(Some(Duration::from_millis(500)));
    let conn = Connection::connect_with(o).await.unwrap();
    let mut events = conn.events();
    let ch = conn.open_channel().await.unwrap();
    let q = support::exclusive_queue(&ch, "blocked").await;
    let props = BasicProperties::default();

    let alarm = Watermark::alarm();
    // RabbitMQ blocks a connection when it next publishes during an alarm.
    ch.basic_publish("", &q, BasicPublishOptions::default(), &props, "before")
        .await
        .unwrap();
    let ConnectionEvent::Blocked(reason) = next_event(&mut events).await else {
        panic!("expected Blocked");
    };
    assert!(reason.contains("memory"), "{reason}");
    assert!(conn.blocked().is_some());
    let err = ch
        .basic_publish(
            "",
            &q,
            BasicPublishOptions::default(),
            &props,
            "while blocked",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");

    drop(alarm);
    assert_eq!(next_event(&mut events).await, ConnectionEvent::Unblocked);
    assert!(conn.blocked().is_none());
    ch.basic_publish("", &q, BasicPublishOptions::default(), &props, "after")
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
#[ignore = "closes connections from the broker side; run serially by scripts/test.sh"]
async fn operator_closing_the_connection_fails_everything_with_320() {
    let name = unique("forced");
    let mut o = support::options();
    o.connection_name(name.clone());
    let conn = Connection::connect_with(o).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    let q = support::exclusive_queue(&ch, "forced-q").await;
    ch.confirm_select().await.unwrap();
    let mut consumer = ch
        .basic_consume(&q, "", BasicConsumeOptions::default())
        .await
        .unwrap();

    // Find our connection by its name and close it as an operator would.
    let mut pid = None;
    for _ in 0..50 {
        let listing = rabbitmqctl(&["list_connections", "pid", "client_properties"]);
        pid = listing
            .lines()
            .find(|l| l.contains(&name))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_string);
        if pid.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = pid.expect("connection listed by rabbitmqctl");
    rabbitmqctl(&["close_connection", &pid, "closed by the lepus test suite"]);

    let item = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
        .await
        .unwrap();
    let err = item.unwrap().unwrap_err();
    let Error::ConnectionClosed(ConnectionError::ServerClosed(close)) = &err else {
        panic!("{err}");
    };
    assert_eq!(close.code, ReplyCode::CONNECTION_FORCED);
    assert!(
        close.text.contains("closed by the lepus test suite"),
        "{}",
        close.text
    );
    assert_eq!(err.reply_code(), Some(ReplyCode::CONNECTION_FORCED));
    assert!(!conn.is_open());
    let after = ch.queue_declare_passive(&q).await.unwrap_err();
    assert!(after.is_connection_error(), "{after}");
}
