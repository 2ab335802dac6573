//! Request and reply over RabbitMQ: [`RpcClient`] calls, [`RpcServer`] answers, and
//! [`send_reply`] is kombu's `kombu.common.send_reply`.
//!
//! ```text
//!   RpcClient ── one channel: basic.consume amq.rabbitmq.reply-to (no-ack), then
//!       │        basic.publish mandatory, reply_to = amq.rabbitmq.reply-to, correlation_id
//!       ▼
//!   exchange ─► queue ─► RpcServer: decode, handler, publish the reply to reply_to
//!                         (default exchange, same correlation_id and serializer), ack
//!       ▲
//!   RpcClient's dispatcher ◄── the reply, matched to its call by correlation_id
//! ```
//!
//! The client uses RabbitMQ's [direct reply-to](https://www.rabbitmq.com/docs/direct-reply-to):
//! no reply queue is declared; the broker routes each reply straight to the client's channel.
//! Calls are pipelined: any number may be in flight on one client, each waiting for the reply
//! with its correlation id. The server works with any client that sets `reply_to` and
//! `correlation_id` (kombu's `send_reply`/`collect_replies` pattern with a reply queue of its
//! own, Celery's RPC result backend, ...), and the client with any server that copies the
//! correlation id into a reply sent to `reply_to` (kombu's `send_reply` does).
//!
//! # Errors a call can end with
//!
//! - [`Error::Returned`] (312 NO_ROUTE): no queue is bound for the request's routing key, so
//!   no server can get it. Requests are published mandatory, with confirms.
//! - [`Error::Timeout`]: no reply within the timeout (no server is consuming, or it is slow,
//!   or its handler failed: a failed request gets no reply). A reply that comes later is
//!   dropped with a debug log line.
//! - An [`Error::Amqp`] wrapping [`lepus::Error::ConnectionLost`] when the connection was lost
//!   while the call was in flight: the broker routes a reply only to the channel that sent
//!   the request, so a reply to a request sent before the loss can never arrive. lepus's
//!   recovery subscribes the client again; calls made afterwards work. Such errors are
//!   [recoverable](Error::is_recoverable): calling again is safe if the request is idempotent.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use lepus_messaging::{Connection, Queue, RpcClient, RpcServer};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Add { a: i64, b: i64 }
//!
//! # #[tokio::main]
//! # async fn main() -> lepus_messaging::Result<()> {
//! let conn = Connection::connect("memory://").await?;
//!
//! // The server: up to 10 requests handled at once.
//! let server = RpcServer::builder(&conn, Queue::new("adder")).concurrency(10).build()?;
//! tokio::spawn(async move {
//!     server
//!         .serve(|add: Add, _request| async move { Ok::<_, std::io::Error>(add.a + add.b) })
//!         .await
//! });
//!
//! // The client: `Clone + Send + Sync`, many calls in flight at once.
//! let client = RpcClient::new(&conn).await?;
//! let sum: i64 = client.call("adder", &Add { a: 2, b: 3 }, Duration::from_secs(5)).await?;
//! assert_eq!(sum, 5);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use lepus::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, Channel, Confirmation,
    ConnectionEvent, DeliveryMode, FieldTable, ShortStr,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};

use crate::compression;
use crate::connection::Connection;
use crate::consumer::{Consumer, DecodeErrorPolicy, HandlerErrorPolicy};
use crate::entity::{Exchange, Queue};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::producer::{Producer, Publish};
use crate::serializer::{Accept, Registry};

/// RabbitMQ's direct reply-to pseudo-queue: consumed (no-ack) by a client, named as the
/// `reply_to` of its requests; the broker routes replies straight to that channel.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The longest request expiration sent (RabbitMQ takes per-message TTLs up to 2^32 - 1 ms;
/// beyond this a request simply does not expire).
const MAX_EXPIRATION: Duration = Duration::from_millis(i32::MAX as u64);

// ---- shared helpers ----

/// A unique id in the form of a version-4 UUID (kombu's `uuid()`), from the process's random
/// hasher keys, the process id, the time and a counter: unique within the process for sure,
/// and across processes with overwhelming probability.
pub(crate) fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Each RandomState has keys of its own (random per process, then incremented).
    let mut a = RandomState::new().build_hasher();
    a.write_u128(nanos);
    a.write_u32(std::process::id());
    a.write_u64(n);
    let hi = a.finish();
    let mut b = RandomState::new().build_hasher();
    b.write_u64(hi);
    b.write_u64(n);
    let lo = b.finish();
    // The version (4) and variant (0b10) bits of a random UUID.
    let hi = (hi & !0xF000) | 0x4000;
    let lo = (lo & !(0b11 << 62)) | (0b10 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

fn short(s: &str) -> Result<ShortStr> {
    ShortStr::try_from(s).map_err(|e| Error::Amqp(e.into()))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A message's `reply_to`, if it has a non-empty one.
fn reply_to_of(message: &Message) -> Option<&str> {
    message
        .properties()
        .reply_to
        .as_ref()
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
}

/// The serializer a reply to a request of `content_type` is written with (kombu's
/// `send_reply` picks the request's): its content type, when a registered serializer writes
/// it; `None` (the producer's serializer) for raw, text and unknown types, which a structured
/// reply could not be written as.
fn reply_serializer<'r>(registry: &'r Registry, content_type: Option<&str>) -> Option<&'r str> {
    let content_type = content_type?;
    registry
        .serializers()
        .find(|(name, t, _)| *t == content_type && !matches!(*name, "raw" | "text"))
        .map(|(_, t, _)| t)
}

