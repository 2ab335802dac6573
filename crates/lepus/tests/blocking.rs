//! The blocking client (`lepus::blocking`) against a real RabbitMQ.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lepus::blocking::{Channel, Connection, Consumer, Drained, Event, Received};
use lepus::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, BasicQosOptions, BindOptions,
    Confirmation, ConnectionOptions, Delivery, Error, ExchangeDeclareOptions,
    ExchangeDeleteOptions, ExchangeKind, FieldTable, FieldValue, Heartbeat, QueueDeclareOptions,
    QueueDeleteOptions, ReplyCode, ShortStr,
};
use support::unique;

// ---- helpers ----

fn connect_with(options: ConnectionOptions) -> Connection {
    match Connection::connect_with(options) {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot reach RabbitMQ at {} ({e}); start one with `scripts/ensure-broker.sh` \
             or set LEPUS_TEST_URL",
            support::url()
        ),
    }
}

fn connect() -> Connection {
    connect_with(support::options())
}

fn channel() -> (Connection, Channel) {
    let conn = connect();
    let ch = conn.open_channel().unwrap();
    (conn, ch)
}

fn props() -> BasicProperties {
    BasicProperties::default()
}

/// A queue that the broker deletes a minute after its last use, should a test fail before
/// cleaning up.
fn temp_queue(ch: &Channel, prefix: &str) -> String {
    let name = unique(prefix);
    ch.queue_declare(
        &name,
        QueueDeclareOptions {
            arguments: FieldTable::new().with("x-expires", 60_000),
            ..Default::default()
        },
    )
    .unwrap();
    name
}

fn publish(ch: &Channel, queue: &str, body: &'static str) {
    ch.basic_publish("", queue, BasicPublishOptions::default(), &props(), body)
        .unwrap();
}

/// A queue that holds at most `limit` messages and refuses (nacks) publishes beyond.
fn refusing_queue(ch: &Channel, prefix: &str, limit: u32) -> String {
    let name = unique(prefix);
    ch.queue_declare(
        &name,
        QueueDeclareOptions {
            arguments: FieldTable::new()
                .with("x-max-length", limit)
                .with("x-overflow", "reject-publish")
                .with("x-expires", 60_000),
            ..Default::default()
        },
    )
    .unwrap();
    name
}

/// Publishes to an exchange that does not exist: the broker closes the channel with 404.
fn publish_to_missing_exchange(ch: &Channel) -> lepus::blocking::PublisherConfirm {
    ch.basic_publish(
        &unique("no-such-exchange"),
        "k",
        BasicPublishOptions::default(),
        &props(),
        "x",
    )
    .unwrap()
}

fn delete(ch: &Channel, queue: &str) {
    ch.queue_delete(queue, QueueDeleteOptions::default())
        .unwrap();
}

/// Polls `check` for up to ten seconds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ready_count(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare_passive(queue).unwrap().message_count
}

/// Waits until `queue` holds `n` ready messages.
fn wait_ready(ch: &Channel, queue: &str, n: u32) {
    eventually(&format!("{n} ready messages in {queue}"), || {
        ready_count(ch, queue) == n
    });
}

fn get(ch: &Channel, queue: &str, no_ack: bool) -> lepus::GetMessage {
    let mut got = None;
    eventually("a message from basic.get", || {
        got = ch.basic_get(queue, no_ack).unwrap();
        got.is_some()
    });
    got.unwrap()
}

/// Drains events until `done` says the collected events are enough (ten seconds at most).
fn drain_until(
    conn: &Connection,
    what: &str,
    mut done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut all = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for {what}; got {all:?}");
        if let Drained::Events(events) = conn.drain_events(Some(left)).unwrap() {
            all.extend(events);
        }
        if done(&all) {
            return all;
        }
    }
}

fn delivered(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Delivered { .. }))
        .count()
}

/// What a test callback saw: consumer tag, body, redelivered.
type Seen = Arc<Mutex<Vec<(String, String, bool)>>>;

/// A callback that records and acks each delivery.
fn recorder(seen: &Seen) -> impl FnMut(&Channel, Delivery) + Send + 'static {
    let seen = Arc::clone(seen);
    move |_ch, d| {
        seen.lock().unwrap().push((
            d.consumer_tag.to_string(),
            String::from_utf8_lossy(&d.body).into_owned(),
            d.redelivered,
        ));
        d.ack().unwrap();
    }
}

// ---- types ----

#[test]
fn handles_are_send_and_sync_as_documented() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    fn clone<T: Clone>() {}
    send_sync::<Connection>();
    send_sync::<Channel>();
    clone::<Channel>();
    send_sync::<Consumer>();
    send_sync::<Delivery>();
    send::<Event>();
    send::<Drained>();
    send::<Received>();
    send_sync::<Error>();
}

// ---- connection ----

#[test]
fn connect_reports_the_server_and_close_ends_everything() {
    if support::proxy::rabbitmq_only("connect_reports_the_server_and_close_ends_everything") {
        return;
    }
    let (conn, ch) = channel();
    let product = conn.server_properties();
    assert_eq!(
        product.get("product").and_then(FieldValue::as_str),
        Some("RabbitMQ")
    );
    assert_eq!(conn.negotiated().frame_max, 131_072);
    assert!(conn.is_open());
    assert!(ch.is_open());
    assert!(conn.blocked().is_none());
    conn.update_secret("guest", "blocking test").unwrap();
    conn.close().unwrap();
    assert!(!conn.is_open());
    let err = ch
        .queue_declare("", QueueDeclareOptions::default())
        .unwrap_err();
    assert!(err.is_connection_error(), "{err}");
    let err = conn.drain_events(Some(Duration::from_secs(5))).unwrap_err();
    let Error::ConnectionClosed(closed) = &err else {
        panic!("{err}")
    };
    assert_eq!(closed.reply_code(), Some(ReplyCode::REPLY_SUCCESS), "{err}");
    conn.close().unwrap(); // closing twice is a no-op
}

