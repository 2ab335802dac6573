//! [`SimpleQueue`] and [`SimpleBuffer`]: kombu's queue-like interface to one AMQP queue
//! (`kombu.simple`).
//!
//! A simple queue is made from a name: a direct [`Exchange`] of that name and a [`Queue`] of
//! that name bound to it with the name as routing key, declared when the simple queue is
//! built. [`put`](SimpleQueue::put) publishes to it (with the serializer, compression and
//! headers a [`Producer`] takes), [`get`](SimpleQueue::get) waits for the next message,
//! [`get_nowait`](SimpleQueue::get_nowait) fetches one without waiting (`basic.get`),
//! [`len`](SimpleQueue::len) counts the ready messages and [`clear`](SimpleQueue::clear)
//! purges them.
//!
//! | | [`SimpleQueue`] | [`SimpleBuffer`] |
//! |---|---|---|
//! | exchange | direct, durable | direct, not durable, auto-delete, transient messages |
//! | queue | durable | not durable, auto-delete, exclusive to the connection |
//! | messages from `get` | to be acknowledged by the caller | no-ack: the broker forgets them once sent |
//!
//! # Empty
//!
//! kombu raises `Empty` when `get` times out and when `get_nowait` finds nothing. Here
//! [`get`](SimpleQueue::get) fails with [`Error::Timeout`] (the same error as the blocking
//! consumer's `recv_timeout`), and [`get_nowait`](SimpleQueue::get_nowait) returns
//! `Ok(None)`, as [`Connection::get`] does: an empty queue is an answer, not a failure.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use lepus_messaging::{Connection, Error, SimpleQueue};
//!
//! # #[tokio::main]
//! # async fn main() -> lepus_messaging::Result<()> {
//! let conn = Connection::connect("memory://").await?;
//! let queue = SimpleQueue::new(&conn, "jobs").await?;
//! queue.put(&serde_json::json!({"job": 1})).compression("zlib").await?;
//!
//! match queue.get(Duration::from_secs(5)).await {
//!     Ok(message) => {
//!         let job: serde_json::Value = message.decode()?;
//!         println!("{job}");
//!         message.ack()?; // as in kombu, the caller acknowledges
//!     }
//!     Err(Error::Timeout(_)) => println!("empty"), // kombu's Empty
//!     Err(e) => return Err(e),
//! }
//! println!("{} left", queue.len().await?);
//! queue.close().await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use lepus::ExchangeKind;
use serde::Serialize;

use crate::connection::Connection;
use crate::consumer::{Consumer, DecodeErrorPolicy};
use crate::entity::{Exchange, Queue};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::producer::{Producer, Publish};
use crate::serializer::Accept;

/// Builds a [`SimpleQueue`]; from [`SimpleQueue::builder`] or [`SimpleQueue::from_queue`].
#[derive(Debug, Clone)]
#[must_use = "call build() to declare the queue and get the simple queue"]
pub struct SimpleQueueBuilder {
    conn: Connection,
    queue: Queue,
    no_ack: bool,
    prefetch: u16,
    serializer: String,
    compression: Option<String>,
    accept: Accept,
    on_decode_error: DecodeErrorPolicy,
}

impl SimpleQueueBuilder {
    fn new(conn: &Connection, queue: Queue) -> Self {
        Self {
            conn: conn.clone(),
            queue,
            no_ack: false,
            prefetch: 1,
            serializer: "json".to_owned(),
            compression: None,
            accept: Accept::default(),
            on_decode_error: DecodeErrorPolicy::default(),
        }
    }

    /// The serializer of [`put`](SimpleQueue::put), by name or content type (default
    /// `json`); a put can name another.
    pub fn serializer(mut self, name: impl Into<String>) -> Self {
        self.serializer = name.into();
        self
    }

    /// The compression method of [`put`](SimpleQueue::put) (default none).
    pub fn compression(mut self, method: impl Into<String>) -> Self {
        self.compression = Some(method.into());
        self
    }