// ---- send_reply ----

/// kombu's `send_reply(exchange='', req, msg, producer)`: a publish of `reply` to the
/// request's `reply_to` through the default exchange, with the request's `correlation_id`
/// and written with the request's serializer (by its content type; the producer's own for
/// raw, text and unknown types). The reply is transient.
///
/// Await the returned [`Publish`]; set more properties on it first if needed (as kombu's
/// `**props`), or another exchange with [`Publish::exchange`].
///
/// # Errors
///
/// [`lepus::Error::InvalidArgument`] (as [`Error::Amqp`]) when the request has no
/// `reply_to`.
///
/// # Examples
///
/// ```
/// use lepus_messaging::{send_reply, Connection, Queue};
///
/// # async fn demo(conn: Connection) -> lepus_messaging::Result<()> {
/// let producer = conn.producer().build()?;
/// let mut requests = conn.consumer([Queue::new("rpc")]).consume().await?;
/// # let client = lepus_messaging::RpcClient::new(&conn).await?;
/// # let call = tokio::spawn(async move {
/// #     let timeout = std::time::Duration::from_secs(5);
/// #     client.call::<_, serde_json::Value>("rpc", &"hi", timeout).await
/// # });
/// while let Some(request) = requests.recv().await {
///     let request = request?;
///     let body: serde_json::Value = request.decode()?;
///     send_reply(&producer, &request, &serde_json::json!({"echo": body}))?.await?;
///     request.ack()?;
/// #   break; // one request came: stop waiting for more
/// }
/// # assert_eq!(call.await.unwrap()?, serde_json::json!({"echo": "hi"}));
/// # Ok(()) }
/// # #[tokio::main]
/// # async fn main() -> lepus_messaging::Result<()> {
/// # let conn = lepus_messaging::Connection::connect("memory://").await?;
/// # demo(conn).await
/// # }
/// ```
pub fn send_reply<'a, T>(
    producer: &'a Producer,
    request: &Message,
    reply: &'a T,
) -> Result<Publish<'a>>
where
    T: Serialize + Sync + ?Sized,
{
    let reply_to = reply_to_of(request).ok_or_else(|| {
        Error::Amqp(lepus::Error::InvalidArgument(
            "the request has no reply_to property".to_owned(),
        ))
    })?;
    let mut publish = producer
        .publish(reply)
        .exchange(Exchange::default_exchange())
        .routing_key(reply_to)
        .delivery_mode(DeliveryMode::Transient);
    if let Some(id) = request
        .properties()
        .correlation_id
        .as_ref()
        .and_then(|s| s.as_str())
    {
        publish = publish.correlation_id(id);
    }
    if let Some(serializer) =
        reply_serializer(producer.connection().registry(), request.content_type())
    {
        publish = publish.serializer(serializer);
    }
    Ok(publish)
}

// ---- the client ----

/// Where a request goes: an exchange (the client's, unless given) and a routing key.
///
/// Made from a routing key (`"rpc"`), an `(exchange, routing key)` pair, or a [`Queue`]
/// (its name through the default exchange).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    exchange: Option<String>,
    routing_key: String,
}

impl Route {
    /// A routing key on the client's exchange.
    pub fn key(routing_key: impl Into<String>) -> Self {
        Self {
            exchange: None,
            routing_key: routing_key.into(),
        }
    }

    /// A routing key on `exchange` (`""`: the default exchange).
    pub fn new(exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        Self {
            exchange: Some(exchange.into()),
            routing_key: routing_key.into(),
        }
    }

    /// The exchange, if the route names one.
    pub fn exchange(&self) -> Option<&str> {
        self.exchange.as_deref()
    }

    /// The routing key.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }
}

impl From<&str> for Route {
    fn from(routing_key: &str) -> Self {
        Self::key(routing_key)
    }
}

impl From<String> for Route {
    fn from(routing_key: String) -> Self {
        Self::key(routing_key)
    }
}

impl From<&String> for Route {
    fn from(routing_key: &String) -> Self {
        Self::key(routing_key.as_str())
    }
}

impl From<(&str, &str)> for Route {
    fn from((exchange, routing_key): (&str, &str)) -> Self {
        Self::new(exchange, routing_key)
    }
}

impl From<&Queue> for Route {
    fn from(queue: &Queue) -> Self {
        Self::new("", queue.name())
    }
}

