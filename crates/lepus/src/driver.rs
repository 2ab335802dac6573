//! The I/O driver: two tasks per connection around the sans-IO core.
//!
//! All state lives in one [`Shared`] behind a mutex: the protocol core, the waiters for
//! replies and confirms, and the consumers' queues. User handles lock it, call the core (which
//! encodes frames into its output buffer at once), and wake the writer only when it is idle, so
//! publishing costs a lock and an encode: no channel hop, no allocation for small bodies.
//!
//! - The **writer** task takes everything the core has queued, in one batch, and writes it with
//!   vectored writes: under load, many messages go out per system call.
//! - The **reader** task reads into one buffer, lets the core decode every complete frame, and
//!   routes the resulting events to waiters, consumers and confirm futures. It also runs the
//!   heartbeat timer. When a consumer's queue is full it stops reading the socket until the
//!   consumer catches up: TCP backpressure instead of unbounded memory.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

/// The current time on tokio's clock (which tests may pause), as the protocol core takes it.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

use bytes::{Buf, Bytes, BytesMut};
use lepus_proto::{Close, ConnectionError, Event, Reply};
use lepus_wire::method::basic;
use lepus_wire::{Method, ReplyCode, ShortStr};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, oneshot, watch, Notify};

use crate::config::ConnectionOptions;
use crate::confirm::{ConfirmQueue, ReturnedMessage};
use crate::consumer::{ConsumerQueue, Delivery};
use crate::error::{Error, HumanDuration, Result};

/// Frames decoded per acquisition of the state lock.
const FRAMES_PER_LOCK: usize = 48;
/// The fewest acks (and pipelined confirmed publishes) a write must carry for the writer to
/// turn lazy after it: a consumer streaming writes many per write, while a request/reply
/// loop writes its ack alone or with the next request.
const LAZY_MIN_BATCH: u32 = 2;
/// Size of each socket read.
const READ_CHUNK: usize = 64 * 1024;
/// The most a read gets room for, after reads kept filling what they had.
const READ_MAX: usize = 512 * 1024;
/// What a quiet connection reads into; a read that fills it moves up to [`READ_CHUNK`].
const READ_MIN: usize = 2 * 1024;
/// A connection with no reads and no writes for this long gives back the memory a burst of
/// traffic made grow (see [`Inner::shrink`]).
const SHRINK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a connection whose close-ok is overdue stays open after everything was written, so
/// that a broker still working through its own buffers reads the rest: RabbitMQ drops what it
/// has not read when the client closes the socket. At least the close timeout.
const LINGER: std::time::Duration = std::time::Duration::from_secs(60);
/// Most buffers handed to one vectored write.
const MAX_IOVECS: usize = 64;
/// A read at least this large already carries enough to amortise its wake-up: no nap after it.
const NAP_MAX_READ: usize = 32 * 1024;
/// A nap needs at least this many deliveries and confirms in the read before it ...
const NAP_MIN_EVENTS: u64 = 4;
/// ... and, at the rate they arrived, this many expected during the nap.
const NAP_MIN_BATCH: f64 = 16.0;
/// The broker must have room for this many times the deliveries or confirms expected during a
/// nap, so that it never runs dry while lepus is not reading.
const NAP_SLACK: f64 = 2.0;
/// A publish on a channel in confirm mode with fewer confirms outstanding counts as the
/// application waiting on the broker (see [`Inner::app_sent`]).
const NAP_DEEP_CONFIRMS: usize = 64;
/// No nap for this many times the nap after the application sent something the broker may
/// answer: it may be answering the deliveries of an earlier read in a request/reply loop.
const NAP_QUIET_FACTOR: u32 = 10;

/// A map keyed by channel id. The ids are small numbers lepus picks itself, so one multiply
/// spreads them well; SipHash's defence against keys chosen by an attacker buys nothing here,
/// and the map is consulted several times per message.
pub(crate) type IdMap<V> = HashMap<u16, V, std::hash::BuildHasherDefault<IdHasher>>;

/// The hasher of [`IdMap`].
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// What a connection's socket did so far, from [`Connection::stats`](crate::Connection::stats).
///
/// Useful to see how well lepus batches: under load, many frames go out per write and come
/// in per read. Counts cover the connection's whole life, handshake included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Socket reads that brought data.
    pub reads: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Reads after which the reader held off the next one to gather a larger batch (read
    /// coalescing; see [`ConnectionOptions::read_coalescing`](crate::ConnectionOptions::read_coalescing)).
    pub delayed_reads: u64,
    /// Acknowledgements that waited for a write already coming instead of waking the writer
    /// (write coalescing; see
    /// [`ConnectionOptions::write_coalescing`](crate::ConnectionOptions::write_coalescing)).
    pub deferred_acks: u64,
    /// Socket writes (each a vectored write of many frames).
    pub writes: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Messages published (queued for sending).
    pub messages_published: u64,
    /// Messages published and completely written to the socket. The difference to
    /// [`messages_published`](Self::messages_published) is still waiting in lepus's write
    /// buffer.
    pub messages_written: u64,
    /// Times the connection was lost and recovered (see
    /// [`RecoveryPolicy`](crate::RecoveryPolicy)).
    pub recoveries: u64,
    /// Messages published again after a recovery because their confirm was lost (see
    /// [`Channel::replay_on_recovery`](crate::Channel::replay_on_recovery)).
    pub replayed: u64,
}

/// A connection-level event, from [`Connection::events`](crate::Connection::events).
///
/// A recovery shows as `Disconnected`, then one `Reconnecting` per attempt, then (per entity
/// that needed it) `QueueRenamed`, `ConsumerRecovered` and `TopologyFailed`, and finally
/// `Recovered`, or `RecoveryFailed` followed by `Closed`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The broker stopped reading publishes (`connection.blocked`), with its reason.
    Blocked(String),
    /// The broker reads publishes again.
    Unblocked,
    /// The connection ended for good.
    Closed(String),
    /// The connection was lost, and lepus is recovering it.
    Disconnected {
        /// What ended the link.
        cause: crate::Error,
        /// Messages published without confirms that were still in lepus's write buffer:
        /// they never reached the broker.
        unsent_messages: u64,
    },
    /// A reconnection attempt starts, after a wait.
    Reconnecting {
        /// The broker tried, as `host:port`.
        address: String,
        /// 1 for the first attempt after the loss.
        attempt: u32,
        /// How long it waited before this attempt.
        after: std::time::Duration,
    },
    /// A server-named queue was declared again and got a new name; its recorded bindings and
    /// consumers follow it.
    QueueRenamed {
        /// The name it had.
        old: String,
        /// The name the broker gave it now.
        new: String,
    },
    /// A consumer was subscribed again, with its tag and options, on its channel.
    ConsumerRecovered {
        /// The channel id.
        channel: u16,
        /// The consumer tag.
        consumer_tag: ShortStr,
        /// The queue.
        queue: String,
    },
    /// Declaring one recorded entity again failed (the broker refused it); recovery went on
    /// without it, and lepus forgot it.
    TopologyFailed {
        /// The entity, such as `queue 'jobs'`.
        entity: String,
        /// The broker's refusal.
        error: crate::Error,
    },
    /// The connection is open again, on `address`, every channel, entity and consumer
    /// restored (but those reported as failed).
    Recovered {
        /// The broker, as `host:port`.
        address: String,
        /// Time since the loss.
        took: std::time::Duration,
    },
    /// Recovery gave up (the policy's limits, or a broker that refuses the connection); the
    /// connection is closed.
    RecoveryFailed {
        /// The last attempt's error.
        error: crate::Error,
    },
}

impl PartialEq for ConnectionEvent {
    /// Errors inside compare by their text: two events are equal when they say the same.
    fn eq(&self, other: &Self) -> bool {
        use ConnectionEvent as E;
        match (self, other) {
            (E::Blocked(a), E::Blocked(b)) | (E::Closed(a), E::Closed(b)) => a == b,
            (E::Unblocked, E::Unblocked) => true,
            (
                E::Disconnected {
                    cause: a,
                    unsent_messages: m,
                },
                E::Disconnected {
                    cause: b,
                    unsent_messages: n,
                },
            ) => m == n && a.to_string() == b.to_string(),
            (
                E::Reconnecting {
                    address: a,
                    attempt: x,
                    after: d,
                },
                E::Reconnecting {
                    address: b,
                    attempt: y,
                    after: e,
                },
            ) => (a, x, d) == (b, y, e),
            (E::QueueRenamed { old: a, new: b }, E::QueueRenamed { old: c, new: d }) => {
                (a, b) == (c, d)
            }
            (
                E::ConsumerRecovered {
                    channel: a,
                    consumer_tag: b,
                    queue: c,
                },
                E::ConsumerRecovered {
                    channel: d,
                    consumer_tag: e,
                    queue: f,
                },
            ) => (a, b, c) == (d, e, f),
            (
                E::TopologyFailed {
                    entity: a,
                    error: b,
                },
                E::TopologyFailed {
                    entity: c,
                    error: d,
                },
            ) => a == c && b.to_string() == d.to_string(),
            (
                E::Recovered {
                    address: a,
                    took: b,
                },
                E::Recovered {
                    address: c,
                    took: d,
                },
            ) => (a, b) == (c, d),
            (E::RecoveryFailed { error: a }, E::RecoveryFailed { error: b }) => {
                a.to_string() == b.to_string()
            }
            _ => false,
        }
    }
}

pub(crate) enum Waiter {
    /// A plain request: the reply goes to the caller.
    Reply(oneshot::Sender<Result<Reply>>),
    /// `basic.consume`: the consumer is registered the moment consume-ok is read, before any
    /// delivery that follows it in the same read.
    Consume {
        tx: oneshot::Sender<Result<Reply>>,
        queue: Arc<ConsumerQueue>,
        no_ack: bool,
    },
}

