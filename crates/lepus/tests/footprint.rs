//! What a connection costs in memory: an idle one is small, and one that went through a burst
//! of traffic gives the memory back once it is quiet. Measured as the heap bytes live in the
//! whole process (lepus, tokio, everything), counted by a global allocator, against the real
//! broker. One test in this binary, so nothing else allocates meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lepus::{
    bytes::Bytes, BasicConsumeOptions, BasicQosOptions, Connection, QueueDeclareOptions,
    QueueDeleteOptions,
};

use support::counting::live;

#[global_allocator]
static GLOBAL: support::counting::Counting = support::counting::Counting;

/// Heap bytes an idle connection with one channel may hold, at most.
const IDLE_CONNECTION: isize = 16 * 1024;

/// Connections opened to measure the idle footprint.
const CONNECTIONS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_small_when_idle_and_shrink_back_after_a_burst() {
    idle_connections_are_small().await;
    memory_grown_by_a_burst_is_given_back().await;
}

async fn idle_connections_are_small() {
    // A first connection warms up the runtime and the process's lazy statics.
    let (warm, _warm_ch) = support::channel().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = live();
    let mut open = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let conn = Connection::connect_with(support::options()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        open.push((conn, ch));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let per = (live() - before) / CONNECTIONS as isize;
    eprintln!("heap per idle connection with a channel: {per} bytes");
    assert!(
        per <= IDLE_CONNECTION,
        "an idle connection holds {per} bytes of heap (at most {IDLE_CONNECTION})"
    );
    for (conn, _) in open {
        conn.close().await.unwrap();
    }
    warm.close().await.unwrap();
}

async fn memory_grown_by_a_burst_is_given_back() {
    let (conn, ch) = support::channel().await;
    let queue = support::unique("footprint");
    ch.queue_declare(&queue, QueueDeclareOptions::default())
        .await
        .unwrap();
    ch.basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(&queue, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    // The application's consumer loop: it waits in `recv` whenever it is not handling one.
    let received = Arc::new(AtomicUsize::new(0));
    let consuming = tokio::spawn({
        let received = Arc::clone(&received);
        async move {
            while let Some(delivery) = consumer.recv().await {
                delivery.unwrap().ack().unwrap();
                received.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    ch.confirm_select().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let quiet = live();

    // A burst: confirmed publishes with a deep window, consumed by the same connection, with
    // bodies small enough to be copied into the write buffer.
    let body = Bytes::from(vec![b'x'; 2000]);
    let total = 20_000;
    let mut peak = 0;
    support::publish_confirmed(&ch, &queue, &body, total, 2000, || peak = peak.max(live())).await;
    while received.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(1)).await;
        peak = peak.max(live());
    }
    let grown = peak - quiet;
    eprintln!("heap grown by the burst: {grown} bytes");
    assert!(
        grown > 256 * 1024,
        "the burst should grow the buffers (grew {grown} bytes): the test measures nothing"
    );

    // Quiet for longer than the shrink delay: the buffers go back.
    let mut left = isize::MAX;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = live() - quiet;
        if left < 16 * 1024 {
            break;
        }
    }
    eprintln!("heap still held after a quiet spell: {left} bytes");
    assert!(
        left < 16 * 1024,
        "after the burst, the connection still holds {left} more bytes than before it"
    );

    consuming.abort();
    let _ = consuming.await;
    ch.queue_delete(&queue, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}