/// Builds an [`RpcClient`]; from [`RpcClient::builder`].
#[derive(Debug, Clone)]
#[must_use = "call build() to get the client"]
pub struct RpcClientBuilder {
    conn: Connection,
    exchange: Exchange,
    serializer: String,
    compression: Option<String>,
    accept: Accept,
    delivery_mode: DeliveryMode,
    expire_requests: bool,
}

impl RpcClientBuilder {
    /// The exchange requests go to unless a [`Route`] names another (default: the default
    /// exchange, where the routing key is the server's queue). Declared when the client is
    /// built.
    pub fn exchange(mut self, exchange: impl Into<Exchange>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// The serializer of requests, by name or content type (default `json`). Servers that
    /// follow kombu's `send_reply` answer with the same one.
    pub fn serializer(mut self, name: impl Into<String>) -> Self {
        self.serializer = name.into();
        self
    }

    /// The compression method of requests (default none).
    pub fn compression(mut self, method: impl Into<String>) -> Self {
        self.compression = Some(method.into());
        self
    }

    /// The content types replies may decode from (default: JSON, plus raw bytes and text).
    pub fn accept(mut self, accept: Accept) -> Self {
        self.accept = accept;
        self
    }

    /// The delivery mode of requests (default transient: a request is worth nothing once
    /// its caller has given up, and a broker restart loses the caller's channel anyway).
    pub fn delivery_mode(mut self, mode: DeliveryMode) -> Self {
        self.delivery_mode = mode;
        self
    }

    /// Whether each request carries its call's timeout as its expiration, so that the broker
    /// drops a request nobody took before its caller gave up (default `true`).
    pub fn expire_requests(mut self, on: bool) -> Self {
        self.expire_requests = on;
        self
    }

    /// Checks the settings, declares the exchange (through the connection's cache), opens
    /// the client's channel in confirm mode and subscribes it to
    /// [`amq.rabbitmq.reply-to`](DIRECT_REPLY_TO).
    ///
    /// # Errors
    ///
    /// [`Error::SerializerNotInstalled`], [`Error::CompressionNotInstalled`], declaration
    /// and connection errors.
    pub async fn build(self) -> Result<RpcClient> {
        crate::producer::check_serializer(&self.conn, &self.serializer)?;
        if let Some(method) = &self.compression {
            crate::producer::check_compression(method)?;
        }
        if self.exchange.needs_declare() {
            self.conn.maybe_declare(self.exchange.clone()).await?;
        }
        let shared = Arc::new(ClientShared {
            exchange: self.exchange.name().to_owned(),
            serializer: self.serializer,
            compression: self.compression,
            accept: Arc::new(self.accept),
            delivery_mode: self.delivery_mode,
            expire_requests: self.expire_requests,
            prefix: unique_id(),
            next: AtomicU64::new(0),
            pending: Arc::new(Pending::default()),
            link: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            links: AtomicU64::new(0),
            conn: self.conn,
        });
        // Subscribed before the first request: direct reply-to requires it.
        shared.link().await?;
        Ok(RpcClient { shared })
    }
}

/// Calls a server and waits for its reply, over RabbitMQ's direct reply-to.
///
/// The client has one channel of its own, in confirm mode, on which it consumes
/// [`amq.rabbitmq.reply-to`](DIRECT_REPLY_TO) (no-ack) from the start and publishes its
/// requests, mandatory, with `reply_to` set to it and a unique `correlation_id`. A task
/// hands each reply to the call waiting for its correlation id. See [the module
/// docs](self) for the errors a call ends with.
///
/// `Clone + Send + Sync`, and clones share the channel: make one per connection and call
/// from as many tasks as needed; thousands of calls may be in flight at once. If the channel
/// closes (a request to an exchange that does not exist closes it with 404), the next call
/// opens another. Dropping the last clone cancels the subscription and closes the channel.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lepus_messaging::{Connection, Error, RpcClient};
///
/// # async fn demo(conn: Connection) -> lepus_messaging::Result<()> {
/// let client = RpcClient::builder(&conn).serializer("msgpack").build().await?;
/// let request = serde_json::json!({"n": 1});
/// match client.call::<_, serde_json::Value>("echo", &request, Duration::from_secs(2)).await {
///     Ok(reply) => println!("{reply}"),
///     Err(Error::Returned(_)) => println!("no queue named echo: no server"),
///     Err(Error::Timeout(_)) => println!("no reply in time"),
///     Err(e) => return Err(e),
/// }
/// # Ok(()) }
/// # #[tokio::main]
/// # async fn main() -> lepus_messaging::Result<()> {
/// # let conn = lepus_messaging::Connection::connect("memory://").await?;
/// # demo(conn).await
/// # }
/// ```
#[derive(Clone)]
pub struct RpcClient {
    shared: Arc<ClientShared>,
}

struct ClientShared {
    conn: Connection,
    exchange: String,
    serializer: String,
    compression: Option<String>,
    accept: Arc<Accept>,
    delivery_mode: DeliveryMode,
    expire_requests: bool,
    /// The client's unique id; correlation ids are `{prefix}.{n}`.
    prefix: String,
    next: AtomicU64,
    pending: Arc<Pending>,
    /// The channel and its reply consumer; replaced when the channel closes.
    link: Mutex<Option<Arc<Link>>>,
    /// Held while a link is being opened.
    opening: tokio::sync::Mutex<()>,
    /// Links opened so far.
    links: AtomicU64,
}

impl fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcClient")
            .field("exchange", &self.shared.exchange)
            .field("serializer", &self.shared.serializer)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl RpcClient {
    /// A client with the default settings (JSON requests to the default exchange).
    ///
    /// # Errors
    ///
    /// As [`RpcClientBuilder::build`].
    pub async fn new(conn: &Connection) -> Result<Self> {
        Self::builder(conn).build().await
    }

    /// Starts a client on `conn`.
    pub fn builder(conn: &Connection) -> RpcClientBuilder {
        RpcClientBuilder {
            conn: conn.clone(),
            exchange: Exchange::default_exchange(),
            serializer: "json".to_owned(),
            compression: None,
            accept: Accept::default(),
            delivery_mode: DeliveryMode::Transient,
            expire_requests: true,
        }
    }

    /// Sends `request` to `route` and waits at most `timeout` for the reply, decoded into
    /// `Resp`.
    ///
    /// # Errors
    ///
    /// [`Error::Returned`] when no queue gets the request (no server); [`Error::Timeout`]
    /// when no reply came in time; [`Error::Decode`] or [`Error::ContentDisallowed`] for a
    /// reply that does not decode; a recoverable [`Error::Amqp`] when the connection was
    /// lost meanwhile (see [the module docs](self)); encoding and connection errors.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future forgets the call: the request may still reach a server, and its
    /// reply is then dropped.
    pub async fn call<Req, Resp>(
        &self,
        route: impl Into<Route>,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp>
    where
        Req: Serialize + Sync + ?Sized,
        Resp: DeserializeOwned,
    {
        self.call_message(route, request, timeout).await?.decode()
    }

    /// As [`call`](Self::call), returning the reply undecoded (its properties and headers
    /// included).
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call), without the decoding errors.
    pub async fn call_message<Req>(
        &self,
        route: impl Into<Route>,
        request: &Req,
        timeout: Duration,
    ) -> Result<Message>
    where
        Req: Serialize + Sync + ?Sized,
    {
        let route = route.into();
        let (body, properties) = self.shared.encode(request, timeout)?;
        tokio::time::timeout(timeout, self.shared.round_trip(&route, body, properties))
            .await
            .unwrap_or(Err(Error::Timeout(timeout)))
    }

    /// How many calls wait for their reply.
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.pending.waiters).len()
    }

    /// The connection it calls over.
    pub fn connection(&self) -> &Connection {
        &self.shared.conn
    }
}

