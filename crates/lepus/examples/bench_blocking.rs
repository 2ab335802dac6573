//! `lepus::blocking` in the shared peer benchmark harness (`shared/bench-peers`), written the
//! way a program ported from py-amqp would be: one thread, blocking calls, a `basic_consume`
//! callback driven by `drain_events`. It runs the same workloads as `bench_client` (the async
//! client) and prints the same JSON fields, with `"client":"lepus-blocking"`.
//!
//! ```text
//! cargo build --release -p lepus --example bench_blocking
//! cargo run --release -p lepus --example bench_blocking -- publish-noconfirm 200000
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f BODY_SIZE=64 bench_blocking <workload> <n>
//! ```
//!
//! Workloads, as the harness's README defines them, and how each maps to the blocking API
//! (the py-amqp peer's call in brackets):
//!
//! - `publish-noconfirm`: `basic_publish` n times [`basic_publish`], then poll
//!   `queue_declare_passive` every ~1 ms until the queue holds n.
//! - `publish-confirm`: `confirm_select`, then a sliding window of 1000: the
//!   `PublisherConfirm` each `basic_publish` returns goes into a queue, and the oldest is
//!   waited for while 1000 are outstanding [py-amqp counts `channel.events['basic_ack']`
//!   callbacks and calls `drain_events` while the window is full].
//! - `consume`: pre-fill n messages, `basic_qos(1000)`, then `basic_consume` with a callback
//!   that calls `basic_ack(tag, false)` for each message, and `drain_events` until n were
//!   acked [the same].
//! - `latency`: a consumer on the same channel; n times: `basic_publish` one message,
//!   `drain_events` until the callback has seen it, `basic_ack` [the same]. Each round trip
//!   runs from just before the publish to the callback; nearest-rank p50/p99/max in µs.
//! - `connections`: n sequential `Connection::connect` + `open_channel` (each blocking
//!   connection starts its own `lepus-io` thread); connections per second and VmRSS growth
//!   per connection.
//!
//! Bodies are `BODY_SIZE` bytes (64 by default). `LEPUS_COALESCING=0` turns read and write
//! coalescing off (`read-off`, `write-off`: one of them), as in `bench_client`. Prints
//! exactly one JSON line on stdout; everything else goes to stderr. An error (including a
//! broker that goes quiet for 60 s mid-workload) exits 1, a bad command line 2.
//!
//! To add it to a copy of the harness, append this line (TAB-separated) to its `clients.tsv`:
//!
//! ```text
//! lepus-blocking	200000,latency=10000,connections=500	/path/to/target/release/examples/bench_blocking	lepus::blocking (Rust, synchronous API, py-amqp style)
//! ```
// The clients.tsv line above must keep its TABs: they are the file's field separator.
#![allow(clippy::tabs_in_doc_comments)]

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[path = "support/harness.rs"]
mod harness;
use harness::{body, body_size, options, raise_nofile, rss_kib};

use lepus::blocking::{Channel, Connection, Drained, Event};
use lepus::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};

