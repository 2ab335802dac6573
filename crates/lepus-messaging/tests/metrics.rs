//! `messaging.process.duration` (the `metrics` feature): one value per handled message,
//! `error.type` on a failure, recorded by `metrics-util`'s debugging recorder.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use support::{connect, scratch_queue};

#[tokio::test]
async fn each_handled_message_is_timed() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let conn = connect().await;
    let q = scratch_queue("process-duration");
    let producer = conn.producer().build().unwrap();
    for i in 0..3u32 {
        producer
            .publish(&i)
            .to_queue(&q)
            .declare(q.clone())
            .await
            .unwrap();
    }
    let mut consumer = conn.consumer([q.clone()]).consume().await.unwrap();
    let (done, stop) = tokio::sync::oneshot::channel::<()>();
    let mut done = Some(done);
    let mut seen = 0;
    consumer
        .run_until(
            |m| {
                seen += 1;
                if seen == 3 {
                    done.take().map(|d| d.send(()));
                }
                async move {
                    let n: u32 = m.decode().unwrap();
                    if n == 1 {
                        Err("one fails")
                    } else {
                        Ok(())
                    }
                }
            },
            async {
                let _ = stop.await;
            },
        )
        .await
        .unwrap();

    let (mut ok, mut failed) = (0, 0);
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if key.kind() != MetricKind::Histogram || key.key().name() != "messaging.process.duration" {
            continue;
        }
        let DebugValue::Histogram(values) = value else {
            continue;
        };
        if key.key().labels().any(|l| l.key() == "error.type") {
            failed += values.len();
        } else {
            ok += values.len();
        }
    }
    assert_eq!((ok, failed), (2, 1));
}