#[test]
fn bad_password_is_authentication_failed() {
    let mut o = support::options();
    o.credentials("guest", "definitely-wrong");
    let err = Connection::connect_with(o).unwrap_err();
    assert!(matches!(err, Error::AuthenticationFailed(_)), "{err}");
}

#[test]
fn dropping_the_connection_closes_it_even_with_channels_alive() {
    let (conn, ch) = channel();
    let q = unique("dropconn");
    ch.queue_declare(
        &q,
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .unwrap();
    drop(conn);
    eventually("the channel to see the closed connection", || !ch.is_open());
    let err = ch.queue_declare_passive(&q).unwrap_err();
    assert!(err.is_connection_error(), "{err}");
    // The exclusive queue went with the connection.
    let (observer, _) = channel();
    eventually("the exclusive queue to be deleted", || {
        let probe = observer.open_channel().unwrap();
        let declared = probe.queue_declare_passive(&q);
        matches!(declared, Err(e) if e.reply_code() == Some(ReplyCode::NOT_FOUND))
    });
    observer.close().unwrap();
}

// ---- declare, bind, purge, delete ----

#[test]
fn declare_bind_unbind_purge_delete() {
    let (conn, ch) = channel();
    let exchange = unique("bex");
    ch.exchange_declare(
        &exchange,
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
    )
    .unwrap();
    ch.exchange_declare_passive(&exchange).unwrap();
    let q = temp_queue(&ch, "bdbpd");
    ch.queue_bind(&q, &exchange, "key", BindOptions::default())
        .unwrap();
    for _ in 0..3 {
        ch.basic_publish(
            &exchange,
            "key",
            BasicPublishOptions::default(),
            &props(),
            "x",
        )
        .unwrap();
    }
    wait_ready(&ch, &q, 3);
    assert_eq!(ch.queue_purge(&q).unwrap(), 3);
    ch.queue_unbind(&q, &exchange, "key", FieldTable::new())
        .unwrap();
    ch.basic_publish(
        &exchange,
        "key",
        BasicPublishOptions::default(),
        &props(),
        "x",
    )
    .unwrap();
    // Unbound: nothing arrives (a basic.get after the publish on the same channel sees it).
    assert!(ch.basic_get(&q, true).unwrap().is_none());

    // Exchange to exchange.
    let fanout = unique("bfan");
    ch.exchange_declare(
        &fanout,
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
    )
    .unwrap();
    ch.exchange_bind(&exchange, &fanout, "key", BindOptions::default())
        .unwrap();
    ch.queue_bind(&q, &exchange, "key", BindOptions::default())
        .unwrap();
    ch.basic_publish(
        &fanout,
        "key",
        BasicPublishOptions::default(),
        &props(),
        "via",
    )
    .unwrap();
    assert_eq!(&get(&ch, &q, true).delivery.body[..], b"via");
    ch.exchange_unbind(&exchange, &fanout, "key", BindOptions::default())
        .unwrap();

    assert_eq!(
        ch.queue_delete(&q, QueueDeleteOptions::default()).unwrap(),
        0
    );
    for name in [&fanout, &exchange] {
        ch.exchange_delete(name, ExchangeDeleteOptions::default())
            .unwrap();
    }
    conn.close().unwrap();
}

#[test]
fn passive_declare_of_missing_queue_closes_only_the_channel() {
    let (conn, ch) = channel();
    let err = ch.queue_declare_passive(&unique("missing")).unwrap_err();
    let Error::ChannelClosed(close) = &err else {
        panic!("{err}")
    };
    assert_eq!(close.code, ReplyCode::NOT_FOUND);
    assert!(!ch.is_open());
    let again = ch.queue_declare_passive("whatever").unwrap_err();
    // Later calls on the closed channel keep reporting the broker's reason.
    assert!(
        matches!(&again, Error::ChannelClosed(c) if c.code == ReplyCode::NOT_FOUND),
        "{again}"
    );
    assert!(conn.is_open());
    let ch2 = conn.open_channel().unwrap();
    let q = temp_queue(&ch2, "after404");
    delete(&ch2, &q);
    conn.close().unwrap();
}

// ---- qos, publish, get, acks ----

#[test]
fn qos_limits_unacked_deliveries() {
    let (conn, ch) = channel();
    let q = temp_queue(&ch, "bqos");
    for _ in 0..5 {
        publish(&ch, &q, "m");
    }
    ch.basic_qos(2, BasicQosOptions::default()).unwrap();
    let mut consumer = ch
        .basic_consume_iter(&q, "", BasicConsumeOptions::default())
        .unwrap();
    let first = consumer.next().unwrap().unwrap();
    let second = consumer.next().unwrap().unwrap();
    assert!(
        matches!(
            consumer.recv_timeout(Duration::from_millis(300)).unwrap(),
            Received::TimedOut
        ),
        "prefetch 2 must hold back the third message"
    );
    assert!(first.delivery_tag < second.delivery_tag);
    second.ack_multiple().unwrap();
    let Received::Delivery(third) = consumer.recv_timeout(Duration::from_secs(5)).unwrap() else {
        panic!("no delivery after acking")
    };
    third.ack().unwrap();
    consumer.cancel().unwrap();
    delete(&ch, &q);
    conn.close().unwrap();
}

#[test]
fn publish_with_mandatory_and_properties_round_trips() {
    let (conn, ch) = channel();
    let q = temp_queue(&ch, "bprops");
    let sent = BasicProperties {
        content_type: Some(ShortStr::from_static("application/json")),
        content_encoding: Some(ShortStr::from_static("utf-8")),
        headers: Some(FieldTable::new().with("attempt", 3).with("source", "test")),
        delivery_mode: Some(2),
        priority: Some(5),
        correlation_id: Some(ShortStr::from_static("corr-1")),
        reply_to: Some(ShortStr::from_static("replies")),
        expiration: Some(ShortStr::from_static("60000")),
        message_id: Some(ShortStr::from_static("id-1")),
        timestamp: Some(1_700_000_000),
        kind: Some(ShortStr::from_static("order")),
        app_id: Some(ShortStr::from_static("lepus-tests")),
        ..Default::default()
    };
    ch.basic_publish(
        "",
        &q,
        BasicPublishOptions { mandatory: true },
        &sent,
        r#"{"n":1}"#,
    )
    .unwrap();
    let got = get(&ch, &q, false);
    assert_eq!(got.message_count, 0);
    let d = got.delivery;
    assert_eq!(&d.body[..], br#"{"n":1}"#);
    assert_eq!(d.properties, sent);
    assert_eq!(d.routing_key, q.as_str());
    assert!(d.exchange.is_empty());
    assert!(d.consumer_tag.is_empty());
    d.ack().unwrap();
    // Routed, so nothing came back.
    assert!(conn
        .drain_events(Some(Duration::from_millis(100)))
        .unwrap()
        .is_timed_out());
    delete(&ch, &q);
    conn.close().unwrap();
}

#[test]
fn publish_confirm_waits_for_each_verdict() {
    let (conn, ch) = channel();
    // Without confirm mode there is nothing to wait for, and that is not an ack.
    let q = refusing_queue(&ch, "bconfirm", 1);
    let c = ch
        .basic_publish_confirm(
            "",
            &q,
            BasicPublishOptions::default(),
            &props(),
            "unconfirmed",
        )
        .unwrap();
    assert_eq!(c, Confirmation::NotRequested);
    assert!(!c.is_ack());
    ch.queue_purge(&q).unwrap();

    ch.confirm_select().unwrap();
    let first = ch
        .basic_publish_confirm("", &q, BasicPublishOptions::default(), &props(), "fits")
        .unwrap();
    assert!(first.is_ack(), "{first:?}");
    let second = ch
        .basic_publish_confirm("", &q, BasicPublishOptions::default(), &props(), "refused")
        .unwrap();
    assert!(second.is_nack(), "{second:?}");
    // A mandatory, unroutable message is returned, then acked.
    let third = ch
        .basic_publish_confirm(
            "",
            &unique("nowhere"),
            BasicPublishOptions { mandatory: true },
            &props(),
            "lost",
        )
        .unwrap();
    let returned = third.returned().unwrap();
    assert_eq!(returned.reply_code, ReplyCode::NO_ROUTE);
    assert!(matches!(third, Confirmation::Ack(Some(_))));
    delete(&ch, &q);
    conn.close().unwrap();
}

#[test]
fn pipelined_publishes_then_wait_for_confirms() {
    const N: u32 = 2000;
    let (conn, ch) = channel();
    let q = temp_queue(&ch, "bpipeline");
    ch.confirm_select().unwrap();
    for i in 0..N {
        ch.basic_publish(
            "",
            &q,
            BasicPublishOptions::default(),
            &props(),
            i.to_string(),
        )
        .unwrap();
    }
    assert!(ch.wait_for_confirms(Duration::from_secs(30)).unwrap());
    // Confirmed means enqueued.
    assert_eq!(ready_count(&ch, &q), N);
    // Nothing outstanding: returns at once, whatever the timeout.
    assert!(ch.wait_for_confirms(Duration::ZERO).unwrap());
    assert!(ch.wait_for_confirms(Duration::MAX).unwrap());
    assert_eq!(
        ch.queue_delete(&q, QueueDeleteOptions::default()).unwrap(),
        N
    );
    // Not in confirm mode: a local error, not a hang.
    let ch2 = conn.open_channel().unwrap();
    let err = ch2.wait_for_confirms(Duration::from_secs(1)).unwrap_err();
    assert!(matches!(err, Error::InvalidState(_)), "{err}");
    conn.close().unwrap();
}

#[test]
fn a_sliding_window_waits_for_each_confirm_in_turn() {
    const LIMIT: u32 = 300;
    const N: u32 = 1000;
    let (conn, ch) = channel();
    let q = refusing_queue(&ch, "bwindow", LIMIT);
    ch.confirm_select().unwrap();
    let mut window = std::collections::VecDeque::new();
    let mut verdicts = Vec::new();
    for i in 0..N {
        let body = i.to_string();
        let confirm = ch
            .basic_publish("", &q, BasicPublishOptions::default(), &props(), body)
            .unwrap();
        window.push_back(confirm);
        if window.len() > 50 {
            verdicts.push(window.pop_front().unwrap().wait().unwrap());
        }
    }
    while let Some(confirm) = window.pop_front() {
        verdicts.push(confirm.wait_timeout(Duration::from_secs(10)).unwrap());
    }
    // The queue takes the first LIMIT messages and refuses the rest: each handle got its own
    // message's verdict, in order.
    assert_eq!(verdicts.len(), N as usize);
    let acked = verdicts.iter().take_while(|c| c.is_ack()).count();
    assert_eq!(acked, LIMIT as usize);
    assert!(verdicts.iter().skip(acked).all(Confirmation::is_nack));
    assert_eq!(ready_count(&ch, &q), LIMIT);

    // Without confirm mode a handle resolves at once, and it is not an ack.
    let plain = conn.open_channel().unwrap();
    let c = plain
        .basic_publish("", &q, BasicPublishOptions::default(), &props(), "x")
        .unwrap();
    assert_eq!(c.wait().unwrap(), Confirmation::NotRequested);
    delete(&ch, &q);
    conn.close().unwrap();
}

#[test]
fn a_confirm_handle_ends_with_the_channel_error() {
    let (conn, ch) = channel();
    ch.confirm_select().unwrap();
    // A publish to a missing exchange: the broker closes the channel (404), and the handle
    // resolves with the channel's error instead of waiting.
    let doomed = publish_to_missing_exchange(&ch);
    let err = doomed.wait_timeout(Duration::from_secs(10)).unwrap_err();
    assert!(
        matches!(&err, Error::ChannelClosed(c) if c.code == ReplyCode::NOT_FOUND),
        "{err:?}"
    );
    conn.close().unwrap();
}

#[test]
fn a_confirm_handle_times_out_when_the_broker_goes_silent() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = rt.block_on(support::proxy::Proxy::start(support::proxy::broker_addr()));
    let mut options = support::options();
    proxy.route(&mut options);
    let conn = connect_with(options);
    let ch = conn.open_channel().unwrap();
    let q = temp_queue(&ch, "bsilent");
    ch.confirm_select().unwrap();
    proxy.freeze();
    let pending = ch
        .basic_publish("", &q, BasicPublishOptions::default(), &props(), "x")
        .unwrap();
    let started = Instant::now();
    let err = pending
        .wait_timeout(Duration::from_millis(300))
        .unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // Once the link works again, the message is confirmed like any other.
    proxy.thaw();
    assert!(ch.wait_for_confirms(Duration::from_secs(10)).unwrap());
    delete(&ch, &q);
    conn.close().unwrap();
    drop(proxy);
}

#[test]
fn get_from_empty_and_non_empty_queue() {
    let (conn, ch) = channel();
    let q = temp_queue(&ch, "bget");
    assert!(ch.basic_get(&q, false).unwrap().is_none());
    publish(&ch, &q, "one");
    publish(&ch, &q, "two");
    wait_ready(&ch, &q, 2);
    let got = ch.basic_get(&q, false).unwrap().unwrap();
    assert_eq!(&got.delivery.body[..], b"one");
    assert_eq!(got.message_count, 1);
    assert!(!got.delivery.redelivered);
    got.delivery.ack().unwrap();
    let got = ch.basic_get(&q, true).unwrap().unwrap();
    assert_eq!(&got.delivery.body[..], b"two");
    assert!(
        got.delivery.ack().is_err(),
        "no-ack messages cannot be acked"
    );
    assert!(ch.basic_get(&q, false).unwrap().is_none());
    delete(&ch, &q);
    conn.close().unwrap();
}

#[test]
fn ack_nack_reject_by_delivery_and_by_tag() {
    let (conn, ch) = channel();
    let q = temp_queue(&ch, "backs");
    for body in ["a", "b", "c", "d"] {
        publish(&ch, &q, body);
    }
    wait_ready(&ch, &q, 4);
    let a = ch.basic_get(&q, false).unwrap().unwrap().delivery;
    let b = ch.basic_get(&q, false).unwrap().unwrap().delivery;
    let c = ch.basic_get(&q, false).unwrap().unwrap().delivery;
    let d = ch.basic_get(&q, false).unwrap().unwrap().delivery;
    a.ack().unwrap();
    ch.basic_nack(b.delivery_tag, false, true).unwrap(); // requeued
    ch.basic_reject(c.delivery_tag, false).unwrap(); // dropped
    d.nack(false).unwrap(); // dropped
    let again = get(&ch, &q, false).delivery;
    assert_eq!(&again.body[..], b"b");
    assert!(again.redelivered);
    ch.basic_ack(again.delivery_tag, false).unwrap();
    assert!(ch.basic_get(&q, false).unwrap().is_none());
    // Reject with requeue comes back too.
    publish(&ch, &q, "e");
    let e = get(&ch, &q, false).delivery;
    e.reject(true).unwrap();
    let e = get(&ch, &q, false).delivery;
    assert!(e.redelivered);
    e.ack().unwrap();
    delete(&ch, &q);
    conn.close().unwrap();
}

#[test]
fn recover_redelivers_unacknowledged_messages() {
    let (conn, ch) = channel();
    let q = temp_queue(&ch, "brecover");
    publish(&ch, &q, "r");
    let first = get(&ch, &q, false).delivery;
    assert!(!first.redelivered);
    ch.basic_recover(true).unwrap();
    let second = get(&ch, &q, false).delivery;
    assert_eq!(&second.body[..], b"r");
    assert!(second.redelivered);
    second.ack().unwrap();
    ch.basic_recover_async(true).unwrap();
    delete(&ch, &q);
    conn.close().unwrap();
}

#[test]
fn transactions_commit_and_roll_back() {
    let (conn, ch) = channel();
    let q = temp_queue(&ch, "btx");
    ch.tx_select().unwrap();
    publish(&ch, &q, "rolled back");
    ch.tx_rollback().unwrap();
    publish(&ch, &q, "committed");
    ch.tx_commit().unwrap();
    let got = ch.basic_get(&q, true).unwrap().unwrap();
    assert_eq!(&got.delivery.body[..], b"committed");
    assert_eq!(got.message_count, 0);
    delete(&ch, &q);
    conn.close().unwrap();
}

#[test]
fn channel_close_is_clean_and_idempotent() {
    let (conn, ch) = channel();
    let seen = Seen::default();
    let q = temp_queue(&ch, "bchclose");
    ch.basic_consume(&q, "", BasicConsumeOptions::default(), recorder(&seen))
        .unwrap();
    ch.close().unwrap();
    assert!(!ch.is_open());
    ch.close().unwrap();
    // A channel closed on request is not reported as an event.
    assert!(conn
        .drain_events(Some(Duration::from_millis(200)))
        .unwrap()
        .is_timed_out());
    let ch2 = conn.open_channel().unwrap();
    delete(&ch2, &q);
    conn.close().unwrap();
}

// ---- drain_events and callbacks ----

#[test]
fn drain_events_returns_timed_out_after_the_timeout_not_before() {
    let (conn, ch) = channel();
    // Nothing registered.
    for timeout in [Duration::from_millis(300), Duration::from_millis(700)] {
        let started = Instant::now();
        let drained = conn.drain_events(Some(timeout)).unwrap();
        let took = started.elapsed();
        assert_eq!(drained, Drained::TimedOut);
        assert!(
            took >= timeout,
            "returned after {took:?}, before {timeout:?}"
        );
        assert!(took < timeout + Duration::from_secs(1), "took {took:?}");
    }
    // A consumer on an empty queue.
    let q = temp_queue(&ch, "bdrain");
    let seen = Seen::default();
    ch.basic_consume(&q, "", BasicConsumeOptions::default(), recorder(&seen))
        .unwrap();
    let started = Instant::now();
    let drained = conn.drain_events(Some(Duration::from_millis(500))).unwrap();
    assert!(drained.is_timed_out());
    assert!(started.elapsed() >= Duration::from_millis(500));
    // A zero timeout dispatches what is ready without waiting.
    let started = Instant::now();
    assert!(conn
        .drain_events(Some(Duration::ZERO))
        .unwrap()
        .is_timed_out());
    assert!(started.elapsed() < Duration::from_millis(200));
    // Something ready: returned at once, long before the timeout.
    publish(&ch, &q, "now");
    let started = Instant::now();
    let events = drain_until(&conn, "one delivery", |e| delivered(e) == 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(&events[..], [Event::Delivered { .. }]),
        "{events:?}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    // A timeout too large for a deadline means no limit, not a panic.
    publish(&ch, &q, "later");
    let drained = conn.drain_events(Some(Duration::MAX)).unwrap();
    assert_eq!(delivered(drained.events()), 1);
    delete(&ch, &q);
    conn.close().unwrap();
}

#[test]
fn callbacks_are_dispatched_by_consumer_tag() {
    let (conn, ch) = channel();
    let qa = temp_queue(&ch, "btag-a");
    let qb = temp_queue(&ch, "btag-b");
    let seen_a = Seen::default();
    let seen_b = Seen::default();
    let tag_a = ch
        .basic_consume(
            &qa,
            "consumer-a",
            BasicConsumeOptions::default(),
            recorder(&seen_a),
        )
        .unwrap();
    assert_eq!(tag_a, "consumer-a");
    // A broker-generated tag, on a second channel.
    let ch2 = conn.open_channel().unwrap();
    let tag_b = ch2
        .basic_consume(&qb, "", BasicConsumeOptions::default(), recorder(&seen_b))
        .unwrap();
    assert!(tag_b.starts_with("amq.ctag-"), "{tag_b}");
    for body in ["a1", "a2", "a3"] {
        publish(&ch, &qa, body);
    }
    for body in ["b1", "b2"] {
        publish(&ch, &qb, body);
    }
    let events = drain_until(&conn, "five deliveries", |e| delivered(e) == 5);
    let a = seen_a.lock().unwrap().clone();
    let b = seen_b.lock().unwrap().clone();
    assert_eq!(
        a.iter()
            .map(|(t, body, _)| (t.as_str(), body.as_str()))
            .collect::<Vec<_>>(),
        [
            ("consumer-a", "a1"),
            ("consumer-a", "a2"),
            ("consumer-a", "a3")
        ]
    );
    assert_eq!(
        b.iter()
            .map(|(t, body, _)| (t.as_str(), body.as_str()))
            .collect::<Vec<_>>(),
        [(tag_b.as_str(), "b1"), (tag_b.as_str(), "b2")]
    );
    for event in &events {
        let Event::Delivered {
            channel,
            consumer_tag,
            ..
        } = event
        else {
            panic!("unexpected {event:?}")
        };
        if *consumer_tag == "consumer-a" {
            assert_eq!(*channel, ch.id());
        } else {
            assert_eq!(*consumer_tag, tag_b.as_str());
            assert_eq!(*channel, ch2.id());
        }
    }
    delete(&ch, &qa);
    delete(&ch, &qb);
    conn.close().unwrap();
}

#[test]
fn cancel_stops_the_callback() {
    let (conn, ch) = channel();
    let q = temp_queue(&ch, "bcancel");
    let seen = Seen::default();
    let tag = ch
        .basic_consume(&q, "", BasicConsumeOptions::default(), recorder(&seen))
        .unwrap();
    publish(&ch, &q, "before");
    drain_until(&conn, "the first delivery", |e| delivered(e) == 1);
    ch.basic_cancel(&tag).unwrap();
    publish(&ch, &q, "after");
    wait_ready(&ch, &q, 1);
    assert!(conn
        .drain_events(Some(Duration::from_millis(300)))
        .unwrap()
        .is_timed_out());
    assert_eq!(seen.lock().unwrap().len(), 1);
    delete(&ch, &q);
    conn.close().unwrap();
}

#[test]
fn deliveries_of_a_cancelled_consumer_are_requeued_to_another_consumer() {
    let (conn, ch) = channel();
    let q = temp_queue(&ch, "brequeue");
    let calls_a = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls_a);
    let tag_a = ch
        .basic_consume(&q, "", BasicConsumeOptions::default(), move |_, _| {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    for body in ["1", "2", "3", "4", "5"] {
        publish(&ch, &q, body);
    }
    // All five are now unacknowledged, sent to consumer A, waiting in its buffer: nobody has
    // called drain_events.
    wait_ready(&ch, &q, 0);
    std::thread::sleep(Duration::from_millis(200));
    ch.basic_cancel(&tag_a).unwrap();

    let ch2 = conn.open_channel().unwrap();
    let seen_b = Seen::default();
    ch2.basic_consume(&q, "", BasicConsumeOptions::default(), recorder(&seen_b))
        .unwrap();
    drain_until(&conn, "five redeliveries to B", |e| delivered(e) == 5);
    assert_eq!(
        calls_a.load(Ordering::SeqCst),
        0,
        "A's callback ran after cancel"
    );
    let b = seen_b.lock().unwrap().clone();
    assert_eq!(
        b.iter()
            .map(|(_, body, _)| body.as_str())
            .collect::<Vec<_>>(),
        ["1", "2", "3", "4", "5"]
    );
    assert!(b.iter().all(|(_, _, redelivered)| *redelivered), "{b:?}");
    delete(&ch, &q);
    conn.close().unwrap();
}

#[test]
fn cancelling_from_inside_the_callback_requeues_the_rest() {
    let (conn, ch) = channel();
    let q = temp_queue(&ch, "bselfcancel");
    for body in ["1", "2", "3", "4"] {
        publish(&ch, &q, body);
    }
    wait_ready(&ch, &q, 4);
    let seen_a = Seen::default();
    let record = Arc::clone(&seen_a);
    ch.basic_consume(&q, "", BasicConsumeOptions::default(), move |ch, d| {
        record.lock().unwrap().push((
            d.consumer_tag.to_string(),
            String::from_utf8_lossy(&d.body).into_owned(),
            d.redelivered,
        ));
        d.ack().unwrap();
        // Wait until the broker has sent the rest, then stop after this one.
        std::thread::sleep(Duration::from_millis(200));
        ch.basic_cancel(d.consumer_tag.as_str().unwrap()).unwrap();
    })
    .unwrap();
    drain_until(&conn, "the first delivery", |e| delivered(e) == 1);
    assert_eq!(seen_a.lock().unwrap().len(), 1);
    // The other three were given back.
    wait_ready(&ch, &q, 3);
    let rest: Vec<_> = (0..3).map(|_| get(&ch, &q, true).delivery).collect();
    assert!(rest.iter().all(|d| d.redelivered));
    assert_eq!(
        rest.iter().map(|d| &d.body[..]).collect::<Vec<_>>(),
        [b"2", b"3", b"4"]
    );
    delete(&ch, &q);
    conn.close().unwrap();
}

#[test]
fn a_panicking_callback_stays_registered() {
    let (conn, ch) = channel();
    let q = temp_queue(&ch, "bpanic");
    let seen = Seen::default();
    let record = Arc::clone(&seen);
    ch.basic_consume(&q, "", BasicConsumeOptions::default(), move |_, d| {
        if &d.body[..] == b"boom" {
            panic!("callback failure (expected by the test)");
        }
        record.lock().unwrap().push((
            String::new(),
            String::from_utf8_lossy(&d.body).into_owned(),
            false,
        ));
        d.ack().unwrap();
    })
    .unwrap();
    publish(&ch, &q, "boom");
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        drain_until(&conn, "the panic", |_| false);
    }));
    assert!(result.is_err());
    publish(&ch, &q, "fine");
    drain_until(&conn, "the next delivery", |e| delivered(e) == 1);
    assert_eq!(seen.lock().unwrap().len(), 1);
    ch.close().unwrap();
    let ch2 = conn.open_channel().unwrap();
    delete(&ch2, &q);
    conn.close().unwrap();
}

