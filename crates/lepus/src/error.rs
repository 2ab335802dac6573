//! The client's error type.

use std::io;
use std::sync::Arc;

use lepus_proto::{ChannelError, Close, ConnectionError};
use lepus_wire::{EncodeError, ReplyCode, ShortStr};

use crate::uri::UriError;

/// Everything that can go wrong in the client, as one matchable type.
///
/// Each message is one line saying what failed; where the broker refused something, it names
/// the reply code and text. Errors are `Clone` because one failure (a lost connection) is
/// reported to every waiter at once.
///
/// # Examples
///
/// ```
/// # async fn demo(ch: &lepus::Channel) {
/// use lepus::{Error, ReplyCode};
///
/// match ch.queue_declare_passive("maybe").await {
///     Ok(q) => println!("{} messages", q.message_count),
///     Err(Error::ChannelClosed(close)) if close.code == ReplyCode::NOT_FOUND => {
///         println!("no such queue; the channel is closed, the connection is fine")
///     }
///     Err(e) => eprintln!("error: {e}"),
/// }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lepus::Error> {
/// # let conn = lepus::Connection::connect("memory://").await?;
/// # let ch = conn.open_channel().await?;
/// # demo(&ch).await;
/// # assert!(!ch.is_open()); // the 404 closed the channel
/// # conn.close().await
/// # }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URI could not be parsed.
    #[error("invalid AMQP URI: {0}")]
    Uri(#[from] UriError),
    /// The TCP connection could not be made (refused, unreachable, name not found).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The host and port.
        addr: String,
        /// The operating system's error.
        source: Arc<io::Error>,
    },
    /// The server at `addr` does not speak AMQP 0-9-1: its first reply was something else,
    /// such as an HTTP error page or the protocol header of AMQP 1.0 (wrong port, wrong
    /// kind of server).
    #[error("the server at {addr} {}", lepus_proto::ForeignReply(received))]
    NotAmqp {
        /// The host and port.
        addr: String,
        /// The first bytes the server sent (at most 64).
        received: bytes::Bytes,
    },
    /// None of the brokers of a connection with several
    /// ([`ConnectionOptions::add_host`](crate::ConnectionOptions::add_host)) could be
    /// reached: each one's address and error, in the order tried.
    #[error("no broker could be reached: {}", Failures(.0))]
    AllHostsFailed(Arc<[(String, Error)]>),
    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(Arc<io::Error>),
    /// The TLS handshake or configuration failed (bad certificate, wrong host name, unknown CA).
    #[error("tls: {0}")]
    Tls(String),
    /// A step did not finish in time.
    #[error("timed out after {} waiting for {what}", HumanDuration(*after))]
    Timeout {
        /// What was being waited for, such as `queue.declare-ok` or `TCP connect`.
        what: &'static str,
        /// The configured limit.
        after: std::time::Duration,
    },
    /// The broker refused the credentials (`403 ACCESS_REFUSED` during the handshake).
    #[error("authentication failed: {0}")]
    AuthenticationFailed(Close),
    /// The connection is closed: by the broker (with a hard error such as 320 or 530), on
    /// request, after a heartbeat timeout, or because the peer broke the protocol.
    #[error("{0}")]
    ConnectionClosed(ConnectionError),
    /// The broker closed the channel with a soft error (404, 403, 405, 406, ...); the
    /// connection and its other channels go on.
    #[error("channel closed by broker: {0}")]
    ChannelClosed(Close),
    /// The channel was closed by this client, or its handle outlived it.
    #[error("channel {0} is closed")]
    ChannelNotOpen(u16),
    /// The broker cancelled the consumer: its queue was deleted, the queue's node went down,
    /// or (on brokers that cancel rather than close the channel) a delivery's ack was overdue.
    /// The broker's `basic.cancel` gives no reason, so the message lists these.
    #[error(
        "consumer {0} was cancelled by the broker: the queue was deleted, its node went down, \
         or an ack timed out"
    )]
    ConsumerCancelled(ShortStr),
    /// The connection ended before everything published on it was written to the socket: those
    /// messages never reached the broker. [`Connection::close`](crate::Connection::close)
    /// returns this when it gave up (the socket took no bytes for the close timeout), and
    /// when the connection had already failed with publishes still queued.
    #[error(
        "{messages} published messages ({bytes} bytes with other queued frames) were never \
         sent: {reason}"
    )]
    Unsent {
        /// Publishes not completely written (a message cut off mid-way counts: the broker
        /// drops it).
        messages: u64,
        /// Bytes left unwritten, with acknowledgements and other frames queued among them.
        bytes: u64,
        /// Why sending stopped.
        reason: String,
    },
    /// The link to the broker was lost while this call's request was in flight. lepus
    /// recovers the connection (see [`RecoveryPolicy`](crate::RecoveryPolicy)), but whether
    /// the request took effect is unknown: retry it once the call can be made again (declares,
    /// binds and the like may simply be repeated). The cause is inside.
    #[error("the connection was lost while the request was in flight ({0}); retry it")]
    ConnectionLost(Arc<Error>),
    /// A delivery received over a link that has since been lost cannot be settled on the
    /// recovered one: its delivery tag means nothing there. The broker has requeued the
    /// message already and delivers it again (marked redelivered). Nothing was sent.
    #[error(
        "delivery {delivery_tag} came over a connection that was lost since; the broker \
         requeued it and delivers it again"
    )]
    StaleDelivery {
        /// The tag of the delivery on the lost link.
        delivery_tag: u64,
    },
    /// An argument was rejected before anything was sent, such as a name over 255 bytes.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The call is not valid in the current state, such as waiting for confirms on a channel
    /// without confirm mode.
    #[error("{0}")]
    InvalidState(&'static str),
}

