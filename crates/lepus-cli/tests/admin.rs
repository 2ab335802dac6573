//! declare, bind, unbind, delete, purge.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use support::{bodies, fails, lepus, require_broker, unique, TempExchange, TempQueue};

#[test]
fn declare_queue_prints_name_and_counts() {
    let q = TempQueue::named("declare");
    lepus()
        .args(["declare", "queue", q.name()])
        .assert()
        .success()
        .stdout(format!("{}\t0\t0\n", q.name()));
    q.publish(&["a", "b"]);
    lepus()
        .args(["declare", "queue", q.name(), "--passive"])
        .assert()
        .success()
        .stdout(format!("{}\t2\t0\n", q.name()));
}

#[test]
fn declare_queue_flags_are_sent() {
    let q = TempQueue::named("declare-flags");
    lepus()
        .args(["declare", "queue", q.name(), "--durable", "--auto-delete"])
        .assert()
        .success();
    // Declaring again with other settings is refused with 406.
    let line = fails(lepus().args(["declare", "queue", q.name()]), 1);
    assert!(
        line.contains("queue.declare on channel 1 refused: 406 PRECONDITION_FAILED"),
        "{line}"
    );
    // An exclusive queue lives as long as the connection: gone once lepus exits.
    let ex = TempQueue::named("exclusive");
    lepus()
        .args(["declare", "queue", ex.name(), "--exclusive"])
        .assert()
        .success();
    let line = fails(
        lepus().args(["declare", "queue", ex.name(), "--passive"]),
        1,
    );
    assert!(line.contains("404 NOT_FOUND"), "{line}");
}

