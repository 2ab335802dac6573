//! Read coalescing against the broker: while the broker streams deliveries or confirms in
//! small batches, lepus reads them in larger ones, and never when someone could be waiting.
//!
//! A pacing proxy passes the broker's bytes on in 8 KiB pieces with a pause after each, so
//! that every test sees a stream of small batches whatever the machine's speed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::collections::VecDeque;
use std::time::Duration;

use lepus::{BasicConsumeOptions, BasicQosOptions, Channel, Connection, QueueDeclareOptions};
use support::proxy::{broker_addr, through, Pace, Proxy};

const PACE: Pace = Pace {
    chunk: 8 * 1024,
    gap: Duration::from_millis(1),
};

async fn paced(read_coalescing: Duration) -> (Proxy, Connection, Channel) {
    let proxy = Proxy::start_paced(broker_addr(), Some(PACE)).await;
    // Without recovery, so that a cut link shows at once.
    let conn = through(&proxy, |o| {
        o.read_coalescing(read_coalescing).no_recovery();
    })
    .await;
    let ch = conn.open_channel().await.unwrap();
    (proxy, conn, ch)
}

/// Puts `n` numbered messages on a new queue of the broker; returns its name.
async fn filled_queue(ch: &Channel, n: u32) -> String {
    let q = support::exclusive_queue(ch, "coalescing").await;
    ch.confirm_select().await.unwrap();
    for i in 0..n {
        support::publish(ch, &q, i.to_be_bytes().to_vec()).await;
    }
    assert!(ch.wait_for_confirms(Duration::from_secs(30)).await.unwrap());
    q
}

