//! The channel handle: every AMQP 0-9-1 channel method.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lepus_proto::Reply;
use lepus_wire::method::{basic, channel, confirm, exchange, queue, tx};
use lepus_wire::{AsShortStr, BasicProperties, FieldTable, Method, ReplyCode, ShortStr};
use tokio::sync::{mpsc, oneshot, Notify};

use tracing::Instrument;

use crate::confirm::{PublisherConfirm, ReturnedMessage};
use crate::consumer::{Consumer, ConsumerQueue, Delivery};
use crate::driver::{HandleGuard, Shared, Waiter};
use crate::error::{Error, Result};
use crate::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BindOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, ExchangeKind, QueueDeclareOptions, QueueDeclared, QueueDeleteOptions,
};
use crate::recovery::{RecordedBinding, RecordedConsumer};

/// A message fetched with [`Channel::basic_get`].
#[derive(Debug)]
pub struct GetMessage {
    /// The message; acknowledge it unless fetched with `no_ack`.
    pub delivery: Delivery,
    /// Messages left in the queue after this one.
    pub message_count: u32,
}

/// An open channel. Cheap to clone; every clone is the same channel.
///
/// Methods are sent in call order. Requests that wait for a reply time out after the
/// connection's `rpc_timeout`.
///
/// Names (queues, exchanges, routing keys, consumer tags) are anything [`AsShortStr`]: a
/// `&str`, a `&String`, or a [`ShortStr`] lepus handed out, such as a [`Consumer::tag`] or a
/// [`Delivery`]'s routing key, which goes back to the broker as it is:
///
/// ```
/// # async fn demo(ch: &lepus::Channel) -> Result<(), lepus::Error> {
/// use lepus::{BasicConsumeOptions, BasicPublishOptions, BindOptions, QueueDeclareOptions};
///
/// let q = ch.queue_declare("", QueueDeclareOptions::default()).await?;
/// ch.queue_bind(&q.name, "amq.topic", "orders.#", BindOptions::default()).await?;
/// let mut consumer = ch.basic_consume(&q.name, "", BasicConsumeOptions::default()).await?;
/// # let props = lepus::BasicProperties::default();
/// # ch.basic_publish("amq.topic", "orders.new", BasicPublishOptions::default(), &props, "order 1")
/// #     .await?;
/// if let Some(delivery) = consumer.recv().await {
///     let d = delivery?;
///     // Forward it unchanged, to where it was published.
///     let options = BasicPublishOptions::default();
///     ch.basic_publish(&d.exchange, &d.routing_key, options, &d.properties, d.body.clone())
///         .await?;
///     d.ack()?;
/// }
/// ch.basic_cancel(consumer.tag()).await?;
/// # Ok(()) }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lepus::Error> {
/// # let conn = lepus::Connection::connect("memory://").await?;
/// # let ch = conn.open_channel().await?;
/// # demo(&ch).await?;
/// # conn.close().await
/// # }
/// ```
///
/// # Cancel safety
///
/// Dropping the future of a request after it started does not take the request back: it was
/// already queued for sending, and its reply is discarded when it arrives.
#[derive(Clone)]
pub struct Channel {
    shared: Arc<Shared>,
    id: u16,
    generation: u64,
    _guard: HandleGuard,
}

/// A binding as recovery records it.
fn recorded_binding(
    destination: &ShortStr,
    source: &ShortStr,
    routing_key: &ShortStr,
    arguments: &FieldTable,
) -> RecordedBinding {
    RecordedBinding {
        destination: destination.to_string_lossy().into_owned(),
        source: source.to_string_lossy().into_owned(),
        routing_key: routing_key.to_string_lossy().into_owned(),
        arguments: arguments.clone(),
    }
}

fn short(name: impl AsShortStr) -> Result<ShortStr> {
    name.to_short_str().map_err(|e| {
        let text = String::from_utf8_lossy(name.as_short_bytes());
        Error::InvalidArgument(format!(
            "'{}…': {e}",
            text.chars().take(16).collect::<String>()
        ))
    })
}

/// A name as text, for the publish path, which encodes names without building a `ShortStr`.
fn text<'a>(name: &'a impl AsShortStr, what: &str) -> Result<&'a str> {
    std::str::from_utf8(name.as_short_bytes())
        .map_err(|_| Error::InvalidArgument(format!("the {what} is not UTF-8")))
}

impl Channel {
    pub(crate) fn new(shared: Arc<Shared>, id: u16, generation: u64) -> Self {
        Self {
            _guard: HandleGuard::new(&shared),
            shared,
            id,
            generation,
        }
    }

    /// The channel id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Whether the channel is open.
    pub fn is_open(&self) -> bool {
        self.shared.lock().check(self.id, self.generation).is_ok()
    }

