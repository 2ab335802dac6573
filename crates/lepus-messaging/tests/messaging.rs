//! The messaging layer against RabbitMQ: entities, typed arguments, the declaration cache,
//! producers with confirms, consumers with accept lists, decode policies and handlers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lepus::{ExchangeKind, FieldTable, FieldValue, ReplyCode};
use lepus_messaging::{
    Accept, Binding, DecodeErrorPolicy, Error, Exchange, HandlerErrorPolicy, MessageState,
    Overflow, Payload, Queue, QueueType, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use support::{connect, depth_eventually, next, scratch_queue, unique};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    item: String,
    tags: Vec<String>,
    price: f64,
}

fn order(id: u64) -> Order {
    Order {
        id,
        item: format!("item ✓ {id}"),
        tags: vec!["a".into(), "b".into()],
        price: 9.5,
    }
}

#[tokio::test]
async fn a_struct_goes_through_as_kombu_json_with_persistent_delivery() {
    let conn = connect().await;
    let queue = scratch_queue("roundtrip");
    let producer = conn.producer().build().unwrap();
    producer
        .publish(&order(1))
        .to_queue(&queue)
        .declare(queue.clone())
        .header("trace", "abc")
        .correlation_id("c-1")
        .await
        .unwrap();

    let mut consumer = conn.consumer([queue.clone()]).consume().await.unwrap();
    let message = next(&mut consumer).await;
    assert_eq!(message.content_type(), Some("application/json"));
    assert_eq!(message.content_encoding(), Some("utf-8"));
    assert_eq!(message.properties().delivery_mode, Some(2));
    assert_eq!(message.properties().priority, Some(0));
    assert_eq!(
        message.header("trace").and_then(FieldValue::as_str),
        Some("abc")
    );
    assert_eq!(
        message
            .properties()
            .correlation_id
            .as_ref()
            .and_then(|c| c.as_str()),
        Some("c-1")
    );
    assert_eq!(message.routing_key(), queue.name());
    assert_eq!(message.decode::<Order>().unwrap(), order(1));
    let Payload::Value(v) = message.payload().unwrap() else {
        panic!("JSON decodes to a value");
    };
    assert_eq!(v["id"], 1);
    assert!(!message.acknowledged());
    message.ack().unwrap();
    assert_eq!(message.state(), MessageState::Acked);
    // A second settlement is refused locally: nothing is sent, the channel stays open.
    assert!(matches!(
        message.ack(),
        Err(Error::MessageState(MessageState::Acked))
    ));
    assert!(matches!(
        message.requeue(),
        Err(Error::MessageState(MessageState::Acked))
    ));
    assert!(consumer.channel().is_open());
    consumer.cancel().await.unwrap();
}

#[tokio::test]
async fn declare_follows_kombus_order_and_returns_the_servers_name() {
    let conn = connect().await;
    let ch = conn.default_channel().await.unwrap();
    let logs = Exchange::with_kind(unique("logs"), ExchangeKind::Topic).auto_delete(true);
    let audit = Exchange::with_kind(unique("audit"), ExchangeKind::Fanout).auto_delete(true);
    let q = Queue::server_named()
        .exchange(logs.clone())
        .routing_key("*.error")
        .binding(Binding::new(audit.clone()));
    let declared = q.declare(&ch).await.unwrap();
    assert!(declared.name.starts_with("amq.gen-"), "{}", declared.name);

    // Both bindings route.
    let producer = conn.producer().build().unwrap();
    producer
        .publish_text("via logs")
        .exchange(logs.clone())
        .routing_key("db.error")
        .await
        .unwrap();
    producer
        .publish_text("via audit")
        .exchange(audit.clone())
        .await
        .unwrap();
    producer
        .publish_text("not routed")
        .exchange(logs.clone())
        .routing_key("db.info")
        .await
        .unwrap();
    assert_eq!(depth_eventually(&ch, &declared.name, 2).await, 2);

    // An exchange bound to an exchange.
    let sink = Exchange::with_kind(unique("sink"), ExchangeKind::Fanout).auto_delete(true);
    sink.declare(&ch).await.unwrap();
    Binding::new(logs.clone())
        .routing_key("#")
        .bind_exchange(&ch, &sink)
        .await
        .unwrap();
    let sink_q = Queue::server_named().exchange(sink.clone());
    let sink_name = sink_q.declare(&ch).await.unwrap().name;
    producer
        .publish_text("chained")
        .exchange(logs)
        .routing_key("x.y")
        .await
        .unwrap();
    assert_eq!(depth_eventually(&ch, &sink_name, 1).await, 1);
}

