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
    ///
    /// A refused `connection.open` of the empty vhost (`amqp://host/` in a URI) adds a hint,
    /// since the vhost meant is almost always `/`.
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
        if self.refuses_empty_vhost() {
            f.write_str("; the default vhost is \"/\", written %2f")?;
        }
        Ok(())
    }
}

impl Close {
    /// Whether this is RabbitMQ refusing to open the empty vhost: `530 NOT_ALLOWED` to
    /// `connection.open`, with the text `vhost ~s not found` (rabbit_reader) around an empty
    /// name.
    fn refuses_empty_vhost(&self) -> bool {
        const CONNECTION_OPEN: (u16, u16) = (10, 40);
        self.code == ReplyCode::NOT_ALLOWED
            && (self.class_id, self.method_id) == CONNECTION_OPEN
            && self.text.ends_with("vhost  not found")
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
    /// The server's first bytes were not an AMQP 0-9-1 frame: it speaks another protocol
    /// (an HTTP server, a TLS port, an AMQP 1.0 broker answering with its own header).
    #[error("the server {}", ForeignReply(received))]
    NotAmqp {
        /// The first bytes the server sent (at most 64).
        received: bytes::Bytes,
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

/// Describes a server's first reply that is not AMQP 0-9-1, for an error message: `speaks AMQP
/// 1.0.0, not 0-9-1` for another AMQP protocol header, `does not speak AMQP 0-9-1 (it sent
/// "HTTP/1.1 400 Bad Request…")` for anything else (its first line, printable characters
/// only).
#[derive(Debug, Clone, Copy)]
pub struct ForeignReply<'a>(pub &'a [u8]);

impl fmt::Display for ForeignReply<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(&[b'A', b'M', b'Q', b'P', id, a, b, c]) = self.0.get(..8) {
            return match (id, a, b, c) {
                // AMQP 1.0 (id 0), over TLS (2) or SASL (3).
                (0 | 2 | 3, 1.., _, _) => write!(f, "speaks AMQP {a}.{b}.{c}, not 0-9-1"),
                // The 0-8, 0-9 and 0-10 headers: class 1, instance 1, then the version.
                (1, 1, 8, 0) => write!(f, "speaks AMQP 0-8, not 0-9-1"),
                (1, 1, _, _) => write!(f, "speaks AMQP {b}-{c}, not 0-9-1"),
                _ => write!(f, "refused AMQP 0-9-1 (it answered AMQP {id} {a} {b} {c})"),
            };
        }
        // A TLS record (alert, handshake): the port expects TLS.
        if let Some(&[0x14..=0x17, 0x03, 0x00..=0x04]) = self.0.get(..3) {
            return write!(f, "expects TLS (use amqps://)");
        }
        let line = self
            .0
            .split(|&b| b == b'\r' || b == b'\n')
            .next()
            .unwrap_or_default();
        let mut shown = String::new();
        for &byte in line.iter().take(40) {
            if byte.is_ascii_graphic() || byte == b' ' {
                shown.push(char::from(byte));
            } else {
                shown.push_str(&format!("\\x{byte:02x}"));
            }
        }
        write!(f, "does not speak AMQP 0-9-1 (it sent \"{shown}…\")")
    }
}

impl ConnectionError {
    /// Whether the connection was lost in a way that reconnecting can mend, rather than
    /// refused or broken in a way that would only repeat.
    ///
    /// | cause | recoverable |
    /// |---|---|
    /// | I/O error or end of stream ([`TransportClosed`](Self::TransportClosed)) | yes |
    /// | missed heartbeats ([`HeartbeatTimeout`](Self::HeartbeatTimeout)) | yes |
    /// | `connection.close` 320 CONNECTION_FORCED (broker shutdown or restart, an operator's `close_connection`) | yes |
    /// | `connection.close` 541 INTERNAL_ERROR | yes |
    /// | `connection.close` with any other code: 402 INVALID_PATH, 403 ACCESS_REFUSED, 501–506 (frame, syntax, command, channel, unexpected frame, resource errors), 530 NOT_ALLOWED (a deleted vhost), 540 NOT_IMPLEMENTED | no |
    /// | a close this side asked for ([`LocallyClosed`](Self::LocallyClosed)) | no |
    /// | a protocol violation lepus detected (malformed frames, unexpected methods, an oversized message), a server that does not speak AMQP 0-9-1, no common SASL mechanism | no |
    ///
    /// A malformed or hostile peer never makes a connection reconnect in a loop: everything
    /// it can cause is on the "no" side.
    pub fn is_recoverable(&self) -> bool {
        match self {
            Self::TransportClosed(_) | Self::HeartbeatTimeout(_) => true,
            Self::ServerClosed(close) => {
                matches!(
                    close.code,
                    ReplyCode::CONNECTION_FORCED | ReplyCode::INTERNAL_ERROR
                )
            }
            _ => false,
        }
    }

