//! Frames: the unit of the AMQP 0-9-1 byte stream (spec §4.2.3).
//!
//! ```text
//! +------+---------+-----------+------------------+-----------+
//! | type | channel |   size    |     payload      | frame-end |
//! |  u8  |   u16   |    u32    |   size octets    |   0xCE    |
//! +------+---------+-----------+------------------+-----------+
//! ```
//!
//! Decoding is a streaming parse: [`Frame::decode`] takes one complete frame off the front of
//! a growable buffer, returns `Ok(None)` (consuming nothing) when the buffer holds only part of
//! one, and rejects a declared size above `frame_max` as soon as the 7-byte header is in, before
//! any memory is reserved for it. Payloads are split off the buffer without copying, so a
//! message body is a [`Bytes`] slice of the bytes read from the socket.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::Reader;
use crate::error::{DecodeError, EncodeError};
use crate::method::{Method, MethodArgs};
use crate::properties::{BasicProperties, ContentHeader};

/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;
/// Size of a frame header: type, channel and payload size.
pub const FRAME_HEADER_SIZE: usize = 7;
/// Bytes a frame adds around its payload: the header and the end octet.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_SIZE + 1;
/// The smallest frame_max a peer may set; frames up to this size are allowed before tuning.
pub const FRAME_MIN_SIZE: u32 = 4096;
/// What a client sends first: `AMQP` followed by protocol id 0 and version 0-9-1.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// Frame type octet of a method frame.
pub const FRAME_METHOD: u8 = 1;
/// Frame type octet of a content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Frame type octet of a content body frame.
pub const FRAME_BODY: u8 = 3;
/// Frame type octet of a heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;

/// One decoded frame.
// The header variant is large (fourteen optional properties), but boxing it would cost an
// allocation for every message received; moving a few hundred bytes is cheaper.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A method frame.
    Method {
        /// The channel, 0 for connection methods.
        channel: u16,
        /// The method with its arguments.
        method: Method,
    },
    /// A content header frame, which follows a content-carrying method.
    Header {
        /// The channel.
        channel: u16,
        /// Body size and properties.
        header: ContentHeader,
    },
    /// A content body frame: one piece of a message body.
    Body {
        /// The channel.
        channel: u16,
        /// The bytes of this piece, sharing memory with the received buffer.
        body: Bytes,
    },
    /// A heartbeat frame, always on channel 0.
    Heartbeat,
}