#[tokio::test]
async fn typed_arguments_are_what_the_broker_enforces() {
    let conn = connect().await;
    let ch = conn.default_channel().await.unwrap();
    let dlx = Exchange::with_kind(unique("dlx"), ExchangeKind::Fanout).auto_delete(true);
    dlx.declare(&ch).await.unwrap();
    let dead = Queue::server_named().exchange(dlx.clone());
    let dead_name = dead.declare(&ch).await.unwrap().name;
    let q = scratch_queue("bounded")
        .max_length(2)
        .overflow(Overflow::RejectPublish)
        .message_ttl(Duration::from_secs(30))
        .dead_letter_exchange(dlx.name());
    conn.maybe_declare(q.clone()).await.unwrap();
    let producer = conn.producer().build().unwrap();
    producer.publish(&1).to_queue(&q).await.unwrap();
    producer.publish(&2).to_queue(&q).await.unwrap();
    // The third is refused by x-overflow = reject-publish: the broker nacks it.
    let err = producer.publish(&3).to_queue(&q).await.unwrap_err();
    assert!(matches!(err, Error::Nacked { .. }), "{err}");

    // A message rejected without requeue goes to the dead-letter exchange.
    let mut consumer = conn.consumer([q.clone()]).consume().await.unwrap();
    let m = next(&mut consumer).await;
    m.reject().unwrap();
    assert_eq!(depth_eventually(&ch, &dead_name, 1).await, 1);
    drop(consumer);

    // A quorum queue with a delivery limit and single active consumer is accepted.
    let quorum = Queue::new(unique("quorum"))
        .queue_type(QueueType::Quorum)
        .delivery_limit(3)
        .single_active_consumer(true);
    quorum.declare(&ch).await.unwrap();
    quorum.delete(&ch, false, false).await.unwrap();
}

