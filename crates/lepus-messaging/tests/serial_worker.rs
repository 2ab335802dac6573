//! The worker through broker-side disruptions: a connection closed by an operator
//! (`rabbitmqctl close_connection`) and a broker restart (`rabbitmqctl stop_app` /
//! `start_app`). They change broker-wide state, so they are `#[ignore]`d and run one at a time
//! by `scripts/test.sh`:
//!
//! ```text
//! cargo test -p lepus-messaging --test serial_worker -- --ignored --test-threads=1
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

#[path = "../../lepus/tests/support/broker.rs"]
mod broker;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lepus_messaging::{Message, Queue, Worker, WorkerEvent};
use support::{connect, unique};

/// Options with a recovery quick enough for a test, and `name` as the connection name.
fn options(name: &str) -> lepus::ConnectionOptions {
    let mut options = support::options();
    let mut policy = lepus::RecoveryPolicy::new();
    policy
        .initial_delay(Duration::from_millis(100))
        .max_delay(Duration::from_secs(1));
    options.recovery(policy).connection_name(name);
    options
}

/// Runs a worker over `n` messages of a durable queue (about 4 s of work) and calls
/// `disrupt` once a tenth of them were handled; every id must be handled at least once, with no
/// code of the test's to recover. Returns the events.
async fn survives<F, Fut>(prefix: &str, n: u32, disrupt: F) -> Vec<WorkerEvent>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let name = unique(prefix);
    // Durable, with persistent messages: they outlive a broker restart.
    let queue = Queue::new(unique(prefix)).expires(Duration::from_secs(120));
    let direct = connect().await;
    direct.maybe_declare(queue.clone()).await.unwrap();
    support::publish_numbered(&direct, &queue, n).await;
    direct.close().await.unwrap();

    let builder = Worker::connect_with(options(&name)).await.unwrap();
    let seen = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let s = Arc::clone(&seen);
    let consumer = builder.consumer([queue.clone()]);
    let worker = builder
        .concurrency(10)
        .handle(consumer, move |m: Message| {
            let seen = Arc::clone(&s);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let id = m
                    .properties()
                    .message_id
                    .as_ref()
                    .and_then(|id| id.as_str())
                    .unwrap_or_default()
                    .to_owned();
                // Idempotent: counts each id, whatever the number of deliveries.
                *seen.lock().unwrap().entry(id).or_default() += 1;
                Ok::<_, &str>(())
            }
        })
        .build()
        .unwrap();
    let stop = worker.shutdown_handle();
    let mut rx = worker.events();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    tokio::spawn(async move {
        while let Ok(e) = rx.recv().await {
            sink.lock().unwrap().push(e);
        }
    });
    let run = tokio::spawn(worker.run());

    let count = |seen: &Arc<Mutex<HashMap<String, u32>>>| seen.lock().unwrap().len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count(&seen) < (n / 10) as usize {
        assert!(tokio::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    disrupt(name).await;
    let after_disruption = count(&seen);
    assert!(
        after_disruption < n as usize,
        "the disruption came after the work ({after_disruption} of {n})"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count(&seen) < n as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} ids handled",
            count(&seen)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.shutdown();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let seen = seen.lock().unwrap().clone();
    let missing: Vec<u32> = (0..n)
        .filter(|i| !seen.contains_key(&i.to_string()))
        .collect();
    assert_eq!(missing, Vec::<u32>::new());
    let redelivered = seen.values().filter(|c| **c > 1).count();
    eprintln!(
        "{prefix}: {n} ids, {after_disruption} handled before the disruption ended, \
         {redelivered} handled more than once"
    );
    let direct = connect().await;
    queue
        .delete(&direct.default_channel().await.unwrap(), false, false)
        .await
        .unwrap();
    let events = events.lock().unwrap().clone();
    events
}

fn count(events: &[WorkerEvent], what: fn(&WorkerEvent) -> bool) -> usize {
    events.iter().filter(|e| what(e)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "closes a connection from the broker; run serially by scripts/test.sh"]
async fn the_worker_survives_an_operator_closing_its_connection() {
    let events = survives("worker-closed", 2000, |name| async move {
        broker::close_connection_named(&name, "closed by the worker test").await;
    })
    .await;
    assert_eq!(
        count(&events, |e| matches!(e, WorkerEvent::ConnectionLost { .. })),
        1
    );
    assert_eq!(
        count(&events, |e| matches!(
            e,
            WorkerEvent::ConnectionRevived { .. }
        )),
        1
    );
    // Ready at the start and again after the recovery.
    assert_eq!(
        count(&events, |e| matches!(e, WorkerEvent::ConsumeReady { .. })),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops and starts the broker; run serially by scripts/test.sh"]
async fn the_worker_survives_a_broker_restart() {
    let events = survives("worker-restart", 2000, |_| async {
        // Started again when dropped, also when the test fails.
        let stopped = tokio::task::spawn_blocking(broker::Stopped::stop_app)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        tokio::task::spawn_blocking(move || stopped.start_app())
            .await
            .unwrap();
    })
    .await;
    assert!(
        count(&events, |e| matches!(e, WorkerEvent::ConnectionLost { .. })) >= 1,
        "{events:?}"
    );
    assert!(
        count(&events, |e| matches!(
            e,
            WorkerEvent::ConnectionRevived { .. }
        )) >= 1,
        "{events:?}"
    );
}
