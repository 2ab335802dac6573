//! `lepus perf`: a load generator in the spirit of RabbitMQ's PerfTest.
//!
//! ```text
//!  producer 1 ─┐  (own connection)                 ┌─► consumer 1 (own connection)
//!  producer 2 ─┼─► default exchange ─► perf queue ─┼─► consumer 2      latency histograms
//!      ...     ┘                                   └─►    ...          merged at the end
//!                 control connection: declares, polls and deletes the queue
//! ```
//!
//! Each body starts with a marker and the send time (nanoseconds since the Unix epoch), so
//! consumers measure end-to-end latency into an HdrHistogram; a drained queue filled by an
//! earlier `lepus perf --consumers 0` gives meaningful figures too, and foreign messages are
//! simply not timed.
//!
//! The run: consumers start first (so the queue does not build up while they connect), then the
//! clock starts and producers publish until `--count` (split between them) or `--time` is
//! reached. Consumers then drain what was published. With `--consumers 0` the run ends when
//! every message is confirmed (`--confirm`) or, without confirms, in the queue (the control
//! connection polls its depth). With `--producers 0` consumers drain `--count` messages, or as
//! many as the queue held at the start. SIGINT (Ctrl-C) or SIGTERM ends the run at once, and
//! the summary covers what was done until then.

mod consumer;
mod producer;
mod report;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use lepus::bytes::{BufMut, Bytes, BytesMut};
use lepus::{Connection, Error, QueueDeclareOptions, QueueDeleteOptions, ReplyCode};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cli::PerfArgs;
use crate::commands::finish;
use crate::connect::Target;
use crate::error::{CliError, OnChannel};
use crate::signal::Stop;

/// The smallest body: the marker, the send timestamp, the producer and the sequence number.
pub(crate) const MIN_SIZE: u32 = 24;
/// Marks a body written by `lepus perf`: the marker, the send time, the producer and the
/// message's number.
const MARKER: [u8; 4] = *b"lpf2";
/// Marks a body written by earlier versions of `lepus perf`: the marker and the send time.
const OLD_MARKER: [u8; 4] = *b"lpf1";
/// How long the run may go without progress while draining before it gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a producer's close may wait for close-ok once everything is written. A run that
/// outpaces the broker leaves megabytes in the broker's socket buffers, which it works
/// through before it answers the close: a minute at the rates of a loaded broker.
const PRODUCER_CLOSE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the control connection checks the queue depth with `--consumers 0`.
const DEPTH_POLL: Duration = Duration::from_millis(1);

/// Where the run is; consumers follow it through a `watch` channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Connecting and setting up.
    Setup,
    /// The clock runs: consume.
    Go,
    /// Stop: settle, cancel and close.
    Stop,
}

/// Counters shared by every producer and consumer task.
#[derive(Debug)]
struct Shared {
    /// A fixed point to measure from.
    origin: Instant,
    /// Nanoseconds from `origin` to the start of the measured run.
    start_ns: AtomicU64,
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    consumed: AtomicU64,
    /// Most messages consumers may take (`u64::MAX`: no limit); extra deliveries are requeued.
    consume_limit: AtomicU64,
    /// Nanoseconds from `start` to the last producer finishing (confirms included).
    publish_end_ns: AtomicU64,
    /// Nanoseconds from `start` to the latest consumed message.
    last_consume_ns: AtomicU64,
    /// Set when producers must stop (time is up, or a signal).
    stop_publishing: AtomicBool,
    /// Recoveries of the producers' and consumers' connections.
    recoveries: AtomicU64,
    /// Messages published again after a lost confirm.
    republished: AtomicU64,
    /// Which messages producers got acked, and how often consumers received each: merged by
    /// every task as it ends.
    tally: std::sync::Mutex<Tally>,
    /// Confirm latencies timed by the producers (microseconds), merged as each ends.
    confirm_latency: std::sync::Mutex<Option<Histogram<u64>>>,
}

/// A set of message numbers, one bit each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Bits(Vec<u64>);

