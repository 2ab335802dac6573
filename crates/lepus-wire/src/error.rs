//! Decode and encode errors.

use std::fmt;

use crate::reply_code::ReplyCode;

/// What went wrong while decoding bytes received from a peer.
///
/// A partial frame is *not* an error: [`Frame::decode`](crate::Frame::decode) returns
/// `Ok(None)` and leaves the buffer as it was. Every variant here means the peer sent something
/// that breaks the protocol, and [`DecodeError::reply_code`] says which reply code a connection
/// should be closed with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The 8 bytes at the start of the stream are not an AMQP protocol header.
    #[error("bad protocol header {}", Hex(found))]
    BadProtocolHeader {
        /// The bytes received.
        found: [u8; 8],
    },
    /// A frame header declares a size above the negotiated maximum.
    #[error("frame of {size} bytes exceeds frame_max {max}")]
    FrameTooLarge {
        /// Total frame size the header declared (header, payload and end octet).
        size: u64,
        /// The negotiated maximum.
        max: u32,
    },
    /// The octet after a frame's payload is not 0xCE.
    #[error("bad frame end octet 0x{found:02x} (expected 0xce)")]
    BadFrameEnd {
        /// The octet found instead.
        found: u8,
    },
    /// The frame type octet is none of method (1), header (2), body (3), heartbeat (8).
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A heartbeat frame arrived on a channel other than 0, or has a payload.
    #[error("malformed heartbeat frame on channel {channel} with {size} payload bytes")]
    BadHeartbeat {
        /// The channel the heartbeat arrived on.
        channel: u16,
        /// Its payload size.
        size: u32,
    },
    /// A method frame names a (class, method) pair that AMQP 0-9-1 does not define.
    #[error("unknown method {class_id}.{method_id}")]
    UnknownMethod {
        /// The class id.
        class_id: u16,
        /// The method id.
        method_id: u16,
    },
    /// A content header names a class other than basic (60), the only class with content.
    #[error("content header for class {0}, which has no content")]
    UnknownContentClass(u16),
    /// A content header sets a property flag that AMQP 0-9-1 does not define.
    #[error("content header sets undefined property flags 0x{0:04x}")]
    UnknownPropertyFlags(u16),
    /// A field-table value starts with a type tag that RabbitMQ does not define.
    #[error("unknown field type tag 0x{tag:02x} in {context}")]
    UnknownFieldType {
        /// The tag octet.
        tag: u8,
        /// Where it was found.
        context: &'static str,
    },
    /// The input ends before a value it declares.
    #[error("truncated {context}: needed {needed} more bytes, {available} left")]
    Truncated {
        /// What was being read.
        context: &'static str,
        /// Bytes the value needs.
        needed: u64,
        /// Bytes that were left.
        available: u64,
    },
    /// Field tables or arrays are nested deeper than [`MAX_NESTING`](crate::MAX_NESTING).
    #[error("field tables nested deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// A method or content header frame holds bytes after its last field.
    #[error("{count} unexpected bytes after {context}")]
    TrailingBytes {
        /// What was decoded.
        context: &'static str,
        /// How many bytes were left over.
        count: usize,
    },
    /// An error inside the arguments of a named method.
    #[error("in {method}: {source}")]
    InMethod {
        /// The method's name, such as `queue.declare`.
        method: &'static str,
        /// What was wrong.
        source: Box<DecodeError>,
    },
}

impl DecodeError {
    /// The reply code to close the connection with when a peer sends this.
    ///
    /// Framing errors are `501 FRAME_ERROR`, malformed arguments are `502 SYNTAX_ERROR`, and an
    /// unknown method is `503 COMMAND_INVALID`, as RabbitMQ itself answers.
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            Self::BadProtocolHeader { .. }
            | Self::FrameTooLarge { .. }
            | Self::BadFrameEnd { .. }
            | Self::UnknownFrameType(_)
            | Self::BadHeartbeat { .. } => ReplyCode::FRAME_ERROR,
            Self::UnknownMethod { .. } => ReplyCode::COMMAND_INVALID,
            Self::InMethod { source, .. } => source.reply_code(),
            Self::UnknownContentClass(_)
            | Self::UnknownPropertyFlags(_)
            | Self::UnknownFieldType { .. }
            | Self::Truncated { .. }
            | Self::TooDeep { .. }
            | Self::TrailingBytes { .. } => ReplyCode::SYNTAX_ERROR,
        }
    }

    pub(crate) fn in_method(self, method: &'static str) -> Self {
        Self::InMethod {
            method,
            source: Box::new(self),
        }
    }
}

/// What went wrong while building or encoding a value to send.
///
/// These are caught before anything reaches the socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A short string is longer than 255 bytes.
    #[error("short string of {len} bytes exceeds 255 bytes")]
    ShortStrTooLong {
        /// The string's length in bytes.
        len: usize,
    },
    /// A message property, or the name of a header, is longer than 255 bytes.
    #[error("{property} of {len} bytes exceeds 255 bytes")]
    PropertyTooLong {
        /// The property, such as `content-type`, or `header name`.
        property: &'static str,
        /// The value's length in bytes.
        len: usize,
    },
    /// A method or header frame would be larger than the negotiated frame_max.
    #[error("{context} frame of {size} bytes exceeds frame_max {max}")]
    FrameTooLarge {
        /// What was encoded.
        context: &'static str,
        /// The encoded frame size.
        size: usize,
        /// The negotiated maximum.
        max: u32,
    },
}

/// Bytes as hex pairs, such as `41 4d 51 50` (for error messages, which show no `Debug` forms).
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message is one lowercase line with no `Debug` form in it.
    #[test]
    fn messages_read_as_one_plain_line() {
        let cases = [
            (
                DecodeError::BadProtocolHeader {
                    found: *b"HTTP/1.1",
                },
                "bad protocol header 48 54 54 50 2f 31 2e 31",
            ),
            (
                DecodeError::FrameTooLarge {
                    size: 200_000,
                    max: 131_072,
                },
                "frame of 200000 bytes exceeds frame_max 131072",
            ),
            (
                DecodeError::BadFrameEnd { found: 0 },
                "bad frame end octet 0x00 (expected 0xce)",
            ),
            (
                DecodeError::UnknownFieldType {
                    tag: b'Z',
                    context: "field table",
                }
                .in_method("queue.declare"),
                "in queue.declare: unknown field type tag 0x5a in field table",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
        }
        let encode = [
            (
                EncodeError::ShortStrTooLong { len: 256 },
                "short string of 256 bytes exceeds 255 bytes",
            ),
            (
                EncodeError::PropertyTooLong {
                    property: "content-type",
                    len: 300,
                },
                "content-type of 300 bytes exceeds 255 bytes",
            ),
        ];
        for (err, text) in encode {
            assert_eq!(err.to_string(), text);
        }
    }
}
