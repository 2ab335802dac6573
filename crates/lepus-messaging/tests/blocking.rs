//! The blocking messaging API against RabbitMQ: the same producer and consumer behaviour from
//! plain threads.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use lepus_messaging::blocking::Connection;
use lepus_messaging::{Error, Queue};
use support::unique;

fn connect() -> Connection {
    Connection::connect(&support::url()).expect("RabbitMQ on LEPUS_TEST_URL or 127.0.0.1:5672")
}

#[test]
fn publish_and_consume_without_async() {
    let conn = connect();
    let q = Queue::new(unique("blocking")).expires(Duration::from_secs(60));
    let producer = conn.producer().build().unwrap();
    producer
        .publish(&"first")
        .to_queue(&q)
        .declare(q.clone())
        .send()
        .unwrap();
    let confirms: Vec<_> = (0..100u32)
        .map(|i| producer.publish(&i).to_queue(&q).pipelined().unwrap())
        .collect();
    for c in confirms {
        c.wait_timeout(Duration::from_secs(5)).unwrap();
    }

    let mut consumer = conn.consumer([q.clone()]).prefetch(20).consume().unwrap();
    let m = consumer
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .unwrap();
    assert_eq!(m.decode::<String>().unwrap(), "first");
    m.ack().unwrap();
    let mut seen = Vec::new();
    for m in consumer.by_ref() {
        let m = m.unwrap();
        seen.push(m.decode::<u32>().unwrap());
        m.ack().unwrap();
        if seen.len() == 100 {
            break;
        }
    }
    assert_eq!(seen, (0..100).collect::<Vec<_>>());
    assert!(matches!(
        consumer.recv_timeout(Duration::from_millis(100)),
        Err(Error::Timeout(_))
    ));
    consumer.cancel().unwrap();
    conn.close().unwrap();
}

#[test]
fn a_blocking_handler_acks_on_ok_and_rejects_on_error() {
    let conn = connect();
    let q = Queue::new(unique("blocking.run")).expires(Duration::from_secs(60));
    let producer = conn.producer().build().unwrap();
    for i in 0..3u32 {
        producer
            .publish(&i)
            .to_queue(&q)
            .declare(q.clone())
            .send()
            .unwrap();
    }
    let mut consumer = conn.consumer([q.clone()]).consume().unwrap();
    let mut handled = Vec::new();
    // Ends when the queue is deleted from another thread after the third message.
    let deleter = conn.clone();
    let name = q.clone();
    let err = consumer
        .run_typed(|n: u32, _m| {
            handled.push(n);
            if n == 2 {
                let ch = deleter.client().open_channel().unwrap();
                ch.queue_delete(name.name(), Default::default()).unwrap();
            }
            if n == 1 {
                Err("one fails")
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(matches!(err, Error::ConsumerEnded { .. }), "{err}");
    assert_eq!(handled, [0, 1, 2]);
}