impl Waiter {
    pub(crate) fn fail(self, e: Error) {
        match self {
            Self::Reply(tx) | Self::Consume { tx, .. } => {
                let _ = tx.send(Err(e));
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct ChannelSlot {
    pub(crate) generation: u64,
    pub(crate) waiters: VecDeque<Waiter>,
    pub(crate) consumers: HashMap<ShortStr, Arc<ConsumerQueue>>,
    /// Consumer tags that were started with no-ack, kept so that a late delivery for a
    /// cancelled one is not rejected (which the broker would refuse).
    pub(crate) no_ack_tags: Vec<ShortStr>,
    pub(crate) confirms: ConfirmQueue,
    pub(crate) nacked_since_wait: bool,
    pub(crate) confirms_drained: Option<Arc<Notify>>,
    pub(crate) returned: VecDeque<ReturnedMessage>,
    /// Every live `Channel::returns` receiver.
    pub(crate) returns_tx: Vec<tokio::sync::mpsc::UnboundedSender<ReturnedMessage>>,
    /// `Channel::close` waiting for the end; gets the broker's reason if it closed the channel.
    pub(crate) close_waiter: Option<oneshot::Sender<Option<Close>>>,
    /// The broker paused publishing on this channel with `channel.flow`.
    pub(crate) flow_paused: bool,
    /// Prefetch counts set with `basic.qos`: per consumer and for the whole channel (0: none).
    pub(crate) prefetch_consumer: u32,
    pub(crate) prefetch_channel: u32,
    /// Deliveries to acking consumers not yet acknowledged by the application.
    pub(crate) unsettled: u64,
    /// The highest delivery tag received on the channel.
    pub(crate) last_delivery_tag: u64,
    /// Deliveries and confirms (publishes settled) in the read being handled.
    pub(crate) read_deliveries: u64,
    pub(crate) read_confirms: u64,
    /// Modes the application put the channel in, restored after a recovery.
    pub(crate) confirm_mode: bool,
    pub(crate) tx_mode: bool,
    /// `channel.flow` as the application last asked it (`None`: never asked).
    pub(crate) app_flow: Option<bool>,
    /// Confirm numbers of the current link start after this one: a recovered channel numbers
    /// its publishes from 1 again, while [`ChannelSlot::confirms`] goes on counting.
    pub(crate) confirm_offset: u64,
    /// The last number a confirmed publish got (counted across recoveries).
    pub(crate) published_seq: u64,
    /// With replay on ([`Channel::replay_on_recovery`](crate::Channel::replay_on_recovery)),
    /// every confirmed publish not settled yet, by number, to publish again after a recovery.
    pub(crate) replay: Option<crate::confirm::Kept>,
    /// The numbers of the messages published again on the current link, in order: the
    /// broker's numbers 1 to `replayed.len()` stand for them.
    pub(crate) replayed: Vec<u64>,
    /// The application closed the channel: it is not reopened.
    pub(crate) closing: bool,
}

impl ChannelSlot {
    /// The tightest prefetch limit in effect, if any.
    fn prefetch(&self) -> Option<u64> {
        [self.prefetch_consumer, self.prefetch_channel]
            .into_iter()
            .filter(|&p| p > 0)
            .min()
            .map(u64::from)
    }

    /// The number a confirm's `tag` from the broker stands for (see
    /// [`ChannelSlot::confirm_offset`] and [`ChannelSlot::replayed`]).
    pub(crate) fn confirm_number(&self, tag: u64) -> u64 {
        tag.checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.replayed.get(i).copied())
            .unwrap_or_else(|| tag.saturating_add(self.confirm_offset))
    }

    /// Counts an acknowledgement the application made.
    pub(crate) fn settle(&mut self, delivery_tag: u64, multiple: bool) {
        if multiple {
            let after = self.last_delivery_tag.saturating_sub(delivery_tag);
            self.unsettled = self.unsettled.min(after);
        } else {
            self.unsettled = self.unsettled.saturating_sub(1);
        }
    }
}

pub(crate) struct Inner {
    pub(crate) proto: lepus_proto::Connection,
    /// Boxed, so that the map's spare buckets cost a pointer each.
    pub(crate) channels: IdMap<Box<ChannelSlot>>,
    /// Set once the connection is finished; every later call fails with it.
    pub(crate) error: Option<Error>,
    pub(crate) writer_idle: bool,
    /// The idle writer will look for output again within the write-coalescing delay on its
    /// own, so an acknowledgement need not wake it (see [`Inner::wake_writer_for_ack`]).
    pub(crate) writer_lazy: bool,
    /// Acknowledgements queued since the writer last took the output, without waking it.
    pub(crate) acks_unsent: u64,
    /// Something the broker may answer (a publish, a method) was queued since output was last
    /// taken for writing. The writer turns lazy only after writing output without it.
    reply_bait: bool,
    /// Acks and deeply pipelined confirmed publishes queued since output was last taken: the
    /// frames laziness lets wait. The writer turns lazy only after writing a batch of them
    /// ([`LAZY_MIN_BATCH`]).
    patient: u32,
    /// The socket, for writing from the caller's thread while the writer is idle (plain TCP
    /// only; see [`Shared::flush_inline`]).
    pub(crate) inline_tcp: Option<crate::transport::SharedTcp>,
    /// A caller is writing inline: the writer task must leave the output alone.
    pub(crate) inline_writing: bool,
    /// When a caller last wrote inline; keeps the writer lazy while callers do the writing.
    pub(crate) last_inline_write: Option<Instant>,
    /// Output an inline write could not finish, for the writer task to send first.
    pub(crate) handoff: VecDeque<Bytes>,
    /// Reused buffer list for inline writes.
    inline_chunks: VecDeque<Bytes>,
    /// Bytes the writer has taken and not yet written.
    pub(crate) in_flight: usize,
    pub(crate) publishers_waiting: bool,
    pub(crate) connected: Option<oneshot::Sender<Result<()>>>,
    pub(crate) update_secret_waiters: VecDeque<oneshot::Sender<Result<()>>>,
    /// A TLS failure behind a lost transport, reported as [`Error::Tls`] instead.
    pub(crate) tls_failure: Option<String>,
    /// Why the broker closed each channel id last (with that channel's generation), so later
    /// calls on a stale handle report the broker's reason, not just "closed".
    pub(crate) closed_channels: IdMap<(u64, Close)>,
    /// Consumers and confirm futures to wake once the lock is released: woken while it is
    /// held, they would run straight into it.
    pub(crate) wake_later: Vec<Waker>,
    /// The application sent something since the last read that may make the broker answer
    /// (a request, a publish, anything but acks and deeply pipelined confirmed publishes):
    /// the next read is not delayed, in case someone waits for that answer.
    app_sent: bool,
    /// The last read that found [`Inner::app_sent`] set.
    app_sent_seen: Option<Instant>,
    /// The reader holds off its next read (see [`Inner::nap_after_read`]); app activity cuts
    /// the nap short through [`Shared::nap_cut`].
    napping: bool,
    /// When the previous read was handled.
    last_read: Option<Instant>,
    /// Quiet since the last [`shrink`](Self::shrink): the reader has no shrink to schedule
    /// until traffic comes back (a write then wakes it with [`Shared::traffic`]).
    quiet: bool,
    /// Channels with deliveries or confirms in the read being handled.
    read_touched: Vec<u16>,
    /// Counters for [`Connection::stats`](crate::Connection::stats).
    pub(crate) stats: ConnectionStats,
    /// Where each publish not yet completely written ends in the output stream (the count of
    /// bytes queued since the connection started, that publish included), oldest first.
    unwritten: VecDeque<u64>,
    /// When a write last moved bytes: a close gives up only after the close timeout without
    /// progress.
    last_write: Option<Instant>,
    /// Set when the connection ended with publishes unwritten: what [`close`] reports.
    pub(crate) lost: Option<Error>,
    /// A close gave up waiting for close-ok after everything was written: keep the socket
    /// open (no FIN) and let the reader drain it until the broker closes it (see
    /// [`until_close_ok`]).
    linger: bool,
    /// Which link the reader and writer tasks serve; a task whose link was replaced stops.
    pub(crate) session: u64,
    /// The link was lost and is being recovered.
    pub(crate) recovering: bool,
    /// Counts links: deliveries of an earlier one cannot be settled on a later one.
    pub(crate) epoch: u64,
    /// What recovery declares again.
    pub(crate) topology: crate::recovery::Topology,
    /// The broker the current link goes to, as `host:port`.
    pub(crate) address: String,
}

/// The locked state. Dropping it releases the lock first, then wakes
/// [`Inner::wake_later`].
pub(crate) struct Locked<'a>(Option<MutexGuard<'a, Inner>>);

impl std::ops::Deref for Locked<'_> {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        // The guard is only taken out in `drop`.
        match &self.0 {
            Some(guard) => guard,
            None => unreachable!("the state guard is present until drop"),
        }
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        match &mut self.0 {
            Some(guard) => guard,
            None => unreachable!("the state guard is present until drop"),
        }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut guard) = self.0.take() else {
            return;
        };
        if guard.wake_later.is_empty() {
            return;
        }
        let wake = std::mem::take(&mut guard.wake_later);
        drop(guard);
        wake.into_iter().for_each(Waker::wake);
    }
}

/// The connection's event stream ([`Connection::events`](crate::Connection::events)). Its
/// buffer is made on the first subscription: most connections never have a subscriber, and
/// an event sent with no receiver is dropped either way.
#[derive(Default)]
pub(crate) struct Events {
    tx: std::sync::OnceLock<broadcast::Sender<ConnectionEvent>>,
    /// The connection's metric handles (the events are where most of them are counted).
    #[cfg(feature = "metrics")]
    pub(crate) metrics: crate::metrics::Metrics,
}

impl Events {
    /// How far a receiver may fall behind before it loses the oldest events.
    const CAPACITY: usize = 64;

    /// Sends `event` to every receiver there is.
    pub(crate) fn send(&self, event: ConnectionEvent) {
        #[cfg(feature = "metrics")]
        self.metrics.on_event(&event);
        if let Some(tx) = self.tx.get() {
            let _ = tx.send(event);
        }
    }

    /// A receiver of everything sent from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.tx
            .get_or_init(|| broadcast::channel(Self::CAPACITY).0)
            .subscribe()
    }
}

pub(crate) struct Shared {
    state: Mutex<Inner>,
    pub(crate) writer_wake: Notify,
    pub(crate) reader_wake: Notify,
    /// Ends a nap of the reader early (see [`Inner::nap_after_read`]).
    nap_cut: Notify,
    /// Traffic after a quiet spell: the reader schedules the next shrink.
    traffic: Notify,
    /// Publishers waiting for buffer space or an unblock.
    pub(crate) space: Notify,
    pub(crate) closed: Notify,
    pub(crate) read_paused: AtomicBool,
    pub(crate) events: Events,
    /// Becomes `true` when the connection has ended.
    pub(crate) shutdown: watch::Sender<bool>,
    /// Live user handles (connections, channels, consumers); see [`HandleGuard`].
    handles: std::sync::atomic::AtomicUsize,
    /// The runtime the driver tasks run on, for the close that follows the last handle's drop
    /// and for recovery.
    pub(crate) runtime: Option<tokio::runtime::Handle>,
    /// The current link's [`Inner::session`]: tasks of an older one stop.
    pub(crate) session: watch::Sender<u64>,
    /// Whether the connection is open, recovering or closed, for calls waiting out a
    /// recovery.
    pub(crate) link: watch::Sender<Link>,
    /// [`Inner::epoch`], readable without the lock.
    pub(crate) epoch: std::sync::atomic::AtomicU64,
    /// Writer tasks still running: a close waits for the last one to count its last write.
    writers: watch::Sender<usize>,
    pub(crate) options: ConnectionOptions,
}

/// The state of a connection's link to its broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// Open (or opening for the first time).
    Open,
    /// Lost, and being recovered.
    Recovering,
    /// Ended for good.
    Closed,
}