#[test]
fn two_threads_drain_one_connection() {
    const N: usize = 200;
    let (conn, ch) = channel();
    let qa = temp_queue(&ch, "b2thr-a");
    let qb = temp_queue(&ch, "b2thr-b");
    let count = Arc::new(AtomicUsize::new(0));
    for q in [&qa, &qb] {
        let count = Arc::clone(&count);
        ch.basic_consume(q, "", BasicConsumeOptions::default(), move |_, d| {
            count.fetch_add(1, Ordering::SeqCst);
            d.ack().unwrap();
        })
        .unwrap();
    }
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(20);
                while count.load(Ordering::SeqCst) < N && Instant::now() < deadline {
                    let _ = conn.drain_events(Some(Duration::from_millis(50))).unwrap();
                }
            });
        }
        for i in 0..N {
            publish(&ch, if i % 2 == 0 { &qa } else { &qb }, "m");
        }
    });
    assert_eq!(count.load(Ordering::SeqCst), N);
    wait_ready(&ch, &qa, 0);
    delete(&ch, &qa);
    delete(&ch, &qb);
    conn.close().unwrap();
}

// ---- heartbeats ----

#[test]
fn heartbeat_survives_a_pause_in_user_code() {
    let mut o = support::options();
    o.heartbeat(Heartbeat::Secs(1));
    let conn = connect_with(o);
    assert_eq!(conn.negotiated().heartbeat, 1);
    let ch = conn.open_channel().unwrap();
    let q = temp_queue(&ch, "bheartbeat");
    let seen = Seen::default();
    ch.basic_consume(&q, "", BasicConsumeOptions::default(), recorder(&seen))
        .unwrap();
    publish(&ch, &q, "during the pause");
    // 3.5 heartbeat intervals without a single call: the broker would close the connection
    // after two missed heartbeats if nobody sent them.
    std::thread::sleep(Duration::from_millis(3500));
    assert!(conn.is_open());
    ch.queue_declare_passive(&q).unwrap();
    drain_until(&conn, "the delivery buffered during the pause", |e| {
        delivered(e) == 1
    });
    assert_eq!(seen.lock().unwrap().first().unwrap().1, "during the pause");
    delete(&ch, &q);
    conn.close().unwrap();
}

