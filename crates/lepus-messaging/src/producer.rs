//! [`Producer`]: publishes values with a serializer, compression and confirms.

use std::borrow::Cow;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lepus::{
    BasicProperties, BasicPublishOptions, Channel, Confirmation, DeliveryMode, FieldTable,
    FieldValue, ShortStr,
};
use serde::Serialize;

use crate::compression;
use crate::connection::{Connection, Entity};
use crate::entity::{Exchange, Queue};
use crate::error::{Error, Result};
use crate::serializer::{Encoded, Registry};

/// A producer's JSON buffer takes a new block of this size when less than `ARENA_LOW` is left;
/// a block is freed once every body written into it was sent and confirmed.
const ARENA_BLOCK: usize = 64 * 1024;
const ARENA_LOW: usize = 4 * 1024;

/// How a publish retries when the connection is lost under it (kombu's `retry_policy`).
///
/// Only a lost connection (or an outcome made uncertain by it) is retried; a refusal such as
/// 404 NOT_FOUND or 406 PRECONDITION_FAILED fails at once, since it would fail again. The
/// wait before retry `n` (from 0) is `interval_start + n * interval_step`, at most
/// `interval_max`; each retry also waits for the connection to be open again.
///
/// The default is Celery's publish policy: 3 retries, waits of 0, 0.2, 0.4 s, at most 1 s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; `None` retries for ever.
    pub max_retries: Option<u32>,
    /// The first wait.
    pub interval_start: Duration,
    /// How much each wait grows.
    pub interval_step: Duration,
    /// The longest wait.
    pub interval_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: Some(3),
            interval_start: Duration::ZERO,
            interval_step: Duration::from_millis(200),
            interval_max: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry `n` (0 for the first retry).
    pub fn interval(&self, n: u32) -> Duration {
        self.interval_step
            .checked_mul(n)
            .and_then(|d| d.checked_add(self.interval_start))
            .map_or(self.interval_max, |d| d.min(self.interval_max))
    }
}

/// Builds a [`Producer`]; from [`Connection::producer`].
#[derive(Debug, Clone)]
#[must_use = "call build() to get the producer"]
pub struct ProducerBuilder {
    conn: Connection,
    exchange: Exchange,
    routing_key: String,
    serializer: String,
    compression: Option<String>,
    auto_declare: bool,
    confirms: bool,
    retry: Option<RetryPolicy>,
    channels: usize,
}

impl ProducerBuilder {
    pub(crate) fn new(conn: Connection) -> Self {
        Self {
            conn,
            exchange: Exchange::default_exchange(),
            routing_key: String::new(),
            serializer: "json".to_owned(),
            compression: None,
            auto_declare: true,
            confirms: true,
            retry: None,
            channels: 1,
        }
    }

    /// The exchange messages go to unless a publish names another (default: the default
    /// exchange).
    pub fn exchange(mut self, exchange: impl Into<Exchange>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// The routing key unless a publish gives one.
    pub fn routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_key = routing_key.into();
        self
    }

    /// The serializer by name or content type (default `json`).
    pub fn serializer(mut self, name: impl Into<String>) -> Self {
        self.serializer = name.into();
        self
    }

    /// The compression method by name or MIME type (default none).
    pub fn compression(mut self, method: impl Into<String>) -> Self {
        self.compression = Some(method.into());
        self
    }

    /// Whether the producer's exchange is declared (through the connection's cache) before
    /// the first publish (default `true`, as kombu).
    pub fn auto_declare(mut self, on: bool) -> Self {
        self.auto_declare = on;
        self
    }

    /// Whether publishes wait for the broker's confirm (default `true`). Without confirms a
    /// publish completes once its message is queued for the socket, and a nack or a returned
    /// mandatory message goes unseen.
    pub fn confirms(mut self, on: bool) -> Self {
        self.confirms = on;
        self
    }

    /// The retry policy of every publish (default none: a lost connection fails the
    /// publish, unless automatic recovery republished it).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// How many channels concurrent publishes spread over (default 1, at least 1). One
    /// channel carries tens of thousands of messages a second; more help when many tasks
    /// publish large bodies at once.
    pub fn channels(mut self, n: usize) -> Self {
        self.channels = n.max(1);
        self
    }

