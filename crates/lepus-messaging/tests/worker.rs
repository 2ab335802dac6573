//! The worker against RabbitMQ: concurrency and prefetch, graceful shutdown, bounded
//! attempts (counted by the broker and by the worker), panics, a cut link, the lazily opened
//! producer connection, and the blocking worker on a thread pool.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lepus::ExchangeKind;
use lepus_messaging::{
    Connection, Exchange, HandlerErrorPolicy, HandlerOutcome, Message, Queue, QueueType,
    Settlement, Worker, WorkerBuilder, WorkerEvent,
};
use support::{connect, depth_eventually, scratch_queue, unique};
use tokio::sync::{broadcast, watch};

/// A worker builder on a connection of the test broker.
async fn builder() -> WorkerBuilder {
    Worker::builder(connect().await, support::options())
}

/// Waits (at most `secs` seconds) until `done` holds.
async fn eventually(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fanout dead-letter exchange with a queue bound to it; returns the exchange's name and
/// the queue.
async fn dead_letters(conn: &Connection) -> (String, Queue) {
    let dlx = Exchange::with_kind(unique("dlx"), ExchangeKind::Fanout).auto_delete(true);
    let dead = scratch_queue("dead").exchange(dlx.clone());
    conn.maybe_declare(dead.clone()).await.unwrap();
    (dlx.name().to_owned(), dead)
}

/// Collects every event of `rx` in the background.
fn collect(mut rx: broadcast::Receiver<WorkerEvent>) -> Arc<Mutex<Vec<WorkerEvent>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok(e) = rx.recv().await {
            sink.lock().unwrap().push(e);
        }
    });
    seen
}

/// The `Handled` events among `events`: (message id, attempt, outcome, settlement).
fn handled(events: &[WorkerEvent]) -> Vec<(String, u32, HandlerOutcome, Settlement)> {
    events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::Handled {
                message_id,
                attempt,
                outcome,
                settlement,
                ..
            } => Some((
                message_id.clone().unwrap_or_default(),
                *attempt,
                outcome.clone(),
                settlement.clone(),
            )),
            _ => None,
        })
        .collect()
}

