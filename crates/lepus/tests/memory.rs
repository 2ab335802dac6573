//! `memory://`: the handle on an in-process broker (inspection, faults) and what only an
//! in-process broker can show (its lifetime, its clock). What it shares with RabbitMQ is
//! checked by `conformance.rs`, on both brokers.
#![cfg(feature = "memory")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use lepus::memory::{BrokerConfig, MemoryBroker};
use lepus::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, BasicQosOptions, Connection,
    ConnectionError, ConnectionEvent, ConnectionOptions, Error, FieldTable, Heartbeat,
    QueueDeclareOptions, RecoveryPolicy, ReplyCode,
};

async fn publish(ch: &lepus::Channel, queue: &str, body: &'static str) {
    ch.basic_publish(
        "",
        queue,
        BasicPublishOptions::default(),
        &BasicProperties::default(),
        body,
    )
    .await
    .unwrap();
}

async fn declare(ch: &lepus::Channel, queue: &str, arguments: FieldTable) {
    ch.queue_declare(
        queue,
        QueueDeclareOptions {
            arguments,
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

/// Waits for the first event `pick` accepts.
async fn event<T>(
    events: &mut tokio::sync::broadcast::Receiver<ConnectionEvent>,
    mut pick: impl FnMut(&ConnectionEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = events.recv().await.unwrap();
            if let Some(t) = pick(&e) {
                return t;
            }
        }
    })
    .await
    .expect("the event did not come")
}

#[tokio::test]
async fn the_handle_sees_depth_unacked_messages_and_consumers() {
    let broker = MemoryBroker::named("memory-inspect");
    let conn = Connection::connect(&broker.url()).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    declare(&ch, "jobs", FieldTable::new().with("x-max-length", 10)).await;
    for body in ["1", "2", "3"] {
        publish(&ch, "jobs", body).await;
    }
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume("jobs", "", BasicConsumeOptions::default())
        .await
        .unwrap();
    let first = consumer.recv().await.unwrap().unwrap();
    assert_eq!(&first.body[..], b"1");
    let info = broker.queue("jobs").unwrap();
    assert_eq!(
        (
            info.messages_ready,
            info.messages_unacknowledged,
            info.consumers
        ),
        (2, 1, 1)
    );
    assert_eq!(
        info.arguments.get("x-max-length").and_then(|v| v.as_i64()),
        Some(10)
    );
    assert_eq!(broker.connection_count(), 1);
    assert!(broker.exchange("amq.topic").is_some());
    first.ack().unwrap();
    conn.close().await.unwrap();
    assert_eq!(broker.queue("jobs").unwrap().messages_ready, 2);
}

#[tokio::test]
async fn named_brokers_are_separate_and_live_as_long_as_someone_holds_them() {
    let a = MemoryBroker::named("memory-life-a");
    let conn = Connection::connect(&a.url()).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    declare(&ch, "kept", FieldTable::new()).await;
    conn.close().await.unwrap();
    // Another name is another broker.
    let b = Connection::connect("memory://memory-life-b").await.unwrap();
    let err = b
        .open_channel()
        .await
        .unwrap()
        .queue_declare_passive("kept")
        .await
        .unwrap_err();
    assert_eq!(err.reply_code(), Some(ReplyCode::NOT_FOUND));
    b.close().await.unwrap();
    // The handle kept broker a alive after its connection closed.
    assert!(MemoryBroker::named("memory-life-a").queue("kept").is_some());
    drop(a);
    // Nobody holds it any more: the name now reaches a new, empty broker.
    assert!(MemoryBroker::named("memory-life-a").queue("kept").is_none());
}

#[tokio::test]
async fn a_broker_is_configured_with_its_users_and_vhosts() {
    let config = BrokerConfig {
        users: vec![("app".to_owned(), "s3cret".to_owned())],
        vhosts: vec!["orders".to_owned()],
        ..BrokerConfig::default()
    };
    let broker = MemoryBroker::create("memory-config", config).unwrap();
    assert!(matches!(
        MemoryBroker::create("memory-config", BrokerConfig::default()),
        Err(Error::InvalidArgument(_))
    ));
    let conn = Connection::connect("memory://app:s3cret@memory-config/orders")
        .await
        .unwrap();
    conn.close().await.unwrap();
    let refused = Connection::connect("memory://guest:guest@memory-config/orders")
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::AuthenticationFailed(c) if c.code == ReplyCode::ACCESS_REFUSED),
        "{refused}"
    );
    let no_vhost = Connection::connect("memory://app:s3cret@memory-config/%2f")
        .await
        .unwrap_err();
    assert_eq!(no_vhost.reply_code(), Some(ReplyCode::NOT_ALLOWED));
    drop(broker);
}

