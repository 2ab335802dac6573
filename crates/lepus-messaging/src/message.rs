//! [`Message`]: a delivery as kombu's `Message` presents it.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use lepus::{BasicProperties, Delivery, FieldTable};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::serializer::{Accept, Payload, Registry};

/// Where a message stands: received, or settled one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageState {
    /// Received and not settled yet.
    Received,
    /// Acknowledged.
    Acked,
    /// Rejected without requeue: dropped, or dead-lettered.
    Rejected,
    /// Rejected with requeue: the broker delivers it again.
    Requeued,
}

impl MessageState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Acked,
            2 => Self::Rejected,
            3 => Self::Requeued,
            _ => Self::Received,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Received => 0,
            Self::Acked => 1,
            Self::Rejected => 2,
            Self::Requeued => 3,
        }
    }
}

impl fmt::Display for MessageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Received => "received",
            Self::Acked => "acked",
            Self::Rejected => "rejected",
            Self::Requeued => "requeued",
        })
    }
}

/// A message from a [`Consumer`](crate::Consumer) or [`get`](crate::Connection::get): the
/// delivery information, the properties and headers, the body (decompressed when the
/// `compression` header says so), and the means to decode and settle it.
///
/// [`decode`](Self::decode) runs the accept check and the serializer named by the content
/// type; [`payload`](Self::payload) does the same into a dynamic value. Settle it once with
/// [`ack`](Self::ack), [`reject`](Self::reject), [`requeue`](Self::requeue) or
/// [`nack`](Self::nack): a second settlement is refused with [`Error::MessageState`] (nothing
/// is sent, so the broker never closes the channel over it). Clones share the settlement.
///
/// Names that are not UTF-8 (the broker allows any octets) read as empty strings here; the
/// exact bytes are in [`delivery`](Self::delivery).
#[derive(Clone)]
pub struct Message {
    inner: Arc<Inner>,
}

struct Inner {
    delivery: Delivery,
    body: Bytes,
    no_ack: bool,
    state: AtomicU8,
    registry: Registry,
    accept: Arc<Accept>,
    message_count: Option<u32>,
    /// Keeps the consumer's channel open while the message exists.
    _guard: Option<Arc<dyn Send + Sync>>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("delivery_tag", &self.delivery_tag())
            .field("routing_key", &self.routing_key())
            .field("content_type", &self.content_type())
            .field("body_len", &self.inner.body.len())
            .field("state", &self.state())
            .finish()
    }
}