impl Bits {
    /// Adds `n`; returns whether it was there already.
    pub(super) fn insert(&mut self, n: u64) -> bool {
        let (word, bit) = (usize::try_from(n / 64).unwrap_or(usize::MAX), n % 64);
        if self.0.len() <= word {
            self.0.resize(word.saturating_add(1), 0);
        }
        let Some(w) = self.0.get_mut(word) else {
            return false;
        };
        let had = *w & (1 << bit) != 0;
        *w |= 1 << bit;
        had
    }
}

/// Messages by producer: which were acked to the producer, which were received, and how many
/// copies arrived more than once.
#[derive(Debug, Default)]
struct Tally {
    /// Per producer, the numbers of its messages that were acked (with confirms only).
    acked: std::collections::HashMap<u32, Bits>,
    /// Per producer, the numbers of its messages received at least once.
    received: std::collections::HashMap<u32, Bits>,
    /// Copies received beyond the first.
    duplicates: u64,
}

impl Tally {
    /// Adds one consumer's messages and the duplicates it saw itself.
    fn add_received(&mut self, received: std::collections::HashMap<u32, Bits>, duplicates: u64) {
        self.duplicates += duplicates;
        for (producer, bits) in received {
            let into = &mut self.received.entry(producer).or_default().0;
            if into.len() < bits.0.len() {
                into.resize(bits.0.len(), 0);
            }
            for (total, word) in into.iter_mut().zip(bits.0) {
                // Received by another consumer too.
                self.duplicates += u64::from((*total & word).count_ones());
                *total |= word;
            }
        }
    }

    /// Messages acked to their producer and never received.
    fn missing(&self) -> u64 {
        let mut missing = 0;
        for (producer, acked) in &self.acked {
            let received = self.received.get(producer).map_or(&[][..], |r| &r.0[..]);
            for (i, word) in acked.0.iter().enumerate() {
                let got = received.get(i).copied().unwrap_or_default();
                missing += u64::from((word & !got).count_ones());
            }
        }
        missing
    }
}

impl Shared {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            start_ns: AtomicU64::new(0),
            published: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            consume_limit: AtomicU64::new(u64::MAX),
            publish_end_ns: AtomicU64::new(0),
            last_consume_ns: AtomicU64::new(0),
            stop_publishing: AtomicBool::new(false),
            recoveries: AtomicU64::new(0),
            republished: AtomicU64::new(0),
            tally: std::sync::Mutex::new(Tally::default()),
            confirm_latency: std::sync::Mutex::new(None),
        }
    }

    fn since_origin_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Starts the clock of the measured run.
    fn start(&self) {
        self.start_ns
            .store(self.since_origin_ns(), Ordering::Relaxed);
    }

    /// Nanoseconds since the run started.
    fn now_ns(&self) -> u64 {
        self.since_origin_ns()
            .saturating_sub(self.start_ns.load(Ordering::Relaxed))
    }
}

/// Runs the load test and prints the summary (one JSON object with `--json`).
///
/// # Errors
///
/// Usage errors for impossible settings; connection errors; a producer or consumer failing;
/// consumers making no progress for 15 s while draining.
pub(crate) async fn run(args: PerfArgs, target: &Target, stop: Stop) -> Result<(), CliError> {
    validate(&args)?;
    // Recovering like producers and consumers, so that a broker restart does not end the run.
    let control = target.connect_recovering("perf control").await?;
    let (queue, fresh) = prepare_queue(&control, args.queue.as_deref(), args.persistent).await?;
    let result = measure(&args, target, &control, &queue, stop).await;
    if fresh {
        let deleted = delete_queue(&control, &queue).await;
        if result.is_ok() {
            deleted?;
        }
    }
    let summary = result?;
    finish(control).await?;
    if let Some(path) = &args.metrics_file {
        std::fs::write(path, summary.prometheus()).map_err(|e| {
            CliError::failed(format!("writing the metrics to {}: {e}", path.display()))
        })?;
    }
    summary.print(args.json)
}

