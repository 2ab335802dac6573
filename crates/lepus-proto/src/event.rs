//! What the state machine reports to its driver.

use bytes::Bytes;
use lepus_wire::method::basic;
use lepus_wire::{BasicProperties, Method, ShortStr};

use crate::error::{Close, ConnectionError};

/// Properties and body of a message received from the server.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    /// The message's properties.
    pub properties: BasicProperties,
    /// The body; a slice of the received frame when it arrived in one piece.
    pub body: Bytes,
}

/// A reply to a synchronous request.
// `GetOk` carries the message's properties inline; boxing them would cost an allocation per get.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// A reply method without content, such as `queue.declare-ok` or `basic.get-empty`.
    Method(Method),
    /// `basic.get-ok` with the fetched message.
    GetOk {
        /// The method's arguments.
        get_ok: basic::GetOk,
        /// The message.
        message: Message,
    },
}

/// Something that happened on the connection. Returned by
/// [`Connection::poll_event`](crate::Connection::poll_event).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake finished: the connection is open and channels may be opened.
    Connected,
    /// The reply to the oldest outstanding synchronous request on `channel` (replies come in
    /// request order, so the driver pairs them first-in, first-out).
    Reply {
        /// The channel.
        channel: u16,
        /// The reply.
        reply: Reply,
    },
    /// A message delivered to a consumer.
    Delivery {
        /// The channel.
        channel: u16,
        /// Consumer tag, delivery tag, redelivered flag, exchange and routing key.
        deliver: basic::Deliver,
        /// The message.
        message: Message,
    },
    /// A mandatory message that could not be routed, sent back by the server.
    Returned {
        /// The channel.
        channel: u16,
        /// Reply code and text, exchange and routing key.
        returned: basic::Return,
        /// The message.
        message: Message,
    },
    /// A publisher confirm: the server took (`ack`) or refused the message(s).
    Confirm {
        /// The channel.
        channel: u16,
        /// The sequence number the confirm is for.
        delivery_tag: u64,
        /// It covers every earlier unconfirmed sequence number too.
        multiple: bool,
        /// `true` for basic.ack, `false` for basic.nack.
        ack: bool,
    },
    /// The server cancelled a consumer (its queue was deleted, or it timed out).
    ConsumerCancelled {
        /// The channel.
        channel: u16,
        /// The consumer's tag.
        consumer_tag: ShortStr,
    },
    /// The server asked to pause (`false`) or resume (`true`) publishing on a channel.
    Flow {
        /// The channel.
        channel: u16,
        /// Whether publishing may go on.
        active: bool,
    },
    /// A channel closed: by the server (`Some(close)`, a soft error) or on request (`None`).
    /// Its outstanding requests have failed and its id is free again.
    ChannelClosed {
        /// The channel.
        channel: u16,
        /// The server's reason, when the server closed it.
        close: Option<Close>,
    },
    /// The server stopped reading publishes (`connection.blocked`), for example on an alarm.
    Blocked {
        /// The server's reason.
        reason: String,
    },
    /// The server reads publishes again (`connection.unblocked`).
    Unblocked,
    /// The connection is finished. Always the last event. A normal close on request is
    /// [`ConnectionError::LocallyClosed`] with code 200.
    Closed(ConnectionError),
}
