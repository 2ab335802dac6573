//! The messaging layer without async: producers and consumers for plain threads, over
//! [`lepus::blocking`].
//!
//! Each call runs the async API's future on the connection's I/O runtime
//! ([`lepus::blocking::Connection::block_on`]), so the behaviour (confirms, accept lists,
//! decode policies, handler errors and panics) is the async layer's, to the letter. As with
//! [`lepus::blocking`], calling these from inside an async runtime panics.
//!
//! # Examples
//!
//! ```
//! use lepus_messaging::blocking::Connection;
//! use lepus_messaging::Queue;
//!
//! # fn main() -> lepus_messaging::Result<()> {
//! // "amqp://guest:guest@127.0.0.1:5672/%2f" for a RabbitMQ; "memory://" is in-process.
//! let conn = Connection::connect("memory://")?;
//! let jobs = Queue::new("jobs");
//! let producer = conn.producer().build()?;
//! producer.publish(&serde_json::json!({"job": 1})).to_queue(&jobs).declare(jobs.clone()).send()?;
//!
//! let mut consumer = conn.consumer([jobs]).prefetch(10).consume()?;
//! # // The handler deletes the queue after the first job: the broker ends the consumer.
//! # let admin = conn.client().open_channel()?;
//! # let ended = (|| -> lepus_messaging::Result<()> {
//! consumer.run(|message| {
//!     let job: serde_json::Value = message.decode()?;
//!     println!("{job}");
//! #   message.ack()?;
//! #   admin.queue_delete("jobs", Default::default())?;
//!     Ok::<_, lepus_messaging::Error>(()) // acked
//! })?;
//! # Ok(()) })();
//! # assert!(matches!(ended, Err(lepus_messaging::Error::ConsumerEnded { .. })), "{ended:?}");
//! # Ok(()) }
//! ```

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lepus::{BasicProperties, DeliveryMode, FieldTable, FieldValue};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::Entity;
use crate::consumer::{DecodeErrorPolicy, HandlerErrorPolicy};
use crate::entity::{Exchange, Queue};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::producer::RetryPolicy;
use crate::serializer::{Accept, Registry};

/// A blocking connection with the messaging layer's state (see [`crate::Connection`]).
///
/// Cheap to clone; clones share the connection and its I/O thread, which stops (after closing
/// the connection) when the last clone, producer, consumer and message are gone.
#[derive(Clone)]
pub struct Connection {
    io: Arc<lepus::blocking::Connection>,
    inner: crate::Connection,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Connection {
    /// Connects to the broker at `uri`, starting the connection's I/O thread.
    ///
    /// # Errors
    ///
    /// As [`lepus::blocking::Connection::connect`].
    #[track_caller]
    pub fn connect(uri: &str) -> Result<Self> {
        Ok(Self::new(lepus::blocking::Connection::connect(uri)?))
    }

    /// Wraps a blocking client connection, with the built-in serializers.
    pub fn new(client: lepus::blocking::Connection) -> Self {
        Self::with_registry(client, Registry::default())
    }

    /// Wraps a blocking client connection with a serializer registry of one's own.
    pub fn with_registry(client: lepus::blocking::Connection, registry: Registry) -> Self {
        let inner = crate::Connection::with_registry(client.as_async().clone(), registry);
        Self {
            io: Arc::new(client),
            inner,
        }
    }

    /// Sets the largest body a compressed message may inflate to (see
    /// [`crate::Connection::max_message_size`]).
    #[must_use]
    pub fn max_message_size(self, bytes: usize) -> Self {
        Self {
            io: self.io,
            inner: self.inner.max_message_size(bytes),
        }
    }

    /// The blocking client connection underneath.
    pub fn client(&self) -> &lepus::blocking::Connection {
        &self.io
    }

    /// The async messaging connection this one drives.
    pub fn as_async(&self) -> &crate::Connection {
        &self.inner
    }

    /// The serializer registry.
    pub fn registry(&self) -> &Registry {
        self.inner.registry()
    }

    /// Declares `entity` unless declared before (see [`crate::Connection::maybe_declare`]).
    ///
    /// # Errors
    ///
    /// As [`crate::Connection::maybe_declare`].
    #[track_caller]
    pub fn maybe_declare(&self, entity: impl Into<Entity>) -> Result<bool> {
        self.io.block_on(self.inner.maybe_declare(entity))
    }

    /// Fetches one message (see [`crate::Connection::get`]).
    ///
    /// # Errors
    ///
    /// As [`crate::Connection::get`].
    #[track_caller]
    pub fn get(&self, queue: &Queue, no_ack: bool, accept: Accept) -> Result<Option<Message>> {
        self.io.block_on(self.inner.get(queue, no_ack, accept))
    }

    /// Starts a blocking [`Producer`].
    pub fn producer(&self) -> ProducerBuilder {
        ProducerBuilder {
            io: Arc::clone(&self.io),
            inner: self.inner.producer(),
        }
    }

    /// Starts a blocking [`Consumer`] of `queues`.
    pub fn consumer<I, Q>(&self, queues: I) -> ConsumerBuilder
    where
        I: IntoIterator<Item = Q>,
        Q: Into<Queue>,
    {
        ConsumerBuilder {
            io: Arc::clone(&self.io),
            inner: self.inner.consumer(queues),
        }
    }

    /// Closes the connection, waiting for the broker (see [`lepus::blocking::Connection::close`]).
    ///
    /// # Errors
    ///
    /// As [`lepus::blocking::Connection::close`].
    #[track_caller]
    pub fn close(&self) -> Result<()> {
        Ok(self.io.close()?)
    }
}

/// Forwards builder setters to the async builder inside.
macro_rules! forward {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*); )*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $($arg: $ty),*) -> Self {
                self.inner = self.inner.$name($($arg),*);
                self
            }
        )*
    };
}

