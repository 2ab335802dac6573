//! Live per-second rates on stderr, and the final summary (text or one JSON object).

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Shared;
use crate::error::CliError;
use crate::output::print_line;

/// Highest latency the histogram tracks exactly (one hour, in microseconds); longer ones are
/// recorded as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// An empty latency histogram in microseconds, three significant digits.
pub(super) fn new_histogram() -> Result<Histogram<u64>, CliError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| CliError::failed(format!("creating the latency histogram: {e}")))
}

/// Prints the rates of the past second to stderr every second: a progress line redrawn in
/// place when stderr is a terminal, one line per second otherwise.
pub(super) fn spawn_live(
    shared: Arc<Shared>,
    consuming: bool,
    publishing: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let terminal = std::io::stderr().is_terminal();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut before = (0u64, 0u64, 0u64);
        let mut seconds = 0u64;
        loop {
            tick.tick().await;
            seconds += 1;
            let now = (
                shared.published.load(Ordering::Relaxed),
                shared.confirmed.load(Ordering::Relaxed),
                shared.consumed.load(Ordering::Relaxed),
            );
            let mut line = format!("{seconds:>4} s");
            if publishing {
                line.push_str(&format!("  sent {:>9} msg/s", now.0 - before.0));
                if now.1 > 0 {
                    line.push_str(&format!("  confirmed {:>9} msg/s", now.1 - before.1));
                }
            }
            if consuming {
                line.push_str(&format!("  received {:>9} msg/s", now.2 - before.2));
            }
            before = now;
            let mut err = std::io::stderr().lock();
            let _ = if terminal {
                write!(err, "\r{line}\x1b[K")
            } else {
                writeln!(err, "{line}")
            };
            let _ = err.flush();
        }
    })
}

/// Ends the progress line, if one was drawn.
pub(super) fn end_live() {
    if std::io::stderr().is_terminal() {
        let _ = writeln!(std::io::stderr().lock());
    }
}

/// Latency percentiles in microseconds; `null` in JSON when nothing was timed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(super) struct Latency {
    p50: Option<u64>,
    p95: Option<u64>,
    p99: Option<u64>,
    max: Option<u64>,
    /// How many were timed, and their sum in microseconds (for the Prometheus summary).
    #[serde(skip)]
    count: u64,
    #[serde(skip)]
    sum_us: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Self {
        let some = !histogram.is_empty();
        let at = |q: f64| some.then(|| histogram.value_at_quantile(q));
        Self {
            p50: at(0.5),
            p95: at(0.95),
            p99: at(0.99),
            max: some.then(|| histogram.max()),
            count: histogram.len(),
            sum_us: histogram.mean() * histogram.len() as f64,
        }
    }
}

/// The result of a run; serialized, it is exactly the documented `--json` object.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(super) struct Summary {
    published: u64,
    confirmed: u64,
    consumed: u64,
    elapsed_s: f64,
    publish_rate: f64,
    consume_rate: f64,
    latency_us: Latency,
    /// From a publish to its confirm, timed on a sample of the confirmed publishes; `null`
    /// without confirms.
    confirm_latency_us: Option<Latency>,
    /// Publishes the broker nacked.
    nacked: u64,
    /// Connections of producers and consumers recovered after a loss.
    recoveries: u64,
    /// Messages published again because their confirm was lost in a recovery.
    republished: u64,
    /// Copies consumed beyond the first of each message.
    duplicates: u64,
    /// Messages acked to a producer and never consumed (with confirms and consumers only).
    missing: Option<u64>,
}

impl Summary {
    /// The figures of a finished run.
    pub(super) fn new(
        shared: &Shared,
        consuming: bool,
        confirming: bool,
        histogram: &Histogram<u64>,
        confirm_histogram: &Histogram<u64>,
    ) -> Self {
        let (duplicates, missing) = match shared.tally.lock() {
            Ok(tally) => (
                tally.duplicates,
                (consuming && confirming).then(|| tally.missing()),
            ),
            Err(_) => (0, None),
        };
        let published = shared.published.load(Ordering::Relaxed);
        let consumed = shared.consumed.load(Ordering::Relaxed);
        let publish_ns = shared.publish_end_ns.load(Ordering::Relaxed);
        let consume_ns = shared.last_consume_ns.load(Ordering::Relaxed);
        let elapsed_ns = shared.now_ns();
        let end_ns = if consuming {
            elapsed_ns.min(consume_ns.max(publish_ns))
        } else {
            elapsed_ns.min(publish_ns.max(1))
        };
        Self {
            published,
            confirmed: shared.confirmed.load(Ordering::Relaxed),
            consumed,
            elapsed_s: round(end_ns as f64 / 1e9, 3),
            publish_rate: rate(published, publish_ns),
            consume_rate: rate(consumed, consume_ns),
            latency_us: Latency::of(histogram),
            confirm_latency_us: confirming.then(|| Latency::of(confirm_histogram)),
            nacked: shared.nacked.load(Ordering::Relaxed),
            recoveries: shared.recoveries.load(Ordering::Relaxed),
            republished: shared.republished.load(Ordering::Relaxed),
            duplicates,
            missing,
        }
    }