    /// The content types [`get`](SimpleQueue::get) hands over and messages decode (default:
    /// JSON, plus raw bytes and text). A message of another type that arrives through `get`
    /// is settled by the [`on_decode_error`](Self::on_decode_error) policy.
    pub fn accept(mut self, accept: Accept) -> Self {
        self.accept = accept;
        self
    }

    /// What [`get`](SimpleQueue::get) does with a message it cannot hand over: a content type
    /// outside the accept list or a body that does not inflate (default: reject it, with one
    /// log line).
    pub fn on_decode_error(mut self, policy: DecodeErrorPolicy) -> Self {
        self.on_decode_error = policy;
        self
    }

    /// How many unacknowledged messages [`get`](SimpleQueue::get)'s consumer takes ahead
    /// (default 1, at least 1): the others stay in the queue, for [`len`](SimpleQueue::len)
    /// to count and other consumers to take. Without effect on a no-ack queue.
    pub fn prefetch(mut self, count: u16) -> Self {
        self.prefetch = count.max(1);
        self
    }

    /// Whether the broker forgets messages once sent (default `false`: the caller acks each
    /// message from `get` and `get_nowait`; [`SimpleBuffer`] is the no-ack variant).
    pub fn no_ack(mut self, on: bool) -> Self {
        self.no_ack = on;
        self
    }

    /// Declares the exchange, the queue and the binding, and makes the simple queue. Nothing
    /// is consumed before the first [`get`](SimpleQueue::get).
    ///
    /// # Errors
    ///
    /// [`Error::SerializerNotInstalled`] or [`Error::CompressionNotInstalled`] for names
    /// that are not available; declaration errors (see [`Queue::declare`]).
    pub async fn build(self) -> Result<SimpleQueue> {
        let channel = self.conn.default_channel().await?;
        let declared = self.queue.declare(&channel).await?;
        let queue = self.queue.with_name(declared.name);
        let exchange = queue
            .bound_exchange()
            .cloned()
            .unwrap_or_else(Exchange::default_exchange);
        // Through the default exchange (or a queue bound without a key), the queue's name
        // is the routing key that reaches it.
        let routing_key = if queue.key().is_empty() || exchange.name().is_empty() {
            queue.name().to_owned()
        } else {
            queue.key().to_owned()
        };
        let mut producer = self
            .conn
            .producer()
            .exchange(exchange)
            .routing_key(routing_key)
            .serializer(self.serializer);
        if let Some(method) = self.compression {
            producer = producer.compression(method);
        }
        Ok(SimpleQueue {
            producer: producer.build()?,
            fetch: queue.clone().no_declare(true),
            queue,
            conn: self.conn,
            no_ack: self.no_ack,
            prefetch: self.prefetch,
            accept: self.accept,
            on_decode_error: self.on_decode_error,
            consumer: tokio::sync::Mutex::new(None),
        })
    }
}

/// kombu's `SimpleQueue`: one queue used like a queue of values.
///
/// Made from a name (a durable direct exchange and a durable queue of that name, bound with
/// the name) or from a [`Queue`] of one's own, and declared when built. Messages from
/// [`get`](Self::get) and [`get_nowait`](Self::get_nowait) are acknowledged by the caller,
/// as in kombu; one left unsettled goes back to the queue when the connection closes.
///
/// [`get`](Self::get) starts a consumer on its first call (with a prefetch of 1 by default,
/// so that the rest of the queue stays there for others) and keeps it until
/// [`close`](Self::close). `SimpleQueue` is `Send + Sync`: concurrent `get`s take turns on
/// that consumer.
///
/// See [the module docs](self) for an example.
pub struct SimpleQueue {
    conn: Connection,
    queue: Queue,
    /// The queue without declaration, for `basic.get` (declared when built).
    fetch: Queue,
    producer: Producer,
    no_ack: bool,
    prefetch: u16,
    accept: Accept,
    on_decode_error: DecodeErrorPolicy,
    consumer: tokio::sync::Mutex<Option<Consumer>>,
}

impl fmt::Debug for SimpleQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimpleQueue")
            .field("queue", &self.queue.name())
            .field("no_ack", &self.no_ack)
            .finish_non_exhaustive()
    }
}