impl Shared {
    pub(crate) fn new(proto: lepus_proto::Connection, options: ConnectionOptions) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(Inner {
                proto,
                channels: IdMap::default(),
                error: None,
                writer_idle: false,
                writer_lazy: false,
                acks_unsent: 0,
                reply_bait: false,
                patient: 0,
                inline_tcp: None,
                inline_writing: false,
                last_inline_write: None,
                handoff: VecDeque::new(),
                inline_chunks: VecDeque::new(),
                in_flight: 0,
                publishers_waiting: false,
                connected: None,
                update_secret_waiters: VecDeque::new(),
                tls_failure: None,
                closed_channels: IdMap::default(),
                wake_later: Vec::new(),
                app_sent: false,
                app_sent_seen: None,
                napping: false,
                last_read: None,
                quiet: false,
                read_touched: Vec::new(),
                stats: ConnectionStats::default(),
                unwritten: VecDeque::new(),
                last_write: None,
                lost: None,
                linger: false,
                session: 0,
                recovering: false,
                epoch: 0,
                topology: crate::recovery::Topology::default(),
                address: format!("{}:{}", options.host, options.port),
            }),
            writer_wake: Notify::new(),
            reader_wake: Notify::new(),
            nap_cut: Notify::new(),
            traffic: Notify::new(),
            space: Notify::new(),
            closed: Notify::new(),
            read_paused: AtomicBool::new(false),
            events: Events::default(),
            shutdown: watch::Sender::new(false),
            handles: std::sync::atomic::AtomicUsize::new(0),
            runtime: tokio::runtime::Handle::try_current().ok(),
            session: watch::Sender::new(0),
            link: watch::Sender::new(Link::Open),
            epoch: std::sync::atomic::AtomicU64::new(0),
            writers: watch::Sender::new(0),
            options,
        })
    }

    /// Locks the state. A panic while holding the lock cannot leave the protocol state half
    /// updated in a way that matters more than the panic itself, so poisoning is ignored.
    pub(crate) fn lock(&self) -> Locked<'_> {
        Locked(Some(self.state.lock().unwrap_or_else(|p| p.into_inner())))
    }

    /// Waits while the connection is being recovered, at most `limit` (`None`: without
    /// limit); an error when it ended for good instead, or the limit passed.
    pub(crate) async fn ready(&self, limit: Option<std::time::Duration>) -> Result<()> {
        if *self.link.borrow() == Link::Open {
            return Ok(());
        }
        let mut link = self.link.subscribe();
        let settled = async {
            let _ = link.wait_for(|l| *l != Link::Recovering).await;
        };
        match limit {
            Some(after) => {
                if tokio::time::timeout(after, settled).await.is_err() {
                    return Err(Error::Timeout {
                        what: "the connection to be recovered",
                        after,
                    });
                }
            }
            None => settled.await,
        }
        match *self.link.borrow() {
            Link::Open => Ok(()),
            _ => Err(self.lock().closed_error()),
        }
    }

    /// The current link's epoch (see [`Inner::epoch`]).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Writes the queued output from the calling thread, when the writer task is idle and the
    /// transport is plain TCP. Called where a caller is about to wait for the broker (a
    /// confirm, a delivery): its own thread is running anyway, while waking the writer task
    /// would cost a cross-thread wake-up. A write the socket cannot take at once is handed to
    /// the writer task, in order.
    pub(crate) fn flush_inline(&self) {
        for _ in 0..2 {
            let (tcp, mut chunks) = {
                let mut inner = self.lock();
                if !inner.writer_idle || inner.inline_writing || inner.proto.pending_bytes() == 0 {
                    return;
                }
                let Some(tcp) = inner.inline_tcp.clone() else {
                    return;
                };
                inner.inline_writing = true;
                let mut chunks = std::mem::take(&mut inner.inline_chunks);
                let now = now();
                inner.last_inline_write = Some(now);
                let n = inner.proto.poll_transmit(now, &mut chunks);
                inner.in_flight += n;
                inner.acks_unsent = 0;
                inner.reply_bait = false;
                inner.patient = 0;
                (tcp, chunks)
            };
            let stream = tcp.stream();
            let mut written = 0;
            let mut writes = 0;
            while !chunks.is_empty() {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let count = fill_slices(&chunks, &mut slices);
                match slices.get(..count).map(|s| stream.try_write_vectored(s)) {
                    Some(Ok(n)) if n > 0 => {
                        written += n;
                        writes += 1;
                        advance(&mut chunks, n);
                    }
                    // Would block, or failed: the writer task takes over (and reports errors).
                    _ => break,
                }
            }
            let mut inner = self.lock();
            inner.inline_writing = false;
            wrote(&mut inner, self, written, writes);
            let leftover = !chunks.is_empty();
            inner.handoff.append(&mut chunks);
            inner.inline_chunks = chunks;
            if leftover || inner.proto.is_closed() {
                inner.writer_idle = false;
                inner.writer_lazy = false;
                self.writer_wake.notify_one();
                return;
            }
            // Output queued meanwhile (by the reader, or another thread) goes on the next pass.
        }
        self.lock().kick_writer(self);
    }
}

/// Points `slices` at the first chunks; returns how many.
fn fill_slices<'a>(chunks: &'a VecDeque<Bytes>, slices: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
    let mut count = 0;
    for (slot, chunk) in slices.iter_mut().zip(chunks.iter()) {
        *slot = IoSlice::new(chunk);
        count += 1;
    }
    count
}

/// Drops the first `n` written bytes from `chunks`.
fn advance(chunks: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = chunks.front_mut() else {
            break;
        };
        if n >= front.len() {
            n -= front.len();
            chunks.pop_front();
        } else {
            front.advance(n);
            n = 0;
        }
    }
}

/// Accounts for `written` bytes leaving, and lets waiting publishers go once the buffer drained.
fn wrote(inner: &mut Inner, shared: &Shared, written: usize, writes: u64) {
    if written == 0 {
        return;
    }
    inner.in_flight = inner.in_flight.saturating_sub(written);
    inner.stats.writes += writes;
    inner.stats.bytes_written += written as u64;
    #[cfg(feature = "metrics")]
    shared.events.metrics.bytes_sent.increment(written as u64);
    inner.last_write = Some(now());
    if std::mem::take(&mut inner.quiet) {
        shared.traffic.notify_one();
    }
    let done = inner.stats.bytes_written;
    while inner.unwritten.front().is_some_and(|&end| end <= done) {
        inner.unwritten.pop_front();
        inner.stats.messages_written += 1;
    }
    if inner.publishers_waiting && inner.buffered() < shared.options.write_buffer_high_water / 2 {
        inner.publishers_waiting = false;
        shared.space.notify_waiters();
    }
}

/// Counts the user's handles; when the last one is dropped, the connection is closed
/// gracefully in the background (the driver tasks hold the shared state too, so without this
/// a forgotten connection would stay open for good).
pub(crate) struct HandleGuard(Arc<Shared>);

impl HandleGuard {
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        shared.handles.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(shared))
    }
}

impl Clone for HandleGuard {
    fn clone(&self) -> Self {
        Self::new(&self.0)
    }
}

impl Drop for HandleGuard {
    /// The last handle is gone: queue `connection.close` behind everything published, write
    /// what the socket takes at once from this thread, and let a background task see the
    /// close through (or log what it could not send). Nothing here blocks.
    fn drop(&mut self) {
        if self.0.handles.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        {
            let inner = self.0.lock();
            if inner.error.is_some() || inner.connected.is_some() {
                return;
            }
        }
        let started = now();
        if !begin_close(&self.0, "every lepus handle was dropped") {
            return;
        }
        // If the runtime shuts down next (an `async fn main` returning), the writer task may
        // never run again: what is written here is what surely goes out.
        self.0.flush_inline();
        let Some(runtime) = &self.0.runtime else {
            return;
        };
        let shared = Arc::clone(&self.0);
        drop(runtime.spawn(async move {
            if let Err(e) = finish_close(&shared, started).await {
                tracing::warn!(
                    host = %shared.options.host,
                    error = %e,
                    "connection dropped without close() did not close cleanly"
                );
            }
        }));
    }
}

/// Closes the connection gracefully: queues `connection.close` behind everything already
/// queued and waits until the broker's close-ok ends it. The close timeout bounds the time
/// without progress, not the whole close: while the socket keeps taking bytes, a large
/// backlog is written to the end.
///
/// Returns `Ok` when the connection ended cleanly with nothing published left unwritten,
/// [`Error::Unsent`] when published messages were left unwritten (now or when the connection
/// failed earlier), and [`Error::Timeout`] when everything was written but close-ok never
/// came.
pub(crate) async fn close(shared: &Arc<Shared>, reason: &str) -> Result<()> {
    let started = now();
    if !begin_close(shared, reason) {
        return shared.lock().lost.clone().map_or(Ok(()), Err);
    }
    shared.flush_inline();
    finish_close(shared, started).await
}

/// Queues `connection.close`; returns `false` when the connection had already ended.
fn begin_close(shared: &Arc<Shared>, reason: &str) -> bool {
    let mut inner = shared.lock();
    if inner.error.is_some() {
        return false;
    }
    if inner.recovering {
        // No link to close: recovery stops, and the connection ends here.
        inner.retire_link(shared);
        let closed = ConnectionError::LocallyClosed(Close {
            code: ReplyCode::REPLY_SUCCESS,
            text: reason.to_string(),
            class_id: 0,
            method_id: 0,
        });
        terminate(shared, &mut inner, Error::ConnectionClosed(closed));
        return false;
    }
    inner.proto.close(ReplyCode::REPLY_SUCCESS, reason);
    dispatch(shared, &mut inner);
    inner.wake_writer(shared);
    drop(inner);
    // From now on the broker's deliveries are discarded unread: a full consumer buffer must
    // not keep the reader from reading close-ok.
    shared.reader_wake.notify_one();
    true
}

/// Waits for the close begun at `started` to end, giving up after the close timeout without a
/// byte written.
async fn finish_close(shared: &Arc<Shared>, started: Instant) -> Result<()> {
    let limit = shared.options.close_timeout;
    let mut done = shared.shutdown.subscribe();
    let gave_up = loop {
        let since = shared
            .lock()
            .last_write
            .map_or(started, |at| at.max(started));
        let deadline = tokio::time::Instant::from_std(since)
            .checked_add(limit)
            .unwrap_or_else(|| later(limit));
        if tokio::time::timeout_at(deadline, done.wait_for(|closed| *closed))
            .await
            .is_ok()
        {
            break false;
        }
        if shared.lock().last_write.is_none_or(|at| at <= since) {
            break true;
        }
    };
    if gave_up {
        give_up_close(shared, limit);
    }
    // The writer counts its last write when it stops: wait for that (briefly: it stops as
    // soon as it sees the end), so that the stats are exact when close returns.
    let mut writers = shared.writers.subscribe();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        writers.wait_for(|n| *n == 0),
    )
    .await;
    let lost = shared.lock().lost.clone();
    if let Some(lost) = lost {
        return Err(lost);
    }
    if gave_up {
        return Err(Error::Timeout {
            what: "connection.close-ok",
            after: limit,
        });
    }
    Ok(())
}

/// A close made no progress for `limit`: record what was not sent and end the connection
/// (leaving the socket open when everything was written).
fn give_up_close(shared: &Arc<Shared>, limit: std::time::Duration) {
    let mut inner = shared.lock();
    if inner.error.is_some() {
        return;
    }
    let (messages, bytes) = inner.unsent();
    if messages > 0 {
        inner.lost = Some(Error::Unsent {
            messages,
            bytes,
            reason: format!(
                "the broker took no bytes for {} while closing",
                HumanDuration(limit)
            ),
        });
    }
    // Everything was written but close-ok is late: the broker may still be working
    // through its buffers, and closing the socket now would make it drop the rest.
    inner.linger = bytes == 0;
    inner.proto.handle_transport_closed(format!(
        "close made no progress for {}",
        HumanDuration(limit)
    ));
    dispatch(shared, &mut inner);
}