    /// The reply code the connection was (or should be) closed with, where there is one.
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            Self::ServerClosed(c) | Self::LocallyClosed(c) => Some(c.code),
            Self::Protocol(e) => Some(e.reply_code()),
            Self::UnexpectedFrame(_) => Some(ReplyCode::UNEXPECTED_FRAME),
            Self::MessageTooLarge { .. } | Self::NotAmqp { .. } => Some(ReplyCode::FRAME_ERROR),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn close(code: ReplyCode, text: &str, class_id: u16, method_id: u16) -> Close {
        Close {
            code,
            text: text.to_owned(),
            class_id,
            method_id,
        }
    }

    #[test]
    fn recoverable_losses_follow_the_trigger_table() {
        let server = |code: u16| ConnectionError::ServerClosed(close(ReplyCode(code), "x", 0, 0));
        // Recover: the link went away, or the broker asked clients to come back later.
        for lost in [
            ConnectionError::TransportClosed("connection reset by peer".into()),
            ConnectionError::HeartbeatTimeout(60),
            server(320),
            server(541),
        ] {
            assert!(lost.is_recoverable(), "{lost}");
        }
        // Never: refusals and errors that would only repeat.
        for code in [402, 403, 501, 502, 503, 504, 505, 506, 530, 540, 200] {
            assert!(!server(code).is_recoverable(), "{code}");
        }
        for broken in [
            ConnectionError::LocallyClosed(close(ReplyCode::REPLY_SUCCESS, "bye", 0, 0)),
            ConnectionError::Protocol(DecodeError::BadFrameEnd { found: 1 }),
            ConnectionError::UnexpectedFrame("basic.deliver on channel 0".into()),
            ConnectionError::MessageTooLarge { size: 10, max: 1 },
            ConnectionError::NotAmqp {
                received: bytes::Bytes::from_static(b"HTTP/1.1 400"),
            },
            ConnectionError::VersionMismatch { major: 1, minor: 0 },
            ConnectionError::UnsupportedMechanism {
                wanted: "PLAIN",
                offered: "EXTERNAL".into(),
            },
        ] {
            assert!(!broken.is_recoverable(), "{broken}");
        }
    }

    /// Every message is one line with the reply code as a number and a name, never a `Debug`
    /// form such as `Some(` or `ReplyCode(`.
    #[test]
    fn messages_show_reply_codes_plainly() {
        let refused = close(
            ReplyCode::ACCESS_REFUSED,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN",
            0,
            0,
        );
        let not_found = close(
            ReplyCode::NOT_FOUND,
            "NOT_FOUND - no queue 'q' in vhost '/'",
            50,
            10,
        );
        let cases = [
            (
                ConnectionError::ServerClosed(refused.clone()).to_string(),
                "connection closed by server: 403 ACCESS_REFUSED - Login was refused using \
                 authentication mechanism PLAIN",
            ),
            (
                ChannelError::ServerClosed(not_found.clone()).to_string(),
                "channel closed by server: 404 NOT_FOUND - no queue 'q' in vhost '/' \
                 (queue.declare)",
            ),
            (
                ConnectionError::LocallyClosed(close(ReplyCode(599), "", 0, 0)).to_string(),
                "connection closed by client: 599",
            ),
            (
                close(ReplyCode::INTERNAL_ERROR, "boom", 0, 0).to_string(),
                "541 INTERNAL_ERROR - boom",
            ),
            (
                ConnectionError::Protocol(DecodeError::BadFrameEnd { found: 1 }).to_string(),
                "protocol violation by the server: bad frame end octet 0x01 (expected 0xce)",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(text, expected);
            assert!(
                !text.contains("Some(") && !text.contains("ReplyCode("),
                "{text}"
            );
        }
    }

    #[test]
    fn refusing_the_empty_vhost_hints_at_the_default() {
        let empty = close(
            ReplyCode::NOT_ALLOWED,
            "NOT_ALLOWED - vhost  not found",
            10,
            40,
        );
        assert_eq!(
            empty.to_string(),
            "530 NOT_ALLOWED - vhost  not found (connection.open); \
             the default vhost is \"/\", written %2f"
        );
        let named = close(
            ReplyCode::NOT_ALLOWED,
            "NOT_ALLOWED - vhost nope not found",
            10,
            40,
        );
        assert_eq!(
            named.to_string(),
            "530 NOT_ALLOWED - vhost nope not found (connection.open)"
        );
    }
}