impl SimpleQueue {
    /// Declares the simple queue `name` with the default settings (see
    /// [`builder`](Self::builder)).
    ///
    /// # Errors
    ///
    /// As [`SimpleQueueBuilder::build`].
    pub async fn new(conn: &Connection, name: &str) -> Result<Self> {
        Self::builder(conn, name).build().await
    }

    /// Starts a simple queue named `name`, as kombu's `SimpleQueue(channel, name)`:
    /// `Exchange(name, type='direct')` and `Queue(name, exchange, routing_key=name)`, both
    /// durable.
    pub fn builder(conn: &Connection, name: &str) -> SimpleQueueBuilder {
        let exchange = Exchange::with_kind(name, ExchangeKind::Direct);
        let queue = Queue::new(name).exchange(exchange).routing_key(name);
        SimpleQueueBuilder::new(conn, queue)
    }

    /// Starts a simple queue over a queue of one's own (kombu's `SimpleQueue(channel,
    /// Queue(...))`): puts go to its exchange with its routing key (to its name through the
    /// default exchange).
    pub fn from_queue(conn: &Connection, queue: Queue) -> SimpleQueueBuilder {
        SimpleQueueBuilder::new(conn, queue)
    }

    /// A publish of `value` to the queue: await it (it is a [`Publish`], so a serializer,
    /// compression, headers, a priority or an expiration can be set first). Confirmed by
    /// the broker, as every [`Producer`] publish.
    pub fn put<'a, T>(&'a self, value: &'a T) -> Publish<'a>
    where
        T: Serialize + Sync + ?Sized,
    {
        self.producer.publish(value)
    }

    /// The next message, waiting at most `timeout` for one (kombu's `get(block=True,
    /// timeout=...)`). Starts consuming on the first call.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when none came in time (kombu's `Empty`); [`Error::ConsumerEnded`]
    /// when the queue was deleted or the channel closed (the next call subscribes again);
    /// connection errors.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future loses no message: one that arrives afterwards waits in the
    /// consumer for the next call.
    pub async fn get(&self, timeout: Duration) -> Result<Message> {
        let next = async {
            let mut slot = self.consumer.lock().await;
            if slot.is_none() {
                *slot = Some(self.consume().await?);
            }
            let Some(consumer) = slot.as_mut() else {
                return Err(Error::Amqp(lepus::Error::InvalidState(
                    "the simple queue has no consumer",
                )));
            };
            match consumer.recv().await {
                Some(Ok(message)) => Ok(message),
                ended => {
                    *slot = None;
                    Err(ended
                        .and_then(Result::err)
                        .unwrap_or_else(|| Error::ConsumerEnded {
                            queue: self.queue.name().to_owned(),
                            reason: "cancelled".to_owned(),
                        }))
                }
            }
        };
        tokio::time::timeout(timeout, next)
            .await
            .unwrap_or(Err(Error::Timeout(timeout)))
    }

    /// One message if the queue has one ready, without waiting (`basic.get`, kombu's
    /// `get_nowait`); `None` when it is empty (kombu raises `Empty`).
    ///
    /// Messages already taken ahead by [`get`](Self::get)'s consumer are not seen here.
    ///
    /// # Errors
    ///
    /// 404 when the queue no longer exists, and connection errors.
    pub async fn get_nowait(&self) -> Result<Option<Message>> {
        self.conn
            .get(&self.fetch, self.no_ack, self.accept.clone())
            .await
    }

    /// How many messages are ready in the queue (a passive declare; kombu's `qsize` and
    /// `len`). Messages delivered and not yet acknowledged are not counted.
    ///
    /// # Errors
    ///
    /// 404 when the queue no longer exists, and connection errors.
    pub async fn len(&self) -> Result<u32> {
        let channel = self.conn.default_channel().await?;
        Ok(self.queue.declare_passive(&channel).await?.message_count)
    }

    /// The same as [`len`](Self::len), under kombu's name.
    ///
    /// # Errors
    ///
    /// As [`len`](Self::len).
    pub async fn qsize(&self) -> Result<u32> {
        self.len().await
    }

