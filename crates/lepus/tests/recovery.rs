//! Automatic recovery through the test proxy: a cut or frozen link is reconnected, and the
//! channels, topology and consumers the application holds go on. These tests change nothing
//! broker-wide; the ones that do (closing connections from the broker, restarting it) are in
//! `serial_broker.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use lepus::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, BindOptions, Confirmation,
    Connection, ConnectionEvent, Error, ExchangeDeclareOptions, ExchangeKind, Heartbeat,
    QueueDeclareOptions, RecoveryPolicy,
};
use support::fake_broker::FakeBroker;
use support::proxy::{broker_addr, through, Proxy};
use tokio::sync::broadcast;

/// A connection through a fresh proxy, with quick recovery and short limits.
async fn recovering() -> (Proxy, Connection, broadcast::Receiver<ConnectionEvent>) {
    let proxy = Proxy::start(broker_addr()).await;
    let conn = through(&proxy, |o| {
        let mut policy = RecoveryPolicy::new();
        policy.initial_delay(Duration::from_millis(50));
        o.heartbeat(Heartbeat::Disabled)
            .handshake_timeout(Duration::from_secs(2))
            .rpc_timeout(Duration::from_secs(10))
            .recovery(policy);
    })
    .await;
    let events = conn.events();
    (proxy, conn, events)
}

/// The next event that `pick` accepts, within ten seconds.
async fn event<T>(
    events: &mut broadcast::Receiver<ConnectionEvent>,
    mut pick: impl FnMut(ConnectionEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(found) = pick(e) {
                        return found;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events ended: {e}"),
            }
        }
    })
    .await
    .expect("the event did not come")
}

async fn recovered(events: &mut broadcast::Receiver<ConnectionEvent>) -> Duration {
    event(events, |e| match e {
        ConnectionEvent::Recovered { took, .. } => Some(took),
        ConnectionEvent::RecoveryFailed { error } => panic!("recovery failed: {error}"),
        _ => None,
    })
    .await
}

async fn publish(ch: &lepus::Channel, exchange: &str, key: &str, body: String) -> Confirmation {
    ch.basic_publish(
        exchange,
        key,
        BasicPublishOptions::default(),
        &BasicProperties::default(),
        body,
    )
    .await
    .unwrap()
    .await
    .unwrap()
}

