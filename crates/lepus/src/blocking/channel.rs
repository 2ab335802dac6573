//! The blocking channel: every method of the async [`Channel`](crate::Channel), one
//! `block_on` each.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lepus_wire::{AsShortStr, BasicProperties, FieldTable};

use super::confirm::PublisherConfirm;
use super::connection::Inner;
use super::consumer::Consumer;
use crate::channel::GetMessage;
use crate::confirm::Confirmation;
use crate::consumer::Delivery;
use crate::error::Result;
use crate::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BindOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, ExchangeKind, QueueDeclareOptions, QueueDeclared, QueueDeleteOptions,
};

/// Longer than any wait anyone means, short enough to add to an `Instant`.
const A_CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// An open channel. Cheap to clone; every clone is the same channel.
///
/// Each method blocks the calling thread until the broker's reply arrives (or the connection's
/// `rpc_timeout` passes), then returns what the [async method](crate::Channel) of the same name
/// returns. Options, results and errors are the async client's.
///
/// # Threads
///
/// `Channel` is `Send + Sync`: clones may be used from several threads at once. The channel
/// stays one ordered stream, though: methods go out in the order the calls reach it, each
/// reply goes to the call that asked for it, and everything per channel is shared: a soft
/// error caused by one thread closes the channel for all, `tx_commit` commits every thread's
/// publishes, `wait_for_confirms` waits for every thread's messages, and delivery tags are
/// channel-wide. Give each thread its own channel unless that is what you want.
///
/// The channel does not keep the connection open: after the [`Connection`](super::Connection)
/// is closed or dropped, calls fail with [`Error::ConnectionClosed`](crate::Error).
///
/// # Panics
///
/// Every blocking method panics when called from inside an async runtime; see the
/// [module docs](super#calling-from-async-code).
#[derive(Clone)]
pub struct Channel {
    inner: crate::Channel,
    conn: Arc<Inner>,
    state: Arc<ChannelState>,
}

/// What the dispatcher shares with every clone of a channel handle.
pub(super) struct ChannelState {
    /// Tells this handle apart from a later channel with the same id.
    pub(super) key: u64,
    closed_by_user: AtomicBool,
}

impl ChannelState {
    pub(super) fn closed_by_user(&self) -> bool {
        self.closed_by_user.load(Ordering::Acquire)
    }
}

impl Channel {
    /// Wraps a newly opened async channel and starts watching its returned messages.
    pub(super) fn open(inner: crate::Channel, conn: Arc<Inner>) -> Result<Self> {
        let returns = inner.returns()?;
        let state = Arc::new(ChannelState {
            key: conn.dispatch.next_key(),
            closed_by_user: AtomicBool::new(false),
        });
        conn.dispatch
            .add_channel(Arc::clone(&state), inner.id(), returns);
        Ok(Self { inner, conn, state })
    }

    pub(super) fn key(&self) -> u64 {
        self.state.key
    }

    pub(super) fn conn(&self) -> &Arc<Inner> {
        &self.conn
    }

    pub(super) fn as_async(&self) -> &crate::Channel {
        &self.inner
    }

    /// The channel id.
    pub fn id(&self) -> u16 {
        self.inner.id()
    }

    /// Whether the channel is open.
    pub fn is_open(&self) -> bool {
        self.inner.is_open()
    }

    /// Closes the channel (`channel.close` 200) and waits for the broker's close-ok. Its
    /// consumers end; their callbacks are dropped without further calls.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::close`].
    #[track_caller]
    pub fn close(&self) -> Result<()> {
        self.state.closed_by_user.store(true, Ordering::Release);
        let result = self.conn.io.block_on(self.inner.close());
        self.conn.dispatch.remove_channel(self.state.key);
        result
    }

    /// Asks the broker to pause (`false`) or resume (`true`) deliveries on this channel.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::flow`].
    #[track_caller]
    pub fn flow(&self, active: bool) -> Result<bool> {
        self.conn.io.block_on(self.inner.flow(active))
    }

    // ---- exchanges ----

    /// Declares an exchange, creating it if it does not exist.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::exchange_declare`].
    #[track_caller]
    pub fn exchange_declare(
        &self,
        name: impl AsShortStr,
        kind: ExchangeKind,
        options: ExchangeDeclareOptions,
    ) -> Result<()> {
        self.conn
            .io
            .block_on(self.inner.exchange_declare(name, kind, options))
    }

    /// Checks that an exchange exists, without creating it.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::exchange_declare_passive`]: 404 closes the channel.
    #[track_caller]
    pub fn exchange_declare_passive(&self, name: impl AsShortStr) -> Result<()> {
        self.conn
            .io
            .block_on(self.inner.exchange_declare_passive(name))
    }