    /// Whether no message is ready in the queue.
    ///
    /// # Errors
    ///
    /// As [`len`](Self::len).
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// Removes every ready message (`queue.purge`, kombu's `clear`), returning how many.
    ///
    /// # Errors
    ///
    /// 404 when the queue no longer exists, and connection errors.
    pub async fn clear(&self) -> Result<u32> {
        let channel = self.conn.default_channel().await?;
        self.queue.purge(&channel).await
    }

    /// Stops consuming (kombu's `close`): messages the consumer took ahead go back to the
    /// queue; messages handed out can still be settled. A [`SimpleBuffer`]'s queue is
    /// deleted by the broker when its consumer goes.
    ///
    /// # Errors
    ///
    /// Connection errors.
    pub async fn close(self) -> Result<()> {
        match self.consumer.into_inner() {
            Some(consumer) => consumer.cancel().await,
            None => Ok(()),
        }
    }

    /// The queue, as declared (with the broker's name for a server-named one).
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The producer of [`put`](Self::put).
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// Whether messages are consumed without acknowledgement.
    pub fn is_no_ack(&self) -> bool {
        self.no_ack
    }

    /// Subscribes to the queue.
    async fn consume(&self) -> Result<Consumer> {
        let mut builder = self
            .conn
            .consumer([self.queue.clone()])
            .no_ack(self.no_ack)
            .accept(self.accept.clone())
            // Declared again (kombu's `revive` does too): an auto-delete queue may have gone
            // with an earlier consumer.
            .on_decode_error(self.on_decode_error.clone());
        if !self.no_ack {
            builder = builder.prefetch(self.prefetch);
        }
        builder.consume().await
    }
}

/// Builds a [`SimpleBuffer`]; from [`SimpleBuffer::builder`].
#[derive(Debug, Clone)]
#[must_use = "call build() to declare the queue and get the simple buffer"]
pub struct SimpleBufferBuilder {
    inner: SimpleQueueBuilder,
}

impl SimpleBufferBuilder {
    /// The serializer of [`put`](SimpleBuffer::put) (default `json`).
    pub fn serializer(mut self, name: impl Into<String>) -> Self {
        self.inner = self.inner.serializer(name);
        self
    }

    /// The compression method of [`put`](SimpleBuffer::put) (default none).
    pub fn compression(mut self, method: impl Into<String>) -> Self {
        self.inner = self.inner.compression(method);
        self
    }

    /// The content types [`get`](SimpleBuffer::get) hands over (default: JSON, plus raw
    /// bytes and text).
    pub fn accept(mut self, accept: Accept) -> Self {
        self.inner = self.inner.accept(accept);
        self
    }

    /// What [`get`](SimpleBuffer::get) does with a message it cannot hand over (default:
    /// drop it, with one log line: a no-ack message cannot go back).
    pub fn on_decode_error(mut self, policy: DecodeErrorPolicy) -> Self {
        self.inner = self.inner.on_decode_error(policy);
        self
    }

    /// Declares the exchange, the queue and the binding, and makes the buffer.
    ///
    /// # Errors
    ///
    /// As [`SimpleQueueBuilder::build`]; 405 RESOURCE_LOCKED when another connection holds
    /// an exclusive queue of that name.
    pub async fn build(self) -> Result<SimpleBuffer> {
        Ok(SimpleBuffer {
            inner: self.inner.build().await?,
        })
    }
}

/// kombu's `SimpleBuffer`: a [`SimpleQueue`] for transient data, private to its connection.
///
/// The exchange is not durable, auto-delete, and its messages are transient; the queue is not
/// durable, auto-delete and exclusive (no other connection may use it; it goes with the
/// connection, or when its consumer is cancelled); messages are consumed without
/// acknowledgement, so those from [`get`](Self::get) need no ack (acking one sends nothing).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lepus_messaging::{Connection, SimpleBuffer};
///
/// # async fn demo(conn: Connection) -> lepus_messaging::Result<()> {
/// let buffer = SimpleBuffer::new(&conn, "progress").await?;
/// buffer.put(&42).await?;
/// let message = buffer.get(Duration::from_secs(1)).await?;
/// assert_eq!(message.decode::<u32>()?, 42); // no ack needed
/// buffer.close().await?; // the queue and exchange go
/// # Ok(()) }
/// # #[tokio::main]
/// # async fn main() -> lepus_messaging::Result<()> {
/// # let conn = lepus_messaging::Connection::connect("memory://").await?;
/// # demo(conn).await
/// # }
/// ```
#[derive(Debug)]
pub struct SimpleBuffer {
    inner: SimpleQueue,
}