    /// Sends a method and returns the receiver for its reply, if it has one.
    fn send_request(
        &self,
        method: Method,
        consume: Option<(Arc<ConsumerQueue>, bool)>,
    ) -> Result<Option<oneshot::Receiver<Result<Reply>>>> {
        let mut inner = self.shared.lock();
        inner.check(self.id, self.generation)?;
        let expects_reply = inner.proto.call(self.id, method)?;
        inner.wake_writer(&self.shared);
        if !expects_reply {
            return Ok(None);
        }
        let (tx, rx) = oneshot::channel();
        let waiter = match consume {
            Some((queue, no_ack)) => Waiter::Consume { tx, queue, no_ack },
            None => Waiter::Reply(tx),
        };
        if let Some(slot) = inner.channels.get_mut(&self.id) {
            slot.waiters.push_back(waiter);
        }
        Ok(Some(rx))
    }

    pub(crate) async fn await_reply(
        &self,
        rx: oneshot::Receiver<Result<Reply>>,
        what: &'static str,
    ) -> Result<Reply> {
        let after = self.shared.options.rpc_timeout;
        match tokio::time::timeout(after, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(self.shared.lock().closed_error()),
            Err(_) => Err(Error::Timeout { what, after }),
        }
    }

    async fn rpc(&self, method: Method, what: &'static str) -> Result<Option<Reply>> {
        // While the connection is being recovered, requests wait for it.
        self.shared
            .ready(Some(self.shared.options.rpc_timeout))
            .await?;
        match self.send_request(method, None)? {
            Some(rx) => self.await_reply(rx, what).await.map(Some),
            None => Ok(None),
        }
    }

    /// Closes the channel (`channel.close` 200) and waits for the broker's close-ok.
    ///
    /// Outstanding requests, consumers and confirms of the channel end with an error. This is
    /// also how to learn whether everything sent on the channel was accepted: a publish to a
    /// missing exchange closes the channel with 404, and `close` then reports it.
    ///
    /// # Errors
    ///
    /// [`Error::ChannelClosed`] when the broker had closed the channel (or closes it before it
    /// reads our close), with its reason; a timeout when close-ok does not come within the
    /// close timeout.
    pub async fn close(&self) -> Result<()> {
        self.shared
            .ready(Some(self.shared.options.rpc_timeout))
            .await?;
        let rx = {
            let mut inner = self.shared.lock();
            match inner.check(self.id, self.generation) {
                Ok(()) => {}
                // Closed by the broker earlier: report why.
                Err(e @ Error::ChannelClosed(_)) => return Err(e),
                Err(_) => return Ok(()),
            }
            let close = channel::Close {
                reply_code: ReplyCode::REPLY_SUCCESS,
                reply_text: ShortStr::from_static("closed by client"),
                class_id: 0,
                method_id: 0,
            };
            inner.proto.call(self.id, close.into())?;
            // The broker's deliveries on this channel are discarded unread from now on: its
            // consumers must not keep the reader from reading close-ok.
            if let Some(slot) = inner.channels.get_mut(&self.id) {
                slot.closing = true;
                slot.consumers.values().for_each(|queue| queue.stop());
            }
            self.shared.reader_wake.notify_one();
            let (tx, rx) = oneshot::channel();
            if let Some(slot) = inner.channels.get_mut(&self.id) {
                slot.close_waiter = Some(tx);
            }
            inner.wake_writer(&self.shared);
            rx
        };
        let after = self.shared.options.close_timeout;
        match tokio::time::timeout(after, rx).await {
            // The broker closed the channel (with an error) before it saw our close.
            Ok(Ok(Some(close))) => Err(Error::ChannelClosed(close)),
            Ok(_) => Ok(()),
            Err(_) => Err(Error::Timeout {
                what: "channel.close-ok",
                after,
            }),
        }
    }

    /// Asks the broker to pause (`false`) or resume (`true`) deliveries on this channel.
    ///
    /// # Errors
    ///
    /// When the channel is closed or the broker refuses.
    pub async fn flow(&self, active: bool) -> Result<bool> {
        let reply = self
            .rpc(channel::Flow { active }.into(), "channel.flow-ok")
            .await?;
        // Restored after a recovery.
        self.with_slot(|slot| slot.app_flow = Some(active));
        match reply {
            Some(Reply::Method(Method::ChannelFlowOk(ok))) => Ok(ok.active),
            _ => Ok(active),
        }
    }

    // ---- exchanges ----

    /// Declares an exchange, creating it if it does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::ChannelClosed`] with 406 PRECONDITION_FAILED when it exists with other
    /// settings, and the usual connection errors.
    pub async fn exchange_declare(
        &self,
        name: impl AsShortStr,
        kind: ExchangeKind,
        options: ExchangeDeclareOptions,
    ) -> Result<()> {
        let name = short(name)?;
        let method = exchange::Declare {
            exchange: name.clone(),
            kind: short(kind.as_str())?,
            passive: false,
            durable: options.durable,
            auto_delete: options.auto_delete,
            internal: options.internal,
            nowait: options.nowait,
            arguments: options.arguments.clone(),
        };
        self.rpc(method.into(), "exchange.declare-ok").await?;
        self.record(|t| t.exchange_declared(&name.to_string_lossy(), &kind, &options));
        Ok(())
    }

    /// Checks that an exchange exists, without creating it.
    ///
    /// # Errors
    ///
    /// [`Error::ChannelClosed`] with 404 NOT_FOUND when it does not exist (the channel closes,
    /// the connection stays).
    pub async fn exchange_declare_passive(&self, name: impl AsShortStr) -> Result<()> {
        let method = exchange::Declare {
            exchange: short(name)?,
            passive: true,
            ..Default::default()
        };
        self.rpc(method.into(), "exchange.declare-ok")
            .await
            .map(drop)
    }