    /// Makes the producer. Nothing is sent until the first publish.
    ///
    /// # Errors
    ///
    /// [`Error::SerializerNotInstalled`] or [`Error::CompressionNotInstalled`] for names that
    /// are not available.
    pub fn build(self) -> Result<Producer> {
        check_serializer(&self.conn, &self.serializer)?;
        if let Some(c) = &self.compression {
            check_compression(c)?;
        }
        let pool = (0..self.channels)
            .map(|_| std::sync::Mutex::new(None))
            .collect();
        let exchange_name = short(self.exchange.name())?;
        let routing_key_short = short(&self.routing_key)?;
        Ok(Producer {
            shared: Arc::new(Shared {
                conn: self.conn,
                exchange_name,
                routing_key_short,
                exchange: self.exchange,
                declared_epoch: AtomicU64::new(u64::MAX),
                opening: tokio::sync::Mutex::new(()),
                serializer: self.serializer,
                compression: self.compression,
                auto_declare: self.auto_declare,
                confirms: self.confirms,
                retry: self.retry,
                pool,
                next: AtomicUsize::new(0),
                arena: std::sync::Mutex::new(bytes::BytesMut::new()),
                retried: AtomicU64::new(0),
            }),
        })
    }
}

/// Refuses a serializer name or type that is not available.
pub(crate) fn check_serializer(conn: &Connection, name: &str) -> Result<()> {
    if name == "raw" || name == "text" || conn.registry().content_type_of(name).is_some() {
        Ok(())
    } else {
        Err(Error::SerializerNotInstalled(name.to_owned()))
    }
}

/// Refuses a compression method that is not compiled in.
pub(crate) fn check_compression(method: &str) -> Result<()> {
    compression::resolve(method)
        .map(drop)
        .ok_or_else(|| Error::CompressionNotInstalled(method.to_owned()))
}

/// Publishes values, bytes or text (kombu's `Producer`), with publisher confirms by default.
///
/// A publish serializes the value (default JSON), compresses it when asked, sets kombu's
/// content type, encoding and `compression` header, and sends it persistent unless the call
/// or the exchange says otherwise. With confirms on (the default), awaiting a publish returns
/// once the broker took the message: a nack is [`Error::Nacked`], a mandatory message the
/// broker could not route is [`Error::Returned`]. [`Publish::pipelined`] sends without
/// waiting, so that thousands are in flight, and returns the confirm to await later.
///
/// When the connection is lost, lepus's automatic recovery publishes again every message whose
/// confirm was lost (at-least-once: a consumer may see a copy; `lepus::ConnectionStats::
/// replayed` counts them). With a [`RetryPolicy`], a publish that failed with the connection
/// is retried on the recovered connection ([`retried`](Self::retried) counts those).
///
/// `Producer` is `Clone + Send + Sync`: share it among tasks; its publishes spread over
/// [`channels`](ProducerBuilder::channels) channels, opened on first use and again after a
/// channel error.
///
/// # Examples
///
/// ```
/// use serde::Serialize;
/// use lepus_messaging::{Connection, Exchange, Queue};
///
/// #[derive(Serialize)]
/// struct Order { id: u64, item: String }
///
/// # #[tokio::main]
/// # async fn main() -> lepus_messaging::Result<()> {
/// let conn = Connection::connect("memory://").await?;
/// let orders = Queue::new("orders");
/// let producer = conn.producer().build()?;
/// producer
///     .publish(&Order { id: 1, item: "book".into() })
///     .routing_key("orders")
///     .declare(orders)
///     .compression("zlib")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    conn: Connection,
    exchange: Exchange,
    /// The exchange's name, ready to send.
    exchange_name: ShortStr,
    /// The routing key, ready to send.
    routing_key_short: ShortStr,
    /// The link epoch the exchange was last declared on (`u64::MAX`: never).
    declared_epoch: AtomicU64,
    /// Held while a channel of the pool is being opened.
    opening: tokio::sync::Mutex<()>,
    serializer: String,
    compression: Option<String>,
    auto_declare: bool,
    confirms: bool,
    retry: Option<RetryPolicy>,
    pool: Vec<std::sync::Mutex<Option<Channel>>>,
    next: AtomicUsize,
    /// Where JSON bodies are written (see `Producer::publish`).
    arena: std::sync::Mutex<bytes::BytesMut>,
    retried: AtomicU64,
}