/// Builds a blocking [`Producer`] (see [`crate::ProducerBuilder`] for each setting).
#[derive(Debug, Clone)]
#[must_use = "call build() to get the producer"]
pub struct ProducerBuilder {
    io: Arc<lepus::blocking::Connection>,
    inner: crate::ProducerBuilder,
}

impl ProducerBuilder {
    forward! {
        /// The default exchange of publishes.
        fn exchange(exchange: impl Into<Exchange>);
        /// The default routing key.
        fn routing_key(routing_key: impl Into<String>);
        /// The serializer (default `json`).
        fn serializer(name: impl Into<String>);
        /// The compression method (default none).
        fn compression(method: impl Into<String>);
        /// Whether the producer's exchange is declared first (default `true`).
        fn auto_declare(on: bool);
        /// Whether publishes wait for confirms (default `true`).
        fn confirms(on: bool);
        /// The retry policy (default none).
        fn retry(policy: RetryPolicy);
        /// How many channels publishes spread over (default 1).
        fn channels(n: usize);
    }

    /// Makes the producer.
    ///
    /// # Errors
    ///
    /// As [`crate::ProducerBuilder::build`].
    pub fn build(self) -> Result<Producer> {
        Ok(Producer {
            io: self.io,
            inner: self.inner.build()?,
        })
    }
}

/// Publishes values, bytes or text from plain threads (see [`crate::Producer`]). `Clone +
/// Send + Sync`.
#[derive(Debug, Clone)]
pub struct Producer {
    io: Arc<lepus::blocking::Connection>,
    inner: crate::Producer,
}

impl Producer {
    /// A publish of `value`; finish it with [`Publish::send`].
    pub fn publish<'a, T>(&'a self, value: &'a T) -> Publish<'a>
    where
        T: Serialize + Sync + ?Sized,
    {
        Publish {
            io: &self.io,
            inner: self.inner.publish(value),
        }
    }

    /// A publish of bytes as they are (see [`crate::Producer::publish_bytes`]).
    pub fn publish_bytes(&self, body: impl Into<Bytes>) -> Publish<'_> {
        Publish {
            io: &self.io,
            inner: self.inner.publish_bytes(body),
        }
    }

    /// A publish of text as it is (see [`crate::Producer::publish_text`]).
    pub fn publish_text(&self, text: impl Into<String>) -> Publish<'_> {
        Publish {
            io: &self.io,
            inner: self.inner.publish_text(text),
        }
    }

    /// The async producer this one drives.
    pub fn as_async(&self) -> &crate::Producer {
        &self.inner
    }
}

/// One blocking publish being set up (see [`crate::Publish`] for each setting).
#[must_use = "a publish does nothing until sent"]
pub struct Publish<'a> {
    io: &'a Arc<lepus::blocking::Connection>,
    inner: crate::Publish<'a>,
}

