//! The connection's metric handles (the `metrics` feature); what they count is listed in
//! [`crate::telemetry`].

use std::sync::Mutex;
use std::time::Instant;

use metrics::{Counter, Histogram};

use crate::ConnectionEvent;

const SYSTEM: (&str, &str) = ("messaging.system", "rabbitmq");

/// A connection's metric handles, and the moments some durations start at.
pub(crate) struct Metrics {
    pub(crate) sent: Counter,
    pub(crate) consumed_process: Counter,
    pub(crate) consumed_receive: Counter,
    pub(crate) publish_duration: Histogram,
    pub(crate) receive_duration: Histogram,
    pub(crate) confirm_ack: Counter,
    pub(crate) confirm_nack: Counter,
    pub(crate) confirm_uncertain: Counter,
    pub(crate) confirm_duration: Histogram,
    pub(crate) returns: Counter,
    pub(crate) redeliveries: Counter,
    pub(crate) acks: Counter,
    pub(crate) nacks: Counter,
    pub(crate) rejects: Counter,
    pub(crate) bytes_sent: Counter,
    pub(crate) bytes_received: Counter,
    blocked_since: Mutex<Option<Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let op = |name: &'static str| [SYSTEM, ("messaging.operation.name", name)];
        Self {
            sent: metrics::counter!("messaging.client.sent.messages", &[SYSTEM]),
            consumed_process: metrics::counter!(
                "messaging.client.consumed.messages",
                &op("process")
            ),
            consumed_receive: metrics::counter!(
                "messaging.client.consumed.messages",
                &op("receive")
            ),
            publish_duration: metrics::histogram!(
                "messaging.client.operation.duration",
                &op("publish")
            ),
            receive_duration: metrics::histogram!(
                "messaging.client.operation.duration",
                &op("receive")
            ),
            confirm_ack: metrics::counter!("lepus.confirms", &[SYSTEM, ("outcome", "ack")]),
            confirm_nack: metrics::counter!("lepus.confirms", &[SYSTEM, ("outcome", "nack")]),
            confirm_uncertain: metrics::counter!(
                "lepus.confirms",
                &[SYSTEM, ("outcome", "uncertain")]
            ),
            confirm_duration: metrics::histogram!("lepus.confirm.duration", &[SYSTEM]),
            returns: metrics::counter!("lepus.returns", &[SYSTEM]),
            redeliveries: metrics::counter!("lepus.redeliveries", &[SYSTEM]),
            acks: metrics::counter!("lepus.settles", &op("ack")),
            nacks: metrics::counter!("lepus.settles", &op("nack")),
            rejects: metrics::counter!("lepus.settles", &op("reject")),
            bytes_sent: metrics::counter!("lepus.bytes.sent", &[SYSTEM]),
            bytes_received: metrics::counter!("lepus.bytes.received", &[SYSTEM]),
            blocked_since: Mutex::new(None),
        }
    }
}

impl Metrics {
    /// Counts what a connection event says: recoveries, refused entities, blocked time.
    pub(crate) fn on_event(&self, event: &ConnectionEvent) {
        match event {
            ConnectionEvent::Reconnecting { .. } => {
                metrics::counter!("lepus.recovery.attempts", &[SYSTEM]).increment(1);
            }
            ConnectionEvent::Recovered { took, .. } => {
                metrics::counter!("lepus.recoveries", &[SYSTEM]).increment(1);
                metrics::histogram!("lepus.recovery.duration", &[SYSTEM]).record(*took);
            }
            ConnectionEvent::TopologyFailed { .. } => {
                metrics::counter!("lepus.recovery.skipped_entities", &[SYSTEM]).increment(1);
            }
            ConnectionEvent::Blocked(_) => {
                if let Ok(mut since) = self.blocked_since.lock() {
                    since.get_or_insert_with(Instant::now);
                }
            }
            ConnectionEvent::Unblocked | ConnectionEvent::Closed(_) => {
                let since = self.blocked_since.lock().ok().and_then(|mut s| s.take());
                if let Some(since) = since {
                    metrics::histogram!("lepus.connection.blocked.duration", &[SYSTEM])
                        .record(since.elapsed());
                }
            }
            _ => {}
        }
    }
}

/// Sets the consumer-buffer gauge of `queue`.
pub(crate) fn consumer_buffered(queue: &str, deliveries: usize) {
    let labels = vec![
        metrics::Label::new(SYSTEM.0, SYSTEM.1),
        metrics::Label::new("messaging.destination.name", queue.to_owned()),
    ];
    metrics::gauge!("lepus.consumer.buffered", labels).set(deliveries as f64);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    #[test]
    fn blocked_time_and_recovery_steps_come_from_the_events() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let m = Metrics::default();
            m.on_event(&ConnectionEvent::Blocked("low on memory".into()));
            std::thread::sleep(std::time::Duration::from_millis(20));
            m.on_event(&ConnectionEvent::Unblocked);
            m.on_event(&ConnectionEvent::Unblocked); // no second value without a block
            m.on_event(&ConnectionEvent::Reconnecting {
                address: "h:5672".into(),
                attempt: 1,
                after: std::time::Duration::ZERO,
            });
            m.on_event(&ConnectionEvent::Recovered {
                address: "h:5672".into(),
                took: std::time::Duration::from_millis(300),
            });
        });
        let mut seen = std::collections::HashMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let v = match value {
                DebugValue::Counter(n) => vec![n as f64],
                DebugValue::Histogram(h) => h.into_iter().map(|v| v.into_inner()).collect(),
                DebugValue::Gauge(g) => vec![g.into_inner()],
            };
            seen.insert(key.key().name().to_owned(), v);
        }
        let blocked = &seen["lepus.connection.blocked.duration"];
        assert_eq!(blocked.len(), 1);
        assert!(blocked[0] >= 0.02, "{blocked:?}");
        assert_eq!(seen["lepus.recovery.attempts"], [1.0]);
        assert_eq!(seen["lepus.recoveries"], [1.0]);
        assert_eq!(seen["lepus.recovery.duration"], [0.3]);
    }
}