/// Settings that cannot work, refused before connecting.
fn validate(args: &PerfArgs) -> Result<(), CliError> {
    if args.producers == 0 && args.consumers == 0 {
        return Err(CliError::Usage(
            "--producers 0 and --consumers 0: nothing to do".into(),
        ));
    }
    if args.producers == 0 && args.queue.is_none() {
        return Err(CliError::Usage(
            "--producers 0 drains an existing queue: name it with --queue".into(),
        ));
    }
    if args.consumers > 0 && args.prefetch > 0 && args.multi_ack > u32::from(args.prefetch) {
        return Err(CliError::Usage(format!(
            "--multi-ack {} exceeds --prefetch {}: the broker would stop delivering before an ack",
            args.multi_ack, args.prefetch
        )));
    }
    Ok(())
}

/// The queue to use, and whether it is a fresh one to delete afterwards.
async fn prepare_queue(
    control: &Connection,
    named: Option<&str>,
    durable: bool,
) -> Result<(String, bool), CliError> {
    let ch = open(control).await?;
    let Some(name) = named else {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let name = format!("lepus-perf.{}.{nanos}", std::process::id());
        ch.queue_declare(&name, queue_options(durable))
            .await
            .on(ch.id())?;
        return Ok((name, true));
    };
    match ch.queue_declare_passive(name).await {
        Ok(_) => Ok((name.to_string(), false)),
        Err(Error::ChannelClosed(close)) if close.code == ReplyCode::NOT_FOUND => {
            let ch = open(control).await?;
            ch.queue_declare(name, queue_options(durable))
                .await
                .on(ch.id())?;
            Ok((name.to_string(), false))
        }
        Err(e) => Err(e).on(ch.id()),
    }
}

/// A queue declared for the run: durable with `--persistent`.
fn queue_options(durable: bool) -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable,
        ..Default::default()
    }
}

async fn delete_queue(control: &Connection, queue: &str) -> Result<(), CliError> {
    let ch = open(control).await?;
    ch.queue_delete(queue, QueueDeleteOptions::default())
        .await
        .on(ch.id())
        .map(drop)
}

async fn open(conn: &Connection) -> Result<lepus::Channel, CliError> {
    conn.open_channel()
        .await
        .map_err(|e| CliError::failed(format!("opening a channel: {e}")))
}

/// Messages in the queue now.
async fn depth(ch: &lepus::Channel, queue: &str) -> Result<u64, CliError> {
    let q = ch.queue_declare_passive(queue).await.on(ch.id())?;
    Ok(u64::from(q.message_count))
}

