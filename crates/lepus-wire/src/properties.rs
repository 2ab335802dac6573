//! Basic content properties and the content header frame payload.
//!
//! See AMQP 0-9-1 §4.2.6.1 (content header) and the basic class's property list.

use std::time::Duration;

use bytes::{BufMut, BytesMut};

use crate::codec::Reader;
use crate::error::{DecodeError, EncodeError};
use crate::field_table::{FieldTable, FieldValue};
use crate::types::{AsShortStr, ShortStr};

/// The class id of `basic`, the only class that carries content.
pub const BASIC_CLASS_ID: u16 = 60;

// Property flag bits, highest first, in the order the spec lists the properties.
const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
const CORRELATION_ID: u16 = 1 << 10;
const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
const TYPE: u16 = 1 << 5;
const USER_ID: u16 = 1 << 4;
const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;
/// Bit 0 says another flag word follows.
const CONTINUATION: u16 = 1;
/// Bit 1 is unused by the basic class.
const UNDEFINED: u16 = 1 << 1;

/// The 14 properties of a basic message, each optional, in the spec's flag order.
///
/// Only the properties that are `Some` are sent: the encoder builds the flag word from them.
/// [`BasicProperties::builder`] takes ordinary strings and typed values and checks them once,
/// in [`build`](BasicPropertiesBuilder::build); the fields can also be set directly.
///
/// # Examples
///
/// ```
/// # use lepus_wire as lepus;
/// use std::time::Duration;
/// use lepus::{BasicProperties, DeliveryMode};
///
/// let request_id = format!("req-{}", 7);
/// let props = BasicProperties::builder()
///     .content_type("application/json")
///     .delivery_mode(DeliveryMode::Persistent)
///     .correlation_id(&request_id)
///     .expiration(Duration::from_secs(60))
///     .header("attempt", 1)
///     .build()?;
/// assert!(props.is_persistent());
/// assert_eq!(props.expiration.as_ref().and_then(|e| e.as_str()), Some("60000"));
///
/// // Or field by field:
/// use lepus::{FieldTable, ShortStr};
/// let same = BasicProperties {
///     content_type: Some(ShortStr::from_static("application/json")),
///     delivery_mode: Some(DeliveryMode::Persistent.into()),
///     correlation_id: Some(ShortStr::try_from(request_id.as_str())?),
///     expiration: Some(ShortStr::from_static("60000")),
///     headers: Some(FieldTable::new().with("attempt", 1)),
///     ..Default::default()
/// };
/// assert_eq!(props, same);
/// # Ok::<(), lepus::EncodeError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BasicProperties {
    /// MIME content type, such as `application/json`.
    pub content_type: Option<ShortStr>,
    /// MIME content encoding, such as `gzip`.
    pub content_encoding: Option<ShortStr>,
    /// Application headers; also read by headers exchanges.
    pub headers: Option<FieldTable>,
    /// 1 for transient, 2 for persistent.
    pub delivery_mode: Option<u8>,
    /// Message priority, 0 to 9 (queues honour it up to their `x-max-priority`).
    pub priority: Option<u8>,
    /// Application correlation identifier, used for RPC replies.
    pub correlation_id: Option<ShortStr>,
    /// Queue to reply to, used for RPC.
    pub reply_to: Option<ShortStr>,
    /// Per-message TTL in milliseconds, written as a decimal string (RabbitMQ's convention).
    pub expiration: Option<ShortStr>,
    /// Application message identifier.
    pub message_id: Option<ShortStr>,
    /// Message timestamp, in seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// Message type name (the spec's `type`).
    pub kind: Option<ShortStr>,
    /// Creating user id; RabbitMQ checks it against the connection's user.
    pub user_id: Option<ShortStr>,
    /// Creating application id.
    pub app_id: Option<ShortStr>,
    /// Reserved by the spec; RabbitMQ passes it through.
    pub cluster_id: Option<ShortStr>,
}

/// Whether a message is written to disk (`delivery-mode`).
///
/// A persistent message in a durable queue survives a broker restart; a transient one may be
/// kept in memory only. Quorum queues and streams store every message, whatever its mode. See
/// <https://www.rabbitmq.com/docs/persistence-conf>.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    /// 1: the broker may keep the message in memory only.
    Transient = 1,
    /// 2: the broker writes the message to disk (in a durable queue).
    Persistent = 2,
}

impl From<DeliveryMode> for u8 {
    fn from(mode: DeliveryMode) -> u8 {
        mode as u8
    }
}

