//! Receiving large bodies: a body that fits one frame is a slice of the bytes read from the
//! socket (no copy), and one split over many frames is assembled with one copy. Measured as
//! the heap bytes allocated while consuming (read buffers and assembly buffers; a copy needs
//! somewhere to go), counted by a global allocator, against the real broker. One test in this binary, so nothing else allocates meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::Duration;

use lepus::{bytes::Bytes, BasicConsumeOptions, BasicQosOptions, Channel, QueueDeleteOptions};

use support::counting::allocated;

#[global_allocator]
static GLOBAL: support::counting::Counting = support::counting::Counting;

/// Consumes `n` messages of `size` bytes from a new queue and returns the heap bytes
/// allocated per message while doing so.
async fn allocated_per_message(ch: &Channel, size: usize, n: usize) -> f64 {
    let q = support::exclusive_queue(ch, "large").await;
    ch.confirm_select().await.ok();
    let body = Bytes::from(vec![7u8; size]);
    support::publish_confirmed(ch, &q, &body, n, 16, || {}).await;
    let mut consumer = ch
        .basic_consume(&q, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    let before = allocated();
    for _ in 0..n {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a delivery")
            .unwrap()
            .unwrap();
        assert_eq!(delivery.body.len(), size);
        assert!(delivery.body.iter().all(|&b| b == 7));
        delivery.ack().unwrap();
    }
    let per = (allocated() - before) as f64 / n as f64;
    ch.basic_cancel(consumer.tag()).await.unwrap();
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    per
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_are_received_with_at_most_one_copy() {
    let (conn, ch) = support::channel().await;
    ch.basic_qos(8, BasicQosOptions::default()).await.unwrap();
    let frame_max = conn.negotiated().frame_max as usize;
    // One frame: the read buffers that received it, nothing more.
    let single = frame_max / 2;
    let per = allocated_per_message(&ch, single, 200).await;
    eprintln!("{single} B in one frame: {per:.0} B allocated per message");
    assert!(
        per < 1.5 * single as f64,
        "{per:.0} B allocated per {single} B message: more than its read buffers"
    );
    // Nine frames: the read buffers they arrive in (at most the body's size again), and the
    // one body-sized buffer they are assembled in.
    let multi = 8 * frame_max;
    let per = allocated_per_message(&ch, multi, 40).await;
    eprintln!("{multi} B in 9 frames: {per:.0} B allocated per message");
    assert!(
        per < 2.0 * multi as f64,
        "{per:.0} B allocated per {multi} B message: more than its read buffers and one copy"
    );
    conn.close().await.unwrap();
}
