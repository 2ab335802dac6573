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
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(super) struct Latency {
    p50: Option<u64>,
    p95: Option<u64>,
    p99: Option<u64>,
    max: Option<u64>,
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
        let latency = |q: f64| (!histogram.is_empty()).then(|| histogram.value_at_quantile(q));
        Self {
            published,
            confirmed: shared.confirmed.load(Ordering::Relaxed),
            consumed,
            elapsed_s: round(end_ns as f64 / 1e9, 3),
            publish_rate: rate(published, publish_ns),
            consume_rate: rate(consumed, consume_ns),
            latency_us: Latency {
                p50: latency(0.5),
                p95: latency(0.95),
                p99: latency(0.99),
                max: (!histogram.is_empty()).then(|| histogram.max()),
            },
            recoveries: shared.recoveries.load(Ordering::Relaxed),
            republished: shared.republished.load(Ordering::Relaxed),
            duplicates,
            missing,
        }
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
        print_line(&format!(
            "published {}, confirmed {}, consumed {} in {:.3} s\n\
             publish rate {:.1} msg/s, consume rate {:.1} msg/s\n\
             latency: p50 {}, p95 {}, p99 {}, max {}\n\
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
            },
            recoveries: 1,
            republished: 2,
            duplicates: 3,
            missing: Some(0),
        };
        assert_eq!(
            serde_json::to_string(&summary).unwrap(),
            r#"{"published":10,"confirmed":10,"consumed":10,"elapsed_s":1.5,"publish_rate":6.7,"consume_rate":6.7,"latency_us":{"p50":100,"p95":200,"p99":300,"max":400},"recoveries":1,"republished":2,"duplicates":3,"missing":0}"#
        );
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