impl BasicProperties {
    /// A builder that takes ordinary strings and typed values; see [`BasicPropertiesBuilder`].
    pub fn builder() -> BasicPropertiesBuilder {
        BasicPropertiesBuilder::default()
    }

    /// Whether `delivery_mode` is 2, persistent.
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == Some(DeliveryMode::Persistent.into())
    }

    /// The property flag word for the properties that are set.
    pub fn flags(&self) -> u16 {
        let bit = |set: bool, flag: u16| if set { flag } else { 0 };
        bit(self.content_type.is_some(), CONTENT_TYPE)
            | bit(self.content_encoding.is_some(), CONTENT_ENCODING)
            | bit(self.headers.is_some(), HEADERS)
            | bit(self.delivery_mode.is_some(), DELIVERY_MODE)
            | bit(self.priority.is_some(), PRIORITY)
            | bit(self.correlation_id.is_some(), CORRELATION_ID)
            | bit(self.reply_to.is_some(), REPLY_TO)
            | bit(self.expiration.is_some(), EXPIRATION)
            | bit(self.message_id.is_some(), MESSAGE_ID)
            | bit(self.timestamp.is_some(), TIMESTAMP)
            | bit(self.kind.is_some(), TYPE)
            | bit(self.user_id.is_some(), USER_ID)
            | bit(self.app_id.is_some(), APP_ID)
            | bit(self.cluster_id.is_some(), CLUSTER_ID)
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        out.put_u16(self.flags());
        let short = |out: &mut BytesMut, v: &Option<ShortStr>| {
            if let Some(v) = v {
                v.encode(out);
            }
        };
        short(out, &self.content_type);
        short(out, &self.content_encoding);
        if let Some(h) = &self.headers {
            h.encode(out);
        }
        if let Some(v) = self.delivery_mode {
            out.put_u8(v);
        }
        if let Some(v) = self.priority {
            out.put_u8(v);
        }
        short(out, &self.correlation_id);
        short(out, &self.reply_to);
        short(out, &self.expiration);
        short(out, &self.message_id);
        if let Some(v) = self.timestamp {
            out.put_u64(v);
        }
        short(out, &self.kind);
        short(out, &self.user_id);
        short(out, &self.app_id);
        short(out, &self.cluster_id);
    }

    /// Decodes the flag word and the properties it announces into `self`, which must be the
    /// default (all `None`). Decoding in place spares moving this large struct around.
    #[inline]
    pub(crate) fn decode_into(&mut self, r: &mut Reader<'_>) -> Result<(), DecodeError> {
        let flags = r.u16("property flags")?;
        if flags & UNDEFINED != 0 {
            return Err(DecodeError::UnknownPropertyFlags(flags & UNDEFINED));
        }
        // A continuation word may follow (spec §4.2.6.1); the basic class defines no property
        // there, so any further word must be empty apart from its own continuation bit.
        let mut more = flags & CONTINUATION != 0;
        while more {
            let next = r.u16("property flags")?;
            if next & !CONTINUATION != 0 {
                return Err(DecodeError::UnknownPropertyFlags(next & !CONTINUATION));
            }
            more = next & CONTINUATION != 0;
        }
        if flags & !CONTINUATION == 0 {
            return Ok(());
        }
        let short = |r: &mut Reader<'_>, flag: u16| -> Result<Option<ShortStr>, DecodeError> {
            if flags & flag == 0 {
                return Ok(None);
            }
            ShortStr::decode(r).map(Some)
        };
        self.content_type = short(r, CONTENT_TYPE)?;
        self.content_encoding = short(r, CONTENT_ENCODING)?;
        if flags & HEADERS != 0 {
            self.headers = Some(FieldTable::decode(r)?);
        }
        if flags & DELIVERY_MODE != 0 {
            self.delivery_mode = Some(r.u8("delivery-mode")?);
        }
        if flags & PRIORITY != 0 {
            self.priority = Some(r.u8("priority")?);
        }
        self.correlation_id = short(r, CORRELATION_ID)?;
        self.reply_to = short(r, REPLY_TO)?;
        self.expiration = short(r, EXPIRATION)?;
        self.message_id = short(r, MESSAGE_ID)?;
        if flags & TIMESTAMP != 0 {
            self.timestamp = Some(r.u64("timestamp")?);
        }
        self.kind = short(r, TYPE)?;
        self.user_id = short(r, USER_ID)?;
        self.app_id = short(r, APP_ID)?;
        self.cluster_id = short(r, CLUSTER_ID)?;
        Ok(())
    }
}