/// Starts consumers and producers, waits for the end of the run, and gathers the figures.
async fn measure(
    args: &PerfArgs,
    target: &Target,
    control: &Connection,
    queue: &str,
    mut stop: Stop,
) -> Result<report::Summary, CliError> {
    let poll = open(control).await?;
    let initial_depth = depth(&poll, queue).await?;
    let shared = Arc::new(Shared::new());
    let (phase, phase_rx) = watch::channel(Phase::Setup);

    // Everyone connects first and reports ready; the clock starts when all are, so connection
    // set-up is not measured and consumers are in place before the first publish.
    let mut consumers = JoinSet::new();
    let mut producers = JoinSet::new();
    let mut ready = Vec::new();
    for id in 1..=args.consumers {
        let (tx, rx) = tokio::sync::oneshot::channel();
        ready.push(rx);
        let settings = consumer::Settings {
            id,
            queue: queue.to_string(),
            prefetch: args.prefetch,
            multi_ack: args.multi_ack,
        };
        consumers.spawn(consumer::run(
            settings,
            target.clone(),
            Arc::clone(&shared),
            phase_rx.clone(),
            tx,
        ));
    }
    for (i, share) in split(args.count, args.producers).into_iter().enumerate() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        ready.push(rx);
        let settings = producer::Settings {
            id: u32::try_from(i + 1).unwrap_or(u32::MAX),
            queue: queue.to_string(),
            size: usize::try_from(args.size).unwrap_or(usize::MAX),
            share,
            confirm: args.confirm,
            rate: args.rate,
            persistent: args.persistent,
        };
        producers.spawn(producer::run(
            settings,
            target.with_close_timeout(PRODUCER_CLOSE_TIMEOUT),
            Arc::clone(&shared),
            phase_rx.clone(),
            tx,
        ));
    }
    for rx in ready {
        if rx.await.is_err() {
            // A task ended before it was ready: its error is in a join set.
            let _ = phase.send(Phase::Stop);
            return Err(first_error(&mut producers, &mut consumers).await);
        }
    }

    if args.producers == 0 {
        let limit = args.count.unwrap_or(initial_depth);
        shared.consume_limit.store(limit, Ordering::Relaxed);
    }
    shared.start();
    let _ = phase.send(Phase::Go);
    let reporter = report::spawn_live(Arc::clone(&shared), args.consumers > 0, args.producers > 0);

    // A signal ends the run wherever it is (joining tasks, sleeping or polling the queue depth
    // can all be dropped safely); the summary reports what was done until then.
    let outcome = tokio::select! {
        biased;
        _ = stop.wait() => Ok(()),
        outcome = drive(
            args,
            &poll,
            queue,
            initial_depth,
            &shared,
            &mut producers,
            &mut consumers,
        ) => outcome,
    };
    shared.stop_publishing.store(true, Ordering::Relaxed);
    let _ = phase.send(Phase::Stop);
    reporter.abort();
    report::end_live();

    let mut histogram = report::new_histogram()?;
    let mut failure = outcome.err();
    while let Some(joined) = producers.join_next().await {
        if let Err(e) = flatten(joined) {
            failure.get_or_insert(e);
        }
    }
    let confirm_histogram = match shared.confirm_latency.lock().ok().and_then(|h| h.clone()) {
        Some(h) => h,
        None => report::new_histogram()?,
    };
    while let Some(joined) = consumers.join_next().await {
        match flatten(joined) {
            Ok(h) => {
                let _ = histogram.add(&h);
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(report::Summary::new(
        &shared,
        args.consumers > 0,
        args.producers > 0 && args.confirm.is_some(),
        &histogram,
        &confirm_histogram,
    ))
}

/// Waits for the end of the run: producers done (count or time), then every message consumed,
/// or in the queue/confirmed without consumers.
async fn drive(
    args: &PerfArgs,
    poll: &lepus::Channel,
    queue: &str,
    initial_depth: u64,
    shared: &Shared,
    producers: &mut JoinSet<Result<(), CliError>>,
    consumers: &mut JoinSet<Result<Histogram<u64>, CliError>>,
) -> Result<(), CliError> {
    let deadline = args
        .time
        .map(|secs| tokio::time::Instant::now() + Duration::from_secs_f64(secs));

    // Publishing.
    while !producers.is_empty() {
        let time_up = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            joined = producers.join_next() => {
                if let Some(joined) = joined {
                    flatten(joined)?;
                }
            }
            () = time_up, if !shared.stop_publishing.load(Ordering::Relaxed) => {
                shared.stop_publishing.store(true, Ordering::Relaxed);
            }
            Some(joined) = consumers.join_next() => {
                // A consumer only ends early on error.
                flatten(joined)?;
            }
        }
    }

    // Draining.
    let published = shared.published.load(Ordering::Relaxed);
    let target = if args.producers == 0 {
        args.count.unwrap_or(initial_depth)
    } else {
        published
    };
    let mut last_progress = (0u64, Instant::now());
    loop {
        let progress = if args.consumers > 0 {
            shared.consumed.load(Ordering::Relaxed)
        } else if args.confirm.is_some() {
            // Producers waited for every confirm before finishing.
            break;
        } else {
            depth(poll, queue).await?.saturating_sub(initial_depth)
        };
        if progress >= target {
            if args.consumers == 0 {
                shared
                    .publish_end_ns
                    .fetch_max(shared.now_ns(), Ordering::Relaxed);
            }
            break;
        }
        if progress != last_progress.0 {
            last_progress = (progress, Instant::now());
        } else if last_progress.1.elapsed() > STALL_TIMEOUT {
            let what = if args.consumers > 0 {
                "consumed"
            } else {
                "in the queue"
            };
            return Err(CliError::failed(format!(
                "no progress for {} s: {progress} of {target} messages {what}",
                STALL_TIMEOUT.as_secs()
            )));
        }
        let pause = if args.consumers > 0 {
            Duration::from_millis(2)
        } else {
            DEPTH_POLL
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            Some(joined) = consumers.join_next() => {
                flatten(joined)?;
            }
        }
    }
    if args.consumers > 0 && args.producers > 0 {
        quiet_drain(shared).await;
    }
    Ok(())
}

/// After every message published was counted as consumed: waits a little longer, until
/// nothing more arrives for a moment, for copies of messages published again after a
/// recovery and for what a duplicate stood in for (at most five seconds).
async fn quiet_drain(shared: &Shared) {
    let until = Instant::now() + Duration::from_secs(5);
    let mut before = shared.consumed.load(Ordering::Relaxed);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = shared.consumed.load(Ordering::Relaxed);
        if now == before {
            return;
        }
        before = now;
    }
}

