//! `lepus` against a scripted fake broker (tests/support/fake_broker.rs), for what RabbitMQ
//! will not do on request: deliver beyond the prefetch window, answer late or never.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::fake_broker::{FakeBroker, Script};
use support::{bare, eventually, one_error_line, Running};

/// Longest a command may take here before it counts as hung.
const LIMIT: Duration = Duration::from_secs(10);

/// `lepus --url <fake> <args>`, killed after [`LIMIT`]; returns the output and how long it took.
fn run(broker: &FakeBroker, args: &[&str]) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let out = bare()
        .arg("--url")
        .arg(broker.url())
        .args(args)
        .timeout(LIMIT)
        .output()
        .unwrap();
    (out, started.elapsed())
}

/// Runs `consume --queue q --count <count> --output body` against a broker following `script`
/// and checks that it prints m1..m<count> and exits 0 within [`LIMIT`].
fn consume_count(script: &Script, count: usize) {
    let broker = FakeBroker::start(script.clone());
    let n = count.to_string();
    let (out, took) = run(
        &broker,
        &["consume", "--queue", "q", "--count", &n, "--output", "body"],
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    // Bodies without their padding.
    let bodies: Vec<&str> = stdout.lines().map(|l| l.trim_end_matches('.')).collect();
    let how = if took >= LIMIT {
        format!("did not exit within {LIMIT:?} and was killed")
    } else {
        format!("exited after {took:?} with {}", out.status)
    };
    assert_eq!(
        out.status.code(),
        Some(0),
        "--count {count}: lepus consume {how}; bodies printed: {bodies:?}; stderr: {:?}; methods \
         the broker received: {:?}",
        String::from_utf8_lossy(&out.stderr),
        summary(&broker.received())
    );
    let expected: Vec<String> = (1..=count).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, expected, "--count {count}");
    // Reading the flood behind cancel-ok and close-ok takes well under a second.
    assert!(
        took < Duration::from_secs(3),
        "--count {count}: took {took:?}"
    );
    assert_eq!(broker.count("basic.cancel"), 1, "--count {count}");
    assert_eq!(broker.count("connection.close"), 1, "--count {count}");
}

/// The fake broker itself: deliveries past the prefetch, but few enough to fit in the
/// consumer's buffer; lepus cancels, settles and closes.
#[test]
fn consume_count_with_deliveries_past_the_prefetch() {
    let script = Script {
        deliveries: 200,
        deliveries_after_cancel: 200,
        body_size: 100,
        ..Script::default()
    };
    for count in [1, 5] {
        consume_count(&script, count);
    }
}

/// A consumer whose buffer fills while the broker keeps delivering past the prefetch window,
/// then is cancelled: `basic.cancel-ok` comes behind thousands more deliveries, and lepus must
/// keep reading the socket to see it.
#[test]
fn consume_count_exits_while_the_broker_floods_past_the_prefetch() {
    // 40 MB before the cancel and 40 MB after it: more than the consumer's buffer (4096
    // deliveries, 16 MB here) and the socket buffers (up to 36 MB on Linux) hold.
    let script = Script {
        deliveries: 10_000,
        deliveries_after_cancel: 10_000,
        body_size: 4000,
        ..Script::default()
    };
    for count in [1, 5] {
        consume_count(&script, count);
    }
}

/// The method names received, with runs of the same name collapsed: `basic.nack x1000`.
fn summary(received: &[String]) -> Vec<String> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for name in received {
        match out.last_mut() {
            Some((last, n)) if last == name => *n += 1,
            _ => out.push((name.clone(), 1)),
        }
    }
    out.into_iter()
        .map(|(name, n)| if n == 1 { name } else { format!("{name} x{n}") })
        .collect()
}

#[test]
fn rpc_timeout_limits_the_wait_for_a_reply() {
    let broker = FakeBroker::start(Script {
        purge_ok_after: None,
        ..Script::default()
    });
    let (out, took) = run(&broker, &["--rpc-timeout", "0.5", "purge", "q"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    let line = one_error_line(&out.stderr);
    assert!(
        line.contains("timed out") && line.contains("queue.purge-ok"),
        "{line}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// The 7.7M-message purge that RabbitMQ finishes after the default 30 s: a longer
/// `--rpc-timeout` waits for it (scaled down: the reply comes after 2 s).
#[test]
fn a_longer_rpc_timeout_waits_for_a_slow_reply() {
    let broker = FakeBroker::start(Script {
        purge_ok_after: Some(Duration::from_secs(2)),
        purged: 7_700_000,
        ..Script::default()
    });
    let (out, _) = run(&broker, &["purge", "--queue", "q", "--rpc-timeout", "1"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = one_error_line(&out.stderr);
    assert!(line.contains("timed out"), "{line}");

    let (out, took) = run(&broker, &["purge", "--queue", "q", "--rpc-timeout", "5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "7700000\n");
    assert!(took >= Duration::from_secs(2), "{took:?}");
}

/// Stopped by SIGTERM while the broker never confirms: publish waits for the confirms only
/// until the close timeout (10 s), then says so and exits 143.
#[test]
fn publish_stopped_waits_for_confirms_only_until_the_close_timeout() {
    let broker = FakeBroker::start(Script {
        ack_publishes: false,
        ..Script::default()
    });
    let mut lepus = Running::start_with_url(
        &broker.url(),
        &["publish", "--routing-key", "k", "--lines", "--confirm"],
    );
    lepus.stdin().write_all(b"one\ntwo\n").unwrap();
    lepus.stdin().flush().unwrap();
    eventually(LIMIT, "two publishes at the fake broker", || {
        broker.count("basic.publish") == 2
    });
    let signalled = Instant::now();
    lepus.signal("TERM");
    let done = lepus.finish(Duration::from_secs(20));
    let took = signalled.elapsed();
    assert_eq!(done.status.code(), Some(143), "{}", done.stderr);
    assert_eq!(
        done.stderr,
        "lepus: stopped by SIGTERM: 2 messages published, 0 confirmed, no confirm for the \
         other 2 within 10 s\n"
    );
    assert!(done.stdout.is_empty(), "{}", done.stdout);
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(15),
        "{took:?}"
    );
}
