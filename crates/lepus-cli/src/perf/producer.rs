//! A perf producer: its own connection, publishing stamped bodies as fast as allowed.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use lepus::bytes::Bytes;
use lepus::{BasicProperties, BasicPublishOptions, Confirmation, PublisherConfirm};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::{Phase, Shared, Stamper};
use crate::connect::Target;
use crate::error::{CliError, OnChannel};

/// The shared counter of published messages is brought up to date every this many publishes.
const COUNT_BATCH: u64 = 64;
/// Every this many confirmed publishes, one is timed from the publish to its confirm (by a
/// task that waits for it alone, so the time is when the confirm came, not when the window
/// reached it).
const TIME_CONFIRM_EVERY: u64 = 16;
/// Longest sleep of a rate-limited producer before it checks whether to stop.
const MAX_PACING_SLEEP: Duration = Duration::from_millis(100);

/// What one producer does.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    /// 1-based, for names and errors.
    pub(super) id: u32,
    /// Routing key on the default exchange.
    pub(super) queue: String,
    /// Body size in bytes.
    pub(super) size: usize,
    /// Messages to publish, or `None` until told to stop.
    pub(super) share: Option<u64>,
    /// Confirm window, if publishing with confirms.
    pub(super) confirm: Option<u32>,
    /// Most messages per second.
    pub(super) rate: Option<f64>,
    /// Persistent messages (delivery mode 2).
    pub(super) persistent: bool,
}

/// Connects, reports `ready`, and from [`Phase::Go`] publishes until its share is done or
/// `stop_publishing` is set; then waits for the outstanding confirms, closes (which writes
/// what is still buffered), and records when it finished.
///
/// A message counts as published once it was written to the socket
/// ([`lepus::ConnectionStats::messages_written`]), not when it was handed to the client's
/// buffer: the live "sent" rate is what left for the broker.
///
/// The confirm latencies it timed (microseconds) are merged into `shared` at the end.
///
/// # Errors
///
/// Connection and channel errors, prefixed with the producer's number.
pub(super) async fn run(
    s: Settings,
    target: Target,
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
    ready: oneshot::Sender<()>,
) -> Result<(), CliError> {
    let latency = publish(&s, &target, &shared, phase, ready)
        .await
        .map_err(|e| CliError::failed(format!("producer {}: {e}", s.id)))?;
    if let Ok(mut merged) = shared.confirm_latency.lock() {
        match merged.as_mut() {
            Some(all) => {
                let _ = all.add(&latency);
            }
            None => *merged = Some(latency),
        }
    }
    Ok(())
}

async fn publish(
    s: &Settings,
    target: &Target,
    shared: &Shared,
    mut phase: watch::Receiver<Phase>,
    ready: oneshot::Sender<()>,
) -> Result<Histogram<u64>, CliError> {
    let conn = target
        .connect_recovering(&format!("perf producer {}", s.id))
        .await?;
    let ch = conn
        .open_channel()
        .await
        .map_err(|e| CliError::failed(format!("opening a channel: {e}")))?;
    if s.confirm.is_some() {
        ch.confirm_select().await.on(ch.id())?;
    }
    let _ = ready.send(());
    let mut latency = super::report::new_histogram()?;
    if !matches!(
        phase.wait_for(|p| *p >= Phase::Go).await.map(|p| *p),
        Ok(Phase::Go)
    ) {
        return Ok(latency);
    }
    let window = s.confirm.map_or(0, |w| w as usize);
    let mut props = BasicProperties::default();
    if s.persistent {
        props.delivery_mode = Some(2);
    }
    let mut confirms = Confirms {
        pending: VecDeque::with_capacity(window),
        acked: super::Bits::default(),
        queue: &s.queue,
        props: &props,
        latency: &mut latency,
    };
    let paced_from = tokio::time::Instant::now();
    let mut stamper = Stamper::new(s.size, s.id);
    let mut sent = 0u64;
    let mut uncounted = 0u64;
    let mut counted = 0u64;
    let mut count_written = || {
        let written = conn.stats().messages_written;
        shared
            .published
            .fetch_add(written.saturating_sub(counted), Ordering::Relaxed);
        counted = counted.max(written);
    };
    loop {
        if shared.stop_publishing.load(Ordering::Relaxed) || s.share.is_some_and(|n| sent >= n) {
            break;
        }
        if let Some(rate) = s.rate {
            // The n-th message is due n/rate seconds after the start: no drift, no bursts
            // beyond what a late wake-up catches up.
            let due = Duration::try_from_secs_f64(sent as f64 / rate)
                .ok()
                .and_then(|after| paced_from.checked_add(after));
            let now = tokio::time::Instant::now();
            let wake = now + MAX_PACING_SLEEP;
            // `None`: so far in the future that it cannot be represented.
            if due.is_none_or(|due| due > now) {
                tokio::time::sleep_until(due.map_or(wake, |due| due.min(wake))).await;
                continue;
            }
        }
        let body = stamper.next_body(sent);
        let confirm = ch
            .basic_publish(
                "",
                &s.queue,
                BasicPublishOptions::default(),
                &props,
                body.clone(),
            )
            .await
            .on(ch.id())?;
        let seq = sent;
        sent += 1;
        uncounted += 1;
        if uncounted == COUNT_BATCH {
            count_written();
            uncounted = 0;
        }
        if window > 0 {
            let confirm = if seq % TIME_CONFIRM_EVERY == 0 {
                Pending::timed(confirm)
            } else {
                Pending::Plain(confirm)
            };
            confirms.pending.push_back((confirm, body, seq));
            if confirms.pending.len() >= window {
                confirms.settle_oldest(&ch, shared).await?;
            }
        }
        // Give the scheduler a turn now and then: a publish that never waits would otherwise
        // keep this worker thread to itself.
        tokio::task::consume_budget().await;
    }
    while !confirms.pending.is_empty() {
        confirms.settle_oldest(&ch, shared).await?;
    }
    let acked = std::mem::take(&mut confirms.acked);
    drop(confirms);
    if window > 0 {
        if let Ok(mut tally) = shared.tally.lock() {
            tally.acked.insert(s.id, acked);
        }
    }
    // The close writes whatever is still buffered; only then is everything published. The
    // live rate follows it meanwhile.
    let closing = conn.close();
    tokio::pin!(closing);
    let closed = loop {
        tokio::select! {
            closed = &mut closing => break closed,
            () = tokio::time::sleep(Duration::from_millis(100)) => count_written(),
        }
    };
    count_written();
    shared
        .publish_end_ns
        .fetch_max(shared.now_ns(), Ordering::Relaxed);
    shared
        .recoveries
        .fetch_add(conn.stats().recoveries, Ordering::Relaxed);
    closed.map_err(|e| CliError::failed(format!("closing: {e}")))?;
    Ok(latency)
}

