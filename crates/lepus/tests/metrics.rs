//! Metrics through the `metrics` facade (the `metrics` feature), recorded by
//! `metrics-util`'s debugging recorder against the real broker: publishes, confirms, returns,
//! deliveries, settles, `basic.get`, bytes and a recovery. One test: the recorder is global.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::Duration;

use lepus::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, ConnectionEvent, RecoveryPolicy,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;

/// One reading of every series: the debugging recorder drains counters and histograms as it
/// reads them, so each phase of the test takes one reading and sees what that phase did.
struct Reading(Vec<Series>);

/// A series' kind, name, labels and value.
type Series = (MetricKind, String, Vec<(String, String)>, f64);

impl Reading {
    fn take(s: &Snapshotter) -> Self {
        Self(
            s.snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, v)| {
                    let labels = key
                        .key()
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect();
                    let v = match v {
                        DebugValue::Counter(n) => n as f64,
                        DebugValue::Gauge(g) => g.into_inner(),
                        DebugValue::Histogram(h) => h.len() as f64,
                    };
                    (key.kind(), key.key().name().to_owned(), labels, v)
                })
                .collect(),
        )
    }

    /// The sum over the series of `name` with `labels` (and `messaging.system = rabbitmq`):
    /// counters and gauges as numbers, histograms as how many values they got.
    fn value(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(k, n, l, _)| {
                let has = |key: &str, want: &str| l.iter().any(|(a, b)| a == key && b == want);
                *k == kind
                    && n == name
                    && has("messaging.system", "rabbitmq")
                    && labels.iter().all(|(a, b)| has(a, b))
            })
            .map(|(_, _, _, v)| v)
            .sum()
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(MetricKind::Counter, name, labels)
    }

    fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(MetricKind::Histogram, name, labels)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_counts_what_operators_need() {
    let recorder = DebuggingRecorder::new();
    let s = recorder.snapshotter();
    recorder.install().unwrap();

    let (conn, ch) = support::channel().await;
    let queue = support::exclusive_queue(&ch, "metrics").await;
    ch.confirm_select().await.unwrap();
    let props = BasicProperties::default();
    for _ in 0..10 {
        let c = ch
            .basic_publish("", &queue, BasicPublishOptions::default(), &props, "m")
            .await
            .unwrap();
        assert!(c.await.unwrap().is_ack());
    }
    let r = Reading::take(&s);
    assert_eq!(r.counter("messaging.client.sent.messages", &[]), 10.0);
    let outcome_ack = [("outcome", "ack")];
    assert_eq!(r.counter("lepus.confirms", &outcome_ack), 10.0);
    assert_eq!(r.histogram_count("lepus.confirm.duration", &[]), 10.0);
    assert_eq!(
        r.histogram_count(
            "messaging.client.operation.duration",
            &[("messaging.operation.name", "publish")]
        ),
        10.0
    );

    // A mandatory message without a route comes back.
    let c = ch
        .basic_publish(
            "",
            &support::unique("nowhere"),
            BasicPublishOptions { mandatory: true },
            &props,
            "lost",
        )
        .await
        .unwrap();
    assert!(c.await.unwrap().returned().is_some());
    assert_eq!(Reading::take(&s).counter("lepus.returns", &[]), 1.0);

    // Consumed: 5 acked, 3 nacked, 1 rejected, 1 requeued and delivered again, then acked.
    let mut consumer = ch
        .basic_consume(&queue, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    for i in 0..10 {
        let d = consumer.recv().await.unwrap().unwrap();
        match i {
            0..=4 => d.ack().unwrap(),
            5..=7 => d.nack(false).unwrap(),
            8 => d.reject(false).unwrap(),
            _ => d.reject(true).unwrap(),
        }
    }
    let again = consumer.recv().await.unwrap().unwrap();
    assert!(again.redelivered);
    again.ack().unwrap();
    let r = Reading::take(&s);
    let process = [("messaging.operation.name", "process")];
    assert_eq!(
        r.counter("messaging.client.consumed.messages", &process),
        11.0
    );
    assert_eq!(r.counter("lepus.redeliveries", &[]), 1.0);
    let op = |name| [("messaging.operation.name", name)];
    assert_eq!(r.counter("lepus.settles", &op("ack")), 6.0);
    assert_eq!(r.counter("lepus.settles", &op("nack")), 3.0);
    assert_eq!(r.counter("lepus.settles", &op("reject")), 2.0);
    let buffered = r.value(
        MetricKind::Gauge,
        "lepus.consumer.buffered",
        &[("messaging.destination.name", &queue)],
    );
    assert!((0.0..=11.0).contains(&buffered), "{buffered}");
    ch.basic_cancel(consumer.tag()).await.unwrap();

    // basic.get: one message, then none.
    ch.basic_publish("", &queue, BasicPublishOptions::default(), &props, "g")
        .await
        .unwrap()
        .await
        .unwrap();
    support::depth_eventually(&ch, &queue, 1, Duration::from_secs(5)).await;
    assert!(ch.basic_get(&queue, true).await.unwrap().is_some());
    assert!(ch.basic_get(&queue, true).await.unwrap().is_none());
    let r = Reading::take(&s);
    let receive = [("messaging.operation.name", "receive")];
    assert_eq!(
        r.counter("messaging.client.consumed.messages", &receive),
        1.0
    );
    assert_eq!(
        r.histogram_count("messaging.client.operation.duration", &receive),
        2.0
    );
    assert!(r.counter("lepus.bytes.sent", &[]) > 0.0);
    assert!(r.counter("lepus.bytes.received", &[]) > 0.0);
    conn.close().await.unwrap();

    // A recovery: attempts, the recovery and its duration; the confirm lost with the link
    // becomes uncertain.
    use support::proxy::{broker_addr, through, Proxy};
    let proxy = Proxy::start(broker_addr()).await;
    let conn = through(&proxy, |o| {
        let mut policy = RecoveryPolicy::new();
        policy.initial_delay(Duration::from_millis(50));
        o.recovery(policy);
    })
    .await;
    let mut events = conn.events();
    let ch = conn.open_channel().await.unwrap();
    let q = support::exclusive_queue(&ch, "metrics-recovery").await;
    ch.confirm_select().await.unwrap();
    proxy.freeze();
    let lost = ch
        .basic_publish("", &q, BasicPublishOptions::default(), &props, "in flight")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.cut();
    proxy.thaw();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(ConnectionEvent::Recovered { .. }) = events.recv().await {
                return;
            }
        }
    })
    .await
    .unwrap();
    assert!(!lost.await.unwrap().is_ack());
    let r = Reading::take(&s);
    assert!(r.counter("lepus.recovery.attempts", &[]) >= 1.0);
    assert_eq!(r.counter("lepus.recoveries", &[]), 1.0);
    assert_eq!(r.histogram_count("lepus.recovery.duration", &[]), 1.0);
    assert_eq!(
        r.counter("lepus.confirms", &[("outcome", "uncertain")]),
        1.0
    );
    conn.close().await.unwrap();
}
