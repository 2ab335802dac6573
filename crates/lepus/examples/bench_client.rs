//! lepus in the shared peer benchmark harness (`shared/bench-peers`).
//!
//! ```text
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f bench_client <workload> <n>
//! ```
//!
//! Workloads, as the harness defines them: `publish-noconfirm` (publish n, then poll a passive
//! declare until the queue holds n), `publish-confirm` (at most 1000 unconfirmed), `consume`
//! (pre-filled queue, prefetch 1000, one ack per message). Prints exactly one JSON line on
//! stdout; everything else goes to stderr.
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
        let wall = self.t0.elapsed().as_secs_f64();
        let cpu1 = cpu_times();
        let (u, s) = (cpu1.0 - self.cpu0.0, cpu1.1 - self.cpu0.1);
        println!(
            "{{\"client\":\"lepus\",\"workload\":\"{workload}\",\"n\":{n},\"wall_s\":{wall:.6},\
             \"msgs_per_s\":{:.1},\"cpu_user_s\":{u:.6},\"cpu_sys_s\":{s:.6},\"mode\":\"{mode}\"}}",
            n as f64 / wall
        );
    }
}

fn body() -> Vec<u8> {
    (0..64).map(|i| b'a' + (i % 26) as u8).collect()
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

async fn run(workload: &str, n: u64, url: &str) -> Result<(), lepus::Error> {
    let conn = Connection::connect(url).await?;
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
            ch.basic_cancel(consumer.tag().as_str().unwrap_or_default())
                .await?;
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
    let workloads = ["publish-noconfirm", "publish-confirm", "consume"];
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
