//! Close and drop keep their promises: a close flushes everything published, however long the
//! backlog takes to drain while it keeps draining; a close that cannot finish says how many
//! messages it could not send; a connection dropped without `close()` still sends what the
//! socket takes, and warns about the rest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lepus::{BasicProperties, BasicPublishOptions, Connection, Error, Heartbeat};
use support::proxy::{broker_addr, through, Pace, Proxy};

/// Declares a durable-less, shared queue on its own connection (an exclusive one would vanish
/// with the connection under test).
async fn shared_queue(prefix: &str) -> (Connection, lepus::Channel, String) {
    let (conn, ch) = support::channel().await;
    let name = support::unique(prefix);
    ch.queue_declare(&name, lepus::QueueDeclareOptions::default())
        .await
        .unwrap();
    (conn, ch, name)
}

/// Publishes `n` small messages to `queue` without confirms.
async fn publish_n(ch: &lepus::Channel, queue: &str, n: u32) {
    let props = BasicProperties::default();
    for i in 0..n {
        ch.basic_publish(
            "",
            queue,
            BasicPublishOptions::default(),
            &props,
            format!("m{i:010}"),
        )
        .await
        .unwrap();
    }
}

/// Publishes small messages until the write buffer is full (a publish waits longer than the
/// blocked-publish timeout), and returns how many were accepted.
async fn publish_until_full(ch: &lepus::Channel, queue: &str) -> u64 {
    let props = BasicProperties::default();
    let mut accepted = 0u64;
    loop {
        match ch
            .basic_publish(
                "",
                queue,
                BasicPublishOptions::default(),
                &props,
                format!("m{accepted:010}"),
            )
            .await
        {
            Ok(_) => accepted += 1,
            Err(Error::Timeout { .. }) => return accepted,
            Err(e) => panic!("publish failed: {e}"),
        }
        assert!(accepted < 5_000_000, "the write buffer never filled");
    }
}

#[tokio::test]
async fn close_flushes_a_backlog_that_drains_longer_than_the_close_timeout() {
    // The link to the broker takes about 2 MB/s, so the backlog left at close (the 1 MiB
    // write buffer plus the kernel's socket buffers) needs far longer than the 200 ms close
    // timeout, but it never stops draining.
    let up = Pace {
        chunk: 16 * 1024,
        gap: Duration::from_millis(8),
    };
    let proxy = Proxy::start_with(broker_addr(), Some(up), None).await;
    let (admin, admin_ch, queue) = shared_queue("close-drain").await;
    let timeout = Duration::from_millis(200);
    let conn = through(&proxy, |o| {
        o.heartbeat(Heartbeat::Disabled)
            .close_timeout(timeout)
            .write_buffer_high_water(1024 * 1024);
    })
    .await;
    let ch = conn.open_channel().await.unwrap();
    let n = 30_000;
    publish_n(&ch, &queue, n).await;
    let backlog = conn.stats().messages_published - conn.stats().messages_written;
    let started = Instant::now();
    conn.close().await.unwrap();
    let took = started.elapsed();
    assert!(
        took > timeout,
        "the backlog ({backlog} messages) drained in {took:?}: the test needs a slower link"
    );
    let stats = conn.stats();
    assert_eq!(stats.messages_published, u64::from(n));
    assert_eq!(stats.messages_written, u64::from(n));
    let depth = support::depth_eventually(&admin_ch, &queue, n, Duration::from_secs(10)).await;
    assert_eq!(depth, n, "close returned Ok but messages are missing");
    admin_ch
        .queue_delete(&queue, Default::default())
        .await
        .unwrap();
    admin.close().await.unwrap();
}

#[tokio::test]
async fn close_through_a_frozen_network_fails_in_time_and_counts_what_was_not_sent() {
    let proxy = Proxy::start(broker_addr()).await;
    let (admin, admin_ch, queue) = shared_queue("close-frozen").await;
    let timeout = Duration::from_millis(500);
    let conn = through(&proxy, |o| {
        o.heartbeat(Heartbeat::Disabled)
            .close_timeout(timeout)
            .blocked_publish_timeout(Some(Duration::from_millis(300)));
    })
    .await;
    let ch = conn.open_channel().await.unwrap();
    proxy.freeze();
    let published = publish_until_full(&ch, &queue).await;

    let started = Instant::now();
    let err = conn.close().await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took < timeout + Duration::from_secs(2),
        "close took {took:?}"
    );
    let Error::Unsent {
        messages, bytes, ..
    } = err
    else {
        panic!("expected Error::Unsent, got {err}");
    };
    assert!(
        messages > 0 && messages <= published,
        "{messages} of {published}"
    );
    assert!(bytes > 0);
    let text = err_text(messages, bytes, &conn).await;
    assert!(text.contains(&messages.to_string()), "{text}");
    assert_eq!(conn.stats().messages_written + messages, published);

    // Once the network moves again, exactly the messages lepus reported as written reach the
    // other end complete. (The broker may still drop some of them: they were published
    // without confirms on a connection that then broke off mid-frame.)
    proxy.thaw();
    let written = published - messages;
    let started = Instant::now();
    let mut complete = 0;
    while started.elapsed() < Duration::from_secs(10) {
        complete = complete_publishes(&proxy.sent_upstream());
        if complete >= written {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        complete, written,
        "{published} published, {messages} reported unsent"
    );
    let depth =
        support::depth_eventually(&admin_ch, &queue, written as u32, Duration::from_secs(5)).await;
    assert!(
        u64::from(depth) <= written,
        "{depth} arrived, {written} written"
    );
    admin_ch
        .queue_delete(&queue, Default::default())
        .await
        .unwrap();
    admin.close().await.unwrap();
}

