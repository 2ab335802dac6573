//! The connection handle.

use std::sync::Arc;

use lepus_proto::Negotiated;
use lepus_wire::{FieldTable, LongStr};
use tokio::sync::{broadcast, oneshot};

use crate::channel::Channel;
use crate::config::ConnectionOptions;
use crate::driver::{self, ChannelSlot, ConnectionEvent, ConnectionStats, HandleGuard, Shared};
use crate::error::{Error, Result};
use crate::transport;

/// An open AMQP connection. Cheap to clone; every clone is the same connection.
///
/// Two background tasks on the current tokio runtime do the I/O: they keep heartbeats going and
/// deliveries flowing whatever the application is doing. They end when the connection closes.
///
/// **Only [`close`](Self::close)`.await` guarantees that everything published was sent**, and
/// it says how many messages were not when it cannot. When every handle (connections,
/// channels, consumers) is dropped without it, lepus writes what the socket takes at once and
/// closes in the background, which works as long as the runtime keeps running. When the
/// runtime shuts down first (an `async fn main` returning, a test ending), what the socket
/// could not take at once is lost, with a `tracing` warning giving the number of messages.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lepus::Error> {
/// // A RabbitMQ URL looks like "amqp://guest:guest@localhost:5672/%2f"; "memory://" is an
/// // in-process broker (see `lepus::memory`).
/// let conn = lepus::Connection::connect("memory://").await?;
/// let ch = conn.open_channel().await?;
/// // ... use the channel ...
/// # drop(ch);
/// conn.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    _guard: HandleGuard,
}

impl Connection {
    /// Connects to the broker at `uri` (see [`ConnectionOptions::from_uri`]).
    ///
    /// # Errors
    ///
    /// [`Error::Uri`] for a bad URI, [`Error::Connect`] when the TCP connection fails,
    /// [`Error::Tls`], [`Error::AuthenticationFailed`] for refused credentials,
    /// [`Error::ConnectionClosed`] when the broker refuses (e.g. 530 for an unknown vhost),
    /// [`Error::Timeout`] when a step takes longer than its limit, and [`Error::NotAmqp`] when
    /// the server speaks another protocol. With several brokers (a `;`-separated list, see
    /// [`ConnectionOptions::from_uri`]) each is tried once in turn, and
    /// [`Error::AllHostsFailed`] lists every failure when none could be reached.
    pub async fn connect(uri: &str) -> Result<Self> {
        Self::connect_with(ConnectionOptions::from_uri(uri)?).await
    }

    /// Connects with the given options.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_with(options: ConnectionOptions) -> Result<Self> {
        let policy = &options.recovery;
        if !(policy.enabled && policy.retry_initial_connect) {
            return Self::connect_each(&options).await;
        }
        let started = std::time::Instant::now();
        for attempt in 0u32.. {
            match Self::connect_each(&options).await {
                Ok(conn) => return Ok(conn),
                Err(e) if !crate::recovery::worth_retrying(&e) => return Err(e),
                Err(e) if policy.exhausted(attempt + 1, started.elapsed()) => return Err(e),
                Err(e) => {
                    let delay = policy.delay(attempt, fastrand::f64());
                    tracing::info!(error = %e, ?delay, "cannot connect yet; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        Err(Error::InvalidState("connect retried without end"))
    }

    /// Tries each broker once, in the order of the failover strategy.
    async fn connect_each(options: &ConnectionOptions) -> Result<Self> {
        let mut attempts = options.attempts().into_iter();
        let mut failures = Vec::new();
        let last = loop {
            let Some(attempt) = attempts.next() else {
                break None;
            };
            let addr = attempt.endpoint().address();
            match Self::connect_one(attempt).await {
                Ok(conn) => {
                    tracing::debug!(address = %addr, "connection opened");
                    return Ok(conn);
                }
                // Nothing another broker could change.
                Err(e @ (Error::Uri(_) | Error::InvalidArgument(_))) => return Err(e),
                Err(e) if failures.is_empty() && attempts.len() == 0 => break Some(e),
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "cannot connect; trying the next broker");
                    failures.push((addr, e));
                }
            }
        };
        Err(last.unwrap_or_else(|| Error::AllHostsFailed(failures.into())))
    }

    /// Connects to the one broker `options` name.
    async fn connect_one(options: ConnectionOptions) -> Result<Self> {
        let (reader, writer, inline) = transport::connect(&options).await?;
        Self::start(reader, writer, inline, options).await
    }

    /// Runs the AMQP handshake over a stream the caller opened (a Unix socket, an SSH tunnel,
    /// an in-memory pipe); the options' address and TLS settings are not used.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), without the TCP and TLS errors.
    pub async fn handshake<S>(stream: S, options: ConnectionOptions) -> Result<Self>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(stream);
        Self::start(Box::new(reader), Box::new(writer), None, options).await
    }