/// A confirm in the window: most are awaited when the window reaches them; a sample is
/// awaited by a task of its own, which notes when it came.
enum Pending {
    Plain(PublisherConfirm),
    Timed {
        sent: Instant,
        settled: oneshot::Receiver<(lepus::Result<Confirmation>, Instant)>,
    },
}

impl Pending {
    fn timed(confirm: PublisherConfirm) -> Self {
        let (tx, settled) = oneshot::channel();
        tokio::spawn(async move {
            let outcome = confirm.await;
            let _ = tx.send((outcome, Instant::now()));
        });
        Self::Timed {
            sent: Instant::now(),
            settled,
        }
    }
}

/// The confirms a producer waits for, and which of its messages were acked.
struct Confirms<'a> {
    /// Each with the message's body and number, to publish it again if its confirm is lost.
    pending: VecDeque<(Pending, Bytes, u64)>,
    /// The numbers of the acked messages.
    acked: super::Bits,
    queue: &'a str,
    props: &'a BasicProperties,
    /// Confirm latencies of the timed sample, in microseconds.
    latency: &'a mut Histogram<u64>,
}

impl Confirms<'_> {
    /// Waits for the oldest confirm and counts it; a confirm lost with the connection
    /// publishes the message again (at least once), and its new confirm is waited for later.
    async fn settle_oldest(
        &mut self,
        ch: &lepus::Channel,
        shared: &Shared,
    ) -> Result<(), CliError> {
        let Some((confirm, body, seq)) = self.pending.pop_front() else {
            return Ok(());
        };
        let result = match confirm {
            Pending::Plain(confirm) => confirm.await,
            Pending::Timed { sent, settled } => match settled.await {
                Ok((result, at)) => {
                    let us = u64::try_from(at.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
                    if result.as_ref().is_ok_and(Confirmation::is_ack) {
                        self.latency.saturating_record(us.max(1));
                    }
                    result
                }
                // The task cannot end without sending, unless the runtime is shutting down.
                Err(_) => Ok(Confirmation::Uncertain),
            },
        };
        let outcome = match result {
            Err(e) if e.is_retryable() => Confirmation::Uncertain,
            other => other.on(ch.id())?,
        };
        match outcome {
            Confirmation::Nack(_) => {
                shared.nacked.fetch_add(1, Ordering::Relaxed);
            }
            Confirmation::Uncertain => {
                shared.republished.fetch_add(1, Ordering::Relaxed);
                let confirm = ch
                    .basic_publish(
                        "",
                        self.queue,
                        BasicPublishOptions::default(),
                        self.props,
                        body.clone(),
                    )
                    .await
                    .on(ch.id())?;
                self.pending.push_back((Pending::Plain(confirm), body, seq));
            }
            _ => {
                shared.confirmed.fetch_add(1, Ordering::Relaxed);
                self.acked.insert(seq);
            }
        }
        Ok(())
    }
}
