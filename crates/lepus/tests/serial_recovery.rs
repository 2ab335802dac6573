//! Recovery from what only the broker can do: an operator closing the connection, the
//! broker's application stopping and starting again, a password changed under a live
//! connection. Broker-wide, so `#[ignore]`d here and run one at a time by `scripts/test.sh`;
//! each test puts the broker back as it was, even when it fails.
//!
//! The zero-loss runs publish numbered messages with confirms, publish again every message
//! whose confirm was lost (`Confirmation::Uncertain`, or a retryable error), and count what a
//! consumer on the same connection receives by number: every confirmed message must arrive at
//! least once; duplicates are counted, not failures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lepus::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, Connection, ConnectionEvent, Error,
    QueueDeclareOptions, RecoveryPolicy,
};
use support::broker::{close_connection_named, rabbitmqctl, Stopped, TempUser};
use support::zero_loss::{options, zero_loss_run};
use tokio::sync::broadcast;

/// Events until `Recovered`, as short names.
async fn recovery_events(events: &mut broadcast::Receiver<ConnectionEvent>) -> Vec<&'static str> {
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .expect("no recovery within 60 s")
            .unwrap();
        seen.push(match event {
            ConnectionEvent::Disconnected { .. } => "disconnected",
            ConnectionEvent::Reconnecting { .. } => "reconnecting",
            ConnectionEvent::ConsumerRecovered { .. } => "consumer",
            ConnectionEvent::Recovered { .. } => "recovered",
            ConnectionEvent::RecoveryFailed { error } => panic!("recovery failed: {error}"),
            _ => "other",
        });
        if seen.last() == Some(&"recovered") {
            return seen;
        }
    }
}

fn durable_queue_name(prefix: &str) -> String {
    support::unique(prefix)
}

async fn declare_durable(conn: &Connection, name: &str) {
    let ch = conn.open_channel().await.unwrap();
    ch.queue_declare(
        name,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    ch.close().await.unwrap();
}

async fn delete_queue(name: &str) {
    let (conn, ch) = support::channel().await;
    let _ = ch.queue_delete(name, Default::default()).await;
    let _ = conn.close().await;
}

#[tokio::test]
#[ignore = "closes connections from the broker; run serially by scripts/test.sh"]
async fn an_operator_closing_the_connection_loses_no_confirmed_message() {
    let name = support::unique("recover-forced");
    let conn = Connection::connect_with(options(&name)).await.unwrap();
    let mut events = conn.events();
    let queue = durable_queue_name("recover-forced-q");
    declare_durable(&conn, &queue).await;
    let disrupt = async {
        close_connection_named(&name, "closed by the lepus recovery tests").await;
    };
    let run = zero_loss_run(&conn, &queue, 3000, disrupt).await;
    assert_eq!(run.missing(), Vec::<usize>::new(), "{run:?}");
    let order = recovery_events(&mut events).await;
    assert_eq!(order.first(), Some(&"disconnected"), "{order:?}");
    assert!(order.contains(&"consumer"), "{order:?}");
    assert_eq!(conn.stats().recoveries, 1);
    eprintln!(
        "close_connection: republished {}, duplicates {}",
        run.republished,
        run.duplicates()
    );
    conn.close().await.unwrap();
    delete_queue(&queue).await;
}

#[tokio::test]
#[ignore = "stops and starts the broker; run serially by scripts/test.sh"]
async fn a_broker_restart_loses_no_confirmed_persistent_message() {
    let name = support::unique("recover-restart");
    let conn = Connection::connect_with(options(&name)).await.unwrap();
    let mut events = conn.events();
    let queue = durable_queue_name("recover-restart-q");
    declare_durable(&conn, &queue).await;
    let started_again = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let stamp = Arc::clone(&started_again);
    let disrupt = async move {
        let stopped = tokio::task::spawn_blocking(Stopped::stop_app)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        tokio::task::spawn_blocking(move || stopped.start_app())
            .await
            .unwrap();
        *stamp.lock().unwrap() = Some(Instant::now());
    };
    let run = zero_loss_run(&conn, &queue, 3000, disrupt).await;
    assert_eq!(run.missing(), Vec::<usize>::new(), "{run:?}");
    let order = recovery_events(&mut events).await;
    assert_eq!(order.first(), Some(&"disconnected"), "{order:?}");
    assert!(order.contains(&"reconnecting"), "{order:?}");
    eprintln!(
        "restart: republished {}, duplicates {}, events {order:?}",
        run.republished,
        run.duplicates()
    );
    conn.close().await.unwrap();
    delete_queue(&queue).await;
}

#[tokio::test]
#[ignore = "adds a user and closes its connection from the broker; run serially"]
async fn a_refused_login_while_recovering_ends_the_connection_once() {
    let user = TempUser::add("lepus-test-refused", "first-password");
    let name = support::unique("recover-refused");
    let mut o = options(&name);
    let mut policy = RecoveryPolicy::new();
    policy.initial_delay(Duration::from_millis(50));
    o.credentials(&user.name, "first-password").recovery(policy);
    let conn = Connection::connect_with(o).await.unwrap();
    let mut events = conn.events();
    rabbitmqctl(&["change_password", &user.name, "second-password"]);
    close_connection_named(&name, "password changed").await;

    let mut attempts = 0;
    let error = loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("recovery neither succeeded nor gave up")
            .unwrap();
        match event {
            ConnectionEvent::Reconnecting { .. } => attempts += 1,
            ConnectionEvent::RecoveryFailed { error } => break error,
            ConnectionEvent::Recovered { .. } => panic!("recovered with a changed password"),
            _ => {}
        }
    };
    assert!(matches!(error, Error::AuthenticationFailed(_)), "{error}");
    assert_eq!(attempts, 1, "a refusal is not retried");
    let closed = conn.closed().await;
    assert!(matches!(closed, Error::AuthenticationFailed(_)), "{closed}");
    // Nothing more is attempted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, ConnectionEvent::Reconnecting { .. }),
            "{event:?}"
        );
    }
    drop(user);
}