impl Error {
    /// The AMQP reply code behind the error, if the broker (or lepus, closing the connection)
    /// sent one.
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            Self::AuthenticationFailed(c) | Self::ChannelClosed(c) => Some(c.code),
            Self::ConnectionClosed(e) => e.reply_code(),
            _ => None,
        }
    }

    /// Whether the call may simply be made again: its request was in flight when the link was
    /// lost ([`Error::ConnectionLost`]), and the connection is being recovered.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::ConnectionLost(_))
    }

    /// Whether the error ended the whole connection (as opposed to one channel or call).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Self::ConnectionClosed(_)
                | Self::AllHostsFailed(_)
                | Self::NotAmqp { .. }
                | Self::Unsent { .. }
                | Self::Io(_)
                | Self::Connect { .. }
                | Self::Tls(_)
                | Self::AuthenticationFailed(_)
        )
    }
}

impl From<EncodeError> for Error {
    fn from(e: EncodeError) -> Self {
        Self::InvalidArgument(e.to_string())
    }
}

impl From<ChannelError> for Error {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::ServerClosed(close) => Self::ChannelClosed(close),
            ChannelError::Closed => Self::InvalidState("channel is closed"),
            ChannelError::NotOpen(id) => Self::ChannelNotOpen(id),
            ChannelError::ConnectionClosed(e) => Self::ConnectionClosed(e),
            ChannelError::NoFreeChannel(max) => {
                Self::InvalidArgument(format!("all {max} channels are in use"))
            }
            ChannelError::Encode(e) => e.into(),
            ChannelError::InvalidState(s) => Self::InvalidState(s),
            _ => Self::InvalidState("channel error"),
        }
    }
}

impl From<ConnectionError> for Error {
    fn from(e: ConnectionError) -> Self {
        Self::ConnectionClosed(e)
    }
}

/// `Result` with the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Each broker's error, `; `-separated, with its address where the error does not name it.
struct Failures<'a>(&'a [(String, Error)]);

impl std::fmt::Display for Failures<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (addr, error)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            let text = error.to_string();
            if text.contains(addr.as_str()) {
                f.write_str(&text)?;
            } else {
                write!(f, "{addr}: {text}")?;
            }
        }
        Ok(())
    }
}

/// A duration for people: `250 ms`, `5 s`, `1.5 s` (not `Duration`'s `Debug` form).
pub(crate) struct HumanDuration(pub(crate) std::time::Duration);

impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let millis = self.0.as_millis();
        if millis == 0 && !self.0.is_zero() {
            return write!(f, "{} µs", self.0.as_micros());
        }
        if millis < 1000 {
            return write!(f, "{millis} ms");
        }
        let (secs, frac) = (millis / 1000, millis % 1000);
        if frac == 0 {
            return write!(f, "{secs} s");
        }
        let frac = format!("{frac:03}");
        write!(f, "{secs}.{} s", frac.trim_end_matches('0'))
    }
}
