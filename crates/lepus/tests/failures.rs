//! Dead peers, stalled networks and timeouts: nothing a user calls may hang forever.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use lepus::{
    bytes, BasicConsumeOptions, BasicProperties, BasicPublishOptions, Connection, ConnectionError,
    Error, Heartbeat, QueueDeclareOptions, QueueDeleteOptions,
};
use support::proxy::{black_hole, broker_addr, through, Proxy};
use support::unique;

#[tokio::test]
async fn dead_peer_is_detected_after_two_heartbeat_intervals() {
    let proxy = Proxy::start(broker_addr()).await;
    // Fail-fast: without recovery, everything ends with the heartbeat timeout.
    let conn = through(&proxy, |o| {
        o.heartbeat(Heartbeat::Secs(1)).no_recovery();
    })
    .await;
    assert_eq!(conn.negotiated().heartbeat, 1);
    let ch = conn.open_channel().await.unwrap();
    let q = support::exclusive_queue(&ch, "heartbeat").await;
    ch.confirm_select().await.unwrap();
    let mut consumer = ch
        .basic_consume(&q, "", BasicConsumeOptions::default())
        .await
        .unwrap();

    proxy.freeze();
    let started = Instant::now();
    // A publish whose confirm can never arrive, a consumer waiting, a request in flight:
    let confirm = ch
        .basic_publish(
            "",
            &q,
            BasicPublishOptions::default(),
            &BasicProperties::default(),
            "x",
        )
        .await
        .unwrap();
    let rpc = ch.queue_declare_passive(&q);
    let (confirm, next, rpc) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(confirm, consumer.recv(), rpc)
    })
    .await
    .expect("everything must end within a few heartbeat intervals");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "too early: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(6), "too late: {elapsed:?}");
    for err in [
        confirm.unwrap_err(),
        next.unwrap().unwrap_err(),
        rpc.unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                Error::ConnectionClosed(ConnectionError::HeartbeatTimeout(1))
            ),
            "{err}"
        );
    }
    assert!(!conn.is_open());
    assert!(matches!(
        conn.closed().await,
        Error::ConnectionClosed(ConnectionError::HeartbeatTimeout(1))
    ));
}