#[tokio::test]
async fn closing_connections_from_the_broker_reaches_the_client() {
    let broker = MemoryBroker::named("memory-close");
    // Without recovery: a forced close is otherwise a reason to reconnect.
    let mut options = ConnectionOptions::from_uri(&broker.url()).unwrap();
    options.recovery(RecoveryPolicy::disabled());
    let conn = Connection::connect_with(options).await.unwrap();
    broker.close_connections(
        ReplyCode::CONNECTION_FORCED,
        "CONNECTION_FORCED - Closed via management plugin",
    );
    let err = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap();
    assert_eq!(
        err.reply_code(),
        Some(ReplyCode::CONNECTION_FORCED),
        "{err}"
    );
    assert!(err.to_string().contains("Closed via management plugin"));
    // The broker forgets the connection once the client answered.
    tokio::time::timeout(Duration::from_secs(5), async {
        while broker.connection_count() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_dropped_link_is_recovered_with_its_consumer_and_unacked_messages_come_back() {
    let broker = MemoryBroker::named("memory-drop");
    let mut options = ConnectionOptions::from_uri(&broker.url()).unwrap();
    let mut policy = RecoveryPolicy::new();
    policy.initial_delay(Duration::from_millis(10));
    options.recovery(policy);
    let conn = Connection::connect_with(options).await.unwrap();
    let mut events = conn.events();
    let ch = conn.open_channel().await.unwrap();
    declare(&ch, "work", FieldTable::new()).await;
    publish(&ch, "work", "before").await;
    let mut consumer = ch
        .basic_consume("work", "", BasicConsumeOptions::default())
        .await
        .unwrap();
    let held = consumer.recv().await.unwrap().unwrap();
    assert!(!held.redelivered);
    broker.drop_connections();
    event(&mut events, |e| {
        matches!(e, ConnectionEvent::Disconnected { .. }).then_some(())
    })
    .await;
    event(&mut events, |e| {
        matches!(e, ConnectionEvent::Recovered { .. }).then_some(())
    })
    .await;
    // The message the lost link held went back to the queue and reaches the recovered
    // consumer again, marked redelivered; a new publish follows it.
    publish(&ch, "work", "after").await;
    let again = tokio::time::timeout(Duration::from_secs(5), consumer.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((&again.body[..], again.redelivered), (&b"before"[..], true));
    again.ack().unwrap();
    let next = consumer.recv().await.unwrap().unwrap();
    assert_eq!(&next.body[..], b"after");
    next.ack().unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_broker_that_refuses_connections_is_retried_until_it_takes_them() {
    let broker = MemoryBroker::named("memory-refuse");
    broker.refuse_connections(Duration::from_millis(300));
    let refused = Connection::connect(&broker.url()).await.unwrap_err();
    assert!(matches!(refused, Error::Connect { .. }), "{refused}");
    let mut options = ConnectionOptions::from_uri(&broker.url()).unwrap();
    let mut policy = RecoveryPolicy::new();
    policy
        .initial_delay(Duration::from_millis(50))
        .retry_initial_connect(true);
    options.recovery(policy);
    let started = tokio::time::Instant::now();
    let conn = Connection::connect_with(options).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_stalled_broker_is_found_dead_by_missed_heartbeats() {
    let broker = MemoryBroker::named("memory-stall");
    let mut options = ConnectionOptions::from_uri(&broker.url()).unwrap();
    options.heartbeat(Heartbeat::Secs(1));
    options.recovery(RecoveryPolicy::disabled());
    let conn = Connection::connect_with(options).await.unwrap();
    broker.stall(true);
    let err = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .unwrap();
    broker.stall(false);
    assert!(
        matches!(
            err,
            Error::ConnectionClosed(ConnectionError::HeartbeatTimeout(_))
        ),
        "{err}"
    );
}

#[tokio::test]
async fn blocked_and_unblocked_reach_the_client() {
    let broker = MemoryBroker::named("memory-blocked");
    let conn = Connection::connect(&broker.url()).await.unwrap();
    let mut events = conn.events();
    broker.block("low on memory");
    let reason = event(&mut events, |e| match e {
        ConnectionEvent::Blocked(r) => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, "low on memory");
    assert_eq!(conn.blocked().as_deref(), Some("low on memory"));
    broker.unblock();
    event(&mut events, |e| {
        matches!(e, ConnectionEvent::Unblocked).then_some(())
    })
    .await;
    assert_eq!(conn.blocked(), None);
    // A connection opened while the broker is blocked learns it at once, as from RabbitMQ.
    broker.block("disk");
    let late = Connection::connect(&broker.url()).await.unwrap();
    let mut late_events = late.events();
    if late.blocked().is_none() {
        event(&mut late_events, |e| {
            matches!(e, ConnectionEvent::Blocked(_)).then_some(())
        })
        .await;
    }
    broker.unblock();
    late.close().await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn message_ttl_and_queue_expiry_run_on_tokios_clock() {
    let broker = MemoryBroker::named("memory-paused");
    let conn = Connection::connect(&broker.url()).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    declare(&ch, "slow", FieldTable::new().with("x-message-ttl", 60_000)).await;
    declare(&ch, "idle", FieldTable::new().with("x-expires", 3_600_000)).await;
    publish(&ch, "slow", "old").await;
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(broker.queue("slow").unwrap().messages_ready, 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(broker.queue("slow").unwrap().messages_ready, 0);
    assert!(broker.queue("idle").is_some());
    // An hour of paused time passes in no time; the heartbeats go on meanwhile.
    tokio::time::sleep(Duration::from_secs(3_600)).await;
    assert!(broker.queue("idle").is_none());
    assert!(conn.is_open());
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_link_cuts_and_freezes_its_own_connections_only() {
    let broker = MemoryBroker::named("memory-link");
    let link = broker.link();
    let mut options = ConnectionOptions::from_uri(&link.url()).unwrap();
    options.recovery(RecoveryPolicy::disabled());
    let through = Connection::connect_with(options).await.unwrap();
    let direct = Connection::connect(&broker.url()).await.unwrap();
    assert_eq!((link.accepted(), broker.connection_count()), (1, 2));
    // Frozen, the link holds back a reply; thawed, it comes.
    let ch = through.open_channel().await.unwrap();
    link.freeze();
    let declare = tokio::spawn(async move {
        ch.queue_declare("linked", QueueDeclareOptions::default())
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!declare.is_finished());
    assert!(broker.queue("linked").is_none(), "the broker saw nothing");
    link.thaw();
    declare.await.unwrap().unwrap();
    assert!(broker.queue("linked").is_some());
    // Cut, the link's connection is lost; the direct one goes on.
    link.cut();
    let err = tokio::time::timeout(Duration::from_secs(5), through.closed())
        .await
        .unwrap();
    assert!(
        matches!(
            err,
            Error::ConnectionClosed(ConnectionError::TransportClosed(_))
        ),
        "{err}"
    );
    assert!(direct.is_open());
    direct.open_channel().await.unwrap();
    direct.close().await.unwrap();
}

#[tokio::test]
async fn a_message_over_the_size_limit_closes_the_channel_with_rabbitmqs_words() {
    let config = BrokerConfig {
        max_message_size: 1024,
        ..BrokerConfig::default()
    };
    let broker = MemoryBroker::create("memory-max-size", config).unwrap();
    let conn = Connection::connect(&broker.url()).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    declare(&ch, "small", FieldTable::new()).await;
    ch.confirm_select().await.unwrap();
    let fits = vec![b'x'; 1024];
    ch.basic_publish(
        "",
        "small",
        BasicPublishOptions::default(),
        &BasicProperties::default(),
        fits,
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let too_big = vec![b'x'; 1025];
    let sent = ch
        .basic_publish(
            "",
            "small",
            BasicPublishOptions::default(),
            &BasicProperties::default(),
            too_big,
        )
        .await;
    let err = match sent {
        Ok(confirm) => confirm.await.unwrap_err(),
        Err(e) => e,
    };
    let Error::ChannelClosed(close) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(close.code, ReplyCode::PRECONDITION_FAILED);
    assert_eq!(
        close.text,
        "PRECONDITION_FAILED - message size 1025 is larger than configured max size 1024"
    );
    assert_eq!(broker.queue("small").unwrap().messages_ready, 1);
    conn.close().await.unwrap();
}

#[test]
fn a_connection_whose_runtime_ends_is_released_in_the_broker() {
    let broker = MemoryBroker::named("memory-runtime-end");
    let first = tokio::runtime::Runtime::new().unwrap();
    first.block_on(async {
        let conn = Connection::connect(&broker.url()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        declare(&ch, "held", FieldTable::new()).await;
        publish(&ch, "held", "one").await;
        let mut consumer = ch
            .basic_consume("held", "", BasicConsumeOptions::default())
            .await
            .unwrap();
        let held = consumer.recv().await.unwrap().unwrap();
        assert_eq!(&held.body[..], b"one");
        // Neither acked nor closed: the runtime ends under the connection.
        std::mem::forget(held);
        std::mem::forget(consumer);
        std::mem::forget(conn);
    });
    assert_eq!(broker.queue("held").unwrap().messages_unacknowledged, 1);
    drop(first);
    // The broker released the connection: its unacked message is ready again, its consumer
    // gone, and another runtime's connection gets the message, redelivered.
    let info = broker.queue("held").unwrap();
    assert_eq!(
        (
            info.messages_ready,
            info.messages_unacknowledged,
            info.consumers
        ),
        (1, 0, 0)
    );
    assert_eq!(broker.connection_count(), 0);
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let conn = Connection::connect(&broker.url()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let got = ch.basic_get("held", true).await.unwrap().unwrap();
        assert_eq!(
            (&got.delivery.body[..], got.delivery.redelivered),
            (&b"one"[..], true)
        );
        conn.close().await.unwrap();
    });
}