impl Frame {
    /// Takes one complete frame off the front of `buf`.
    ///
    /// Returns `Ok(None)` and leaves `buf` untouched when it holds less than a whole frame; read
    /// more bytes and call again. Returns an error, as soon as the header is in, for a frame
    /// whose declared size (header and end octet included) exceeds `frame_max`; the caller must
    /// then close the connection with [`DecodeError::reply_code`]. Pass `u32::MAX` for no limit.
    ///
    /// The payload is split off `buf` without copying.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] saying what was wrong with the frame.
    ///
    /// # Examples
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use lepus_wire::Frame;
    ///
    /// let mut buf = BytesMut::from(&[8u8, 0, 0, 0, 0, 0][..]);
    /// assert_eq!(Frame::decode(&mut buf, 131_072), Ok(None)); // partial: wait for more
    /// buf.extend_from_slice(&[0, 0xce]);
    /// assert_eq!(Frame::decode(&mut buf, 131_072), Ok(Some(Frame::Heartbeat)));
    /// assert!(buf.is_empty());
    /// ```
    #[inline]
    pub fn decode(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Self>, DecodeError> {
        let Some(len) = complete_frame_len(buf, frame_max)? else {
            return Ok(None);
        };
        let mut frame = buf.split_to(len).freeze();
        Self::decode_advance(&mut frame, len)
    }

    /// Like [`decode`](Self::decode), from immutable bytes, for callers that already hold the
    /// received data as [`Bytes`].
    ///
    /// A method or header frame is decoded where it lies: only the strings it holds become
    /// slices of `buf`, and `buf` is then advanced past the frame.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] saying what was wrong with the frame.
    #[inline(always)]
    pub fn decode_bytes(buf: &mut Bytes, frame_max: u32) -> Result<Option<Self>, DecodeError> {
        let Some(len) = complete_frame_len(buf, frame_max)? else {
            return Ok(None);
        };
        Self::decode_advance(buf, len)
    }

    /// Decodes the complete frame of `len` bytes at the front of `buf` and advances past it.
    /// Not inlined, so that the frame is built in the caller's result rather than copied there.
    #[inline(never)]
    fn decode_advance(buf: &mut Bytes, len: usize) -> Result<Option<Self>, DecodeError> {
        let decoded = Self::decode_complete(buf, len);
        // Never more than `buf` holds (`complete_frame_len` saw `len` bytes): written so that
        // the advance cannot panic, which would keep the frame from being built in place.
        let len = len.min(buf.len());
        buf.advance(len);
        decoded
    }

    /// Decodes the complete, already length-checked frame of `len` bytes at the front of
    /// `src`, without consuming it. Always `Some` on success: the option is built here so that
    /// the frame is written once, into the caller's result.
    #[inline(always)]
    fn decode_complete(src: &Bytes, len: usize) -> Result<Option<Self>, DecodeError> {
        // `complete_frame_len` saw the header and `len` bytes, so neither check below fails.
        let missing = || DecodeError::Truncated {
            context: "frame",
            needed: len as u64,
            available: src.len() as u64,
        };
        let Some(&[kind, c0, c1, s0, s1, s2, s3]) = src.get(..FRAME_HEADER_SIZE) else {
            return Err(missing());
        };
        if src.len() < len {
            return Err(missing());
        }
        let channel = u16::from_be_bytes([c0, c1]);
        let size = u32::from_be_bytes([s0, s1, s2, s3]);
        // `complete_frame_len` checked the end octet; the payload excludes it.
        let payload = FRAME_HEADER_SIZE..len - 1;
        match kind {
            FRAME_METHOD => {
                let mut r = Reader::window(src, payload.start, payload.end).ok_or_else(missing)?;
                Ok(Some(Self::Method {
                    channel,
                    method: Method::read(&mut r)?,
                }))
            }
            FRAME_HEADER => {
                let mut r = Reader::window(src, payload.start, payload.end).ok_or_else(missing)?;
                // Built in place: the header is the largest frame variant.
                let mut decoded = Some(Self::Header {
                    channel,
                    header: ContentHeader::default(),
                });
                if let Some(Self::Header { header, .. }) = &mut decoded {
                    header.decode_into(&mut r)?;
                }
                Ok(decoded)
            }
            FRAME_BODY => Ok(Some(Self::Body {
                channel,
                body: src
                    .get(payload.clone())
                    .map(|b| src.slice_ref(b))
                    .ok_or_else(missing)?,
            })),
            FRAME_HEARTBEAT if channel == 0 && size == 0 => Ok(Some(Self::Heartbeat)),
            FRAME_HEARTBEAT => Err(DecodeError::BadHeartbeat { channel, size }),
            other => Err(DecodeError::UnknownFrameType(other)),
        }
    }

    /// The channel the frame belongs to (0 for heartbeats).
    pub fn channel(&self) -> u16 {
        match *self {
            Self::Method { channel, .. }
            | Self::Header { channel, .. }
            | Self::Body { channel, .. } => channel,
            Self::Heartbeat => 0,
        }
    }

    /// Appends the frame to `out`, copying a body's bytes.
    ///
    /// Use [`encode_method`], [`encode_header`] and [`encode_body_header`] to check frame_max
    /// and to send bodies without copying.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Self::Method { channel, method } => {
                let at = begin(out, FRAME_METHOD, *channel);
                method.encode(out);
                finish(out, at);
            }
            Self::Header { channel, header } => {
                let at = begin(out, FRAME_HEADER, *channel);
                header.encode(out);
                finish(out, at);
            }
            Self::Body { channel, body } => {
                encode_body_header(out, *channel, body.len());
                out.put_slice(body);
                out.put_u8(FRAME_END);
            }
            Self::Heartbeat => encode_heartbeat(out),
        }
    }
}

