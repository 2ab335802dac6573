//! RPC and Broadcast against RabbitMQ: a thousand calls in flight on one client, the timeout
//! and no-route errors, handler errors, late replies, requests without reply_to, the blocking
//! client and server, and a fanout every consumer of which gets every message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lepus::{ExchangeKind, ReplyCode};
use lepus_messaging::{
    Accept, Broadcast, Connection, Error, Exchange, HandlerErrorPolicy, Queue, Route, RpcClient,
    RpcServer,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use support::{connect, depth_eventually, scratch_queue, unique};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Request {
    n: u32,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Reply {
    n: u32,
    square: u64,
}

/// Serves `queue` on a connection of its own with `server` until the returned sender is
/// dropped or fired; the join handle gives serve's result.
fn spawn_server<F, Fut>(
    server: RpcServer,
    handler: F,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<lepus_messaging::Result<()>>,
)
where
    F: FnMut(Request, lepus_messaging::Message) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Reply, String>> + Send + 'static,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve_until(handler, async move {
                let _ = stopped.await;
            })
            .await
    });
    (stop, task)
}

fn square(r: Request) -> Reply {
    Reply {
        n: r.n,
        square: u64::from(r.n) * u64::from(r.n),
    }
}

/// Declares `queue` so that requests are routed before the server subscribes.
async fn declare(conn: &Connection, queue: &Queue) {
    conn.maybe_declare(queue.clone()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_calls_in_flight_on_one_client() {
    let server_conn = connect().await;
    let q = scratch_queue("rpc-many");
    declare(&server_conn, &q).await;
    let server = RpcServer::builder(&server_conn, q.clone())
        .concurrency(64)
        .build()
        .unwrap();
    let (stop, served) = spawn_server(server, |r: Request, _m| async move { Ok(square(r)) });

    let conn = connect().await;
    let client = RpcClient::new(&conn).await.unwrap();
    let calls = (0..1000u32).map(|n| {
        let client = client.clone();
        let route = Route::from(&q);
        async move {
            let reply: Reply = client.call(route, &Request { n }, WAIT).await.unwrap();
            assert_eq!(reply, square(Request { n }), "the reply of call {n}");
        }
    });
    let handles: Vec<_> = calls.map(tokio::spawn).collect();
    // All in flight at once (or nearly: tasks start as the runtime gets to them).
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(client.in_flight(), 0);

    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn timeout_when_no_server_answers_and_late_replies_are_dropped() {
    let conn = connect().await;
    let q = scratch_queue("rpc-timeout");
    declare(&conn, &q).await;
    // Requests that do not expire, so that the one of the timed-out call is still there
    // when the server starts.
    let client = RpcClient::builder(&conn)
        .expire_requests(false)
        .build()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let e = client
        .call::<_, Reply>(&q, &Request { n: 1 }, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Timeout(d) if d == Duration::from_millis(300)),
        "{e}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(client.in_flight(), 0);

    // A server comes: it answers the old request (the reply is dropped: nobody waits for
    // it), then the new one, whose reply is the one the new call gets.
    let server_conn = connect().await;
    let server = RpcServer::builder(&server_conn, q.clone()).build().unwrap();
    let (stop, served) = spawn_server(server, |r: Request, _m| async move { Ok(square(r)) });
    let reply: Reply = client.call(&q, &Request { n: 2 }, WAIT).await.unwrap();
    assert_eq!(reply, square(Request { n: 2 }));
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn requests_expire_with_their_call() {
    let conn = connect().await;
    let q = scratch_queue("rpc-expire");
    declare(&conn, &q).await;
    let client = RpcClient::new(&conn).await.unwrap();
    let e = client
        .call::<_, Reply>(&q, &Request { n: 1 }, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout(_)));
    // The broker drops the request once its expiration passed (at the head of the queue).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ch = conn.default_channel().await.unwrap();
    assert!(ch.basic_get(q.name(), true).await.unwrap().is_none());
}

#[tokio::test]
async fn no_route_when_no_queue_exists() {
    let conn = connect().await;
    let client = RpcClient::new(&conn).await.unwrap();
    let e = client
        .call::<_, Reply>(unique("rpc-nobody").as_str(), &Request { n: 1 }, WAIT)
        .await
        .unwrap_err();
    match e {
        Error::Returned(returned) => assert_eq!(returned.reply_code, ReplyCode::NO_ROUTE),
        other => panic!("expected a returned request, got {other}"),
    }
    assert_eq!(client.in_flight(), 0);
}

#[tokio::test]
async fn a_closed_channel_is_replaced() {
    let conn = connect().await;
    let q = scratch_queue("rpc-reopen");
    declare(&conn, &q).await;
    let server = RpcServer::builder(&conn, q.clone()).build().unwrap();
    let (stop, served) = spawn_server(server, |r: Request, _m| async move { Ok(square(r)) });
    let client = RpcClient::new(&conn).await.unwrap();

    // A request to a missing exchange: the broker closes the client's channel (404).
    let e = client
        .call::<_, Reply>(
            (unique("no-such-exchange").as_str(), "k"),
            &Request { n: 1 },
            WAIT,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Amqp(a) if a.reply_code() == Some(ReplyCode::NOT_FOUND)),
        "{e}"
    );
    // The next call opens another channel and subscribes it again.
    let reply: Reply = client.call(&q, &Request { n: 3 }, WAIT).await.unwrap();
    assert_eq!(reply.square, 9);
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn handler_errors_and_panics_reject_the_request_and_send_no_reply() {
    let conn = connect().await;
    let dead = scratch_queue("rpc-dead");
    declare(&conn, &dead).await;
    // Rejected requests are dead-lettered here, to be counted.
    let q = scratch_queue("rpc-failing")
        .dead_letter_exchange("")
        .dead_letter_routing_key(dead.name());
    declare(&conn, &q).await;
    let server = RpcServer::builder(&conn, q.clone())
        .concurrency(4)
        .on_handler_error(HandlerErrorPolicy::Reject)
        .build()
        .unwrap();
    let (stop, served) = spawn_server(server, |r: Request, _m| async move {
        match r.n {
            13 => Err("unlucky".to_owned()),
            14 => panic!("a handler bug"),
            _ => Ok(square(r)),
        }
    });
    let client = RpcClient::new(&conn).await.unwrap();
    for n in [13, 14] {
        let e = client
            .call::<_, Reply>(&q, &Request { n }, Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Timeout(_)), "{e}");
    }
    // The server goes on.
    let reply: Reply = client.call(&q, &Request { n: 12 }, WAIT).await.unwrap();
    assert_eq!(reply.square, 144);
    let ch = conn.default_channel().await.unwrap();
    assert_eq!(depth_eventually(&ch, dead.name(), 2).await, 2);
    assert_eq!(depth_eventually(&ch, q.name(), 0).await, 0);
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_request_without_reply_to_is_handled_and_acked() {
    let conn = connect().await;
    let q = scratch_queue("rpc-noreply");
    declare(&conn, &q).await;
    let handled = Arc::new(AtomicU32::new(0));
    let server = RpcServer::builder(&conn, q.clone()).build().unwrap();
    let count = Arc::clone(&handled);
    let (stop, served) = spawn_server(server, move |r: Request, _m| {
        count.fetch_add(1, Ordering::SeqCst);
        async move { Ok(square(r)) }
    });
    let producer = conn.producer().build().unwrap();
    producer
        .publish(&Request { n: 5 })
        .to_queue(&q)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while handled.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "not handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
    // Acked: nothing went back to the queue when the server stopped.
    let ch = conn.default_channel().await.unwrap();
    assert_eq!(depth_eventually(&ch, q.name(), 0).await, 0);
}

#[tokio::test]
async fn replies_use_the_request_serializer() {
    let conn = connect().await;
    let q = scratch_queue("rpc-msgpack");
    declare(&conn, &q).await;
    let msgpack = Accept::new(conn.registry(), ["json", "msgpack"]).unwrap();
    let server = RpcServer::builder(&conn, q.clone())
        .accept(msgpack.clone())
        .build()
        .unwrap();
    let (stop, served) = spawn_server(server, |r: Request, _m| async move { Ok(square(r)) });
    let client = RpcClient::builder(&conn)
        .serializer("msgpack")
        .compression("zlib")
        .accept(msgpack)
        .build()
        .await
        .unwrap();
    let reply = client
        .call_message(&q, &Request { n: 4 }, WAIT)
        .await
        .unwrap();
    assert_eq!(reply.content_type(), Some("application/x-msgpack"));
    assert_eq!(reply.decode::<Reply>().unwrap().square, 16);
    assert!(reply.properties().correlation_id.is_some());
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_server_ends_with_an_error_when_its_queue_is_deleted() {
    let conn = connect().await;
    let q = scratch_queue("rpc-deleted");
    declare(&conn, &q).await;
    let server = RpcServer::builder(&conn, q.clone()).build().unwrap();
    let (_stop, served) = spawn_server(server, |r: Request, _m| async move { Ok(square(r)) });
    let client = RpcClient::new(&conn).await.unwrap();
    let _: Reply = client.call(&q, &Request { n: 1 }, WAIT).await.unwrap();
    let ch = conn.default_channel().await.unwrap();
    q.delete(&ch, false, false).await.unwrap();
    let ended = tokio::time::timeout(WAIT, served).await.unwrap().unwrap();
    assert!(
        matches!(ended, Err(Error::ConsumerEnded { .. })),
        "{ended:?}"
    );
}

#[test]
fn blocking_client_and_server() {
    use lepus_messaging::blocking;

    let conn = blocking::Connection::connect(&support::url()).unwrap();
    let q = scratch_queue("rpc-blocking");
    conn.maybe_declare(q.clone()).unwrap();
    let server = blocking::RpcServer::builder(&conn, q.clone())
        .build()
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let serving = std::thread::spawn(move || {
        server.serve_until(
            |r: Request, _m| {
                if r.n == 0 {
                    Err("zero")
                } else {
                    Ok(square(r))
                }
            },
            || stopping.load(Ordering::SeqCst),
        )
    });
    let client = blocking::RpcClient::new(&conn).unwrap();
    let threads: Vec<_> = (1..=4u32)
        .map(|n| {
            let client = client.clone();
            let q = q.clone();
            std::thread::spawn(move || {
                let reply: Reply = client.call(&q, &Request { n }, WAIT).unwrap();
                assert_eq!(reply, square(Request { n }));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(matches!(
        client.call::<_, Reply>(&q, &Request { n: 0 }, Duration::from_millis(300)),
        Err(Error::Timeout(_))
    ));
    stop.store(true, Ordering::SeqCst);
    serving.join().unwrap().unwrap();
}

#[tokio::test]
async fn broadcast_reaches_every_consumer() {
    let conn = connect().await;
    let name = unique("bcast");
    let news = Broadcast::new(name.as_str())
        .exchange(Exchange::with_kind(name.as_str(), ExchangeKind::Fanout).auto_delete(true));
    let mut a = news.consumer(&conn).consume().await.unwrap();
    let mut b = news.consumer(&conn).consume().await.unwrap();
    let (qa, qb) = (
        a.subscriptions().next().unwrap().0.to_owned(),
        b.subscriptions().next().unwrap().0.to_owned(),
    );
    assert!(qa.starts_with("bcast.") && qb.starts_with("bcast."));
    assert_ne!(qa, qb);

    let producer = news.producer(&conn).build().unwrap();
    for i in 0..10u32 {
        producer.publish(&json!({"i": i})).await.unwrap();
    }
    for consumer in [&mut a, &mut b] {
        for i in 0..10u32 {
            let m = support::next(consumer).await;
            assert_eq!(m.decode::<Value>().unwrap(), json!({"i": i}));
            m.ack().unwrap();
        }
    }
    // Auto-delete: the queues go with their consumers.
    a.cancel().await.unwrap();
    b.cancel().await.unwrap();
    let ch = conn.client().open_channel().await.unwrap();
    let gone = ch.queue_declare_passive(qa.as_str()).await.unwrap_err();
    assert_eq!(gone.reply_code(), Some(ReplyCode::NOT_FOUND));
}

#[tokio::test]
async fn calls_in_flight_fail_when_the_connection_is_lost_and_later_calls_work() {
    use support::proxy::{broker_addr, through, Proxy};

    let server_conn = connect().await;
    let q = scratch_queue("rpc-recovery");
    declare(&server_conn, &q).await;
    let server = RpcServer::builder(&server_conn, q.clone())
        .concurrency(4)
        .build()
        .unwrap();
    let (stop, served) = spawn_server(server, |r: Request, _m| async move {
        if r.n == 1 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(square(r))
    });

    let proxy = Proxy::start(broker_addr()).await;
    let client_conn = through(&proxy, |o| {
        let mut policy = lepus::RecoveryPolicy::new();
        policy.initial_delay(Duration::from_millis(50));
        o.recovery(policy);
    })
    .await;
    let conn = Connection::new(client_conn);
    let client = RpcClient::new(&conn).await.unwrap();
    let _: Reply = client.call(&q, &Request { n: 2 }, WAIT).await.unwrap();

    let mut events = conn.client().events();
    let in_flight = tokio::spawn({
        let client = client.clone();
        let q = q.clone();
        async move { client.call::<_, Reply>(&q, &Request { n: 1 }, WAIT).await }
    });
    // The request is on its way (the server holds it for 500 ms) when the link goes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.cut();
    let lost = tokio::time::timeout(Duration::from_secs(3), in_flight)
        .await
        .expect("the call in flight failed at once, without waiting for its timeout")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&lost, Error::Amqp(lepus::Error::ConnectionLost(_))),
        "{lost}"
    );
    assert!(lost.is_recoverable());
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(lepus::ConnectionEvent::Recovered { .. }) = events.recv().await {
                return;
            }
        }
    })
    .await
    .unwrap();

    // lepus subscribed the reply consumer again: calls work on the recovered connection.
    let reply: Reply = client.call(&q, &Request { n: 3 }, WAIT).await.unwrap();
    assert_eq!(reply.square, 9);
    assert_eq!(client.in_flight(), 0);
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}