/// Builds [`BasicProperties`] from ordinary strings and typed values.
///
/// Each setter takes anything [`AsShortStr`] (a `&str`, a `&String`, a [`ShortStr`] from a
/// received message) where the property is a short string. A value over 255 bytes does not
/// panic: the builder remembers the first such mistake and [`build`](Self::build) returns it,
/// naming the property. Setting a property twice keeps the last value.
///
/// # Examples
///
/// ```
/// # use lepus_wire as lepus;
/// use lepus::{BasicProperties, EncodeError};
///
/// let err = BasicProperties::builder().content_type(&"x".repeat(300)).build().unwrap_err();
/// assert_eq!(err, EncodeError::PropertyTooLong { property: "content-type", len: 300 });
/// assert_eq!(err.to_string(), "content-type of 300 bytes exceeds 255 bytes");
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until build() is called"]
pub struct BasicPropertiesBuilder {
    properties: BasicProperties,
    error: Option<EncodeError>,
}

impl BasicPropertiesBuilder {
    /// MIME content type, such as `application/json`.
    pub fn content_type(mut self, value: impl AsShortStr) -> Self {
        self.properties.content_type = self.short("content-type", &value);
        self
    }

    /// MIME content encoding, such as `gzip`.
    pub fn content_encoding(mut self, value: impl AsShortStr) -> Self {
        self.properties.content_encoding = self.short("content-encoding", &value);
        self
    }

    /// Replaces the application headers with `headers`.
    pub fn headers(mut self, headers: FieldTable) -> Self {
        self.properties.headers = Some(headers);
        self
    }

    /// Adds or replaces one application header. The value converts as
    /// [`FieldValue`]'s `From` impls say: text becomes a long string, integers keep their
    /// width.
    pub fn header(mut self, name: impl AsShortStr, value: impl Into<FieldValue>) -> Self {
        let Some(name) = self.short("header name", &name) else {
            return self;
        };
        self.properties
            .headers
            .get_or_insert_with(FieldTable::new)
            .insert(name, value);
        self
    }

    /// Transient or persistent.
    pub fn delivery_mode(mut self, mode: DeliveryMode) -> Self {
        self.properties.delivery_mode = Some(mode.into());
        self
    }

    /// Message priority; RabbitMQ honours 0 up to the queue's `x-max-priority` (at most 255),
    /// treating a higher value as that maximum.
    pub fn priority(mut self, priority: u8) -> Self {
        self.properties.priority = Some(priority);
        self
    }

    /// Application correlation identifier, used to match RPC replies to requests.
    pub fn correlation_id(mut self, value: impl AsShortStr) -> Self {
        self.properties.correlation_id = self.short("correlation-id", &value);
        self
    }

    /// Queue to reply to, used for RPC (`amq.rabbitmq.reply-to` for direct reply-to).
    pub fn reply_to(mut self, value: impl AsShortStr) -> Self {
        self.properties.reply_to = self.short("reply-to", &value);
        self
    }

    /// Per-message TTL: the broker discards (or dead-letters) the message when it has waited
    /// this long in a queue. Sent as whole milliseconds, RabbitMQ's format; see
    /// <https://www.rabbitmq.com/docs/ttl#per-message-ttl-in-publishers>.
    pub fn expiration(mut self, ttl: Duration) -> Self {
        let millis = ttl.as_millis().to_string();
        self.properties.expiration = self.short("expiration", &millis.as_str());
        self
    }

    /// Application message identifier.
    pub fn message_id(mut self, value: impl AsShortStr) -> Self {
        self.properties.message_id = self.short("message-id", &value);
        self
    }

    /// Message timestamp, in seconds since the Unix epoch.
    pub fn timestamp(mut self, seconds: u64) -> Self {
        self.properties.timestamp = Some(seconds);
        self
    }

    /// Message type name (the spec's `type`).
    pub fn kind(mut self, value: impl AsShortStr) -> Self {
        self.properties.kind = self.short("type", &value);
        self
    }

    /// Creating user id; RabbitMQ refuses a message whose user id is not the connection's user.
    pub fn user_id(mut self, value: impl AsShortStr) -> Self {
        self.properties.user_id = self.short("user-id", &value);
        self
    }

    /// Creating application id.
    pub fn app_id(mut self, value: impl AsShortStr) -> Self {
        self.properties.app_id = self.short("app-id", &value);
        self
    }