impl Publish<'_> {
    forward! {
        /// The exchange.
        fn exchange(exchange: impl Into<Exchange>);
        /// The routing key.
        fn routing_key(routing_key: impl Into<String>);
        /// The serializer.
        fn serializer(name: impl Into<String>);
        /// The compression method.
        fn compression(method: impl Into<String>);
        /// The content type and encoding of bytes or text sent as they are.
        fn content_type(content_type: impl Into<String>, content_encoding: impl Into<String>);
        /// One application header.
        fn header(name: &str, value: impl Into<FieldValue>);
        /// Application headers.
        fn headers(headers: &FieldTable);
        /// The other AMQP properties.
        fn properties(properties: BasicProperties);
        /// The correlation id.
        fn correlation_id(id: &str);
        /// Where replies go.
        fn reply_to(queue: &str);
        /// The message id.
        fn message_id(id: &str);
        /// Persistent or transient.
        fn delivery_mode(mode: DeliveryMode);
        /// The priority.
        fn priority(priority: u8);
        /// The expiration.
        fn expiration(ttl: Duration);
        /// Whether an unroutable message comes back as [`Error::Returned`].
        fn mandatory(mandatory: bool);
        /// An entity to declare first.
        fn declare(entity: impl Into<Entity>);
        /// The retry policy.
        fn retry(policy: RetryPolicy);
    }

    /// Sends the body uncompressed even if the producer compresses.
    pub fn no_compression(mut self) -> Self {
        self.inner = self.inner.no_compression();
        self
    }

    /// No retry, even if the producer has a policy.
    pub fn no_retry(mut self) -> Self {
        self.inner = self.inner.no_retry();
        self
    }

    /// Publishes to `queue` through the default exchange.
    pub fn to_queue(mut self, queue: &Queue) -> Self {
        self.inner = self.inner.to_queue(queue);
        self
    }

    /// Publishes and waits for the broker's confirm.
    ///
    /// # Errors
    ///
    /// As awaiting a [`crate::Publish`].
    #[track_caller]
    pub fn send(self) -> Result<()> {
        self.io
            .block_on(std::future::IntoFuture::into_future(self.inner))
    }

    /// Publishes without waiting for the confirm; wait for it later with [`Confirm::wait`].
    ///
    /// # Errors
    ///
    /// As [`crate::Publish::pipelined`].
    #[track_caller]
    pub fn pipelined(self) -> Result<Confirm> {
        let inner = self.io.block_on(self.inner.pipelined())?;
        Ok(Confirm {
            io: Arc::clone(self.io),
            inner,
        })
    }
}

/// The outcome of a pipelined blocking publish.
#[must_use = "the publish was sent; wait() to learn whether the broker took it"]
pub struct Confirm {
    io: Arc<lepus::blocking::Connection>,
    inner: crate::Confirm,
}

impl fmt::Debug for Confirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Confirm")
    }
}

impl Confirm {
    /// Waits for the broker's verdict (and the publish's retries).
    ///
    /// # Errors
    ///
    /// As awaiting a [`crate::Confirm`].
    #[track_caller]
    pub fn wait(self) -> Result<()> {
        self.io.block_on(self.inner)
    }

    /// Waits at most `timeout`; [`Error::Timeout`] leaves the outcome unknown (the publish
    /// goes on, but its confirm is no longer watched).
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait), and [`Error::Timeout`].
    #[track_caller]
    pub fn wait_timeout(self, timeout: Duration) -> Result<()> {
        self.io
            .block_on(async { tokio::time::timeout(timeout, self.inner).await })
            .unwrap_or(Err(Error::Timeout(timeout)))
    }
}

/// Builds a blocking [`Consumer`] (see [`crate::ConsumerBuilder`] for each setting).
#[derive(Debug, Clone)]
#[must_use = "call consume() to start consuming"]
pub struct ConsumerBuilder {
    io: Arc<lepus::blocking::Connection>,
    inner: crate::ConsumerBuilder,
}

impl ConsumerBuilder {
    forward! {
        /// The prefetch count.
        fn prefetch(count: u16);
        /// Consumer tags `{prefix}{n}`.
        fn tag_prefix(prefix: impl Into<String>);
        /// Whether to be each queue's only consumer.
        fn exclusive(on: bool);
        /// The consumer priority.
        fn priority(priority: i32);
        /// `basic.consume` arguments.
        fn arguments(arguments: FieldTable);
        /// The content types to decode.
        fn accept(accept: Accept);
        /// Whether the broker forgets messages once sent.
        fn no_ack(on: bool);
        /// Whether the queues are declared first.
        fn auto_declare(on: bool);
        /// What happens to a message that cannot be decoded or is not accepted.
        fn on_decode_error(policy: DecodeErrorPolicy);
        /// What happens to a message whose handler failed or panicked.
        fn on_handler_error(policy: HandlerErrorPolicy);
        /// How many deliveries may wait in lepus's buffer per queue.
        fn buffer(deliveries: usize);
    }