impl Message {
    /// Wraps a delivery whose body was decompressed already into `body`.
    pub(crate) fn new(
        delivery: Delivery,
        body: Bytes,
        no_ack: bool,
        registry: Registry,
        accept: Arc<Accept>,
        message_count: Option<u32>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                delivery,
                body,
                no_ack,
                state: AtomicU8::new(MessageState::Received.as_u8()),
                registry,
                accept,
                message_count,
                _guard: None,
            }),
        }
    }

    /// Ties `guard` (the consumer's channel) to the message's life. Called on a message just
    /// made, before it is shared.
    pub(crate) fn with_guard(mut self, guard: Arc<dyn Send + Sync>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner._guard = Some(guard);
        }
        self
    }

    /// The delivery tag, scoped to the channel it came on.
    pub fn delivery_tag(&self) -> u64 {
        self.inner.delivery.delivery_tag
    }

    /// Whether the broker delivered it before (and it was not acknowledged).
    pub fn redelivered(&self) -> bool {
        self.inner.delivery.redelivered
    }

    /// The exchange it was published to (empty for the default exchange).
    pub fn exchange(&self) -> &str {
        self.inner.delivery.exchange.as_str().unwrap_or_default()
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        self.inner.delivery.routing_key.as_str().unwrap_or_default()
    }

    /// The consumer tag it was delivered to (empty for a `basic.get`).
    pub fn consumer_tag(&self) -> &str {
        self.inner
            .delivery
            .consumer_tag
            .as_str()
            .unwrap_or_default()
    }

    /// For a message from a `basic.get`: how many messages the queue held after it.
    pub fn message_count(&self) -> Option<u32> {
        self.inner.message_count
    }

    /// The delivery as the client received it (names as raw bytes, the body as sent).
    pub fn delivery(&self) -> &Delivery {
        &self.inner.delivery
    }

    /// Its AMQP properties.
    pub fn properties(&self) -> &BasicProperties {
        &self.inner.delivery.properties
    }

    /// Its application headers (empty when it has none).
    pub fn headers(&self) -> &FieldTable {
        static EMPTY: std::sync::OnceLock<FieldTable> = std::sync::OnceLock::new();
        match &self.inner.delivery.properties.headers {
            Some(h) => h,
            None => EMPTY.get_or_init(FieldTable::default),
        }
    }

    /// One application header.
    pub fn header(&self, name: &str) -> Option<&lepus::FieldValue> {
        self.inner.delivery.properties.headers.as_ref()?.get(name)
    }

    /// Its content type (`application/json`, ...), if it has one.
    pub fn content_type(&self) -> Option<&str> {
        self.inner
            .delivery
            .properties
            .content_type
            .as_ref()
            .and_then(|s| s.as_str())
    }

    /// Its content encoding (`utf-8`, `binary`, ...), if it has one.
    pub fn content_encoding(&self) -> Option<&str> {
        self.inner
            .delivery
            .properties
            .content_encoding
            .as_ref()
            .and_then(|s| s.as_str())
    }

    /// The compression method's MIME type from the `compression` header, if compressed.
    pub fn compression(&self) -> Option<&str> {
        self.header("compression")
            .and_then(lepus::FieldValue::as_str)
    }

    /// The body, decompressed.
    pub fn body(&self) -> &Bytes {
        &self.inner.body
    }

    /// The body as it came over the wire (compressed, when it was).
    pub fn raw_body(&self) -> &Bytes {
        &self.inner.delivery.body
    }

    /// Decodes the body into `T`: the content type must be in the consumer's accept list
    /// (or always trusted), and its serializer turns the body into `T`. kombu's JSON type
    /// markers (`{"__type__": "datetime", ...}`) become the string or bytes form that
    /// `T`'s field expects (see [`serializer`](crate::serializer)).
    ///
    /// # Errors
    ///
    /// [`Error::ContentDisallowed`] outside the accept list, [`Error::Decode`] when the body
    /// does not parse as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        self.inner.registry.decode(
            &self.inner.body,
            self.content_type(),
            self.content_encoding(),
            &self.inner.accept,
        )
    }

    /// Decodes the body into a dynamic value: JSON, msgpack and YAML into a
    /// [`serde_json::Value`], raw bodies as bytes, text as a string.
    ///
    /// # Errors
    ///
    /// As [`decode`](Self::decode).
    pub fn payload(&self) -> Result<Payload> {
        self.inner.registry.decode_payload(
            &self.inner.body,
            self.content_type(),
            self.content_encoding(),
            &self.inner.accept,
        )
    }

    /// Where it stands.
    pub fn state(&self) -> MessageState {
        MessageState::from_u8(self.inner.state.load(Ordering::Acquire))
    }

    /// Whether it was settled (kombu's `acknowledged`).
    pub fn acknowledged(&self) -> bool {
        self.state() != MessageState::Received
    }

    /// Whether it came from a no-ack consumer: the broker counts it as acknowledged already,
    /// and settling it sends nothing.
    pub fn is_no_ack(&self) -> bool {
        self.inner.no_ack
    }

    /// Acknowledges it: the broker forgets it.
    ///
    /// # Errors
    ///
    /// [`Error::MessageState`] when it was settled already; the client's error when its
    /// channel closed (the broker then requeues it by itself).
    pub fn ack(&self) -> Result<()> {
        self.settle(MessageState::Acked, |d| d.ack())
    }

    /// Rejects it without requeue: the broker drops it or dead-letters it.
    ///
    /// # Errors
    ///
    /// As [`ack`](Self::ack).
    pub fn reject(&self) -> Result<()> {
        self.settle(MessageState::Rejected, |d| d.reject(false))
    }

    /// Rejects it with requeue: the broker delivers it again, to this or another consumer.
    ///
    /// # Errors
    ///
    /// As [`ack`](Self::ack).
    pub fn requeue(&self) -> Result<()> {
        self.settle(MessageState::Requeued, |d| d.reject(true))
    }

    /// Negatively acknowledges it (`basic.nack`), with or without requeue.
    ///
    /// # Errors
    ///
    /// As [`ack`](Self::ack).
    pub fn nack(&self, requeue: bool) -> Result<()> {
        let state = if requeue {
            MessageState::Requeued
        } else {
            MessageState::Rejected
        };
        self.settle(state, |d| d.nack(requeue))
    }

    fn settle(
        &self,
        to: MessageState,
        send: impl FnOnce(&Delivery) -> lepus::Result<()>,
    ) -> Result<()> {
        let from = MessageState::Received.as_u8();
        if let Err(now) =
            self.inner
                .state
                .compare_exchange(from, to.as_u8(), Ordering::AcqRel, Ordering::Acquire)
        {
            return Err(Error::MessageState(MessageState::from_u8(now)));
        }
        if self.inner.no_ack {
            return Ok(());
        }
        send(&self.inner.delivery).map_err(Error::from)
    }
}
