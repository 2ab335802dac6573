//! What [`Connection::drain_events`](super::Connection::drain_events) reports.

use lepus_proto::Close;
use lepus_wire::ShortStr;

use crate::confirm::ReturnedMessage;

/// Something [`drain_events`](super::Connection::drain_events) did or received.
///
/// Deliveries go to their consumer's callback and are reported here as
/// [`Delivered`](Self::Delivered) once the callback has returned; everything else the broker
/// sends on its own initiative is handed to the caller as one of the other variants.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A delivery was passed to its consumer's callback, which has returned.
    Delivered {
        /// The channel it arrived on.
        channel: u16,
        /// The consumer whose callback ran.
        consumer_tag: ShortStr,
        /// The delivery's tag.
        delivery_tag: u64,
    },
    /// The broker sent back a mandatory message it could not route (`basic.return`, usually
    /// 312 NO_ROUTE).
    Returned {
        /// The channel it was published on.
        channel: u16,
        /// The message, with the broker's reply code and text (boxed: it is large, and rare).
        message: Box<ReturnedMessage>,
    },
    /// A step of an automatic recovery: the connection was lost
    /// ([`ConnectionEvent::Disconnected`](crate::ConnectionEvent::Disconnected)), an attempt
    /// to reconnect, a queue renamed, a consumer subscribed again, an entity that could not be
    /// restored, and the connection recovered (or given up). Consumers and their callbacks go
    /// on across a recovery without any code of the application's.
    Recovery(crate::ConnectionEvent),
    /// The broker cancelled a consumer (`basic.cancel`): its queue was deleted, or the
    /// consumer timed out. Its callback has been dropped.
    ConsumerCancelled {
        /// The consumer's channel.
        channel: u16,
        /// The cancelled consumer.
        consumer_tag: ShortStr,
    },
    /// The broker closed a channel (a soft error such as 404 after publishing to a missing
    /// exchange). Its consumers' callbacks have been dropped; later calls on it, including
    /// [`Channel::close`](super::Channel::close), fail with
    /// [`Error::ChannelClosed`](crate::Error::ChannelClosed) carrying the broker's reason.
    /// Reported also when the error of a request closed it (the request has already returned
    /// that error); not reported for a channel closed by
    /// [`Channel::close`](super::Channel::close) or with its connection.
    ChannelClosed {
        /// The closed channel.
        channel: u16,
        /// The broker's reason. `None` when the channel had no consumer to report it; a later
        /// call on the channel (such as [`Channel::close`](super::Channel::close)) still
        /// returns the reason.
        reason: Option<Close>,
    },
    /// The broker stopped reading publishes (`connection.blocked`), with its reason, such as
    /// a memory alarm. Publishes wait until it unblocks.
    Blocked {
        /// The broker's reason.
        reason: String,
    },
    /// The broker reads publishes again (`connection.unblocked`).
    Unblocked,
}

/// The result of [`drain_events`](super::Connection::drain_events): events, or a timeout.
///
/// # Examples
///
/// ```
/// # fn demo(conn: &lepus::blocking::Connection) -> Result<(), lepus::Error> {
/// use std::time::Duration;
/// use lepus::blocking::{Drained, Event};
///
/// # let ch = conn.open_channel()?;
/// # let options = lepus::BasicPublishOptions { mandatory: true, ..Default::default() };
/// # ch.basic_publish("", "nowhere", options, &lepus::BasicProperties::default(), "lost")?;
/// match conn.drain_events(Some(Duration::from_secs(1)))? {
///     Drained::TimedOut => println!("nothing for a second"),
///     Drained::Events(events) => {
///         for event in events {
///             if let Event::Returned { message, .. } = event {
///                 println!("unroutable: {:?}", message.routing_key);
///             }
///         }
///     }
/// }
/// # Ok(()) }
/// # fn main() -> Result<(), lepus::Error> {
/// # let conn = lepus::blocking::Connection::connect("memory://")?;
/// # demo(&conn)?;
/// # conn.close()
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub enum Drained {
    /// At least one event, in the order they were dispatched.
    Events(Vec<Event>),
    /// The timeout passed with nothing to dispatch.
    TimedOut,
}

impl Drained {
    /// Whether the timeout passed with nothing to dispatch.
    pub fn is_timed_out(&self) -> bool {
        matches!(self, Self::TimedOut)
    }

    /// The events (none when timed out).
    pub fn events(&self) -> &[Event] {
        match self {
            Self::Events(events) => events,
            Self::TimedOut => &[],
        }
    }
}