impl Producer {
    /// A publish of `value`, serialized with the producer's serializer unless the publish
    /// names another. Await it (or call [`Publish::pipelined`]).
    pub fn publish<'a, T>(&'a self, value: &'a T) -> Publish<'a>
    where
        T: Serialize + Sync + ?Sized,
    {
        Publish::new(
            self,
            Body::Value(Box::new(move |registry: &Registry, name: &str| {
                // JSON bodies are written into a buffer of the producer's that many bodies
                // share: no allocation per message, and clones (kept for replay) only count.
                let mut arena = self
                    .shared
                    .arena
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if arena.capacity() < ARENA_LOW {
                    arena.reserve(ARENA_BLOCK);
                }
                registry.encode_into(name, value, &mut arena)
            })),
        )
    }

    /// A publish of bytes as they are: content type `application/data`, encoding `binary`
    /// (kombu's `raw`), unless [`Publish::content_type`] says otherwise.
    pub fn publish_bytes(&self, body: impl Into<Bytes>) -> Publish<'_> {
        Publish::new(self, Body::Bytes(body.into()))
    }

    /// A publish of text as it is: content type `text/plain`, encoding `utf-8`, as kombu
    /// sends a string without a serializer.
    pub fn publish_text(&self, text: impl Into<String>) -> Publish<'_> {
        Publish::new(self, Body::Text(text.into()))
    }

    /// The connection it publishes on.
    pub fn connection(&self) -> &Connection {
        &self.shared.conn
    }

    /// The exchange it publishes to by default.
    pub fn exchange(&self) -> &Exchange {
        &self.shared.exchange
    }

    /// Publishes retried by the [`RetryPolicy`] after a lost connection.
    pub fn retried(&self) -> u64 {
        self.shared.retried.load(Ordering::Relaxed)
    }

    /// A channel of the pool and its slot, opened (in confirm mode, with replay on recovery)
    /// when the slot has none.
    async fn channel(&self) -> Result<(usize, Channel)> {
        let n = self.shared.pool.len().max(1);
        let i = self.shared.next.fetch_add(1, Ordering::Relaxed) % n;
        let Some(slot) = self.shared.pool.get(i) else {
            return Err(Error::Amqp(lepus::Error::InvalidState(
                "empty channel pool",
            )));
        };
        // Whether the channel is still open is not asked here (that takes the connection's
        // lock): a publish on a closed one fails at once, and `send` then opens another.
        let cached = |slot: &std::sync::Mutex<Option<Channel>>| {
            slot.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        };
        if let Some(ch) = cached(slot) {
            return Ok((i, ch));
        }
        let _opening = self.shared.opening.lock().await;
        if let Some(ch) = cached(slot) {
            return Ok((i, ch));
        }
        let ch = self.shared.conn.client().open_channel().await?;
        if self.shared.confirms {
            ch.confirm_select().await?;
            ch.replay_on_recovery(true)?;
        }
        *slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ch.clone());
        Ok((i, ch))
    }

    /// Forgets pool slot `i`'s channel if it is still `closed`, so that the next use opens
    /// another.
    fn forget(&self, i: usize, closed: &Channel) {
        if let Some(slot) = self.shared.pool.get(i) {
            let mut slot = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.as_ref().is_some_and(|ch| ch.id() == closed.id()) {
                *slot = None;
            }
        }
    }

    /// Whether the producer's own exchange is to be declared on the current link.
    fn own_exchange_undeclared(&self) -> bool {
        let shared = &self.shared;
        shared.auto_declare
            && shared.exchange.needs_declare()
            && shared.declared_epoch.load(Ordering::Acquire) != shared.conn.client().link_epoch()
    }

    /// Declares the producer's own exchange once per link (kombu's `auto_declare`).
    async fn declare_own_exchange(&self) -> Result<()> {
        let shared = &self.shared;
        if !self.own_exchange_undeclared() {
            return Ok(());
        }
        let epoch = shared.conn.client().link_epoch();
        shared.conn.maybe_declare(shared.exchange.clone()).await?;
        shared.declared_epoch.store(epoch, Ordering::Release);
        Ok(())
    }
}