/// Checks the header of the frame at the front of `buf` and returns the frame's total length if
/// all of it has arrived.
#[inline]
fn complete_frame_len(buf: &[u8], frame_max: u32) -> Result<Option<usize>, DecodeError> {
    let Some(&[kind, c0, c1, s0, s1, s2, s3]) = buf.get(..FRAME_HEADER_SIZE) else {
        return Ok(None);
    };
    let _ = (c0, c1);
    let size = u32::from_be_bytes([s0, s1, s2, s3]);
    let total = u64::from(size) + FRAME_OVERHEAD as u64;
    if total > u64::from(frame_max) {
        return Err(DecodeError::FrameTooLarge {
            size: total,
            max: frame_max,
        });
    }
    if kind != FRAME_METHOD && kind != FRAME_HEADER && kind != FRAME_BODY && kind != FRAME_HEARTBEAT
    {
        return Err(DecodeError::UnknownFrameType(kind));
    }
    // `total` is at most u32::MAX + 8, which fits in usize on the 32- and 64-bit targets lepus
    // supports; `get` below then bounds the read.
    let total = total as usize;
    match buf.get(total - 1) {
        None => Ok(None),
        Some(&FRAME_END) => Ok(Some(total)),
        Some(&found) => Err(DecodeError::BadFrameEnd { found }),
    }
}

/// Writes a frame header with a placeholder size and returns where the frame starts.
#[inline]
fn begin(out: &mut BytesMut, kind: u8, channel: u16) -> usize {
    let at = out.len();
    out.put_u8(kind);
    out.put_u16(channel);
    out.put_u32(0);
    at
}

/// Back-patches the size of the frame started at `at` and writes the end octet.
#[inline]
fn finish(out: &mut BytesMut, at: usize) -> usize {
    let size = out.len() - at - FRAME_HEADER_SIZE;
    if let Some(slot) = out.get_mut(at + 3..at + FRAME_HEADER_SIZE) {
        // A payload over u32::MAX is caught by the frame_max check of the checked encoders.
        slot.copy_from_slice(&(size as u32).to_be_bytes());
    }
    out.put_u8(FRAME_END);
    size + FRAME_OVERHEAD
}

/// Undoes a frame that came out larger than `frame_max`.
fn check_size(
    out: &mut BytesMut,
    at: usize,
    size: usize,
    frame_max: u32,
    context: &'static str,
) -> Result<(), EncodeError> {
    if size as u64 > u64::from(frame_max) {
        out.truncate(at);
        return Err(EncodeError::FrameTooLarge {
            context,
            size,
            max: frame_max,
        });
    }
    Ok(())
}

/// Appends a method frame for `method` on `channel`.
///
/// Generic over the method struct, so the hot path (`basic.publish`, `basic.ack`) skips the
/// dispatch through [`Method`]. Nothing is left in `out` on error.
///
/// # Errors
///
/// [`EncodeError::FrameTooLarge`] when the frame would exceed `frame_max` (a table too large).
#[inline]
pub fn encode_method<M: MethodArgs>(
    out: &mut BytesMut,
    channel: u16,
    method: &M,
    frame_max: u32,
) -> Result<(), EncodeError> {
    let at = begin(out, FRAME_METHOD, channel);
    out.put_u16(M::CLASS_ID);
    out.put_u16(M::METHOD_ID);
    method.encode_args(out);
    let size = finish(out, at);
    check_size(out, at, size, frame_max, M::NAME)
}