fn id_of(message: &Message) -> String {
    message
        .properties()
        .message_id
        .as_ref()
        .and_then(|id| id.as_str())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn n_handlers_run_at_once_and_the_prefetch_follows() {
    let builder = builder().await;
    let conn = builder.connection().clone();
    let queue = scratch_queue("concurrent");
    conn.maybe_declare(queue.clone()).await.unwrap();
    support::publish_numbered(&conn, &queue, 10).await;

    let barrier = Arc::new(tokio::sync::Barrier::new(5));
    let (open, gate) = watch::channel(false);
    let started = Arc::new(AtomicUsize::new(0));
    let (b, s) = (Arc::clone(&barrier), Arc::clone(&started));
    let consumer = builder.consumer([queue.clone()]);
    let worker = builder
        .concurrency(5)
        .handle(consumer, move |_m: Message| {
            let (barrier, started, mut gate) = (Arc::clone(&b), Arc::clone(&s), gate.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                // Five at once pass the barrier; handlers one after another would time out.
                tokio::time::timeout(Duration::from_secs(5), barrier.wait())
                    .await
                    .map_err(|_| "the five handlers did not run at once")?;
                let _ = gate.wait_for(|open| *open).await;
                Ok::<_, &str>(())
            }
        })
        .build()
        .unwrap();
    let stop = worker.shutdown_handle();
    let events = collect(worker.events());
    let run = tokio::spawn(worker.run());

    eventually("five handlers", 5, || started.load(Ordering::SeqCst) == 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No sixth handler, and the broker holds back the other five: prefetch 5.
    assert_eq!(started.load(Ordering::SeqCst), 5);
    let ch = connect().await.default_channel().await.unwrap();
    assert_eq!(depth_eventually(&ch, queue.name(), 5).await, 5);

    open.send_replace(true);
    eventually("ten handled", 10, || {
        handled(&events.lock().unwrap()).len() == 10
    })
    .await;
    stop.shutdown();
    run.await.unwrap().unwrap();
    let handled = handled(&events.lock().unwrap());
    assert!(
        handled
            .iter()
            .all(|(_, _, o, s)| *o == HandlerOutcome::Succeeded && *s == Settlement::Acked),
        "{handled:?}"
    );
    assert_eq!(depth_eventually(&ch, queue.name(), 0).await, 0);
    assert!(!conn.client().is_open(), "the worker closed its connection");
}

#[tokio::test]
async fn a_graceful_stop_settles_the_handlers_in_progress_and_leaves_the_rest() {
    let builder = builder().await;
    let conn = builder.connection().clone();
    let queue = scratch_queue("graceful");
    conn.maybe_declare(queue.clone()).await.unwrap();
    support::publish_numbered(&conn, &queue, 30).await;

    let (open, gate) = watch::channel(false);
    let started = Arc::new(Mutex::new(HashSet::new()));
    let finished = Arc::new(Mutex::new(HashSet::new()));
    let (s, f) = (Arc::clone(&started), Arc::clone(&finished));
    let consumer = builder.consumer([queue.clone()]);
    let worker = builder
        .concurrency(10)
        .handle(consumer, move |m: Message| {
            let (started, finished, mut gate) = (Arc::clone(&s), Arc::clone(&f), gate.clone());
            async move {
                started.lock().unwrap().insert(id_of(&m));
                let _ = gate.wait_for(|open| *open).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                finished.lock().unwrap().insert(id_of(&m));
                Ok::<_, &str>(())
            }
        })
        .build()
        .unwrap();
    let stop = worker.shutdown_handle();
    let mut events = worker.events();
    let run = tokio::spawn(worker.run());

    eventually("ten handlers", 5, || started.lock().unwrap().len() == 10).await;
    stop.shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!run.is_finished(), "the worker waits for its handlers");
    // Nothing was settled before its handler finished.
    let mut before = Vec::new();
    while let Ok(e) = events.try_recv() {
        before.push(e);
    }
    assert!(
        before
            .iter()
            .all(|e| !matches!(e, WorkerEvent::Handled { .. })),
        "{before:?}"
    );
    assert!(
        before
            .iter()
            .any(|e| matches!(e, WorkerEvent::Stopping { in_progress: 10 })),
        "{before:?}"
    );

    open.send_replace(true);
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut after = Vec::new();
    while let Ok(e) = events.try_recv() {
        after.push(e);
    }
    let handled = handled(&after);
    let acked: Vec<&String> = handled
        .iter()
        .filter(|(_, _, _, s)| *s == Settlement::Acked)
        .map(|(id, ..)| id)
        .collect();
    assert_eq!(acked.len(), 10, "{handled:?}");
    assert_eq!(handled.len(), 10, "each once: {handled:?}");
    let started = started.lock().unwrap().clone();
    let finished = finished.lock().unwrap().clone();
    assert_eq!(
        acked.iter().map(|id| (*id).clone()).collect::<HashSet<_>>(),
        finished
    );
    assert_eq!(started, finished);
    assert!(
        matches!(after.last(), Some(WorkerEvent::ConsumeEnd { abandoned: 0 })),
        "{after:?}"
    );
    assert!(!conn.client().is_open(), "the worker closed its connection");

    // The acks reached the broker before the close; the twenty others wait in the queue.
    let direct = connect().await;
    let ch = direct.default_channel().await.unwrap();
    assert_eq!(depth_eventually(&ch, queue.name(), 20).await, 20);
    let mut rest = HashSet::new();
    while let Some(m) = direct
        .get(&queue, true, lepus_messaging::Accept::default())
        .await
        .unwrap()
    {
        rest.insert(id_of(&m));
    }
    let all: HashSet<String> = (0..30).map(|i| i.to_string()).collect();
    assert_eq!(rest, &all - &started);
}

#[tokio::test]
async fn a_handler_past_the_deadline_is_abandoned_and_its_message_requeued() {
    let builder = builder().await;
    let conn = builder.connection().clone();
    let queue = scratch_queue("deadline");
    conn.maybe_declare(queue.clone()).await.unwrap();
    support::publish_numbered(&conn, &queue, 3).await;

    let started = Arc::new(AtomicUsize::new(0));
    let s = Arc::clone(&started);
    let consumer = builder.consumer([queue.clone()]);
    let worker = builder
        .concurrency(3)
        .shutdown_timeout(Duration::from_millis(200))
        .keep_connection(true)
        .handle(consumer, move |_m: Message| {
            let started = Arc::clone(&s);
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, &str>(())
            }
        })
        .build()
        .unwrap();
    let stop = worker.shutdown_handle();
    let events = collect(worker.events());
    let run = tokio::spawn(worker.run());
    eventually("three handlers", 5, || started.load(Ordering::SeqCst) == 3).await;
    stop.shutdown();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    eventually("the end", 5, || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, WorkerEvent::ConsumeEnd { abandoned: 3 }))
    })
    .await;
    let handled = handled(&events.lock().unwrap());
    assert_eq!(handled.len(), 3);
    assert!(handled
        .iter()
        .all(|(_, _, o, s)| *o == HandlerOutcome::Abandoned && *s == Settlement::Requeued));
    // The connection was kept; the three messages are back in the queue.
    assert!(conn.client().is_open());
    let ch = conn.default_channel().await.unwrap();
    assert_eq!(depth_eventually(&ch, queue.name(), 3).await, 3);
    conn.close().await.unwrap();
}

