//! perf, with small counts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use serde_json::Value;
use support::{fails, lepus, require_broker, TempQueue};

/// Runs `perf --json` with extra args; checks the exact key order and returns the object.
fn perf(extra: &[&str]) -> Value {
    require_broker();
    let out = lepus()
        .args(["perf", "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one JSON object on stdout: {stdout:?}"
    );
    let line = lines[0];
    let keys = [
        "{\"published\":",
        ",\"confirmed\":",
        ",\"consumed\":",
        ",\"elapsed_s\":",
        ",\"publish_rate\":",
        ",\"consume_rate\":",
        ",\"latency_us\":{\"p50\":",
        ",\"p95\":",
        ",\"p99\":",
        ",\"max\":",
        "},\"confirm_latency_us\":",
        ",\"nacked\":",
        ",\"recoveries\":",
        ",\"republished\":",
        ",\"duplicates\":",
        ",\"missing\":",
    ];
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| {
            line.find(k)
                .unwrap_or_else(|| panic!("{k} missing in {line}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{line}");
    assert!(line.ends_with('}'), "{line}");
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 13);
    assert_eq!(v["latency_us"].as_object().unwrap().len(), 4);
    v
}

#[test]
fn perf_count_publishes_and_consumes_everything() {
    let v = perf(&["--count", "2000"]);
    assert_eq!(v["published"], 2000);
    assert_eq!(v["consumed"], 2000);
    assert_eq!(v["confirmed"], 0);
    // Without confirms nothing says which messages the broker took: no "missing".
    assert!(v["missing"].is_null(), "{v}");
    assert_eq!(v["duplicates"], 0);
    assert!(v["elapsed_s"].as_f64().unwrap() > 0.0);
    assert!(v["publish_rate"].as_f64().unwrap() > 0.0);
    assert!(v["consume_rate"].as_f64().unwrap() > 0.0);
    let l = &v["latency_us"];
    let (p50, p99, max) = (
        l["p50"].as_u64().unwrap(),
        l["p99"].as_u64().unwrap(),
        l["max"].as_u64().unwrap(),
    );
    assert!(p50 >= 1 && p50 <= p99 && p99 <= max, "{l}");
}

#[test]
fn perf_many_producers_consumers_confirms_and_multi_ack() {
    let v = perf(&[
        "--producers",
        "2",
        "--consumers",
        "3",
        "--count",
        "1001",
        "--confirm",
        "50",
        "--prefetch",
        "20",
        "--multi-ack",
        "10",
        "--size",
        "100",
    ]);
    assert_eq!(v["published"], 1001);
    assert_eq!(v["confirmed"], 1001);
    assert_eq!(v["consumed"], 1001);
    // Every message is counted by producer and number.
    assert_eq!(v["missing"], 0);
    assert_eq!(v["duplicates"], 0);
    assert_eq!(v["recoveries"], 0);
    assert_eq!(v["republished"], 0);
}

#[test]
fn perf_consumers_0_measures_publishing_alone() {
    let v = perf(&["--consumers", "0", "--count", "1500"]);
    assert_eq!(v["published"], 1500);
    assert_eq!(v["consumed"], 0);
    assert_eq!(v["consume_rate"].as_f64(), Some(0.0));
    assert!(v["latency_us"]["p50"].is_null());
    assert!(v["publish_rate"].as_f64().unwrap() > 0.0);

    let v = perf(&["--consumers", "0", "--count", "700", "--confirm", "100"]);
    assert_eq!(v["published"], 700);
    assert_eq!(v["confirmed"], 700);
}

#[test]
fn perf_producers_0_drains_an_existing_queue() {
    let q = TempQueue::new("perf-drain");
    // Fill it with perf messages (the named queue is kept).
    let filled = perf(&["--consumers", "0", "--count", "300", "--queue", q.name()]);
    assert_eq!(filled["published"], 300);
    assert_eq!(q.depth(), 300);
    let v = perf(&["--producers", "0", "--queue", q.name()]);
    assert_eq!(v["published"], 0);
    assert_eq!(v["consumed"], 300);
    // Timed from the stamps the earlier run wrote.
    assert!(v["latency_us"]["max"].as_u64().unwrap() >= 1);
    assert_eq!(q.depth(), 0);
    // With --count, only that many.
    q.publish_lines("a\nb\nc\n");
    let v = perf(&["--producers", "0", "--queue", q.name(), "--count", "2"]);
    assert_eq!(v["consumed"], 2);
    // Foreign messages are not timed.
    assert!(v["latency_us"]["p50"].is_null());
}

#[test]
fn perf_many_producers_flat_out_for_a_time_deliver_everything_they_published() {
    // Each producer stops with its write buffer full; closing writes it out, so every
    // message published reaches the consumers and the run ends.
    let started = std::time::Instant::now();
    let v = perf(&["--producers", "10", "--consumers", "10", "--time", "2"]);
    let published = v["published"].as_u64().unwrap();
    assert!(published > 1000, "{v}");
    assert_eq!(v["consumed"].as_u64().unwrap(), published, "{v}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[test]
fn perf_time_and_rate() {
    let v = perf(&["--time", "1.5", "--rate", "200"]);
    let published = v["published"].as_u64().unwrap();
    assert!((200..=400).contains(&published), "{v}");
    assert_eq!(v["consumed"].as_u64().unwrap(), published);
}

#[test]
fn perf_text_summary_and_live_rates() {
    require_broker();
    let out = lepus()
        .args(["perf", "--time", "2.2", "--rate", "100"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("publish rate"), "{stdout}");
    // Latencies in readable units: `latency: p50 2.33 ms, p95 ..., p99 870 µs, max 1.20 s`.
    let latency = stdout
        .lines()
        .find_map(|l| l.strip_prefix("latency: "))
        .unwrap_or_else(|| panic!("no latency line: {stdout}"));
    let figures: Vec<&str> = latency.split(", ").collect();
    assert_eq!(figures.len(), 4, "{latency}");
    for (figure, name) in figures.iter().zip(["p50", "p95", "p99", "max"]) {
        let mut parts = figure.split(' ');
        assert_eq!(parts.next(), Some(name), "{latency}");
        let number = parts.next().unwrap_or_else(|| panic!("{latency}"));
        assert!(number.parse::<f64>().is_ok(), "{latency}");
        assert!(matches!(parts.next(), Some("µs" | "ms" | "s")), "{latency}");
    }
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.lines().count() >= 2,
        "one line per second: {stderr:?}"
    );
    assert!(
        stderr.contains("sent") && stderr.contains("received"),
        "{stderr}"
    );
}

#[test]
fn perf_usage_errors() {
    let line = fails(lepus().args(["perf", "--producers", "0"]), 2);
    assert!(line.contains("--queue"), "{line}");
    let line = fails(
        lepus().args(["perf", "--producers", "0", "--consumers", "0"]),
        2,
    );
    assert!(line.contains("nothing to do"), "{line}");
    let line = fails(
        lepus().args(["perf", "--multi-ack", "50", "--prefetch", "10"]),
        2,
    );
    assert!(line.contains("--multi-ack"), "{line}");
}

#[test]
fn confirm_latency_and_a_prometheus_metrics_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perf.prom");
    let v = perf(&[
        "--producers",
        "1",
        "--consumers",
        "1",
        "--count",
        "2000",
        "--confirm",
        "100",
        "--metrics-file",
        path.to_str().unwrap(),
    ]);
    assert_eq!(v["confirmed"], 2000);
    assert_eq!(v["nacked"], 0);
    let c = &v["confirm_latency_us"];
    let (p50, max) = (c["p50"].as_u64().unwrap(), c["max"].as_u64().unwrap());
    assert!(p50 >= 1 && p50 <= max, "{c}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("\nmessaging_client_sent_messages_total 2000\n"),
        "{text}"
    );
    assert!(
        text.contains("\nmessaging_client_consumed_messages_total 2000\n"),
        "{text}"
    );
    assert!(
        text.contains("\nlepus_confirms_acked_total 2000\n"),
        "{text}"
    );
    // One publish in 16 is timed to its confirm.
    assert!(
        text.contains("\nlepus_confirm_latency_seconds_count 125\n"),
        "{text}"
    );
    assert!(
        text.contains("lepus_consume_latency_seconds_count 2000\n"),
        "{text}"
    );
    // Without confirms there is no confirm latency.
    let v = perf(&["--producers", "1", "--consumers", "0", "--count", "100"]);
    assert!(v["confirm_latency_us"].is_null(), "{v}");
}