impl SimpleBuffer {
    /// Declares the simple buffer `name` with the default settings.
    ///
    /// # Errors
    ///
    /// As [`SimpleBufferBuilder::build`].
    pub async fn new(conn: &Connection, name: &str) -> Result<Self> {
        Self::builder(conn, name).build().await
    }

    /// Starts a simple buffer named `name`, as kombu's `SimpleBuffer(channel, name)`:
    /// `Exchange(name, durable=False, auto_delete=True, delivery_mode='transient')` and
    /// `Queue(name, exchange, name, durable=False, auto_delete=True, exclusive=True)`,
    /// consumed with `no_ack`.
    pub fn builder(conn: &Connection, name: &str) -> SimpleBufferBuilder {
        let exchange = Exchange::with_kind(name, ExchangeKind::Direct)
            .transient()
            .auto_delete(true);
        let queue = Queue::new(name)
            .exchange(exchange)
            .routing_key(name)
            .durable(false)
            .auto_delete(true)
            .exclusive(true);
        SimpleBufferBuilder {
            inner: SimpleQueueBuilder::new(conn, queue)
                .no_ack(true)
                // A no-ack message cannot be given back: one it cannot hand over is dropped.
                .on_decode_error(DecodeErrorPolicy::Ack),
        }
    }

    /// A publish of `value`, transient (see [`SimpleQueue::put`]).
    pub fn put<'a, T>(&'a self, value: &'a T) -> Publish<'a>
    where
        T: Serialize + Sync + ?Sized,
    {
        self.inner.put(value)
    }

    /// The next message within `timeout` (see [`SimpleQueue::get`]).
    ///
    /// # Errors
    ///
    /// As [`SimpleQueue::get`]: [`Error::Timeout`] is kombu's `Empty`.
    pub async fn get(&self, timeout: Duration) -> Result<Message> {
        self.inner.get(timeout).await
    }

    /// One message if one is ready, without waiting (see [`SimpleQueue::get_nowait`]).
    ///
    /// # Errors
    ///
    /// As [`SimpleQueue::get_nowait`].
    pub async fn get_nowait(&self) -> Result<Option<Message>> {
        self.inner.get_nowait().await
    }

    /// How many messages are ready (see [`SimpleQueue::len`]).
    ///
    /// # Errors
    ///
    /// As [`SimpleQueue::len`].
    pub async fn len(&self) -> Result<u32> {
        self.inner.len().await
    }

    /// The same as [`len`](Self::len), under kombu's name.
    ///
    /// # Errors
    ///
    /// As [`SimpleQueue::len`].
    pub async fn qsize(&self) -> Result<u32> {
        self.inner.len().await
    }

    /// Whether no message is ready.
    ///
    /// # Errors
    ///
    /// As [`SimpleQueue::len`].
    pub async fn is_empty(&self) -> Result<bool> {
        self.inner.is_empty().await
    }

    /// Removes every ready message, returning how many (see [`SimpleQueue::clear`]).
    ///
    /// # Errors
    ///
    /// As [`SimpleQueue::clear`].
    pub async fn clear(&self) -> Result<u32> {
        self.inner.clear().await
    }

    /// Stops consuming; the broker then deletes the queue (auto-delete) and the exchange
    /// (auto-delete, once unbound).
    ///
    /// # Errors
    ///
    /// Connection errors.
    pub async fn close(self) -> Result<()> {
        self.inner.close().await
    }

    /// The queue, as declared.
    pub fn queue(&self) -> &Queue {
        self.inner.queue()
    }

    /// The simple queue underneath.
    pub fn as_simple_queue(&self) -> &SimpleQueue {
        &self.inner
    }
}