/// Runs a worker that always fails with `Requeue` and at most 3 attempts over `queue`,
/// until `dead` holds `expect_dead` messages; returns the handler's calls per message id (or
/// body, without an id) and the events.
async fn always_failing(
    queue: Queue,
    dead: &Queue,
    publish: impl FnOnce(Connection) -> futures_util::future::BoxFuture<'static, ()>,
    expect_dead: u32,
) -> (HashMap<String, u32>, Vec<WorkerEvent>) {
    let builder = builder().await;
    let conn = builder.connection().clone();
    let calls = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let c = Arc::clone(&calls);
    let consumer = builder.consumer([queue.clone()]);
    let worker = builder
        .on_error(HandlerErrorPolicy::Requeue)
        .max_attempts(3)
        .handle(consumer, move |m: Message| {
            let calls = Arc::clone(&c);
            async move {
                let id = m
                    .properties()
                    .message_id
                    .as_ref()
                    .and_then(|id| id.as_str())
                    .map_or_else(
                        || String::from_utf8_lossy(m.body()).into_owned(),
                        str::to_owned,
                    );
                *calls.lock().unwrap().entry(id).or_default() += 1;
                Err::<(), _>("always fails")
            }
        })
        .build()
        .unwrap();
    let stop = worker.shutdown_handle();
    let events = collect(worker.events());
    let run = tokio::spawn(worker.run());
    publish(conn.clone()).await;
    let ch = conn.default_channel().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ch
        .queue_declare_passive(dead.name())
        .await
        .unwrap()
        .message_count
        < expect_dead
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.shutdown();
    run.await.unwrap().unwrap();
    let calls = calls.lock().unwrap().clone();
    let events = events.lock().unwrap().clone();
    (calls, events)
}

#[tokio::test]
async fn the_worker_counts_attempts_by_message_id_or_body_and_dead_letters_after_the_last() {
    let conn = connect().await;
    let (dlx, dead) = dead_letters(&conn).await;
    let queue = scratch_queue("attempts").dead_letter_exchange(dlx);
    conn.maybe_declare(queue.clone()).await.unwrap();
    let q = queue.clone();
    let (calls, events) = always_failing(
        queue,
        &dead,
        move |conn| {
            Box::pin(async move {
                let p = conn.producer().build().unwrap();
                p.publish_text("with an id")
                    .to_queue(&q)
                    .message_id("m-1")
                    .await
                    .unwrap();
                p.publish_text("no id").to_queue(&q).await.unwrap();
            })
        },
        2,
    )
    .await;
    assert_eq!(calls.get("m-1"), Some(&3), "{calls:?}");
    assert_eq!(calls.get("no id"), Some(&3), "{calls:?}");
    let handled = handled(&events);
    let attempts = |id: &str| -> Vec<(u32, Settlement)> {
        handled
            .iter()
            .filter(|(i, ..)| i == id)
            .map(|(_, a, _, s)| (*a, s.clone()))
            .collect()
    };
    assert_eq!(
        attempts("m-1"),
        vec![
            (1, Settlement::Requeued),
            (2, Settlement::Requeued),
            (3, Settlement::GaveUp { attempts: 3 })
        ]
    );
    // Without an id the body is the key.
    assert_eq!(attempts("").len(), 3);
    let ch = conn.default_channel().await.unwrap();
    assert_eq!(depth_eventually(&ch, dead.name(), 2).await, 2);
}