/// Consumes `n` messages from `queue`, acking each, and checks that they come in order.
async fn consume_in_order(ch: &Channel, queue: &str, n: u32) {
    let mut consumer = ch
        .basic_consume(queue, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    for i in 0..n {
        let delivery = consumer.recv().await.unwrap().unwrap();
        assert_eq!(delivery.body.as_ref(), i.to_be_bytes());
        delivery.ack().unwrap();
    }
}

#[tokio::test]
async fn a_stream_of_small_batches_of_deliveries_is_read_in_larger_ones() {
    let (_proxy, conn, ch) = paced(Duration::from_millis(5)).await;
    let q = filled_queue(&ch, 3000).await;
    let before = conn.stats();
    consume_in_order(&ch, &q, 3000).await;
    let stats = conn.stats();
    assert!(
        stats.delayed_reads > before.delayed_reads,
        "no read was delayed: {stats:?}"
    );
    let q = ch.queue_declare_passive(&q).await.unwrap();
    assert_eq!(q.message_count, 0);
}

#[tokio::test]
async fn zero_read_coalescing_never_delays_a_read() {
    let (_proxy, conn, ch) = paced(Duration::ZERO).await;
    let q = filled_queue(&ch, 3000).await;
    consume_in_order(&ch, &q, 3000).await;
    let stats = conn.stats();
    assert_eq!(stats.delayed_reads, 0, "{stats:?}");
    assert!(stats.reads > 0 && stats.writes > 0 && stats.bytes_read > 3000 * 8);
}

#[tokio::test]
async fn a_deep_confirm_pipeline_is_read_in_larger_batches() {
    let (_proxy, conn, ch) = paced(Duration::from_millis(5)).await;
    let q = support::exclusive_queue(&ch, "coalescing-confirms").await;
    ch.confirm_select().await.unwrap();
    let before = conn.stats();
    let mut window = VecDeque::new();
    for i in 0..10_000u32 {
        if window.len() == 1000 {
            let confirm: lepus::PublisherConfirm = window.pop_front().unwrap();
            assert!(confirm.await.unwrap().is_ack());
        }
        let confirm = support::publish(&ch, &q, i.to_be_bytes().to_vec()).await;
        window.push_back(confirm);
    }
    for confirm in window {
        assert!(confirm.await.unwrap().is_ack());
    }
    let stats = conn.stats();
    assert!(
        stats.delayed_reads > before.delayed_reads,
        "no read was delayed: {stats:?}"
    );
    assert_eq!(
        ch.queue_declare_passive(&q).await.unwrap().message_count,
        10_000
    );
}

#[tokio::test]
async fn publishing_one_confirm_at_a_time_is_never_delayed() {
    let (_proxy, conn, ch) = paced(Duration::from_millis(5)).await;
    let q = support::exclusive_queue(&ch, "coalescing-one-by-one").await;
    ch.confirm_select().await.unwrap();
    let before = conn.stats();
    for i in 0..500u32 {
        let confirm = support::publish(&ch, &q, i.to_be_bytes().to_vec()).await;
        assert!(confirm.await.unwrap().is_ack());
    }
    assert_eq!(conn.stats().delayed_reads, before.delayed_reads);
}

/// A request/reply loop through the broker, 32 requests in flight: the requester publishes
/// each next request when a reply arrives, so it waits on the broker, and its reads are never
/// delayed, even though replies arrive in batches through the pacing proxy.
#[tokio::test]
async fn a_request_reply_loop_is_never_delayed() {
    const IN_FLIGHT: u32 = 32;
    const ROUNDS: u32 = 2000;
    let (_proxy, conn, ch) = paced(Duration::from_millis(5)).await;
    let requests = support::unique("coalescing-requests");
    let replies = support::unique("coalescing-replies");
    for q in [&requests, &replies] {
        let options = QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        };
        ch.queue_declare(q, options).await.unwrap();
    }
    ch.basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();

    // The responder, on a connection of its own, echoes every request to the reply queue.
    let (_responder_conn, responder) = support::channel().await;
    let mut incoming = responder
        .basic_consume(
            &requests,
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let reply_to = replies.clone();
    let echo = tokio::spawn(async move {
        for _ in 0..ROUNDS {
            let request = incoming.recv().await.unwrap().unwrap();
            support::publish(&responder, &reply_to, request.body).await;
        }
    });

    let mut answers = ch
        .basic_consume(&replies, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    let before = conn.stats();
    let request = |i: u32| support::publish(&ch, &requests, i.to_be_bytes().to_vec());
    for i in 0..IN_FLIGHT {
        request(i).await;
    }
    for i in 0..ROUNDS {
        let reply = answers.recv().await.unwrap().unwrap();
        assert_eq!(reply.body.as_ref(), i.to_be_bytes());
        reply.ack().unwrap();
        if i + IN_FLIGHT < ROUNDS {
            request(i + IN_FLIGHT).await;
        }
    }
    echo.await.unwrap();
    let stats = conn.stats();
    assert_eq!(stats.delayed_reads, before.delayed_reads, "{stats:?}");
}

/// Delays too long for the clock neither panic nor stall: the read delay is capped at
/// 100 ms, and acks waiting for a year-long write delay still go out when the consumer waits.
#[tokio::test]
async fn huge_delays_are_capped_and_never_panic() {
    let proxy = Proxy::start_paced(broker_addr(), Some(PACE)).await;
    let conn = through(&proxy, |o| {
        o.read_coalescing(Duration::MAX)
            .write_coalescing(Duration::MAX);
        assert!(format!("{o:?}").contains("read_coalescing: 100ms"));
    })
    .await;
    let ch = conn.open_channel().await.unwrap();
    let q = filled_queue(&ch, 2000).await;
    tokio::time::timeout(Duration::from_secs(60), consume_in_order(&ch, &q, 2000))
        .await
        .expect("consuming stalled");
    conn.close().await.unwrap();
}

/// The link dropping while the reader holds off a read ends the consumer with an error at
/// once: a delayed read never hides a dead connection.
#[tokio::test]
async fn a_link_cut_during_delayed_reads_ends_the_consumer() {
    let (proxy, conn, ch) = paced(Duration::from_millis(5)).await;
    let q = filled_queue(&ch, 5000).await;
    let mut consumer = ch
        .basic_consume(&q, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    let mut received = 0;
    let mut cut = false;
    loop {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
            .await
            .expect("the consumer hung after the link was cut");
        match delivery {
            Some(Ok(d)) => {
                d.ack().unwrap();
                received += 1;
                // Cut once reads are being delayed.
                if !cut && received >= 500 && conn.stats().delayed_reads > 0 {
                    proxy.cut();
                    cut = true;
                }
                assert!(received < 5000, "no read was delayed: {:?}", conn.stats());
            }
            Some(Err(e)) => {
                assert!(
                    matches!(e, lepus::Error::ConnectionClosed(_)),
                    "unexpected error {e}"
                );
                break;
            }
            None => panic!("the stream ended without saying why"),
        }
    }
    assert!(cut);
    assert!(!conn.is_open());
}

/// Write coalescing only where it pays: acks of a stream of deliveries wait for a write
/// already coming, while in a request/reply loop (publish, wait for the delivery, ack) the
/// writer never turns lazy, so no ack waits and no timer runs per round trip.
#[tokio::test]
async fn acks_wait_for_a_coming_write_only_when_nobody_awaits_an_answer() {
    let conn = support::connect().await;
    let ch = conn.open_channel().await.unwrap();
    ch.basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let q = support::exclusive_queue(&ch, "pingpong").await;
    let mut consumer = ch
        .basic_consume(&q, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    let before = conn.stats();
    for i in 0..300u32 {
        support::publish(&ch, &q, i.to_be_bytes().to_vec()).await;
        let delivery = consumer.recv().await.unwrap().unwrap();
        assert_eq!(delivery.body.as_ref(), i.to_be_bytes());
        delivery.ack().unwrap();
    }
    let ping_pong = conn.stats().deferred_acks - before.deferred_acks;
    // The first round trips may find the writer lazy from the set-up.
    assert!(
        ping_pong <= 3,
        "{ping_pong} acks of a request/reply loop waited"
    );

    ch.basic_cancel(consumer.tag()).await.unwrap();
    let filled = filled_queue(&ch, 3000).await;
    let before = conn.stats();
    consume_in_order(&ch, &filled, 3000).await;
    let streamed = conn.stats().deferred_acks - before.deferred_acks;
    assert!(
        streamed > 300,
        "only {streamed} of 3000 streamed acks waited"
    );
    conn.close().await.unwrap();
}
