//! Errors of the protocol state machines.

use std::fmt;

use lepus_wire::method::METHODS;
use lepus_wire::{DecodeError, EncodeError, ReplyCode};

/// A `connection.close` or `channel.close` as the peer (or lepus) sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The reply code, such as `404 NOT_FOUND`.
    pub code: ReplyCode,
    /// The reply text.
    pub text: String,
    /// Class of the method that caused the close, or 0.
    pub class_id: u16,
    /// Method that caused the close, or 0.
    pub method_id: u16,
}

impl Close {
    /// The name of the method that caused the close, such as `queue.declare`, if one is named.
    pub fn method_name(&self) -> Option<&'static str> {
        METHODS
            .iter()
            .find(|m| m.class_id == self.class_id && m.method_id == self.method_id)
            .map(|m| m.name)
    }
}

impl fmt::Display for Close {
    /// `404 NOT_FOUND - no queue 'x' in vhost '/' (queue.declare)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // RabbitMQ's text already starts with the code name ("NOT_FOUND - no queue ...").
        let text = self.text.as_str();
        match self.code.name() {
            Some(name) if text.starts_with(name) => write!(f, "{} {text}", self.code.0)?,
            _ if text.is_empty() => write!(f, "{}", self.code)?,
            _ => write!(f, "{} - {text}", self.code)?,
        }
        if let Some(method) = self.method_name() {
            write!(f, " ({method})")?;
        }
        Ok(())
    }
}

/// Why a connection ended, or could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The server closed the connection with `connection.close`.
    #[error("connection closed by server: {0}")]
    ServerClosed(Close),
    /// The connection was closed by this side, on request.
    #[error("connection closed by client: {0}")]
    LocallyClosed(Close),
    /// The peer broke the protocol; lepus closed the connection with the given reply code.
    #[error("protocol violation by the server: {0}")]
    Protocol(#[from] DecodeError),
    /// The peer sent a frame that is not allowed in the connection's or channel's state.
    #[error("unexpected frame from the server: {0}")]
    UnexpectedFrame(String),
    /// Nothing arrived from the server for two heartbeat intervals.
    #[error("no data from the server for two heartbeat intervals of {0} s")]
    HeartbeatTimeout(u32),
    /// The server offered none of the SASL mechanisms lepus was configured to use.
    #[error("server offers SASL mechanisms '{offered}', not {wanted}")]
    UnsupportedMechanism {
        /// The mechanism lepus wanted.
        wanted: &'static str,
        /// What the server offered.
        offered: String,
    },
    /// The server speaks another protocol version.
    #[error("server speaks AMQP {major}-{minor}, not 0-9-1")]
    VersionMismatch {
        /// The server's major version.
        major: u8,
        /// The server's minor version.
        minor: u8,
    },
    /// The transport closed without a `connection.close`.
    #[error("connection lost: {0}")]
    TransportClosed(String),
    /// A message body arrived larger than the configured maximum.
    #[error("incoming message of {size} bytes exceeds max_message_size {max}")]
    MessageTooLarge {
        /// The declared body size.
        size: u64,
        /// The limit.
        max: u64,
    },
}

impl ConnectionError {
    /// The reply code the connection was (or should be) closed with, where there is one.
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            Self::ServerClosed(c) | Self::LocallyClosed(c) => Some(c.code),
            Self::Protocol(e) => Some(e.reply_code()),
            Self::UnexpectedFrame(_) => Some(ReplyCode::UNEXPECTED_FRAME),
            Self::MessageTooLarge { .. } => Some(ReplyCode::FRAME_ERROR),
            _ => None,
        }
    }
}

/// Why an operation on a channel could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The server closed the channel with `channel.close` (a soft error, such as 404).
    #[error("channel closed by server: {0}")]
    ServerClosed(Close),
    /// The channel was closed by this side.
    #[error("channel is closed")]
    Closed,
    /// The connection is gone, and the channel with it.
    #[error("connection is closed: {0}")]
    ConnectionClosed(ConnectionError),
    /// The channel id does not name an open channel.
    #[error("channel {0} is not open")]
    NotOpen(u16),
    /// No channel id is free below channel_max.
    #[error("all {0} channels are in use")]
    NoFreeChannel(u16),
    /// A value could not be encoded (too long, frame too large).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The operation needs a mode the channel is not in (for example, confirms).
    #[error("{0}")]
    InvalidState(&'static str),
}