/// The broker's count outlives the worker: a second worker goes on from the first one's
/// attempts (the worker's own count would start again at 1 and allow three more).
#[tokio::test]
async fn on_a_quorum_queue_the_broker_counts_the_attempts() {
    let conn = connect().await;
    let (dlx, dead) = dead_letters(&conn).await;
    let queue = Queue::new(unique("quorum-attempts"))
        .queue_type(QueueType::Quorum)
        .expires(Duration::from_secs(60))
        .dead_letter_exchange(dlx);
    conn.maybe_declare(queue.clone()).await.unwrap();
    conn.producer()
        .build()
        .unwrap()
        .publish_text("same")
        .to_queue(&queue)
        .await
        .unwrap();

    // A first worker fails once and stops.
    let first = builder().await;
    let stop = first.shutdown_handle();
    let consumer = first.consumer([queue.clone()]);
    let first = first
        .on_error(HandlerErrorPolicy::Requeue)
        .max_attempts(3)
        .handle(consumer, move |_m: Message| {
            stop.shutdown();
            async { Err::<(), _>("fails once") }
        })
        .build()
        .unwrap();
    let first_events = collect(first.events());
    tokio::time::timeout(Duration::from_secs(10), first.run())
        .await
        .unwrap()
        .unwrap();
    let first_handled = handled(&first_events.lock().unwrap());
    assert_eq!(first_handled.len(), 1, "{first_handled:?}");
    assert_eq!(first_handled[0].3, Settlement::Requeued);

    // A second one sees the broker's count: attempt 2 (or 3, when the first worker's channel
    // returned the message once more as it closed), and gives up at 3.
    let (calls, events) = always_failing(queue.clone(), &dead, |_| Box::pin(async {}), 1).await;
    let handled = handled(&events);
    let attempts: Vec<u32> = handled.iter().map(|(_, a, ..)| *a).collect();
    assert!(
        matches!(attempts.as_slice(), [2, 3] | [3]),
        "attempts {attempts:?}"
    );
    assert_eq!(calls.get("same").copied(), Some(attempts.len() as u32));
    assert_eq!(
        handled.last().map(|h| h.3.clone()),
        Some(Settlement::GaveUp { attempts: 3 })
    );
    let ch = conn.default_channel().await.unwrap();
    assert_eq!(depth_eventually(&ch, dead.name(), 1).await, 1);
    queue.delete(&ch, false, false).await.unwrap();
}

#[tokio::test]
async fn a_panicking_handler_is_reported_its_message_rejected_and_the_worker_goes_on() {
    let builder = builder().await;
    let conn = builder.connection().clone();
    let (dlx, dead) = dead_letters(&conn).await;
    let queue = scratch_queue("panics").dead_letter_exchange(dlx);
    conn.maybe_declare(queue.clone()).await.unwrap();
    let consumer = builder.consumer([queue.clone()]);
    let worker = builder
        .concurrency(2)
        .handle_typed(consumer, |word: String, _m| async move {
            if word == "boom" {
                panic!("the handler blew up");
            }
            Ok::<_, &str>(())
        })
        .build()
        .unwrap();
    let stop = worker.shutdown_handle();
    let events = collect(worker.events());
    let run = tokio::spawn(worker.run());
    let p = conn.producer().build().unwrap();
    for (id, word) in [("1", "fine"), ("2", "boom"), ("3", "fine")] {
        p.publish(&word)
            .to_queue(&queue)
            .message_id(id)
            .await
            .unwrap();
    }
    eventually("three handled", 10, || {
        handled(&events.lock().unwrap()).len() == 3
    })
    .await;
    // The worker goes on after the panic.
    p.publish(&"after")
        .to_queue(&queue)
        .message_id("4")
        .await
        .unwrap();
    eventually("four handled", 10, || {
        handled(&events.lock().unwrap()).len() == 4
    })
    .await;
    stop.shutdown();
    run.await.unwrap().unwrap();

    let mut handled = handled(&events.lock().unwrap());
    handled.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        handled[1],
        (
            "2".to_owned(),
            1,
            HandlerOutcome::Panicked("the handler blew up".to_owned()),
            Settlement::Rejected
        )
    );
    for i in [0, 2, 3] {
        assert_eq!(handled[i].3, Settlement::Acked, "{handled:?}");
    }
    let ch = connect().await.default_channel().await.unwrap();
    assert_eq!(depth_eventually(&ch, dead.name(), 1).await, 1);
    assert_eq!(depth_eventually(&ch, queue.name(), 0).await, 0);
}