impl ClientShared {
    /// Serializes and compresses a request and sets its properties (all but the correlation
    /// id).
    fn encode<T: Serialize + ?Sized>(
        &self,
        request: &T,
        timeout: Duration,
    ) -> Result<(Bytes, BasicProperties)> {
        let encoded = self.conn.registry().encode(&self.serializer, request)?;
        let mut properties = BasicProperties::default();
        let body = match &self.compression {
            Some(method) => {
                let (compressed, mime) = compression::compress(method, &encoded.body)?;
                let mut headers = FieldTable::default();
                headers.insert(ShortStr::from_static("compression"), mime);
                properties.headers = Some(headers);
                Bytes::from(compressed)
            }
            None => encoded.body,
        };
        properties.content_type = Some(short(&encoded.content_type)?);
        properties.content_encoding = Some(short(&encoded.content_encoding)?);
        properties.delivery_mode = Some(self.delivery_mode.into());
        properties.priority = Some(0);
        properties.reply_to = Some(ShortStr::from_static(DIRECT_REPLY_TO));
        if self.expire_requests && timeout <= MAX_EXPIRATION {
            let ms = timeout.as_millis().max(1);
            properties.expiration = Some(short(&ms.to_string())?);
        }
        Ok((body, properties))
    }

    /// Publishes one request and waits for its reply.
    async fn round_trip(
        &self,
        route: &Route,
        body: Bytes,
        mut properties: BasicProperties,
    ) -> Result<Message> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}.{n:x}", self.prefix);
        properties.correlation_id = Some(short(&id)?);
        let exchange = route.exchange.as_deref().unwrap_or(&self.exchange);
        let routing_key = route.routing_key.as_str();
        let options = BasicPublishOptions { mandatory: true };
        let registration = Registration {
            pending: &self.pending,
            id,
        };

        let mut link = self.link().await?;
        let mut reply = registration.arm(link.number, self.conn.client().link_epoch());
        let sent = link
            .channel
            .basic_publish(exchange, routing_key, options, &properties, body.clone())
            .await;
        let confirm = match sent {
            // Nothing was sent: the channel had closed. Once more on a new one.
            Err(e) if channel_gone(&e) => {
                link.alive.store(false, Ordering::Release);
                link = self.link().await?;
                reply = registration.arm(link.number, self.conn.client().link_epoch());
                link.channel
                    .basic_publish(exchange, routing_key, options, &properties, body)
                    .await?
            }
            sent => sent?,
        };
        let names = || (exchange.to_owned(), routing_key.to_owned());
        match confirm.await? {
            Confirmation::Ack(None) | Confirmation::NotRequested => {}
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                return Err(Error::Returned(returned));
            }
            Confirmation::Nack(None) => {
                let (exchange, routing_key) = names();
                return Err(Error::Nacked {
                    exchange,
                    routing_key,
                });
            }
            _ => {
                let (exchange, routing_key) = names();
                return Err(Error::Uncertain {
                    exchange,
                    routing_key,
                });
            }
        }
        // The link stays in the slot while the call waits: the reply consumer lives on.
        drop(link);
        reply.await.unwrap_or_else(|_| {
            Err(Error::ConsumerEnded {
                queue: DIRECT_REPLY_TO.to_owned(),
                reason: "the reply consumer stopped".to_owned(),
            })
        })
    }

    /// The current link, or a new one when there is none or its channel closed.
    async fn link(&self) -> Result<Arc<Link>> {
        if let Some(link) = self.current_link() {
            return Ok(link);
        }
        let _opening = self.opening.lock().await;
        if let Some(link) = self.current_link() {
            return Ok(link);
        }
        let link = Arc::new(self.open_link().await?);
        *lock(&self.link) = Some(Arc::clone(&link));
        Ok(link)
    }

    fn current_link(&self) -> Option<Arc<Link>> {
        lock(&self.link)
            .as_ref()
            .filter(|link| link.alive.load(Ordering::Acquire))
            .cloned()
    }

    /// Opens a channel in confirm mode, subscribes it to direct reply-to and starts the task
    /// that hands replies out.
    async fn open_link(&self) -> Result<Link> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Amqp(lepus::Error::InvalidState(
                "the RPC client runs inside a tokio runtime",
            ))
        })?;
        let channel = self.conn.client().open_channel().await?;
        let subscribed = async {
            channel.confirm_select().await?;
            let options = BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            };
            channel.basic_consume(DIRECT_REPLY_TO, "", options).await
        };
        let consumer = match subscribed.await {
            Ok(consumer) => consumer,
            Err(e) => {
                let _ = channel.close().await;
                return Err(e.into());
            }
        };
        let number = self.links.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let alive = Arc::new(AtomicBool::new(true));
        let dispatcher = Dispatcher {
            conn: self.conn.clone(),
            pending: Arc::clone(&self.pending),
            accept: Arc::clone(&self.accept),
            link: number,
            alive: Arc::clone(&alive),
        };
        let events = self.conn.client().events();
        let task = runtime.spawn(dispatcher.run(consumer, events));
        Ok(Link {
            number,
            channel,
            alive,
            task: task.abort_handle(),
            runtime,
        })
    }
}

