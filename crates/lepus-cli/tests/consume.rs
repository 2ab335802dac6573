//! consume and get.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use support::{bodies, fails, json_lines, lepus, require_broker, unique, TempQueue};

fn numbered(n: usize) -> String {
    (1..=n).map(|i| format!("m{i}\n")).collect()
}

fn expected(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

/// Runs `consume` with extra args and returns the printed messages.
fn consume(q: &TempQueue, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["consume", "--queue", q.name()];
    args.extend_from_slice(extra);
    support::lepus_lines(&args)
}

#[test]
fn consume_count_never_takes_more_than_n() {
    for (prefetch, extra) in [
        ("100", &[][..]),
        ("1", &[][..]),
        ("2", &[][..]),
        ("0", &[][..]),
        ("100", &["--no-ack"][..]),
        ("3", &["--reject"][..]),
    ] {
        let q = TempQueue::new("count");
        q.publish_lines(&numbered(10));
        let mut args = vec!["--count", "4", "--prefetch", prefetch];
        args.extend_from_slice(extra);
        let got = consume(&q, &args);
        assert_eq!(bodies(&got), expected(1..=4), "{args:?}");
        assert!(got.iter().all(|m| m["redelivered"] == false), "{args:?}");
        assert!(got.iter().all(|m| m.get("message_count").is_none()));
        // The rest were never delivered: none is marked redelivered, order is intact.
        let rest = q.drain();
        assert_eq!(bodies(&rest), expected(5..=10), "{args:?}");
        assert!(
            rest.iter().all(|m| m["redelivered"] == false),
            "{args:?}: a message beyond the 4th was delivered and requeued: {rest:?}"
        );
    }
}

#[test]
fn consume_acks_after_printing() {
    let q = TempQueue::new("acks");
    q.publish_lines(&numbered(3));
    let got = consume(&q, &["--count", "3"]);
    assert_eq!(bodies(&got), expected(1..=3));
    assert_eq!(q.depth(), 0);
}

#[test]
fn consume_requeue_shows_each_once_and_puts_all_back_in_order() {
    let q = TempQueue::new("requeue");
    q.publish_lines(&numbered(6));
    let got = consume(&q, &["--count", "4", "--requeue", "--prefetch", "1"]);
    assert_eq!(bodies(&got), expected(1..=4));
    let all = q.drain();
    assert_eq!(bodies(&all), expected(1..=6));
    // Only the four shown were delivered (and so are marked redelivered).
    let redelivered: Vec<bool> = all.iter().map(|m| m["redelivered"] == true).collect();
    assert_eq!(redelivered, [true, true, true, true, false, false]);
}

#[test]
fn consume_requeue_without_count_stops_at_the_prefetch_window() {
    let q = TempQueue::new("requeue-window");
    q.publish_lines(&numbered(5));
    let got = consume(
        &q,
        &["--requeue", "--prefetch", "3", "--idle-timeout", "10"],
    );
    assert_eq!(bodies(&got), expected(1..=3));
    assert_eq!(bodies(&q.drain()), expected(1..=5));
}

#[test]
fn consume_reject_drops_messages() {
    let q = TempQueue::new("reject");
    q.publish_lines(&numbered(3));
    let got = consume(&q, &["--reject", "--idle-timeout", "0.5"]);
    assert_eq!(bodies(&got), expected(1..=3));
    assert_eq!(q.depth(), 0);
}

#[test]
fn consume_no_ack_without_count() {
    let q = TempQueue::new("no-ack");
    q.publish_lines(&numbered(5));
    let got = consume(&q, &["--no-ack", "--idle-timeout", "0.5"]);
    assert_eq!(bodies(&got), expected(1..=5));
    assert_eq!(q.depth(), 0);
}

#[test]
fn consume_idle_timeout_exits_0() {
    let q = TempQueue::new("idle");
    let started = std::time::Instant::now();
    lepus()
        .args(["consume", "--queue", q.name(), "--idle-timeout", "0.3"])
        .assert()
        .success()
        .stdout("");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // Messages that arrive keep it going until they stop.
    q.publish_lines(&numbered(2));
    let got = consume(&q, &["--idle-timeout", "0.3"]);
    assert_eq!(bodies(&got), expected(1..=2));
}

#[test]
fn consume_waits_for_messages_published_later() {
    let q = TempQueue::new("later");
    let name = q.name().to_string();
    let publisher = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        support::lepus()
            .args(["publish", "--routing-key", &name, "--body", "late"])
            .assert()
            .success();
    });
    let got = consume(&q, &["--count", "1"]);
    publisher.join().unwrap();
    assert_eq!(bodies(&got), ["late"]);
}

