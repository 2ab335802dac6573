//! Global behaviour: `--url` and `$AMQP_URL`, usage errors, connection failures, help.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use predicates::prelude::*;
use support::{bare, fails, lepus, require_broker, unique, url, TempQueue, UNREACHABLE};

#[test]
fn usage_errors_exit_2_before_connecting_with_nothing_on_stdout() {
    let cases: &[&[&str]] = &[
        &["publish", "--routing-key", "k", "--unknown-flag"],
        &["publish", "--routing-key", "k", "--property", "colour=red"],
        &[
            "publish",
            "--routing-key",
            "k",
            "--body",
            "x",
            "--file",
            "/etc/hostname",
        ],
        &["publish", "--routing-key", "k", "--count", "many"],
        &[
            "publish",
            "--routing-key",
            "k",
            "--headers-json",
            "{not json",
        ],
        &["publish", "--routing-key", "k", "--headers-json", "[1, 2]"],
        &[
            "publish",
            "--routing-key",
            "k",
            "--headers-json",
            "\"text\"",
        ],
        &[
            "publish",
            "--routing-key",
            "k",
            "--headers-json",
            r#"{"a": 1e999}"#,
        ],
        &["publish", "--routing-key", "k", "--priority", "300"],
        &["declare", "queue", "q", "--args-json", "42"],
        &[
            "declare",
            "queue",
            "q",
            "--args-json",
            r#"{"a": {"$bytes": "%%%"}}"#,
        ],
        &["declare", "exchange", "x"],
        &["consume", "--queue", "q", "--count", "0"],
        &["consume", "--queue", "q", "--output", "xml"],
        &["get", "--queue", "q", "--count", "-1"],
        &["perf", "--producers", "0"],
        &["perf", "--multi-ack", "10", "--prefetch", "5"],
        &["perf", "--size", "3"],
        &["frobnicate"],
        &[],
    ];
    for args in cases {
        // An unreachable URL: a usage error must be found before trying to connect.
        let line = fails(bare().arg("--url").arg(UNREACHABLE).args(*args), 2);
        assert!(!line.contains("connect"), "{args:?}: {line}");
    }
}

#[test]
fn an_invalid_url_is_a_usage_error() {
    let line = fails(bare().args(["--url", "http://nope", "purge", "q"]), 2);
    assert!(line.contains("invalid URL"), "{line}");
}

#[test]
fn an_invalid_amqp_url_says_it_came_from_the_variable() {
    let line = fails(
        bare().env("AMQP_URL", "http://nope").args(["purge", "q"]),
        2,
    );
    assert!(
        line.starts_with("lepus: error: invalid URL in $AMQP_URL: "),
        "{line}"
    );
    // From --url, the message does not blame the variable.
    let line = fails(
        bare()
            .env("AMQP_URL", "amqp://fine")
            .args(["--url", "http://nope", "purge", "q"]),
        2,
    );
    assert!(line.starts_with("lepus: error: invalid URL: "), "{line}");
}

#[test]
fn unreachable_host_exits_1_with_one_line() {
    let line = fails(bare().args(["--url", UNREACHABLE, "purge", "q"]), 1);
    assert!(line.contains("cannot connect to 127.0.0.1:1"), "{line}");
}

#[test]
fn several_brokers_are_tried_in_turn() {
    let q = TempQueue::new("failover");
    // A `;` list, and --url repeated: the unreachable broker is skipped either way.
    let list = format!("{UNREACHABLE};{}", url());
    bare()
        .args(["--url", &list, "purge", q.name()])
        .assert()
        .success();
    bare()
        .args(["purge", "--url", UNREACHABLE, "--url", &url(), q.name()])
        .assert()
        .success();
    // When none answers, one line names every failure.
    let line = fails(
        bare().args(["--url", UNREACHABLE, "--url", UNREACHABLE, "purge", "q"]),
        1,
    );
    assert!(
        line.starts_with("lepus: error: no broker could be reached: "),
        "{line}"
    );
    assert_eq!(
        line.matches("cannot connect to 127.0.0.1:1").count(),
        2,
        "{line}"
    );
}

