//! The hot paths allocate nothing per message: publishing (with and without confirms) and
//! consuming with acks, counted by a global allocator over the whole process (lepus, tokio,
//! everything) while thousands of messages go through the real broker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use lepus::{
    bytes::Bytes, BasicConsumeOptions, BasicProperties, BasicPublishOptions, BasicQosOptions,
    Channel, QueueDeclareOptions, QueueDeleteOptions,
};

#[global_allocator]
static GLOBAL: support::counting::Counting = support::counting::Counting;

const N: usize = 20_000;
const WINDOW: usize = 1000;

/// Allocations per message while `run` handles `N` messages.
async fn per_message<F: std::future::Future<Output = ()>>(run: F) -> f64 {
    let before = support::counting::allocations();
    run.await;
    (support::counting::allocations() - before) as f64 / N as f64
}

async fn publish_confirmed(ch: &Channel, queue: &str, body: &Bytes, n: usize) {
    support::publish_confirmed(ch, queue, body, n, WINDOW, || {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_and_consuming_allocate_nothing_per_message() {
    let (conn, ch) = support::channel().await;
    let queue = support::unique("alloc");
    ch.queue_declare(&queue, QueueDeclareOptions::default())
        .await
        .unwrap();
    let body = Bytes::from(vec![b'x'; 64]);
    let props = BasicProperties::default();

    // Without confirms.
    let plain = per_message(async {
        for _ in 0..N {
            ch.basic_publish(
                "",
                &queue,
                BasicPublishOptions::default(),
                &props,
                body.clone(),
            )
            .await
            .unwrap();
        }
    })
    .await;

    // With confirms, after a warm-up that grows the queues to the window.
    ch.confirm_select().await.unwrap();
    publish_confirmed(&ch, &queue, &body, 2 * WINDOW).await;
    let confirmed = per_message(publish_confirmed(&ch, &queue, &body, N)).await;

    // Consuming with one ack per message, after a warm-up batch.
    ch.basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(&queue, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    for _ in 0..2 * WINDOW {
        consumer.recv().await.unwrap().unwrap().ack().unwrap();
    }
    let consumed = per_message(async {
        for _ in 0..N {
            consumer.recv().await.unwrap().unwrap().ack().unwrap();
        }
    })
    .await;
    eprintln!(
        "allocations per message: publish {plain:.3}, confirmed publish {confirmed:.3}, \
         consume+ack {consumed:.3}"
    );
    drop(consumer);
    ch.queue_delete(&queue, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();

    // An allocation per 64 KiB buffer of input or output is fine (about one per few hundred
    // messages here); one per message, or per batch of a few, is not.
    assert!(plain < 0.05, "publish: {plain} allocations per message");
    assert!(
        confirmed < 0.05,
        "confirmed publish: {confirmed} per message"
    );
    assert!(consumed < 0.05, "consume and ack: {consumed} per message");
}