// ---- iterator consumer ----

#[test]
fn iterator_consumer_with_timeout() {
    let (conn, ch) = channel();
    let q = temp_queue(&ch, "biter");
    let mut consumer = ch
        .basic_consume_iter(&q, "iter-tag", BasicConsumeOptions::default())
        .unwrap();
    assert_eq!(*consumer.tag(), "iter-tag");
    let started = Instant::now();
    assert!(matches!(
        consumer.recv_timeout(Duration::from_millis(300)).unwrap(),
        Received::TimedOut
    ));
    assert!(started.elapsed() >= Duration::from_millis(300));
    for body in ["1", "2", "3"] {
        publish(&ch, &q, body);
    }
    let bodies: Vec<_> = consumer
        .by_ref()
        .take(3)
        .map(|d| {
            let d = d.unwrap();
            d.ack().unwrap();
            String::from_utf8_lossy(&d.body).into_owned()
        })
        .collect();
    assert_eq!(bodies, ["1", "2", "3"]);
    // Cancelled through the channel: buffered deliveries, then the end.
    publish(&ch, &q, "4");
    let Received::Delivery(four) = consumer.recv_timeout(Duration::from_secs(5)).unwrap() else {
        panic!("no fourth delivery")
    };
    four.ack().unwrap();
    ch.basic_cancel("iter-tag").unwrap();
    assert!(matches!(
        consumer.recv_timeout(Duration::from_secs(5)).unwrap(),
        Received::Ended
    ));
    assert!(consumer.next().is_none());
    delete(&ch, &q);
    conn.close().unwrap();
}