#[tokio::test]
async fn an_undecodable_message_is_settled_by_the_decode_policy_without_the_handler() {
    let builder = builder().await;
    let conn = builder.connection().clone();
    let (dlx, dead) = dead_letters(&conn).await;
    let queue = scratch_queue("undecodable").dead_letter_exchange(dlx);
    conn.maybe_declare(queue.clone()).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let consumer = builder.consumer([queue.clone()]);
    let worker = builder
        .handle_typed(consumer, move |_n: u32, _m| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, &str>(()) }
        })
        .build()
        .unwrap();
    let stop = worker.shutdown_handle();
    let events = collect(worker.events());
    let run = tokio::spawn(worker.run());
    let p = conn.producer().build().unwrap();
    p.publish(&"not a number").to_queue(&queue).await.unwrap();
    p.publish(&7u32).to_queue(&queue).await.unwrap();
    eventually("two handled", 10, || {
        handled(&events.lock().unwrap()).len() == 2
    })
    .await;
    stop.shutdown();
    run.await.unwrap().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let handled = handled(&events.lock().unwrap());
    assert!(
        matches!(
            &handled[0],
            (_, 1, HandlerOutcome::Undecodable(_), Settlement::Already(_))
        ),
        "{handled:?}"
    );
    let ch = connect().await.default_channel().await.unwrap();
    assert_eq!(depth_eventually(&ch, dead.name(), 1).await, 1);
}

/// 2,000 messages through a link cut twice: each is handled at least once and the worker
/// needs no code of ours to recover.
#[tokio::test]
async fn the_worker_survives_a_cut_link_without_losing_a_message() {
    use support::proxy::{broker_addr, through, Proxy};
    let proxy = Proxy::start(broker_addr()).await;
    let client = through(&proxy, |o| {
        let mut policy = lepus::RecoveryPolicy::new();
        policy
            .initial_delay(Duration::from_millis(50))
            .max_delay(Duration::from_millis(500));
        o.recovery(policy);
    })
    .await;
    let direct = connect().await;
    let queue = scratch_queue("worker-cut");
    direct.maybe_declare(queue.clone()).await.unwrap();
    let n = 2000u32;
    support::publish_numbered(&direct, &queue, n).await;

    let builder = Worker::builder(Connection::new(client), support::options());
    let seen = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let s = Arc::clone(&seen);
    let consumer = builder.consumer([queue.clone()]);
    let worker = builder
        .concurrency(20)
        .handle(consumer, move |m: Message| {
            let seen = Arc::clone(&s);
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                // Idempotent: counts each id, whatever the number of deliveries.
                *seen.lock().unwrap().entry(id_of(&m)).or_default() += 1;
                Ok::<_, &str>(())
            }
        })
        .build()
        .unwrap();
    let stop = worker.shutdown_handle();
    let events = collect(worker.events());
    let run = tokio::spawn(worker.run());

    for at in [500, 1200] {
        eventually("progress", 30, || seen.lock().unwrap().len() >= at).await;
        proxy.cut();
    }
    eventually("every id", 60, || seen.lock().unwrap().len() == n as usize).await;
    stop.shutdown();
    run.await.unwrap().unwrap();

    let seen = seen.lock().unwrap().clone();
    let missing: Vec<u32> = (0..n)
        .filter(|i| !seen.contains_key(&i.to_string()))
        .collect();
    assert_eq!(missing, Vec::<u32>::new());
    let redelivered = seen.values().filter(|c| **c > 1).count();
    let events = events.lock().unwrap().clone();
    let lost = events
        .iter()
        .filter(|e| matches!(e, WorkerEvent::ConnectionLost { .. }))
        .count();
    let revived = events
        .iter()
        .filter(|e| matches!(e, WorkerEvent::ConnectionRevived { .. }))
        .count();
    let unsettled = handled(&events)
        .iter()
        .filter(|(.., s)| matches!(s, Settlement::Lost(_)))
        .count();
    eprintln!(
        "cut link: {n} ids, {redelivered} handled more than once, {unsettled} acks lost with \
         the link, {lost} losses, {revived} recoveries"
    );
    assert_eq!((lost, revived), (2, 2), "{events:?}");
}