#[test]
fn consume_output_body() {
    let q = TempQueue::new("body");
    q.publish_lines("one\ntwo\n");
    lepus()
        .args([
            "consume",
            "--queue",
            q.name(),
            "--count",
            "2",
            "--output",
            "body",
        ])
        .assert()
        .success()
        .stdout("one\ntwo\n");
}

#[test]
fn consume_json_fields() {
    let q = TempQueue::new("fields");
    q.publish(&["x"]);
    let got = consume(&q, &["--count", "1"]);
    let m = &got[0];
    assert_eq!(m["exchange"], "");
    assert_eq!(m["routing_key"], q.name());
    assert_eq!(m["redelivered"], false);
    assert_eq!(m["delivery_tag"], 1);
    assert_eq!(m["body"], "x");
    assert_eq!(m["body_encoding"], "utf8");
    assert_eq!(m["properties"], serde_json::json!({}));
}

#[test]
fn consume_missing_queue_is_404() {
    require_broker();
    let missing = unique("no-queue");
    let line = fails(
        lepus().args(["consume", "--queue", &missing, "--count", "1"]),
        1,
    );
    assert_eq!(
        line,
        format!(
            "lepus: error: basic.consume on channel 1 refused: 404 NOT_FOUND - no queue \
             '{missing}' in vhost '/'"
        )
    );
}

#[test]
fn consume_ends_with_an_error_when_the_queue_is_deleted() {
    let q = TempQueue::new("deleted");
    let name = q.name().to_string();
    let deleter = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(700));
        support::lepus()
            .args(["delete", "queue", &name])
            .assert()
            .success();
    });
    let out = lepus()
        .args(["consume", "--queue", q.name()])
        .output()
        .unwrap();
    deleter.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let line = support::one_error_line(&out.stderr);
    assert!(line.contains("cancelled by the broker"), "{line}");
}

#[test]
fn get_requeue_keeps_order_and_counts() {
    let q = TempQueue::new("get-requeue");
    q.publish_lines(&numbered(5));
    let out = lepus()
        .args(["get", "--queue", q.name(), "--count", "3", "--requeue"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let got = json_lines(&out.stdout);
    assert_eq!(bodies(&got), expected(1..=3));
    let counts: Vec<u64> = got
        .iter()
        .map(|m| m["message_count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [4, 3, 2]);
    // All back, in their original order.
    let all = q.drain();
    assert_eq!(bodies(&all), expected(1..=5));
    let counts: Vec<u64> = all
        .iter()
        .map(|m| m["message_count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [4, 3, 2, 1, 0]);
}

#[test]
fn get_acks_and_stops_when_empty() {
    let q = TempQueue::new("get");
    q.publish_lines(&numbered(2));
    let out = lepus()
        .args(["get", "--queue", q.name(), "--count", "5"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(bodies(&json_lines(&out.stdout)), expected(1..=2));
    assert_eq!(q.depth(), 0);
    // Empty queue: exit 0, nothing printed.
    lepus()
        .args(["get", "--queue", q.name()])
        .assert()
        .success()
        .stdout("")
        .stderr("");
}

#[test]
fn get_missing_queue_is_404() {
    require_broker();
    let missing = unique("no-queue");
    let line = fails(lepus().args(["get", "--queue", &missing]), 1);
    assert_eq!(
        line,
        format!(
            "lepus: error: basic.get on channel 1 refused: 404 NOT_FOUND - no queue \
             '{missing}' in vhost '/'"
        )
    );
}

#[test]
fn get_output_body() {
    let q = TempQueue::new("get-body");
    q.publish_lines("α\nβ\n");
    lepus()
        .args([
            "get",
            "--queue",
            q.name(),
            "--count",
            "2",
            "--output",
            "body",
        ])
        .assert()
        .success()
        .stdout("α\nβ\n");
}