/// Each combination lepus refuses locally, RabbitMQ refuses too (sent raw, it closes the
/// channel with 406): the local check is no stricter than the broker.
#[tokio::test]
async fn what_lepus_refuses_rabbitmq_refuses() {
    let conn = connect().await;
    let quorum = || Queue::new(unique("bad")).queue_type(QueueType::Quorum);
    let stream = || Queue::new(unique("bad")).queue_type(QueueType::Stream);
    let t = |pairs: &[(&'static str, FieldValue)]| {
        let mut args = FieldTable::default();
        for (k, v) in pairs {
            args.insert(lepus::ShortStr::from_static(k), v.clone());
        }
        args
    };
    let q = |s: &'static str| ("x-queue-type", FieldValue::from(s));
    // (lepus's definition, the raw arguments, durable, exclusive, auto-delete)
    let cases = [
        (
            quorum().exclusive(true),
            t(&[q("quorum")]),
            true,
            true,
            true,
        ),
        (
            quorum().auto_delete(true),
            t(&[q("quorum")]),
            true,
            false,
            true,
        ),
        (
            quorum().durable(false),
            t(&[q("quorum")]),
            false,
            false,
            false,
        ),
        (
            quorum().max_priority(5),
            t(&[q("quorum"), ("x-max-priority", FieldValue::I64(5))]),
            true,
            false,
            false,
        ),
        (
            stream().exclusive(true),
            t(&[q("stream")]),
            true,
            true,
            true,
        ),
        (
            stream().max_length(5),
            t(&[q("stream"), ("x-max-length", FieldValue::I64(5))]),
            true,
            false,
            false,
        ),
        (
            stream().message_ttl(Duration::from_secs(1)),
            t(&[q("stream"), ("x-message-ttl", FieldValue::I64(1000))]),
            true,
            false,
            false,
        ),
        (
            stream().expires(Duration::from_secs(60)),
            t(&[q("stream"), ("x-expires", FieldValue::I64(60_000))]),
            true,
            false,
            false,
        ),
        (
            stream().overflow(Overflow::RejectPublish),
            t(&[
                q("stream"),
                ("x-overflow", FieldValue::from("reject-publish")),
            ]),
            true,
            false,
            false,
        ),
        (
            stream().dead_letter_exchange("dlx"),
            t(&[
                q("stream"),
                ("x-dead-letter-exchange", FieldValue::from("dlx")),
            ]),
            true,
            false,
            false,
        ),
        (
            stream().delivery_limit(3),
            t(&[q("stream"), ("x-delivery-limit", FieldValue::I64(3))]),
            true,
            false,
            false,
        ),
        (
            stream().single_active_consumer(true),
            t(&[
                q("stream"),
                ("x-single-active-consumer", FieldValue::Bool(true)),
            ]),
            true,
            false,
            false,
        ),
        (
            Queue::new(unique("bad")).delivery_limit(3),
            t(&[("x-delivery-limit", FieldValue::I64(3))]),
            true,
            false,
            false,
        ),
        (
            Queue::new(unique("bad")).dead_letter_routing_key("k"),
            t(&[("x-dead-letter-routing-key", FieldValue::from("k"))]),
            true,
            false,
            false,
        ),
        (
            Queue::new(unique("bad")).expires(Duration::ZERO),
            t(&[("x-expires", FieldValue::I64(0))]),
            true,
            false,
            false,
        ),
    ];
    for (lepus_def, args, durable, exclusive, auto_delete) in cases {
        let refused = lepus_def.validate().unwrap_err();
        assert!(matches!(refused, Error::InvalidDeclaration { .. }));
        let ch = conn.client().open_channel().await.unwrap();
        let name = lepus_def.name();
        let sent = ch
            .queue_declare(
                name,
                lepus::QueueDeclareOptions {
                    durable,
                    exclusive,
                    auto_delete,
                    arguments: args,
                    ..Default::default()
                },
            )
            .await;
        match sent {
            Err(e) => assert_eq!(
                e.reply_code(),
                Some(ReplyCode::PRECONDITION_FAILED),
                "{refused}: {e}"
            ),
            Ok(_) => {
                ch.queue_delete(name, Default::default()).await.unwrap();
                panic!("RabbitMQ accepted what lepus refuses: {refused}");
            }
        }
    }
}

#[tokio::test]
async fn maybe_declare_caches_whole_definitions_but_not_transient_ones() {
    let conn = connect().await;
    let q = Queue::new(unique("cache")).durable(false);
    assert!(conn.maybe_declare(q.clone()).await.unwrap());
    assert!(!conn.maybe_declare(q.clone()).await.unwrap());
    // Same name, another definition: declared (and refused by the broker, 406).
    let other = q.clone().max_length(10);
    let err = conn.maybe_declare(other).await.unwrap_err();
    assert_eq!(err_code(&err), Some(ReplyCode::PRECONDITION_FAILED));
    // The default channel was closed by the 406 and comes back.
    assert!(!conn.maybe_declare(q.clone()).await.unwrap());

    let auto = Exchange::new(unique("auto")).auto_delete(true);
    assert!(conn.maybe_declare(auto.clone()).await.unwrap());
    assert!(conn.maybe_declare(auto).await.unwrap());
    let exclusive = Queue::new(unique("excl")).exclusive(true);
    assert!(conn.maybe_declare(exclusive.clone()).await.unwrap());
    assert!(conn.maybe_declare(exclusive).await.unwrap());
    let durable = Exchange::new(unique("durable"))
        .auto_delete(false)
        .durable(false);
    assert!(conn.maybe_declare(durable.clone()).await.unwrap());
    assert!(!conn.maybe_declare(durable.clone()).await.unwrap());
    conn.forget_declarations();
    assert!(conn.maybe_declare(durable.clone()).await.unwrap());
    let ch = conn.default_channel().await.unwrap();
    durable.delete(&ch, false).await.unwrap();
    q.delete(&ch, false, false).await.unwrap();
}

fn err_code(e: &Error) -> Option<ReplyCode> {
    match e {
        Error::Amqp(e) => e.reply_code(),
        _ => None,
    }
}

#[tokio::test]
async fn the_declaration_cache_is_dropped_when_the_connection_recovers() {
    use support::proxy::{broker_addr, through, Proxy};
    let proxy = Proxy::start(broker_addr()).await;
    let client = through(&proxy, |o| {
        let mut policy = lepus::RecoveryPolicy::new();
        policy.initial_delay(Duration::from_millis(50));
        o.recovery(policy);
    })
    .await;
    let conn = lepus_messaging::Connection::new(client);
    let x = Exchange::new(unique("recovered")).durable(false);
    assert!(conn.maybe_declare(x.clone()).await.unwrap());
    assert!(!conn.maybe_declare(x.clone()).await.unwrap());
    let mut events = conn.client().events();
    proxy.cut();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(lepus::ConnectionEvent::Recovered { .. }) = events.recv().await {
                return;
            }
        }
    })
    .await
    .unwrap();
    // Declared again, not skipped.
    assert!(conn.maybe_declare(x.clone()).await.unwrap());
    assert!(!conn.maybe_declare(x.clone()).await.unwrap());
    x.delete(&conn.default_channel().await.unwrap(), false)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_mandatory_message_without_a_route_is_a_returned_error() {
    let conn = connect().await;
    let producer = conn.producer().build().unwrap();
    let err = producer
        .publish(&"lost")
        .routing_key(unique("nowhere"))
        .mandatory(true)
        .await
        .unwrap_err();
    let Error::Returned(returned) = err else {
        panic!("expected a returned message, got {err}");
    };
    assert_eq!(returned.reply_code, ReplyCode::NO_ROUTE);
    // Without mandatory the broker drops it and acks.
    producer
        .publish(&"dropped")
        .routing_key(unique("nowhere"))
        .await
        .unwrap();
}

