//! A zero-loss run: numbered messages published with confirms (each published again until
//! the broker acks it) and consumed on the same connection, counted by number.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lepus::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, Confirmation, Connection,
    DeliveryMode, Error,
};

/// What a zero-loss run saw.
#[derive(Debug)]
pub(crate) struct Run {
    /// Deliveries per message number.
    pub(crate) received: Vec<u32>,
    /// Publishes made again after a lost confirm.
    pub(crate) republished: u64,
}

impl Run {
    pub(crate) fn missing(&self) -> Vec<usize> {
        (0..self.received.len())
            .filter(|&i| self.received[i] == 0)
            .collect()
    }

    pub(crate) fn duplicates(&self) -> u32 {
        self.received.iter().map(|&c| c.saturating_sub(1)).sum()
    }
}

/// Test options with a connection name (to find it with rabbitmqctl) and patient requests.
pub(crate) fn options(name: &str) -> lepus::ConnectionOptions {
    let mut o = super::options();
    o.connection_name(name).rpc_timeout(Duration::from_secs(30));
    o
}

/// Publishes `n` numbered persistent messages to `queue`, each until the broker acks it, and
/// consumes them on the same connection, acking each; `disrupt` runs once a third are
/// confirmed.
pub(crate) async fn zero_loss_run<F: std::future::Future<Output = ()>>(
    conn: &Connection,
    queue: &str,
    n: usize,
    disrupt: F,
) -> Run {
    let ch = conn.open_channel().await.unwrap();
    ch.basic_qos(100, Default::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(queue, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    let consuming = tokio::spawn(async move {
        let mut received = vec![0u32; n];
        let mut distinct = 0;
        while distinct < n {
            let delivery = match consumer.recv().await {
                Some(Ok(d)) => d,
                Some(Err(e)) => panic!("the consumer failed: {e}"),
                None => panic!("the consumer ended"),
            };
            let id: usize = std::str::from_utf8(&delivery.body)
                .unwrap()
                .parse()
                .unwrap();
            if received[id] == 0 {
                distinct += 1;
            }
            received[id] += 1;
            match delivery.ack() {
                // Its link was lost: the broker delivers it again.
                Ok(()) | Err(Error::StaleDelivery { .. }) => {}
                Err(e) => panic!("ack failed: {e}"),
            }
        }
        received
    });

    let publisher = conn.open_channel().await.unwrap();
    publisher.confirm_select().await.unwrap();
    let confirmed = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&confirmed);
    let queue_name = queue.to_string();
    let publishing = tokio::spawn(async move {
        let props = BasicProperties::builder()
            .delivery_mode(DeliveryMode::Persistent)
            .build()
            .unwrap();
        let mut republished = 0;
        for id in 0..n {
            loop {
                let outcome = match publisher
                    .basic_publish(
                        "",
                        &queue_name,
                        BasicPublishOptions::default(),
                        &props,
                        id.to_string(),
                    )
                    .await
                {
                    Ok(confirm) => confirm.await,
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(Confirmation::Ack(None)) => break,
                    Ok(Confirmation::Uncertain | Confirmation::Nack(_)) => republished += 1,
                    Err(e) if e.is_retryable() => republished += 1,
                    other => panic!("publishing {id}: {other:?}"),
                }
            }
            counter.fetch_add(1, Ordering::SeqCst);
        }
        republished
    });

    while confirmed.load(Ordering::SeqCst) < n as u64 / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    disrupt.await;
    let republished = tokio::time::timeout(Duration::from_secs(90), publishing)
        .await
        .expect("publishing stalled")
        .unwrap();
    let received = tokio::time::timeout(Duration::from_secs(90), consuming)
        .await
        .expect("consuming stalled: messages are missing")
        .unwrap();
    Run {
        received,
        republished,
    }
}