impl Inner {
    /// Wakes the writer after the application queued frames that may make the broker answer
    /// (a request, a publish): such output goes out at once, and the reader reads the answer
    /// without delay.
    #[inline]
    pub(crate) fn wake_writer(&mut self, shared: &Shared) {
        self.note_app_sent(shared);
        self.kick_writer(shared);
    }

    /// Records that the application sent something the broker may answer, and ends a nap of
    /// the reader.
    #[inline]
    fn note_app_sent(&mut self, shared: &Shared) {
        self.app_sent = true;
        self.reply_bait = true;
        if self.napping {
            self.napping = false;
            shared.nap_cut.notify_one();
        }
    }

    /// Wakes the writer if it is waiting for work.
    #[inline]
    pub(crate) fn kick_writer(&mut self, shared: &Shared) {
        if self.writer_idle
            && !self.inline_writing
            && (self.proto.pending_bytes() > 0 || self.proto.is_closed())
        {
            self.writer_idle = false;
            self.writer_lazy = false;
            shared.writer_wake.notify_one();
        }
    }

    /// Queues an ack, nack or reject of `delivery_tag` on the channel `(id, generation)`.
    ///
    /// `epoch` is the link the delivery came over, when known: settling a delivery of a lost
    /// link is refused locally. A tag above the highest delivered on the channel's current
    /// link is refused too: the broker would close the channel with 406 for it.
    pub(crate) fn queue_ack<M: lepus_wire::MethodArgs>(
        &mut self,
        shared: &Shared,
        (channel, generation, epoch): (u16, u64, Option<u64>),
        method: &M,
        delivery_tag: u64,
        multiple: bool,
    ) -> Result<()> {
        self.check(channel, generation)?;
        let stale = epoch.is_some_and(|e| e != self.epoch)
            || self.channels.get(&channel).is_some_and(|slot| {
                delivery_tag > slot.last_delivery_tag && !(multiple && delivery_tag == 0)
            });
        if stale {
            return Err(Error::StaleDelivery { delivery_tag });
        }
        self.proto.send(channel, method)?;
        if let Some(slot) = self.channels.get_mut(&channel) {
            slot.settle(delivery_tag, multiple);
        }
        self.wake_writer_for_ack(shared, channel);
        Ok(())
    }

    /// Like [`wake_writer`](Self::wake_writer), after queuing an acknowledgement on `channel`
    /// (already counted with [`ChannelSlot::settle`]).
    ///
    /// Waking the writer from the application's thread costs a cross-thread wake-up per
    /// batch of acks, the largest cost of consuming. So while the writer is lazy (it wrote
    /// recently and looks again within the write-coalescing delay), the ack waits for the next read,
    /// after which the reader wakes the writer from its own thread, cheaply. It only waits
    /// while the broker can keep sending: if every delivery the prefetch limit allows is
    /// unacknowledged or waiting here, the broker waits for acks, so they go out at once.
    pub(crate) fn wake_writer_for_ack(&mut self, shared: &Shared, channel: u16) {
        self.patient = self.patient.saturating_add(1);
        if self.ack_may_wait(channel) {
            self.acks_unsent += 1;
            self.stats.deferred_acks += 1;
        } else {
            self.kick_writer(shared);
        }
    }

    /// Like [`wake_writer`](Self::wake_writer), after queuing a publish on a channel in
    /// confirm mode. Its publisher will wait for the confirm, and waiting writes the output
    /// from its own thread ([`Shared::flush_inline`]), which is cheaper than waking the
    /// writer from there; if it does not wait, the lazy writer sends it within the
    /// write-coalescing delay.
    ///
    /// A publisher with few confirms outstanding is probably waiting for this one, so the
    /// reader reads its confirm without delay; one far ahead of the broker is not.
    pub(crate) fn wake_writer_for_confirmed_publish(&mut self, shared: &Shared, channel: u16) {
        let deep = self
            .channels
            .get(&channel)
            .is_some_and(|slot| slot.confirms.unsettled() >= NAP_DEEP_CONFIRMS);
        if deep {
            self.patient = self.patient.saturating_add(1);
        } else {
            self.note_app_sent(shared);
        }
        let may_wait = self.writer_idle && self.writer_lazy && self.inline_tcp.is_some();
        if !may_wait {
            self.kick_writer(shared);
        }
    }

    /// Decides, after a read of `bytes` handled at `now`, whether the reader holds off its
    /// next read for `nap` (read coalescing; see the manual's "Wake-ups are the cost").
    ///
    /// Every read costs a wake-up of the reader and of the tasks it hands deliveries and
    /// confirms to, so while the broker streams small batches, reading a little later brings
    /// a larger batch for the same wake-ups. The nap only happens when waiting cannot slow
    /// anything down:
    ///
    /// - the read brought a stream of deliveries or confirms (at least [`NAP_MIN_EVENTS`],
    ///   at a rate that gathers [`NAP_MIN_BATCH`] during the nap), in small reads;
    /// - no reply is awaited, and the application sent nothing lately that the broker may
    ///   answer (only acks, and publishes far ahead of their confirms): not since
    ///   [`NAP_QUIET_FACTOR`] naps, since it may still be answering an earlier read;
    /// - the broker has room to go on meanwhile: for each channel, the prefetch window and
    ///   the outstanding confirms hold [`NAP_SLACK`] times what the nap is expected to bring.
    fn nap_after_read(&mut self, now: Instant, nap: std::time::Duration, bytes: usize) -> bool {
        let since = self.last_read.map(|at| now.saturating_duration_since(at));
        self.last_read = Some(now);
        self.quiet = false;
        self.stats.reads += 1;
        self.stats.bytes_read += bytes as u64;
        if std::mem::take(&mut self.app_sent) {
            self.app_sent_seen = Some(now);
        }
        let app_sent_lately = self.app_sent_seen.is_some_and(|at| {
            now.saturating_duration_since(at) < nap.saturating_mul(NAP_QUIET_FACTOR)
        });
        let mut touched = std::mem::take(&mut self.read_touched);
        // Deliveries and confirms expected during the nap, per one seen in this read; reads
        // in quick succession count as at most eight times their content.
        let scale = match since {
            Some(since) => nap.as_secs_f64() / since.max(nap / 8).as_secs_f64(),
            None => 1.0,
        };
        let acks_unsent = self.acks_unsent;
        let mut events = 0;
        let mut room = true;
        for id in touched.drain(..) {
            let Some(slot) = self.channels.get_mut(&id) else {
                continue;
            };
            let deliveries = std::mem::take(&mut slot.read_deliveries);
            let confirms = std::mem::take(&mut slot.read_confirms);
            events += deliveries + confirms;
            if let Some(limit) = slot.prefetch().filter(|_| deliveries > 0) {
                let free = limit.saturating_sub(slot.unsettled + acks_unsent);
                room &= free as f64 >= NAP_SLACK * scale * deliveries as f64;
            }
            if confirms > 0 {
                let outstanding = slot.confirms.unsettled() as f64;
                room &= outstanding >= NAP_SLACK * scale * confirms as f64;
            }
        }
        self.read_touched = touched;
        if nap.is_zero()
            || app_sent_lately
            || !room
            || bytes >= NAP_MAX_READ
            || events < NAP_MIN_EVENTS
            || (events as f64) * scale < NAP_MIN_BATCH
            || !self.update_secret_waiters.is_empty()
            || self
                .channels
                .values()
                .any(|slot| !slot.waiters.is_empty() || slot.close_waiter.is_some())
        {
            return false;
        }
        self.stats.delayed_reads += 1;
        self.napping = true;
        true
    }

    /// When the connection next gives back memory if it stays quiet: [`SHRINK_AFTER`] past
    /// the last read or write; `None` while it is already quiet.
    fn shrink_at(&self) -> Option<Instant> {
        if self.quiet {
            return None;
        }
        let last = self.last_read.max(self.last_write)?;
        last.checked_add(SHRINK_AFTER)
    }

    /// Gives back the memory a burst of traffic made grow, in the core and in every queue of
    /// the driver that is empty now. The next burst grows them again.
    fn shrink(&mut self) {
        self.quiet = true;
        self.proto.shrink();
        fn empty<T>(queue: &mut VecDeque<T>) {
            if queue.is_empty() {
                *queue = VecDeque::new();
            }
        }
        empty(&mut self.handoff);
        empty(&mut self.inline_chunks);
        empty(&mut self.unwritten);
        empty(&mut self.update_secret_waiters);
        if self.wake_later.is_empty() {
            self.wake_later = Vec::new();
        }
        if self.read_touched.is_empty() {
            self.read_touched = Vec::new();
        }
        for slot in self.channels.values_mut() {
            empty(&mut slot.waiters);
            empty(&mut slot.returned);
            slot.confirms.shrink();
            for queue in slot.consumers.values() {
                queue.shrink();
            }
        }
    }

    /// Whether an acknowledgement just queued on `channel` may wait for the writer.
    fn ack_may_wait(&self, channel: u16) -> bool {
        if !self.writer_idle || !self.writer_lazy {
            return false;
        }
        match self.channels.get(&channel) {
            Some(slot) => match slot.prefetch() {
                None => true,
                Some(limit) => slot.unsettled + self.acks_unsent + 1 < limit,
            },
            None => false,
        }
    }

    /// The error to report for a call on a finished connection.
    pub(crate) fn closed_error(&self) -> Error {
        self.error.clone().unwrap_or_else(|| {
            Error::ConnectionClosed(ConnectionError::TransportClosed(
                "connection is closed".into(),
            ))
        })
    }

    pub(crate) fn check(&self, channel: u16, generation: u64) -> Result<()> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.channels.get(&channel) {
            Some(slot) if slot.generation == generation => Ok(()),
            _ => match self.closed_channels.get(&channel) {
                Some((g, close)) if *g == generation => Err(Error::ChannelClosed(close.clone())),
                _ => Err(Error::ChannelNotOpen(channel)),
            },
        }
    }

    pub(crate) fn buffered(&self) -> usize {
        self.proto.pending_bytes() + self.in_flight
    }

    /// Records a publish just queued, to count it once it is completely written.
    #[inline]
    pub(crate) fn note_publish(&mut self) {
        let end = self.stats.bytes_written + self.buffered() as u64;
        self.unwritten.push_back(end);
        self.stats.messages_published += 1;
    }

    /// Publishes not completely written, and all bytes not written.
    pub(crate) fn unsent(&self) -> (u64, u64) {
        (self.unwritten.len() as u64, self.buffered() as u64)
    }

    /// Stops the tasks of the current link and forgets its transport state; returns how many
    /// published messages were still unwritten (they are lost with the link).
    pub(crate) fn retire_link(&mut self, shared: &Shared) -> u64 {
        let unsent = self.unwritten.len() as u64;
        self.session += 1;
        shared.session.send_replace(self.session);
        self.unwritten.clear();
        self.inline_tcp = None;
        self.handoff.clear();
        self.in_flight = 0;
        self.acks_unsent = 0;
        self.writer_idle = false;
        self.writer_lazy = false;
        self.inline_writing = false;
        self.napping = false;
        self.app_sent = false;
        self.app_sent_seen = None;
        self.last_read = None;
        self.read_touched.clear();
        self.linger = false;
        self.tls_failure = None;
        shared.read_paused.store(false, Ordering::Release);
        shared.writer_wake.notify_one();
        shared.reader_wake.notify_one();
        unsent
    }

    /// Makes `proto` the connection's core for a new link to `address` (whose plain TCP
    /// socket is `inline`, if any); returns the link's session for its tasks.
    pub(crate) fn install_link(
        &mut self,
        shared: &Shared,
        proto: lepus_proto::Connection,
        address: String,
        inline: Option<crate::transport::SharedTcp>,
    ) -> u64 {
        self.retire_link(shared);
        self.proto = proto;
        self.address = address;
        self.inline_tcp = inline;
        self.last_write = None;
        self.session
    }
}