#[tokio::test]
async fn a_cut_link_is_recovered_with_its_channels_topology_and_consumers() {
    let (proxy, conn, mut events) = recovering().await;
    let ch = conn.open_channel().await.unwrap();
    let exchange = support::unique("recovery-x");
    let queue = support::unique("recovery-q");
    ch.exchange_declare(
        &exchange,
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Not auto-delete: the broker would delete it with its consumer when the link drops,
    // and the message held unacked with it.
    ch.queue_declare(&queue, QueueDeclareOptions::default())
        .await
        .unwrap();
    ch.queue_bind(&queue, &exchange, "k", BindOptions::default())
        .await
        .unwrap();
    ch.basic_qos(10, Default::default()).await.unwrap();
    ch.confirm_select().await.unwrap();
    let mut consumer = ch
        .basic_consume(&queue, "recovery-consumer", BasicConsumeOptions::default())
        .await
        .unwrap();
    for i in 0..20 {
        assert!(publish(&ch, &exchange, "k", format!("before {i}"))
            .await
            .is_ack());
    }
    let mut unacked = None;
    for i in 0..20 {
        let d = consumer.recv().await.unwrap().unwrap();
        assert_eq!(d.body, format!("before {i}").as_bytes());
        if i < 19 {
            d.ack().unwrap();
        } else {
            unacked = Some(d);
        }
    }

    proxy.cut();
    let cause = event(&mut events, |e| match e {
        ConnectionEvent::Disconnected { cause, .. } => Some(cause),
        _ => None,
    })
    .await;
    assert!(cause.is_connection_error(), "{cause}");
    let took = recovered(&mut events).await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(conn.stats().recoveries, 1);
    assert!(conn.is_open() && ch.is_open());

    // The delivery the application held comes from the lost link: settling it is refused
    // locally, the channel stays open, and the broker delivers the message again.
    let stale = unacked.unwrap();
    let err = stale.ack().unwrap_err();
    assert!(matches!(err, Error::StaleDelivery { .. }), "{err}");
    // Acks still waiting to be written when the link went are lost too: those messages come
    // again as well, all marked redelivered, up to the one held.
    loop {
        let again = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
            .await
            .expect("the consumer did not go on")
            .unwrap()
            .unwrap();
        assert!(again.redelivered);
        again.ack().unwrap();
        if again.body == "before 19".as_bytes() {
            break;
        }
    }

    // Same handles, same exchange, binding, confirm mode and consumer.
    for i in 0..20 {
        assert!(publish(&ch, &exchange, "k", format!("after {i}"))
            .await
            .is_ack());
    }
    for i in 0..20 {
        let d = consumer.recv().await.unwrap().unwrap();
        assert_eq!(d.body, format!("after {i}").as_bytes());
        d.ack().unwrap();
    }
    assert_eq!(consumer.tag().as_str(), Some("recovery-consumer"));
    assert!(proxy.accepted() >= 2);
    drop(consumer);
    ch.queue_delete(&queue, Default::default()).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_server_named_queue_comes_back_under_a_new_name_with_its_bindings_and_consumer() {
    let (proxy, conn, mut events) = recovering().await;
    let ch = conn.open_channel().await.unwrap();
    let exchange = support::unique("recovery-rename");
    ch.exchange_declare(
        &exchange,
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let q = ch
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(q.name.starts_with("amq.gen-"));
    for key in ["a", "b"] {
        ch.queue_bind(&q.name, &exchange, key, BindOptions::default())
            .await
            .unwrap();
    }
    let mut consumer = ch
        .basic_consume(
            &q.name,
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();

    proxy.cut();
    let (old, new) = event(&mut events, |e| match e {
        ConnectionEvent::QueueRenamed { old, new } => Some((old, new)),
        _ => None,
    })
    .await;
    assert_eq!(old, q.name);
    assert_ne!(new, q.name);
    assert!(new.starts_with("amq.gen-"), "{new}");
    let (tag, queue) = event(&mut events, |e| match e {
        ConnectionEvent::ConsumerRecovered {
            consumer_tag,
            queue,
            ..
        } => Some((consumer_tag, queue)),
        _ => None,
    })
    .await;
    assert_eq!(&tag, consumer.tag());
    assert_eq!(queue, new);
    recovered(&mut events).await;

    // Both bindings followed the queue: messages routed by either key reach the consumer.
    ch.confirm_select().await.unwrap();
    for key in ["a", "b"] {
        assert!(publish(&ch, &exchange, key, format!("to {key}"))
            .await
            .is_ack());
    }
    for key in ["a", "b"] {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
            .await
            .expect("no delivery after recovery")
            .unwrap()
            .unwrap();
        assert_eq!(d.body, format!("to {key}").as_bytes());
        assert_eq!(d.routing_key.as_str(), Some(key));
    }
    conn.close().await.unwrap();
}

#[tokio::test]
async fn what_was_in_flight_at_the_loss_learns_so_and_later_calls_wait_for_the_recovery() {
    let (proxy, conn, mut events) = recovering().await;
    let ch = conn.open_channel().await.unwrap();
    let queue = support::exclusive_queue(&ch, "recovery-inflight").await;
    ch.confirm_select().await.unwrap();

    proxy.freeze();
    // A confirm the broker never sends, a request the broker never answers.
    let confirm = ch
        .basic_publish(
            "",
            &queue,
            BasicPublishOptions::default(),
            &BasicProperties::default(),
            "lost",
        )
        .await
        .unwrap();
    let pending = {
        let ch = ch.clone();
        let queue = queue.clone();
        tokio::spawn(async move { ch.queue_declare_passive(&queue).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.cut();
    proxy.thaw();

    assert_eq!(confirm.await.unwrap(), Confirmation::Uncertain);
    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::ConnectionLost(_)), "{err}");
    assert!(err.is_retryable());

    // A call made while recovering waits for it, then works.
    let declared = ch.queue_declare_passive(&queue).await.unwrap();
    assert_eq!(declared.name, queue);
    recovered(&mut events).await;
    assert!(publish(&ch, "", &queue, "after".into()).await.is_ack());
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_dead_link_found_by_heartbeats_is_recovered_once_the_network_moves_again() {
    let proxy = Proxy::start(broker_addr()).await;
    let conn = through(&proxy, |o| {
        let mut policy = RecoveryPolicy::new();
        policy
            .initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_millis(500));
        o.heartbeat(Heartbeat::Secs(1))
            .handshake_timeout(Duration::from_secs(1))
            .recovery(policy);
    })
    .await;
    let mut events = conn.events();
    let ch = conn.open_channel().await.unwrap();
    let queue = support::unique("recovery-heartbeat");
    ch.queue_declare(
        &queue,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(&queue, "", BasicConsumeOptions::default())
        .await
        .unwrap();

    proxy.freeze();
    let cause = event(&mut events, |e| match e {
        ConnectionEvent::Disconnected { cause, .. } => Some(cause),
        _ => None,
    })
    .await;
    assert!(
        matches!(
            cause,
            Error::ConnectionClosed(lepus::ConnectionError::HeartbeatTimeout(1))
        ),
        "{cause}"
    );
    // Attempts through the frozen network time out; once it moves, one gets through.
    event(&mut events, |e| match e {
        ConnectionEvent::Reconnecting { attempt: 2, .. } => Some(()),
        _ => None,
    })
    .await;
    proxy.cut();
    proxy.thaw();
    recovered(&mut events).await;
    ch.confirm_select().await.unwrap();
    assert!(publish(&ch, "", &queue, "after".into()).await.is_ack());
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
        .await
        .expect("the consumer did not go on")
        .unwrap()
        .unwrap();
    assert_eq!(d.body, "after".as_bytes());
    d.ack().unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn without_recovery_a_loss_ends_the_connection_as_before() {
    let proxy = Proxy::start(broker_addr()).await;
    let conn = through(&proxy, |o| {
        o.heartbeat(Heartbeat::Disabled).no_recovery();
    })
    .await;
    let ch = conn.open_channel().await.unwrap();
    proxy.cut();
    let err = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap();
    assert!(
        matches!(
            err,
            Error::ConnectionClosed(lepus::ConnectionError::TransportClosed(_))
        ),
        "{err}"
    );
    assert!(ch.queue_declare_passive("x").await.is_err());
    assert_eq!(proxy.accepted(), 1, "no reconnect attempt");
}

#[tokio::test]
async fn a_protocol_violation_is_never_recovered() {
    // After the handshake the server sends a frame with a bad end octet.
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&connections);
    let fake = FakeBroker::start(move |mut peer| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            peer.handshake().await;
            peer.send_raw(b"\x08\x00\x00\x00\x00\x00\x00\x00").await;
            while peer.recv().await.is_some() {}
        }
    })
    .await;
    let conn = Connection::connect_with(fake.options()).await.unwrap();
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap();
    assert!(
        matches!(
            err,
            Error::ConnectionClosed(lepus::ConnectionError::Protocol(_))
        ),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no reconnect attempt after a protocol violation"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn recovery_gives_up_when_its_policy_says_so() {
    let proxy = Proxy::start(broker_addr()).await;
    let conn = through(&proxy, |o| {
        let mut policy = RecoveryPolicy::new();
        policy
            .initial_delay(Duration::from_millis(20))
            .max_attempts(Some(3));
        o.heartbeat(Heartbeat::Disabled)
            .handshake_timeout(Duration::from_millis(300))
            .recovery(policy);
    })
    .await;
    let mut events = conn.events();
    let ch = conn.open_channel().await.unwrap();
    proxy.freeze();
    proxy.cut();
    let attempts = event(&mut events, |e| match e {
        ConnectionEvent::RecoveryFailed { error } => Some(error),
        _ => None,
    })
    .await;
    assert!(matches!(attempts, Error::Timeout { .. }), "{attempts}");
    let err = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(ch.queue_declare_passive("x").await.is_err());
    assert_eq!(
        proxy.accepted(),
        4,
        "the first connection and three attempts"
    );
}

/// A scripted broker that answers every request with its `-ok` and logs what each connection
/// sent (method names, by connection); the first connection is dropped when `cut` fires.
async fn answering_broker(
    log: std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>>,
    cut: std::sync::Arc<tokio::sync::Notify>,
) -> FakeBroker {
    use lepus::lepus_wire::method::{basic, channel, confirm, connection, exchange, queue};
    use lepus::lepus_wire::{Method, ShortStr};
    FakeBroker::start(move |mut peer| {
        let log = std::sync::Arc::clone(&log);
        let cut = std::sync::Arc::clone(&cut);
        async move {
            let index = {
                let mut log = log.lock().unwrap();
                log.push(Vec::new());
                log.len() - 1
            };
            peer.handshake().await;
            let mut generated = 0;
            loop {
                let next = tokio::select! {
                    next = peer.recv_method() => next,
                    () = cut.notified(), if index == 0 => return,
                };
                let Some((ch, method)) = next else { return };
                if let Some(sent) = log.lock().unwrap().get_mut(index) {
                    sent.push(format!("{} {ch}", method.name()));
                }
                let reply: Option<Method> = match method {
                    Method::ChannelOpen(_) => Some(channel::OpenOk.into()),
                    Method::ChannelClose(_) => Some(channel::CloseOk.into()),
                    Method::ChannelFlow(f) => Some(channel::FlowOk { active: f.active }.into()),
                    Method::BasicQos(_) => Some(basic::QosOk.into()),
                    Method::ConfirmSelect(_) => Some(confirm::SelectOk.into()),
                    Method::TxSelect(_) => Some(lepus::lepus_wire::method::tx::SelectOk.into()),
                    Method::ExchangeDeclare(_) => Some(exchange::DeclareOk.into()),
                    Method::ExchangeBind(_) => Some(exchange::BindOk.into()),
                    Method::QueueBind(_) => Some(queue::BindOk.into()),
                    Method::QueueDeclare(d) => {
                        let name = if d.queue.is_empty() {
                            generated += 1;
                            ShortStr::try_from(format!("amq.gen-{index}-{generated}").as_str())
                                .unwrap()
                        } else {
                            d.queue
                        };
                        Some(
                            queue::DeclareOk {
                                queue: name,
                                message_count: 0,
                                consumer_count: 0,
                            }
                            .into(),
                        )
                    }
                    Method::BasicConsume(c) => Some(
                        basic::ConsumeOk {
                            consumer_tag: c.consumer_tag,
                        }
                        .into(),
                    ),
                    Method::ConnectionClose(_) => Some(connection::CloseOk.into()),
                    _ => None,
                };
                if let Some(reply) = reply {
                    peer.send(ch, reply).await;
                }
            }
        }
    })
    .await
}

#[tokio::test]
async fn recovery_restores_channels_then_exchanges_bindings_queues_and_consumers_in_order() {
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let cut = std::sync::Arc::new(tokio::sync::Notify::new());
    let fake = answering_broker(std::sync::Arc::clone(&log), std::sync::Arc::clone(&cut)).await;
    let mut options = fake.options();
    let mut policy = RecoveryPolicy::new();
    policy.initial_delay(Duration::from_millis(10));
    options.recovery(policy);
    let conn = Connection::connect_with(options).await.unwrap();
    let mut events = conn.events();
    // Two channels, declared in an order that is not recovery's.
    let a = conn.open_channel().await.unwrap();
    let b = conn.open_channel().await.unwrap();
    let c = conn.open_channel().await.unwrap();
    a.basic_qos(7, Default::default()).await.unwrap();
    a.basic_qos(
        70,
        lepus::BasicQosOptions {
            global: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    b.confirm_select().await.unwrap();
    c.tx_select().await.unwrap();
    c.flow(false).await.unwrap();
    let q = a
        .queue_declare("", QueueDeclareOptions::default())
        .await
        .unwrap();
    a.exchange_declare("x1", ExchangeKind::Topic, ExchangeDeclareOptions::default())
        .await
        .unwrap();
    a.queue_bind(&q.name, "x1", "k", BindOptions::default())
        .await
        .unwrap();
    b.exchange_declare(
        "x2",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
    )
    .await
    .unwrap();
    b.exchange_bind("x2", "x1", "#", BindOptions::default())
        .await
        .unwrap();
    let consumer = a
        .basic_consume(&q.name, "c1", BasicConsumeOptions::default())
        .await
        .unwrap();
    // Passive declares are not recorded.
    a.queue_declare_passive(&q.name).await.unwrap();

    cut.notify_one();
    recovered(&mut events).await;
    let second = log.lock().unwrap().get(1).cloned().unwrap();
    assert_eq!(
        second,
        [
            "channel.open 1",
            "basic.qos 1",
            "basic.qos 1",
            "channel.open 2",
            "confirm.select 2",
            "channel.open 3",
            "tx.select 3",
            "channel.flow 3",
            // Recovery's own channel for the topology.
            "channel.open 4",
            "exchange.declare 4",
            "exchange.declare 4",
            "exchange.bind 4",
            "queue.declare 4",
            "queue.bind 4",
            // The consumers' queues are looked for (passively) before subscribing.
            "queue.declare 4",
            "channel.close 4",
            "basic.consume 1",
        ]
    );
    drop(consumer);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn replay_publishes_again_what_lost_its_confirm_and_the_confirms_resolve() {
    let (proxy, conn, mut events) = recovering().await;
    let ch = conn.open_channel().await.unwrap();
    let queue = support::unique("recovery-replay");
    ch.queue_declare(&queue, QueueDeclareOptions::default())
        .await
        .unwrap();
    ch.confirm_select().await.unwrap();
    ch.replay_on_recovery(true).unwrap();
    // Settled before the loss: not kept, not replayed.
    for i in 0..10 {
        assert!(publish(&ch, "", &queue, format!("early {i}"))
            .await
            .is_ack());
    }
    proxy.freeze();
    let mut pending = Vec::new();
    for i in 0..50 {
        let confirm = ch
            .basic_publish(
                "",
                &queue,
                BasicPublishOptions::default(),
                &BasicProperties::default(),
                format!("late {i}"),
            )
            .await
            .unwrap();
        pending.push(confirm);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.cut();
    proxy.thaw();
    recovered(&mut events).await;
    for confirm in pending {
        let outcome = tokio::time::timeout(Duration::from_secs(10), confirm)
            .await
            .expect("a replayed confirm never came")
            .unwrap();
        assert!(outcome.is_ack(), "{outcome:?}");
    }
    assert_eq!(conn.stats().replayed, 50);
    // After the replays, numbering goes on: a new publish is confirmed too.
    assert!(publish(&ch, "", &queue, "after".into()).await.is_ack());
    let depth = ch
        .queue_declare_passive(&queue)
        .await
        .unwrap()
        .message_count;
    // Every message is there; a first copy that got through before the network froze
    // would be a duplicate (at least once).
    assert!((61..=111).contains(&depth), "{depth}");
    ch.queue_delete(&queue, Default::default()).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn an_entity_the_broker_refuses_is_reported_and_recovery_goes_on() {
    let proxy = Proxy::start(broker_addr()).await;
    let conn = through(&proxy, |o| {
        let mut policy = RecoveryPolicy::new();
        policy.initial_delay(Duration::from_millis(50)).filter(|e| {
            !matches!(e, lepus::TopologyEntity::Queue { name, .. } if name.contains("left-out"))
        });
        o.heartbeat(Heartbeat::Disabled).recovery(policy);
    })
    .await;
    let mut events = conn.events();
    let ch = conn.open_channel().await.unwrap();
    let changed = support::unique("recovery-changed");
    let kept = support::unique("recovery-kept");
    let left_out = support::unique("recovery-left-out");
    for name in [&changed, &kept, &left_out] {
        ch.queue_declare(name, QueueDeclareOptions::default())
            .await
            .unwrap();
    }
    let mut on_changed = ch
        .basic_consume(&changed, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    let mut on_left_out = ch
        .basic_consume(&left_out, "", BasicConsumeOptions::default())
        .await
        .unwrap();

    // While the link is down, someone declares one queue again with other arguments and
    // deletes the one recovery leaves out.
    proxy.freeze();
    let (admin, admin_ch) = support::channel().await;
    admin_ch
        .queue_delete(&changed, Default::default())
        .await
        .unwrap();
    admin_ch
        .queue_declare(
            &changed,
            QueueDeclareOptions {
                arguments: lepus::FieldTable::new().with("x-max-length", 10i64),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    admin_ch
        .queue_delete(&left_out, Default::default())
        .await
        .unwrap();
    proxy.cut();
    proxy.thaw();

    let (entity, error) = event(&mut events, |e| match e {
        ConnectionEvent::TopologyFailed { entity, error } => Some((entity, error)),
        _ => None,
    })
    .await;
    assert_eq!(entity, format!("queue '{changed}'"));
    assert_eq!(
        error.reply_code(),
        Some(lepus::ReplyCode::PRECONDITION_FAILED)
    );
    recovered(&mut events).await;
    // The rest came back, and so did the consumer: its queue exists, with other settings.
    assert!(ch.queue_declare_passive(&kept).await.is_ok());
    ch.confirm_select().await.unwrap();
    assert!(publish(&ch, "", &changed, "still here".into())
        .await
        .is_ack());
    let d = tokio::time::timeout(Duration::from_secs(5), on_changed.recv())
        .await
        .expect("the consumer did not come back")
        .unwrap()
        .unwrap();
    assert_eq!(d.body, "still here".as_bytes());
    d.ack().unwrap();
    // The queue left out by the filter was not declared again: its consumer could not come
    // back, and ends saying why.
    let end = tokio::time::timeout(Duration::from_secs(5), on_left_out.recv())
        .await
        .expect("the consumer of the missing queue did not end");
    let Some(Err(err)) = end else {
        panic!("{end:?}");
    };
    assert_eq!(err.reply_code(), Some(lepus::ReplyCode::NOT_FOUND), "{err}");
    // The queue left out by the filter was not declared again.
    let err = admin_ch.queue_declare_passive(&left_out).await.unwrap_err();
    assert_eq!(err.reply_code(), Some(lepus::ReplyCode::NOT_FOUND));
    // The channel was opened again and works.
    assert!(ch.queue_declare_passive(&kept).await.is_ok());
    for name in [&changed, &kept] {
        let _ = ch.queue_delete(name, Default::default()).await;
    }
    conn.close().await.unwrap();
    let _ = admin.close().await;
}