    async fn start(
        reader: transport::BoxRead,
        writer: transport::BoxWrite,
        inline: Option<transport::SharedTcp>,
        options: ConnectionOptions,
    ) -> Result<Self> {
        let handshake_timeout = options.handshake_timeout;
        let proto = lepus_proto::Connection::new(options.proto_config());
        let shared = Shared::new(proto, options);
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = shared.lock();
            inner.connected = Some(tx);
            inner.inline_tcp = inline;
        }
        tokio::spawn(driver::reader(Arc::clone(&shared), reader, 0));
        tokio::spawn(driver::writer(Arc::clone(&shared), writer, 0));
        let conn = Self {
            _guard: HandleGuard::new(&shared),
            shared,
        };
        match tokio::time::timeout(handshake_timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(conn),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(conn.shared.lock().closed_error()),
            Err(_) => {
                // A server that accepts and stays silent is likely not an AMQP broker (an HTTP
                // server waits for a request line that never comes): say so.
                let silent = conn.shared.lock().stats.bytes_read == 0;
                conn.abort("AMQP handshake timed out");
                Err(Error::Timeout {
                    what: if silent {
                        "connection.start (the server sent nothing: is it an AMQP 0-9-1 broker?)"
                    } else {
                        "AMQP handshake"
                    },
                    after: handshake_timeout,
                })
            }
        }
    }

    /// Opens a channel.
    ///
    /// # Errors
    ///
    /// When the connection is closed, every channel id is in use, or the broker refuses.
    pub async fn open_channel(&self) -> Result<Channel> {
        self.shared
            .ready(Some(self.shared.options.rpc_timeout))
            .await?;
        let (rx, id, generation) = {
            let mut inner = self.shared.lock();
            if let Some(e) = &inner.error {
                return Err(e.clone());
            }
            let (id, generation) = inner.proto.open_channel()?;
            let (tx, rx) = oneshot::channel();
            let mut slot = ChannelSlot {
                generation,
                ..ChannelSlot::default()
            };
            slot.waiters.push_back(driver::Waiter::Reply(tx));
            inner.channels.insert(id, Box::new(slot));
            inner.wake_writer(&self.shared);
            (rx, id, generation)
        };
        let channel = Channel::new(Arc::clone(&self.shared), id, generation);
        channel.await_reply(rx, "channel.open-ok").await?;
        tracing::debug!(channel = id, "channel opened");
        Ok(channel)
    }

    /// Closes the connection gracefully, and is the one call that guarantees that everything
    /// published was sent: every queued frame is written first, then `connection.close`, and
    /// it waits for the broker's close-ok.
    ///
    /// The [close timeout](ConnectionOptions::close_timeout) bounds the time *without
    /// progress*, not the whole close: while the socket keeps taking bytes, a backlog of
    /// publishes is written to the end however long that takes. Only a broker that stops
    /// reading (or a dead link) makes the close give up.
    ///
    /// Every channel, consumer and pending confirm ends. Closing a connection that has ended
    /// returns `Ok` again, or the same [`Error::Unsent`] if it ended with messages unsent.
    ///
    /// # Errors
    ///
    /// - [`Error::Unsent`] with the number of published messages that were never written,
    ///   when the close gave up (no bytes taken for the close timeout) or the connection had
    ///   already failed with publishes queued. Messages not counted there were written.
    /// - [`Error::Timeout`] for `connection.close-ok` when everything was written but the
    ///   broker did not answer the close within the close timeout. A broker under load may
    ///   still be working through megabytes it took into its socket buffers; RabbitMQ drops
    ///   what it has not read when the client closes the socket, so lepus leaves the socket
    ///   open in the background until the broker answers (at most a minute, or the close
    ///   timeout if longer). Raise the close timeout to wait for it here.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the close under way: the connection still ends once the
    /// broker answers, but nothing gives up on a broker that stops reading (use
    /// [`closed`](Self::closed) or a heartbeat).
    pub async fn close(&self) -> Result<()> {
        driver::close(&self.shared, "closed by client").await
    }

    /// Ends the connection at once, without a close handshake.
    fn abort(&self, reason: &str) {
        let mut inner = self.shared.lock();
        inner.proto.handle_transport_closed(reason.to_string());
        driver::dispatch(&self.shared, &mut inner);
    }

    /// The broker the connection is on, as `host:port` (with several brokers, the one it
    /// reached).
    pub fn address(&self) -> String {
        self.shared.lock().address.clone()
    }

    /// Waits until the connection is open: at once when it is, after the recovery when it is
    /// being recovered.
    ///
    /// # Errors
    ///
    /// The error that ended the connection, when it is closed or recovery gave up.
    pub async fn wait_open(&self) -> Result<()> {
        self.shared.ready(None).await
    }

    /// Whether the connection lost its link and is being recovered.
    pub fn is_recovering(&self) -> bool {
        self.shared.lock().recovering
    }

    /// Whether the connection is open.
    pub fn is_open(&self) -> bool {
        let inner = self.shared.lock();
        inner.error.is_none() && inner.proto.is_open()
    }

    /// Waits until the connection ends and returns why.
    pub async fn closed(&self) -> Error {
        let mut done = self.shared.shutdown.subscribe();
        let _ = done.wait_for(|closed| *closed).await;
        self.shared.lock().closed_error()
    }

    /// The broker's reason, while it blocks publishing (`connection.blocked`).
    pub fn blocked(&self) -> Option<String> {
        self.shared.lock().proto.blocked().map(str::to_string)
    }

    /// Blocked, unblocked and closed notifications, from the moment of this call on.
    ///
    /// A receiver only sees what happens after it subscribed: check
    /// [`blocked`](Self::blocked) and [`is_open`](Self::is_open) for the state at that
    /// moment. A receiver that falls more than 64 events behind loses the oldest
    /// (`RecvError::Lagged`).
    pub fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.shared.events.subscribe()
    }

    /// The properties the broker sent: product, version, platform, capabilities.
    pub fn server_properties(&self) -> FieldTable {
        self.shared.lock().proto.server_properties()
    }

    /// A number that changes every time the link to the broker is lost: equal numbers at two
    /// moments mean the same link carried everything in between, so what was declared then is
    /// still there (unless deleted). Reading it takes no lock.
    pub fn link_epoch(&self) -> u64 {
        self.shared.epoch()
    }

    /// The largest message body this connection accepts from the broker
    /// ([`ConnectionOptions::max_message_size`]); layers above use it to bound what a body
    /// may grow to (such as decompression).
    pub fn max_message_size(&self) -> u64 {
        self.shared.options.max_message_size
    }

    /// The negotiated channel_max, frame_max and heartbeat.
    pub fn negotiated(&self) -> Negotiated {
        self.shared.lock().proto.negotiated()
    }

    /// How many reads and writes the connection made so far, and how many bytes they moved.
    pub fn stats(&self) -> ConnectionStats {
        self.shared.lock().stats
    }

    /// Replaces the connection's credentials (`connection.update-secret`), such as an
    /// expiring OAuth 2 token, and waits for the broker to accept them.
    ///
    /// # Errors
    ///
    /// When the connection is closed, the reason is over 255 bytes, or the broker refuses.
    pub async fn update_secret(&self, secret: impl Into<LongStr>, reason: &str) -> Result<()> {
        self.shared
            .ready(Some(self.shared.options.rpc_timeout))
            .await?;
        let rx = {
            let mut inner = self.shared.lock();
            if let Some(e) = &inner.error {
                return Err(e.clone());
            }
            inner.proto.update_secret(secret.into(), reason)?;
            let (tx, rx) = oneshot::channel();
            inner.update_secret_waiters.push_back(tx);
            inner.wake_writer(&self.shared);
            rx
        };
        let after = self.shared.options.rpc_timeout;
        match tokio::time::timeout(after, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.shared.lock().closed_error()),
            Err(_) => Err(Error::Timeout {
                what: "connection.update-secret-ok",
                after,
            }),
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.address())
            .field("open", &self.is_open())
            .finish()
    }
}
