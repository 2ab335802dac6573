//! [`Connection`]: a client connection with the messaging layer's state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use lepus::{Channel, Delivery};

use crate::compression;
use crate::consumer::ConsumerBuilder;
use crate::entity::{Exchange, Queue};
use crate::error::Result;
use crate::message::Message;
use crate::producer::ProducerBuilder;
use crate::serializer::{Accept, Registry};

/// An entity [`Connection::maybe_declare`] can declare.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Entity {
    /// An exchange.
    Exchange(Exchange),
    /// A queue, with its exchange and bindings.
    Queue(Box<Queue>),
}

impl From<Exchange> for Entity {
    fn from(e: Exchange) -> Self {
        Self::Exchange(e)
    }
}

impl From<Queue> for Entity {
    fn from(q: Queue) -> Self {
        Self::Queue(Box::new(q))
    }
}

impl From<&Exchange> for Entity {
    fn from(e: &Exchange) -> Self {
        Self::Exchange(e.clone())
    }
}

impl From<&Queue> for Entity {
    fn from(q: &Queue) -> Self {
        Self::Queue(Box::new(q.clone()))
    }
}

/// A connection to the broker with what the messaging layer keeps per connection (kombu's
/// `Connection`): the serializer registry, the declaration cache of
/// [`maybe_declare`](Self::maybe_declare), a default channel for declarations, and the
/// largest body a compressed message may inflate to.
///
/// Cheap to clone: clones share everything. Producers and consumers are made from it.
///
/// # Examples
///
/// ```
/// use lepus_messaging::{Connection, Queue};
///
/// # #[tokio::main]
/// # async fn main() -> lepus_messaging::Result<()> {
/// // "amqp://guest:guest@127.0.0.1:5672/%2f" for a RabbitMQ; "memory://" is in-process.
/// let conn = Connection::connect("memory://").await?;
/// let declared = conn.maybe_declare(Queue::new("tasks")).await?;
/// assert!(declared); // sent queue.declare
/// assert!(!conn.maybe_declare(Queue::new("tasks")).await?); // cached
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    client: lepus::Connection,
    registry: Registry,
    max_message_size: usize,
    cache: Mutex<Cache>,
    default_channel: tokio::sync::Mutex<Option<Channel>>,
}

/// The declaration cache: entities declared since the link was last (re)established, by kind
/// and name, with their whole definition.
#[derive(Default)]
struct Cache {
    /// The link epoch (see [`lepus::Connection::link_epoch`]) the entries were declared on.
    epoch: u64,
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Queue>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.inner.client.address())
            .field("max_message_size", &self.inner.max_message_size)
            .finish()
    }
}

impl Connection {
    /// Connects to the broker at `uri` (see [`lepus::Connection::connect`]) with the built-in
    /// serializers.
    ///
    /// # Errors
    ///
    /// When the connection cannot be opened.
    pub async fn connect(uri: &str) -> Result<Self> {
        Ok(Self::new(lepus::Connection::connect(uri).await?))
    }

    /// Wraps a client connection, with the built-in serializers.
    pub fn new(client: lepus::Connection) -> Self {
        Self::with_registry(client, Registry::default())
    }