    /// Deletes an exchange.
    ///
    /// # Errors
    ///
    /// 406 with `if_unused` when it has bindings; connection errors.
    pub async fn exchange_delete(
        &self,
        name: impl AsShortStr,
        options: ExchangeDeleteOptions,
    ) -> Result<()> {
        let name = short(name)?;
        let method = exchange::Delete {
            exchange: name.clone(),
            if_unused: options.if_unused,
            nowait: options.nowait,
        };
        self.rpc(method.into(), "exchange.delete-ok").await?;
        self.record(|t| t.exchange_deleted(&name.to_string_lossy()));
        Ok(())
    }

    /// Binds exchange `destination` to exchange `source` (a RabbitMQ extension).
    ///
    /// # Errors
    ///
    /// 404 when either exchange is missing; connection errors.
    pub async fn exchange_bind(
        &self,
        destination: impl AsShortStr,
        source: impl AsShortStr,
        routing_key: impl AsShortStr,
        options: BindOptions,
    ) -> Result<()> {
        let method = exchange::Bind {
            destination: short(destination)?,
            source: short(source)?,
            routing_key: short(routing_key)?,
            nowait: options.nowait,
            arguments: options.arguments,
        };
        let binding = recorded_binding(
            &method.destination,
            &method.source,
            &method.routing_key,
            &method.arguments,
        );
        self.rpc(method.into(), "exchange.bind-ok").await?;
        self.record(|t| t.exchange_bound(binding));
        Ok(())
    }

    /// Removes an exchange-to-exchange binding.
    ///
    /// # Errors
    ///
    /// Connection errors; 404 when an exchange is missing.
    pub async fn exchange_unbind(
        &self,
        destination: impl AsShortStr,
        source: impl AsShortStr,
        routing_key: impl AsShortStr,
        options: BindOptions,
    ) -> Result<()> {
        let method = exchange::Unbind {
            destination: short(destination)?,
            source: short(source)?,
            routing_key: short(routing_key)?,
            nowait: options.nowait,
            arguments: options.arguments,
        };
        let binding = recorded_binding(
            &method.destination,
            &method.source,
            &method.routing_key,
            &method.arguments,
        );
        self.rpc(method.into(), "exchange.unbind-ok").await?;
        self.record(|t| t.exchange_unbound(&binding));
        Ok(())
    }

    // ---- queues ----

    /// Declares a queue, creating it if it does not exist. An empty name asks the broker to
    /// generate one, returned in [`QueueDeclared::name`].
    ///
    /// # Errors
    ///
    /// 406 when it exists with other settings, 405 RESOURCE_LOCKED when another connection
    /// holds it exclusively; connection errors.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn demo(ch: &lepus::Channel) -> Result<(), lepus::Error> {
    /// use lepus::{FieldTable, QueueDeclareOptions};
    ///
    /// let q = ch
    ///     .queue_declare(
    ///         "jobs",
    ///         QueueDeclareOptions {
    ///             durable: true,
    ///             arguments: FieldTable::new().with("x-queue-type", "quorum"),
    ///             ..Default::default()
    ///         },
    ///     )
    ///     .await?;
    /// println!("{} has {} messages", q.name, q.message_count);
    /// # Ok(()) }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lepus::Error> {
    /// # let conn = lepus::Connection::connect("memory://").await?;
    /// # let ch = conn.open_channel().await?;
    /// # demo(&ch).await?;
    /// # conn.close().await
    /// # }
    /// ```
    pub async fn queue_declare(
        &self,
        name: impl AsShortStr,
        options: QueueDeclareOptions,
    ) -> Result<QueueDeclared> {
        let method = queue::Declare {
            queue: short(name)?,
            passive: false,
            durable: options.durable,
            exclusive: options.exclusive,
            auto_delete: options.auto_delete,
            nowait: options.nowait,
            arguments: options.arguments.clone(),
        };
        let requested = method.queue.to_string_lossy().into_owned();
        let declared = self.declare(method).await?;
        self.record(|t| t.queue_declared(&requested, &declared.name, &options));
        Ok(declared)
    }

    /// Checks that a queue exists and returns its counts, without creating it.
    ///
    /// # Errors
    ///
    /// [`Error::ChannelClosed`] with 404 NOT_FOUND when it does not exist (the channel closes,
    /// the connection stays).
    pub async fn queue_declare_passive(&self, name: impl AsShortStr) -> Result<QueueDeclared> {
        let method = queue::Declare {
            queue: short(name)?,
            passive: true,
            ..Default::default()
        };
        self.declare(method).await
    }

    async fn declare(&self, method: queue::Declare) -> Result<QueueDeclared> {
        let requested = method.queue.clone();
        match self.rpc(method.into(), "queue.declare-ok").await? {
            Some(Reply::Method(Method::QueueDeclareOk(ok))) => Ok(QueueDeclared {
                name: ok.queue.to_string_lossy().into_owned(),
                message_count: ok.message_count,
                consumer_count: ok.consumer_count,
            }),
            _ => Ok(QueueDeclared {
                name: requested.to_string_lossy().into_owned(),
                message_count: 0,
                consumer_count: 0,
            }),
        }
    }