/// Splits `--count` between producers (the first ones take the remainder); `None` per producer
/// without `--count`.
fn split(count: Option<u64>, producers: u32) -> Vec<Option<u64>> {
    let n = u64::from(producers);
    (0..n)
        .map(|i| count.map(|c| c / n + u64::from(i < c % n)))
        .collect()
}

/// The task's own result, or a join failure (a panic, which the hook reports anyway).
fn flatten<T>(joined: Result<Result<T, CliError>, tokio::task::JoinError>) -> Result<T, CliError> {
    joined.map_err(|e| CliError::failed(format!("a perf task failed: {e}")))?
}

/// The first error among the tasks, once all have ended.
async fn first_error(
    producers: &mut JoinSet<Result<(), CliError>>,
    consumers: &mut JoinSet<Result<Histogram<u64>, CliError>>,
) -> CliError {
    let mut first = None;
    while let Some(joined) = producers.join_next().await {
        if let Err(e) = flatten(joined) {
            first.get_or_insert(e);
        }
    }
    while let Some(joined) = consumers.join_next().await {
        if let Err(e) = flatten(joined) {
            first.get_or_insert(e);
        }
    }
    first.unwrap_or_else(|| CliError::failed("a perf task ended before it started"))
}

/// Writes stamped bodies: the marker, the send time in nanoseconds since the Unix epoch, the
/// producer's number and the message's (all big-endian), then zeros up to the size (at least
/// [`MIN_SIZE`]).
///
/// Bodies are cut from one larger buffer, so a small body costs no allocation of its own (the
/// library copies small bodies into its output buffer anyway; a body of one chunk or more gets
/// a buffer of its own).
#[derive(Debug)]
struct Stamper {
    size: usize,
    producer: u32,
    buf: BytesMut,
}

/// Bytes allocated at a time for bodies.
const STAMP_CHUNK: usize = 64 * 1024;

impl Stamper {
    fn new(size: usize, producer: u32) -> Self {
        Self {
            size: size.max(MIN_SIZE as usize),
            producer,
            buf: BytesMut::new(),
        }
    }

    /// The body of message `seq`, stamped now.
    fn next_body(&mut self, seq: u64) -> Bytes {
        if self.buf.capacity() < self.size {
            self.buf = BytesMut::with_capacity(STAMP_CHUNK.max(self.size));
        }
        self.buf.put_slice(&MARKER);
        self.buf.put_u64(epoch_nanos());
        self.buf.put_u32(self.producer);
        self.buf.put_u64(seq);
        self.buf.put_bytes(0, self.size - MIN_SIZE as usize);
        self.buf.split().freeze()
    }
}

/// What a body written by a [`Stamper`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    /// Send time, nanoseconds since the Unix epoch.
    sent: u64,
    /// Producer and message number (`None` in bodies of earlier versions).
    id: Option<(u32, u64)>,
}