#[test]
#[ignore = "closes connections from the broker; run serially by scripts/test.sh"]
fn a_blocking_drain_events_loop_goes_on_across_a_recovery() {
    use lepus::blocking;
    let name = support::unique("recover-blocking");
    let queue = support::unique("recover-blocking-q");
    let conn = blocking::Connection::connect_with(options(&name)).unwrap();
    let ch = conn.open_channel().unwrap();
    ch.queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    ch.basic_consume(&queue, "", BasicConsumeOptions::default(), move |_, d| {
        counter.fetch_add(1, Ordering::SeqCst);
        let _ = d.ack();
    })
    .unwrap();
    let publish = |body: &str| {
        ch.basic_publish(
            "",
            &queue,
            BasicPublishOptions::default(),
            &BasicProperties::default(),
            body.to_string(),
        )
        .unwrap();
    };
    // An ordinary drain_events loop, as a py-amqp user writes it: it only counts.
    let mut recovered = false;
    let mut drain_until = |want: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.load(Ordering::SeqCst) < want || (want > 1 && !recovered) {
            assert!(Instant::now() < deadline, "drain_events stalled");
            if let blocking::Drained::Events(events) =
                conn.drain_events(Some(Duration::from_millis(100))).unwrap()
            {
                recovered |= events.iter().any(|e| {
                    matches!(
                        e,
                        blocking::Event::Recovery(ConnectionEvent::Recovered { .. })
                    )
                });
            }
        }
    };
    publish("before");
    drain_until(1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(close_connection_named(
        &name,
        "closed by the lepus recovery tests",
    ));
    // Publishing waits for the recovery; the same consumer callback gets the message.
    publish("after");
    drain_until(2);
    ch.queue_delete(&queue, Default::default()).unwrap();
    conn.close().unwrap();
}

/// The moment of the first delivery on a link newer than the `recoveries`-th.
async fn first_delivery_after(
    conn: &Connection,
    consumer: &mut lepus::Consumer,
    recoveries: u64,
) -> Instant {
    loop {
        let d = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("no delivery within 60 s")
            .unwrap()
            .unwrap();
        let _ = d.ack();
        if conn.stats().recoveries > recoveries {
            return Instant::now();
        }
    }
}

/// How long a consumer goes without deliveries when its connection is closed by an operator,
/// and after the broker's application starts again: from the event to the first delivery on
/// the new link, with the default policy. Printed (run with `--nocapture`), and bounded.
#[tokio::test]
#[ignore = "closes connections and restarts the broker; run serially by scripts/test.sh"]
async fn time_to_the_first_delivery_after_a_loss() {
    let name = support::unique("recover-timing");
    let queue = durable_queue_name("recover-timing-q");
    let conn = Connection::connect_with(options(&name)).await.unwrap();
    declare_durable(&conn, &queue).await;
    let ch = conn.open_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(&queue, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    // A publisher of its own, one message every 5 ms, riding out the losses too.
    let publisher = Connection::connect(&support::url()).await.unwrap();
    let pch = publisher.open_channel().await.unwrap();
    let target = queue.clone();
    let publishing = tokio::spawn(async move {
        loop {
            let _ = pch
                .basic_publish(
                    "",
                    &target,
                    BasicPublishOptions::default(),
                    &BasicProperties::default(),
                    "tick",
                )
                .await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // From the moment lepus learns of the loss.
    let mut events = conn.events();
    let lost_at = async {
        loop {
            if let Ok(ConnectionEvent::Disconnected { .. }) = events.recv().await {
                return Instant::now();
            }
        }
    };
    let recoveries = conn.stats().recoveries;
    let (_, closed_at, delivered) = tokio::join!(
        close_connection_named(&name, "timing"),
        lost_at,
        first_delivery_after(&conn, &mut consumer, recoveries)
    );
    let after_close = delivered.duration_since(closed_at);

    let stopped = tokio::task::spawn_blocking(Stopped::stop_app)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let recoveries = conn.stats().recoveries;
    let (started_at, delivered) = tokio::join!(
        async {
            tokio::task::spawn_blocking(move || stopped.start_app())
                .await
                .unwrap();
            Instant::now()
        },
        first_delivery_after(&conn, &mut consumer, recoveries)
    );
    let after_start = delivered.saturating_duration_since(started_at);
    eprintln!(
        "first delivery {after_close:?} after close_connection; {after_start:?} after \
         start_app returned"
    );
    assert!(after_close < Duration::from_secs(5), "{after_close:?}");
    publishing.abort();
    drop(consumer);
    let _ = ch.queue_delete(&queue, Default::default()).await;
    conn.close().await.unwrap();
    let _ = publisher.close().await;
}