    /// Binds a queue to an exchange.
    ///
    /// # Errors
    ///
    /// 404 when the queue or exchange is missing; connection errors.
    pub async fn queue_bind(
        &self,
        queue: impl AsShortStr,
        exchange: impl AsShortStr,
        routing_key: impl AsShortStr,
        options: BindOptions,
    ) -> Result<()> {
        let method = queue::Bind {
            queue: short(queue)?,
            exchange: short(exchange)?,
            routing_key: short(routing_key)?,
            nowait: options.nowait,
            arguments: options.arguments,
        };
        let binding = recorded_binding(
            &method.queue,
            &method.exchange,
            &method.routing_key,
            &method.arguments,
        );
        self.rpc(method.into(), "queue.bind-ok").await?;
        self.record(|t| t.queue_bound(binding));
        Ok(())
    }

    /// Removes a binding between a queue and an exchange.
    ///
    /// # Errors
    ///
    /// Connection errors; 404 when the queue or exchange is missing.
    pub async fn queue_unbind(
        &self,
        queue: impl AsShortStr,
        exchange: impl AsShortStr,
        routing_key: impl AsShortStr,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = queue::Unbind {
            queue: short(queue)?,
            exchange: short(exchange)?,
            routing_key: short(routing_key)?,
            arguments,
        };
        let binding = recorded_binding(
            &method.queue,
            &method.exchange,
            &method.routing_key,
            &method.arguments,
        );
        self.rpc(method.into(), "queue.unbind-ok").await?;
        self.record(|t| t.queue_unbound(&binding));
        Ok(())
    }

    /// Removes every ready message from a queue and returns how many there were.
    ///
    /// # Errors
    ///
    /// 404 when the queue is missing; connection errors.
    pub async fn queue_purge(&self, name: impl AsShortStr) -> Result<u32> {
        let method = queue::Purge {
            queue: short(name)?,
            nowait: false,
        };
        match self.rpc(method.into(), "queue.purge-ok").await? {
            Some(Reply::Method(Method::QueuePurgeOk(ok))) => Ok(ok.message_count),
            _ => Ok(0),
        }
    }

    /// Deletes a queue and returns how many messages it held.
    ///
    /// # Errors
    ///
    /// 406 with `if_unused`/`if_empty` when the condition fails; connection errors.
    pub async fn queue_delete(
        &self,
        name: impl AsShortStr,
        options: QueueDeleteOptions,
    ) -> Result<u32> {
        let name = short(name)?;
        let method = queue::Delete {
            queue: name.clone(),
            if_unused: options.if_unused,
            if_empty: options.if_empty,
            nowait: options.nowait,
        };
        let reply = self.rpc(method.into(), "queue.delete-ok").await?;
        self.record(|t| t.queue_deleted(&name.to_string_lossy()));
        match reply {
            Some(Reply::Method(Method::QueueDeleteOk(ok))) => Ok(ok.message_count),
            _ => Ok(0),
        }
    }

    // ---- basic ----

    /// Limits unacknowledged deliveries: per consumer started after this call, or for the
    /// whole channel with `global`.
    ///
    /// # Errors
    ///
    /// Connection errors; 540 NOT_IMPLEMENTED for a non-zero prefetch size on RabbitMQ.
    pub async fn basic_qos(&self, prefetch_count: u16, options: BasicQosOptions) -> Result<()> {
        let method = basic::Qos {
            prefetch_size: options.prefetch_size,
            prefetch_count,
            global: options.global,
        };
        self.rpc(method.into(), "basic.qos-ok").await?;
        let mut inner = self.shared.lock();
        if let Some(slot) = inner
            .channels
            .get_mut(&self.id)
            .filter(|slot| slot.generation == self.generation)
        {
            if options.global {
                slot.prefetch_channel = prefetch_count.into();
            } else {
                slot.prefetch_consumer = prefetch_count.into();
            }
        }
        Ok(())
    }