/// Whether a publish failed before sending anything because its channel had closed.
fn channel_gone(e: &lepus::Error) -> bool {
    matches!(
        e,
        lepus::Error::ChannelClosed(_)
            | lepus::Error::ChannelNotOpen(_)
            | lepus::Error::InvalidState("channel is closed")
    )
}

/// The client's channel with its reply consumer (in the dispatcher task).
struct Link {
    number: u64,
    channel: Channel,
    /// Cleared when the reply consumer ends: the link is then replaced.
    alive: Arc<AtomicBool>,
    task: tokio::task::AbortHandle,
    runtime: tokio::runtime::Handle,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
        let channel = self.channel.clone();
        drop(self.runtime.spawn(async move {
            let _ = channel.close().await;
        }));
    }
}

/// The calls waiting for their reply, by correlation id.
#[derive(Default)]
struct Pending {
    waiters: Mutex<HashMap<String, Waiter>>,
}

struct Waiter {
    /// The link the request went out on.
    link: u64,
    /// The connection's link epoch when the request was sent.
    epoch: u64,
    tx: oneshot::Sender<Result<Message>>,
}

/// A call's place in [`Pending`], taken back when the call ends (or is dropped).
struct Registration<'a> {
    pending: &'a Pending,
    id: String,
}

impl Registration<'_> {
    /// Waits (again) for the reply to a request sent on `link`.
    fn arm(&self, link: u64, epoch: u64) -> oneshot::Receiver<Result<Message>> {
        let (tx, rx) = oneshot::channel();
        lock(&self.pending.waiters).insert(self.id.clone(), Waiter { link, epoch, tx });
        rx
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        lock(&self.pending.waiters).remove(&self.id);
    }
}

/// Hands the replies of one link to their calls.
struct Dispatcher {
    conn: Connection,
    pending: Arc<Pending>,
    accept: Arc<Accept>,
    link: u64,
    alive: Arc<AtomicBool>,
}