    /// The properties.
    ///
    /// # Errors
    ///
    /// [`EncodeError::PropertyTooLong`] for the first value set that was over 255 bytes.
    pub fn build(self) -> Result<BasicProperties, EncodeError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.properties),
        }
    }

    /// Converts a short-string value, remembering the first failure.
    fn short(&mut self, property: &'static str, value: &impl AsShortStr) -> Option<ShortStr> {
        match value.to_short_str() {
            Ok(s) => Some(s),
            Err(_) => {
                let len = value.as_short_bytes().len();
                self.error
                    .get_or_insert(EncodeError::PropertyTooLong { property, len });
                None
            }
        }
    }
}

/// The payload of a content header frame: which class the content belongs to, the body's total
/// size, and the message properties.
///
/// The spec's `weight` field is always 0 and is not kept; the decoder ignores it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContentHeader {
    /// Total size of the body that follows in body frames.
    pub body_size: u64,
    /// The message's properties.
    pub properties: BasicProperties,
}

impl ContentHeader {
    /// The class id the header is sent with; always [`BASIC_CLASS_ID`].
    pub const CLASS_ID: u16 = BASIC_CLASS_ID;

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        Self::encode_parts(self.body_size, &self.properties, out);
    }

    pub(crate) fn encode_parts(body_size: u64, properties: &BasicProperties, out: &mut BytesMut) {
        out.put_u16(Self::CLASS_ID);
        out.put_u16(0); // weight
        out.put_u64(body_size);
        properties.encode(out);
    }

    #[cfg(test)]
    pub(crate) fn decode(payload: &mut bytes::Bytes) -> Result<Self, DecodeError> {
        let mut header = Self::default();
        crate::codec::read_from(payload, |r| header.decode_into(r))?;
        Ok(header)
    }

    /// Decodes a content header payload (all that `r` holds) into `self`, which must be the
    /// default.
    #[inline]
    pub(crate) fn decode_into(&mut self, r: &mut Reader<'_>) -> Result<(), DecodeError> {
        let class_id = r.u16("content header")?;
        if class_id != BASIC_CLASS_ID {
            return Err(DecodeError::UnknownContentClass(class_id));
        }
        let _weight = r.u16("content header")?;
        self.body_size = r.u64("content header")?;
        self.properties.decode_into(r)?;
        r.finish("content header")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn decode(bytes: &[u8]) -> Result<ContentHeader, DecodeError> {
        ContentHeader::decode(&mut Bytes::copy_from_slice(bytes))
    }

    /// A content header with several properties, written by hand from spec §4.2.6.1.
    #[test]
    fn golden_header_with_several_properties() {
        #[rustfmt::skip]
        let bytes: Vec<u8> = [
            &[0, 60, 0, 0][..],                        // class basic, weight 0
            &[0, 0, 0, 0, 0, 0, 0x01, 0x00],            // body size 256
            &[0b1011_1000, 0b0100_0000],                // content-type, headers, delivery-mode,
                                                        // priority, timestamp
            &[16], b"application/json",                 // content-type
            &[0, 0, 0, 7, 1, b'a', b'I', 0, 0, 0, 7],  // headers {"a": I 7}
            &[2],                                       // delivery-mode persistent
            &[5],                                       // priority 5
            &1_700_000_000u64.to_be_bytes(),            // timestamp
        ]
        .concat();

        let expected = ContentHeader {
            body_size: 256,
            properties: BasicProperties {
                content_type: Some(ShortStr::from_static("application/json")),
                headers: Some(FieldTable::new().with("a", 7)),
                delivery_mode: Some(2),
                priority: Some(5),
                timestamp: Some(1_700_000_000),
                ..Default::default()
            },
        };
        assert_eq!(decode(&bytes).unwrap(), expected);
        let mut out = BytesMut::new();
        expected.encode(&mut out);
        assert_eq!(out.to_vec(), bytes);
    }

    #[test]
    fn builder_sets_each_property() {
        let owned = String::from("reply.queue");
        let props = BasicProperties::builder()
            .content_type("application/json")
            .content_encoding(&String::from("gzip"))
            .header("attempt", 2)
            .header(&owned, "x")
            .delivery_mode(DeliveryMode::Transient)
            .priority(5)
            .correlation_id(ShortStr::from_static("c-1"))
            .reply_to(&owned)
            .expiration(Duration::from_millis(1500))
            .message_id("m-1")
            .timestamp(1_700_000_000)
            .kind("order.created")
            .user_id("guest")
            .app_id("tests")
            .build()
            .unwrap();
        let s = ShortStr::from_static;
        let expected = BasicProperties {
            content_type: Some(s("application/json")),
            content_encoding: Some(s("gzip")),
            headers: Some(
                FieldTable::new()
                    .with("attempt", 2)
                    .with("reply.queue", "x"),
            ),
            delivery_mode: Some(1),
            priority: Some(5),
            correlation_id: Some(s("c-1")),
            reply_to: Some(s("reply.queue")),
            expiration: Some(s("1500")),
            message_id: Some(s("m-1")),
            timestamp: Some(1_700_000_000),
            kind: Some(s("order.created")),
            user_id: Some(s("guest")),
            app_id: Some(s("tests")),
            cluster_id: None,
        };
        assert_eq!(props, expected);
        assert!(!props.is_persistent());
        assert_eq!(
            BasicProperties::builder().build().unwrap(),
            BasicProperties::default()
        );
    }

    #[test]
    fn builder_reports_the_first_value_too_long() {
        let long = "x".repeat(256);
        let err = BasicProperties::builder()
            .content_type("text/plain")
            .reply_to(&long)
            .app_id(&long.repeat(2))
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            EncodeError::PropertyTooLong {
                property: "reply-to",
                len: 256
            }
        );
        let err = BasicProperties::builder()
            .header(long.as_str(), 1)
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "header name of 256 bytes exceeds 255 bytes"
        );
        // 255 bytes is a valid short string.
        let props = BasicProperties::builder()
            .message_id(&long[..255])
            .build()
            .unwrap();
        assert_eq!(props.message_id.map(|m| m.len()), Some(255));
    }

    #[test]
    fn delivery_mode_values() {
        assert_eq!(u8::from(DeliveryMode::Transient), 1);
        assert_eq!(u8::from(DeliveryMode::Persistent), 2);
        let props = BasicProperties::builder()
            .delivery_mode(DeliveryMode::Persistent)
            .build()
            .unwrap();
        assert_eq!(props.delivery_mode, Some(2));
        assert!(props.is_persistent());
    }

    #[test]
    fn every_flag_in_spec_order() {
        let all = BasicProperties {
            content_type: Some(ShortStr::from_static("a")),
            content_encoding: Some(ShortStr::from_static("b")),
            headers: Some(FieldTable::new()),
            delivery_mode: Some(1),
            priority: Some(2),
            correlation_id: Some(ShortStr::from_static("c")),
            reply_to: Some(ShortStr::from_static("d")),
            expiration: Some(ShortStr::from_static("e")),
            message_id: Some(ShortStr::from_static("f")),
            timestamp: Some(3),
            kind: Some(ShortStr::from_static("g")),
            user_id: Some(ShortStr::from_static("h")),
            app_id: Some(ShortStr::from_static("i")),
            cluster_id: Some(ShortStr::from_static("j")),
        };
        assert_eq!(all.flags(), 0xfffc);
        let mut out = BytesMut::new();
        all.encode(&mut out);
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &[0xff, 0xfc][..], &[1, b'a'], &[1, b'b'], &[0, 0, 0, 0], &[1], &[2],
            &[1, b'c'], &[1, b'd'], &[1, b'e'], &[1, b'f'], &[0, 0, 0, 0, 0, 0, 0, 3],
            &[1, b'g'], &[1, b'h'], &[1, b'i'], &[1, b'j'],
        ]
        .concat();
        assert_eq!(out.to_vec(), expected);
    }

    #[test]
    fn continuation_word_is_read_and_unknown_flags_rejected() {
        let base = [0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut ok = base.to_vec();
        ok.extend_from_slice(&[0x10, 0x01, 0x00, 0x00, 2]); // delivery-mode + continuation
        assert_eq!(decode(&ok).unwrap().properties.delivery_mode, Some(2));

        let mut bad = base.to_vec();
        bad.extend_from_slice(&[0x00, 0x01, 0x80, 0x00]);
        assert_eq!(
            decode(&bad).unwrap_err(),
            DecodeError::UnknownPropertyFlags(0x8000)
        );
        let mut bit1 = base.to_vec();
        bit1.extend_from_slice(&[0x00, 0x02]);
        assert_eq!(
            decode(&bit1).unwrap_err(),
            DecodeError::UnknownPropertyFlags(2)
        );
    }

    #[test]
    fn other_class_and_trailing_bytes_are_rejected() {
        assert_eq!(
            decode(&[0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err(),
            DecodeError::UnknownContentClass(10)
        );
        assert!(matches!(
            decode(&[0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]).unwrap_err(),
            DecodeError::TrailingBytes { count: 1, .. }
        ));
    }
}