/// The stamp of a body written by `lepus perf`, if it is one.
fn stamp(body: &[u8]) -> Option<Stamp> {
    let (marker, rest) = body.split_first_chunk::<4>()?;
    let (sent, rest) = rest.split_first_chunk::<8>()?;
    let sent = u64::from_be_bytes(*sent);
    match *marker {
        MARKER => {
            let (producer, rest) = rest.split_first_chunk::<4>()?;
            let (seq, _) = rest.split_first_chunk::<8>()?;
            Some(Stamp {
                sent,
                id: Some((u32::from_be_bytes(*producer), u64::from_be_bytes(*seq))),
            })
        }
        OLD_MARKER => Some(Stamp { sent, id: None }),
        _ => None,
    }
}

/// Nanoseconds since the Unix epoch (wall clock, so that separate processes agree).
fn epoch_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_their_send_time_producer_and_number() {
        let before = epoch_nanos();
        let mut stamper = Stamper::new(100, 7);
        let body = stamper.next_body(41);
        assert_eq!(body.len(), 100);
        let s = stamp(&body).unwrap();
        assert!(s.sent >= before && s.sent <= epoch_nanos());
        assert_eq!(s.id, Some((7, 41)));
        assert!(body[24..].iter().all(|b| *b == 0));
        assert_eq!(Stamper::new(24, 1).next_body(0).len(), 24);
        assert_eq!(Stamper::new(3, 1).next_body(0).len(), 24);
        // Across chunk boundaries, and for bodies larger than a chunk.
        let mut small = Stamper::new(1000, 2);
        for seq in 0..200 {
            let b = small.next_body(seq);
            assert_eq!(b.len(), 1000);
            assert_eq!(stamp(&b).unwrap().id, Some((2, seq)));
        }
        let big = Stamper::new(STAMP_CHUNK * 2, 3).next_body(9);
        assert_eq!(big.len(), STAMP_CHUNK * 2);
        assert_eq!(stamp(&big).unwrap().id, Some((3, 9)));
        // Bodies of earlier versions are still timed.
        let mut old = b"lpf1".to_vec();
        old.extend_from_slice(&before.to_be_bytes());
        assert_eq!(
            stamp(&old),
            Some(Stamp {
                sent: before,
                id: None
            })
        );
    }

    #[test]
    fn foreign_bodies_are_not_timed() {
        assert_eq!(stamp(b""), None);
        assert_eq!(stamp(b"lpf1short"), None);
        assert_eq!(stamp(b"lpf2short-of-an-id"), None);
        assert_eq!(stamp(b"hello world, not perf"), None);
    }

    fn bits(numbers: &[u64]) -> Bits {
        let mut b = Bits::default();
        for &n in numbers {
            b.insert(n);
        }
        b
    }

    #[test]
    fn the_tally_counts_duplicates_and_acked_messages_never_received() {
        let mut tally = Tally::default();
        tally.acked.insert(1, bits(&[0, 1, 2, 100]));
        tally.acked.insert(2, bits(&[0]));
        // Two consumers; the first saw message 1 of producer 1 twice itself.
        tally.add_received([(1, bits(&[0, 1, 3, 100]))].into_iter().collect(), 1);
        tally.add_received([(1, bits(&[1])), (2, bits(&[5]))].into_iter().collect(), 0);
        // Producer 1: message 1 came three times in all, 2 never (3 was not acked).
        // Producer 2: its only acked message never came.
        assert_eq!(tally.duplicates, 2);
        assert_eq!(tally.missing(), 2);
        let mut b = Bits::default();
        assert!(!b.insert(70) && b.insert(70));
    }

    #[test]
    fn count_is_split_between_producers() {
        assert_eq!(split(Some(10), 3), [Some(4), Some(3), Some(3)]);
        assert_eq!(split(Some(2), 3), [Some(1), Some(1), Some(0)]);
        assert_eq!(split(None, 2), [None, None]);
        assert!(split(Some(5), 0).is_empty());
    }
}
