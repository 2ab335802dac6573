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
//! and write coalescing off, for comparison. Prints exactly one JSON line on stdout; everything
//! else goes to stderr.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lepus::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, BasicQosOptions, Channel,
    Connection, QueueDeclareOptions, QueueDeleteOptions,
};

const CONFIRM_WINDOW: usize = 1000;
const PREFETCH: u16 = 1000;

/// (user, sys) CPU seconds of the whole process, all threads.
fn cpu_times() -> (f64, f64) {
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_SELF is always valid.
    #[allow(unsafe_code)]
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

struct Window {
    t0: Instant,
    cpu0: (f64, f64),
}

impl Window {
    fn start() -> Self {
        Self {
            cpu0: cpu_times(),
            t0: Instant::now(),
        }
    }

    fn finish(self, workload: &str, n: u64, mode: &str) {
        self.finish_with(workload, n, mode, "");
    }

    /// Prints the JSON line, with `extra` fields (`,"name":value...`) before the mode.
    fn finish_with(self, workload: &str, n: u64, mode: &str, extra: &str) {
        let wall = self.t0.elapsed().as_secs_f64();
        let cpu1 = cpu_times();
        let (u, s) = (cpu1.0 - self.cpu0.0, cpu1.1 - self.cpu0.1);
        let body_size = if workload == "connections" {
            String::new()
        } else {
            format!(",\"body_size\":{}", body_size())
        };
        let coalescing = if coalescing_off() {
            "; coalescing off"
        } else {
            ""
        };
        println!(
            "{{\"client\":\"lepus\",\"workload\":\"{workload}\",\"n\":{n},\"wall_s\":{wall:.6},\
             \"msgs_per_s\":{:.1},\"cpu_user_s\":{u:.6},\"cpu_sys_s\":{s:.6}{body_size}{extra},\
             \"mode\":\"{mode}{coalescing}\"}}",
            n as f64 / wall
        );
    }
}

/// `BODY_SIZE`, 64 by default.
fn body_size() -> usize {
    std::env::var("BODY_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// `LEPUS_COALESCING=0`: read and write coalescing off.
fn coalescing_off() -> bool {
    std::env::var("LEPUS_COALESCING").is_ok_and(|v| v == "0")
}

/// The harness's body: the 64-byte pattern repeated and cut to `BODY_SIZE`.
fn body() -> Vec<u8> {
    (0..body_size()).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Resident memory of the process, in KiB (`VmRSS`).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Raises the soft limit of open files to `want` (at most the hard limit).
fn raise_nofile(want: u64) {
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    #[allow(unsafe_code)]
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The `q`-quantile of sorted `values`, nearest rank.
fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied().unwrap_or(0)
}

async fn publish_all(ch: &Channel, queue: &str, n: u64) {
    let body = bytes::Bytes::from(body());
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

fn options(url: &str) -> Result<lepus::ConnectionOptions, lepus::Error> {
    let mut o = lepus::ConnectionOptions::from_uri(url)?;
    if coalescing_off() {
        o.read_coalescing(Duration::ZERO)
            .write_coalescing(Duration::ZERO);
    }
    Ok(o)
}

/// Opens `n` connections with a channel each, in turn, and measures the time and memory.
async fn connections(n: u64, url: &str) -> Result<(), lepus::Error> {
    raise_nofile(4 * n + 64);
    let options = options(url)?;
    let before = rss_kib();
    let w = Window::start();
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
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let queue = format!("bench.lepus.{workload}.{}.{nanos}", std::process::id());
    ch.queue_declare(&queue, QueueDeclareOptions::default())
        .await?;
    match workload {
        "publish-noconfirm" => {
            let w = Window::start();
            publish_all(&ch, &queue, n).await;
            wait_for_count(&ch, &queue, n).await;
            w.finish(workload, n, "no-confirm; each basic_publish awaited");
        }
        "publish-confirm" => {
            ch.confirm_select().await?;
            let body = bytes::Bytes::from(body());
            let props = BasicProperties::default();
            let mut window = VecDeque::with_capacity(CONFIRM_WINDOW);
            let w = Window::start();
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
            let w = Window::start();
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
            let body = bytes::Bytes::from(body());
            let props = BasicProperties::default();
            let mut trips = Vec::with_capacity(n as usize);
            let w = Window::start();
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
            trips.sort_unstable();
            let extra = format!(
                ",\"lat_p50_us\":{},\"lat_p99_us\":{},\"lat_max_us\":{}",
                nearest_rank(&trips, 0.50),
                nearest_rank(&trips, 0.99),
                trips.last().copied().unwrap_or(0)
            );
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
    let args: Vec<String> = std::env::args().collect();
    let workloads = [
        "publish-noconfirm",
        "publish-confirm",
        "consume",
        "latency",
        "connections",
    ];
    let (Some(workload), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u64>().ok()))
    else {
        eprintln!(
            "usage: bench_client <{}> <n>   (env AMQP_URL)",
            workloads.join("|")
        );
        return ExitCode::from(2);
    };
    if !workloads.contains(&workload.as_str()) {
        eprintln!(
            "usage: bench_client <{}> <n>   (env AMQP_URL)",
            workloads.join("|")
        );
        return ExitCode::from(2);
    }
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string());
    match run(workload, n, &url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_client: error: {e}");
            ExitCode::FAILURE
        }
    }
}