#[tokio::test]
async fn thousands_of_pipelined_publishes_are_confirmed_in_any_order() {
    let conn = connect().await;
    let q = scratch_queue("pipelined");
    conn.maybe_declare(q.clone()).await.unwrap();
    let producer = conn
        .producer()
        .routing_key(q.name())
        .channels(3)
        .build()
        .unwrap();
    let mut confirms = Vec::new();
    for i in 0..3000u32 {
        confirms.push(producer.publish(&i).pipelined().await.unwrap());
    }
    // Await from the back: order does not matter.
    while let Some(c) = confirms.pop() {
        c.await.unwrap();
    }
    // From many tasks at once through clones.
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let p = producer.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100u32 {
                p.publish(&(t * 1000 + i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ch = conn.default_channel().await.unwrap();
    assert_eq!(depth_eventually(&ch, q.name(), 3800).await, 3800);
    q.delete(&ch, false, false).await.unwrap();
}

#[tokio::test]
async fn a_refused_publish_is_not_retried() {
    let conn = connect().await;
    let producer = conn
        .producer()
        .retry(RetryPolicy::default())
        .build()
        .unwrap();
    let missing = Exchange::new(unique("missing")).no_declare(true);
    let started = tokio::time::Instant::now();
    let err = producer.publish(&1).exchange(missing).await.unwrap_err();
    assert_eq!(err_code(&err), Some(ReplyCode::NOT_FOUND), "{err}");
    assert_eq!(producer.retried(), 0);
    assert!(started.elapsed() < Duration::from_secs(2));
    // The producer's channel was closed by the 404; the next publish opens another.
    let q = scratch_queue("after404");
    producer
        .publish(&2)
        .to_queue(&q)
        .declare(q.clone())
        .await
        .unwrap();
}

/// Publishing with confirms while the link is cut and recovered loses nothing: every value
/// arrives at least once.
#[tokio::test]
async fn publishes_survive_a_cut_link() {
    use support::proxy::{broker_addr, through, Proxy};
    let proxy = Proxy::start(broker_addr()).await;
    let client = through(&proxy, |o| {
        let mut policy = lepus::RecoveryPolicy::new();
        policy.initial_delay(Duration::from_millis(50));
        o.recovery(policy);
    })
    .await;
    let conn = lepus_messaging::Connection::new(client);
    let q = scratch_queue("cut").durable(true);
    conn.maybe_declare(q.clone()).await.unwrap();
    let producer = conn
        .producer()
        .routing_key(q.name())
        .retry(RetryPolicy {
            max_retries: Some(10),
            ..Default::default()
        })
        .build()
        .unwrap();
    let n = 2000u32;
    let mut confirms = Vec::new();
    for i in 0..n {
        confirms.push(producer.publish(&i).pipelined().await.unwrap());
        if i == n / 2 {
            proxy.cut();
        }
    }
    for c in confirms {
        c.await.unwrap();
    }
    // Read everything back through a direct connection.
    let direct = connect().await;
    let mut consumer = direct
        .consumer([q.clone().no_declare(true)])
        .prefetch(500)
        .consume()
        .await
        .unwrap();
    let mut seen = vec![false; n as usize];
    let mut copies = 0;
    while seen.iter().any(|s| !s) {
        let m = next(&mut consumer).await;
        let i: u32 = m.decode().unwrap();
        if std::mem::replace(&mut seen[i as usize], true) {
            copies += 1;
        }
        m.ack().unwrap();
    }
    eprintln!("{copies} copies after the cut (at-least-once)");
    q.delete(&direct.default_channel().await.unwrap(), false, false)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_disallowed_content_type_is_rejected_to_the_dead_letter_exchange() {
    let conn = connect().await;
    let ch = conn.default_channel().await.unwrap();
    let dlx = Exchange::with_kind(unique("dlx"), ExchangeKind::Fanout).auto_delete(true);
    dlx.declare(&ch).await.unwrap();
    let dead = Queue::server_named().exchange(dlx.clone());
    let dead_name = dead.declare(&ch).await.unwrap().name;
    let q = scratch_queue("accept").dead_letter_exchange(dlx.name());
    conn.maybe_declare(q.clone()).await.unwrap();
    let producer = conn.producer().build().unwrap();
    producer
        .publish_bytes(&b"\x80\x03pickled"[..])
        .content_type("application/x-python-serialize", "binary")
        .to_queue(&q)
        .await
        .unwrap();
    producer.publish(&"fine").to_queue(&q).await.unwrap();

    let mut consumer = conn.consumer([q.clone()]).consume().await.unwrap();
    // The pickle never reaches the application; the JSON one does.
    let m = next(&mut consumer).await;
    assert_eq!(m.decode::<String>().unwrap(), "fine");
    m.ack().unwrap();
    assert_eq!(depth_eventually(&ch, &dead_name, 1).await, 1);
    let got = ch
        .basic_get(dead_name.as_str(), true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got.delivery.body[..], b"\x80\x03pickled");
}

#[tokio::test]
async fn decode_policies_requeue_ack_or_call_back() {
    let conn = connect().await;
    let q = scratch_queue("policies");
    conn.maybe_declare(q.clone()).await.unwrap();
    let producer = conn.producer().build().unwrap();
    producer
        .publish(&1)
        .serializer("msgpack")
        .to_queue(&q)
        .await
        .unwrap();

    // A callback sees the message and the error, and settles it (requeue).
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = Arc::clone(&seen);
    let mut consumer = conn
        .consumer([q.clone()])
        .on_decode_error(DecodeErrorPolicy::Callback(Arc::new(move |m, e| {
            assert!(matches!(e, Error::ContentDisallowed { content_type } if content_type == "application/x-msgpack"));
            seen2.fetch_add(1, Ordering::SeqCst);
            m.requeue().unwrap();
        })))
        .consume()
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await;
    assert!(got.is_err(), "a refused message must not be handed over");
    assert!(seen.load(Ordering::SeqCst) >= 1);
    drop(consumer);

    // With msgpack accepted, it decodes.
    let accept = Accept::new(conn.registry(), ["json", "msgpack"]).unwrap();
    let mut consumer = conn
        .consumer([q.clone()])
        .accept(accept)
        .consume()
        .await
        .unwrap();
    let m = next(&mut consumer).await;
    assert!(m.redelivered());
    assert_eq!(m.decode::<u32>().unwrap(), 1);
    m.ack().unwrap();
    consumer.cancel().await.unwrap();

    // Ack policy drops it.
    producer
        .publish(&2)
        .serializer("msgpack")
        .to_queue(&q)
        .await
        .unwrap();
    let consumer = conn
        .consumer([q.clone()])
        .on_decode_error(DecodeErrorPolicy::Ack)
        .consume()
        .await
        .unwrap();
    let ch = conn.default_channel().await.unwrap();
    let mut consumer = consumer;
    let got = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await;
    assert!(got.is_err());
    consumer.cancel().await.unwrap();
    assert_eq!(depth_eventually(&ch, q.name(), 0).await, 0);
}

#[tokio::test]
async fn a_handler_error_or_panic_settles_its_message_and_the_consumer_goes_on() {
    let conn = connect().await;
    let q = scratch_queue("handler");
    conn.maybe_declare(q.clone()).await.unwrap();
    let producer = conn.producer().build().unwrap();
    for i in 0..4u32 {
        producer.publish(&i).to_queue(&q).await.unwrap();
    }
    producer
        .publish(&"not a number")
        .to_queue(&q)
        .await
        .unwrap();
    producer.publish(&99u32).to_queue(&q).await.unwrap();

    let mut consumer = conn
        .consumer([q.clone()])
        .prefetch(10)
        .on_handler_error(HandlerErrorPolicy::Reject)
        .consume()
        .await
        .unwrap();
    let handled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = Arc::clone(&handled);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut stop_tx = Some(stop_tx);
    let run = consumer.run_until(
        move |m: lepus_messaging::Message| {
            let h = Arc::clone(&h);
            let stop = if m.decode::<u32>().ok() == Some(99) {
                stop_tx.take()
            } else {
                None
            };
            async move {
                let n: u32 = match m.decode() {
                    Ok(n) => n,
                    Err(e) => return Err(e),
                };
                h.lock().unwrap().push(n);
                if n == 1 {
                    return Err(Error::Timeout(Duration::ZERO));
                }
                if n == 2 {
                    panic!("handler bug on {n}");
                }
                if n == 3 {
                    m.requeue().ok(); // settled by the handler: left alone
                                      // Requeued messages come back; stop taking it after once.
                    return Ok(());
                }
                if let Some(s) = stop {
                    let _ = s.send(());
                }
                Ok(())
            }
        },
        async move {
            let _ = stop_rx.await;
        },
    );
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    let handled = handled.lock().unwrap().clone();
    assert!(handled.starts_with(&[0, 1, 2, 3]), "{handled:?}");
    assert!(handled.contains(&99));
    drop(consumer);
    // 0 and 99 acked, 1 (error) 2 (panic) and the undecodable one rejected; 3 requeued
    // (perhaps handled again and requeued again): at most that one is left.
    let ch = conn.default_channel().await.unwrap();
    let left = depth_eventually(&ch, q.name(), 1).await;
    assert_eq!(left, 1);
}

#[tokio::test]
async fn run_typed_decodes_before_the_handler() {
    let conn = connect().await;
    let q = scratch_queue("typed");
    conn.maybe_declare(q.clone()).await.unwrap();
    let producer = conn.producer().build().unwrap();
    producer.publish(&order(7)).to_queue(&q).await.unwrap();
    producer
        .publish(&"not an order")
        .to_queue(&q)
        .await
        .unwrap();
    producer.publish(&order(8)).to_queue(&q).await.unwrap();
    let mut consumer = conn.consumer([q.clone()]).consume().await.unwrap();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = Arc::clone(&got);
    let run = consumer.run_typed(move |o: Order, m| {
        assert_eq!(m.decode::<Order>().unwrap(), o);
        g.lock().unwrap().push(o.id);
        async { Ok::<_, String>(()) }
    });
    let enough = async {
        while got.lock().unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            r = run => panic!("ended: {r:?}"),
            () = enough => {}
        }
    })
    .await
    .unwrap();
    // The string was not an order: rejected by the decode policy, not handed over.
    assert_eq!(*got.lock().unwrap(), vec![7, 8]);
    drop(consumer);
    let ch = conn.default_channel().await.unwrap();
    assert_eq!(depth_eventually(&ch, q.name(), 0).await, 0);
}

#[tokio::test]
async fn a_deleted_queue_ends_the_consumer_with_a_reason() {
    let conn = connect().await;
    let q = scratch_queue("deleted");
    let mut consumer = conn.consumer([q.clone()]).consume().await.unwrap();
    let ch = conn.default_channel().await.unwrap();
    q.delete(&ch, false, false).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), consumer.recv())
        .await
        .unwrap();
    match end {
        Some(Err(Error::ConsumerEnded { queue, reason })) => {
            assert_eq!(queue, q.name());
            assert!(reason.contains("cancelled"), "{reason}");
        }
        other => panic!("expected the consumer to end, got {other:?}"),
    }
    assert!(consumer.recv().await.is_none());
}

