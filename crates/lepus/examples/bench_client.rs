//! lepus in the shared peer benchmark harness (`shared/bench-peers`).
//!
//! ```text
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f bench_client <workload> <n>
//! ```
//!
//! Workloads, as the harness defines them: `publish-noconfirm` (publish n, then poll a passive
//! declare until the queue holds n), `publish-confirm` (at most 1000 unconfirmed), `consume`
//! (pre-filled queue, prefetch 1000, one ack per message), `latency` (n round trips of one
//! message through the broker: publish, wait for its delivery, ack) and `connections` (open n
//! connections with a channel each; connections per second and resident memory per
//! connection). Bodies are `BODY_SIZE` bytes (64 by default). `LEPUS_COALESCING=0` turns read
//! and write coalescing off, for comparison (`read-off`, `write-off`: one of them).
//! `LEPUS_TRACE=1` installs a `tracing` subscriber that records lepus's spans (formatted into
//! a sink), to measure what tracing costs when someone listens. Prints exactly one JSON line
//! on stdout; everything else goes to stderr.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[path = "support/harness.rs"]
mod harness;
use harness::{body, options, raise_nofile, rss_kib};

use lepus::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, BasicQosOptions, Channel,
    Connection, QueueDeclareOptions, QueueDeleteOptions,
};

const CLIENT: &str = "lepus";
const CONFIRM_WINDOW: usize = 1000;
const PREFETCH: u16 = 1000;

async fn publish_all(ch: &Channel, queue: &str, n: u64) {
    let body = body();
    let props = BasicProperties::default();
    for _ in 0..n {
        ch.basic_publish(
            "",
            queue,
            BasicPublishOptions::default(),
            &props,
            body.clone(),
        )
        .await
        .expect("publish");
    }
}

async fn wait_for_count(ch: &Channel, queue: &str, n: u64) {
    loop {
        let q = ch
            .queue_declare_passive(queue)
            .await
            .expect("passive declare");
        if u64::from(q.message_count) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Opens `n` connections with a channel each, in turn, and measures the time and memory.
async fn connections(n: u64, url: &str) -> Result<(), lepus::Error> {
    raise_nofile(4 * n + 64);
    let options = options(url)?;
    let before = rss_kib();
    let w = harness::Window::start(CLIENT);
    let mut open = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let conn = Connection::connect_with(options.clone()).await?;
        let ch = conn.open_channel().await?;
        open.push((conn, ch));
    }
    let after = rss_kib();
    let per = after.saturating_sub(before) as f64 / n.max(1) as f64;
    w.finish_with(
        "connections",
        n,
        "sequential connect + one channel each",
        &format!(
            ",\"rss_per_conn_kib\":{per:.1},\"rss_before_kib\":{before},\"rss_after_kib\":{after}"
        ),
    );
    for (conn, _) in open {
        conn.close().await?;
    }
    Ok(())
}

async fn run(workload: &str, n: u64, url: &str) -> Result<(), lepus::Error> {
    if workload == "connections" {
        return connections(n, url).await;
    }
    let conn = Connection::connect_with(options(url)?).await?;
    let ch = conn.open_channel().await?;
    let queue = harness::queue_name(CLIENT, workload);
    ch.queue_declare(&queue, QueueDeclareOptions::default())
        .await?;
    match workload {
        "publish-noconfirm" => {
            let w = harness::Window::start(CLIENT);
            publish_all(&ch, &queue, n).await;
            wait_for_count(&ch, &queue, n).await;
            w.finish(workload, n, "no-confirm; each basic_publish awaited");
        }
        "publish-confirm" => {
            ch.confirm_select().await?;
            let body = body();
            let props = BasicProperties::default();
            let mut window = VecDeque::with_capacity(CONFIRM_WINDOW);
            let w = harness::Window::start(CLIENT);
            for _ in 0..n {
                if window.len() == CONFIRM_WINDOW {
                    let confirm: lepus::PublisherConfirm = window.pop_front().expect("non-empty");
                    assert!(confirm.await?.is_ack(), "nacked");
                }
                window.push_back(
                    ch.basic_publish(
                        "",
                        &queue,
                        BasicPublishOptions::default(),
                        &props,
                        body.clone(),
                    )
                    .await?,
                );
            }
            for confirm in window {
                assert!(confirm.await?.is_ack(), "nacked");
            }
            w.finish(
                workload,
                n,
                "confirm window 1000 (await oldest PublisherConfirm)",
            );
        }
        "consume" => {
            publish_all(&ch, &queue, n).await;
            wait_for_count(&ch, &queue, n).await;
            ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
            let w = harness::Window::start(CLIENT);
            let mut consumer = ch
                .basic_consume(&queue, "", BasicConsumeOptions::default())
                .await?;
            let mut received = 0;
            while received < n {
                let delivery = consumer.recv().await.expect("stream ended")?;
                delivery.ack()?;
                received += 1;
            }
            w.finish(workload, n, "prefetch 1000; single ack per message");
            ch.basic_cancel(consumer.tag()).await?;
        }
        "latency" => {
            ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
            let mut consumer = ch
                .basic_consume(&queue, "", BasicConsumeOptions::default())
                .await?;
            let body = body();
            let props = BasicProperties::default();
            let mut trips = Vec::with_capacity(n as usize);
            let w = harness::Window::start(CLIENT);
            for _ in 0..n {
                let sent = Instant::now();
                ch.basic_publish(
                    "",
                    &queue,
                    BasicPublishOptions::default(),
                    &props,
                    body.clone(),
                )
                .await?;
                let delivery = consumer.recv().await.expect("stream ended")?;
                trips.push(sent.elapsed().as_micros() as u64);
                delivery.ack()?;
            }
            let extra = harness::latency_fields(&mut trips);
            w.finish_with(
                workload,
                n,
                "one message in flight; consumer on the same channel; single ack",
                &extra,
            );
            ch.basic_cancel(consumer.tag()).await?;
        }
        other => {
            eprintln!("unknown workload {other}");
        }
    }
    ch.queue_delete(&queue, QueueDeleteOptions::default())
        .await?;
    // How well lepus batched, for whoever looks at stderr.
    eprintln!("{:?}", conn.stats());
    conn.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    // LEPUS_TRACE=1: a subscriber that wants lepus's spans (formatted into a sink), to measure
    // what tracing costs when someone listens; unset, no subscriber, as in production without
    // one.
    if std::env::var("LEPUS_TRACE").is_ok_and(|v| v == "1") {
        use tracing_subscriber::prelude::*;
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.target() == lepus::telemetry::TARGET
            }));
        tracing_subscriber::registry().with(fmt).init();
    }
    let Some((workload, n)) = harness::args("bench_client") else {
        return ExitCode::from(2);
    };
    match run(&workload, n, &harness::url()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_client: error: {e}");
            ExitCode::FAILURE
        }
    }
}