#[test]
fn bad_credentials_mention_403_access_refused() {
    require_broker();
    let good = url();
    let bad = good.replacen("guest:guest@", "guest:wrong-password@", 1);
    assert_ne!(
        good, bad,
        "LEPUS_TEST_URL must hold guest:guest for this test"
    );
    let line = fails(bare().args(["--url", &bad, "purge", "q"]), 1);
    assert!(line.contains("403 ACCESS_REFUSED"), "{line}");
    assert!(!line.contains("wrong-password"), "{line}");
}

#[test]
fn unknown_vhost_names_the_broker_reply() {
    require_broker();
    let base = url();
    let Some((root, _vhost)) = base.rsplit_once('/') else {
        panic!("no vhost in {base}")
    };
    let line = fails(
        bare().args([
            "--url",
            &format!("{root}/{}", unique("vhost")),
            "purge",
            "q",
        ]),
        1,
    );
    assert!(line.contains("530 NOT_ALLOWED"), "{line}");
}

#[test]
fn url_is_accepted_before_or_after_the_subcommand() {
    let q = TempQueue::new("url-position");
    bare()
        .args(["--url", &url(), "purge", q.name()])
        .assert()
        .success()
        .stdout("0\n");
    bare()
        .args(["purge", q.name(), "--url", &url()])
        .assert()
        .success()
        .stdout("0\n");
    bare()
        .args(["declare", "queue", q.name(), "--passive", "--url", &url()])
        .assert()
        .success();
}

#[test]
fn url_flag_wins_over_amqp_url_which_wins_over_the_default() {
    let q = TempQueue::new("url-precedence");
    // --url wins over a broken $AMQP_URL.
    bare()
        .env("AMQP_URL", UNREACHABLE)
        .args(["--url", &url(), "purge", q.name()])
        .assert()
        .success();
    // $AMQP_URL is used without --url.
    bare()
        .env("AMQP_URL", url())
        .args(["purge", q.name()])
        .assert()
        .success();
    let line = fails(
        bare()
            .env("AMQP_URL", UNREACHABLE)
            .args(["purge", q.name()]),
        1,
    );
    assert!(line.contains("127.0.0.1:1"), "{line}");
    // --url wins even when it is the broken one.
    let line = fails(
        bare()
            .env("AMQP_URL", url())
            .args(["--url", UNREACHABLE, "purge", q.name()]),
        1,
    );
    assert!(line.contains("127.0.0.1:1"), "{line}");
}

#[test]
fn the_default_url_is_localhost() {
    require_broker();
    if !url().contains("@127.0.0.1:5672/") && !url().contains("@localhost:5672/") {
        return; // The test broker is elsewhere: the default cannot reach it.
    }
    bare()
        .args(["declare", "exchange", "amq.fanout", "--passive"])
        .assert()
        .success();
}

#[test]
fn help_and_version_go_to_stdout_with_exit_0() {
    bare()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("publish"))
        .stderr("");
    bare()
        .args(["publish", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("--routing-key"));
    bare()
        .arg("--version")
        .assert()
        .success()
        .stdout(predicate::str::starts_with("lepus "));
}

#[test]
fn connect_timeout_and_heartbeat_flags_are_accepted() {
    let q = TempQueue::new("global-flags");
    lepus()
        .args([
            "--connect-timeout",
            "5",
            "--heartbeat",
            "30",
            "-v",
            "purge",
            q.name(),
        ])
        .assert()
        .success()
        .stdout("0\n");
}

#[test]
fn a_refusal_names_method_channel_code_and_text() {
    require_broker();
    let name = unique("missing");
    let line = fails(lepus().args(["declare", "queue", &name, "--passive"]), 1);
    assert_eq!(
        line,
        format!(
            "lepus: error: queue.declare on channel 1 refused: 404 NOT_FOUND - no queue \
             '{name}' in vhost '/'"
        )
    );
}