    /// The run's figures in Prometheus text format (exposition format 0.0.4): counters named
    /// after OpenTelemetry's messaging metrics (`messaging.client.sent.messages` becomes
    /// `messaging_client_sent_messages_total`), latencies as summaries in seconds.
    pub(super) fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, value: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            ));
        };
        counter(
            "messaging_client_sent_messages_total",
            "Messages published (written to the socket).",
            self.published,
        );
        counter(
            "messaging_client_consumed_messages_total",
            "Messages consumed.",
            self.consumed,
        );
        counter(
            "lepus_confirms_acked_total",
            "Publishes the broker confirmed.",
            self.confirmed,
        );
        counter(
            "lepus_confirms_nacked_total",
            "Publishes the broker nacked.",
            self.nacked,
        );
        counter(
            "lepus_recoveries_total",
            "Connections recovered after a loss.",
            self.recoveries,
        );
        counter(
            "lepus_republished_messages_total",
            "Messages published again because their confirm was lost.",
            self.republished,
        );
        counter(
            "lepus_duplicate_messages_total",
            "Copies consumed beyond the first of each message.",
            self.duplicates,
        );
        let mut summary = |name: &str, help: &str, l: &Latency| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} summary\n"));
            for (q, v) in [
                ("0.5", l.p50),
                ("0.95", l.p95),
                ("0.99", l.p99),
                ("1", l.max),
            ] {
                if let Some(us) = v {
                    out.push_str(&format!("{name}{{quantile=\"{q}\"}} {}\n", us as f64 / 1e6));
                }
            }
            out.push_str(&format!(
                "{name}_sum {}\n{name}_count {}\n",
                l.sum_us / 1e6,
                l.count
            ));
        };
        summary(
            "lepus_consume_latency_seconds",
            "From publish to consumer, per message.",
            &self.latency_us,
        );
        if let Some(c) = &self.confirm_latency_us {
            summary(
                "lepus_confirm_latency_seconds",
                "From publish to the broker's confirm, on a sample of publishes.",
                c,
            );
        }
        out
    }

    /// Prints the summary on stdout: one JSON object, or a few lines of text.
    pub(super) fn print(&self, json: bool) -> Result<(), CliError> {
        if json {
            let text = serde_json::to_string(self)
                .map_err(|e| CliError::failed(format!("writing the summary: {e}")))?;
            return print_line(&text);
        }
        let l = &self.latency_us;
        let us = |v: Option<u64>| v.map_or_else(|| "-".to_string(), readable_latency);
        let confirm_line = self
            .confirm_latency_us
            .as_ref()
            .map_or_else(String::new, |c| {
                format!(
                    "\nconfirm latency: p50 {}, p95 {}, p99 {}, max {}; nacked {}",
                    us(c.p50),
                    us(c.p95),
                    us(c.p99),
                    us(c.max),
                    self.nacked
                )
            });
        print_line(&format!(
            "published {}, confirmed {}, consumed {} in {:.3} s\n\
             publish rate {:.1} msg/s, consume rate {:.1} msg/s\n\
             latency: p50 {}, p95 {}, p99 {}, max {}{}\n\
             recoveries {}, republished {}, duplicates {}, missing {}",
            self.published,
            self.confirmed,
            self.consumed,
            self.elapsed_s,
            self.publish_rate,
            self.consume_rate,
            us(l.p50),
            us(l.p95),
            us(l.p99),
            us(l.max),
            confirm_line,
            self.recoveries,
            self.republished,
            self.duplicates,
            self.missing
                .map_or_else(|| "-".to_string(), |m| m.to_string()),
        ))
    }
}

/// A latency in microseconds as a person reads it: `870 µs`, `2.33 ms`, `12.5 ms`, `2.33 s`;
/// three significant digits (the histogram's precision), and whole seconds from 1000 s.
fn readable_latency(us: u64) -> String {
    if us < 1000 {
        return format!("{us} µs");
    }
    // For each unit, try 2, 1 and 0 decimals: the first that rounds to under 1000 units.
    for (unit, per_unit) in [("ms", 1_000u64), ("s", 1_000_000)] {
        for (decimals, step) in [(2usize, per_unit / 100), (1, per_unit / 10), (0, per_unit)] {
            let n = us.saturating_add(step / 2) / step;
            if n < 1000 {
                return with_decimals(n, decimals, unit);
            }
        }
    }
    format!("{} s", us.saturating_add(500_000) / 1_000_000)
}

