//! A consumer whose buffer is full stops the connection's reader (backpressure), but never
//! when the application waits for a reply behind its deliveries: cancelling that consumer,
//! closing its channel, closing the connection. A scripted broker floods the consumer far
//! beyond any prefetch window and answers only after the flood, as a busy (or buggy) broker
//! may.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lepus::bytes::BytesMut;
use lepus::lepus_wire::method::{basic, channel, connection};
use lepus::lepus_wire::{Frame, Method};
use lepus::{BasicConsumeOptions, Connection};
use support::fake_broker::{FakeBroker, Peer};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Deliveries the scripted broker sends after consume-ok, before any reply.
const FLOOD: u64 = 5000;
/// The consumer's buffer: the flood fills it at once.
const BUFFER: usize = 8;

/// What the scripted broker saw the client settle.
#[derive(Default)]
struct Settled {
    acked: AtomicU64,
    requeued: AtomicU64,
}

/// Handshake, consume-ok, then [`FLOOD`] deliveries; cancels, channel closes and connection
/// closes are answered after the flood.
async fn flood(mut peer: Peer, settled: Arc<Settled>) {
    peer.handshake().await;
    let (ch, tag) = peer.serve_until_consume().await;
    let writer = peer.writer();
    let (reply_tx, mut replies) = mpsc::unbounded_channel::<(u16, Method)>();
    tokio::spawn(async move {
        let mut out = BytesMut::new();
        for delivery_tag in 1..=FLOOD {
            Peer::encode_delivery(&mut out, ch, &tag, delivery_tag, b"flood");
            if out.len() > 16 * 1024 || delivery_tag == FLOOD {
                if writer.lock().await.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        }
        while let Some((channel, method)) = replies.recv().await {
            Frame::Method { channel, method }.encode(&mut out);
            let _ = writer.lock().await.write_all(&out).await;
            out.clear();
        }
    });
    let reply = |channel: u16, method: Method| {
        let _ = reply_tx.send((channel, method));
    };
    while let Some((channel, method)) = peer.recv_method().await {
        match method {
            Method::BasicAck(ack) => {
                assert!(!ack.multiple);
                settled.acked.fetch_add(1, Ordering::SeqCst);
            }
            Method::BasicReject(reject) => {
                assert!(
                    reject.requeue,
                    "a delivery was dropped instead of given back"
                );
                settled.requeued.fetch_add(1, Ordering::SeqCst);
            }
            Method::BasicCancel(cancel) => reply(
                channel,
                basic::CancelOk {
                    consumer_tag: cancel.consumer_tag,
                }
                .into(),
            ),
            Method::ChannelClose(_) => reply(channel, channel::CloseOk.into()),
            Method::ConnectionClose(_) => reply(0, connection::CloseOk.into()),
            _ => {}
        }
    }
}

/// A connection to a flooding broker with one consumer whose buffer is full (so the reader
/// has stopped reading).
async fn flooded() -> (
    FakeBroker,
    Arc<Settled>,
    Connection,
    lepus::Channel,
    lepus::Consumer,
) {
    let settled = Arc::new(Settled::default());
    let seen = Arc::clone(&settled);
    let fake = FakeBroker::start(move |peer| flood(peer, Arc::clone(&seen))).await;
    let mut options = fake.options();
    options
        .rpc_timeout(Duration::from_secs(10))
        .close_timeout(Duration::from_secs(10));
    let conn = Connection::connect_with(options).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    let consumer = ch
        .basic_consume(
            "q",
            "",
            BasicConsumeOptions {
                buffer: BUFFER,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Let the flood fill the buffer and the socket.
    tokio::time::sleep(Duration::from_millis(200)).await;
    (fake, settled, conn, ch, consumer)
}

/// Runs `call` and checks that it finished within two seconds (the replies come right after
/// the flood, which takes milliseconds to read).
async fn promptly<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung behind a full consumer buffer"));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "{what} took {took:?}");
    out
}

#[tokio::test]
async fn cancelling_a_consumer_whose_buffer_is_full_reads_cancel_ok() {
    let (_fake, settled, conn, ch, mut consumer) = flooded().await;
    let tag = consumer.tag().clone();
    promptly("basic_cancel", ch.basic_cancel(&tag))
        .await
        .unwrap();
    // The stream yields what it had buffered, then ends.
    let mut received = 0;
    while let Some(delivery) = consumer.recv().await {
        delivery.unwrap().ack().unwrap();
        received += 1;
    }
    assert!(received >= BUFFER as u64, "{received}");
    // Nothing lost, memory bounded: every delivery reached the application or went back.
    let started = Instant::now();
    while settled.acked.load(Ordering::SeqCst) + settled.requeued.load(Ordering::SeqCst) < FLOOD
        && started.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(settled.acked.load(Ordering::SeqCst), received);
    assert_eq!(
        settled.requeued.load(Ordering::SeqCst),
        FLOOD - received,
        "{received} received"
    );
    promptly("close", conn.close()).await.unwrap();
}

#[tokio::test]
async fn closing_a_channel_whose_consumer_buffer_is_full_reads_close_ok() {
    let (_fake, _settled, conn, ch, _consumer) = flooded().await;
    promptly("channel close", ch.close()).await.unwrap();
    assert!(conn.is_open());
    promptly("close", conn.close()).await.unwrap();
}

#[tokio::test]
async fn closing_a_connection_with_a_full_consumer_buffer_reads_close_ok() {
    let (_fake, _settled, conn, _ch, _consumer) = flooded().await;
    promptly("connection close", conn.close()).await.unwrap();
}