    /// Declares the queues and subscribes (see [`crate::ConsumerBuilder::consume`]).
    ///
    /// # Errors
    ///
    /// As [`crate::ConsumerBuilder::consume`].
    #[track_caller]
    pub fn consume(self) -> Result<Consumer> {
        let inner = self.io.block_on(self.inner.consume())?;
        Ok(Consumer { io: self.io, inner })
    }
}

/// Messages from one or more queues, for plain threads (see [`crate::Consumer`]): an
/// [`Iterator`] of messages, [`recv_timeout`](Self::recv_timeout), or a handler loop.
pub struct Consumer {
    io: Arc<lepus::blocking::Connection>,
    inner: crate::Consumer,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Consumer {
    /// The next message, or `None` when the consumer has ended.
    #[track_caller]
    pub fn recv(&mut self) -> Option<Result<Message>> {
        self.io.block_on(self.inner.recv())
    }

    /// The next message within `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when none came; [`Error::ConsumerEnded`] when the consumer ended
    /// (and `Ok(None)` after that).
    #[track_caller]
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Message>> {
        let inner = &mut self.inner;
        match self
            .io
            .block_on(async { tokio::time::timeout(timeout, inner.recv()).await })
        {
            Err(_) => Err(Error::Timeout(timeout)),
            Ok(None) => Ok(None),
            Ok(Some(m)) => m.map(Some),
        }
    }

    /// Calls `handler` for each message until the consumer ends (see
    /// [`crate::Consumer::run`]): a message the handler did not settle is acked on `Ok` and
    /// settled per the [`HandlerErrorPolicy`] on an error or a panic. The handler runs on the
    /// calling thread outside the I/O runtime, so it may use the blocking API itself (publish
    /// a reply, declare a queue).
    ///
    /// # Errors
    ///
    /// [`Error::ConsumerEnded`] when the broker cancelled a subscription or the channel
    /// closed.
    #[track_caller]
    pub fn run<F, E>(&mut self, mut handler: F) -> Result<()>
    where
        F: FnMut(Message) -> std::result::Result<(), E>,
        E: fmt::Display,
    {
        while let Some(message) = self.recv() {
            let message = message?;
            let settle = message.clone();
            let outcome = catch_unwind(AssertUnwindSafe(|| handler(message)));
            self.inner
                .after_handler(&settle, outcome.map(|r| r.map_err(|e| e.to_string())));
        }
        Ok(())
    }

    /// As [`run`](Self::run), with each body decoded into `T` first (see
    /// [`crate::Consumer::run_typed`]); a body that does not decode is settled by the
    /// [`DecodeErrorPolicy`].
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    #[track_caller]
    pub fn run_typed<T, F, E>(&mut self, mut handler: F) -> Result<()>
    where
        T: DeserializeOwned,
        F: FnMut(T, Message) -> std::result::Result<(), E>,
        E: fmt::Display,
    {
        while let Some(message) = self.recv() {
            let message = message?;
            let value = match message.decode::<T>() {
                Ok(v) => v,
                Err(e) => {
                    self.inner.decode_failed(&message, &e);
                    continue;
                }
            };
            let settle = message.clone();
            let outcome = catch_unwind(AssertUnwindSafe(|| handler(value, message)));
            self.inner
                .after_handler(&settle, outcome.map(|r| r.map_err(|e| e.to_string())));
        }
        Ok(())
    }

    /// Cancels every subscription (see [`crate::Consumer::cancel`]).
    ///
    /// # Errors
    ///
    /// Connection errors.
    #[track_caller]
    pub fn cancel(self) -> Result<()> {
        self.io.block_on(self.inner.cancel())
    }
}

impl Iterator for Consumer {
    type Item = Result<Message>;

    /// The next message, blocking; `None` once the consumer has ended.
    fn next(&mut self) -> Option<Self::Item> {
        self.recv()
    }
}

// After `forward!`, which they use.
mod rpc;
mod simple;
mod worker;

pub use rpc::{RpcClient, RpcClientBuilder, RpcServer, RpcServerBuilder};
pub use simple::{SimpleBuffer, SimpleBufferBuilder, SimpleQueue, SimpleQueueBuilder};
pub use worker::{Handler, TypedHandler, Worker, WorkerBuilder, WorkerEvents, WorkerProducer};