/// `n` with its last `decimals` digits after a point, then the unit: (233, 2, "s") is `2.33 s`.
fn with_decimals(n: u64, decimals: usize, unit: &str) -> String {
    if decimals == 0 {
        return format!("{n} {unit}");
    }
    let scale = 10u64.pow(decimals as u32);
    format!(
        "{}.{:0width$} {unit}",
        n / scale,
        n % scale,
        width = decimals
    )
}

/// Messages per second over `ns` nanoseconds (0 when nothing happened).
fn rate(count: u64, ns: u64) -> f64 {
    if count == 0 || ns == 0 {
        return 0.0;
    }
    round(count as f64 / (ns as f64 / 1e9), 1)
}

fn round(v: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (v * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_is_exact() {
        let summary = Summary {
            published: 10,
            confirmed: 10,
            consumed: 10,
            elapsed_s: 1.5,
            publish_rate: 6.7,
            consume_rate: 6.7,
            latency_us: Latency {
                p50: Some(100),
                p95: Some(200),
                p99: Some(300),
                max: Some(400),
                count: 10,
                sum_us: 2000.0,
            },
            confirm_latency_us: Some(Latency {
                p50: Some(50),
                p95: Some(60),
                p99: Some(70),
                max: Some(80),
                count: 2,
                sum_us: 100.0,
            }),
            nacked: 0,
            recoveries: 1,
            republished: 2,
            duplicates: 3,
            missing: Some(0),
        };
        assert_eq!(
            serde_json::to_string(&summary).unwrap(),
            r#"{"published":10,"confirmed":10,"consumed":10,"elapsed_s":1.5,"publish_rate":6.7,"consume_rate":6.7,"latency_us":{"p50":100,"p95":200,"p99":300,"max":400},"confirm_latency_us":{"p50":50,"p95":60,"p99":70,"max":80},"nacked":0,"recoveries":1,"republished":2,"duplicates":3,"missing":0}"#
        );
    }

    #[test]
    fn prometheus_text_has_counters_and_summaries() {
        let summary = Summary {
            published: 10,
            confirmed: 9,
            consumed: 10,
            elapsed_s: 1.5,
            publish_rate: 6.7,
            consume_rate: 6.7,
            latency_us: Latency {
                p50: Some(100),
                p95: Some(200),
                p99: Some(300),
                max: Some(400),
                count: 10,
                sum_us: 2000.0,
            },
            confirm_latency_us: None,
            nacked: 1,
            recoveries: 0,
            republished: 0,
            duplicates: 0,
            missing: None,
        };
        let text = summary.prometheus();
        assert!(text.contains("# TYPE messaging_client_sent_messages_total counter\nmessaging_client_sent_messages_total 10\n"));
        assert!(text.contains("lepus_confirms_nacked_total 1\n"));
        assert!(text.contains("lepus_consume_latency_seconds{quantile=\"0.99\"} 0.0003\n"));
        assert!(text.contains(
            "lepus_consume_latency_seconds_sum 0.002\nlepus_consume_latency_seconds_count 10\n"
        ));
        assert!(!text.contains("lepus_confirm_latency_seconds"));
        // Every line is a comment or `name[{labels}] value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn latencies_read_in_units() {
        for (us, text) in [
            (0, "0 µs"),
            (1, "1 µs"),
            (870, "870 µs"),
            (999, "999 µs"),
            (1000, "1.00 ms"),
            (2334, "2.33 ms"),
            (2335, "2.34 ms"),
            (9994, "9.99 ms"),
            (9995, "10.0 ms"),
            (12_345, "12.3 ms"),
            (99_950, "100 ms"),
            (870_000, "870 ms"),
            (999_499, "999 ms"),
            (999_500, "1.00 s"),
            (2_330_000, "2.33 s"),
            (45_600_000, "45.6 s"),
            (999_499_999, "999 s"),
            (999_500_000, "1000 s"),
            (3_600_000_000, "3600 s"),
            (u64::MAX / 2, "9223372036855 s"),
        ] {
            assert_eq!(readable_latency(us), text, "{us} µs");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(rate(0, 5), 0.0);
        assert_eq!(rate(5, 0), 0.0);
        assert_eq!(rate(1000, 500_000_000), 2000.0);
    }

    #[test]
    fn histogram_takes_extremes() {
        let mut h = new_histogram().unwrap();
        h.saturating_record(0);
        h.saturating_record(u64::MAX);
        assert_eq!(h.len(), 2);
    }
}