/// The moment `delay` from now; a delay too long for the clock means a year (a huge setting
/// must not panic).
fn later(delay: std::time::Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(delay)
        .or_else(|| now.checked_add(std::time::Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Runs the writer of link `session` until the connection ends or the link is replaced.
pub(crate) async fn writer<W: AsyncWrite + Unpin>(shared: Arc<Shared>, io: W, session: u64) {
    shared.writers.send_modify(|n| *n += 1);
    let mut writer = Writer {
        shared,
        io,
        chunks: VecDeque::new(),
        session,
    };
    writer.run().await;
}

/// The writer task's state. Dropped before the connection ended (the runtime shut down with
/// the connection open), it writes what the socket takes at once and reports the rest.
struct Writer<W: AsyncWrite + Unpin> {
    shared: Arc<Shared>,
    io: W,
    /// Output taken from the core and not yet written.
    chunks: VecDeque<Bytes>,
    /// The link this task writes to (see [`Inner::session`]).
    session: u64,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    async fn run(&mut self) {
        let shared = Arc::clone(&self.shared);
        let mut link = shared.session.subscribe();
        let session = self.session;
        let delay = shared.options.write_coalescing;
        // Re-armed (pushed later) on every lazy wait; it only fires after a quiet spell.
        let mut lazy_timer = std::pin::pin!(tokio::time::sleep(delay));
        // Wrote a batch recently: stays set until the timer finds nothing to send.
        let mut lazy = false;
        // The output last taken held something the broker may answer.
        let mut bait = false;
        // Acks and pipelined publishes in it.
        let mut patient = 0;
        loop {
            let wait = {
                let mut inner = shared.lock();
                if inner.session != session {
                    if inner.error.is_some() && self.chunks.is_empty() {
                        // The connection ended with everything written: end the stream
                        // cleanly (TLS close_notify, FIN) below.
                        break;
                    }
                    // The link was lost and replaced: its socket is no one's to write.
                    return;
                }
                if inner.inline_writing {
                    // A caller is writing; it wakes us if it leaves anything behind.
                    inner.writer_idle = true;
                    Some(shared.writer_wake.notified())
                } else {
                    self.chunks.append(&mut inner.handoff);
                    let n = inner.proto.poll_transmit(now(), &mut self.chunks);
                    inner.in_flight += n;
                    inner.acks_unsent = 0;
                    bait = std::mem::take(&mut inner.reply_bait);
                    patient = std::mem::take(&mut inner.patient);
                    if self.chunks.is_empty() {
                        if inner.proto.is_closed() {
                            break;
                        }
                        inner.writer_idle = true;
                        inner.writer_lazy = lazy;
                        Some(shared.writer_wake.notified())
                    } else {
                        None
                    }
                }
            };
            if let Some(notified) = wait {
                if lazy {
                    lazy_timer.as_mut().reset(later(delay));
                    tokio::select! {
                        biased;
                        () = notified => {}
                        () = lazy_timer.as_mut() => {
                            let mut inner = shared.lock();
                            // Callers writing inline keep the writer lazy: it is their safety net.
                            lazy = inner
                                .last_inline_write
                                .is_some_and(|at| at.elapsed() < delay);
                            if !inner.inline_writing {
                                inner.writer_idle = false;
                                inner.writer_lazy = false;
                            }
                        }
                    }
                } else {
                    notified.await;
                }
                continue;
            }
            // Lazy only after writing a batch of acknowledgements (or publishes far ahead of
            // their confirms) and nothing else: an application waiting for an answer to what
            // it sent, or acking one message at a time, is in a request/reply loop, where the
            // lazy wait costs more than the wake-ups it saves.
            lazy = !delay.is_zero() && !bait && patient >= LAZY_MIN_BATCH;
            while !self.chunks.is_empty() {
                // The slices are made on each poll, on the stack: kept in the task, they would
                // cost every connection a kilobyte.
                let (io, chunks) = (&mut self.io, &self.chunks);
                let write = std::future::poll_fn(|cx| {
                    let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                    let count = fill_slices(chunks, &mut slices);
                    let slices = slices.get(..count).unwrap_or_default();
                    std::pin::Pin::new(&mut *io).poll_write_vectored(cx, slices)
                });
                // A write the peer never takes (a frozen network) must not outlive the
                // connection; the write comes first, so one that finished is counted.
                let result = tokio::select! {
                    biased;
                    result = write => result,
                    _ = link.wait_for(|current| *current != session) => return,
                };
                match result {
                    Ok(0) => {
                        transport_failed(&shared, session, "socket closed while writing".into());
                        return;
                    }
                    Ok(n) => {
                        advance(&mut self.chunks, n);
                        // Progress is visible at once: a close waits while bytes keep moving,
                        // and publishers waiting for room go on as soon as there is some.
                        wrote(&mut shared.lock(), &shared, n, 1);
                    }
                    Err(e) => {
                        transport_failed(&shared, session, format!("write failed: {e}"));
                        return;
                    }
                }
            }
        }
        // A lingering connection stays open for the reader (see `linger_until_closed`).
        if !shared.lock().linger {
            let _ = self.io.flush().await;
            let _ = self.io.shutdown().await;
        }
    }
}

impl<W: AsyncWrite + Unpin> Drop for Writer<W> {
    /// The task was dropped with the connection still open: the runtime is shutting down (an
    /// `async fn main` returned without `close()`). Nothing may block here, so queue the close,
    /// write what the socket takes at once, and end the connection. Over plain TCP a thread of
    /// its own finishes the close on a duplicate of the socket (see [`Linger`]); whatever was
    /// not written by then is reported as a warning.
    fn drop(&mut self) {
        let shared = Arc::clone(&self.shared);
        let _gone = WriterGone(&shared);
        let mut inner = shared.lock();
        if inner.error.is_some() || inner.proto.is_closed() || inner.session != self.session {
            return;
        }
        inner.proto.close(
            ReplyCode::REPLY_SUCCESS,
            "the runtime driving the connection shut down",
        );
        let mut linger = None;
        // Output a caller is writing inline right now would be overtaken: leave it all.
        if !inner.inline_writing {
            self.chunks.append(&mut inner.handoff);
            let n = inner.proto.poll_transmit(now(), &mut self.chunks);
            inner.in_flight += n;
            let written = match inner.inline_tcp.clone() {
                Some(tcp) => {
                    let written = write_now(&mut self.chunks, |slices| {
                        socket2::SockRef::from(tcp.stream()).send_vectored(slices)
                    });
                    linger = Linger::new(&tcp, &inner, &shared.options);
                    written
                }
                None => {
                    let io = &mut self.io;
                    write_now(&mut self.chunks, |slices| poll_write_now(io, slices))
                }
            };
            wrote(&mut inner, &shared, written, 1);
        }
        let (messages, bytes) = inner.unsent();
        if messages > 0 {
            let fate = if linger.is_some() {
                "a background thread goes on writing them, but they are lost if the process \
                 exits first"
            } else {
                "they are lost"
            };
            tracing::warn!(
                host = %shared.options.host,
                messages,
                bytes,
                "the runtime shut down with a connection open: {messages} published messages \
                 were not written yet, and {fate} (only close().await guarantees the flush)"
            );
        }
        inner
            .proto
            .handle_transport_closed("the runtime driving the connection shut down".into());
        dispatch(&shared, &mut inner);
        drop(inner);
        if let Some(linger) = linger {
            linger.start(std::mem::take(&mut self.chunks));
        }
    }
}

/// Counts a writer task out when dropped, after everything else its drop does.
struct WriterGone<'a>(&'a Shared);

impl Drop for WriterGone<'_> {
    fn drop(&mut self) {
        self.0.writers.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Finishes the close of a connection whose runtime shut down, on a thread of its own: writes
/// what the socket could not take at once, then waits for the broker to answer the close and
/// end the connection. It works on a duplicate of the socket, so the connection stays open
/// (no FIN, which would make RabbitMQ drop what it has not read) while the tokio side of it
/// is dropped. If the process exits first, what was not written yet is lost.
struct Linger {
    socket: socket2::Socket,
    /// Bytes written so far on the connection.
    written: u64,
    /// Where each publish not yet written ends (see [`Inner::unwritten`]).
    unwritten: VecDeque<u64>,
    timeout: std::time::Duration,
    frame_max: u32,
    host: String,
}

impl Linger {
    /// Duplicates the socket and tells the write half to leave the connection open when
    /// dropped; `None` (and a normal end) when the socket cannot be duplicated.
    fn new(
        tcp: &crate::transport::SharedTcp,
        inner: &Inner,
        options: &ConnectionOptions,
    ) -> Option<Self> {
        let socket = socket2::SockRef::from(tcp.stream()).try_clone().ok()?;
        tcp.keep_open();
        Some(Self {
            socket,
            written: inner.stats.bytes_written,
            unwritten: inner.unwritten.clone(),
            timeout: options.close_timeout,
            frame_max: inner.proto.negotiated().frame_max,
            host: options.host.clone(),
        })
    }

    /// Runs the rest of the close, writing `chunks` first, on a new thread.
    fn start(self, chunks: VecDeque<Bytes>) {
        let spawned = std::thread::Builder::new()
            .name("lepus-linger".into())
            .spawn(move || self.run(chunks));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a thread to finish closing a connection");
        }
    }

    fn run(self, mut chunks: VecDeque<Bytes>) {
        let Self {
            socket,
            mut written,
            mut unwritten,
            timeout,
            frame_max,
            host,
        } = self;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build();
        let closed = runtime.is_ok_and(|runtime| {
            runtime.block_on(async {
                let Ok(mut stream) = tokio::net::TcpStream::from_std(socket.into()) else {
                    return false;
                };
                while !chunks.is_empty() {
                    let Ok(n) = write_some(&stream, &chunks, timeout).await else {
                        return false;
                    };
                    advance(&mut chunks, n);
                    written += n as u64;
                    while unwritten.front().is_some_and(|&end| end <= written) {
                        unwritten.pop_front();
                    }
                }
                // The broker answers connection.close with close-ok and then closes its side.
                tokio::time::timeout(LINGER.max(timeout), until_close_ok(&mut stream, frame_max))
                    .await
                    .is_ok()
            })
        });
        let lost = unwritten.len();
        if lost > 0 {
            tracing::warn!(
                host = %host,
                messages = lost,
                "closing in the background gave up: {lost} published messages were never written"
            );
        } else if closed {
            tracing::debug!(host = %host, "connection closed in the background");
        } else {
            tracing::debug!(host = %host, "the broker did not answer the close in time");
        }
    }
}

/// Writes from the front of `chunks` once the socket takes bytes, waiting at most `timeout`.
async fn write_some(
    stream: &tokio::net::TcpStream,
    chunks: &VecDeque<Bytes>,
    timeout: std::time::Duration,
) -> std::io::Result<usize> {
    loop {
        tokio::time::timeout(timeout, stream.writable())
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let count = fill_slices(chunks, &mut slices);
        match stream.try_write_vectored(slices.get(..count).unwrap_or_default()) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => return other,
        }
    }
}

/// Writes the front of `chunks` with `write` until it would block or fails; returns how many
/// bytes went out.
fn write_now(
    chunks: &mut VecDeque<Bytes>,
    mut write: impl FnMut(&[IoSlice<'_>]) -> std::io::Result<usize>,
) -> usize {
    let mut written = 0;
    while !chunks.is_empty() {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let count = fill_slices(chunks, &mut slices);
        match write(slices.get(..count).unwrap_or_default()) {
            Ok(n) if n > 0 => {
                written += n;
                advance(chunks, n);
            }
            _ => break,
        }
    }
    written
}

/// One write attempt on `io` that never waits: `WouldBlock` when it is not ready.
fn poll_write_now<W: AsyncWrite + Unpin>(
    io: &mut W,
    slices: &[IoSlice<'_>],
) -> std::io::Result<usize> {
    let mut cx = std::task::Context::from_waker(Waker::noop());
    match std::pin::Pin::new(io).poll_write_vectored(&mut cx, slices) {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
    }
}

/// Runs the reader (and the heartbeat timer) of link `session` until the connection ends or
/// the link is replaced.
pub(crate) async fn reader<R: AsyncRead + Unpin>(shared: Arc<Shared>, mut io: R, session: u64) {
    read(&shared, &mut io, session).await;
    let (linger, frame_max) = {
        let inner = shared.lock();
        (inner.linger, inner.proto.negotiated().frame_max)
    };
    if linger {
        let limit = LINGER.max(shared.options.close_timeout);
        let _ = tokio::time::timeout(limit, until_close_ok(&mut io, frame_max)).await;
    }
}

/// Reads and discards until the broker answers the close (close-ok, or a close of its own)
/// or ends the connection. A connection whose close gave up waiting stays open this long, so
/// that the broker reads everything that was written.
async fn until_close_ok<R: AsyncRead + Unpin>(io: &mut R, frame_max: u32) {
    let mut buf = BytesMut::with_capacity(READ_MIN);
    loop {
        loop {
            match lepus_wire::Frame::decode(&mut buf, frame_max.max(lepus_wire::FRAME_MIN_SIZE)) {
                Ok(Some(lepus_wire::Frame::Method {
                    channel: 0,
                    method: Method::ConnectionCloseOk(_) | Method::ConnectionClose(_),
                })) => return,
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if !matches!(io.read_buf(&mut buf).await, Ok(n) if n > 0) {
            return;
        }
    }
}

/// Makes room in `buf` for the next read: `room` bytes when it runs low, or all that the
/// frame begun at its front still needs, so that a large frame is read straight into one
/// buffer instead of being moved each time the buffer grows (its body is then a slice of
/// that buffer, never copied).
fn reserve_for_next_read(buf: &mut BytesMut, room: usize) {
    let spare = buf.capacity() - buf.len();
    let (frame, frame_rest) = match buf.get(3..lepus_wire::frame::FRAME_HEADER_SIZE) {
        Some(&[s0, s1, s2, s3]) => {
            let total =
                u32::from_be_bytes([s0, s1, s2, s3]) as usize + lepus_wire::frame::FRAME_OVERHEAD;
            // Beyond this the frame grows the buffer step by step: the protocol core has
            // checked the size against frame_max, but the memory is not reserved up front.
            if total <= RESERVE_FRAME_MAX {
                (total, total.saturating_sub(buf.len()))
            } else {
                (0, 0)
            }
        }
        _ => (0, 0),
    };
    if frame > room && frame_rest > spare {
        // A large frame: all of it, and a little room for what follows it.
        buf.reserve(frame_rest + room / 4);
    } else if frame_rest > spare || spare < room / 4 {
        // A full read's room: less would make every read a small one (and read coalescing
        // then holds off after each).
        buf.reserve(room);
    }
}

/// The largest frame whose bytes the reader reserves at once.
const RESERVE_FRAME_MAX: usize = 4 * 1024 * 1024;

/// The reader's loop, until the connection ends or the link is replaced.
async fn read<R: AsyncRead + Unpin>(shared: &Arc<Shared>, io: &mut R, session: u64) {
    let mut buf = BytesMut::with_capacity(READ_MIN);
    // The room a read gets: small while reads are small, a full chunk once one filled it,
    // doubling (up to READ_MAX) while reads keep filling it.
    let mut room = READ_MIN;
    let mut wake: Vec<Waker> = Vec::new();
    let mut link = shared.session.subscribe();
    let coalescing = shared.options.read_coalescing;
    // Set after a read when the next one waits (see `Inner::nap_after_read`).
    let mut nap = false;
    loop {
        if std::mem::take(&mut nap) {
            tokio::select! {
                biased;
                _ = link.wait_for(|current| *current != session) => return,
                () = shared.nap_cut.notified() => {}
                () = tokio::time::sleep_until(later(coalescing)) => {}
            }
            shared.lock().napping = false;
        }
        let (deadline, paused, quiet) = {
            let inner = shared.lock();
            if inner.proto.is_closed() || inner.session != session {
                return;
            }
            let deadline = match (inner.proto.poll_timeout(), inner.shrink_at()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            (
                deadline,
                shared.read_paused.load(Ordering::Acquire),
                inner.quiet,
            )
        };
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let spare = buf.capacity() - buf.len();
        tokio::select! {
            biased;
            _ = link.wait_for(|current| *current != session) => return,
            result = io.read_buf(&mut buf), if !paused => {
                match result {
                    Ok(0) => return transport_failed(shared, session, "connection closed by peer".into()),
                    Ok(n) => {
                        // Slices of a large read, so the lock is never held for long: acks and
                        // publishes from other threads get in between.
                        // Consumers and confirm futures are woken once the whole read is handled,
                        // so they take one batch and do not contend for the lock meanwhile.
                        let now = now();
                        loop {
                            let mut inner = shared.lock();
                            if inner.session != session {
                                return;
                            }
                            let more = inner.proto.handle_input_bounded(now, &mut buf, FRAMES_PER_LOCK);
                            dispatch(shared, &mut inner);
                            inner.kick_writer(shared);
                            wake.append(&mut inner.wake_later);
                            if !more {
                                nap = inner.nap_after_read(now, coalescing, n);
                                #[cfg(feature = "metrics")]
                                shared.events.metrics.bytes_received.increment(n as u64);
                                break;
                            }
                        }
                        wake.drain(..).for_each(Waker::wake);
                    }
                    Err(e) => {
                        if let Some(tls) = crate::transport::tls_failure(&e) {
                            shared.lock().tls_failure = Some(tls);
                        }
                        return transport_failed(shared, session, format!("read failed: {e}"));
                    }
                }
                if matches!(result, Ok(n) if n >= spare) {
                    room = if room < READ_CHUNK { READ_CHUNK } else { (2 * room).min(READ_MAX) };
                }
                reserve_for_next_read(&mut buf, room);
            }
            () = sleep => {
                let mut inner = shared.lock();
                if inner.session != session {
                    return;
                }
                let now = now();
                if inner.shrink_at().is_some_and(|at| at <= now) {
                    inner.shrink();
                    if buf.is_empty() && buf.capacity() > READ_MIN {
                        buf = BytesMut::with_capacity(READ_MIN);
                    }
                    room = READ_MIN;
                }
                if shared.read_paused.load(Ordering::Acquire) {
                    // Not reading is our own choice; it says nothing about the server.
                    inner.proto.reset_receive_timer(now);
                }
                inner.proto.handle_timeout(now);
                dispatch(shared, &mut inner);
                inner.kick_writer(shared);
            }
            // Traffic after a quiet spell: schedule the next shrink.
            () = shared.traffic.notified(), if quiet => {}
            () = shared.reader_wake.notified(), if paused => {
                let inner = shared.lock();
                // Once the connection is closing, deliveries are discarded unread.
                let still_full = inner.proto.is_open()
                    && inner
                        .channels
                        .values()
                        .flat_map(|c| c.consumers.values())
                        .any(|q| q.holds_reader());
                if !still_full {
                    shared.read_paused.store(false, Ordering::Release);
                }
            }
        }
    }
}

/// The transport of link `session` failed.
fn transport_failed(shared: &Arc<Shared>, session: u64, reason: String) {
    let mut inner = shared.lock();
    if inner.session != session {
        // A link already replaced: its end changes nothing.
        return;
    }
    let (messages, bytes) = inner.unsent();
    if messages > 0 && inner.error.is_none() && inner.lost.is_none() {
        inner.lost = Some(Error::Unsent {
            messages,
            bytes,
            reason: reason.clone(),
        });
    }
    inner.proto.handle_transport_closed(reason);
    dispatch(shared, &mut inner);
    inner.kick_writer(shared);
}

/// Routes every pending event of the core to its waiter. Runs with the lock held.
pub(crate) fn dispatch(shared: &Arc<Shared>, inner: &mut Inner) {
    while let Some(event) = inner.proto.poll_event() {
        match event {
            Event::Connected => {
                let n = inner.proto.negotiated();
                tracing::debug!(
                    host = %shared.options.host,
                    channel_max = n.channel_max,
                    frame_max = n.frame_max,
                    heartbeat = n.heartbeat,
                    "connection open"
                );
                if let Some(tx) = inner.connected.take() {
                    let _ = tx.send(Ok(()));
                }
            }
            Event::Reply { channel: 0, .. } => {
                if let Some(tx) = inner.update_secret_waiters.pop_front() {
                    let _ = tx.send(Ok(()));
                }
            }
            Event::Reply { channel, reply } => on_reply(inner, channel, reply),
            Event::Delivery {
                channel,
                deliver,
                message,
            } => on_delivery(shared, inner, channel, deliver, message),
            Event::Returned {
                channel,
                returned,
                message,
            } => {
                #[cfg(feature = "metrics")]
                shared.events.metrics.returns.increment(1);
                let Some(slot) = inner.channels.get_mut(&channel) else {
                    continue;
                };
                let msg = ReturnedMessage {
                    reply_code: returned.reply_code,
                    reply_text: returned.reply_text.to_string_lossy().into_owned(),
                    exchange: returned.exchange,
                    routing_key: returned.routing_key,
                    properties: message.properties,
                    body: message.body,
                };
                // Receivers that were dropped are forgotten here.
                slot.returns_tx.retain(|tx| tx.send(msg.clone()).is_ok());
                if !slot.confirms.is_drained() {
                    slot.returned.push_back(msg);
                }
            }
            Event::Confirm {
                channel,
                delivery_tag,
                multiple,
                ack,
            } => {
                let _settled = on_confirm(inner, channel, delivery_tag, multiple, ack);
                #[cfg(feature = "metrics")]
                {
                    let m = &shared.events.metrics;
                    if ack { &m.confirm_ack } else { &m.confirm_nack }.increment(_settled);
                }
            }
            Event::ConsumerCancelled {
                channel,
                consumer_tag,
            } => {
                inner.topology.consumer_ended(channel, &consumer_tag, false);
                if let Some(q) = inner
                    .channels
                    .get_mut(&channel)
                    .and_then(|s| s.consumers.remove(&consumer_tag))
                {
                    q.end(Some(Error::ConsumerCancelled(consumer_tag)));
                }
            }
            Event::Flow { channel, active } => {
                if let Some(slot) = inner.channels.get_mut(&channel) {
                    slot.flow_paused = !active;
                }
                if active {
                    shared.space.notify_waiters();
                }
            }
            Event::ChannelClosed { channel, close } => on_channel_closed(inner, channel, close),
            Event::Blocked { reason } => {
                tracing::warn!(%reason, "the broker blocked publishing");
                shared.events.send(ConnectionEvent::Blocked(reason));
            }
            Event::Unblocked => {
                shared.events.send(ConnectionEvent::Unblocked);
                shared.space.notify_waiters();
            }
            Event::Closed(error) => on_closed(shared, inner, error),
            _ => {}
        }
    }
}

fn on_reply(inner: &mut Inner, channel: u16, reply: Reply) {
    let Some(slot) = inner.channels.get_mut(&channel) else {
        return;
    };
    if let Reply::Method(Method::BasicCancelOk(ok)) = &reply {
        // The consumer's stream ends after the deliveries that preceded cancel-ok.
        if let Some(q) = slot.consumers.remove(&ok.consumer_tag) {
            q.end(None);
        }
    }
    if let Reply::GetOk { get_ok, .. } = &reply {
        slot.last_delivery_tag = slot.last_delivery_tag.max(get_ok.delivery_tag);
    }
    let Some(waiter) = slot.waiters.pop_front() else {
        return;
    };
    match waiter {
        Waiter::Reply(tx) => {
            let _ = tx.send(Ok(reply));
        }
        Waiter::Consume { tx, queue, no_ack } => {
            if let Reply::Method(Method::BasicConsumeOk(ok)) = &reply {
                if no_ack {
                    slot.no_ack_tags.push(ok.consumer_tag.clone());
                }
                queue.set_tag(ok.consumer_tag.clone());
                slot.consumers.insert(ok.consumer_tag.clone(), queue);
            }
            let _ = tx.send(Ok(reply));
        }
    }
}

fn on_delivery(
    shared: &Arc<Shared>,
    inner: &mut Inner,
    channel: u16,
    deliver: basic::Deliver,
    message: lepus_proto::Message,
) {
    let Some(slot) = inner.channels.get_mut(&channel) else {
        return;
    };
    let generation = slot.generation;
    slot.last_delivery_tag = deliver.delivery_tag;
    let give_back = match slot.consumers.get(&deliver.consumer_tag) {
        // A consumer being cancelled must not stop the reader, which has its cancel-ok to
        // read: what its full buffer cannot take goes back to the queue.
        Some(queue) if queue.is_stopping() && !queue.no_ack && queue.is_full() => true,
        Some(queue) => {
            if !queue.no_ack {
                slot.unsettled += 1;
            }
            let stopping = queue.is_stopping();
            let delivery =
                Delivery::new(shared, channel, generation, queue.no_ack, deliver, message);
            let (full, waker) = queue.push(delivery);
            if full && !stopping {
                shared.read_paused.store(true, Ordering::Release);
            }
            inner.wake_later.extend(waker);
            count_in_read(&mut inner.read_touched, channel, slot, 1, 0);
            return;
        }
        // A delivery for a consumer lepus no longer has: give it back to the queue, unless it
        // was a no-ack consumer, whose deliveries cannot be rejected.
        None => !slot.no_ack_tags.contains(&deliver.consumer_tag),
    };
    if give_back {
        let reject = basic::Reject {
            delivery_tag: deliver.delivery_tag,
            requeue: true,
        };
        let _ = inner.proto.send(channel, &reject);
    }
}

/// Counts deliveries and confirms of the read being handled on `channel`, for
/// [`Inner::nap_after_read`].
fn count_in_read(
    touched: &mut Vec<u16>,
    channel: u16,
    slot: &mut ChannelSlot,
    deliveries: u64,
    confirms: u64,
) {
    if slot.read_deliveries + slot.read_confirms == 0 {
        touched.push(channel);
    }
    slot.read_deliveries += deliveries;
    slot.read_confirms += confirms;
}

fn on_confirm(inner: &mut Inner, channel: u16, tag: u64, multiple: bool, ack: bool) -> u64 {
    let Some(slot) = inner.channels.get_mut(&channel) else {
        return 0;
    };
    // RabbitMQ sends basic.return right before the ack of an unroutable mandatory message;
    // that returned message belongs to the highest sequence number this confirm covers.
    let returned = slot.returned.pop_front().map(Box::new);
    let wake = &mut inner.wake_later;
    let before = slot.confirms.unsettled();
    let tag = slot.confirm_number(tag);
    if let Some(kept) = &mut slot.replay {
        kept.settle(tag, multiple);
    }
    if slot.confirms.settle(tag, multiple, ack, returned, wake) {
        slot.nacked_since_wait = true;
    }
    let settled = before.saturating_sub(slot.confirms.unsettled()) as u64;
    if settled > 0 {
        count_in_read(&mut inner.read_touched, channel, slot, 0, settled);
    }
    if slot.confirms.is_drained() {
        if let Some(n) = &slot.confirms_drained {
            n.notify_waiters();
        }
    }
    settled
}

fn on_channel_closed(inner: &mut Inner, channel: u16, close: Option<Close>) {
    let Some(mut slot) = inner.channels.remove(&channel) else {
        return;
    };
    inner.topology.channel_closed(channel);
    let by_server = close.is_some();
    if let Some(close) = &close {
        tracing::debug!(channel, %close, "channel closed by the broker");
        inner
            .closed_channels
            .insert(channel, (slot.generation, close.clone()));
    }
    let reason = close.clone();
    let error = match close {
        Some(close) => Error::ChannelClosed(close),
        None => Error::ChannelNotOpen(channel),
    };
    // Closed on request, consumers simply end; closed by the broker, they end with its reason.
    fail_slot(&mut slot, &error, by_server, &mut inner.wake_later);
    if let Some(tx) = slot.close_waiter.take() {
        let _ = tx.send(reason);
    }
}

fn fail_slot(
    slot: &mut ChannelSlot,
    error: &Error,
    consumers_see_error: bool,
    wake: &mut Vec<Waker>,
) {
    for waiter in slot.waiters.drain(..) {
        waiter.fail(error.clone());
    }
    for (_, q) in slot.consumers.drain() {
        q.end(consumers_see_error.then(|| error.clone()));
    }
    slot.confirms.fail(error, wake);
    if let Some(n) = &slot.confirms_drained {
        n.notify_waiters();
    }
}

fn on_closed(shared: &Arc<Shared>, inner: &mut Inner, error: ConnectionError) {
    let handshaking = inner.connected.is_some();
    let recoverable = error.is_recoverable();
    let err = match error {
        ConnectionError::ServerClosed(close)
            if handshaking && close.code == ReplyCode::ACCESS_REFUSED =>
        {
            Error::AuthenticationFailed(close)
        }
        ConnectionError::TransportClosed(_) if inner.tls_failure.is_some() => {
            Error::Tls(inner.tls_failure.take().unwrap_or_default())
        }
        ConnectionError::NotAmqp { received } if handshaking => Error::NotAmqp {
            addr: inner.address.clone(),
            received,
        },
        other => Error::ConnectionClosed(other),
    };
    if let Some(tx) = inner.connected.take() {
        let _ = tx.send(Err(err.clone()));
    }
    if inner.recovering {
        // An attempt to recover failed: the recovery task tries again or gives up.
        crate::recovery::attempt_failed(shared, inner, &err);
        return;
    }
    if recoverable && !handshaking && crate::recovery::may_recover(shared, inner) {
        crate::recovery::begin(shared, inner, err);
        return;
    }
    terminate(shared, inner, err);
}

/// Ends the connection for good with `err`: every waiter, consumer and confirm ends.
pub(crate) fn terminate(shared: &Arc<Shared>, inner: &mut Inner, err: Error) {
    for (_, mut slot) in inner.channels.drain() {
        fail_slot(&mut slot, &err, true, &mut inner.wake_later);
        if let Some(tx) = slot.close_waiter.take() {
            let _ = tx.send(None);
        }
    }
    for tx in inner.update_secret_waiters.drain(..) {
        let _ = tx.send(Err(err.clone()));
    }
    // A close this side asked for either ended with the broker's close-ok, which proves
    // that everything before the close frame arrived (the writer may not have counted its
    // last write yet), or was given up on, and `finish_close` or `transport_failed` already
    // said what was lost.
    let locally = matches!(
        err,
        Error::ConnectionClosed(ConnectionError::LocallyClosed(_))
    );
    let (messages, bytes) = if locally { (0, 0) } else { inner.unsent() };
    if messages > 0 && inner.lost.is_none() {
        inner.lost = Some(Error::Unsent {
            messages,
            bytes,
            reason: err.to_string(),
        });
    }
    match &err {
        Error::ConnectionClosed(ConnectionError::LocallyClosed(_)) => {
            tracing::debug!(host = %shared.options.host, messages, "connection closed")
        }
        other if messages > 0 => tracing::warn!(
            host = %shared.options.host,
            error = %other,
            messages,
            bytes,
            "connection ended with {messages} published messages never written"
        ),
        other => tracing::warn!(host = %shared.options.host, error = %other, "connection ended"),
    }
    shared.events.send(ConnectionEvent::Closed(err.to_string()));
    inner.error = Some(err);
    if inner.linger {
        // No FIN until the reader has drained the connection.
        if let Some(tcp) = &inner.inline_tcp {
            tcp.keep_open();
        }
    }
    inner.inline_tcp = None;
    inner.recovering = false;
    // The link's tasks stop (a lingering reader first drains the socket).
    inner.session += 1;
    shared.session.send_replace(inner.session);
    shared.link.send_replace(Link::Closed);
    shared.space.notify_waiters();
    shared.closed.notify_waiters();
    shared.shutdown.send_replace(true);
    shared.reader_wake.notify_one();
    shared.writer_wake.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame header at the front of a buffer, for a frame of `size` payload bytes.
    fn partial_frame(size: u32, have: usize) -> BytesMut {
        let mut buf = BytesMut::with_capacity(have);
        buf.extend_from_slice(&[3, 0, 1]);
        buf.extend_from_slice(&size.to_be_bytes());
        buf.resize(have, 0);
        buf
    }

    #[test]
    fn a_large_frame_gets_its_whole_size_reserved_and_a_small_one_a_full_read() {
        // 100 KiB of a 1 MiB frame are in: the rest is reserved at once.
        let mut buf = partial_frame(1 << 20, 100 * 1024);
        reserve_for_next_read(&mut buf, READ_CHUNK);
        assert!(buf.capacity() >= (1 << 20) + lepus_wire::frame::FRAME_OVERHEAD);
        assert!(buf.capacity() < (1 << 20) + READ_CHUNK);
        // A small frame that does not fit the spare room: a full read's room, not just what
        // the frame needs (small reads would each be followed by a coalescing pause).
        let mut buf = partial_frame(200, 100);
        assert!(buf.capacity() - buf.len() < 200);
        reserve_for_next_read(&mut buf, READ_CHUNK);
        assert!(buf.capacity() - buf.len() >= READ_CHUNK);
        // A frame larger than the reservation limit grows the buffer a read at a time.
        let mut buf = partial_frame(u32::MAX - 8, 100);
        reserve_for_next_read(&mut buf, READ_CHUNK);
        assert!(buf.capacity() < 2 * READ_CHUNK);
    }

    fn lazy_writer_with(slot: ChannelSlot) -> Arc<Shared> {
        let options = ConnectionOptions::default();
        let shared = Shared::new(
            lepus_proto::Connection::new(options.proto_config()),
            options,
        );
        {
            let mut inner = shared.lock();
            inner.writer_idle = true;
            inner.writer_lazy = true;
            inner.channels.insert(1, Box::new(slot));
        }
        shared
    }

    /// Acks the writer left waiting, one after another, until one wakes it.
    fn acks_left_waiting(shared: &Shared) -> u64 {
        let mut inner = shared.lock();
        for waited in 0..10_000 {
            inner.wake_writer_for_ack(shared, 1);
            if !inner.writer_idle {
                return waited;
            }
        }
        10_000
    }

    #[test]
    fn without_a_prefetch_limit_acks_wait_for_the_writer() {
        let shared = lazy_writer_with(ChannelSlot::default());
        assert_eq!(acks_left_waiting(&shared), 10_000);
    }

    #[test]
    fn acks_wait_only_while_the_broker_can_keep_sending() {
        // Prefetch 10 with 5 deliveries unacknowledged: the broker may have 9 out, so 4 acks
        // can wait; the fifth would let the window fill, and goes out.
        let shared = lazy_writer_with(ChannelSlot {
            prefetch_consumer: 10,
            unsettled: 5,
            ..ChannelSlot::default()
        });
        assert_eq!(acks_left_waiting(&shared), 4);
        assert_eq!(shared.lock().acks_unsent, 4);

        // With prefetch 1 the broker always waits for the ack.
        let shared = lazy_writer_with(ChannelSlot {
            prefetch_channel: 1,
            ..ChannelSlot::default()
        });
        assert_eq!(acks_left_waiting(&shared), 0);

        // The tighter of the two limits counts.
        let shared = lazy_writer_with(ChannelSlot {
            prefetch_consumer: 100,
            prefetch_channel: 3,
            ..ChannelSlot::default()
        });
        assert_eq!(acks_left_waiting(&shared), 2);
    }

    #[test]
    fn a_writer_that_has_been_quiet_is_woken_by_the_first_ack() {
        let shared = lazy_writer_with(ChannelSlot::default());
        shared.lock().writer_lazy = false;
        assert_eq!(acks_left_waiting(&shared), 0);
    }

    /// A connection whose channel 1 has just read `deliveries` and `confirms`, 200 µs after
    /// the previous read, with a 1 ms nap allowed.
    fn after_read(slot: ChannelSlot, deliveries: u64, confirms: u64) -> (Arc<Shared>, Instant) {
        let shared = lazy_writer_with(ChannelSlot {
            read_deliveries: deliveries,
            read_confirms: confirms,
            ..slot
        });
        let now = now();
        {
            let mut inner = shared.lock();
            inner.read_touched.push(1);
            inner.last_read = now.checked_sub(std::time::Duration::from_micros(200));
        }
        (shared, now)
    }

    const NAP: std::time::Duration = std::time::Duration::from_millis(1);

    /// A channel consuming with prefetch 1000, `unsettled` deliveries not yet acked.
    fn window(unsettled: u64) -> ChannelSlot {
        ChannelSlot {
            prefetch_consumer: 1000,
            unsettled,
            ..ChannelSlot::default()
        }
    }

    fn naps(shared: &Shared, now: Instant, bytes: usize) -> bool {
        shared.lock().nap_after_read(now, NAP, bytes)
    }

    #[test]
    fn a_stream_of_deliveries_with_room_in_the_window_is_read_in_larger_batches() {
        // 10 deliveries 200 µs apart: about 50 expected in 1 ms, and 900 free in the window.
        let (shared, now) = after_read(window(100), 10, 0);
        assert!(naps(&shared, now, 2000));
        let inner = shared.lock();
        assert!(inner.napping);
        assert_eq!((inner.stats.reads, inner.stats.delayed_reads), (1, 1));
        // The per-read counts start again.
        assert!(inner.read_touched.is_empty());
        assert_eq!(inner.channels.get(&1).map(|s| s.read_deliveries), Some(0));
    }

    #[test]
    fn no_nap_when_the_prefetch_window_could_fill_meanwhile() {
        // 50 expected during the nap, but only 60 free: twice the expected is needed.
        let (shared, now) = after_read(window(940), 10, 0);
        assert!(!naps(&shared, now, 2000));
        assert!(!shared.lock().napping);
        // Acks not yet written still count against the window.
        let (shared, now) = after_read(window(800), 10, 0);
        shared.lock().acks_unsent = 150;
        assert!(!naps(&shared, now, 2000));
    }

    #[test]
    fn confirms_nap_only_with_enough_outstanding() {
        let deep = {
            let mut slot = ChannelSlot::default();
            (1..=1000).for_each(|seq| slot.confirms.push(seq));
            slot
        };
        let (shared, now) = after_read(deep, 0, 20);
        assert!(naps(&shared, now, 100));
        let shallow = {
            let mut slot = ChannelSlot::default();
            (1..=150).for_each(|seq| slot.confirms.push(seq));
            slot
        };
        // 100 expected during the nap, 150 outstanding: the publisher could run dry.
        let (shared, now) = after_read(shallow, 0, 20);
        assert!(!naps(&shared, now, 100));
    }

    #[test]
    fn no_nap_when_a_reply_may_be_awaited() {
        let streaming = || window(0);
        // The application sent a request (or a publish) since the last read.
        let (shared, now) = after_read(streaming(), 10, 0);
        shared.lock().wake_writer(&shared);
        assert!(!naps(&shared, now, 2000));
        // A request is waiting for its reply.
        let (shared, now) = after_read(streaming(), 10, 0);
        let (tx, _rx) = oneshot::channel();
        if let Some(slot) = shared.lock().channels.get_mut(&1) {
            slot.waiters.push_back(Waiter::Reply(tx));
        }
        assert!(!naps(&shared, now, 2000));
        // Acks are not requests.
        let (shared, now) = after_read(streaming(), 10, 0);
        shared.lock().wake_writer_for_ack(&shared, 1);
        assert!(naps(&shared, now, 2000));
    }

    #[test]
    fn no_nap_for_a_while_after_the_application_sent_a_request() {
        // The application answers deliveries of earlier reads: a request seen by a read 5 ms
        // ago still counts, one seen 20 ms ago no longer does.
        let (shared, now) = after_read(ChannelSlot::default(), 10, 0);
        shared.lock().app_sent_seen = now.checked_sub(std::time::Duration::from_millis(5));
        assert!(!naps(&shared, now, 2000));
        let (shared, now) = after_read(ChannelSlot::default(), 10, 0);
        shared.lock().app_sent_seen = now.checked_sub(std::time::Duration::from_millis(20));
        assert!(naps(&shared, now, 2000));
    }

    #[test]
    fn no_nap_for_a_trickle_large_reads_or_when_turned_off() {
        let streaming = || window(0);
        // Three deliveries are not a stream.
        let (shared, now) = after_read(streaming(), 3, 0);
        assert!(!naps(&shared, now, 600));
        // Ten deliveries 5 ms after the previous read: 2 expected per millisecond.
        let (shared, now) = after_read(streaming(), 10, 0);
        shared.lock().last_read = now.checked_sub(std::time::Duration::from_millis(5));
        assert!(!naps(&shared, now, 2000));
        // A read this large already amortises its wake-up.
        let (shared, now) = after_read(streaming(), 10, 0);
        assert!(!naps(&shared, now, NAP_MAX_READ));
        // Zero turns read coalescing off.
        let (shared, now) = after_read(streaming(), 10, 0);
        assert!(!shared
            .lock()
            .nap_after_read(now, std::time::Duration::ZERO, 2000));
    }

    #[test]
    fn a_request_during_a_nap_ends_it() {
        let (shared, now) = after_read(ChannelSlot::default(), 10, 0);
        assert!(naps(&shared, now, 2000));
        let cut = shared.nap_cut.notified();
        let mut cut = std::pin::pin!(cut);
        let waker = Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        use std::future::Future;
        assert!(cut.as_mut().poll(&mut cx).is_pending());
        shared.lock().wake_writer(&shared);
        assert!(cut.as_mut().poll(&mut cx).is_ready());
        assert!(!shared.lock().napping);
    }

    #[test]
    fn a_deeply_pipelined_confirmed_publish_is_not_a_request() {
        let mut slot = ChannelSlot::default();
        (1..NAP_DEEP_CONFIRMS as u64).for_each(|seq| slot.confirms.push(seq));
        let shared = lazy_writer_with(slot);
        let mut inner = shared.lock();
        inner.wake_writer_for_confirmed_publish(&shared, 1);
        assert!(std::mem::take(&mut inner.app_sent));
        if let Some(slot) = inner.channels.get_mut(&1) {
            slot.confirms.push(NAP_DEEP_CONFIRMS as u64);
        }
        inner.wake_writer_for_confirmed_publish(&shared, 1);
        assert!(!inner.app_sent);
    }

    #[test]
    fn confirm_numbers_go_on_across_recoveries_and_replays() {
        // Before any loss the broker's numbers are lepus's.
        let mut slot = ChannelSlot::default();
        assert_eq!(slot.confirm_number(1), 1);
        // Lost after 10 publishes, of which 4, 7 and 9 were published again first on the
        // new link: the broker's 1-3 stand for them, its 4 is lepus's 11.
        slot.published_seq = 10;
        slot.replayed = vec![4, 7, 9];
        slot.confirm_offset = slot.published_seq - 3;
        let numbers: Vec<u64> = (1..=5).map(|t| slot.confirm_number(t)).collect();
        assert_eq!(numbers, [4, 7, 9, 11, 12]);
        // Without replays, numbering just goes on.
        slot.replayed.clear();
        slot.confirm_offset = 10;
        assert_eq!(slot.confirm_number(1), 11);
    }

    #[test]
    fn settling_counts_single_and_multiple_acks() {
        let mut slot = ChannelSlot {
            unsettled: 10,
            last_delivery_tag: 10,
            ..ChannelSlot::default()
        };
        slot.settle(3, false);
        assert_eq!(slot.unsettled, 9);
        // A multiple ack up to 8 leaves at most the two later deliveries.
        slot.settle(8, true);
        assert_eq!(slot.unsettled, 2);
        slot.settle(10, true);
        assert_eq!(slot.unsettled, 0);
        slot.settle(10, false);
        assert_eq!(slot.unsettled, 0);
    }
}