    /// Starts a consumer on `queue` and returns its stream of deliveries. An empty
    /// `consumer_tag` asks the broker to generate one.
    ///
    /// # Errors
    ///
    /// 404 when the queue is missing, 403 when an exclusive consumer exists; connection
    /// errors.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn demo(ch: &lepus::Channel) -> Result<(), lepus::Error> {
    /// use lepus::BasicConsumeOptions;
    ///
    /// # ch.queue_declare("jobs", lepus::QueueDeclareOptions::default()).await?;
    /// # let (options, props) = (lepus::BasicPublishOptions::default(), lepus::BasicProperties::default());
    /// # ch.basic_publish("", "jobs", options, &props, "job 1").await?;
    /// let mut consumer = ch.basic_consume("jobs", "", BasicConsumeOptions::default()).await?;
    /// while let Some(delivery) = consumer.recv().await {
    ///     let delivery = delivery?;
    ///     println!("{:?}", delivery.body);
    ///     delivery.ack()?;
    /// #   break; // the queue had one message: stop waiting for more
    /// }
    /// # Ok(()) }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lepus::Error> {
    /// # let conn = lepus::Connection::connect("memory://").await?;
    /// # let ch = conn.open_channel().await?;
    /// # demo(&ch).await?;
    /// # conn.close().await
    /// # }
    /// ```
    pub async fn basic_consume(
        &self,
        queue: impl AsShortStr,
        consumer_tag: impl AsShortStr,
        options: BasicConsumeOptions,
    ) -> Result<Consumer> {
        let queue = short(queue)?;
        let method = basic::Consume {
            queue: queue.clone(),
            consumer_tag: short(consumer_tag)?,
            no_local: options.no_local,
            no_ack: options.no_ack,
            exclusive: options.exclusive,
            nowait: false,
            arguments: options.arguments.clone(),
        };
        self.shared
            .ready(Some(self.shared.options.rpc_timeout))
            .await?;
        let q = ConsumerQueue::new(options.buffer, options.no_ack);
        let rx = self
            .send_request(method.into(), Some((Arc::clone(&q), options.no_ack)))?
            .ok_or(Error::InvalidState("basic.consume expects a reply"))?;
        match self.await_reply(rx, "basic.consume-ok").await? {
            Reply::Method(Method::BasicConsumeOk(ok)) => {
                let consumer = RecordedConsumer {
                    channel: self.id,
                    tag: ok.consumer_tag.clone(),
                    queue: queue.to_string_lossy().into_owned(),
                    options,
                    stream: Arc::clone(&q),
                };
                self.record(|t| t.consumer_started(consumer));
                Ok(Consumer::new(
                    q,
                    Arc::clone(&self.shared),
                    self.id,
                    self.generation,
                    ok.consumer_tag,
                    queue,
                ))
            }
            _ => Err(Error::InvalidState("unexpected reply to basic.consume")),
        }
    }

    /// Cancels a consumer; its stream ends after the deliveries that arrived before the
    /// broker's cancel-ok.
    ///
    /// While the cancel is under way the consumer never holds up the connection: when its
    /// buffer is full, further deliveries to it are given back to the queue (rejected with
    /// requeue) instead of stopping the reader, so cancel-ok is read however many deliveries
    /// the broker sends first. (A `no_ack` consumer's deliveries cannot be given back; they
    /// are buffered beyond the limit until cancel-ok.)
    ///
    /// # Errors
    ///
    /// Connection errors.
    pub async fn basic_cancel(&self, consumer_tag: impl AsShortStr) -> Result<()> {
        let consumer_tag = short(consumer_tag)?;
        self.stop_consumers(Some(&consumer_tag));
        let method = basic::Cancel {
            consumer_tag: consumer_tag.clone(),
            nowait: false,
        };
        self.rpc(method.into(), "basic.cancel-ok").await?;
        let id = self.id;
        self.record(|t| t.consumer_ended(id, &consumer_tag, true));
        Ok(())
    }

    /// Keeps every confirmed publish until the broker settles it, and publishes the ones
    /// whose confirm was lost again after a recovery (default: off, and the lost confirms
    /// resolve to [`Confirmation::Uncertain`](crate::Confirmation::Uncertain)).
    ///
    /// With replay on, a [`PublisherConfirm`] pending when the link was lost waits on, and
    /// resolves with the broker's verdict on the copy published again on the new link. This
    /// is at-least-once: the first copy may have reached the broker before the link went, so
    /// a consumer may see the message twice. [`ConnectionStats::replayed`] counts the copies.
    /// Messages are kept by reference (bodies are not copied), and only until their confirm
    /// arrives: memory stays bounded by how many confirms the application lets wait. Only
    /// publishes made while replay is on are kept, and only on a channel in confirm mode.
    ///
    /// # Errors
    ///
    /// When the channel is closed.
    ///
    /// [`ConnectionStats::replayed`]: crate::ConnectionStats::replayed
    pub fn replay_on_recovery(&self, on: bool) -> Result<()> {
        let mut inner = self.shared.lock();
        inner.check(self.id, self.generation)?;
        if let Some(slot) = inner.channels.get_mut(&self.id) {
            match (on, &slot.replay) {
                (true, None) => slot.replay = Some(Default::default()),
                (false, _) => slot.replay = None,
                (true, Some(_)) => {}
            }
        }
        Ok(())
    }

    /// Records a change of the connection's topology, for recovery.
    fn record(&self, change: impl FnOnce(&mut crate::recovery::Topology)) {
        change(&mut self.shared.lock().topology);
    }

    /// Changes this channel's state, if it is still open.
    fn with_slot(&self, change: impl FnOnce(&mut crate::driver::ChannelSlot)) {
        let mut inner = self.shared.lock();
        if let Some(slot) = inner
            .channels
            .get_mut(&self.id)
            .filter(|slot| slot.generation == self.generation)
        {
            change(slot);
        }
    }