#[test]
fn dropping_an_iterator_consumer_gives_its_buffer_back() {
    let (conn, ch) = channel();
    let q = temp_queue(&ch, "biterdrop");
    for body in ["1", "2", "3"] {
        publish(&ch, &q, body);
    }
    let mut consumer = ch
        .basic_consume_iter(&q, "", BasicConsumeOptions::default())
        .unwrap();
    let first = consumer.next().unwrap().unwrap();
    first.ack().unwrap();
    wait_ready(&ch, &q, 0);
    drop(consumer);
    // Cancelled in the background; the two it held are back in the queue.
    wait_ready(&ch, &q, 2);
    let second = get(&ch, &q, true).delivery;
    assert!(second.redelivered);
    assert_eq!(&second.body[..], b"2");
    delete(&ch, &q);
    conn.close().unwrap();
}

// ---- server events ----

#[test]
fn server_events_reach_drain_events() {
    let (conn, ch) = channel();

    // basic.return of a mandatory, unroutable message.
    let key = unique("unroutable");
    ch.basic_publish(
        "",
        &key,
        BasicPublishOptions { mandatory: true },
        &props(),
        "lost",
    )
    .unwrap();
    let events = drain_until(&conn, "the returned message", |e| !e.is_empty());
    let [Event::Returned { channel, message }] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(*channel, ch.id());
    assert_eq!(message.reply_code, ReplyCode::NO_ROUTE);
    assert_eq!(message.routing_key, key.as_str());
    assert_eq!(&message.body[..], b"lost");

    // basic.cancel from the broker when the queue is deleted.
    let q = temp_queue(&ch, "bservercancel");
    let seen = Seen::default();
    let tag = ch
        .basic_consume(&q, "", BasicConsumeOptions::default(), recorder(&seen))
        .unwrap();
    let other = conn.open_channel().unwrap();
    delete(&other, &q);
    let events = drain_until(&conn, "the consumer's cancellation", |e| !e.is_empty());
    assert_eq!(
        events,
        [Event::ConsumerCancelled {
            channel: ch.id(),
            consumer_tag: ShortStr::try_from(tag.as_str()).unwrap(),
        }]
    );
    assert!(ch.is_open(), "a cancelled consumer leaves its channel open");

    // A channel the broker closes: publishing to a missing exchange (404).
    let q = temp_queue(&ch, "bchclosed");
    let doomed = conn.open_channel().unwrap();
    doomed
        .basic_consume(&q, "", BasicConsumeOptions::default(), recorder(&seen))
        .unwrap();
    publish_to_missing_exchange(&doomed);
    let events = drain_until(&conn, "the channel's closing", |e| !e.is_empty());
    let [Event::ChannelClosed {
        channel,
        reason: Some(close),
    }] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(*channel, doomed.id());
    assert_eq!(close.code, ReplyCode::NOT_FOUND);
    assert!(!doomed.is_open());

    // Without a consumer the reason is not known, but the closing is still reported.
    let quiet = conn.open_channel().unwrap();
    quiet
        .basic_publish(
            &unique("no-such-exchange"),
            "k",
            BasicPublishOptions::default(),
            &props(),
            "x",
        )
        .unwrap();
    let events = drain_until(&conn, "the quiet channel's closing", |e| !e.is_empty());
    assert_eq!(
        events,
        [Event::ChannelClosed {
            channel: quiet.id(),
            reason: None,
        }]
    );
    assert!(conn.is_open());
    assert!(seen.lock().unwrap().is_empty());
    delete(&ch, &q);
    conn.close().unwrap();
}