/// Encodes a borrowed value with the serializer named.
type Encode<'a> = Box<dyn FnOnce(&Registry, &str) -> Result<Encoded> + Send + 'a>;

/// What a publish sends.
enum Body<'a> {
    Value(Encode<'a>),
    Bytes(Bytes),
    Text(String),
}

/// One publish being set up; from [`Producer::publish`]. Await it to publish and wait for
/// the confirm, or call [`pipelined`](Self::pipelined).
#[must_use = "a publish does nothing until awaited"]
pub struct Publish<'a> {
    producer: &'a Producer,
    body: Body<'a>,
    exchange: Option<Exchange>,
    routing_key: Option<String>,
    serializer: Option<String>,
    compression: Option<Option<String>>,
    content_type: Option<(String, String)>,
    headers: FieldTable,
    properties: BasicProperties,
    delivery_mode: Option<DeliveryMode>,
    priority: u8,
    expiration: Option<Duration>,
    mandatory: bool,
    declare: Vec<Entity>,
    retry: Option<Option<RetryPolicy>>,
    error: Option<Error>,
}

impl<'a> Publish<'a> {
    fn new(producer: &'a Producer, body: Body<'a>) -> Self {
        Self {
            producer,
            body,
            exchange: None,
            routing_key: None,
            serializer: None,
            compression: None,
            content_type: None,
            headers: FieldTable::default(),
            properties: BasicProperties::default(),
            delivery_mode: None,
            priority: 0,
            expiration: None,
            mandatory: false,
            declare: Vec::new(),
            retry: None,
            error: None,
        }
    }

    /// The exchange, instead of the producer's.
    pub fn exchange(mut self, exchange: impl Into<Exchange>) -> Self {
        self.exchange = Some(exchange.into());
        self
    }