#[test]
fn queue_arguments_are_typed() {
    let q = TempQueue::named("args");
    lepus()
        .args(["declare", "queue", q.name(), "--arg", "x-max-length=2"])
        .args(["--args-json", r#"{"x-message-ttl": 600000}"#])
        .assert()
        .success();
    q.publish(&["1", "2", "3"]);
    // The length limit (an integer, not a string) dropped the oldest.
    assert_eq!(bodies(&q.drain()), ["2", "3"]);
    // A string where the broker wants an integer is refused.
    let bad = TempQueue::named("args-bad");
    let line = fails(
        lepus().args(["declare", "queue", bad.name(), "--arg", "x-max-length=many"]),
        1,
    );
    assert!(line.contains("406 PRECONDITION_FAILED"), "{line}");
}

#[test]
fn exchanges_bindings_and_routing() {
    let x = TempExchange::new("topic", "topic");
    let q = TempQueue::new("bound");
    lepus()
        .args([
            "bind",
            "queue",
            q.name(),
            "--exchange",
            &x.0,
            "--routing-key",
            "a.*",
        ])
        .assert()
        .success()
        .stdout("");
    lepus()
        .args([
            "publish",
            "--exchange",
            &x.0,
            "--routing-key",
            "a.b",
            "--body",
            "routed",
        ])
        .assert()
        .success();
    assert_eq!(bodies(&q.drain()), ["routed"]);

    lepus()
        .args([
            "unbind",
            "queue",
            q.name(),
            "--exchange",
            &x.0,
            "--routing-key",
            "a.*",
        ])
        .assert()
        .success();
    let line = fails(
        lepus()
            .args(["publish", "--exchange", &x.0, "--routing-key", "a.b"])
            .args(["--body", "lost", "--mandatory"]),
        1,
    );
    assert!(line.contains("312 NO_ROUTE"), "{line}");
    assert_eq!(q.depth(), 0);
}

#[test]
fn exchange_to_exchange_bindings() {
    let source = TempExchange::new("e2e-src", "fanout");
    let dest = TempExchange::new("e2e-dst", "direct");
    let q = TempQueue::new("e2e");
    lepus()
        .args([
            "bind",
            "queue",
            q.name(),
            "--exchange",
            &dest.0,
            "--routing-key",
            "k",
        ])
        .assert()
        .success();
    lepus()
        .args([
            "bind",
            "exchange",
            &dest.0,
            "--source",
            &source.0,
            "--routing-key",
            "ignored",
        ])
        .assert()
        .success();
    lepus()
        .args([
            "publish",
            "--exchange",
            &source.0,
            "--routing-key",
            "k",
            "--body",
            "via",
        ])
        .assert()
        .success();
    assert_eq!(bodies(&q.drain()), ["via"]);
    lepus()
        .args([
            "unbind",
            "exchange",
            &dest.0,
            "--source",
            &source.0,
            "--routing-key",
            "ignored",
        ])
        .assert()
        .success();
    lepus()
        .args([
            "publish",
            "--exchange",
            &source.0,
            "--routing-key",
            "k",
            "--body",
            "x",
        ])
        .assert()
        .success();
    assert_eq!(q.depth(), 0);
}

#[test]
fn headers_exchange_binding_arguments() {
    let x = TempExchange::new("headers", "headers");
    let q = TempQueue::new("headers");
    lepus()
        .args(["bind", "queue", q.name(), "--exchange", &x.0])
        .args(["--args-json", r#"{"x-match": "all", "kind": "order"}"#])
        .assert()
        .success();
    for kind in ["order", "invoice"] {
        lepus()
            .args([
                "publish",
                "--exchange",
                &x.0,
                "--routing-key",
                "",
                "--body",
                kind,
            ])
            .args(["--header", &format!("kind={kind}")])
            .assert()
            .success();
    }
    assert_eq!(bodies(&q.drain()), ["order"]);
}

#[test]
fn declare_exchange_passive_and_missing() {
    let x = TempExchange::new("passive", "fanout");
    lepus()
        .args(["declare", "exchange", &x.0, "--passive"])
        .assert()
        .success()
        .stdout("");
    let missing = unique("no-exchange");
    let line = fails(
        lepus().args(["declare", "exchange", &missing, "--passive"]),
        1,
    );
    assert_eq!(
        line,
        format!(
            "lepus: error: exchange.declare on channel 1 refused: 404 NOT_FOUND - no exchange \
             '{missing}' in vhost '/'"
        )
    );
}

#[test]
fn delete_queue_prints_count_and_honours_if_empty() {
    let q = TempQueue::new("delete");
    q.publish(&["a", "b", "c"]);
    let line = fails(lepus().args(["delete", "queue", q.name(), "--if-empty"]), 1);
    assert!(line.contains("406 PRECONDITION_FAILED"), "{line}");
    lepus()
        .args(["delete", "queue", q.name(), "--if-unused"])
        .assert()
        .success()
        .stdout("3\n");
    let line = fails(lepus().args(["declare", "queue", q.name(), "--passive"]), 1);
    assert!(line.contains("404 NOT_FOUND"), "{line}");
}

#[test]
fn delete_exchange_if_unused() {
    let x = TempExchange::new("delete-x", "direct");
    let q = TempQueue::new("delete-x");
    lepus()
        .args(["bind", "queue", q.name(), "--exchange", &x.0])
        .assert()
        .success();
    // A queue is bound to it: in use.
    let line = fails(lepus().args(["delete", "exchange", &x.0, "--if-unused"]), 1);
    assert!(line.contains("406 PRECONDITION_FAILED"), "{line}");
    lepus()
        .args(["delete", "exchange", &x.0])
        .assert()
        .success()
        .stdout("");
    let line = fails(lepus().args(["declare", "exchange", &x.0, "--passive"]), 1);
    assert!(line.contains("404 NOT_FOUND"), "{line}");
}

#[test]
fn purge_prints_count_and_missing_queue_is_404() {
    let q = TempQueue::new("purge");
    q.publish(&["a", "b"]);
    lepus()
        .args(["purge", q.name()])
        .assert()
        .success()
        .stdout("2\n");
    assert_eq!(q.depth(), 0);
    require_broker();
    let missing = unique("no-queue");
    let line = fails(lepus().args(["purge", &missing]), 1);
    assert_eq!(
        line,
        format!(
            "lepus: error: queue.purge on channel 1 refused: 404 NOT_FOUND - no queue \
             '{missing}' in vhost '/'"
        )
    );
}

#[test]
fn passive_declares_accept_and_ignore_the_other_flags() {
    // A plain queue, checked with flags it was not declared with: RabbitMQ ignores them.
    let q = TempQueue::new("passive-flags");
    q.publish(&["a"]);
    lepus()
        .args([
            "declare",
            "queue",
            q.name(),
            "--durable",
            "--exclusive",
            "--auto-delete",
        ])
        .args(["--arg", "x-max-length=1", "--passive"])
        .assert()
        .success()
        .stdout(format!("{}\t1\t0\n", q.name()));
    let missing = unique("no-queue");
    let line = fails(
        lepus().args(["declare", "queue", &missing, "--durable", "--passive"]),
        1,
    );
    assert!(line.contains("404 NOT_FOUND"), "{line}");

    let x = TempExchange::new("passive-flags", "fanout");
    lepus()
        .args([
            "declare",
            "exchange",
            &x.0,
            "--type",
            "direct",
            "--durable",
            "--internal",
        ])
        .args([
            "--args-json",
            r#"{"alternate-exchange": "elsewhere"}"#,
            "--passive",
        ])
        .assert()
        .success()
        .stdout("");
    let line = fails(
        lepus().args([
            "declare",
            "exchange",
            &missing,
            "--type",
            "topic",
            "--passive",
        ]),
        1,
    );
    assert!(line.contains("404 NOT_FOUND"), "{line}");
}

#[test]
fn purge_takes_the_queue_with_queue_too() {
    let q = TempQueue::new("purge-option");
    q.publish(&["a", "b", "c"]);
    lepus()
        .args(["purge", "--queue", q.name(), "--rpc-timeout", "120"])
        .assert()
        .success()
        .stdout("3\n");
    assert_eq!(q.depth(), 0);
    let line = fails(lepus().args(["purge", q.name(), "--queue", q.name()]), 2);
    assert!(line.contains("--queue"), "{line}");
    let line = fails(lepus().args(["purge"]), 2);
    assert!(line.contains("NAME") || line.contains("--queue"), "{line}");
}