/// Appends a `basic.publish` method frame from borrowed names, without building a
/// [`basic::Publish`](crate::method::basic::Publish) (which would copy them into owned strings).
///
/// The publish hot path uses this; it writes the same bytes as [`encode_method`].
///
/// # Errors
///
/// [`EncodeError::ShortStrTooLong`] when the exchange or routing key is longer than 255 bytes;
/// nothing is left in `out` then.
#[inline]
pub fn encode_basic_publish(
    out: &mut BytesMut,
    channel: u16,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
) -> Result<(), EncodeError> {
    for name in [exchange, routing_key] {
        if name.len() > crate::ShortStr::MAX_LEN {
            return Err(EncodeError::ShortStrTooLong { len: name.len() });
        }
    }
    let at = begin(out, FRAME_METHOD, channel);
    out.put_u16(60); // basic
    out.put_u16(40); // publish
    out.put_u16(0); // ticket (reserved)
    out.put_u8(exchange.len() as u8);
    out.put_slice(exchange.as_bytes());
    out.put_u8(routing_key.len() as u8);
    out.put_slice(routing_key.as_bytes());
    out.put_u8(u8::from(mandatory));
    finish(out, at);
    Ok(())
}

/// Appends a method frame for any [`Method`]. Nothing is left in `out` on error.
///
/// # Errors
///
/// [`EncodeError::FrameTooLarge`] when the frame would exceed `frame_max`.
pub fn encode_any_method(
    out: &mut BytesMut,
    channel: u16,
    method: &Method,
    frame_max: u32,
) -> Result<(), EncodeError> {
    let at = begin(out, FRAME_METHOD, channel);
    method.encode(out);
    let size = finish(out, at);
    check_size(out, at, size, frame_max, method.name())
}

/// Appends a content header frame for a basic message of `body_size` bytes. Nothing is left in
/// `out` on error.
///
/// # Errors
///
/// [`EncodeError::FrameTooLarge`] when the properties make the frame exceed `frame_max`.
#[inline]
pub fn encode_header(
    out: &mut BytesMut,
    channel: u16,
    body_size: u64,
    properties: &BasicProperties,
    frame_max: u32,
) -> Result<(), EncodeError> {
    let at = begin(out, FRAME_HEADER, channel);
    ContentHeader::encode_parts(body_size, properties, out);
    let size = finish(out, at);
    check_size(out, at, size, frame_max, "content header")
}

/// Appends the 7-byte header of a body frame carrying `len` bytes.
///
/// The caller sends the `len` body bytes next (for example as a separate buffer in a vectored
/// write, so the body is never copied), then [`FRAME_END`]. Bodies longer than
/// `frame_max - 8` must be split across several body frames; that is the caller's job.
#[inline]
pub fn encode_body_header(out: &mut BytesMut, channel: u16, len: usize) {
    out.put_u8(FRAME_BODY);
    out.put_u16(channel);
    // Callers split bodies at frame_max, itself a u32.
    out.put_u32(len as u32);
}

