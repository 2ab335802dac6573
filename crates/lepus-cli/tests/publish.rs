//! publish: bodies, properties, headers, confirms, returns and refusals.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::io::Write;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::json;
use support::{bodies, fails, lepus, unique, TempExchange, TempQueue};

#[test]
fn publish_sets_no_property_unless_asked() {
    let q = TempQueue::new("no-props");
    q.publish(&["plain"]);
    let messages = q.drain();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["properties"], json!({}));
    assert_eq!(messages[0]["body"], "plain");
    assert_eq!(messages[0]["body_encoding"], "utf8");
}

#[test]
fn every_property_round_trips_through_json() {
    let q = TempQueue::new("props");
    lepus()
        .args(["publish", "--routing-key", q.name(), "--body", "b"])
        .args([
            "--content-type",
            "application/json",
            "--content-encoding",
            "identity",
        ])
        .args(["--persistent", "--priority", "4", "--expiration", "600000"])
        .args([
            "--property",
            "correlation_id=corr=1",
            "--property",
            "reply_to=replies",
        ])
        .args([
            "--property",
            "message_id=m-1",
            "--property",
            "timestamp=1700000000",
        ])
        .args(["--property", "type=order", "--property", "user_id=guest"])
        .args(["--property", "app_id=tests", "--property", "cluster_id=c1"])
        .assert()
        .success()
        .stdout("");
    let out = lepus().args(["get", "--queue", q.name()]).output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let m: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(
        m["properties"],
        json!({
            "content_type": "application/json",
            "content_encoding": "identity",
            "delivery_mode": 2,
            "priority": 4,
            "correlation_id": "corr=1",
            "reply_to": "replies",
            "expiration": "600000",
            "message_id": "m-1",
            "timestamp": 1_700_000_000,
            "type": "order",
            "user_id": "guest",
            "app_id": "tests",
            "cluster_id": "c1",
        })
    );
    // Keys in the documented order, properties in spec order.
    let keys = [
        "\"exchange\"",
        "\"routing_key\"",
        "\"redelivered\"",
        "\"delivery_tag\"",
        "\"message_count\"",
        "\"properties\"",
        "\"body\"",
        "\"body_encoding\"",
    ];
    let positions: Vec<usize> = keys.iter().map(|k| line.find(k).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{line}");
    assert!(line.contains(r#""delivery_mode":2,"priority":4"#), "{line}");
    assert!(line.contains(r#""timestamp":1700000000,"#), "{line}");
}

#[test]
fn headers_json_mapping_round_trips() {
    let q = TempQueue::new("headers-json");
    let headers = r#"{
        "int": 7, "big": 5000000000, "neg": -1, "double": 2.0, "exp": 1.5e3,
        "text": "héllo", "flag": true, "nothing": null,
        "bytes": {"$bytes": "AP8="}, "utf8bytes": {"$bytes": "YWJj"},
        "when": {"$timestamp": 1700000000},
        "dec": {"$decimal": "1.230"}, "neg_dec": {"$decimal": "-0.05"}, "int_dec": {"$decimal": "42"},
        "list": [1, "two", [3.0]], "nested": {"a": {"b": false}},
        "two_keys": {"$bytes": "x", "$other": 1}
    }"#;
    lepus()
        .args(["publish", "--routing-key", q.name(), "--body", "h"])
        .args([
            "--headers-json",
            headers,
            "--header",
            "text=overridden",
            "--header",
            "n=42",
        ])
        .assert()
        .success();
    let out = lepus().args(["get", "--queue", q.name()]).output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let m: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(
        m["properties"]["headers"],
        json!({
            "int": 7, "big": 5_000_000_000_i64, "neg": -1, "double": 2.0, "exp": 1500.0,
            "text": "overridden", "flag": true, "nothing": null,
            "bytes": {"$bytes": "AP8="}, "utf8bytes": {"$bytes": "YWJj"},
            "when": {"$timestamp": 1_700_000_000},
            "dec": {"$decimal": "1.230"}, "neg_dec": {"$decimal": "-0.05"},
            "int_dec": {"$decimal": "42"},
            "list": [1, "two", [3.0]], "nested": {"a": {"b": false}},
            "two_keys": {"$bytes": "x", "$other": 1},
            "n": "42",
        })
    );
    // Doubles keep a fraction in the text itself (serde_json's Value would hide `2` vs `2.0`).
    assert!(line.contains(r#""double":2.0"#), "{line}");
    assert!(line.contains(r#""exp":1500.0"#), "{line}");
    assert!(line.contains(r#""list":[1,"two",[3.0]]"#), "{line}");
    // Header order is kept: JSON entries first, then --header additions.
    assert!(line.find("\"int\"").unwrap() < line.find("\"nested\"").unwrap());
    assert!(line.find("\"nested\"").unwrap() < line.find("\"n\":\"42\"").unwrap());
}

#[test]
fn stdin_body_is_sent_byte_for_byte() {
    let q = TempQueue::new("stdin");
    let body: Vec<u8> = b"line one\nline two\n\n\xff\x00 binary\r\n".to_vec();
    lepus()
        .args(["publish", "--routing-key", q.name()])
        .write_stdin(body.clone())
        .assert()
        .success();
    let messages = q.drain();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["body_encoding"], "base64");
    let got = BASE64
        .decode(messages[0]["body"].as_str().unwrap())
        .unwrap();
    assert_eq!(got, body);
}

#[test]
fn text_body_keeps_its_trailing_newline() {
    let q = TempQueue::new("stdin-text");
    lepus()
        .args(["publish", "--routing-key", q.name()])
        .write_stdin("hello\n")
        .assert()
        .success();
    assert_eq!(bodies(&q.drain()), ["hello\n"]);
}

#[test]
fn stdin_from_a_pipe_gets_no_terminal_hint() {
    let q = TempQueue::new("stdin-pipe");
    for extra in [&[][..], &["--lines"]] {
        lepus()
            .args(["publish", "--routing-key", q.name()])
            .args(extra)
            .write_stdin("x\n")
            .assert()
            .success()
            .stderr("");
    }
    assert_eq!(bodies(&q.drain()), ["x\n", "x"]);
}

/// On a terminal (a pseudo-terminal from util-linux's `script`), publish says once, on
/// stderr, that it reads the body from stdin; with `--body` it says nothing.
#[cfg(target_os = "linux")]
#[test]
fn stdin_on_a_terminal_gets_one_hint_line() {
    use std::time::Duration;

    use support::{lepus_path, url, Running};

    const HINT: &str = "lepus: reading the message body from standard input (end with Ctrl-D)";
    const LINES_HINT: &str =
        "lepus: reading messages from standard input, one per line (end with Ctrl-D)";
    let limit = Duration::from_secs(15);
    let q = TempQueue::new("stdin-tty");
    // `script -c` runs the command on a new pseudo-terminal and copies its output (stdout and
    // stderr, with the echo of the input) to its own stdout.
    let on_terminal = |extra: &str| {
        let command = format!(
            "'{}' --url '{}' publish --routing-key '{}' {extra}",
            lepus_path().display(),
            url(),
            q.name()
        );
        let mut script = std::process::Command::new("script");
        script
            .args(["--quiet", "--return", "--command", &command, "/dev/null"])
            .env("SHELL", "/bin/sh")
            .env_remove("AMQP_URL");
        Running::spawn(script)
    };
    for (extra, hint) in [("", HINT), ("--lines", LINES_HINT)] {
        let mut lepus = on_terminal(extra);
        lepus.wait_for_stdout(limit, |out| out.contains(hint));
        // A line, then Ctrl-D at the start of the next: end of input.
        lepus.stdin().write_all(b"typed\n").unwrap();
        lepus.stdin().flush().unwrap();
        lepus.wait_for_stdout(limit, |out| out.contains("typed"));
        lepus.stdin().write_all(b"\x04").unwrap();
        lepus.stdin().flush().unwrap();
        let done = lepus.finish(limit);
        assert!(done.status.success(), "{extra}: {}", done.stdout);
        assert_eq!(done.stdout.matches("lepus: ").count(), 1, "{}", done.stdout);
    }
    let done = on_terminal("--body given").finish(limit);
    assert!(done.status.success(), "{}", done.stdout);
    assert!(!done.stdout.contains("lepus: "), "{}", done.stdout);
    assert_eq!(bodies(&q.drain()), ["typed\n", "typed", "given"]);
}

#[test]
fn routing_key_defaults_to_empty_for_fanout_exchanges() {
    let x = TempExchange::new("no-key", "fanout");
    let q = TempQueue::new("no-key");
    lepus()
        .args(["bind", "queue", q.name(), "--exchange", &x.0])
        .assert()
        .success();
    lepus()
        .args(["publish", "--exchange", &x.0, "--body", "fanned"])
        .assert()
        .success()
        .stderr("");
    let got = q.drain();
    assert_eq!(bodies(&got), ["fanned"]);
    assert_eq!(got[0]["routing_key"], "");
}

#[test]
fn empty_stdin_is_one_empty_message() {
    let q = TempQueue::new("stdin-empty");
    lepus()
        .args(["publish", "--routing-key", q.name()])
        .write_stdin("")
        .assert()
        .success();
    assert_eq!(bodies(&q.drain()), [""]);
}

#[test]
fn file_body_is_sent_byte_for_byte_and_output_body_prints_it_raw() {
    let q = TempQueue::new("file");
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let body: Vec<u8> = (0..=255u8).chain(b"\n\n".iter().copied()).collect();
    file.write_all(&body).unwrap();
    lepus()
        .args(["publish", "--routing-key", q.name(), "--file"])
        .arg(file.path())
        .assert()
        .success();
    let out = lepus()
        .args(["get", "--queue", q.name(), "--output", "body"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut expected = body.clone();
    expected.push(b'\n');
    assert_eq!(out.stdout, expected);
}

#[test]
fn missing_file_is_a_runtime_error() {
    let line = fails(
        lepus().args([
            "publish",
            "--routing-key",
            "k",
            "--file",
            "/nonexistent/lepus-test",
        ]),
        1,
    );
    assert!(line.contains("/nonexistent/lepus-test"), "{line}");
}

#[test]
fn body_with_file_is_a_usage_error() {
    let line = fails(
        lepus().args([
            "publish",
            "--routing-key",
            "k",
            "--body",
            "x",
            "--file",
            "/etc/hosts",
        ]),
        2,
    );
    assert!(line.contains("--file"), "{line}");
}

#[test]
fn lines_make_one_message_each_without_a_trailing_empty_one() {
    let q = TempQueue::new("lines");
    q.publish_lines("first\n\nthird\n");
    assert_eq!(bodies(&q.drain()), ["first", "", "third"]);
    q.publish_lines("no newline at end");
    assert_eq!(bodies(&q.drain()), ["no newline at end"]);
    q.publish_lines("");
    assert_eq!(q.depth(), 0);
}

#[test]
fn lines_from_body_and_count_repeats_each() {
    let q = TempQueue::new("lines-count");
    lepus()
        .args([
            "publish",
            "--routing-key",
            q.name(),
            "--body",
            "a\nb\n",
            "--lines",
        ])
        .args(["--count", "2"])
        .assert()
        .success();
    assert_eq!(bodies(&q.drain()), ["a", "a", "b", "b"]);
}

#[test]
fn publishing_to_a_missing_exchange_exits_1_even_without_confirm() {
    let exchange = unique("no-exchange");
    for count in ["1", "2000"] {
        let line = fails(
            lepus()
                .args(["publish", "--exchange", &exchange, "--routing-key", "k"])
                .args(["--body", "x", "--count", count]),
            1,
        );
        assert_eq!(
            line,
            format!(
                "lepus: error: basic.publish on channel 1 refused: 404 NOT_FOUND - no exchange \
                 '{exchange}' in vhost '/'"
            ),
            "--count {count}"
        );
    }
    let line = fails(
        lepus()
            .args(["publish", "--exchange", &exchange, "--routing-key", "k"])
            .args(["--body", "x", "--confirm"]),
        1,
    );
    assert!(line.contains("404 NOT_FOUND"), "{line}");
}

#[test]
fn mandatory_return_mentions_312_no_route() {
    let rk = unique("unroutable");
    for extra in [&[][..], &["--confirm"]] {
        let line = fails(
            lepus()
                .args([
                    "publish",
                    "--routing-key",
                    &rk,
                    "--body",
                    "x",
                    "--mandatory",
                ])
                .args(extra),
            1,
        );
        assert!(line.contains("312 NO_ROUTE"), "{line}");
        assert!(line.contains("1 of 1 messages returned"), "{line}");
    }
    // Without --mandatory an unroutable message is dropped silently.
    lepus()
        .args(["publish", "--routing-key", &rk, "--body", "x"])
        .assert()
        .success();
}

#[test]
fn confirm_waits_for_acks() {
    let q = TempQueue::new("confirm");
    lepus()
        .args([
            "publish",
            "--routing-key",
            q.name(),
            "--body",
            "c",
            "--count",
            "1500",
        ])
        .args(["--confirm", "--mandatory"])
        .assert()
        .success()
        .stdout("");
    assert_eq!(q.depth(), 1500);
}

#[test]
fn confirm_reports_nacks() {
    let q = TempQueue::named("nack");
    lepus()
        .args(["declare", "queue", q.name(), "--arg", "x-max-length=1"])
        .args(["--arg", "x-overflow=reject-publish"])
        .assert()
        .success();
    let line = fails(
        lepus()
            .args([
                "publish",
                "--routing-key",
                q.name(),
                "--body",
                "n",
                "--count",
                "3",
            ])
            .arg("--confirm"),
        1,
    );
    assert!(line.contains("2 of 3 messages nacked"), "{line}");
}

#[test]
fn publish_continues_the_trace_in_traceparent() {
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let q = TempQueue::new("trace");
    lepus()
        .env("TRACEPARENT", parent)
        .env("TRACESTATE", "vendor=1")
        .args(["publish", "--routing-key", q.name(), "--body", "traced"])
        .assert()
        .success();
    // An invalid one is ignored with a warning; the message goes out without it.
    lepus()
        .env("TRACEPARENT", "not-a-traceparent")
        .args(["publish", "--routing-key", q.name(), "--body", "untraced"])
        .assert()
        .success()
        .stderr(predicates::str::contains("ignoring TRACEPARENT"));
    let messages = q.drain();
    assert_eq!(messages[0]["properties"]["headers"]["traceparent"], parent);
    assert_eq!(
        messages[0]["properties"]["headers"]["tracestate"],
        "vendor=1"
    );
    assert_eq!(messages[1]["properties"], json!({}));
}
