//! The iterator consumer: the async [`Consumer`](crate::Consumer) stream, read by blocking.

use std::time::Duration;

use lepus_wire::ShortStr;

use super::channel::Channel;
use super::dispatch::give_back_remaining;
use crate::consumer::Delivery;
use crate::error::Result;

/// The deliveries of one consumer, from [`Channel::basic_consume_iter`], as a blocking
/// iterator.
///
/// Yields `Ok(Delivery)` in the order the broker sent them. Iteration ends (`None`) after the
/// consumer is cancelled with [`Channel::basic_cancel`] (once the deliveries received before
/// that are taken); if the broker cancels it or the channel or connection closes, it yields
/// one `Err` saying why, then ends. [`recv_timeout`](Self::recv_timeout) waits at most a given
/// time.
///
/// Deliveries keep arriving in the background while the thread does something else, up to
/// [`BasicConsumeOptions::buffer`](crate::BasicConsumeOptions::buffer); then the connection
/// stops reading until the consumer catches up (heartbeats go on).
///
/// `Consumer` is `Send`: it may be moved to the thread that processes the messages.
///
/// Dropping a consumer that has not ended cancels it in the background and rejects, with
/// requeue, the deliveries it had buffered, so the broker hands them to another consumer.
///
/// # Examples
///
/// Take what is there, stopping after a second of silence:
///
/// ```
/// # fn demo(ch: &lepus::blocking::Channel) -> Result<(), lepus::Error> {
/// use std::time::Duration;
/// use lepus::blocking::Received;
/// use lepus::BasicConsumeOptions;
///
/// # ch.queue_declare("jobs", lepus::QueueDeclareOptions::default())?;
/// # let (options, props) = (lepus::BasicPublishOptions::default(), lepus::BasicProperties::default());
/// # ch.basic_publish("", "jobs", options, &props, "job 1")?;
/// let mut consumer = ch.basic_consume_iter("jobs", "", BasicConsumeOptions::default())?;
/// while let Received::Delivery(delivery) = consumer.recv_timeout(Duration::from_secs(1))? {
///     delivery.ack()?;
/// }
/// consumer.cancel()?;
/// # Ok(()) }
/// # fn main() -> Result<(), lepus::Error> {
/// # let conn = lepus::blocking::Connection::connect("memory://")?;
/// # let ch = conn.open_channel()?;
/// # demo(&ch)?;
/// # conn.close()
/// # }
/// ```
pub struct Consumer {
    /// `None` once cancelled by [`Consumer::cancel`].
    stream: Option<crate::Consumer>,
    channel: Channel,
    tag: ShortStr,
    no_ack: bool,
    /// The stream said it has ended: nothing to cancel or give back on drop.
    ended: bool,
}

/// What [`Consumer::recv_timeout`] found.
#[derive(Debug)]
#[must_use]
// A short-lived return value, moved once: boxing the delivery would cost an allocation per
// message to save a copy of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
pub enum Received {
    /// The next delivery.
    Delivery(Delivery),
    /// Nothing arrived before the timeout.
    TimedOut,
    /// The consumer has ended: cancelled, after its channel or connection closed, or after an
    /// error was returned.
    Ended,
}

impl Consumer {
    pub(super) fn new(stream: crate::Consumer, channel: Channel, no_ack: bool) -> Self {
        Self {
            tag: stream.tag().clone(),
            stream: Some(stream),
            channel,
            no_ack,
            ended: false,
        }
    }

    /// The consumer tag.
    pub fn tag(&self) -> &ShortStr {
        &self.tag
    }

    /// Waits for the next delivery; `None` when the consumer has ended.
    ///
    /// # Errors
    ///
    /// Once, when the broker cancelled the consumer
    /// ([`Error::ConsumerCancelled`](crate::Error::ConsumerCancelled)) or its channel or
    /// connection closed.
    #[track_caller]
    pub fn recv(&mut self) -> Option<Result<Delivery>> {
        let stream = self.stream.as_mut()?;
        let item = self.channel.conn().io.block_on(stream.recv());
        if !matches!(item, Some(Ok(_))) {
            self.ended = true;
        }
        item
    }

    /// Waits at most `timeout` for the next delivery. A zero timeout takes a delivery that is
    /// already buffered, without waiting.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    #[track_caller]
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Received> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(Received::Ended);
        };
        // Dropping `recv()` at the deadline loses nothing: it holds no delivery while pending.
        let item = self
            .channel
            .conn()
            .io
            .block_on(async { tokio::time::timeout(timeout, stream.recv()).await });
        match item {
            Err(_elapsed) => Ok(Received::TimedOut),
            Ok(Some(Ok(delivery))) => Ok(Received::Delivery(delivery)),
            Ok(Some(Err(e))) => {
                self.ended = true;
                Err(e)
            }
            Ok(None) => {
                self.ended = true;
                Ok(Received::Ended)
            }
        }
    }

    /// Cancels the consumer, waits for the broker's cancel-ok, and rejects with requeue the
    /// deliveries that were buffered and not yet taken, so the broker delivers them again.
    ///
    /// To process the buffered deliveries instead, call [`Channel::basic_cancel`] with
    /// [`tag`](Self::tag) and keep iterating until the end.
    ///
    /// # Errors
    ///
    /// As [`Channel::basic_cancel`].
    #[track_caller]
    pub fn cancel(mut self) -> Result<()> {
        let Some(mut stream) = self.stream.take() else {
            return Ok(());
        };
        self.ended = true;
        // Tags are ASCII (broker-generated) or came in as `&str`: the conversion loses nothing.
        let tag = self.tag.to_string_lossy();
        let result = self
            .channel
            .conn()
            .io
            .block_on(self.channel.as_async().basic_cancel(&tag));
        give_back_remaining(&mut stream, self.no_ack);
        result
    }
}

impl Iterator for Consumer {
    type Item = Result<Delivery>;

    /// Waits for the next delivery, as [`Consumer::recv`].
    #[track_caller]
    fn next(&mut self) -> Option<Self::Item> {
        self.recv()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        let channel = self.channel.as_async().clone();
        let tag = self.tag.clone();
        let no_ack = self.no_ack;
        // Never block in `drop`: cancel on the runtime thread. After cancel-ok the stream has
        // ended, so what it holds is exactly what the broker must get back. If the cancel
        // failed, the channel is closed (and the broker has requeued everything) or the
        // connection is in trouble; either way, give back only what is buffered now.
        self.channel.conn().io.spawn(async move {
            let _ = channel.basic_cancel(&tag.to_string_lossy()).await;
            give_back_remaining(&mut stream, no_ack);
        });
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("tag", &self.tag)
            .field("channel", &self.channel.id())
            .finish_non_exhaustive()
    }
}