    /// The routing key, instead of the producer's.
    pub fn routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_key = Some(routing_key.into());
        self
    }

    /// Publishes to `queue` through the default exchange: routing key = its name.
    pub fn to_queue(mut self, queue: &Queue) -> Self {
        self.exchange = Some(Exchange::default_exchange());
        self.routing_key = Some(queue.name().to_owned());
        self
    }

    /// The serializer by name or content type, instead of the producer's.
    pub fn serializer(mut self, name: impl Into<String>) -> Self {
        self.serializer = Some(name.into());
        self
    }

    /// Compresses the body with `method` (name or MIME type), instead of the producer's.
    pub fn compression(mut self, method: impl Into<String>) -> Self {
        self.compression = Some(Some(method.into()));
        self
    }

    /// Sends the body uncompressed even if the producer compresses.
    pub fn no_compression(mut self) -> Self {
        self.compression = Some(None);
        self
    }

    /// For [`publish_bytes`](Producer::publish_bytes) and
    /// [`publish_text`](Producer::publish_text): the content type and encoding to send (the
    /// body is sent as it is). Ignored for serialized values, whose serializer sets them.
    pub fn content_type(
        mut self,
        content_type: impl Into<String>,
        content_encoding: impl Into<String>,
    ) -> Self {
        self.content_type = Some((content_type.into(), content_encoding.into()));
        self
    }

    /// One application header.
    pub fn header(mut self, name: &str, value: impl Into<FieldValue>) -> Self {
        match ShortStr::try_from(name) {
            Ok(key) => {
                self.headers.insert(key, value);
            }
            Err(e) => self.error = Some(Error::Amqp(e.into())),
        }
        self
    }

    /// Application headers, merged with those set so far.
    pub fn headers(mut self, headers: &FieldTable) -> Self {
        for (k, v) in headers.iter() {
            self.headers.insert(k.clone(), v.clone());
        }
        self
    }

    /// The other AMQP properties (`correlation_id`, `reply_to`, `message_id`, `timestamp`,
    /// `type`, `app_id`, ...). The content type and encoding, the delivery mode, the priority,
    /// the expiration and the headers set by this builder win over the same ones here.
    pub fn properties(mut self, properties: BasicProperties) -> Self {
        self.properties = properties;
        self
    }

    /// The correlation id.
    pub fn correlation_id(mut self, id: &str) -> Self {
        match ShortStr::try_from(id) {
            Ok(id) => self.properties.correlation_id = Some(id),
            Err(e) => self.error = Some(Error::Amqp(e.into())),
        }
        self
    }

    /// Where replies go: a queue name.
    pub fn reply_to(mut self, queue: &str) -> Self {
        match ShortStr::try_from(queue) {
            Ok(q) => self.properties.reply_to = Some(q),
            Err(e) => self.error = Some(Error::Amqp(e.into())),
        }
        self
    }

    /// The message id.
    pub fn message_id(mut self, id: &str) -> Self {
        match ShortStr::try_from(id) {
            Ok(id) => self.properties.message_id = Some(id),
            Err(e) => self.error = Some(Error::Amqp(e.into())),
        }
        self
    }

    /// Persistent or transient, instead of the exchange's (default persistent).
    pub fn delivery_mode(mut self, mode: DeliveryMode) -> Self {
        self.delivery_mode = Some(mode);
        self
    }

    /// The priority (default 0, always sent, as kombu).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// How long the message may wait in a queue (the `expiration` property, in ms).
    pub fn expiration(mut self, ttl: Duration) -> Self {
        self.expiration = Some(ttl);
        self
    }

    /// Asks the broker to return the message if no queue gets it; with confirms, the publish
    /// then fails with [`Error::Returned`].
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// Declares `entity` (through the connection's cache) before publishing.
    pub fn declare(mut self, entity: impl Into<Entity>) -> Self {
        self.declare.push(entity.into());
        self
    }

    /// The retry policy, instead of the producer's.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(Some(policy));
        self
    }

    /// No retry, even if the producer has a policy.
    pub fn no_retry(mut self) -> Self {
        self.retry = Some(None);
        self
    }

    /// Publishes without waiting for the confirm, and returns it: await the returned
    /// [`Confirm`] (in any order, from any task) for the outcome. The message is queued for
    /// the socket when this returns.
    ///
    /// # Errors
    ///
    /// Encoding errors, declaration errors and a connection that is closed (not one being
    /// recovered: that is waited for).
    pub async fn pipelined(self) -> Result<Confirm> {
        let producer = self.producer.clone();
        let prepared = self.prepare()?;
        let first = producer.first_send(&prepared).await;
        // What waits for the confirm keeps the message only when it may have to send it again:
        // the future stays small, and so does the memory of thousands in flight.
        let names = Names {
            exchange: prepared.exchange.clone(),
            routing_key: prepared.routing_key.clone(),
        };
        let state =
            match (prepared.retry.is_some(), first) {
                (false, Ok(confirm)) => ConfirmState::Direct { confirm, names },
                (false, Err(e)) => ConfirmState::Failed(Some(e)),
                (true, first) => ConfirmState::Retrying(Box::pin(async move {
                    producer.settle(&prepared, first).await
                })),
            };
        Ok(Confirm { state })
    }

    /// Serializes, compresses and sets the properties.
    fn prepare(self) -> Result<Prepared> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let shared = &self.producer.shared;
        let registry = shared.conn.registry();
        let given = self
            .content_type
            .map(|(t, e)| (Cow::Owned(t), Cow::Owned(e)));
        let (body, content_type, content_encoding) = match self.body {
            Body::Value(encode) => {
                let name = self.serializer.as_deref().unwrap_or(&shared.serializer);
                let encoded = encode(registry, name)?;
                (encoded.body, encoded.content_type, encoded.content_encoding)
            }
            Body::Bytes(b) => {
                let (ct, ce) =
                    given.unwrap_or((Cow::Borrowed("application/data"), Cow::Borrowed("binary")));
                (b, ct, ce)
            }
            Body::Text(t) => {
                let (ct, ce) =
                    given.unwrap_or((Cow::Borrowed("text/plain"), Cow::Borrowed("utf-8")));
                (Bytes::from(t), ct, ce)
            }
        };
        let mut headers = self.headers;
        let compression = match self.compression {
            Some(c) => c,
            None => shared.compression.clone(),
        };
        let body = match compression {
            Some(method) => {
                let (compressed, mime) = compression::compress(&method, &body)?;
                headers.insert(ShortStr::from_static("compression"), mime);
                Bytes::from(compressed)
            }
            None => body,
        };
        let (own_exchange, exchange, exchange_mode) = match &self.exchange {
            Some(e) => (false, short(e.name())?, e.default_delivery_mode()),
            None => (true, shared.exchange_name.clone(), None),
        };
        let routing_key = match self.routing_key {
            // An owned name becomes a short string without a copy.
            Some(k) => ShortStr::try_from(k).map_err(|e| Error::Amqp(e.into()))?,
            None => shared.routing_key_short.clone(),
        };
        let mode = self
            .delivery_mode
            .or(exchange_mode)
            .or(shared.exchange.default_delivery_mode())
            .unwrap_or(DeliveryMode::Persistent);
        let mut properties = self.properties;
        properties.content_type = Some(short_cow(content_type)?);
        properties.content_encoding = Some(short_cow(content_encoding)?);
        properties.delivery_mode = Some(mode.into());
        properties.priority = Some(self.priority);
        if let Some(ttl) = self.expiration {
            properties.expiration = Some(short(&ttl.as_millis().to_string())?);
        }
        if !headers.is_empty() {
            let mut all = properties.headers.take().unwrap_or_default();
            for (k, v) in headers.iter() {
                all.insert(k.clone(), v.clone());
            }
            properties.headers = Some(all);
        }
        Ok(Prepared {
            own_exchange,
            exchange,
            routing_key,
            properties,
            body,
            mandatory: self.mandatory,
            declare: self.declare,
            retry: match self.retry {
                Some(r) => r,
                None => shared.retry.clone(),
            },
        })
    }
}