const CLIENT: &str = "lepus-blocking";
const CONFIRM_WINDOW: usize = 1000;
const PREFETCH: u16 = 1000;
/// How long a wait for the broker may make no progress before the run fails, like the Rust
/// peers' 60 s limit on one connect (a hung run is worse than a failed one).
const QUIET_LIMIT: Duration = Duration::from_secs(60);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let Some((workload, n)) = harness::args("bench_blocking") else {
        return ExitCode::from(2);
    };
    match run(&workload, n, &harness::url()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_blocking: {workload}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(workload: &str, n: u64, url: &str) -> Result<(), BoxError> {
    if workload == "connections" {
        return connections(n, url);
    }
    let conn = Connection::connect_with(options(url)?)?;
    let ch = conn.open_channel()?;
    let queue = harness::queue_name(CLIENT, workload);
    ch.queue_declare(&queue, QueueDeclareOptions::default())?;
    let result = match workload {
        "publish-noconfirm" => publish_noconfirm(&ch, &queue, n),
        "publish-confirm" => publish_confirm(&ch, &queue, n),
        "consume" => consume(&conn, &ch, &queue, n),
        _ => latency(&conn, &ch, &queue, n),
    };
    // Delete the queue even when the workload failed, if the channel still works (a failed
    // run's leftovers are also removed by run.sh, by the `bench.lepus-blocking.` prefix).
    let deleted = ch.queue_delete(&queue, QueueDeleteOptions::default());
    // How well lepus batched, for whoever looks at stderr.
    eprintln!("{:?}", conn.stats());
    result?;
    deleted?;
    conn.close()?;
    Ok(())
}

fn publish_noconfirm(ch: &Channel, queue: &str, n: u64) -> Result<(), BoxError> {
    let w = harness::Window::start(CLIENT);
    publish_all(ch, queue, n)?;
    wait_for_count(ch, queue, n)?;
    w.finish(
        "publish-noconfirm",
        n,
        "no-confirm; blocking basic_publish per message",
    );
    Ok(())
}

fn publish_confirm(ch: &Channel, queue: &str, n: u64) -> Result<(), BoxError> {
    ch.confirm_select()?;
    let body = body();
    let props = BasicProperties::default();
    let mut window = VecDeque::with_capacity(CONFIRM_WINDOW);
    let w = harness::Window::start(CLIENT);
    for _ in 0..n {
        if window.len() == CONFIRM_WINDOW {
            wait_acked(window.pop_front())?;
        }
        window.push_back(publish(ch, queue, &props, &body)?);
    }
    while !window.is_empty() {
        wait_acked(window.pop_front())?;
    }
    w.finish(
        "publish-confirm",
        n,
        "confirm window 1000 (wait for the oldest PublisherConfirm)",
    );
    Ok(())
}

/// Waits for one confirm of the window; a nack fails the run.
fn wait_acked(confirm: Option<lepus::blocking::PublisherConfirm>) -> Result<(), BoxError> {
    let Some(confirm) = confirm else {
        return Ok(());
    };
    if confirm.wait_timeout(QUIET_LIMIT)?.is_ack() {
        Ok(())
    } else {
        Err("the broker nacked a message".into())
    }
}

fn consume(conn: &Connection, ch: &Channel, queue: &str, n: u64) -> Result<(), BoxError> {
    publish_all(ch, queue, n)?;
    wait_for_count(ch, queue, n)?;
    ch.basic_qos(PREFETCH, BasicQosOptions::default())?;
    let expected = body_size();
    // The callback must be `Send + 'static`: it reports each message's outcome over a channel.
    let (tx, rx) = mpsc::channel::<Result<(), String>>();
    let w = harness::Window::start(CLIENT);
    let tag = ch.basic_consume(
        queue,
        "",
        BasicConsumeOptions::default(),
        move |ch, delivery| {
            let outcome = if delivery.body.len() == expected {
                ch.basic_ack(delivery.delivery_tag, false)
                    .map_err(|e| format!("basic_ack: {e}"))
            } else {
                Err(format!("got a {}-byte body", delivery.body.len()))
            };
            let _ = tx.send(outcome);
        },
    )?;
    let mut acked = 0;
    drain_until(conn, || {
        for outcome in rx.try_iter() {
            outcome?;
            acked += 1;
        }
        Ok(acked >= n)
    })?;
    w.finish("consume", n, "prefetch 1000; single ack per message");
    ch.basic_cancel(&tag)?;
    Ok(())
}

fn latency(conn: &Connection, ch: &Channel, queue: &str, n: u64) -> Result<(), BoxError> {
    ch.basic_qos(PREFETCH, BasicQosOptions::default())?;
    // What the callback saw: when, the delivery tag, the body length.
    let (tx, rx) = mpsc::channel::<(Instant, u64, usize)>();
    let tag = ch.basic_consume(
        queue,
        "",
        BasicConsumeOptions::default(),
        move |_ch, delivery| {
            let _ = tx.send((Instant::now(), delivery.delivery_tag, delivery.body.len()));
        },
    )?;
    let body = body();
    let props = BasicProperties::default();
    let mut trips = Vec::with_capacity(usize::try_from(n).unwrap_or_default());
    let w = harness::Window::start(CLIENT);
    for _ in 0..n {
        let sent = Instant::now();
        publish(ch, queue, &props, &body)?;
        let mut seen = None;
        drain_until(conn, || {
            if seen.is_none() {
                seen = rx.try_recv().ok();
            }
            Ok(seen.is_some())
        })?;
        // `drain_until` returns only once the callback has reported the delivery.
        let Some((at, delivery_tag, len)) = seen else {
            return Err("no delivery".into());
        };
        if len != body.len() {
            return Err(format!("got a {len}-byte body").into());
        }
        trips.push(u64::try_from(at.duration_since(sent).as_micros()).unwrap_or(u64::MAX));
        ch.basic_ack(delivery_tag, false)?;
    }
    let extra = harness::latency_fields(&mut trips);
    w.finish_with(
        "latency",
        n,
        "one message in flight; consumer on the same channel; drain_events until the callback; \
         single ack",
        &extra,
    );
    ch.basic_cancel(&tag)?;
    Ok(())
}

/// Opens `n` connections with a channel each, in turn, and measures the time and memory.
fn connections(n: u64, url: &str) -> Result<(), BoxError> {
    raise_nofile(4 * n + 64);
    let options = options(url)?;
    let before = rss_kib();
    let w = harness::Window::start(CLIENT);
    let mut open = Vec::with_capacity(usize::try_from(n).unwrap_or_default());
    for _ in 0..n {
        let conn = Connection::connect_with(options.clone())?;
        let ch = conn.open_channel()?;
        open.push((conn, ch));
    }
    let after = rss_kib();
    let per = after.saturating_sub(before) as f64 / n as f64;
    w.finish_with(
        "connections",
        n,
        "sequential blocking connect + one channel each (one lepus-io thread per connection)",
        &format!(
            ",\"rss_per_conn_kib\":{per:.1},\"rss_before_kib\":{before},\"rss_after_kib\":{after}"
        ),
    );
    for (conn, ch) in open {
        ch.close()?;
        conn.close()?;
    }
    Ok(())
}

/// Calls `drain_events` until `done` says so. Fails when the broker cancels the consumer or
/// closes the channel (nothing more would come), or when nothing happens for `QUIET_LIMIT`.
fn drain_until(
    conn: &Connection,
    mut done: impl FnMut() -> Result<bool, BoxError>,
) -> Result<(), BoxError> {
    while !done()? {
        match conn.drain_events(Some(QUIET_LIMIT))? {
            Drained::TimedOut => {
                return Err(format!("no delivery for {} s", QUIET_LIMIT.as_secs()).into())
            }
            Drained::Events(events) => {
                for event in events {
                    if let Event::ConsumerCancelled { .. } | Event::ChannelClosed { .. } = event {
                        return Err(format!("{event:?}").into());
                    }
                }
            }
        }
    }
    Ok(())
}

fn publish_all(ch: &Channel, queue: &str, n: u64) -> Result<(), BoxError> {
    let body = body();
    let props = BasicProperties::default();
    for _ in 0..n {
        publish(ch, queue, &props, &body)?;
    }
    Ok(())
}

/// Polls a passive declare every ~1 ms until the queue holds `n` messages.
fn wait_for_count(ch: &Channel, queue: &str, n: u64) -> Result<(), BoxError> {
    let start = Instant::now();
    let mut last = 0;
    let mut progress = start;
    loop {
        let count = u64::from(ch.queue_declare_passive(queue)?.message_count);
        if count >= n {
            return Ok(());
        }
        if count != last {
            (last, progress) = (count, Instant::now());
        } else if progress.elapsed() > QUIET_LIMIT {
            return Err(format!("the queue stayed at {count} of {n} messages").into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One `basic_publish` of the harness's body to `queue` through the default exchange.
fn publish(
    ch: &Channel,
    queue: &str,
    props: &BasicProperties,
    body: &lepus::bytes::Bytes,
) -> Result<lepus::blocking::PublisherConfirm, lepus::Error> {
    ch.basic_publish(
        "",
        queue,
        BasicPublishOptions::default(),
        props,
        body.clone(),
    )
}
