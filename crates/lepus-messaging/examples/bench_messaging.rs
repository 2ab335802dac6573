//! The messaging layer in the shared peer benchmark harness (`shared/bench-peers`), written
//! the way a kombu program is: values serialized to JSON by a `Producer`, decoded from
//! `Message`s by a `Consumer`. It runs the harness's workloads and prints its JSON line with
//! `"client":"lepus-messaging"`, to be set beside the raw client (`bench_client`) and kombu.
//!
//! ```text
//! cargo build --release -p lepus-messaging --example bench_messaging
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f BODY_SIZE=64 bench_messaging <workload> <n>
//! ```
//!
//! Each message is a JSON object of `BODY_SIZE` bytes (64 by default; at least 25):
//! `{"id":10000001,"text":"abcdef…"}`, the text cut from the harness's pattern so that the
//! serialized object has exactly that size. The text is made once; each message borrows it.
//!
//! - `publish-noconfirm`: a producer without confirms publishes n objects (each publish
//!   awaited), then the queue depth is polled until it holds n.
//! - `publish-confirm`: a producer with confirms (the default) keeps 1000 pipelined publishes
//!   in flight, awaiting the oldest.
//! - `consume`: n objects pre-filled (untimed), then a consumer with prefetch 1000 receives,
//!   decodes into the struct and acks each message.
//! - `latency`: producer and consumer on one connection; n times: publish one object, receive
//!   and decode it, ack. Nearest-rank p50/p99/max in µs.
//! - `connections`: n sequential messaging connections, each with its default channel open.
//!
//! To add it to a copy of the harness, append this line (TAB-separated) to its `clients.tsv`:
//!
//! ```text
//! lepus-messaging	200000,latency=10000,connections=500	/path/to/target/release/examples/bench_messaging	lepus-messaging (Rust, kombu-style layer, JSON)
//! ```
// The clients.tsv line above must keep its TABs: they are the file's field separator.
#![allow(clippy::tabs_in_doc_comments)]

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[path = "../../lepus/examples/support/harness.rs"]
mod harness;
use harness::{body_size, options, raise_nofile, rss_kib};

use lepus_messaging::{Connection, Error, Producer, Queue};
use serde::{Deserialize, Serialize};

const CLIENT: &str = "lepus-messaging";
const CONFIRM_WINDOW: usize = 1000;
const PREFETCH: u16 = 1000;

/// The message as published: `{"id":10000001,"text":"…"}` (ids have eight digits).
#[derive(Debug, Serialize)]
struct Job<'a> {
    id: u64,
    text: &'a str,
}

/// The message as consumed.
#[derive(Debug, Deserialize)]
struct OwnedJob {
    id: u64,
    text: String,
}

/// The JSON object's fixed part: `{"id":10000001,"text":""}`.
const OVERHEAD: usize = 25;

/// The text of every message: the harness's pattern, cut to fit `BODY_SIZE`.
fn text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let len = body_size().saturating_sub(OVERHEAD);
        (0..len)
            .map(|k| char::from(b'a' + (k % 64 % 26) as u8))
            .collect()
    })
}

fn job(i: u64) -> Job<'static> {
    Job {
        id: 10_000_000 + i % 90_000_000,
        text: text(),
    }
}

