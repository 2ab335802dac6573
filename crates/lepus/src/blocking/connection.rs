//! The blocking connection: owns the I/O thread, opens channels, drains events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lepus_proto::Negotiated;
use lepus_wire::{FieldTable, LongStr};
use tokio::sync::{broadcast, mpsc};

use super::channel::Channel;
use super::dispatch::{Dispatch, Item, Ready};
use super::event::{Drained, Event};
use super::runtime::Io;
use crate::config::ConnectionOptions;
use crate::driver::ConnectionEvent;
use crate::error::Result;

/// An open AMQP connection, with its own I/O thread.
///
/// [`connect`](Self::connect) starts a thread named `lepus-io` that runs the async client's
/// reader and writer tasks: heartbeats go out and deliveries are buffered while your threads
/// do something else. Every other method blocks the calling thread until its work is done.
///
/// The `Connection` owns the connection: dropping it closes it (in the background, flushing
/// what was published first) even if channels are still around; they then fail with
/// [`Error::ConnectionClosed`](crate::Error::ConnectionClosed). The I/O thread stops when the
/// last handle (connection, channel or consumer) is gone, after the close finished. Call
/// [`close`](Self::close) to wait for the broker's close-ok and to learn whether everything
/// published was sent; a close on drop can only report a loss through a `tracing` warning.
///
/// `Connection` is `Send + Sync` but not `Clone`: share it with `&Connection` (scoped threads)
/// or an `Arc`. Every method may be called from several threads at once, including
/// [`drain_events`](Self::drain_events).
///
/// # Panics
///
/// Every blocking method panics when called from inside an async runtime; see the
/// [module docs](super#calling-from-async-code).
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), lepus::Error> {
/// // A RabbitMQ URL looks like "amqp://guest:guest@localhost:5672/%2f"; "memory://" is an
/// // in-process broker (see `lepus::memory`).
/// let conn = lepus::blocking::Connection::connect("memory://")?;
/// let ch = conn.open_channel()?;
/// // ... use the channel ...
/// # drop(ch);
/// conn.close()?;
/// # Ok(()) }
/// ```
pub struct Connection {
    inner: Arc<Inner>,
}

/// What the connection shares with its channels and consumers.
pub(super) struct Inner {
    pub(super) conn: crate::Connection,
    pub(super) dispatch: Arc<Dispatch>,
    pub(super) io: Io,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: close on the I/O thread (flushing publishes, waiting at
        // most the close timeout for close-ok), then stop it.
        self.io.shutdown(Some(self.conn.clone()));
    }
}

impl Connection {
    /// The async connection underneath: the same connection, for a layer built on the async
    /// API (such as `lepus-messaging`'s blocking API) that runs its futures here with
    /// [`block_on`](Self::block_on).
    pub fn as_async(&self) -> &crate::Connection {
        &self.inner.conn
    }

    /// Runs a future of the async API to completion on the calling thread, inside this
    /// connection's runtime (the I/O thread keeps driving the socket and timers meanwhile).
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime, as every blocking method.
    #[track_caller]
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.inner.io.block_on(future)
    }

    /// Starts the I/O thread and connects to the broker at `uri` (see
    /// [`ConnectionOptions::from_uri`]).
    ///
    /// # Errors
    ///
    /// As [`crate::Connection::connect`]; [`Error::Io`](crate::Error::Io) when the thread or
    /// its runtime cannot be started.
    #[track_caller]
    pub fn connect(uri: &str) -> Result<Self> {
        Self::connect_with(ConnectionOptions::from_uri(uri)?)
    }

    /// Starts the I/O thread and connects with the given options.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    #[track_caller]
    pub fn connect_with(options: ConnectionOptions) -> Result<Self> {
        let io = Io::start()?;
        let conn = io.block_on(crate::Connection::connect_with(options))?;
        let (tx, rx) = mpsc::unbounded_channel();
        io.spawn(forward_events(conn.events(), tx));
        let dispatch = Dispatch::new(rx);
        // A block already in force when we subscribed would otherwise go unreported.
        if let Some(reason) = conn.blocked() {
            dispatch.push_event(Event::Blocked { reason });
        }
        Ok(Self {
            inner: Arc::new(Inner { conn, dispatch, io }),
        })
    }

    /// Opens a channel.
    ///
    /// # Errors
    ///
    /// As [`crate::Connection::open_channel`].
    #[track_caller]
    pub fn open_channel(&self) -> Result<Channel> {
        let channel = self.inner.io.block_on(self.inner.conn.open_channel())?;
        Channel::open(channel, Arc::clone(&self.inner))
    }

    /// Waits for events and dispatches them: runs consumer callbacks for deliveries, and
    /// returns what else the broker sent ([`Event`]).
    ///
    /// Returns [`Drained::Events`] as soon as at least one event was dispatched (taking at
    /// most one delivery per consumer per call, plus every other event that is ready), or
    /// [`Drained::TimedOut`] when `timeout` passes first; `None` waits without limit, and a
    /// zero timeout dispatches only what is ready now. Callbacks run on the calling thread.
    ///
    /// Several threads may drain at once: each consumer's callback runs on one thread at a
    /// time, and different consumers' callbacks may run in parallel.
    ///
    /// Unlike py-amqp's `drain_events`, this is not what keeps the connection alive:
    /// heartbeats and reading go on in the I/O thread whether or not anyone drains.
    ///
    /// # Errors
    ///
    /// The connection's error once it has closed (by [`close`](Self::close), the broker, a
    /// missed heartbeat or a network failure). Callbacks are then dropped.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime, and when a callback panics (the panic goes on
    /// unwinding; the callback stays registered, and deliveries taken in the same call that
    /// had not reached their callback are rejected with requeue).
    ///
    /// # Examples
    ///
    /// A worker that stops on Ctrl-C or after ten idle seconds:
    ///
    /// ```
    /// # fn demo(conn: &lepus::blocking::Connection, stop: &std::sync::atomic::AtomicBool)
    /// # -> Result<(), lepus::Error> {
    /// use std::sync::atomic::Ordering;
    /// use std::time::Duration;
    /// use lepus::blocking::{Drained, Event};
    /// use lepus::BasicConsumeOptions;
    ///
    /// let ch = conn.open_channel()?;
    /// # ch.queue_declare("jobs", lepus::QueueDeclareOptions::default())?;
    /// # let (options, props) = (lepus::BasicPublishOptions::default(), lepus::BasicProperties::default());
    /// # ch.basic_publish("", "jobs", options, &props, "job 1")?;
    /// ch.basic_consume("jobs", "", BasicConsumeOptions::default(), |_ch, delivery| {
    ///     let _ = delivery.ack();
    /// })?;
    /// let mut idle = 0;
    /// while !stop.load(Ordering::Relaxed) && idle < 10 {
    ///     match conn.drain_events(Some(Duration::from_secs(1)))? {
    ///         Drained::TimedOut => idle += 1,
    ///         Drained::Events(events) => {
    ///             idle = 0;
    ///             for event in events {
    ///                 if let Event::ConsumerCancelled { consumer_tag, .. } = event {
    ///                     eprintln!("{consumer_tag} was cancelled by the broker");
    ///                 }
    ///             }
    ///         }
    ///     }
    /// }
    /// # Ok(()) }
    /// # fn main() -> Result<(), lepus::Error> {
    /// # use std::sync::atomic::{AtomicBool, Ordering};
    /// # static STOP: AtomicBool = AtomicBool::new(false);
    /// # // Stands in for Ctrl-C: stop a moment after the start.
    /// # std::thread::spawn(|| {
    /// #     std::thread::sleep(std::time::Duration::from_millis(200));
    /// #     STOP.store(true, Ordering::Relaxed);
    /// # });
    /// # let conn = lepus::blocking::Connection::connect("memory://")?;
    /// # demo(&conn, &STOP)?;
    /// # conn.close()
    /// # }
    /// ```
    #[track_caller]
    pub fn drain_events(&self, timeout: Option<Duration>) -> Result<Drained> {
        // A timeout too large for an `Instant` is no limit at all.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let polled = self.inner.io.block_on(async {
                let ready =
                    std::future::poll_fn(|cx| self.inner.dispatch.poll_ready(&self.inner.conn, cx));
                match deadline {
                    Some(at) => tokio::time::timeout_at(at.into(), ready).await.ok(),
                    None => Some(ready.await),
                }
            });
            let items = match polled {
                None => return Ok(Drained::TimedOut),
                Some(Ready::Closed(error)) => {
                    self.inner.dispatch.clear();
                    return Err(match error {
                        Some(e) => e,
                        None => self.inner.io.block_on(self.inner.conn.closed()),
                    });
                }
                Some(Ready::Batch(items)) => items,
            };
            let mut events = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Item::Event(event) => events.push(event),
                    Item::Delivery(lease) => events.extend(lease.run()),
                }
            }
            // Empty only when every delivery taken belonged to a consumer cancelled meanwhile
            // (they were given back): wait on.
            if !events.is_empty() {
                return Ok(Drained::Events(events));
            }
        }
    }

    /// Closes the connection gracefully: everything published before is sent first, then
    /// `connection.close`; waits for the broker's close-ok. The close timeout bounds the time
    /// without progress: a backlog is written to the end while the socket keeps taking
    /// bytes. Every channel and consumer ends; callbacks are dropped. Closing a connection
    /// that has ended returns `Ok` again, or the same error if messages were left unsent.
    ///
    /// # Errors
    ///
    /// As [`crate::Connection::close`].
    #[track_caller]
    pub fn close(&self) -> Result<()> {
        let result = self.inner.io.block_on(self.inner.conn.close());
        self.inner.dispatch.clear();
        result
    }

    /// Whether the connection is open.
    pub fn is_open(&self) -> bool {
        self.inner.conn.is_open()
    }

    /// The broker's reason, while it blocks publishing (`connection.blocked`).
    pub fn blocked(&self) -> Option<String> {
        self.inner.conn.blocked()
    }

    /// The properties the broker sent: product, version, platform, capabilities.
    pub fn server_properties(&self) -> FieldTable {
        self.inner.conn.server_properties()
    }

    /// The negotiated channel_max, frame_max and heartbeat.
    pub fn negotiated(&self) -> Negotiated {
        self.inner.conn.negotiated()
    }

    /// How many reads and writes the connection made so far, and how many bytes they moved.
    pub fn stats(&self) -> crate::ConnectionStats {
        self.inner.conn.stats()
    }

    /// Replaces the connection's credentials (`connection.update-secret`) and waits for the
    /// broker to accept them.
    ///
    /// # Errors
    ///
    /// As [`crate::Connection::update_secret`].
    #[track_caller]
    pub fn update_secret(&self, secret: impl Into<LongStr>, reason: &str) -> Result<()> {
        self.inner
            .io
            .block_on(self.inner.conn.update_secret(secret, reason))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Callbacks may hold channels, which hold `inner`: dropping them breaks the cycle.
        self.inner.dispatch.clear();
        // Close now even if channels outlive this handle, without blocking here: the close
        // runs on the I/O thread. If this was the last handle, `Inner::drop` waits for it.
        let conn = self.inner.conn.clone();
        self.inner.io.spawn(async move {
            if let Err(e) = conn.close().await {
                tracing::warn!(error = %e, "closing a dropped connection failed");
            }
        });
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("inner", &self.inner.conn)
            .finish()
    }
}

/// Copies the connection's broadcast events into the dispatcher's queue, where
/// `drain_events` can poll them. Ends with the connection.
async fn forward_events(
    mut events: broadcast::Receiver<ConnectionEvent>,
    tx: mpsc::UnboundedSender<ConnectionEvent>,
) {
    loop {
        match events.recv().await {
            Ok(event) => {
                let last = matches!(event, ConnectionEvent::Closed(_));
                if tx.send(event).is_err() || last {
                    return;
                }
            }
            // Missed blocked/unblocked notices; the newest (and `Closed`) still come.
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
