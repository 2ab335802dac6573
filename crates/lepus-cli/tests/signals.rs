//! SIGTERM and SIGINT sent to a running `lepus` (consume, publish, perf), against the broker.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::io::Write;
use std::time::Duration;

use support::{bodies, eventually, json_lines, require_broker, Running, TempQueue};

/// Long enough for a slow shared machine, short of a hang.
const LIMIT: Duration = Duration::from_secs(15);

#[test]
fn consume_stops_cleanly_on_sigterm_and_sigint() {
    for signal in ["TERM", "INT"] {
        let q = TempQueue::new("sig-consume");
        q.publish_lines("a\nb\nc\n");
        let lepus = Running::start(&["consume", "--queue", q.name()]);
        lepus.wait_for_stdout(LIMIT, |out| out.lines().count() == 3);
        lepus.signal(signal);
        let done = lepus.finish(LIMIT);
        assert_eq!(done.status.code(), Some(0), "SIG{signal}: {}", done.stderr);
        assert_eq!(done.stderr, "", "SIG{signal}");
        let got = json_lines(done.stdout.as_bytes());
        assert_eq!(bodies(&got), ["a", "b", "c"], "SIG{signal}");
        // Acked before exiting: nothing goes back to the queue.
        assert_eq!(q.depth(), 0, "SIG{signal}");
    }
}

#[test]
fn publish_stops_reading_and_reports_what_was_confirmed() {
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let q = TempQueue::new("sig-publish");
        let mut lepus = Running::start(&["publish", "--routing-key", q.name(), "--lines"]);
        // stdin stays open: publish is waiting for more lines when the signal comes.
        lepus.stdin().write_all(b"one\ntwo\n").unwrap();
        lepus.stdin().flush().unwrap();
        eventually(LIMIT, "two messages in the queue", || q.depth() == 2);
        lepus.signal(signal);
        let done = lepus.finish(LIMIT);
        assert_eq!(
            done.status.code(),
            Some(code),
            "SIG{signal}: {}",
            done.stderr
        );
        assert_eq!(
            done.stderr,
            format!("lepus: stopped by SIG{signal}: 2 messages published, 2 confirmed\n")
        );
        assert_eq!(done.stdout, "");
        assert_eq!(bodies(&q.drain()), ["one", "two"], "SIG{signal}");
    }
}

/// Stopped in the middle of a long `--count` run with `--confirm`: every message published is
/// confirmed before lepus exits, and is in the queue.
#[test]
fn publish_count_stopped_by_sigterm_waits_for_its_confirms() {
    let q = TempQueue::new("sig-publish-count");
    let lepus = Running::start(&[
        "publish",
        "--routing-key",
        q.name(),
        "--body",
        "x",
        "--count",
        "100000000",
        "--confirm",
    ]);
    eventually(LIMIT, "messages in the queue", || q.depth() > 0);
    lepus.signal("TERM");
    let done = lepus.finish(LIMIT);
    assert_eq!(done.status.code(), Some(143), "{}", done.stderr);
    let line = done
        .stderr
        .strip_prefix("lepus: stopped by SIGTERM: ")
        .and_then(|l| l.strip_suffix(" confirmed\n"))
        .unwrap_or_else(|| panic!("{:?}", done.stderr));
    let (published, confirmed) = line.split_once(" messages published, ").unwrap();
    let published: u64 = published.parse().unwrap();
    assert_eq!(confirmed, published.to_string(), "{line}");
    assert!(published > 0 && published < 100_000_000, "{line}");
    assert_eq!(q.depth(), published);
}

#[test]
fn perf_prints_its_summary_on_sigterm() {
    require_broker();
    let lepus = Running::start(&["perf", "--json", "--rate", "200"]);
    // The first live line comes after a second of publishing.
    lepus.wait_for_stderr(LIMIT, |err| err.contains("sent"));
    lepus.signal("TERM");
    let done = lepus.finish(LIMIT);
    assert_eq!(done.status.code(), Some(0), "{}", done.stderr);
    let lines = json_lines(done.stdout.as_bytes());
    assert_eq!(lines.len(), 1, "{}", done.stdout);
    let published = lines[0]["published"].as_u64().unwrap();
    assert!(published > 0, "{}", done.stdout);
}

/// A signal while the broker has not even answered the handshake: consume exits 0 and publish
/// 143 at once, without waiting for the connect timeout.
#[test]
fn a_signal_while_connecting_stops_at_once() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("amqp://guest:guest@{}/%2f", listener.local_addr().unwrap());
    let cases: [(&[&str], i32, &str); 2] = [
        (&["consume", "--queue", "q"], 0, ""),
        (
            &["publish", "--body", "x"],
            143,
            "lepus: stopped by SIGTERM: 0 messages published, 0 confirmed\n",
        ),
    ];
    for (args, code, stderr) in cases {
        let mut all = vec!["--connect-timeout", "60"];
        all.extend_from_slice(args);
        let lepus = Running::start_with_url(&url, &all);
        // Once lepus has connected, its signal handlers are in place; the handshake is never
        // answered.
        let mut held = None;
        eventually(LIMIT, "lepus connecting", || {
            held = listener.accept().ok();
            held.is_some()
        });
        lepus.signal("TERM");
        let done = lepus.finish(Duration::from_secs(5));
        assert_eq!(done.status.code(), Some(code), "{args:?}: {}", done.stderr);
        assert_eq!(done.stderr, stderr, "{args:?}");
        assert_eq!(done.stdout, "", "{args:?}");
    }
}