/// How many publishes `stream` (what a client sent, from the protocol header on) carries
/// complete: method, header and every body byte.
fn complete_publishes(stream: &[u8]) -> u64 {
    use lepus::lepus_wire::{Frame, Method};
    let mut buf = lepus::bytes::BytesMut::from(stream.get(8..).unwrap_or_default());
    let mut body_left: std::collections::HashMap<u16, Option<u64>> = Default::default();
    let mut complete = 0;
    while let Ok(Some(frame)) = Frame::decode(&mut buf, u32::MAX) {
        match frame {
            Frame::Method {
                channel,
                method: Method::BasicPublish(_),
            } => {
                body_left.insert(channel, None);
            }
            Frame::Header { channel, header } => {
                body_left.insert(channel, Some(header.body_size));
                if header.body_size == 0 {
                    complete += 1;
                }
            }
            Frame::Body { channel, body } => {
                if let Some(Some(left)) = body_left.get_mut(&channel) {
                    *left -= body.len() as u64;
                    if *left == 0 {
                        complete += 1;
                    }
                }
            }
            _ => {}
        }
    }
    complete
}

/// The error a second close reports: the same count, in one line.
async fn err_text(messages: u64, bytes: u64, conn: &Connection) -> String {
    match conn.close().await {
        Err(e @ Error::Unsent { .. }) => {
            let text = e.to_string();
            assert!(!text.contains('\n'));
            if let Error::Unsent {
                messages: m,
                bytes: b,
                ..
            } = e
            {
                assert_eq!((m, b), (messages, bytes));
            }
            text
        }
        other => panic!("a second close must report the same loss, got {other:?}"),
    }
}

#[test]
fn returning_without_close_still_sends_what_was_published() {
    // As when `#[tokio::main]` returns: the handles are dropped inside the runtime, then the
    // runtime shuts down and drops the driver tasks, whatever they were doing.
    for flavor in ["current_thread", "multi_thread"] {
        for _ in 0..3 {
            let n = 10_000;
            let queue = admin_runtime().block_on(async {
                let (admin, _ch, queue) = shared_queue("drop-flush").await;
                admin.close().await.unwrap();
                queue
            });
            let rt = runtime(flavor);
            rt.block_on(async {
                let (_conn, ch) = support::channel().await;
                publish_n(&ch, &queue, n).await;
            });
            drop(rt);
            admin_runtime().block_on(async {
                let (admin, ch) = support::channel().await;
                let depth =
                    support::depth_eventually(&ch, &queue, n, Duration::from_secs(10)).await;
                ch.queue_delete(&queue, Default::default()).await.unwrap();
                admin.close().await.unwrap();
                assert_eq!(
                    depth, n,
                    "{flavor}: messages lost when the runtime shut down"
                );
            });
        }
    }
}

#[test]
fn a_connection_dropped_with_output_the_socket_cannot_take_warns_how_many_were_lost() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let subscriber = Capture(Arc::clone(&events));
    // The proxy runs on a runtime of its own that outlives the client's.
    let proxy_rt = admin_runtime();
    let proxy = proxy_rt.block_on(Proxy::start(broker_addr()));
    let rt = runtime("current_thread");
    let published = rt.block_on(async {
        let conn = through(&proxy, |o| {
            o.heartbeat(Heartbeat::Disabled)
                .close_timeout(Duration::from_millis(300))
                .blocked_publish_timeout(Some(Duration::from_millis(300)));
        })
        .await;
        let ch = conn.open_channel().await.unwrap();
        proxy.freeze();
        publish_until_full(&ch, "nowhere").await
    });
    tracing::subscriber::with_default(subscriber, || drop(rt));
    let events = events.lock().unwrap();
    let warning = events
        .iter()
        .find(|e| e.contains("published messages were not written"))
        .unwrap_or_else(|| panic!("no warning about lost messages; events: {events:?}"));
    assert!(warning.starts_with("WARN"), "{warning}");
    let lost: u64 = field(warning, "messages").parse().unwrap();
    assert!(
        lost > 0 && lost <= published,
        "{lost} of {published}: {warning}"
    );
    drop(proxy);
}