impl Dispatcher {
    async fn run(
        self,
        mut consumer: lepus::Consumer,
        mut events: broadcast::Receiver<ConnectionEvent>,
    ) {
        let mut watching = true;
        let reason = loop {
            tokio::select! {
                delivery = consumer.recv() => match delivery {
                    Some(Ok(delivery)) => self.deliver(delivery),
                    Some(Err(e)) => break e.to_string(),
                    None => break "the reply consumer was cancelled".to_owned(),
                },
                event = events.recv(), if watching => match event {
                    Ok(ConnectionEvent::Disconnected { cause, .. }) => self.fail_stale(&cause),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.fail_stale(&lepus::Error::InvalidState("the connection was lost"));
                    }
                    Err(broadcast::error::RecvError::Closed) => watching = false,
                },
            }
        };
        self.alive.store(false, Ordering::Release);
        tracing::debug!(%reason, "the RPC client's reply consumer ended");
        let ended: Vec<Waiter> = {
            let mut waiters = lock(&self.pending.waiters);
            let ids: Vec<String> = waiters
                .iter()
                .filter(|(_, w)| w.link == self.link)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| waiters.remove(id)).collect()
        };
        for waiter in ended {
            let _ = waiter.tx.send(Err(Error::ConsumerEnded {
                queue: DIRECT_REPLY_TO.to_owned(),
                reason: reason.clone(),
            }));
        }
    }

    fn deliver(&self, delivery: lepus::Delivery) {
        let waiter = {
            let Some(id) = delivery
                .properties
                .correlation_id
                .as_ref()
                .and_then(|id| id.as_str())
            else {
                tracing::debug!("dropped a reply without a correlation id");
                return;
            };
            let Some(waiter) = lock(&self.pending.waiters).remove(id) else {
                tracing::debug!(
                    correlation_id = id,
                    "dropped a reply no call waits for (it came after its call timed out?)"
                );
                return;
            };
            waiter
        };
        let message = self
            .conn
            .message(delivery, true, Arc::clone(&self.accept), None)
            .map_err(|(e, _)| e);
        let _ = waiter.tx.send(message);
    }

    /// Fails the calls sent before the connection's current link: their replies cannot
    /// arrive.
    fn fail_stale(&self, cause: &lepus::Error) {
        let epoch = self.conn.client().link_epoch();
        let stale: Vec<Waiter> = {
            let mut waiters = lock(&self.pending.waiters);
            let ids: Vec<String> = waiters
                .iter()
                .filter(|(_, w)| w.epoch < epoch)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| waiters.remove(id)).collect()
        };
        for waiter in stale {
            let lost = lepus::Error::ConnectionLost(Arc::new(cause.clone()));
            let _ = waiter.tx.send(Err(Error::Amqp(lost)));
        }
    }
}

// ---- the server ----

/// Builds an [`RpcServer`]; from [`RpcServer::builder`].
#[derive(Debug, Clone)]
#[must_use = "call build() to get the server"]
pub struct RpcServerBuilder {
    conn: Connection,
    queue: Queue,
    concurrency: usize,
    prefetch: Option<u16>,
    accept: Accept,
    on_decode_error: DecodeErrorPolicy,
    on_handler_error: HandlerErrorPolicy,
    serializer: String,
    confirms: bool,
}

impl RpcServerBuilder {
    /// How many requests are handled at once (default 1, at least 1): the handler's futures
    /// run concurrently on the serving task. Spawn inside the handler for CPU-heavy work.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How many unacknowledged requests the broker sends ahead (default: the concurrency).
    pub fn prefetch(mut self, count: u16) -> Self {
        self.prefetch = Some(count.max(1));
        self
    }

    /// The content types requests may decode from (default: JSON, plus raw bytes and text).
    pub fn accept(mut self, accept: Accept) -> Self {
        self.accept = accept;
        self
    }

    /// What happens to a request that cannot be decoded or is not accepted (default: rejected
    /// without requeue, with one log line; no reply is sent).
    pub fn on_decode_error(mut self, policy: DecodeErrorPolicy) -> Self {
        self.on_decode_error = policy;
        self
    }

    /// What happens to a request whose handler failed or panicked, or whose reply could not
    /// be sent (default: rejected without requeue; no reply is sent, so its caller times
    /// out).
    pub fn on_handler_error(mut self, policy: HandlerErrorPolicy) -> Self {
        self.on_handler_error = policy;
        self
    }

    /// The serializer of replies to requests whose own serializer cannot write them (raw,
    /// text or unknown content types); default `json`. Other replies use the request's.
    pub fn serializer(mut self, name: impl Into<String>) -> Self {
        self.serializer = name.into();
        self
    }

    /// Whether a request is acknowledged only once the broker confirmed its reply (default
    /// `true`). Without confirms, replies cost no round trip, but one lost with the
    /// connection is lost for good (the request was acked).
    pub fn confirm_replies(mut self, on: bool) -> Self {
        self.confirms = on;
        self
    }

