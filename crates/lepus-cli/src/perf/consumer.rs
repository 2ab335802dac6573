//! A perf consumer: its own connection, timing each stamped message.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hdrhistogram::Histogram;
use lepus::{BasicConsumeOptions, BasicQosOptions};
use tokio::sync::{oneshot, watch};

use super::{epoch_nanos, report, stamp, Bits, Phase, Shared};
use crate::connect::Target;
use crate::error::{CliError, OnChannel, Settled};

/// Message numbers beyond this are not tallied (a runaway number in a foreign body must not
/// exhaust memory): 2^32, a bitmap of 512 MiB at the very most.
const MAX_TRACKED: u64 = 1 << 32;

/// What one consumer does.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    /// 1-based, for names and errors.
    pub(super) id: u32,
    /// Queue to consume from.
    pub(super) queue: String,
    /// basic.qos prefetch (0: none).
    pub(super) prefetch: u16,
    /// Ack every this many messages with `multiple`.
    pub(super) multi_ack: u32,
}

/// Connects, reports `ready`, consumes from [`Phase::Go`] until [`Phase::Stop`], then acks
/// what is left, cancels and closes. Returns the latency histogram (microseconds).
///
/// # Errors
///
/// Connection and channel errors, the broker cancelling the consumer; prefixed with the
/// consumer's number.
pub(super) async fn run(
    s: Settings,
    target: Target,
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
    ready: oneshot::Sender<()>,
) -> Result<Histogram<u64>, CliError> {
    consume(&s, &target, &shared, phase, ready)
        .await
        .map_err(|e| CliError::failed(format!("consumer {}: {e}", s.id)))
}

async fn consume(
    s: &Settings,
    target: &Target,
    shared: &Shared,
    mut phase: watch::Receiver<Phase>,
    ready: oneshot::Sender<()>,
) -> Result<Histogram<u64>, CliError> {
    let mut histogram = report::new_histogram()?;
    let conn = target
        .connect_recovering(&format!("perf consumer {}", s.id))
        .await?;
    let ch = conn
        .open_channel()
        .await
        .map_err(|e| CliError::failed(format!("opening a channel: {e}")))?;
    if s.prefetch > 0 {
        ch.basic_qos(s.prefetch, BasicQosOptions::default())
            .await
            .on(ch.id())?;
    }
    let _ = ready.send(());
    let Ok(now) = phase.wait_for(|p| *p >= Phase::Go).await.map(|p| *p) else {
        return Ok(histogram);
    };
    if now == Phase::Stop {
        return Ok(histogram);
    }
    let mut consumer = ch
        .basic_consume(&s.queue, "", BasicConsumeOptions::default())
        .await
        .on(ch.id())?;
    let mut unacked = 0u32;
    let mut last_tag = None;
    // Which messages arrived, by producer and number, and how many came again.
    let mut received: HashMap<u32, Bits> = HashMap::new();
    let mut duplicates = 0u64;
    loop {
        let delivery = tokio::select! {
            biased;
            _ = phase.wait_for(|p| *p == Phase::Stop) => break,
            next = consumer.recv() => match next {
                Some(delivery) => delivery.on(ch.id())?,
                None => break,
            },
        };
        // Claim the message against the limit (`--producers 0` drains a set number).
        let claimed = shared.consumed.fetch_add(1, Ordering::Relaxed);
        if claimed >= shared.consume_limit.load(Ordering::Relaxed) {
            shared.consumed.fetch_sub(1, Ordering::Relaxed);
            delivery.nack(true).settled(ch.id())?;
            break;
        }
        if let Some(stamp) = stamp(&delivery.body) {
            let micros = epoch_nanos().saturating_sub(stamp.sent) / 1000;
            histogram.saturating_record(micros.max(1));
            if let Some((producer, seq)) = stamp.id.filter(|(_, seq)| *seq < MAX_TRACKED) {
                if received.entry(producer).or_default().insert(seq) {
                    duplicates += 1;
                }
            }
        }
        unacked += 1;
        if unacked >= s.multi_ack {
            if s.multi_ack == 1 {
                delivery.ack().settled(ch.id())?;
            } else {
                delivery.ack_multiple().on(ch.id())?;
            }
            unacked = 0;
            last_tag = None;
        } else {
            last_tag = Some(delivery.delivery_tag);
        }
        shared
            .last_consume_ns
            .fetch_max(shared.now_ns(), Ordering::Relaxed);
    }
    if let Some(tag) = last_tag {
        ch.basic_ack(tag, true).settled(ch.id())?;
    }
    let tag = consumer.tag().to_string_lossy().into_owned();
    // Deliveries still on their way are requeued by lepus once the consumer is gone.
    let _ = ch.basic_cancel(&tag).await;
    if let Ok(mut tally) = shared.tally.lock() {
        tally.add_received(received, duplicates);
    }
    shared
        .recoveries
        .fetch_add(conn.stats().recoveries, Ordering::Relaxed);
    let _ = conn.close().await;
    Ok(histogram)
}