/// Appends a heartbeat frame.
#[inline]
pub fn encode_heartbeat(out: &mut BytesMut) {
    out.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::basic;
    use crate::types::ShortStr;

    fn heartbeat() -> Vec<u8> {
        vec![8, 0, 0, 0, 0, 0, 0, 0xce]
    }

    #[test]
    fn partial_frame_consumes_nothing() {
        let full = heartbeat();
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(Frame::decode(&mut buf, 4096), Ok(None));
            assert_eq!(buf.len(), cut);
        }
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let mut buf = BytesMut::new();
        encode_heartbeat(&mut buf);
        encode_body_header(&mut buf, 3, 2);
        buf.put_slice(b"hi");
        buf.put_u8(FRAME_END);
        buf.put_slice(&[8, 0]); // start of a third frame
        assert_eq!(Frame::decode(&mut buf, 4096), Ok(Some(Frame::Heartbeat)));
        assert_eq!(
            Frame::decode(&mut buf, 4096),
            Ok(Some(Frame::Body {
                channel: 3,
                body: Bytes::from_static(b"hi")
            }))
        );
        assert_eq!(Frame::decode(&mut buf, 4096), Ok(None));
        assert_eq!(&buf[..], &[8, 0]);
    }

    #[test]
    fn oversized_frame_rejected_from_the_header_alone() {
        // Declares 1 MiB; only the header is present.
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 0x10, 0, 0][..]);
        assert_eq!(
            Frame::decode(&mut buf, 131_072),
            Err(DecodeError::FrameTooLarge {
                size: 0x10_0000 + 8,
                max: 131_072
            })
        );
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            Frame::decode(&mut buf, u32::MAX),
            Err(DecodeError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn bad_frame_end_and_type() {
        let mut bad_end = heartbeat();
        bad_end[7] = 0;
        assert_eq!(
            Frame::decode(&mut BytesMut::from(&bad_end[..]), 4096),
            Err(DecodeError::BadFrameEnd { found: 0 })
        );
        let mut bad_type = heartbeat();
        bad_type[0] = 4;
        assert_eq!(
            Frame::decode(&mut BytesMut::from(&bad_type[..]), 4096),
            Err(DecodeError::UnknownFrameType(4))
        );
        let bad_hb = [8u8, 0, 1, 0, 0, 0, 0, 0xce];
        assert_eq!(
            Frame::decode(&mut BytesMut::from(&bad_hb[..]), 4096),
            Err(DecodeError::BadHeartbeat {
                channel: 1,
                size: 0
            })
        );
    }

    #[test]
    fn golden_basic_publish() {
        // basic.publish on channel 1, exchange "", routing key "q", mandatory: spec §4.2.3 and
        // the basic.publish argument list (ticket short, exchange, routing-key, bits).
        #[rustfmt::skip]
        let expected = [
            1, 0, 1, 0, 0, 0, 10,   // method frame, channel 1, size 10
            0, 60, 0, 40,           // basic.publish
            0, 0,                   // ticket (reserved)
            0,                      // exchange ""
            1, b'q',                // routing key "q"
            0b01,                   // mandatory=1, immediate=0
            0xce,
        ];
        let publish = basic::Publish {
            exchange: ShortStr::default(),
            routing_key: ShortStr::from_static("q"),
            mandatory: true,
            immediate: false,
        };
        let mut out = BytesMut::new();
        encode_method(&mut out, 1, &publish, 4096).unwrap();
        assert_eq!(&out[..], &expected);
        assert_eq!(
            Frame::decode(&mut out, 4096),
            Ok(Some(Frame::Method {
                channel: 1,
                method: Method::BasicPublish(publish)
            }))
        );
    }

    #[test]
    fn fast_publish_encoder_matches_the_generated_one() {
        for (exchange, key, mandatory) in [("", "q", false), ("amq.topic", "a.b.c", true)] {
            let publish = basic::Publish {
                exchange: ShortStr::try_from(exchange).unwrap(),
                routing_key: ShortStr::try_from(key).unwrap(),
                mandatory,
                immediate: false,
            };
            let mut expected = BytesMut::new();
            encode_method(&mut expected, 9, &publish, 4096).unwrap();
            let mut out = BytesMut::new();
            encode_basic_publish(&mut out, 9, exchange, key, mandatory).unwrap();
            assert_eq!(out, expected);
        }
        let mut out = BytesMut::new();
        let long = "k".repeat(256);
        assert_eq!(
            encode_basic_publish(&mut out, 1, "", &long, false),
            Err(EncodeError::ShortStrTooLong { len: 256 })
        );
        assert!(out.is_empty());
    }

    #[test]
    fn encode_rejects_frame_over_frame_max_and_leaves_nothing() {
        let mut out = BytesMut::from(&b"keep"[..]);
        let publish = basic::Publish {
            routing_key: ShortStr::try_from("k".repeat(200)).unwrap(),
            ..Default::default()
        };
        let err = encode_method(&mut out, 1, &publish, 100).unwrap_err();
        assert!(matches!(
            err,
            EncodeError::FrameTooLarge {
                context: "basic.publish",
                ..
            }
        ));
        assert_eq!(&out[..], b"keep");
    }
}