    /// Makes the server; nothing is sent before [`serve`](RpcServer::serve).
    ///
    /// # Errors
    ///
    /// [`Error::SerializerNotInstalled`] for a serializer that is not available.
    pub fn build(self) -> Result<RpcServer> {
        let replies = self
            .conn
            .producer()
            .serializer(self.serializer)
            .confirms(self.confirms)
            .auto_declare(false)
            .build()?;
        let prefetch = self
            .prefetch
            .unwrap_or_else(|| u16::try_from(self.concurrency).unwrap_or(u16::MAX));
        Ok(RpcServer {
            inner: Arc::new(ServerInner {
                conn: self.conn,
                queue: self.queue,
                concurrency: self.concurrency,
                prefetch,
                accept: self.accept,
                on_decode_error: self.on_decode_error,
                on_handler_error: self.on_handler_error,
                replies,
            }),
        })
    }
}

/// Answers requests from a queue: each request is decoded, handed to the handler, and the
/// handler's value is published to the request's `reply_to` (as kombu's [`send_reply`]:
/// default exchange, the request's `correlation_id` and serializer), then the request is
/// acknowledged.
///
/// - A request without `reply_to` is handled and acknowledged, with a warning.
/// - A handler's error or panic sends no reply; the request is settled by the
///   [`HandlerErrorPolicy`] (rejected by default), with a log line.
/// - A request that does not decode is settled by the [`DecodeErrorPolicy`].
/// - Up to [`concurrency`](RpcServerBuilder::concurrency) requests are handled at once.
///
/// Cheap to clone. Serving declares the queue (see [`Queue::declare`]) and consumes it on a
/// channel of its own; several servers (in this process or others) may serve the same queue,
/// the broker spreading requests among them.
///
/// # Examples
///
/// <!-- no_run: it serves until Ctrl-C. -->
/// ```no_run
/// use lepus_messaging::{Connection, HandlerErrorPolicy, Queue, RpcServer};
///
/// # async fn demo(conn: Connection) -> lepus_messaging::Result<()> {
/// let server = RpcServer::builder(&conn, Queue::new("echo"))
///     .concurrency(32)
///     .on_handler_error(HandlerErrorPolicy::Reject)
///     .build()?;
/// let stop = tokio::signal::ctrl_c();
/// server
///     .serve_until(
///         |body: serde_json::Value, _request| async move {
///             Ok::<_, std::io::Error>(serde_json::json!({"echo": body}))
///         },
///         async move { let _ = stop.await; },
///     )
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RpcServer {
    inner: Arc<ServerInner>,
}

struct ServerInner {
    conn: Connection,
    queue: Queue,
    concurrency: usize,
    prefetch: u16,
    accept: Accept,
    on_decode_error: DecodeErrorPolicy,
    on_handler_error: HandlerErrorPolicy,
    replies: Producer,
}

impl fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcServer")
            .field("queue", &self.inner.queue.name())
            .field("concurrency", &self.inner.concurrency)
            .finish_non_exhaustive()
    }
}

impl RpcServer {
    /// Starts a server of `queue`.
    pub fn builder(conn: &Connection, queue: impl Into<Queue>) -> RpcServerBuilder {
        RpcServerBuilder {
            conn: conn.clone(),
            queue: queue.into(),
            concurrency: 1,
            prefetch: None,
            accept: Accept::default(),
            on_decode_error: DecodeErrorPolicy::default(),
            on_handler_error: HandlerErrorPolicy::default(),
            serializer: "json".to_owned(),
            confirms: true,
        }
    }

    /// The queue it serves.
    pub fn queue(&self) -> &Queue {
        &self.inner.queue
    }

    /// The producer replies go out on.
    pub fn replies(&self) -> &Producer {
        &self.inner.replies
    }

    /// Declares the queue, consumes it and answers each request with `handler`'s value,
    /// until the consumer ends. The requests being handled then are finished first.
    ///
    /// # Errors
    ///
    /// Declaration and connection errors when subscribing; [`Error::ConsumerEnded`] when the
    /// broker cancelled the consumer (the queue was deleted) or its channel closed.
    pub async fn serve<Req, Resp, F, Fut, E>(&self, handler: F) -> Result<()>
    where
        Req: DeserializeOwned,
        Resp: Serialize + Sync,
        F: FnMut(Req, Message) -> Fut,
        Fut: Future<Output = std::result::Result<Resp, E>>,
        E: fmt::Display,
    {
        self.serve_until(handler, std::future::pending()).await
    }