#[tokio::test]
async fn compressed_bodies_round_trip_and_a_bomb_is_refused() {
    let conn = connect().await.max_message_size(64 * 1024);
    let q = scratch_queue("compressed");
    conn.maybe_declare(q.clone()).await.unwrap();
    let producer = conn.producer().compression("zlib").build().unwrap();
    let big = "lepus ".repeat(2000);
    producer.publish(&big).to_queue(&q).await.unwrap();
    // A body that inflates to 1 MiB, past the 64 KiB limit.
    let bomb = lepus_messaging::compression::compress("zlib", &vec![b'0'; 1 << 20])
        .unwrap()
        .0;
    producer
        .publish_bytes(bomb)
        .no_compression()
        .header("compression", "application/x-gzip")
        .to_queue(&q)
        .await
        .unwrap();
    producer.publish(&"after").to_queue(&q).await.unwrap();

    let mut consumer = conn.consumer([q.clone()]).consume().await.unwrap();
    let m = next(&mut consumer).await;
    assert_eq!(m.compression(), Some("application/x-gzip"));
    assert!(m.raw_body().len() < m.body().len());
    assert_eq!(m.decode::<String>().unwrap(), big);
    m.ack().unwrap();
    // The bomb is rejected by the policy; the next one arrives.
    let m = next(&mut consumer).await;
    assert_eq!(m.decode::<String>().unwrap(), "after");
    m.ack().unwrap();
}