async fn wait_for_count(conn: &Connection, queue: &str, n: u64) -> Result<(), Error> {
    let ch = conn.default_channel().await?;
    loop {
        let q = ch.queue_declare_passive(queue).await?;
        if u64::from(q.message_count) >= n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn publish_all(producer: &Producer, queue: &Queue, n: u64) -> Result<(), Error> {
    for i in 0..n {
        producer.publish(&job(i)).to_queue(queue).await?;
    }
    Ok(())
}

async fn connections(n: u64, url: &str) -> Result<(), Error> {
    raise_nofile(4 * n + 64);
    let options = options(url)?;
    let before = rss_kib();
    let w = harness::Window::start(CLIENT);
    let mut open = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let conn = Connection::new(lepus::Connection::connect_with(options.clone()).await?);
        conn.default_channel().await?;
        open.push(conn);
    }
    let after = rss_kib();
    let per = after.saturating_sub(before) as f64 / n.max(1) as f64;
    w.finish_with(
        "connections",
        n,
        "sequential connect + default channel each",
        &format!(
            ",\"rss_per_conn_kib\":{per:.1},\"rss_before_kib\":{before},\"rss_after_kib\":{after}"
        ),
    );
    for conn in open {
        conn.close().await?;
    }
    Ok(())
}

async fn run(workload: &str, n: u64, url: &str) -> Result<(), Error> {
    if workload == "connections" {
        return connections(n, url).await;
    }
    let conn = Connection::new(lepus::Connection::connect_with(options(url)?).await?);
    let queue = Queue::new(harness::queue_name(CLIENT, workload)).durable(false);
    conn.maybe_declare(queue.clone()).await?;
    let unconfirmed = conn.producer().confirms(false).build()?;
    match workload {
        "publish-noconfirm" => {
            let w = harness::Window::start(CLIENT);
            publish_all(&unconfirmed, &queue, n).await?;
            wait_for_count(&conn, queue.name(), n).await?;
            w.finish(
                workload,
                n,
                "JSON objects; no confirms; each publish awaited",
            );
        }
        "publish-confirm" => {
            let producer = conn.producer().build()?;
            let mut window = VecDeque::with_capacity(CONFIRM_WINDOW);
            let w = harness::Window::start(CLIENT);
            for i in 0..n {
                if window.len() == CONFIRM_WINDOW {
                    if let Some(confirm) = window.pop_front() {
                        confirm.await?;
                    }
                }
                window.push_back(
                    producer
                        .publish(&job(i))
                        .to_queue(&queue)
                        .pipelined()
                        .await?,
                );
            }
            for confirm in window {
                confirm.await?;
            }
            w.finish(
                workload,
                n,
                "JSON objects; 1000 pipelined publishes in flight",
            );
        }
        "consume" => {
            publish_all(&unconfirmed, &queue, n).await?;
            wait_for_count(&conn, queue.name(), n).await?;
            let w = harness::Window::start(CLIENT);
            let mut consumer = conn
                .consumer([queue.clone().no_declare(true)])
                .prefetch(PREFETCH)
                .consume()
                .await?;
            for _ in 0..n {
                let message = consumer
                    .recv()
                    .await
                    .ok_or(Error::Timeout(Duration::ZERO))??;
                let job: OwnedJob = message.decode()?;
                std::hint::black_box((job.id, job.text.len()));
                message.ack()?;
            }
            w.finish(
                workload,
                n,
                "prefetch 1000; decode each into a struct; single ack",
            );
            consumer.cancel().await?;
        }
        "latency" => {
            let mut consumer = conn
                .consumer([queue.clone().no_declare(true)])
                .prefetch(PREFETCH)
                .consume()
                .await?;
            let mut trips = Vec::with_capacity(n as usize);
            let w = harness::Window::start(CLIENT);
            for i in 0..n {
                let sent = Instant::now();
                unconfirmed.publish(&job(i)).to_queue(&queue).await?;
                let message = consumer
                    .recv()
                    .await
                    .ok_or(Error::Timeout(Duration::ZERO))??;
                let job: OwnedJob = message.decode()?;
                trips.push(sent.elapsed().as_micros() as u64);
                std::hint::black_box((job.id, job.text.len()));
                message.ack()?;
            }
            let extra = harness::latency_fields(&mut trips);
            w.finish_with(
                workload,
                n,
                "one JSON object in flight; decoded; single ack",
                &extra,
            );
            consumer.cancel().await?;
        }
        other => eprintln!("unknown workload {other}"),
    }
    queue
        .delete(&conn.default_channel().await?, false, false)
        .await?;
    eprintln!("{:?}", conn.client().stats());
    conn.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let Some((workload, n)) = harness::args("bench_messaging") else {
        return ExitCode::from(2);
    };
    match run(&workload, n, &harness::url()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_messaging: error: {e}");
            ExitCode::FAILURE
        }
    }
}