fn short(s: &str) -> Result<ShortStr> {
    ShortStr::try_from(s).map_err(|e| Error::Amqp(e.into()))
}

/// A short string without a copy for the static strings serializers use.
fn short_cow(s: Cow<'static, str>) -> Result<ShortStr> {
    match s {
        Cow::Borrowed(s) if s.len() <= ShortStr::MAX_LEN => Ok(ShortStr::from_static(s)),
        s => short(&s),
    }
}

/// Where a publish went, for the errors that name it.
struct Names {
    exchange: ShortStr,
    routing_key: ShortStr,
}

impl Prepared {
    fn names(&self) -> Names {
        Names {
            exchange: self.exchange.clone(),
            routing_key: self.routing_key.clone(),
        }
    }
}

/// A publish ready to send (and to send again).
struct Prepared {
    /// Whether it goes to the producer's own exchange (declared by `auto_declare`).
    own_exchange: bool,
    exchange: ShortStr,
    routing_key: ShortStr,
    properties: BasicProperties,
    body: Bytes,
    mandatory: bool,
    declare: Vec<Entity>,
    retry: Option<RetryPolicy>,
}

impl Producer {
    /// Declares what the publish needs: the producer's exchange (once per link), then the
    /// entities the call named (through the connection's cache).
    async fn declare_all(&self, p: &Prepared) -> Result<()> {
        if p.own_exchange {
            self.declare_own_exchange().await?;
        }
        for entity in &p.declare {
            self.shared.conn.maybe_declare(entity.clone()).await?;
        }
        Ok(())
    }

    /// Declares, then queues the message on a channel of the pool.
    async fn first_send(&self, p: &Prepared) -> Result<lepus::PublisherConfirm> {
        if (p.own_exchange && self.own_exchange_undeclared()) || !p.declare.is_empty() {
            // Boxed: declaring is rare, and its future is large; the common path stays small
            // (a publish's future is moved a few times on its way to the socket).
            Box::pin(self.declare_all(p)).await?;
        }
        self.send(p).await
    }

    /// Queues the message on a channel of the pool; on one found closed (by an earlier
    /// channel error), on a new one.
    async fn send(&self, p: &Prepared) -> Result<lepus::PublisherConfirm> {
        let publish = |channel: Channel| async move {
            channel
                .basic_publish(
                    &p.exchange,
                    &p.routing_key,
                    BasicPublishOptions {
                        mandatory: p.mandatory,
                    },
                    &p.properties,
                    p.body.clone(),
                )
                .await
        };
        let (i, channel) = self.channel().await?;
        match publish(channel.clone()).await {
            // Nothing was sent: the channel had closed before this publish.
            Err(lepus::Error::ChannelClosed(_) | lepus::Error::ChannelNotOpen(_))
            | Err(lepus::Error::InvalidState("channel is closed")) => {
                self.forget(i, &channel);
                let (_, channel) = self.channel().await?;
                Ok(publish(channel).await?)
            }
            result => Ok(result?),
        }
    }