#[tokio::test]
async fn get_fetches_one_message_with_the_queue_count() {
    let conn = connect().await;
    let q = scratch_queue("get");
    let producer = conn.producer().build().unwrap();
    producer
        .publish(&"one")
        .to_queue(&q)
        .declare(q.clone())
        .await
        .unwrap();
    producer.publish(&"two").to_queue(&q).await.unwrap();
    let ch = conn.default_channel().await.unwrap();
    depth_eventually(&ch, q.name(), 2).await;
    let m = conn
        .get(&q, false, Accept::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.message_count(), Some(1));
    assert_eq!(m.consumer_tag(), "");
    assert_eq!(m.decode::<String>().unwrap(), "one");
    m.ack().unwrap();
    let m = conn
        .get(&q, true, Accept::default())
        .await
        .unwrap()
        .unwrap();
    assert!(m.is_no_ack());
    m.ack().unwrap(); // nothing sent
    assert!(conn
        .get(&q, false, Accept::default())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn unknown_serializers_and_compressions_fail_at_build() {
    let conn = connect().await;
    assert!(matches!(
        conn.producer().serializer("pickle").build(),
        Err(Error::SerializerNotInstalled(_))
    ));
    assert!(matches!(
        conn.producer().compression("snappy").build(),
        Err(Error::CompressionNotInstalled(_))
    ));
    assert!(matches!(
        Accept::new(conn.registry(), ["protobuf"]),
        Err(Error::SerializerNotInstalled(_))
    ));
}

#[tokio::test]
async fn properties_follow_the_call_then_the_exchange_then_kombus_defaults() {
    let conn = connect().await;
    let transient = Exchange::with_kind(unique("transient"), ExchangeKind::Direct)
        .transient()
        .auto_delete(true);
    let q = Queue::server_named()
        .exchange(transient.clone())
        .routing_key("k")
        .max_priority(9);
    let ch = conn.default_channel().await.unwrap();
    let name = q.declare(&ch).await.unwrap().name;
    let producer = conn.producer().exchange(transient.clone()).build().unwrap();
    // The exchange says transient; the call says persistent for the second one.
    producer
        .publish(&1)
        .routing_key("k")
        .priority(7)
        .expiration(Duration::from_secs(30))
        .await
        .unwrap();
    producer
        .publish(&2)
        .routing_key("k")
        .delivery_mode(lepus::DeliveryMode::Persistent)
        .message_id("m-2")
        .reply_to("replies")
        .await
        .unwrap();
    depth_eventually(&ch, &name, 2).await;

    let mut consumer = conn
        .consumer([Queue::new(name.clone()).no_declare(true)])
        .tag_prefix("orders-")
        .exclusive(true)
        .consume()
        .await
        .unwrap();
    assert_eq!(
        consumer.subscriptions().next(),
        Some((name.as_str(), "orders-1"))
    );
    // An exclusive consumer keeps others out: 403 ACCESS_REFUSED.
    let other = conn
        .consumer([Queue::new(name.clone()).no_declare(true)])
        .consume()
        .await
        .unwrap_err();
    assert_eq!(err_code(&other), Some(ReplyCode::ACCESS_REFUSED), "{other}");

    let m = next(&mut consumer).await;
    assert_eq!(m.consumer_tag(), "orders-1");
    assert_eq!(m.properties().delivery_mode, Some(1));
    assert_eq!(m.properties().priority, Some(7));
    assert_eq!(
        m.properties().expiration.as_ref().and_then(|e| e.as_str()),
        Some("30000")
    );
    m.nack(true).unwrap();
    assert_eq!(m.state(), MessageState::Requeued);
    // Requeued: it comes again, marked redelivered.
    let again = next(&mut consumer).await;
    let (first, second) = if again.redelivered() {
        (again, next(&mut consumer).await)
    } else {
        let first = next(&mut consumer).await;
        (first, again)
    };
    assert_eq!(first.decode::<u32>().unwrap(), 1);
    first.ack().unwrap();
    assert_eq!(second.decode::<u32>().unwrap(), 2);
    assert_eq!(second.properties().delivery_mode, Some(2));
    assert_eq!(second.properties().priority, Some(0));
    assert_eq!(
        second
            .properties()
            .message_id
            .as_ref()
            .and_then(|v| v.as_str()),
        Some("m-2")
    );
    assert_eq!(
        second
            .properties()
            .reply_to
            .as_ref()
            .and_then(|v| v.as_str()),
        Some("replies")
    );
    second.reject().unwrap();
    assert!(matches!(
        second.ack(),
        Err(Error::MessageState(MessageState::Rejected))
    ));
}

#[tokio::test]
async fn a_consumer_of_several_queues_merges_them() {
    let conn = connect().await;
    let (a, b) = (scratch_queue("merge.a"), scratch_queue("merge.b"));
    let producer = conn.producer().build().unwrap();
    producer
        .publish(&"a")
        .to_queue(&a)
        .declare(a.clone())
        .await
        .unwrap();
    producer
        .publish(&"b")
        .to_queue(&b)
        .declare(b.clone())
        .await
        .unwrap();
    let mut consumer = conn
        .consumer([a.clone(), b.clone()])
        .consume()
        .await
        .unwrap();
    let mut got = vec![
        next(&mut consumer).await.decode::<String>().unwrap(),
        next(&mut consumer).await.decode::<String>().unwrap(),
    ];
    got.sort();
    assert_eq!(got, ["a", "b"]);
    assert_eq!(consumer.subscriptions().count(), 2);
}