#[tokio::test]
async fn handlers_publish_through_a_producer_connection_opened_on_first_use() {
    let builder = builder().await;
    let conn = builder.connection().clone();
    let requests = scratch_queue("requests");
    let replies = scratch_queue("replies");
    conn.maybe_declare(requests.clone()).await.unwrap();
    conn.maybe_declare(replies.clone()).await.unwrap();
    let producer = builder.producer();
    let p = producer.clone();
    let r = replies.clone();
    let consumer = builder.consumer([requests.clone()]);
    let worker = builder
        .handle_typed(consumer, move |n: u32, _m| {
            let (producer, replies) = (p.clone(), r.clone());
            async move {
                producer
                    .producer()
                    .await?
                    .publish(&(n * 2))
                    .to_queue(&replies)
                    .await
            }
        })
        .build()
        .unwrap();
    let stop = worker.shutdown_handle();
    let run = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!producer.is_connected(), "opened on first use only");

    conn.producer()
        .build()
        .unwrap()
        .publish(&21u32)
        .to_queue(&requests)
        .await
        .unwrap();
    let mut replies_consumer = connect().await.consumer([replies]).consume().await.unwrap();
    let reply: u32 = support::next(&mut replies_consumer).await.decode().unwrap();
    assert_eq!(reply, 42);
    assert!(producer.is_connected());
    let producer_conn = producer.connection().await.unwrap();
    assert!(producer_conn.client().is_open());

    stop.shutdown();
    run.await.unwrap().unwrap();
    // Closed with the worker, and not opened again.
    assert!(!producer_conn.client().is_open());
    assert!(producer.producer().await.is_err());
}

#[test]
fn the_blocking_worker_runs_handlers_on_a_thread_pool() {
    use lepus_messaging::blocking;
    let conn = blocking::Connection::connect(&support::url()).unwrap();
    let queue = scratch_queue("blocking-worker");
    let replies = scratch_queue("blocking-replies");
    conn.maybe_declare(queue.clone()).unwrap();
    conn.maybe_declare(replies.clone()).unwrap();
    let builder = blocking::Worker::builder(conn.clone(), support::options());
    let producer = builder.producer();
    let started = Arc::new(AtomicUsize::new(0));
    let (s, r) = (Arc::clone(&started), replies.clone());
    let threads = Arc::new(Mutex::new(HashSet::new()));
    let t = Arc::clone(&threads);
    let consumer = builder.consumer([queue.clone()]);
    let worker = builder
        .concurrency(4)
        .handle_typed(consumer, move |n: u32, _m: Message| {
            t.lock()
                .unwrap()
                .insert(std::thread::current().name().map(str::to_owned));
            let before = s.fetch_add(1, Ordering::SeqCst);
            // The first four wait for each other: they run on four threads at once.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while before < 4 && s.load(Ordering::SeqCst) < 4 {
                if std::time::Instant::now() > deadline {
                    return Err("the handlers did not run at once".to_owned());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            match n {
                13 => Err("unlucky".to_owned()),
                99 => panic!("ninety-nine"),
                7 => producer
                    .producer()
                    .and_then(|p| p.publish(&"seven").to_queue(&r).send())
                    .map_err(|e| e.to_string()),
                _ => Ok(()),
            }
        })
        .build()
        .unwrap();
    let stop = worker.shutdown_handle();
    let mut events = worker.events();
    let runner = std::thread::spawn(move || worker.run());

    let p = conn.producer().build().unwrap();
    for n in [1u32, 2, 3, 4, 7, 13, 99, 5] {
        p.publish(&n).to_queue(&queue).send().unwrap();
    }
    let mut outcomes = Vec::new();
    while outcomes.len() < 8 {
        match events.recv().unwrap() {
            WorkerEvent::Handled {
                outcome,
                settlement,
                ..
            } => outcomes.push((outcome, settlement)),
            WorkerEvent::ConsumeReady { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    stop.shutdown();
    runner.join().unwrap().unwrap();
    assert_eq!(
        outcomes
            .iter()
            .filter(|(o, s)| *o == HandlerOutcome::Succeeded && *s == Settlement::Acked)
            .count(),
        6,
        "{outcomes:?}"
    );
    assert!(outcomes.contains(&(
        HandlerOutcome::Failed("unlucky".to_owned()),
        Settlement::Rejected
    )));
    assert!(outcomes.contains(&(
        HandlerOutcome::Panicked("ninety-nine".to_owned()),
        Settlement::Rejected
    )));
    let threads = threads.lock().unwrap().clone();
    assert_eq!(threads.len(), 4, "{threads:?}");
    assert!(threads
        .iter()
        .all(|t| t.as_deref().is_some_and(|t| t.starts_with("lepus-worker-"))));
    assert!(!conn.client().is_open(), "the worker closed its connection");
    let direct = blocking::Connection::connect(&support::url()).unwrap();
    let reply = direct
        .get(&replies, true, lepus_messaging::Accept::default())
        .unwrap()
        .expect("the reply published by the handler");
    assert_eq!(reply.decode::<String>().unwrap(), "seven");
}
