//! RPC round trips through RabbitMQ: an `RpcServer` on a connection of its own answers
//! `{"echo": request}` to each `{"n": i}` request of an `RpcClient` (direct reply-to), in
//! this process. For each number of calls in flight (1 and 100 unless given), `n` calls are
//! timed and one JSON line is printed:
//!
//! ```text
//! {"client":"lepus-messaging","inflight":100,"n":10000,"requests_per_s":…,"lat_p50_us":…,"lat_p99_us":…,"lat_max_us":…}
//! ```
//!
//! The same fields as `kombu_peer.py rpc-bench` (kombu's `send_reply`/`collect_replies`), to
//! be set side by side:
//!
//! ```text
//! cargo run --release -p lepus-messaging --example bench_rpc -- 10000        # 1 and 100 in flight
//! cargo run --release -p lepus-messaging --example bench_rpc -- 10000 1 10 100
//! python crates/lepus-messaging/tests/interop/kombu_peer.py rpc-bench --url amqp://guest:guest@127.0.0.1:5672// --n 10000 --inflight 100
//! ```
//!
//! `AMQP_URL` names the broker (default: `memory://`, the in-process one). The server confirms its replies
//! before acknowledging each request (lepus's default); `CONFIRM_REPLIES=0` turns that off,
//! as kombu publishes without confirms. Ten untimed calls warm up first.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lepus_messaging::{Connection, Queue, RpcClient, RpcServer};
use serde::{Deserialize, Serialize};

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Request {
    n: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    echo: Request,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_rpc: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let n: u64 = match args.next() {
        Some(a) => a
            .parse()
            .map_err(|_| format!("n must be a number, not {a:?}"))?,
        None => 10_000,
    };
    let mut inflights: Vec<u64> = args
        .map(|a| {
            a.parse()
                .map_err(|_| format!("not a number of calls in flight: {a:?}"))
        })
        .collect::<Result<_, _>>()?;
    if inflights.is_empty() {
        inflights = vec![1, 100];
    }
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "memory://".to_string());
    let confirm_replies = std::env::var("CONFIRM_REPLIES").map_or(true, |v| v != "0");

    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let queue = Queue::new(format!("lepus-bench.rpc.{}.{nanos}", std::process::id()))
        .expires(Duration::from_secs(60));
    let server_conn = Connection::connect(&url).await?;
    server_conn.maybe_declare(queue.clone()).await?;
    let most = inflights.iter().copied().max().unwrap_or(1);
    let server = RpcServer::builder(&server_conn, queue.clone())
        .concurrency(usize::try_from(most)?)
        .confirm_replies(confirm_replies)
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        server
            .serve_until(
                |request: Request, _message| async move {
                    Ok::<_, std::convert::Infallible>(Reply { echo: request })
                },
                async move {
                    let _ = stopped.await;
                },
            )
            .await
    });

    let conn = Connection::connect(&url).await?;
    let client = RpcClient::new(&conn).await?;
    for i in 0..10 {
        let _: Reply = client.call(&queue, &Request { n: i }, TIMEOUT).await?;
    }
    for inflight in inflights {
        let line = bench(&client, &queue, n, inflight.max(1)).await?;
        println!("{line}");
    }

    let _ = stop.send(());
    serving.await??;
    conn.close().await?;
    server_conn.close().await?;
    Ok(())
}

/// `n` calls with `inflight` at once; the JSON line.
async fn bench(
    client: &RpcClient,
    queue: &Queue,
    n: u64,
    inflight: u64,
) -> Result<String, BoxError> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..inflight.min(n))
        .map(|_| {
            let (client, queue, next) = (client.clone(), queue.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                let mut trips = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, BoxError>(trips);
                    }
                    let sent = Instant::now();
                    let reply: Reply = client.call(&queue, &Request { n: i }, TIMEOUT).await?;
                    trips.push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
                    if reply.echo.n != i {
                        return Err(
                            format!("call {i} got the reply of call {}", reply.echo.n).into()
                        );
                    }
                }
            })
        })
        .collect();
    let mut trips = Vec::new();
    for worker in workers {
        trips.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    trips.sort_unstable();
    Ok(format!(
        "{{\"client\":\"lepus-messaging\",\"inflight\":{inflight},\"n\":{n},\"requests_per_s\":{:.1},\"lat_p50_us\":{},\"lat_p99_us\":{},\"lat_max_us\":{}}}",
        trips.len() as f64 / elapsed.as_secs_f64(),
        nearest_rank(&trips, 0.50),
        nearest_rank(&trips, 0.99),
        trips.last().copied().unwrap_or(0)
    ))
}

/// The `q`-quantile of sorted `values`, nearest rank.
fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied().unwrap_or(0)
}