// ---- threads and async contexts ----

#[test]
fn two_threads_share_one_channel() {
    let (conn, ch) = channel();
    let q = temp_queue(&ch, "bshared");
    std::thread::scope(|s| {
        for t in 0..2 {
            let ch = ch.clone();
            let q = &q;
            s.spawn(move || {
                for i in 0..50 {
                    // Each call gets its own reply, whatever the other thread does.
                    let declared = ch.queue_declare_passive(q).unwrap();
                    assert_eq!(declared.name, *q);
                    ch.basic_publish(
                        "",
                        q,
                        BasicPublishOptions::default(),
                        &props(),
                        format!("{t}-{i}"),
                    )
                    .unwrap();
                }
            });
        }
    });
    wait_ready(&ch, &q, 100);
    delete(&ch, &q);
    conn.close().unwrap();
}

#[test]
fn blocking_inside_an_async_runtime_panics_and_spawn_blocking_works() {
    let (conn, ch) = channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let inside = ch.clone();
    let result = rt.block_on(async {
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            inside.queue_declare("", QueueDeclareOptions::default())
        }))
    });
    let payload = result.unwrap_err();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(
        message.contains("Cannot start a runtime from within a runtime"),
        "{message}"
    );
    // The handle is unharmed, and spawn_blocking is the way to call it from async code.
    let declared = rt
        .block_on(async move {
            tokio::task::spawn_blocking(move || {
                inside.queue_declare(
                    "",
                    QueueDeclareOptions {
                        exclusive: true,
                        ..Default::default()
                    },
                )
            })
            .await
        })
        .unwrap()
        .unwrap();
    assert!(declared.name.starts_with("amq.gen-"));
    // Dropping handles inside a runtime never panics.
    rt.block_on(async move {
        drop(ch);
        drop(conn);
    });
}

