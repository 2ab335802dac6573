//! The async client against a real RabbitMQ.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use lepus::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, BasicQosOptions, BindOptions,
    Confirmation, Connection, ConnectionOptions, Error, ExchangeDeclareOptions,
    ExchangeDeleteOptions, ExchangeKind, FieldTable, FieldValue, Heartbeat, QueueDeclareOptions,
    QueueDeleteOptions, ReplyCode, ShortStr,
};
use support::{channel, connect, unique};

fn props() -> BasicProperties {
    BasicProperties::default()
}

async fn publish(ch: &lepus::Channel, queue: &str, body: &'static str) {
    ch.basic_publish("", queue, BasicPublishOptions::default(), &props(), body)
        .await
        .unwrap();
}

async fn temp_queue(ch: &lepus::Channel, prefix: &str) -> String {
    let name = unique(prefix);
    ch.queue_declare(
        &name,
        QueueDeclareOptions {
            auto_delete: false,
            arguments: FieldTable::new().with("x-expires", 60_000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    name
}

#[tokio::test]
async fn handshake_negotiates_and_exposes_server_properties() {
    if support::proxy::rabbitmq_only("handshake_negotiates_and_exposes_server_properties") {
        return;
    }
    let conn = connect().await;
    let props = conn.server_properties();
    assert_eq!(
        props.get("product").and_then(FieldValue::as_str),
        Some("RabbitMQ")
    );
    let caps = props
        .get("capabilities")
        .and_then(FieldValue::as_table)
        .unwrap();
    assert_eq!(
        caps.get("publisher_confirms").and_then(FieldValue::as_bool),
        Some(true)
    );
    let n = conn.negotiated();
    assert_eq!(n.frame_max, 131_072);
    assert_eq!(n.channel_max, 2047);
    assert_eq!(n.heartbeat, 60, "server default heartbeat");
    assert!(conn.is_open());
    conn.close().await.unwrap();
    assert!(!conn.is_open());
}

#[tokio::test]
async fn heartbeat_choice_is_sent_to_the_server() {
    let mut o = support::options();
    o.heartbeat(Heartbeat::Secs(7));
    let conn = Connection::connect_with(o).await.unwrap();
    assert_eq!(conn.negotiated().heartbeat, 7);
    conn.close().await.unwrap();
    let mut o = support::options();
    o.heartbeat(Heartbeat::Disabled);
    let conn = Connection::connect_with(o).await.unwrap();
    assert_eq!(conn.negotiated().heartbeat, 0);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn bad_password_is_authentication_failed() {
    let mut o = support::options();
    o.credentials("guest", "definitely-wrong");
    let err = Connection::connect_with(o).await.unwrap_err();
    assert!(matches!(err, Error::AuthenticationFailed(_)), "{err}");
    assert_eq!(err.reply_code(), Some(ReplyCode::ACCESS_REFUSED));
    assert!(!err.to_string().contains("definitely-wrong"));
}

#[tokio::test]
async fn unknown_vhost_is_refused() {
    let mut o = support::options();
    o.vhost(unique("no-such-vhost"));
    let err = Connection::connect_with(o).await.unwrap_err();
    assert_eq!(err.reply_code(), Some(ReplyCode::NOT_ALLOWED), "{err}");
}

#[tokio::test]
async fn connection_refused_is_a_connect_error() {
    let mut o = ConnectionOptions::new();
    o.address("127.0.0.1", 1);
    let err = Connection::connect_with(o).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}

#[tokio::test]
async fn declare_bind_purge_delete() {
    let (conn, ch) = channel().await;
    let exchange = unique("ex");
    ch.exchange_declare(
        &exchange,
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
    )
    .await
    .unwrap();
    let q = temp_queue(&ch, "dbpd").await;
    ch.queue_bind(&q, &exchange, "key", BindOptions::default())
        .await
        .unwrap();
    for _ in 0..3 {
        ch.basic_publish(
            &exchange,
            "key",
            BasicPublishOptions::default(),
            &props(),
            "x",
        )
        .await
        .unwrap();
    }
    // Declare-ok counts show the routed messages once they are in the queue.
    let mut count = 0;
    for _ in 0..100 {
        count = ch.queue_declare_passive(&q).await.unwrap().message_count;
        if count == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(count, 3);
    assert_eq!(ch.queue_purge(&q).await.unwrap(), 3);
    ch.queue_unbind(&q, &exchange, "key", FieldTable::new())
        .await
        .unwrap();
    ch.basic_publish(
        &exchange,
        "key",
        BasicPublishOptions::default(),
        &props(),
        "x",
    )
    .await
    .unwrap();
    assert_eq!(
        ch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap(),
        0
    );
    ch.exchange_delete(&exchange, ExchangeDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn exchange_to_exchange_binding_routes() {
    let (conn, ch) = channel().await;
    let src = unique("src");
    let dst = unique("dst");
    for name in [&src, &dst] {
        ch.exchange_declare(
            name,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
        )
        .await
        .unwrap();
    }
    ch.exchange_bind(&dst, &src, "", BindOptions::default())
        .await
        .unwrap();
    let q = temp_queue(&ch, "e2e").await;
    ch.queue_bind(&q, &dst, "", BindOptions::default())
        .await
        .unwrap();
    ch.basic_publish(&src, "", BasicPublishOptions::default(), &props(), "via")
        .await
        .unwrap();
    let got = support::get_eventually(&ch, &q, true).await;
    assert_eq!(&got.delivery.body[..], b"via");
    ch.exchange_unbind(&dst, &src, "", BindOptions::default())
        .await
        .unwrap();
    for name in [&src, &dst] {
        ch.exchange_delete(name, ExchangeDeleteOptions::default())
            .await
            .unwrap();
    }
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn passive_declare_of_missing_queue_closes_only_the_channel() {
    let (conn, ch) = channel().await;
    let err = ch
        .queue_declare_passive(&unique("missing"))
        .await
        .unwrap_err();
    let Error::ChannelClosed(close) = &err else {
        panic!("{err}")
    };
    assert_eq!(close.code, ReplyCode::NOT_FOUND);
    assert_eq!(close.method_name(), Some("queue.declare"));
    assert!(err.to_string().contains("404 NOT_FOUND"), "{err}");
    assert!(!ch.is_open());
    // The channel is gone; the connection is not.
    let again = ch.queue_declare_passive("whatever").await.unwrap_err();
    // Later calls on the closed channel keep reporting the broker's reason.
    assert!(
        matches!(&again, Error::ChannelClosed(c) if c.code == ReplyCode::NOT_FOUND),
        "{again}"
    );
    assert!(conn.is_open());
    let ch2 = conn.open_channel().await.unwrap();
    let q = temp_queue(&ch2, "after404").await;
    ch2.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn exclusive_queue_is_locked_for_other_connections() {
    let (conn1, ch1) = channel().await;
    let q = support::exclusive_queue(&ch1, "exclusive").await;
    let (conn2, ch2) = channel().await;
    let err = ch2.queue_declare_passive(&q).await.unwrap_err();
    assert_eq!(err.reply_code(), Some(ReplyCode::RESOURCE_LOCKED), "{err}");
    conn2.close().await.unwrap();
    conn1.close().await.unwrap();
}

#[tokio::test]
async fn consume_ack_nack_reject() {
    let (conn, ch) = channel().await;
    let q = temp_queue(&ch, "consume").await;
    for body in ["one", "two", "three"] {
        publish(&ch, &q, body).await;
    }
    let mut consumer = ch
        .basic_consume(&q, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    let first = consumer.next().await.unwrap().unwrap();
    assert_eq!(&first.body[..], b"one");
    assert!(!first.redelivered);
    first.ack().unwrap();
    let second = consumer.next().await.unwrap().unwrap();
    assert_eq!(&second.body[..], b"two");
    second.nack(true).unwrap(); // requeued: comes back, redelivered
    let third = consumer.next().await.unwrap().unwrap();
    assert_eq!(&third.body[..], b"three");
    third.reject(false).unwrap(); // dropped
    let again = consumer.next().await.unwrap().unwrap();
    assert_eq!(&again.body[..], b"two");
    assert!(again.redelivered);
    again.ack().unwrap();
    ch.basic_cancel(consumer.tag().as_str().unwrap())
        .await
        .unwrap();
    assert!(consumer.next().await.is_none(), "stream ends after cancel");
    let left = ch.queue_declare_passive(&q).await.unwrap();
    assert_eq!(left.message_count, 0);
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn prefetch_limits_unacked_deliveries() {
    let (conn, ch) = channel().await;
    let q = temp_queue(&ch, "prefetch").await;
    for _ in 0..20 {
        publish(&ch, &q, "m").await;
    }
    ch.basic_qos(5, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(&q, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(consumer.next().await.unwrap().unwrap());
    }
    // No sixth delivery while five are unacknowledged.
    let sixth = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(
        sixth.is_err(),
        "prefetch 5 must hold back the sixth message"
    );
    held[4].ack_multiple().unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await;
    assert!(next.unwrap().unwrap().is_ok());
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn deleting_the_queue_cancels_the_consumer() {
    let (conn, ch) = channel().await;
    let q = temp_queue(&ch, "servercancel").await;
    let mut consumer = ch
        .basic_consume(&q, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    let ch2 = conn.open_channel().await.unwrap();
    ch2.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    let item = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .unwrap();
    assert!(
        matches!(item, Some(Err(Error::ConsumerCancelled(_)))),
        "{item:?}"
    );
    assert!(consumer.next().await.is_none());
    conn.close().await.unwrap();
}

#[tokio::test]
async fn mandatory_unroutable_message_is_returned_then_acked() {
    let (conn, ch) = channel().await;
    ch.confirm_select().await.unwrap();
    let mut returns = ch.returns().unwrap();
    let key = unique("nowhere");
    let confirm = ch
        .basic_publish(
            "",
            &key,
            BasicPublishOptions { mandatory: true },
            &props(),
            "lost",
        )
        .await
        .unwrap();
    let confirmation = confirm.await.unwrap();
    let Confirmation::Ack(Some(returned)) = &confirmation else {
        panic!("expected ack with returned message, got {confirmation:?}")
    };
    assert_eq!(returned.reply_code, ReplyCode::NO_ROUTE);
    assert_eq!(returned.routing_key, key.as_str());
    assert_eq!(&returned.body[..], b"lost");
    let from_stream = returns.recv().await.unwrap();
    assert_eq!(from_stream.reply_code, ReplyCode::NO_ROUTE);
    // A second receiver gets later returns too, and so does the first.
    let mut second = ch.returns().unwrap();
    ch.basic_publish(
        "",
        &key,
        BasicPublishOptions { mandatory: true },
        &props(),
        "again",
    )
    .await
    .unwrap();
    assert_eq!(&second.recv().await.unwrap().body[..], b"again");
    assert_eq!(&returns.recv().await.unwrap().body[..], b"again");
    conn.close().await.unwrap();
}

#[tokio::test]
async fn confirms_under_pipelined_load() {
    const N: usize = 100_000;
    let (conn, ch) = channel().await;
    let q = temp_queue(&ch, "confirms").await;
    ch.confirm_select().await.unwrap();
    let mut confirms = Vec::with_capacity(N);
    for _ in 0..N {
        confirms.push(
            ch.basic_publish("", &q, BasicPublishOptions::default(), &props(), "c")
                .await
                .unwrap(),
        );
    }
    // Await in reverse order: confirms may be awaited in any order.
    let mut acked = 0;
    for c in confirms.into_iter().rev() {
        if c.await.unwrap().is_ack() {
            acked += 1;
        }
    }
    assert_eq!(acked, N);
    assert!(ch.wait_for_confirms(Duration::from_secs(5)).await.unwrap());
    assert_eq!(
        ch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap() as usize,
        N
    );
    conn.close().await.unwrap();
}

#[tokio::test]
async fn ten_mib_message_round_trip() {
    let (conn, ch) = channel().await;
    let q = temp_queue(&ch, "large").await;
    let body: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    ch.confirm_select().await.unwrap();
    let props = BasicProperties {
        content_type: Some(ShortStr::from_static("application/octet-stream")),
        headers: Some(FieldTable::new().with("size", body.len() as i64)),
        ..Default::default()
    };
    let confirm = ch
        .basic_publish("", &q, BasicPublishOptions::default(), &props, body.clone())
        .await
        .unwrap();
    assert!(confirm.await.unwrap().is_ack());
    let got = ch.basic_get(&q, false).await.unwrap().unwrap();
    assert_eq!(got.delivery.body.len(), body.len());
    assert!(got.delivery.body[..] == body[..]);
    assert_eq!(got.delivery.properties, props);
    got.delivery.ack().unwrap();
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn large_confirmed_publishes_from_two_tasks_arrive_intact() {
    // Bodies far larger than the socket buffer, from two tasks on one channel: waiting for a
    // confirm writes from the caller's thread until the socket is full, then the writer task
    // carries on. Frames must stay whole and in order throughout.
    const PER_TASK: usize = 12;
    const SIZE: usize = 512 * 1024;
    let (conn, ch) = channel().await;
    let q = temp_queue(&ch, "large-two").await;
    ch.confirm_select().await.unwrap();
    let mut tasks = Vec::new();
    for task in 0u8..2 {
        let ch = ch.clone();
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let fill = task * 100 + i as u8;
                let mut body = vec![fill; SIZE];
                body[0] = task;
                let confirm = ch
                    .basic_publish("", &q, BasicPublishOptions::default(), &props(), body)
                    .await
                    .unwrap();
                assert!(confirm.await.unwrap().is_ack());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut seen = [0usize; 2];
    for _ in 0..2 * PER_TASK {
        let got = ch.basic_get(&q, true).await.unwrap().unwrap();
        let body = &got.delivery.body;
        assert_eq!(body.len(), SIZE);
        let task = body[0];
        let fill = task * 100 + seen[task as usize] as u8;
        assert!(
            body[1..].iter().all(|&b| b == fill),
            "task {task} body corrupted"
        );
        seen[task as usize] += 1;
    }
    assert_eq!(seen, [PER_TASK, PER_TASK]);
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_confirmed_publish_nobody_awaits_is_still_sent() {
    // In confirm mode a publish may wait for its publisher to await the confirm, which
    // writes it from the publisher's thread; when nobody awaits, the writer sends it soon.
    let (conn, ch) = channel().await;
    let q = temp_queue(&ch, "unawaited").await;
    ch.confirm_select().await.unwrap();
    for _ in 0..50 {
        let confirm = ch
            .basic_publish("", &q, BasicPublishOptions::default(), &props(), "awaited")
            .await
            .unwrap();
        assert!(confirm.await.unwrap().is_ack());
    }
    let unawaited = ch
        .basic_publish(
            "",
            &q,
            BasicPublishOptions::default(),
            &props(),
            "not awaited",
        )
        .await
        .unwrap();
    // Watch from another connection, so nothing on this one wakes its writer.
    let (other, och) = channel().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let state = och.queue_declare_passive(&q).await.unwrap();
        if state.message_count == 51 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the publish never left"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(unawaited.await.unwrap().is_ack());
    och.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    other.close().await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn transactions_commit_and_roll_back() {
    let (conn, ch) = channel().await;
    let q = temp_queue(&ch, "tx").await;
    ch.tx_select().await.unwrap();
    publish(&ch, &q, "rolled back").await;
    ch.tx_rollback().await.unwrap();
    publish(&ch, &q, "committed").await;
    ch.tx_commit().await.unwrap();
    let got = ch.basic_get(&q, true).await.unwrap().unwrap();
    assert_eq!(&got.delivery.body[..], b"committed");
    assert_eq!(got.message_count, 0);
    assert!(ch.basic_get(&q, true).await.unwrap().is_none());
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn ack_after_the_channel_closed_is_a_local_error() {
    let (conn, ch) = channel().await;
    let q = temp_queue(&ch, "staleack").await;
    publish(&ch, &q, "m").await;
    let got = support::get_eventually(&ch, &q, false).await;
    ch.close().await.unwrap();
    let err = got.delivery.ack().unwrap_err();
    assert!(matches!(err, Error::ChannelNotOpen(_)), "{err}");
    // A new channel takes the same id; the old delivery still cannot ack on it.
    let ch2 = conn.open_channel().await.unwrap();
    assert_eq!(ch2.id(), got.delivery.channel_id());
    assert!(got.delivery.ack().is_err());
    ch2.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn names_over_255_bytes_fail_before_sending() {
    let (conn, ch) = channel().await;
    let long = "q".repeat(256);
    let err = ch
        .queue_declare(&long, QueueDeclareOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(ch.is_open(), "nothing was sent, so the channel stays open");
    let err = ch
        .basic_publish("", &long, BasicPublishOptions::default(), &props(), "x")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    conn.close().await.unwrap();
}

#[tokio::test]
async fn close_flushes_what_was_published() {
    let (conn, ch) = channel().await;
    let q = temp_queue(&ch, "flush").await;
    for _ in 0..1000 {
        publish(&ch, &q, "f").await;
    }
    conn.close().await.unwrap();
    let (conn, ch) = channel().await;
    assert_eq!(
        support::depth_eventually(&ch, &q, 1000, Duration::from_secs(5)).await,
        1000
    );
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn ordering_on_one_channel_is_preserved() {
    let (conn, ch) = channel().await;
    let q = temp_queue(&ch, "order").await;
    for i in 0..500u32 {
        let body = i.to_be_bytes().to_vec();
        ch.basic_publish("", &q, BasicPublishOptions::default(), &props(), body)
            .await
            .unwrap();
    }
    let mut consumer = ch
        .basic_consume(
            &q,
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for i in 0..500u32 {
        let d = consumer.next().await.unwrap().unwrap();
        assert_eq!(&d.body[..], &i.to_be_bytes());
        assert!(d.ack().is_err(), "no-ack deliveries cannot be acked");
    }
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn broker_nack_reaches_the_publisher() {
    // A queue that refuses messages beyond its length makes RabbitMQ nack the publish.
    let (conn, ch) = channel().await;
    let q = unique("rejectpublish");
    let args = FieldTable::new()
        .with("x-max-length", 1)
        .with("x-overflow", "reject-publish");
    ch.queue_declare(
        &q,
        QueueDeclareOptions {
            arguments: args,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    ch.confirm_select().await.unwrap();
    let first = ch
        .basic_publish("", &q, BasicPublishOptions::default(), &props(), "fits")
        .await
        .unwrap();
    assert!(first.await.unwrap().is_ack());
    let second = ch
        .basic_publish("", &q, BasicPublishOptions::default(), &props(), "refused")
        .await
        .unwrap();
    assert!(second.await.unwrap().is_nack());
    assert!(
        !ch.wait_for_confirms(Duration::from_secs(5)).await.unwrap(),
        "a nack was seen"
    );
    assert!(
        ch.wait_for_confirms(Duration::from_secs(5)).await.unwrap(),
        "reset after reporting"
    );
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn direct_reply_to_round_trip() {
    let (conn, ch) = channel().await;
    let server_q = temp_queue(&ch, "rpcserver").await;
    let mut replies = ch
        .basic_consume(
            "amq.rabbitmq.reply-to",
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let request = BasicProperties {
        reply_to: Some(ShortStr::from_static("amq.rabbitmq.reply-to")),
        correlation_id: Some(ShortStr::from_static("42")),
        ..Default::default()
    };
    ch.basic_publish(
        "",
        &server_q,
        BasicPublishOptions::default(),
        &request,
        "ping",
    )
    .await
    .unwrap();
    // The "server" side, on another connection.
    let (server_conn, server_ch) = channel().await;
    let got = support::get_eventually(&server_ch, &server_q, true).await;
    let req = got.delivery;
    let reply_to = req.properties.reply_to.clone().unwrap();
    assert!(reply_to
        .as_str()
        .unwrap()
        .starts_with("amq.rabbitmq.reply-to."));
    let reply = BasicProperties {
        correlation_id: req.properties.correlation_id.clone(),
        ..Default::default()
    };
    server_ch
        .basic_publish(
            "",
            reply_to.as_str().unwrap(),
            BasicPublishOptions::default(),
            &reply,
            "pong",
        )
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), replies.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&answer.body[..], b"pong");
    assert_eq!(
        answer.properties.correlation_id,
        Some(ShortStr::from_static("42"))
    );
    server_conn.close().await.unwrap();
    ch.queue_delete(&server_q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn consumer_priorities_prefer_the_higher_priority_consumer() {
    let (conn, ch) = channel().await;
    let q = temp_queue(&ch, "priorities").await;
    let low_ch = conn.open_channel().await.unwrap();
    let high_ch = conn.open_channel().await.unwrap();
    let mut low = low_ch
        .basic_consume(
            &q,
            "",
            BasicConsumeOptions {
                arguments: FieldTable::new().with("x-priority", 1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut high = high_ch
        .basic_consume(
            &q,
            "",
            BasicConsumeOptions {
                arguments: FieldTable::new().with("x-priority", 10),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for _ in 0..20 {
        publish(&ch, &q, "p").await;
    }
    for _ in 0..20 {
        let d = tokio::time::timeout(Duration::from_secs(5), high.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        d.ack().unwrap();
    }
    let nothing = tokio::time::timeout(Duration::from_millis(200), low.next()).await;
    assert!(
        nothing.is_err(),
        "the low-priority consumer got a message while the high one was free"
    );
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn update_secret_is_accepted() {
    let conn = connect().await;
    conn.update_secret("guest", "rotation test").await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    ch.close().await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn small_frame_max_splits_bodies_and_channel_ids_are_bounded() {
    let mut o = support::options();
    o.frame_max(8192).channel_max(3);
    let conn = Connection::connect_with(o).await.unwrap();
    assert_eq!(conn.negotiated().frame_max, 8192);
    assert_eq!(conn.negotiated().channel_max, 3);
    let ch = conn.open_channel().await.unwrap();
    let q = temp_queue(&ch, "framemax").await;
    let body: Vec<u8> = (0..100_000).map(|i| (i % 7) as u8).collect();
    ch.basic_publish(
        "",
        &q,
        BasicPublishOptions::default(),
        &props(),
        body.clone(),
    )
    .await
    .unwrap();
    let got = support::get_eventually(&ch, &q, true).await;
    assert!(got.delivery.body[..] == body[..]);
    let c2 = conn.open_channel().await.unwrap();
    let c3 = conn.open_channel().await.unwrap();
    assert_eq!((ch.id(), c2.id(), c3.id()), (1, 2, 3));
    let err = conn.open_channel().await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    c2.close().await.unwrap();
    let again = conn.open_channel().await.unwrap();
    assert_eq!(again.id(), 2, "a closed channel's id is reused");
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let (conn, ch) = channel().await;
    let q = support::exclusive_queue(&ch, "dropped").await;
    let events = conn.events();
    drop(ch);
    drop(conn);
    drop(events);
    // The exclusive queue dies with its connection.
    let (observer_conn, _) = channel().await;
    let mut gone = false;
    for _ in 0..100 {
        let probe = observer_conn.open_channel().await.unwrap();
        match probe.queue_declare_passive(&q).await {
            Err(e) if e.reply_code() == Some(ReplyCode::NOT_FOUND) => {
                gone = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(
        gone,
        "the connection stayed open after every handle was dropped"
    );
    observer_conn.close().await.unwrap();
}

#[tokio::test]
async fn handshake_over_a_caller_supplied_stream() {
    if support::proxy::rabbitmq_only("handshake_over_a_caller_supplied_stream") {
        return;
    }
    let addr = support::proxy::broker_addr();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let conn = Connection::handshake(stream, support::options())
        .await
        .unwrap();
    let ch = conn.open_channel().await.unwrap();
    let q = temp_queue(&ch, "ownstream").await;
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn redeclaring_with_other_settings_is_406_and_exclusive_consumer_conflict_is_403() {
    let (conn, ch) = channel().await;
    let q = temp_queue(&ch, "precondition").await;
    let err = ch
        .queue_declare(
            &q,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.reply_code(),
        Some(ReplyCode::PRECONDITION_FAILED),
        "{err}"
    );

    let ch1 = conn.open_channel().await.unwrap();
    let _exclusive = ch1
        .basic_consume(
            &q,
            "",
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let ch2 = conn.open_channel().await.unwrap();
    let err = ch2
        .basic_consume(&q, "", BasicConsumeOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.reply_code(), Some(ReplyCode::ACCESS_REFUSED), "{err}");
    assert!(conn.is_open());
    ch1.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn recover_redelivers_unacknowledged_messages() {
    let (conn, ch) = channel().await;
    let q = temp_queue(&ch, "recover").await;
    publish(&ch, &q, "again").await;
    let first = support::get_eventually(&ch, &q, false).await;
    assert!(!first.delivery.redelivered);
    ch.basic_recover(true).await.unwrap();
    let second = support::get_eventually(&ch, &q, false).await;
    assert!(second.delivery.redelivered);
    assert_eq!(&second.delivery.body[..], b"again");
    second.delivery.ack().unwrap();
    publish(&ch, &q, "async").await;
    let third = support::get_eventually(&ch, &q, false).await;
    ch.basic_recover_async(true).unwrap();
    let fourth = support::get_eventually(&ch, &q, false).await;
    assert_eq!(fourth.delivery.body, third.delivery.body);
    assert!(fourth.delivery.redelivered);
    fourth.delivery.ack().unwrap();
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn every_property_survives_the_broker() {
    let (conn, ch) = channel().await;
    let q = temp_queue(&ch, "props").await;
    let all = BasicProperties {
        content_type: Some(ShortStr::from_static("application/json")),
        content_encoding: Some(ShortStr::from_static("gzip")),
        headers: Some(
            FieldTable::new()
                .with("s", "text")
                .with("i", -7i32)
                .with("l", 1i64 << 40)
                .with("b", true)
                .with("d", 2.5f64)
                .with("t", FieldValue::Timestamp(1_700_000_000))
                .with("n", FieldTable::new().with("x", ())),
        ),
        delivery_mode: Some(2),
        priority: Some(3),
        correlation_id: Some(ShortStr::from_static("corr")),
        reply_to: Some(ShortStr::from_static("replies")),
        expiration: Some(ShortStr::from_static("60000")),
        message_id: Some(ShortStr::from_static("id-1")),
        timestamp: Some(1_700_000_001),
        kind: Some(ShortStr::from_static("order.created")),
        user_id: Some(ShortStr::from_static("guest")),
        app_id: Some(ShortStr::from_static("lepus-tests")),
        cluster_id: Some(ShortStr::from_static("c1")),
    };
    ch.basic_publish("", &q, BasicPublishOptions::default(), &all, "{}")
        .await
        .unwrap();
    let got = support::get_eventually(&ch, &q, true).await;
    assert_eq!(got.delivery.properties, all);
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn amqplain_authentication_works() {
    let mut o = support::options();
    o.sasl(lepus::Sasl::AmqPlain {
        username: "guest".into(),
        password: "guest".into(),
    });
    let conn = Connection::connect_with(o).await.unwrap();
    assert!(conn.is_open());
    conn.close().await.unwrap();
}

#[tokio::test]
async fn dropping_a_consumer_cancels_it_and_requeues_its_buffer() {
    let (conn, ch) = channel().await;
    let q = temp_queue(&ch, "dropconsumer").await;
    for _ in 0..50 {
        publish(&ch, &q, "d").await;
    }
    let consumer = ch
        .basic_consume(
            &q,
            "",
            BasicConsumeOptions {
                buffer: 5,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(consumer);
    // The connection keeps working (reading was not left paused) and every message is back.
    let mut count = 0;
    for _ in 0..200 {
        count = ch.queue_declare_passive(&q).await.unwrap().message_count;
        if count == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(count, 50);
    let q2 = ch.queue_declare_passive(&q).await.unwrap();
    assert_eq!(q2.consumer_count, 0);
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn channel_close_reports_an_earlier_broker_error() {
    // Publishing to a missing exchange is refused asynchronously: the broker closes the
    // channel. Closing the channel afterwards reports it.
    let (conn, ch) = channel().await;
    ch.basic_publish(
        &unique("no-such-exchange"),
        "k",
        BasicPublishOptions::default(),
        &props(),
        "x",
    )
    .await
    .unwrap();
    let err = ch.close().await.unwrap_err();
    assert_eq!(err.reply_code(), Some(ReplyCode::NOT_FOUND), "{err}");
    assert!(err.to_string().contains("basic.publish"), "{err}");
    let ok = conn.open_channel().await.unwrap();
    ok.close().await.unwrap();
    conn.close().await.unwrap();
}