    /// As [`serve`](Self::serve), until `stop` resolves: no request is taken after that; the
    /// ones being handled are finished (replied to and settled), the subscription is
    /// cancelled (requests it had taken ahead go back to the queue) and it returns `Ok`.
    ///
    /// # Errors
    ///
    /// As [`serve`](Self::serve).
    pub async fn serve_until<Req, Resp, F, Fut, E>(
        &self,
        mut handler: F,
        stop: impl Future<Output = ()>,
    ) -> Result<()>
    where
        Req: DeserializeOwned,
        Resp: Serialize + Sync,
        F: FnMut(Req, Message) -> Fut,
        Fut: Future<Output = std::result::Result<Resp, E>>,
        E: fmt::Display,
    {
        let mut consumer = self.subscribe().await?;
        let mut running = FuturesUnordered::new();
        let mut stop = std::pin::pin!(stop);
        let limit = self.inner.concurrency;
        let ended = loop {
            tokio::select! {
                biased;
                () = &mut stop => break Ok(()),
                Some(()) = running.next(), if !running.is_empty() => {}
                next = consumer.recv(), if running.len() < limit => {
                    let message = match next {
                        Some(Ok(message)) => message,
                        Some(Err(e)) => break Err(e),
                        None => break Ok(()),
                    };
                    let request = match message.decode::<Req>() {
                        Ok(request) => request,
                        Err(e) => {
                            consumer.decode_failed(&message, &e);
                            continue;
                        }
                    };
                    let work = AssertUnwindSafe(handler(request, message.clone())).catch_unwind();
                    running.push(async move {
                        let outcome = outcome_of(work.await);
                        self.complete(&message, outcome).await;
                    });
                }
            }
        };
        while running.next().await.is_some() {}
        match ended {
            Ok(()) => consumer.cancel().await,
            Err(e) => Err(e),
        }
    }

    /// Declares the queue and subscribes to it.
    pub(crate) async fn subscribe(&self) -> Result<Consumer> {
        let inner = &*self.inner;
        inner
            .conn
            .consumer([inner.queue.clone()])
            .prefetch(inner.prefetch)
            .accept(inner.accept.clone())
            .on_decode_error(inner.on_decode_error.clone())
            .consume()
            .await
    }

    /// Sends the reply to a handled request, then settles it.
    pub(crate) async fn complete<R>(&self, message: &Message, outcome: Result<R, String>)
    where
        R: Serialize + Sync,
    {
        let inner = &*self.inner;
        let reply = match outcome {
            Ok(reply) => reply,
            Err(failure) => return inner.failed(message, &failure),
        };
        if reply_to_of(message).is_none() {
            tracing::warn!(
                queue = inner.queue.name(),
                routing_key = message.routing_key(),
                "handled an RPC request without reply_to: no reply sent"
            );
            return inner.ack(message);
        }
        let sent = match send_reply(&inner.replies, message, &reply) {
            Ok(publish) => publish.await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => inner.ack(message),
            Err(e) => inner.failed(message, &format!("cannot send the reply: {e}")),
        }
    }
}

impl ServerInner {
    fn ack(&self, message: &Message) {
        if message.acknowledged() {
            return;
        }
        if let Err(e) = message.ack() {
            tracing::warn!(error = %e, "could not acknowledge an answered RPC request");
        }
    }

    /// Settles a request whose handler failed, per the policy.
    fn failed(&self, message: &Message, failure: &str) {
        tracing::warn!(
            error = %failure,
            queue = self.queue.name(),
            policy = ?self.on_handler_error,
            "an RPC request failed: no reply sent"
        );
        if message.acknowledged() {
            return;
        }
        let settled = match self.on_handler_error {
            HandlerErrorPolicy::Reject => message.reject(),
            HandlerErrorPolicy::Requeue => message.requeue(),
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, "could not settle a failed RPC request");
        }
    }
}

/// A handler's result, its error or its panic as text.
pub(crate) fn outcome_of<R, E: fmt::Display>(
    outcome: std::thread::Result<std::result::Result<R, E>>,
) -> Result<R, String> {
    match outcome {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => {
            let what = crate::consumer::panic_text(panic.as_ref());
            tracing::error!(panic = %what, "an RPC handler panicked");
            Err(format!("panicked: {what}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_ids_look_like_uuid4_and_differ() {
        let a = unique_id();
        let b = unique_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts.get(2).is_some_and(|p| p.starts_with('4')));
        assert!(parts
            .get(3)
            .and_then(|p| p.chars().next())
            .is_some_and(|c| matches!(c, '8' | '9' | 'a' | 'b')));
    }

    #[test]
    fn replies_use_the_request_serializer_when_it_can_write_them() {
        let registry = Registry::default();
        assert_eq!(
            reply_serializer(&registry, Some("application/json")),
            Some("application/json")
        );
        assert_eq!(
            reply_serializer(&registry, Some("application/x-msgpack")),
            Some("application/x-msgpack")
        );
        assert_eq!(reply_serializer(&registry, Some("text/plain")), None);
        assert_eq!(reply_serializer(&registry, Some("application/data")), None);
        assert_eq!(
            reply_serializer(&registry, Some("application/x-python-serialize")),
            None
        );
        assert_eq!(reply_serializer(&registry, None), None);
    }

    #[test]
    fn routes() {
        assert_eq!(Route::from("rpc"), Route::key("rpc"));
        assert_eq!(Route::from(("ex", "k")).exchange(), Some("ex"));
        assert_eq!(Route::from(&Queue::new("q")), Route::new("", "q"));
    }
}