    /// Marks the channel's consumer `tag` (or all of them) as ending, so that a full buffer
    /// no longer stops the reader, and lets a paused reader go on.
    fn stop_consumers(&self, tag: Option<&ShortStr>) {
        let inner = self.shared.lock();
        let Some(slot) = inner
            .channels
            .get(&self.id)
            .filter(|slot| slot.generation == self.generation)
        else {
            return;
        };
        slot.consumers
            .iter()
            .filter(|(t, _)| tag.is_none_or(|tag| tag == *t))
            .for_each(|(_, queue)| queue.stop());
        drop(inner);
        self.shared.reader_wake.notify_one();
    }

    /// Fetches one message from `queue`, or `None` when it is empty.
    ///
    /// # Errors
    ///
    /// 404 when the queue is missing; connection errors.
    pub async fn basic_get(
        &self,
        queue: impl AsShortStr,
        no_ack: bool,
    ) -> Result<Option<GetMessage>> {
        let queue = short(queue)?;
        let span = crate::telemetry::receive(queue.as_str().unwrap_or_default(), || {
            self.shared.lock().address.clone()
        });
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let result = self
            .get(queue.clone(), no_ack)
            .instrument(span.clone())
            .await;
        #[cfg(feature = "metrics")]
        {
            let m = &self.shared.events.metrics;
            m.receive_duration.record(started.elapsed());
            if let Ok(Some(got)) = &result {
                m.consumed_receive.increment(1);
                if got.delivery.redelivered {
                    m.redeliveries.increment(1);
                }
            }
        }
        match &result {
            Ok(got) => crate::telemetry::record_received(
                &span,
                got.as_ref()
                    .map(|g| crate::telemetry::Delivered {
                        exchange: &g.delivery.exchange,
                        routing_key: &g.delivery.routing_key,
                        queue: queue.as_str().unwrap_or_default(),
                        delivery_tag: g.delivery.delivery_tag,
                        properties: &g.delivery.properties,
                        body_size: g.delivery.body.len(),
                    })
                    .as_ref(),
            ),
            Err(e) => crate::telemetry::record_error(&span, e),
        }
        result
    }