#[tokio::test]
async fn heartbeats_keep_an_idle_connection_alive() {
    let mut o = support::options();
    o.heartbeat(Heartbeat::Secs(1));
    let conn = Connection::connect_with(o).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        conn.is_open(),
        "idle for 3.5 heartbeat intervals, still open"
    );
    let ch = conn.open_channel().await.unwrap();
    ch.close().await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn rpc_timeout_when_the_network_stalls() {
    let proxy = Proxy::start(broker_addr()).await;
    let conn = through(&proxy, |o| {
        o.heartbeat(Heartbeat::Disabled)
            .rpc_timeout(Duration::from_millis(400));
    })
    .await;
    let ch = conn.open_channel().await.unwrap();
    proxy.freeze();
    let started = Instant::now();
    let err = ch
        .queue_declare(&unique("stall"), QueueDeclareOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                what: "queue.declare-ok",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn handshake_timeout_when_the_server_never_answers() {
    let (addr, _task) = black_hole().await;
    let mut o = lepus::ConnectionOptions::new();
    o.address(addr.ip().to_string(), addr.port())
        .handshake_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = Connection::connect_with(o).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    // It sent nothing at all: probably not a broker.
    assert_eq!(
        err.to_string(),
        "timed out after 300 ms waiting for connection.start (the server sent nothing: is it \
         an AMQP 0-9-1 broker?)"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn close_timeout_when_the_network_stalls() {
    let proxy = Proxy::start(broker_addr()).await;
    let conn = through(&proxy, |o| {
        o.heartbeat(Heartbeat::Disabled)
            .close_timeout(Duration::from_millis(300));
    })
    .await;
    proxy.freeze();
    let started = Instant::now();
    // Everything was written (the close frame fits in the socket), but close-ok never comes.
    let err = conn.close().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                what: "connection.close-ok",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!conn.is_open());
}

#[tokio::test]
async fn slow_consumer_pauses_reading_instead_of_buffering_everything() {
    let (conn, ch) = support::channel().await;
    let q = unique("backpressure");
    ch.queue_declare(&q, QueueDeclareOptions::default())
        .await
        .unwrap();
    let body = bytes::Bytes::from(vec![7u8; 10 * 1024]);
    for _ in 0..2000 {
        ch.basic_publish(
            "",
            &q,
            BasicPublishOptions::default(),
            &BasicProperties::default(),
            body.clone(),
        )
        .await
        .unwrap();
    }
    let consumer_ch = conn.open_channel().await.unwrap();
    let mut consumer = consumer_ch
        .basic_consume(
            &q,
            "",
            BasicConsumeOptions {
                no_ack: true,
                buffer: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // 20 MiB are ready, the consumer reads nothing and buffers at most 10: lepus stops reading
    // the socket, so the broker still holds most of the messages.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (other, observer) = support::channel().await;
    let left = observer
        .queue_declare_passive(&q)
        .await
        .unwrap()
        .message_count;
    assert!(
        left > 1000,
        "only {left} of 2000 messages left: the client kept reading"
    );
    other.close().await.unwrap();
    let mut received = 0;
    while received < 2000 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
            .await
            .unwrap();
        d.unwrap().unwrap();
        received += 1;
    }
    assert_eq!(
        received, 2000,
        "every message arrives once the consumer reads"
    );
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn publishers_wait_when_the_socket_cannot_keep_up() {
    let proxy = Proxy::start(broker_addr()).await;
    let conn = through(&proxy, |o| {
        o.heartbeat(Heartbeat::Disabled)
            .write_buffer_high_water(64 * 1024)
            .blocked_publish_timeout(Some(Duration::from_millis(500)));
    })
    .await;
    let ch = conn.open_channel().await.unwrap();
    proxy.freeze();
    let body = bytes::Bytes::from(vec![1u8; 16 * 1024]);
    let props = BasicProperties::default();
    let mut sent = 0usize;
    let err = loop {
        match ch
            .basic_publish(
                "",
                "nowhere",
                BasicPublishOptions::default(),
                &props,
                body.clone(),
            )
            .await
        {
            Ok(_) => sent += 1,
            Err(e) => break e,
        }
        assert!(
            sent < 10_000,
            "160 MiB accepted into memory without backpressure"
        );
    };
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    // Bounded: kernel socket buffers plus the 64 KiB high-water mark, far below what was tried.
    assert!(
        sent * body.len() < 64 * 1024 * 1024,
        "{sent} messages buffered"
    );
}

#[tokio::test]
async fn tls_handshake_timeout_when_the_server_never_answers() {
    let (addr, _task) = black_hole().await;
    let mut o =
        lepus::ConnectionOptions::from_uri(&format!("amqps://127.0.0.1:{}/", addr.port())).unwrap();
    let mut tls = lepus::TlsOptions::new();
    tls.danger_disable_verification();
    o.tls(tls).connect_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = Connection::connect_with(o).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                what: "TLS handshake",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn tcp_connect_timeout_when_nothing_accepts() {
    // A listener whose accept queue is full: further SYNs are dropped, so connect hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(100),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let mut o = lepus::ConnectionOptions::new();
    o.address("127.0.0.1", addr.port())
        .connect_timeout(Duration::from_millis(300))
        .handshake_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = Connection::connect_with(o).await.unwrap_err();
    // Either the TCP connect or (if the kernel completed it anyway) the handshake times out.
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(listener);
}

#[tokio::test]
async fn acks_reach_the_broker_without_further_activity() {
    // Acks may wait for the connection's next read before they are written, but never for
    // long: after a burst of acked deliveries and then silence, the link is cut. Any ack
    // still held by the client would make the broker requeue its message.
    let (direct, dch) = support::channel().await;
    let q = filled_queue(&dch, "acks-alone", 200).await;
    assert_eq!(acks_lost_when_cut(&q, 200, None).await, 0);
    dch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    direct.close().await.unwrap();
}

/// Publishes `n` small messages to a fresh queue; returns its name.
async fn filled_queue(ch: &lepus::Channel, prefix: &str, n: usize) -> String {
    let q = unique(prefix);
    ch.queue_declare(&q, QueueDeclareOptions::default())
        .await
        .unwrap();
    ch.confirm_select().await.unwrap();
    for _ in 0..n {
        let confirm = ch
            .basic_publish(
                "",
                &q,
                BasicPublishOptions::default(),
                &BasicProperties::default(),
                "m",
            )
            .await
            .unwrap();
        drop(confirm);
    }
    assert!(ch.wait_for_confirms(Duration::from_secs(10)).await.unwrap());
    q
}

#[tokio::test]
async fn acks_the_broker_waits_for_go_out_at_once() {
    // With prefetch 1 the broker holds the next message back until it gets the ack. The ack
    // must not wait for the writer's coalescing timer (a minute here, so waiting would show),
    // even when the application does not touch lepus again for a while.
    let (direct, dch) = support::channel().await;
    let q = filled_queue(&dch, "prefetch-acks", 2).await;
    let mut o = support::options();
    o.write_coalescing(Duration::from_secs(60));
    let conn = Connection::connect_with(o).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    ch.basic_qos(1, lepus::BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(&q, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
        .await
        .expect("first delivery")
        .unwrap()
        .unwrap();
    assert_eq!(
        dch.queue_declare_passive(&q).await.unwrap().message_count,
        1
    );
    first.ack().unwrap();
    // Once the ack arrives, the broker hands the second message to the consumer.
    let deadline = Instant::now() + Duration::from_secs(5);
    while dch.queue_declare_passive(&q).await.unwrap().message_count != 0 {
        assert!(Instant::now() < deadline, "the ack was held back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(consumer);
    dch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
    direct.close().await.unwrap();
}

/// Consumes all `n` messages of `queue` through a proxy, acking each, then cuts the link
/// and returns how many messages the broker got back (their acks never reached it).
/// `coalescing` sets the write-coalescing delay; `None` keeps the default.
async fn acks_lost_when_cut(queue: &str, n: usize, coalescing: Option<Duration>) -> u32 {
    let proxy = Proxy::start(broker_addr()).await;
    let conn = through(&proxy, |o| {
        if let Some(delay) = coalescing {
            o.write_coalescing(delay);
        }
    })
    .await;
    let ch = conn.open_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(queue, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    for i in 0..n {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
            .await
            .expect("delivery")
            .unwrap()
            .unwrap();
        delivery.ack().unwrap();
        if i == 9 {
            // The writer sends the first ten acks together (it last wrote basic.consume,
            // whose answer the application awaited, so it was not lazy; this task does not
            // yield while deliveries are ready). Having written a batch of acks only, it
            // then turns lazy, and the following acks may wait.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Long enough for bytes already written to cross the proxy.
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.cut();
    let (other, och) = support::channel().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let left = loop {
        let state = och.queue_declare_passive(queue).await.unwrap();
        if state.consumer_count == 0 {
            break state.message_count;
        }
        assert!(
            Instant::now() < deadline,
            "the broker kept the cut consumer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(conn);
    other.close().await.unwrap();
    left
}

#[tokio::test]
async fn write_coalescing_sets_how_long_acks_may_wait() {
    // With a minute of coalescing, the acks made after the last read are still held when
    // the link is cut, and the broker requeues their messages; with none, every ack is
    // written at once.
    let (direct, dch) = support::channel().await;
    let q = filled_queue(&dch, "coalescing-minute", 50).await;
    let left = acks_lost_when_cut(&q, 50, Some(Duration::from_secs(60))).await;
    assert!(left > 0, "acks should still have been waiting");
    dch.queue_purge(&q).await.unwrap();
    dch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();

    let q = filled_queue(&dch, "coalescing-none", 50).await;
    let left = acks_lost_when_cut(&q, 50, Some(Duration::ZERO)).await;
    assert_eq!(left, 0, "every ack must have been written at once");
    dch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    direct.close().await.unwrap();
}