    /// Wraps a client connection with a serializer registry of one's own (for a serializer
    /// registered by the application).
    pub fn with_registry(client: lepus::Connection, registry: Registry) -> Self {
        let max_message_size = usize::try_from(client.max_message_size()).unwrap_or(usize::MAX);
        Self {
            inner: Arc::new(Inner {
                client,
                registry,
                max_message_size,
                cache: Mutex::new(Cache::default()),
                default_channel: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Sets the largest body a compressed message may inflate to; a larger one is refused
    /// as [`DecompressedTooLarge`](crate::Error::DecompressedTooLarge) instead of being
    /// allocated. Default: the client's largest message
    /// ([`lepus::ConnectionOptions::max_message_size`], 128 MiB unless set).
    ///
    /// Takes effect for producers and consumers made afterwards; call it first.
    #[must_use]
    pub fn max_message_size(self, bytes: usize) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.max_message_size = bytes;
                Self {
                    inner: Arc::new(inner),
                }
            }
            Err(shared) => {
                let inner = Inner {
                    client: shared.client.clone(),
                    registry: shared.registry.clone(),
                    max_message_size: bytes,
                    cache: Mutex::new(Cache::default()),
                    default_channel: tokio::sync::Mutex::new(None),
                };
                Self {
                    inner: Arc::new(inner),
                }
            }
        }
    }

    /// The client connection underneath.
    pub fn client(&self) -> &lepus::Connection {
        &self.inner.client
    }

    /// The serializer registry.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The largest body a compressed message may inflate to.
    pub fn max_inflated_size(&self) -> usize {
        self.inner.max_message_size
    }

    /// The channel used for declarations, opened on first use and again after a channel error
    /// closed it (kombu's `default_channel`).
    ///
    /// # Errors
    ///
    /// When no channel can be opened.
    pub async fn default_channel(&self) -> Result<Channel> {
        let mut slot = self.inner.default_channel.lock().await;
        if let Some(ch) = slot.as_ref().filter(|ch| ch.is_open()) {
            return Ok(ch.clone());
        }
        let ch = self.inner.client.open_channel().await?;
        *slot = Some(ch.clone());
        Ok(ch)
    }

    /// Declares `entity` unless this connection declared the same definition before, since
    /// the link was last established: after a recovery, everything is declared again. Returns
    /// whether it sent the declaration.
    ///
    /// Unlike kombu, the cache compares whole definitions, not names: a queue of the same
    /// name but other settings is declared (and the broker says whether that is allowed).
    /// Auto-delete, exclusive and expiring entities are never cached.
    ///
    /// # Errors
    ///
    /// As [`Exchange::declare`] and [`Queue::declare`].
    pub async fn maybe_declare(&self, entity: impl Into<Entity>) -> Result<bool> {
        let entity = entity.into();
        if self.is_cached(&entity) {
            return Ok(false);
        }
        let channel = self.default_channel().await?;
        let epoch = self.inner.client.link_epoch();
        match &entity {
            Entity::Exchange(e) => {
                e.declare(&channel).await?;
                if e.can_cache_declaration() {
                    self.remember(epoch, |c| {
                        c.exchanges.insert(e.name().to_owned(), e.clone());
                    });
                }
            }
            Entity::Queue(q) => {
                let declared = q.declare(&channel).await?;
                if q.can_cache_declaration() && declared.name == q.name() {
                    self.remember(epoch, |c| {
                        c.queues.insert(q.name().to_owned(), (**q).clone());
                    });
                }
            }
        }
        Ok(true)
    }

    /// Forgets every declaration, so that the next `maybe_declare` of each sends it again.
    pub fn forget_declarations(&self) {
        let mut cache = self.cache();
        cache.exchanges.clear();
        cache.queues.clear();
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn is_cached(&self, entity: &Entity) -> bool {
        let epoch = self.inner.client.link_epoch();
        let mut cache = self.cache();
        if cache.epoch != epoch {
            // The link was lost since: the broker may have lost anything transient.
            cache.epoch = epoch;
            cache.exchanges.clear();
            cache.queues.clear();
            return false;
        }
        match entity {
            Entity::Exchange(e) => cache.exchanges.get(e.name()) == Some(e),
            Entity::Queue(q) => cache.queues.get(q.name()) == Some(&**q),
        }
    }

    /// Records a declaration made on the link of `epoch`, unless that link was lost since.
    fn remember(&self, epoch: u64, record: impl FnOnce(&mut Cache)) {
        let mut cache = self.cache();
        if cache.epoch == epoch && self.inner.client.link_epoch() == epoch {
            record(&mut cache);
        }
    }

    /// Starts a [`Producer`](crate::Producer) on this connection.
    pub fn producer(&self) -> ProducerBuilder {
        ProducerBuilder::new(self.clone())
    }

    /// Starts a [`Consumer`](crate::Consumer) of `queues` on this connection.
    pub fn consumer<I, Q>(&self, queues: I) -> ConsumerBuilder
    where
        I: IntoIterator<Item = Q>,
        Q: Into<Queue>,
    {
        ConsumerBuilder::new(self.clone(), queues.into_iter().map(Into::into).collect())
    }

    /// Fetches one message from `queue` (`basic.get`), or `None` when it is empty; decode it
    /// with `accept`. Declares the queue first (through the cache) unless it is
    /// [`no_declare`](Queue::no_declare).
    ///
    /// # Errors
    ///
    /// 404 when the queue does not exist, a compressed body that cannot be inflated, and
    /// connection errors.
    pub async fn get(
        &self,
        queue: &Queue,
        no_ack: bool,
        accept: Accept,
    ) -> Result<Option<Message>> {
        if !queue.is_no_declare() {
            self.maybe_declare(queue).await?;
        }
        let channel = self.default_channel().await?;
        let Some(got) = channel.basic_get(queue.name(), no_ack).await? else {
            return Ok(None);
        };
        let accept = Arc::new(accept);
        let message = self.message(got.delivery, no_ack, accept, Some(got.message_count));
        message.map(Some).map_err(|(e, _)| e)
    }

    /// Makes a [`Message`] of a delivery, decompressing its body. On failure the delivery
    /// comes back with the error, to be settled by the caller's policy.
    #[allow(clippy::result_large_err)]
    pub(crate) fn message(
        &self,
        delivery: Delivery,
        no_ack: bool,
        accept: Arc<Accept>,
        message_count: Option<u32>,
    ) -> std::result::Result<Message, (crate::Error, Message)> {
        let method = delivery
            .properties
            .headers
            .as_ref()
            .and_then(|h| h.get("compression"))
            .and_then(lepus::FieldValue::as_str)
            .map(str::to_owned);
        let body = match method {
            None => Ok(delivery.body.clone()),
            Some(method) => {
                compression::decompress(&method, &delivery.body, self.inner.max_message_size)
                    .map(Bytes::from)
            }
        };
        match body {
            Ok(body) => Ok(Message::new(
                delivery,
                body,
                no_ack,
                self.inner.registry.clone(),
                accept,
                message_count,
            )),
            Err(e) => {
                let raw = delivery.body.clone();
                let message = Message::new(
                    delivery,
                    raw,
                    no_ack,
                    self.inner.registry.clone(),
                    accept,
                    message_count,
                );
                Err((e, message))
            }
        }
    }

    /// Closes the connection (see [`lepus::Connection::close`]).
    ///
    /// # Errors
    ///
    /// As [`lepus::Connection::close`].
    pub async fn close(&self) -> Result<()> {
        Ok(self.inner.client.close().await?)
    }
}

impl From<lepus::Connection> for Connection {
    fn from(client: lepus::Connection) -> Self {
        Self::new(client)
    }
}