    async fn get(&self, queue: ShortStr, no_ack: bool) -> Result<Option<GetMessage>> {
        let method = basic::Get { queue, no_ack };
        match self.rpc(method.into(), "basic.get-ok").await? {
            Some(Reply::GetOk { get_ok, message }) => {
                let message_count = get_ok.message_count;
                let delivery = Delivery::from_get(
                    &self.shared,
                    self.id,
                    self.generation,
                    no_ack,
                    get_ok,
                    message,
                );
                Ok(Some(GetMessage {
                    delivery,
                    message_count,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Publishes a message and returns a future for the broker's confirm.
    ///
    /// The frames are queued at once, in call order with everything else on the channel.
    /// In confirm mode they are written when the publisher waits for a confirm, or by the
    /// writer within about 2 ms, whichever comes first (see [`manual`](crate::manual) and
    /// [`ConnectionOptions::write_coalescing`](crate::ConnectionOptions::write_coalescing)).
    /// Without confirm mode the future resolves to [`Confirmation::NotRequested`]; after
    /// [`confirm_select`](Self::confirm_select) it resolves to the broker's ack or nack.
    /// A body of 4 KiB or more is sent without being copied.
    ///
    /// Waits (asynchronously) while the broker has blocked the connection, paused the channel
    /// with `channel.flow`, or more than the write buffer's high-water mark is waiting to be
    /// written.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a name over 255 bytes or not UTF-8 (only a [`ShortStr`]
    /// can hold other bytes), or properties too large for a frame; [`Error::Timeout`] when blocked longer than the blocked-publish timeout;
    /// connection and channel errors.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn demo(ch: &lepus::Channel) -> Result<(), lepus::Error> {
    /// use lepus::{BasicProperties, BasicPublishOptions};
    ///
    /// # ch.queue_declare("jobs", lepus::QueueDeclareOptions::default()).await?;
    /// ch.confirm_select().await?;
    /// let mut confirms = Vec::new();
    /// for i in 0..1000 {
    ///     let body = format!("job {i}");
    ///     let confirm = ch
    ///         .basic_publish("", "jobs", BasicPublishOptions::default(), &BasicProperties::default(), body)
    ///         .await?;
    ///     confirms.push(confirm);
    /// }
    /// for confirm in confirms {
    ///     assert!(confirm.await?.is_ack());
    /// }
    /// # Ok(()) }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lepus::Error> {
    /// # let conn = lepus::Connection::connect("memory://").await?;
    /// # let ch = conn.open_channel().await?;
    /// # demo(&ch).await?;
    /// # conn.close().await
    /// # }
    /// ```
    ///
    /// [`Confirmation::NotRequested`]: crate::Confirmation::NotRequested
    pub async fn basic_publish(
        &self,
        exchange: impl AsShortStr,
        routing_key: impl AsShortStr,
        options: BasicPublishOptions,
        properties: &BasicProperties,
        body: impl Into<Bytes>,
    ) -> Result<PublisherConfirm> {
        let body = body.into();
        let span = crate::telemetry::publish(
            std::str::from_utf8(exchange.as_short_bytes()).unwrap_or_default(),
            std::str::from_utf8(routing_key.as_short_bytes()).unwrap_or_default(),
            properties,
            body.len(),
            || self.shared.lock().address.clone(),
        );
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let result = if span.is_disabled() {
            self.publish_inner(&exchange, &routing_key, options, properties, body)
                .await
        } else {
            #[cfg(feature = "otel")]
            let injected = crate::telemetry::otel::inject(&span, properties);
            #[cfg(feature = "otel")]
            let properties = injected.as_ref().unwrap_or(properties);
            let result = self
                .publish_inner(&exchange, &routing_key, options, properties, body)
                .instrument(span.clone())
                .await;
            if let Err(e) = &result {
                crate::telemetry::record_error(&span, e);
            }
            result
        };
        #[cfg(feature = "metrics")]
        {
            let m = &self.shared.events.metrics;
            m.publish_duration.record(started.elapsed());
            if result.is_ok() {
                m.sent.increment(1);
            }
        }
        result
    }

    async fn publish_inner(
        &self,
        exchange_arg: &impl AsShortStr,
        routing_key_arg: &impl AsShortStr,
        options: BasicPublishOptions,
        properties: &BasicProperties,
        body: Bytes,
    ) -> Result<PublisherConfirm> {
        let exchange = text(exchange_arg, "exchange name")?;
        let routing_key = text(routing_key_arg, "routing key")?;
        let mut body = Some(body);
        let deadline = self
            .shared
            .options
            .blocked_publish_timeout
            .and_then(|t| Some((tokio::time::Instant::now().checked_add(t)?, t)));
        loop {
            let waiting = {
                let mut inner = self.shared.lock();
                inner.check(self.id, self.generation)?;
                let high_water = self.shared.options.write_buffer_high_water;
                let flow_paused = inner.channels.get(&self.id).is_some_and(|c| c.flow_paused);
                // While the connection is being recovered, publishers wait as when blocked.
                if !inner.recovering
                    && inner.proto.blocked().is_none()
                    && !flow_paused
                    && inner.buffered() < high_water
                {
                    let body = body.take().unwrap_or_default();
                    // A copy of the body (a reference count, not the bytes) when replay is on.
                    let mut kept_body = inner
                        .channels
                        .get(&self.id)
                        .is_some_and(|slot| slot.replay.is_some())
                        .then(|| body.clone());
                    let seq = inner.proto.publish(
                        self.id,
                        exchange,
                        routing_key,
                        options.mandatory,
                        properties,
                        body,
                    )?;
                    inner.note_publish();
                    let Some(seq) = seq else {
                        inner.wake_writer(&self.shared);
                        return Ok(PublisherConfirm::not_requested());
                    };
                    // Numbered across recoveries: the broker's numbers restart on a new link.
                    let mut seq = seq;
                    if let Some(slot) = inner.channels.get_mut(&self.id) {
                        seq = slot.confirm_number(seq);
                        slot.published_seq = seq;
                        slot.confirms.push(seq);
                        if let Some(kept) = &mut slot.replay {
                            // Names the caller passed as short strings are kept by reference.
                            kept.insert(
                                seq,
                                crate::confirm::Replay {
                                    exchange: exchange_arg.to_short_str()?,
                                    routing_key: routing_key_arg.to_short_str()?,
                                    mandatory: options.mandatory,
                                    properties: properties.clone(),
                                    body: kept_body.take().unwrap_or_default(),
                                },
                            );
                        }
                    }
                    inner.wake_writer_for_confirmed_publish(&self.shared, self.id);
                    return Ok(PublisherConfirm::new(
                        Arc::clone(&self.shared),
                        self.id,
                        self.generation,
                        seq,
                    ));
                }
                inner.publishers_waiting = true;
                inner.wake_writer(&self.shared);
                self.shared.space.notified()
            };
            match deadline {
                Some((at, after)) => {
                    if tokio::time::timeout_at(at, waiting).await.is_err() {
                        let what = if self.shared.lock().recovering {
                            "the connection to be recovered"
                        } else {
                            "the broker to unblock publishing"
                        };
                        return Err(Error::Timeout { what, after });
                    }
                }
                None => waiting.await,
            }
        }
    }

    /// Acknowledges a delivery by tag (usually [`Delivery::ack`] is handier).
    ///
    /// # Errors
    ///
    /// When the channel is closed.
    pub fn basic_ack(&self, delivery_tag: u64, multiple: bool) -> Result<()> {
        self.send_ack(
            &basic::Ack {
                delivery_tag,
                multiple,
            },
            delivery_tag,
            multiple,
        )
    }

    /// Negatively acknowledges a delivery by tag.
    ///
    /// # Errors
    ///
    /// When the channel is closed.
    pub fn basic_nack(&self, delivery_tag: u64, multiple: bool, requeue: bool) -> Result<()> {
        self.send_ack(
            &basic::Nack {
                delivery_tag,
                multiple,
                requeue,
            },
            delivery_tag,
            multiple,
        )
    }

    /// Rejects a delivery by tag.
    ///
    /// # Errors
    ///
    /// When the channel is closed.
    pub fn basic_reject(&self, delivery_tag: u64, requeue: bool) -> Result<()> {
        self.send_ack(
            &basic::Reject {
                delivery_tag,
                requeue,
            },
            delivery_tag,
            false,
        )
    }

    /// Queues an acknowledgement, which may wait briefly for the next socket activity.
    fn send_ack<M: lepus_wire::MethodArgs>(
        &self,
        method: &M,
        delivery_tag: u64,
        multiple: bool,
    ) -> Result<()> {
        self.shared.lock().queue_ack(
            &self.shared,
            (self.id, self.generation, None),
            method,
            delivery_tag,
            multiple,
        )
    }

    fn send_async<M: lepus_wire::MethodArgs>(&self, method: &M) -> Result<()> {
        let mut inner = self.shared.lock();
        inner.check(self.id, self.generation)?;
        inner.proto.send(self.id, method)?;
        inner.wake_writer(&self.shared);
        Ok(())
    }

    /// Redelivers every unacknowledged message of the channel (`basic.recover`).
    ///
    /// # Errors
    ///
    /// Connection errors.
    pub async fn basic_recover(&self, requeue: bool) -> Result<()> {
        self.rpc(basic::Recover { requeue }.into(), "basic.recover-ok")
            .await
            .map(drop)
    }

    /// Like [`basic_recover`](Self::basic_recover), without waiting for a reply (deprecated
    /// in the spec, still served by RabbitMQ).
    ///
    /// # Errors
    ///
    /// When the channel is closed.
    pub fn basic_recover_async(&self, requeue: bool) -> Result<()> {
        self.send_async(&basic::RecoverAsync { requeue })
    }

    /// The messages the broker returns on this channel (mandatory and unroutable).
    ///
    /// Only returns received after this call are delivered; call it before publishing. Each
    /// call makes a new receiver, and every live receiver gets every returned message; drop a
    /// receiver to stop. A receiver buffers without bound until read (returns are rare and
    /// each one is a mistake to look at), and with confirms on, the returned message also
    /// comes with its publish's [`Confirmation`](crate::Confirmation).
    pub fn returns(&self) -> Result<mpsc::UnboundedReceiver<ReturnedMessage>> {
        let mut inner = self.shared.lock();
        inner.check(self.id, self.generation)?;
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(slot) = inner.channels.get_mut(&self.id) {
            slot.returns_tx.push(tx);
        }
        Ok(rx)
    }

    // ---- confirms ----

    /// Turns on publisher confirms: from now on each publish's future resolves to the
    /// broker's ack or nack.
    ///
    /// # Errors
    ///
    /// Connection errors; 406 on a transactional channel.
    pub async fn confirm_select(&self) -> Result<()> {
        self.rpc(
            confirm::Select { nowait: false }.into(),
            "confirm.select-ok",
        )
        .await?;
        self.with_slot(|slot| slot.confirm_mode = true);
        Ok(())
    }

    /// Waits until every message published so far is confirmed, up to `timeout`. Returns
    /// `true` if none was nacked since the last call.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when confirms are still missing at the deadline;
    /// [`Error::InvalidState`] when the channel is not in confirm mode; connection errors.
    pub async fn wait_for_confirms(&self, timeout: Duration) -> Result<bool> {
        // A timeout too large to add to the clock means no deadline.
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            self.shared.flush_inline();
            let notified = {
                let mut inner = self.shared.lock();
                inner.check(self.id, self.generation)?;
                if inner.proto.next_publish_seq(self.id).is_none() {
                    return Err(Error::InvalidState("channel is not in confirm mode"));
                }
                let Some(slot) = inner.channels.get_mut(&self.id) else {
                    return Err(Error::ChannelNotOpen(self.id));
                };
                if slot.confirms.is_drained() {
                    let ok = !slot.nacked_since_wait;
                    slot.nacked_since_wait = false;
                    return Ok(ok);
                }
                let notify = slot
                    .confirms_drained
                    .get_or_insert_with(|| Arc::new(Notify::new()))
                    .clone();
                let notified = notify.notified_owned();
                inner.kick_writer(&self.shared);
                notified
            };
            match deadline {
                Some(at) => {
                    if tokio::time::timeout_at(at, notified).await.is_err() {
                        return Err(Error::Timeout {
                            what: "publisher confirms",
                            after: timeout,
                        });
                    }
                }
                None => notified.await,
            }
        }
    }

    // ---- transactions ----

    /// Puts the channel in transactional mode.
    ///
    /// # Errors
    ///
    /// Connection errors; 406 on a channel in confirm mode.
    pub async fn tx_select(&self) -> Result<()> {
        self.rpc(tx::Select.into(), "tx.select-ok").await?;
        self.with_slot(|slot| slot.tx_mode = true);
        Ok(())
    }

    /// Commits the current transaction's publishes and acknowledgements.
    ///
    /// # Errors
    ///
    /// Connection errors; 406 when the channel is not transactional.
    pub async fn tx_commit(&self) -> Result<()> {
        self.rpc(tx::Commit.into(), "tx.commit-ok").await.map(drop)
    }

    /// Discards the current transaction's publishes and acknowledgements.
    ///
    /// # Errors
    ///
    /// Connection errors; 406 when the channel is not transactional.
    pub async fn tx_rollback(&self) -> Result<()> {
        self.rpc(tx::Rollback.into(), "tx.rollback-ok")
            .await
            .map(drop)
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("id", &self.id).finish()
    }
}