#[test]
#[ignore = "changes broker-wide state (a memory alarm): run alone, with --ignored --test-threads=1"]
fn memory_alarm_is_reported_as_blocked_then_unblocked() {
    use std::process::Command;

    fn rabbitmqctl(args: &[&str]) {
        let out = Command::new("rabbitmqctl").args(args).output().unwrap();
        assert!(out.status.success(), "rabbitmqctl {args:?} failed");
    }
    /// Restores the watermark when dropped, also when the test fails.
    struct Watermark;
    impl Drop for Watermark {
        fn drop(&mut self) {
            let _ = Command::new("rabbitmqctl")
                .args(["set_vm_memory_high_watermark", "0.4"])
                .output();
        }
    }

    let (conn, ch) = channel();
    let q = unique("bblocked");
    ch.queue_declare(
        &q,
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .unwrap();
    rabbitmqctl(&["set_vm_memory_high_watermark", "0"]);
    let alarm = Watermark;
    // RabbitMQ blocks a connection when it next publishes during an alarm.
    publish(&ch, &q, "before");
    let events = drain_until(&conn, "connection.blocked", |e| !e.is_empty());
    assert!(
        matches!(&events[..], [Event::Blocked { reason }] if reason.contains("memory")),
        "{events:?}"
    );
    assert!(conn.blocked().is_some());
    drop(alarm);
    let events = drain_until(&conn, "connection.unblocked", |e| !e.is_empty());
    assert_eq!(events, [Event::Unblocked]);
    assert!(conn.blocked().is_none());
    conn.close().unwrap();
}

#[test]
fn stats_count_the_socket_traffic() {
    let (conn, ch) = channel();
    let before = conn.stats();
    // The handshake and channel.open already went both ways.
    assert!(before.reads > 0 && before.writes > 0, "{before:?}");
    let q = temp_queue(&ch, "blocking-stats");
    publish(&ch, &q, "counted");
    let got = get(&ch, &q, true);
    assert_eq!(&got.delivery.body[..], b"counted");
    let after = conn.stats();
    assert!(after.reads > before.reads, "{after:?}");
    assert!(after.writes > before.writes, "{after:?}");
    // At least the body went out and came back.
    assert!(after.bytes_written >= before.bytes_written + 7);
    assert!(after.bytes_read >= before.bytes_read + 7);
    assert_eq!(
        after.delayed_reads, 0,
        "one request at a time is never delayed"
    );
    delete(&ch, &q);
}