    /// Deletes an exchange.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::exchange_delete`].
    #[track_caller]
    pub fn exchange_delete(
        &self,
        name: impl AsShortStr,
        options: ExchangeDeleteOptions,
    ) -> Result<()> {
        self.conn
            .io
            .block_on(self.inner.exchange_delete(name, options))
    }

    /// Binds exchange `destination` to exchange `source` (a RabbitMQ extension).
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::exchange_bind`].
    #[track_caller]
    pub fn exchange_bind(
        &self,
        destination: impl AsShortStr,
        source: impl AsShortStr,
        routing_key: impl AsShortStr,
        options: BindOptions,
    ) -> Result<()> {
        self.conn.io.block_on(
            self.inner
                .exchange_bind(destination, source, routing_key, options),
        )
    }

    /// Removes an exchange-to-exchange binding.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::exchange_unbind`].
    #[track_caller]
    pub fn exchange_unbind(
        &self,
        destination: impl AsShortStr,
        source: impl AsShortStr,
        routing_key: impl AsShortStr,
        options: BindOptions,
    ) -> Result<()> {
        self.conn.io.block_on(
            self.inner
                .exchange_unbind(destination, source, routing_key, options),
        )
    }

    // ---- queues ----

    /// Declares a queue, creating it if it does not exist. An empty name asks the broker to
    /// generate one, returned in [`QueueDeclared::name`].
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::queue_declare`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn demo(ch: &lepus::blocking::Channel) -> Result<(), lepus::Error> {
    /// use lepus::QueueDeclareOptions;
    ///
    /// let options = QueueDeclareOptions { durable: true, ..Default::default() };
    /// let q = ch.queue_declare("jobs", options)?;
    /// println!("{} has {} messages", q.name, q.message_count);
    /// # Ok(()) }
    /// # fn main() -> Result<(), lepus::Error> {
    /// # let conn = lepus::blocking::Connection::connect("memory://")?;
    /// # let ch = conn.open_channel()?;
    /// # demo(&ch)?;
    /// # conn.close()
    /// # }
    /// ```
    #[track_caller]
    pub fn queue_declare(
        &self,
        name: impl AsShortStr,
        options: QueueDeclareOptions,
    ) -> Result<QueueDeclared> {
        self.conn
            .io
            .block_on(self.inner.queue_declare(name, options))
    }

    /// Checks that a queue exists and returns its counts, without creating it.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::queue_declare_passive`]: 404 closes the channel.
    #[track_caller]
    pub fn queue_declare_passive(&self, name: impl AsShortStr) -> Result<QueueDeclared> {
        self.conn
            .io
            .block_on(self.inner.queue_declare_passive(name))
    }

    /// Binds a queue to an exchange.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::queue_bind`].
    #[track_caller]
    pub fn queue_bind(
        &self,
        queue: impl AsShortStr,
        exchange: impl AsShortStr,
        routing_key: impl AsShortStr,
        options: BindOptions,
    ) -> Result<()> {
        self.conn
            .io
            .block_on(self.inner.queue_bind(queue, exchange, routing_key, options))
    }

    /// Removes a binding between a queue and an exchange.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::queue_unbind`].
    #[track_caller]
    pub fn queue_unbind(
        &self,
        queue: impl AsShortStr,
        exchange: impl AsShortStr,
        routing_key: impl AsShortStr,
        arguments: FieldTable,
    ) -> Result<()> {
        self.conn.io.block_on(
            self.inner
                .queue_unbind(queue, exchange, routing_key, arguments),
        )
    }

    /// Removes every ready message from a queue and returns how many there were.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::queue_purge`].
    #[track_caller]
    pub fn queue_purge(&self, name: impl AsShortStr) -> Result<u32> {
        self.conn.io.block_on(self.inner.queue_purge(name))
    }

    /// Deletes a queue and returns how many messages it held.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::queue_delete`].
    #[track_caller]
    pub fn queue_delete(&self, name: impl AsShortStr, options: QueueDeleteOptions) -> Result<u32> {
        self.conn
            .io
            .block_on(self.inner.queue_delete(name, options))
    }

    // ---- basic ----

    /// Limits unacknowledged deliveries: per consumer started after this call, or for the
    /// whole channel with `global`.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::basic_qos`].
    #[track_caller]
    pub fn basic_qos(&self, prefetch_count: u16, options: BasicQosOptions) -> Result<()> {
        self.conn
            .io
            .block_on(self.inner.basic_qos(prefetch_count, options))
    }

    /// Starts a consumer on `queue` whose deliveries go to `callback`, and returns its
    /// consumer tag. An empty `consumer_tag` asks the broker to generate one.
    ///
    /// Deliveries wait in the consumer's buffer ([`BasicConsumeOptions::buffer`]) until a
    /// thread calls [`Connection::drain_events`](super::Connection::drain_events), which runs
    /// the callback on that thread, with this channel and the delivery. The callback runs on
    /// one thread at a time, so it needs to be `Send` but not `Sync`. It may call anything,
    /// including this channel's methods (acknowledging, publishing, `basic_cancel` of its own
    /// consumer).
    ///
    /// The consumer lives until [`basic_cancel`](Self::basic_cancel), the broker cancels it
    /// ([`Event::ConsumerCancelled`](super::Event::ConsumerCancelled)), or its channel or
    /// connection closes; dropping the channel handles does not stop it. A callback that
    /// captures a handle of its own connection keeps it alive until then.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::basic_consume`]: 404 when the queue is missing, 403 when an
    /// exclusive consumer exists.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn demo(conn: &lepus::blocking::Connection) -> Result<(), lepus::Error> {
    /// use lepus::BasicConsumeOptions;
    ///
    /// let ch = conn.open_channel()?;
    /// # ch.queue_declare("jobs", lepus::QueueDeclareOptions::default())?;
    /// # let (options, props) = (lepus::BasicPublishOptions::default(), lepus::BasicProperties::default());
    /// # for i in 0..10 {
    /// #     ch.basic_publish("", "jobs", options, &props, format!("job {i}"))?;
    /// # }
    /// let tag = ch.basic_consume("jobs", "", BasicConsumeOptions::default(), |_ch, delivery| {
    ///     println!("{:?}", delivery.body);
    ///     if let Err(e) = delivery.ack() {
    ///         eprintln!("ack failed: {e}");
    ///     }
    /// })?;
    /// for _ in 0..10 {
    ///     conn.drain_events(None)?;
    /// }
    /// ch.basic_cancel(&tag)?;
    /// # Ok(()) }
    /// # fn main() -> Result<(), lepus::Error> {
    /// # let conn = lepus::blocking::Connection::connect("memory://")?;
    /// # demo(&conn)?;
    /// # conn.close()
    /// # }
    /// ```
    #[track_caller]
    pub fn basic_consume<F>(
        &self,
        queue: impl AsShortStr,
        consumer_tag: impl AsShortStr,
        options: BasicConsumeOptions,
        callback: F,
    ) -> Result<String>
    where
        F: FnMut(&Channel, Delivery) + Send + 'static,
    {
        let no_ack = options.no_ack;
        let stream =
            self.conn
                .io
                .block_on(self.inner.basic_consume(queue, consumer_tag, options))?;
        // Broker-generated tags are ASCII and an application's are text in practice; the
        // dispatcher keeps and compares them as text (`basic_cancel` converts the same way).
        let tag = stream.tag().to_string_lossy().into_owned();
        self.conn
            .dispatch
            .add_consumer(self.clone(), stream, no_ack, Box::new(callback));
        Ok(tag)
    }

    /// Starts a consumer on `queue` and returns it as an iterator of deliveries. An empty
    /// `consumer_tag` asks the broker to generate one.
    ///
    /// The consumer is independent of
    /// [`Connection::drain_events`](super::Connection::drain_events): its deliveries are read
    /// with [`Consumer::recv`], [`Consumer::recv_timeout`] or by iterating.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::basic_consume`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn demo(ch: &lepus::blocking::Channel) -> Result<(), lepus::Error> {
    /// use lepus::BasicConsumeOptions;
    ///
    /// # ch.queue_declare("jobs", lepus::QueueDeclareOptions::default())?;
    /// # let (options, props) = (lepus::BasicPublishOptions::default(), lepus::BasicProperties::default());
    /// # ch.basic_publish("", "jobs", options, &props, "job 1")?;
    /// for delivery in ch.basic_consume_iter("jobs", "", BasicConsumeOptions::default())? {
    ///     let delivery = delivery?;
    ///     println!("{:?}", delivery.body);
    ///     delivery.ack()?;
    /// #   break; // the queue had one message: stop waiting for more
    /// }
    /// # Ok(()) }
    /// # fn main() -> Result<(), lepus::Error> {
    /// # let conn = lepus::blocking::Connection::connect("memory://")?;
    /// # let ch = conn.open_channel()?;
    /// # demo(&ch)?;
    /// # conn.close()
    /// # }
    /// ```
    #[track_caller]
    pub fn basic_consume_iter(
        &self,
        queue: impl AsShortStr,
        consumer_tag: impl AsShortStr,
        options: BasicConsumeOptions,
    ) -> Result<Consumer> {
        let no_ack = options.no_ack;
        let stream =
            self.conn
                .io
                .block_on(self.inner.basic_consume(queue, consumer_tag, options))?;
        Ok(Consumer::new(stream, self.clone(), no_ack))
    }

    /// Cancels a consumer and waits for the broker's cancel-ok.
    ///
    /// For a callback consumer, the callback is not called again (except for a call already
    /// running on another thread) and is dropped; deliveries it had not been given yet are
    /// rejected with requeue, so the broker delivers them to another consumer (those of a
    /// `no_ack` consumer are dropped: the broker forgot them when it sent them, and would
    /// refuse a reject). An iterator [`Consumer`] yields what it had buffered, then ends.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::basic_cancel`].
    #[track_caller]
    pub fn basic_cancel(&self, consumer_tag: impl AsShortStr) -> Result<()> {
        self.conn
            .io
            .block_on(self.inner.basic_cancel(&consumer_tag))?;
        let tag = String::from_utf8_lossy(consumer_tag.as_short_bytes());
        self.conn.dispatch.cancel(self.state.key, &tag);
        Ok(())
    }

    /// Fetches one message from `queue`, or `None` when it is empty.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::basic_get`].
    #[track_caller]
    pub fn basic_get(&self, queue: impl AsShortStr, no_ack: bool) -> Result<Option<GetMessage>> {
        self.conn.io.block_on(self.inner.basic_get(queue, no_ack))
    }

    /// Publishes a message. Returns once it is queued for sending, without waiting for a
    /// confirm, with a [`PublisherConfirm`] to wait for it later if the channel is in confirm
    /// mode (a sliding window keeps these in a queue; see its example). Dropping it is fine:
    /// [`wait_for_confirms`](Self::wait_for_confirms) waits for a whole batch, and
    /// [`basic_publish_confirm`](Self::basic_publish_confirm) publishes one message and waits.
    ///
    /// A mandatory message the broker cannot route comes back as
    /// [`Event::Returned`](super::Event::Returned) from
    /// [`drain_events`](super::Connection::drain_events).
    ///
    /// Blocks while the broker has blocked the connection, paused the channel, or the write
    /// buffer is above its high-water mark.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::basic_publish`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn demo(ch: &lepus::blocking::Channel) -> Result<(), lepus::Error> {
    /// use std::time::Duration;
    /// use lepus::{BasicProperties, BasicPublishOptions};
    ///
    /// # ch.queue_declare("jobs", lepus::QueueDeclareOptions::default())?;
    /// ch.confirm_select()?;
    /// for i in 0..1000 {
    ///     let props = BasicProperties { delivery_mode: Some(2), ..Default::default() };
    ///     let body = format!("job {i}");
    ///     ch.basic_publish("", "jobs", BasicPublishOptions::default(), &props, body)?;
    /// }
    /// let all_acked = ch.wait_for_confirms(Duration::from_secs(10))?;
    /// assert!(all_acked);
    /// # Ok(()) }
    /// # fn main() -> Result<(), lepus::Error> {
    /// # let conn = lepus::blocking::Connection::connect("memory://")?;
    /// # let ch = conn.open_channel()?;
    /// # demo(&ch)?;
    /// # conn.close()
    /// # }
    /// ```
    #[track_caller]
    pub fn basic_publish(
        &self,
        exchange: impl AsShortStr,
        routing_key: impl AsShortStr,
        options: BasicPublishOptions,
        properties: &BasicProperties,
        body: impl Into<Bytes>,
    ) -> Result<PublisherConfirm> {
        let confirm = self.conn.io.block_on(self.inner.basic_publish(
            exchange,
            routing_key,
            options,
            properties,
            body,
        ))?;
        Ok(PublisherConfirm::new(confirm, Arc::clone(&self.conn)))
    }

    /// Publishes a message and waits for the broker's confirm of it (py-amqp's
    /// `basic_publish_confirm`). Call [`confirm_select`](Self::confirm_select) first: without
    /// confirm mode the result is [`Confirmation::NotRequested`], which is not an ack.
    ///
    /// A mandatory message that could not be routed is acked with the returned message
    /// attached ([`Confirmation::returned`]); it is also reported by
    /// [`drain_events`](super::Connection::drain_events).
    ///
    /// Waits until the broker answers or the channel or connection ends; to bound the wait,
    /// use [`basic_publish`](Self::basic_publish) and
    /// [`wait_for_confirms`](Self::wait_for_confirms).
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::basic_publish`], and the channel's or connection's error when it
    /// ends before the confirm.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn demo(ch: &lepus::blocking::Channel) -> Result<(), lepus::Error> {
    /// use lepus::{BasicProperties, BasicPublishOptions};
    ///
    /// # ch.queue_declare("jobs", lepus::QueueDeclareOptions::default())?;
    /// ch.confirm_select()?;
    /// let props = BasicProperties::default();
    /// let options = BasicPublishOptions::default();
    /// let confirmation = ch.basic_publish_confirm("", "jobs", options, &props, "hi")?;
    /// assert!(confirmation.is_ack());
    /// # Ok(()) }
    /// # fn main() -> Result<(), lepus::Error> {
    /// # let conn = lepus::blocking::Connection::connect("memory://")?;
    /// # let ch = conn.open_channel()?;
    /// # demo(&ch)?;
    /// # conn.close()
    /// # }
    /// ```
    #[track_caller]
    pub fn basic_publish_confirm(
        &self,
        exchange: impl AsShortStr,
        routing_key: impl AsShortStr,
        options: BasicPublishOptions,
        properties: &BasicProperties,
        body: impl Into<Bytes>,
    ) -> Result<Confirmation> {
        self.conn.io.block_on(async {
            self.inner
                .basic_publish(exchange, routing_key, options, properties, body)
                .await?
                .await
        })
    }

    /// Acknowledges a delivery by tag (usually [`Delivery::ack`] is handier). Does not block.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::basic_ack`].
    pub fn basic_ack(&self, delivery_tag: u64, multiple: bool) -> Result<()> {
        self.inner.basic_ack(delivery_tag, multiple)
    }

    /// Negatively acknowledges a delivery by tag. Does not block.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::basic_nack`].
    pub fn basic_nack(&self, delivery_tag: u64, multiple: bool, requeue: bool) -> Result<()> {
        self.inner.basic_nack(delivery_tag, multiple, requeue)
    }

    /// Rejects a delivery by tag. Does not block.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::basic_reject`].
    pub fn basic_reject(&self, delivery_tag: u64, requeue: bool) -> Result<()> {
        self.inner.basic_reject(delivery_tag, requeue)
    }

    /// Redelivers every unacknowledged message of the channel (`basic.recover`).
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::basic_recover`].
    #[track_caller]
    pub fn basic_recover(&self, requeue: bool) -> Result<()> {
        self.conn.io.block_on(self.inner.basic_recover(requeue))
    }

    /// Like [`basic_recover`](Self::basic_recover), without waiting for a reply. Does not
    /// block.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::basic_recover_async`].
    pub fn basic_recover_async(&self, requeue: bool) -> Result<()> {
        self.inner.basic_recover_async(requeue)
    }

    // ---- confirms ----

    /// Turns on publisher confirms.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::confirm_select`].
    #[track_caller]
    pub fn confirm_select(&self) -> Result<()> {
        self.conn.io.block_on(self.inner.confirm_select())
    }

    /// Waits until every message published on this channel so far is confirmed, up to
    /// `timeout`. Returns `true` if none was nacked since the last call.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::wait_for_confirms`]: [`Error::Timeout`](crate::Error::Timeout)
    /// when confirms are still missing at the deadline.
    #[track_caller]
    pub fn wait_for_confirms(&self, timeout: Duration) -> Result<bool> {
        // The async method adds `timeout` to `Instant::now()`, which panics on overflow (say,
        // `Duration::MAX` for "no limit"); a century is no limit either.
        let timeout = timeout.min(A_CENTURY);
        self.conn.io.block_on(self.inner.wait_for_confirms(timeout))
    }

    // ---- transactions ----

    /// Puts the channel in transactional mode.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::tx_select`].
    #[track_caller]
    pub fn tx_select(&self) -> Result<()> {
        self.conn.io.block_on(self.inner.tx_select())
    }

    /// Commits the current transaction's publishes and acknowledgements.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::tx_commit`].
    #[track_caller]
    pub fn tx_commit(&self) -> Result<()> {
        self.conn.io.block_on(self.inner.tx_commit())
    }

    /// Discards the current transaction's publishes and acknowledgements.
    ///
    /// # Errors
    ///
    /// As [`crate::Channel::tx_rollback`].
    #[track_caller]
    pub fn tx_rollback(&self) -> Result<()> {
        self.conn.io.block_on(self.inner.tx_rollback())
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("id", &self.id()).finish()
    }
}