fn runtime(flavor: &str) -> tokio::runtime::Runtime {
    match flavor {
        "current_thread" => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()
    .unwrap()
}

fn admin_runtime() -> tokio::runtime::Runtime {
    runtime("multi_thread")
}

/// The value of `name=` in a captured event line.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let start = line
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + name.len()
        + 1;
    line[start..].split([' ', ',']).next().unwrap()
}

/// A `tracing` subscriber that keeps every event as a line: `LEVEL message field=value ...`.
struct Capture(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        struct Line(String);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0.push_str(&format!(" {value:?}"));
                } else {
                    self.0.push_str(&format!(" {}={value:?}", field.name()));
                }
            }
        }
        let mut line = Line(event.metadata().level().to_string());
        event.record(&mut line);
        self.0.lock().unwrap().push(line.0);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn blocking_close_flushes_a_draining_backlog_and_reports_what_a_frozen_network_kept() {
    use lepus::blocking;
    let proxy_rt = admin_runtime();
    let up = Pace {
        chunk: 16 * 1024,
        gap: Duration::from_millis(4),
    };
    let slow = proxy_rt.block_on(Proxy::start_with(broker_addr(), Some(up), None));
    let frozen = proxy_rt.block_on(Proxy::start(broker_addr()));
    let (admin, admin_ch, queue) = proxy_rt.block_on(shared_queue("blocking-close"));
    let connect = |proxy: &Proxy| {
        let mut o = support::options();
        o.address(proxy.addr.ip().to_string(), proxy.addr.port())
            .heartbeat(Heartbeat::Disabled)
            .close_timeout(Duration::from_millis(300))
            .blocked_publish_timeout(Some(Duration::from_millis(300)));
        blocking::Connection::connect_with(o).unwrap()
    };
    let props = BasicProperties::default();

    // A backlog that drains for longer than the close timeout: all of it arrives.
    let conn = connect(&slow);
    let ch = conn.open_channel().unwrap();
    let n = 40_000u32;
    for i in 0..n {
        ch.basic_publish(
            "",
            &queue,
            BasicPublishOptions::default(),
            &props,
            format!("m{i:010}"),
        )
        .unwrap();
    }
    conn.close().unwrap();
    assert_eq!(conn.stats().messages_written, u64::from(n));
    let depth = proxy_rt.block_on(support::depth_eventually(
        &admin_ch,
        &queue,
        n,
        Duration::from_secs(10),
    ));
    assert_eq!(depth, n);

    // A network that stops: the close fails in time and counts what it could not send.
    let conn = connect(&frozen);
    let ch = conn.open_channel().unwrap();
    frozen.freeze();
    let mut published = 0u64;
    while ch
        .basic_publish("", &queue, BasicPublishOptions::default(), &props, "x")
        .is_ok()
    {
        published += 1;
    }
    let started = Instant::now();
    let err = conn.close().unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    let Error::Unsent { messages, .. } = err else {
        panic!("expected Error::Unsent, got {err}");
    };
    assert!(
        messages > 0 && messages <= published,
        "{messages} of {published}"
    );
    assert_eq!(conn.stats().messages_written + messages, published);

    proxy_rt.block_on(async {
        admin_ch
            .queue_delete(&queue, Default::default())
            .await
            .unwrap();
        admin.close().await.unwrap();
    });
}

#[tokio::test]
async fn a_late_close_ok_is_waited_for_with_the_socket_still_open() {
    use support::fake_broker::FakeBroker;
    // A broker still busy with what it was sent answers close-ok only after 1.5 s; the close
    // gives up after 300 ms, but must not close the socket (RabbitMQ drops what it has not
    // read yet when the client does).
    let (saw, seen) = tokio::sync::oneshot::channel();
    let saw = std::sync::Mutex::new(Some(saw));
    let fake = FakeBroker::start(move |mut peer| {
        let saw = saw.lock().unwrap().take();
        async move {
            peer.handshake().await;
            peer.expect(|m| matches!(m, lepus::lepus_wire::Method::ConnectionClose(_)))
                .await;
            let quiet = tokio::time::timeout(Duration::from_millis(1500), peer.recv()).await;
            peer.send(0, lepus::lepus_wire::method::connection::CloseOk)
                .await;
            // The client closes once it has read close-ok.
            let after = tokio::time::timeout(Duration::from_secs(5), peer.recv()).await;
            if let Some(saw) = saw {
                let _ = saw.send((quiet.is_err(), matches!(after, Ok(None))));
            }
        }
    })
    .await;
    let mut options = fake.options();
    options.close_timeout(Duration::from_millis(300));
    let conn = Connection::connect_with(options).await.unwrap();
    let started = Instant::now();
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
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(!conn.is_open());
    let (open_while_waiting, closed_after_close_ok) = seen.await.unwrap();
    assert!(open_while_waiting, "the socket was closed before close-ok");
    assert!(
        closed_after_close_ok,
        "the socket stayed open after close-ok"
    );
}
