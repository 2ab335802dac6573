//! kombu's SimpleQueue and SimpleBuffer against RabbitMQ: put, get, get_nowait, len, clear,
//! close, kombu's Empty after a timeout, and the buffer's no-ack, exclusive, transient queue.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use lepus::{ExchangeKind, ReplyCode};
use lepus_messaging::{Accept, Error, Exchange, SimpleBuffer, SimpleQueue};
use support::{connect, scratch_queue, unique};

const WAIT: Duration = Duration::from_secs(5);

/// Waits until the simple queue reports `want` ready messages, and returns the last count.
async fn len_eventually(queue: &SimpleQueue, want: u32) -> u32 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = queue.len().await.unwrap();
        if n == want || tokio::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_code(e: &Error, code: ReplyCode) -> bool {
    matches!(e, Error::Amqp(a) if a.reply_code() == Some(code))
}

#[tokio::test]
async fn simple_queue_from_a_name() {
    let conn = connect().await;
    let name = unique("simple");
    let queue = SimpleQueue::new(&conn, &name).await.unwrap();
    assert_eq!(queue.queue().name(), name);
    // kombu's entities: a durable direct exchange of that name, the queue bound with the name.
    let ch = conn.client().open_channel().await.unwrap();
    ch.exchange_declare_passive(name.as_str()).await.unwrap();
    assert_eq!(
        queue.queue().bound_exchange().map(Exchange::exchange_kind),
        Some(&ExchangeKind::Direct)
    );
    assert!(queue.queue().is_durable());

    // clear
    for v in ["x", "y"] {
        queue.put(&v).await.unwrap();
    }
    assert_eq!(len_eventually(&queue, 2).await, 2);
    assert_eq!(queue.qsize().await.unwrap(), 2);
    assert_eq!(queue.clear().await.unwrap(), 2);
    assert!(queue.is_empty().await.unwrap());

    // put, get_nowait, get
    for v in ["a", "b", "c"] {
        queue.put(&v).await.unwrap();
    }
    assert_eq!(len_eventually(&queue, 3).await, 3);
    let a = queue.get_nowait().await.unwrap().expect("a message");
    assert_eq!(a.decode::<String>().unwrap(), "a");
    assert_eq!(a.message_count(), Some(2));
    a.ack().unwrap();
    let b = queue.get(WAIT).await.unwrap();
    assert_eq!(b.decode::<String>().unwrap(), "b");
    assert!(!b.is_no_ack());
    b.ack().unwrap();
    let c = queue.get(WAIT).await.unwrap();
    assert_eq!(c.decode::<String>().unwrap(), "c");
    c.ack().unwrap();

    // kombu's Empty: a timeout, then nothing without waiting.
    let started = std::time::Instant::now();
    let empty = queue.get(Duration::from_millis(200)).await.unwrap_err();
    assert!(matches!(empty, Error::Timeout(d) if d == Duration::from_millis(200)));
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(queue.get_nowait().await.unwrap().is_none());

    // The consumer is still there after a timeout.
    queue.put(&"d").await.unwrap();
    let d = queue.get(WAIT).await.unwrap();
    assert_eq!(d.decode::<String>().unwrap(), "d");
    d.ack().unwrap();

    queue.close().await.unwrap();
    ch.queue_delete(name.as_str(), Default::default())
        .await
        .unwrap();
    ch.exchange_delete(name.as_str(), Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn put_takes_the_producer_options_and_get_leaves_the_rest_queued() {
    let conn = connect().await;
    let q = scratch_queue("simple-opts");
    let queue = SimpleQueue::from_queue(&conn, q.clone())
        .accept(Accept::new(conn.registry(), ["json", "msgpack"]).unwrap())
        .build()
        .await
        .unwrap();
    queue
        .put(&serde_json::json!({"k": [1, 2]}))
        .serializer("msgpack")
        .compression("zlib")
        .header("origin", "test")
        .priority(3)
        .await
        .unwrap();
    for i in 0..3u32 {
        queue.put(&i).await.unwrap();
    }
    let m = queue.get(WAIT).await.unwrap();
    assert_eq!(m.content_type(), Some("application/x-msgpack"));
    assert_eq!(m.compression(), Some("application/x-gzip"));
    assert_eq!(
        m.header("origin").and_then(lepus::FieldValue::as_str),
        Some("test")
    );
    assert_eq!(m.properties().delivery_mode, Some(2));
    assert_eq!(
        m.decode::<serde_json::Value>().unwrap(),
        serde_json::json!({"k": [1, 2]})
    );
    // Prefetch 1: the unacked message is held, the other three wait in the queue.
    assert_eq!(len_eventually(&queue, 3).await, 3);
    m.ack().unwrap();
    for i in 0..3u32 {
        let m = queue.get(WAIT).await.unwrap();
        assert_eq!(m.decode::<u32>().unwrap(), i);
        m.ack().unwrap();
    }
    queue.close().await.unwrap();
}

#[tokio::test]
async fn an_unacked_message_goes_back_to_the_queue() {
    let conn = connect().await;
    let q = scratch_queue("simple-unacked");
    let queue = SimpleQueue::from_queue(&conn, q.clone())
        .build()
        .await
        .unwrap();
    queue.put(&"again").await.unwrap();
    let m = queue.get(WAIT).await.unwrap();
    assert!(!m.redelivered());
    queue.close().await.unwrap();
    // The consumer's channel closes once the message is dropped unsettled: it is requeued.
    drop(m);

    let queue = SimpleQueue::from_queue(&conn, q).build().await.unwrap();
    let m = queue.get(WAIT).await.unwrap();
    assert_eq!(m.decode::<String>().unwrap(), "again");
    assert!(m.redelivered());
    m.ack().unwrap();
    queue.close().await.unwrap();
}

#[tokio::test]
async fn simple_buffer_is_no_ack_exclusive_and_transient() {
    let conn = connect().await;
    let name = unique("buffer");
    let buffer = SimpleBuffer::new(&conn, &name).await.unwrap();
    let q = buffer.queue();
    assert!(q.is_exclusive() && q.is_auto_delete() && !q.is_durable());
    let exchange = q.bound_exchange().unwrap();
    assert!(exchange.is_auto_delete() && !exchange.is_durable());

    for i in 0..3u32 {
        buffer.put(&i).await.unwrap();
    }
    let m = buffer.get(WAIT).await.unwrap();
    assert_eq!(m.decode::<u32>().unwrap(), 0);
    assert!(m.is_no_ack());
    assert_eq!(m.properties().delivery_mode, Some(1)); // transient
    m.ack().unwrap(); // sends nothing
                      // No-ack: the broker forgot it; nothing is held back unacknowledged either.
    let ch = conn.client().open_channel().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = vec![0];
    while seen.len() < 3 && tokio::time::Instant::now() < deadline {
        let m = buffer.get(WAIT).await.unwrap();
        seen.push(m.decode::<u32>().unwrap());
    }
    assert_eq!(seen, [0, 1, 2]);
    assert!(matches!(
        buffer.get(Duration::from_millis(100)).await,
        Err(Error::Timeout(_))
    ));

    // Exclusive: another connection may not use it.
    let other = connect().await;
    let och = other.client().open_channel().await.unwrap();
    let refused = och.queue_declare_passive(name.as_str()).await.unwrap_err();
    assert_eq!(refused.reply_code(), Some(ReplyCode::RESOURCE_LOCKED));

    // Closing cancels the consumer: the auto-delete queue and exchange go.
    buffer.close().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let gone = ch.queue_declare_passive(name.as_str()).await;
        match gone {
            Err(e) if e.reply_code() == Some(ReplyCode::NOT_FOUND) => break,
            _ if tokio::time::Instant::now() > deadline => {
                panic!("the buffer's queue is still there")
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let ch = conn.client().open_channel().await.unwrap();
    let exchange_gone = ch
        .exchange_declare_passive(name.as_str())
        .await
        .unwrap_err();
    assert_eq!(exchange_gone.reply_code(), Some(ReplyCode::NOT_FOUND));
    other.close().await.unwrap();
}

#[tokio::test]
async fn get_nowait_on_a_buffer_and_errors_name_the_queue() {
    let conn = connect().await;
    let name = unique("buffer-nowait");
    let buffer = SimpleBuffer::new(&conn, &name).await.unwrap();
    assert!(buffer.get_nowait().await.unwrap().is_none());
    buffer.put(&"one").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let m = loop {
        if let Some(m) = buffer.get_nowait().await.unwrap() {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "no message");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(m.is_no_ack());
    assert_eq!(m.decode::<String>().unwrap(), "one");
    assert_eq!(buffer.len().await.unwrap(), 0);
    // Deleted under it: len says 404.
    let ch = conn.client().open_channel().await.unwrap();
    ch.queue_delete(name.as_str(), Default::default())
        .await
        .unwrap();
    let e = buffer.len().await.unwrap_err();
    assert!(is_code(&e, ReplyCode::NOT_FOUND), "{e}");
    ch.exchange_delete(name.as_str(), Default::default())
        .await
        .unwrap();
}

#[test]
fn blocking_simple_queue() {
    use lepus_messaging::blocking;

    let conn = blocking::Connection::connect(&support::url()).unwrap();
    let q = scratch_queue("simple-blocking");
    let queue = blocking::SimpleQueue::from_queue(&conn, q).build().unwrap();
    queue.put(&"hello").send().unwrap();
    queue.put(&"world").send().unwrap();
    let m = queue.get(WAIT).unwrap();
    assert_eq!(m.decode::<String>().unwrap(), "hello");
    m.ack().unwrap();
    let m = queue.get(WAIT).unwrap();
    assert_eq!(m.decode::<String>().unwrap(), "world");
    m.ack().unwrap();
    assert!(matches!(
        queue.get(Duration::from_millis(100)),
        Err(Error::Timeout(_))
    ));
    assert!(queue.get_nowait().unwrap().is_none());
    assert_eq!(queue.len().unwrap(), 0);
    queue.close().unwrap();

    let name = unique("buffer-blocking");
    let buffer = blocking::SimpleBuffer::new(&conn, &name).unwrap();
    buffer.put(&7u8).send().unwrap();
    let m = buffer.get(WAIT).unwrap();
    assert!(m.is_no_ack());
    assert_eq!(m.decode::<u8>().unwrap(), 7);
    buffer.close().unwrap();
    conn.close().unwrap();
}