    /// Waits for the verdict on the first send, and retries per the policy.
    async fn settle(&self, p: &Prepared, first: Result<lepus::PublisherConfirm>) -> Result<()> {
        let outcome = match first {
            Ok(confirm) => self.outcome(&p.names(), confirm).await,
            Err(e) => Err(e),
        };
        match (outcome, &p.retry) {
            (Err(e), Some(policy)) if e.is_recoverable() => {
                Box::pin(self.retry_loop(p, policy, e)).await
            }
            (outcome, _) => outcome,
        }
    }

    /// Waits for the broker's verdict on one publish.
    async fn outcome(&self, p: &Names, confirm: lepus::PublisherConfirm) -> Result<()> {
        verdict(p, confirm.await)
    }
}

/// What the broker's confirm means for the publish.
fn verdict(p: &Names, confirmation: lepus::Result<Confirmation>) -> Result<()> {
    match confirmation? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            Err(Error::Returned(returned))
        }
        Confirmation::Nack(None) => Err(Error::Nacked {
            exchange: p.exchange.to_string_lossy().into_owned(),
            routing_key: p.routing_key.to_string_lossy().into_owned(),
        }),
        _ => Err(Error::Uncertain {
            exchange: p.exchange.to_string_lossy().into_owned(),
            routing_key: p.routing_key.to_string_lossy().into_owned(),
        }),
    }
}

impl Producer {
    /// Publishes `p` again after `first` failed, per `policy`.
    async fn retry_loop(&self, p: &Prepared, policy: &RetryPolicy, first: Error) -> Result<()> {
        let mut last = first;
        let mut n = 0u32;
        loop {
            if policy.max_retries.is_some_and(|max| n >= max) {
                return Err(Error::RetriesExhausted {
                    attempts: n.saturating_add(1),
                    last: Box::new(last),
                });
            }
            tracing::debug!(attempt = n + 1, error = %last, "retrying a publish");
            tokio::time::sleep(policy.interval(n)).await;
            n = n.saturating_add(1);
            if let Err(e) = self.shared.conn.client().wait_open().await {
                return Err(Error::RetriesExhausted {
                    attempts: n,
                    last: Box::new(Error::Amqp(e)),
                });
            }
            self.shared.retried.fetch_add(1, Ordering::Relaxed);
            let attempt = async {
                let confirm = self.first_send(p).await?;
                self.outcome(&p.names(), confirm).await
            };
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_recoverable() => last = e,
                Err(e) => return Err(e),
            }
        }
    }
}

impl<'a> IntoFuture for Publish<'a> {
    type Output = Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

    /// Publishes and waits for the confirm (at once without confirms).
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let producer = self.producer;
            let prepared = self.prepare()?;
            let first = producer.first_send(&prepared).await;
            producer.settle(&prepared, first).await
        })
    }
}

/// The outcome of a pipelined publish: resolves when the broker confirmed the message (at
/// once without confirms), after the publish's retries.
#[must_use = "the publish was sent; await this to learn whether the broker took it"]
pub struct Confirm {
    state: ConfirmState,
}

enum ConfirmState {
    /// The common case, without a retry policy: the client's confirm and the names for the
    /// errors. No allocation.
    Direct {
        confirm: lepus::PublisherConfirm,
        names: Names,
    },
    /// The publish could not even be queued.
    Failed(Option<Error>),
    /// With a retry policy: the confirm, then the retries.
    Retrying(Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>>),
}

impl std::fmt::Debug for Confirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Confirm")
    }
}

impl Future for Confirm {
    type Output = Result<()>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        match &mut self.state {
            ConfirmState::Direct { confirm, names } => match Pin::new(confirm).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(result) => Poll::Ready(verdict(names, result)),
            },
            ConfirmState::Failed(e) => Poll::Ready(Err(e.take().unwrap_or(Error::Amqp(
                lepus::Error::InvalidState("confirm polled after completion"),
            )))),
            ConfirmState::Retrying(fut) => fut.as_mut().poll(cx),
        }
    }
}
