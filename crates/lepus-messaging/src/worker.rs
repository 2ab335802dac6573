//! [`Worker`]: consumers with handlers, run until asked to stop (kombu's `ConsumerMixin` and
//! `ConsumerProducerMixin`). The design (concurrency, settlement, attempts, recovery, shutdown
//! order) is documented on [`Worker`], which is what the crate exports.

use std::any::Any;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, SelectAll, StreamExt};
use futures_util::FutureExt;
use lepus::{ConnectionEvent, ConnectionOptions};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::connection::Connection;
use crate::consumer::{Consumer, ConsumerBuilder, HandlerErrorPolicy};
use crate::entity::Queue;
use crate::error::{Error, Result};
use crate::message::{Message, MessageState};
use crate::producer::Producer;
use crate::serializer::Registry;

/// The header in which quorum queues count deliveries.
const DELIVERY_COUNT: &str = "x-delivery-count";
/// How many failing messages the worker remembers attempts of (where the broker does not).
const ATTEMPTS_REMEMBERED: usize = 1 << 16;
/// The shortest time between two subscriptions of a consumer the broker ended (kombu's
/// `TokenBucket(1)` on restarts).
const RESUBSCRIBE_EVERY: Duration = Duration::from_secs(1);
/// The longest wait for the broker to confirm the consumers' cancel when stopping.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// How many events a receiver may fall behind before losing the oldest.
const EVENTS_CAPACITY: usize = 1024;

/// Handles one message at a time for a [`Worker`]: an async closure
/// `Fn(Message) -> impl Future<Output = Result<(), E>>`, or a type of one's own.
///
/// The worker settles the message after the handler, unless the handler settled it itself:
/// `Ok` acks it, an error (or a panic) rejects or requeues it per the worker's
/// [`HandlerErrorPolicy`]. Several calls run at once (up to the worker's concurrency), so the
/// handler takes `&self`.
///
/// # Examples
///
/// ```
/// use lepus_messaging::{Handler, Message};
///
/// struct Audit { prefix: String }
///
/// impl Handler for Audit {
///     type Error = lepus_messaging::Error;
///
///     async fn handle(&self, message: Message) -> Result<(), Self::Error> {
///         println!("{}: {:?}", self.prefix, message.body());
///         Ok(())
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Why a message failed; logged and reported in [`WorkerEvent::Handled`].
    type Error: fmt::Display;

    /// Handles `message`.
    fn handle(
        &self,
        message: Message,
    ) -> impl Future<Output = std::result::Result<(), Self::Error>> + Send;
}

impl<F, Fut, E> Handler for F
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), E>> + Send,
    E: fmt::Display,
{
    type Error = E;

    fn handle(
        &self,
        message: Message,
    ) -> impl Future<Output = std::result::Result<(), Self::Error>> + Send {
        self(message)
    }
}

/// Handles one message decoded into `T` for a [`Worker`] (kombu's callbacks get the decoded
/// body and the message): an async closure `Fn(T, Message) -> impl Future<Output = Result<(),
/// E>>`, or a type of one's own. A body that does not decode is settled by the consumer's
/// [`DecodeErrorPolicy`](crate::DecodeErrorPolicy), and the handler is not called.
pub trait TypedHandler<T>: Send + Sync + 'static {
    /// Why a message failed; logged and reported in [`WorkerEvent::Handled`].
    type Error: fmt::Display;

    /// Handles `value`, decoded from `message`.
    fn handle(
        &self,
        value: T,
        message: Message,
    ) -> impl Future<Output = std::result::Result<(), Self::Error>> + Send;
}

impl<T, F, Fut, E> TypedHandler<T> for F
where
    F: Fn(T, Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), E>> + Send,
    E: fmt::Display,
{
    type Error = E;

    fn handle(
        &self,
        value: T,
        message: Message,
    ) -> impl Future<Output = std::result::Result<(), Self::Error>> + Send {
        self(value, message)
    }
}

/// What a handler did with a message, as [`WorkerEvent::Handled`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerOutcome {
    /// It returned `Ok`.
    Succeeded,
    /// It returned an error, shown here.
    Failed(String),
    /// It panicked, with this message; the panic was caught.
    Panicked(String),
    /// The body did not decode (or was not accepted), so the handler was not called; the
    /// consumer's [`DecodeErrorPolicy`](crate::DecodeErrorPolicy) settled it.
    Undecodable(String),
    /// It was still running at the shutdown deadline and was abandoned.
    Abandoned,
}

/// How the worker settled a message, as [`WorkerEvent::Handled`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// Acknowledged.
    Acked,
    /// Rejected with requeue: the broker delivers it again.
    Requeued,
    /// Rejected without requeue (to the dead-letter exchange, if any), per the policy.
    Rejected,
    /// Rejected without requeue because its last attempt failed
    /// ([`max_attempts`](WorkerBuilder::max_attempts)).
    GaveUp {
        /// The attempts it had.
        attempts: u32,
    },
    /// The handler (or the decode policy) settled it already, this way.
    Already(MessageState),
    /// It could not be settled: the link it came over was lost (the broker delivers it
    /// again) or its channel closed. The client's error.
    Lost(String),
}

/// What a [`Worker`] reports; from [`Worker::events`].
///
/// The hooks of kombu's `ConsumerMixin` are here: `on_connection_revived` is
/// [`ConnectionRevived`](Self::ConnectionRevived), `on_consume_ready` is
/// [`ConsumeReady`](Self::ConsumeReady) and `on_consume_end` is
/// [`ConsumeEnd`](Self::ConsumeEnd).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WorkerEvent {
    /// Every consumer is subscribed and handlers are called: at the start, after a recovery,
    /// and after a consumer the broker ended was subscribed again.
    ConsumeReady {
        /// The queues consumed from.
        queues: Vec<String>,
    },
    /// The connection was lost; lepus is recovering it. Handlers in progress go on, but their
    /// messages cannot be settled: the broker delivers them again.
    ConnectionLost {
        /// Why.
        cause: lepus::Error,
    },
    /// The connection is back and the consumers are subscribed again.
    ConnectionRevived {
        /// The broker, as `host:port`.
        address: String,
        /// Time since the loss.
        took: Duration,
    },
    /// A consumer ended (the broker cancelled it, or its channel closed); unless the worker is
    /// stopping, it is subscribed again.
    ConsumerEnded {
        /// Its queues.
        queues: Vec<String>,
        /// Why.
        reason: String,
    },
    /// A message was handled and settled.
    Handled {
        /// The queue it came from.
        queue: Arc<str>,
        /// Its delivery tag.
        delivery_tag: u64,
        /// Its `message_id` property, if any.
        message_id: Option<String>,
        /// Which attempt this was, from 1 (see [`Worker`] for how it is counted).
        attempt: u32,
        /// What the handler did.
        outcome: HandlerOutcome,
        /// How the worker settled it.
        settlement: Settlement,
    },
    /// The worker is stopping: the consumers were cancelled and it waits for the handlers in
    /// progress.
    Stopping {
        /// Handlers in progress.
        in_progress: usize,
    },
    /// The handlers finished (or were abandoned); the connections close next.
    ConsumeEnd {
        /// Handlers abandoned at the shutdown deadline (their messages were requeued).
        abandoned: usize,
    },
}

/// Stops a [`Worker`] gracefully from anywhere (another task, a thread, a handler). Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    stop: Arc<watch::Sender<bool>>,
}

impl ShutdownHandle {
    fn new() -> Self {
        Self {
            stop: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Asks the worker to stop (see [`Worker::run`] for the order of things); returns at once.
    /// A worker asked to stop before it runs stops as soon as it starts.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Whether a stop was asked for.
    pub fn is_shutdown(&self) -> bool {
        *self.stop.borrow()
    }
}

/// The producer of a [`Worker`]'s handlers: on a second connection, opened on first use with
/// the worker's connection options (its `connection_name` gets a ` (producer)` suffix), so
/// that a publisher the broker blocks never stalls the consumers (kombu's
/// `ConsumerProducerMixin.producer`). Closed when the worker stops. Cheap to clone.
#[derive(Clone)]
pub struct WorkerProducer {
    inner: Arc<ProducerSlot>,
}

struct ProducerSlot {
    options: ConnectionOptions,
    registry: Registry,
    opened: tokio::sync::OnceCell<(Connection, Producer)>,
    closed: AtomicBool,
}

impl fmt::Debug for WorkerProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerProducer")
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl WorkerProducer {
    fn new(options: ConnectionOptions, registry: Registry) -> Self {
        Self {
            inner: Arc::new(ProducerSlot {
                options: producer_options(options),
                registry,
                opened: tokio::sync::OnceCell::new(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// A producer with the default settings (JSON, confirms, the default exchange) on the
    /// producer connection, opening it on first use. Clones share one producer.
    ///
    /// # Errors
    ///
    /// When the connection cannot be opened, or the worker has stopped.
    pub async fn producer(&self) -> Result<Producer> {
        Ok(self.open().await?.1.clone())
    }

    /// The producer connection, opening it on first use: make producers of other settings
    /// with [`Connection::producer`].
    ///
    /// # Errors
    ///
    /// As [`producer`](Self::producer).
    pub async fn connection(&self) -> Result<Connection> {
        Ok(self.open().await?.0.clone())
    }

    /// Whether the producer connection was opened.
    pub fn is_connected(&self) -> bool {
        self.inner.opened.initialized()
    }

    async fn open(&self) -> Result<&(Connection, Producer)> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(stopped());
        }
        self.inner
            .opened
            .get_or_try_init(|| async {
                let client = lepus::Connection::connect_with(self.inner.options.clone()).await?;
                let conn = Connection::with_registry(client, self.inner.registry.clone());
                let producer = conn.producer().build()?;
                tracing::info!(address = %conn.client().address(), "opened the producer connection");
                Ok::<_, Error>((conn, producer))
            })
            .await
    }

    /// Closes the producer connection, if it was opened; later uses fail.
    pub(crate) async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        if let Some((conn, _)) = self.inner.opened.get() {
            if let Err(e) = conn.close().await {
                tracing::warn!(error = %e, "closing the producer connection failed");
            }
        }
    }
}

/// The options of a worker's producer connection: the worker's, with ` (producer)` after the
/// connection name so that the two tell apart in the management UI.
pub(crate) fn producer_options(mut options: ConnectionOptions) -> ConnectionOptions {
    let name = options
        .client_properties_mut()
        .get("connection_name")
        .and_then(lepus::FieldValue::as_str)
        .map(str::to_owned);
    if let Some(name) = name {
        options.connection_name(format!("{name} (producer)"));
    }
    options
}

pub(crate) fn stopped() -> Error {
    Error::Amqp(lepus::Error::InvalidState(
        "the worker has stopped and closed its producer connection",
    ))
}

/// Builds a [`Worker`]; from [`Worker::connect`] or [`Worker::builder`].
///
/// Register each consumer with its handler ([`handle`](Self::handle),
/// [`handle_typed`](Self::handle_typed)), set the concurrency and the error policy, then
/// [`build`](Self::build).
#[must_use = "call build() to get the worker"]
pub struct WorkerBuilder {
    conn: Connection,
    specs: Vec<Spec>,
    settings: Settings,
    stop: ShutdownHandle,
    producer: WorkerProducer,
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("consumers", &self.specs.len())
            .field("settings", &self.settings)
            .finish()
    }
}

impl WorkerBuilder {
    fn new(conn: Connection, options: ConnectionOptions) -> Self {
        let producer = WorkerProducer::new(options, conn.registry().clone());
        Self {
            conn,
            specs: Vec::new(),
            settings: Settings::default(),
            stop: ShutdownHandle::new(),
            producer,
        }
    }

    /// The connection the worker consumes on.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// A consumer of `queues` on the worker's connection, to set up (accept list, decode
    /// policy, tags, ...) and pass to [`handle`](Self::handle). Its prefetch is replaced by
    /// the worker's concurrency.
    pub fn consumer<I, Q>(&self, queues: I) -> ConsumerBuilder
    where
        I: IntoIterator<Item = Q>,
        Q: Into<Queue>,
    {
        self.conn.consumer(queues)
    }

    /// The producer for handlers that publish (see [`WorkerProducer`]); clone it into them.
    pub fn producer(&self) -> WorkerProducer {
        self.producer.clone()
    }

    /// A handle that stops the worker; clone it into handlers or other tasks.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.stop.clone()
    }

    /// How many handlers run at once, over all consumers (default 1); each consumer's
    /// prefetch is set to it.
    pub fn concurrency(mut self, handlers: u16) -> Self {
        self.settings.concurrency = handlers;
        self
    }

    /// What a failed or panicking handler's message gets (default
    /// [`HandlerErrorPolicy::Reject`]); a consumer's own
    /// [`on_handler_error`](ConsumerBuilder::on_handler_error) is not used by the worker.
    pub fn on_error(mut self, policy: HandlerErrorPolicy) -> Self {
        self.settings.on_error = policy;
        self
    }

    /// With [`HandlerErrorPolicy::Requeue`]: the failed attempt number `attempts` rejects the
    /// message without requeue instead (to the dead-letter exchange, if any). Default: no
    /// limit. See [`Worker`] for how attempts are counted.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.settings.max_attempts = Some(attempts.max(1));
        self
    }

    /// How long a stop waits for the handlers in progress (default 30 s); those still running
    /// then are abandoned and their messages requeued.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.settings.shutdown_timeout = timeout;
        self
    }

    /// Whether the consumer connection stays open when the worker stops (default `false`: it
    /// is closed, after every ack was written).
    pub fn keep_connection(mut self, keep: bool) -> Self {
        self.settings.keep_connection = keep;
        self
    }

    /// Whether SIGTERM and Ctrl-C (SIGINT) stop the worker gracefully (default `false`).
    /// Once listened for, these signals no longer end the process by themselves while it runs
    /// (tokio's signal handling).
    pub fn stop_on_signals(mut self, on: bool) -> Self {
        self.settings.signals = on;
        self
    }

    /// Runs `handler` for each message of `consumer`.
    pub fn handle(self, consumer: ConsumerBuilder, handler: impl Handler) -> Self {
        self.with_runner(consumer, Arc::new(AsyncRunner(Arc::new(handler))))
    }

    /// Runs `handler` for each message of `consumer`, decoded into `T` first.
    pub fn handle_typed<T, H>(self, consumer: ConsumerBuilder, handler: H) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        H: TypedHandler<T>,
    {
        let runner = TypedRunner::<T, H> {
            handler: Arc::new(handler),
            _value: PhantomData,
        };
        self.with_runner(consumer, Arc::new(runner))
    }

    pub(crate) fn with_runner(
        mut self,
        consumer: ConsumerBuilder,
        runner: Arc<dyn Runner>,
    ) -> Self {
        self.specs.push(Spec {
            builder: consumer,
            runner,
        });
        self
    }

    /// Makes the worker; nothing is sent until [`Worker::run`].
    ///
    /// # Errors
    ///
    /// [`lepus::Error::InvalidArgument`] without a consumer, or with a concurrency of 0.
    pub fn build(self) -> Result<Worker> {
        if self.specs.is_empty() {
            return Err(invalid("a worker needs at least one consumer (see handle)"));
        }
        if self.settings.concurrency == 0 {
            return Err(invalid("a worker's concurrency must be at least 1"));
        }
        let (events, _) = broadcast::channel(EVENTS_CAPACITY);
        Ok(Worker {
            engine: Engine {
                conn: self.conn,
                specs: self.specs,
                settings: self.settings,
                events,
                stop: self.stop,
            },
            producer: self.producer,
        })
    }
}

fn invalid(what: &str) -> Error {
    Error::Amqp(lepus::Error::InvalidArgument(what.to_owned()))
}

/// Consumers with handlers, run until asked to stop (kombu's `ConsumerMixin` and
/// `ConsumerProducerMixin`, done properly).
/// `ConsumerProducerMixin`, done properly).
///
/// A worker subscribes one or more [`Consumer`]s, each with a handler, and calls up to
/// [`concurrency`](WorkerBuilder::concurrency) handlers at once (the prefetch follows it). Each
/// message is settled by its handler's result: `Ok` acks it; an error or a panic (caught, logged
/// and reported) rejects or requeues it per a [`HandlerErrorPolicy`], with an optional bound on
/// the attempts after which it is rejected to the dead-letter exchange
/// ([`max_attempts`](WorkerBuilder::max_attempts)).
///
/// ```text
///   Consumer (queue a) ─┐                 ┌─► handler task ─► Ok: ack
///   Consumer (queue b) ─┼─► permit (N) ───┼─► handler task ─► Err/panic: reject | requeue
///   ...                 ┘   prefetch N    └─► ...                (attempts bounded)
///   ShutdownHandle / SIGTERM / Ctrl-C ─► cancel consumers ─► wait for handlers (deadline)
///                                      ─► settle ─► close producer and consumer connections
/// ```
///
/// **Recovery.** The worker needs no code of yours to survive a broker restart, a connection
/// killed by an operator or a failover: lepus recovers the connection underneath
/// ([`lepus::RecoveryPolicy`]) and subscribes the consumers again. Messages in the handlers
/// when the link was lost cannot be settled any more (the broker requeues them and delivers
/// them again), so handlers should be idempotent: delivery is at least once. A consumer the
/// broker cancels (its queue was deleted) is subscribed again (declaring the queue again, unless
/// declaration is off) at most once a second, as kombu's loop does. What happened is reported
/// as [`WorkerEvent`]s and through `tracing`.
///
/// **Stopping** ([`ShutdownHandle::shutdown`], or SIGTERM / Ctrl-C with
/// [`stop_on_signals`](WorkerBuilder::stop_on_signals)) is graceful and in this order: no new
/// message is taken; the consumers are cancelled (deliveries not started go back to their
/// queues); the handlers in progress finish, within the
/// [`shutdown_timeout`](WorkerBuilder::shutdown_timeout), and their messages are settled (a
/// handler still running at the deadline is abandoned and its message requeued: never acked
/// early); then the producer connection and the consumer connection close (the latter unless
/// [`keep_connection`](WorkerBuilder::keep_connection)), which writes every ack first.
///
/// **Attempts.** With [`HandlerErrorPolicy::Requeue`] and
/// [`max_attempts(n)`](WorkerBuilder::max_attempts), the n-th failed attempt rejects the
/// message without requeue (to the queue's dead-letter exchange, if any). The attempt number is
/// read from the `x-delivery-count` header where the broker sets one (quorum queues: it counts
/// every return to the queue, including those of a lost connection); elsewhere the worker
/// counts failed attempts itself, in memory, keyed by queue and message id, or by queue,
/// exchange, routing key and a hash of the body for a message without an id (so identical
/// bodies without ids share a count, which errs on the side of giving up early). That count is
/// per worker process: it starts again after a restart, and other workers on the same queue
/// keep their own. It remembers the last 65,536 failing messages.
///
/// **Producing.** Handlers that publish use [`WorkerProducer`]: a second connection, opened on
/// first use with the worker's options, so that a publisher the broker blocks
/// (`connection.blocked`) never stalls the consumers (kombu's `ConsumerProducerMixin`).
///
/// # Examples
///
/// ```
/// use serde::Deserialize;
/// use lepus_messaging::{HandlerErrorPolicy, Queue, Worker};
///
/// #[derive(Deserialize)]
/// struct Order { id: u64, item: String }
///
/// # #[tokio::main]
/// # async fn main() -> lepus_messaging::Result<()> {
/// let builder = Worker::connect("memory://").await?;
/// # let q = Queue::new("orders").dead_letter_exchange("orders.dead");
/// # let order = serde_json::json!({"id": 1, "item": "book"});
/// # let publisher = builder.connection().producer().build()?;
/// # publisher.publish(&order).to_queue(&q).declare(q.clone()).await?;
/// # let stop_after_one = builder.shutdown_handle(); // so that `run` returns
/// let orders = builder.consumer([Queue::new("orders").dead_letter_exchange("orders.dead")]);
/// let producer = builder.producer(); // opens its connection on first use
/// let worker = builder
///     .concurrency(8) // 8 handlers at once, prefetch 8
///     .on_error(HandlerErrorPolicy::Requeue)
///     .max_attempts(3) // the third failure dead-letters the message
///     .stop_on_signals(true) // SIGTERM / Ctrl-C stop it gracefully
///     .handle_typed(orders, move |order: Order, _message| {
///         let producer = producer.clone();
/// #       stop_after_one.shutdown();
///         async move {
///             println!("order {}: {}", order.id, order.item);
///             producer
///                 .producer()
///                 .await?
///                 .publish(&order.id)
///                 .routing_key("orders.done")
///                 .await?;
///             Ok::<_, lepus_messaging::Error>(()) // acked
///         }
///     })
///     .build()?;
/// let stop = worker.shutdown_handle(); // stop.shutdown() from anywhere
/// # drop(stop);
/// worker.run().await?; // until stopped; the connection is closed after
/// # Ok(()) }
/// ```
///
/// Call [`events`](Self::events) and [`shutdown_handle`](Self::shutdown_handle) before
/// [`run`](Self::run), which takes the worker.
pub struct Worker {
    pub(crate) engine: Engine,
    pub(crate) producer: WorkerProducer,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("consumers", &self.engine.specs.len())
            .field("settings", &self.engine.settings)
            .finish()
    }
}

impl Worker {
    /// Connects to the broker at `uri` (see [`lepus::ConnectionOptions::from_uri`]) and
    /// starts a builder; the producer connection is opened with the same options when first
    /// used.
    ///
    /// # Errors
    ///
    /// When the URI is bad or the connection cannot be opened.
    pub async fn connect(uri: &str) -> Result<WorkerBuilder> {
        Self::connect_with(ConnectionOptions::from_uri(uri)?).await
    }

    /// Connects with `options` (recovery policy, connection name, ...) and starts a builder.
    ///
    /// # Errors
    ///
    /// When the connection cannot be opened.
    pub async fn connect_with(options: ConnectionOptions) -> Result<WorkerBuilder> {
        let client = lepus::Connection::connect_with(options.clone()).await?;
        Ok(WorkerBuilder::new(Connection::new(client), options))
    }

    /// Starts a builder on a connection of one's own; `options` are what the producer
    /// connection is opened with (normally the ones `conn` was opened with).
    pub fn builder(conn: Connection, options: ConnectionOptions) -> WorkerBuilder {
        WorkerBuilder::new(conn, options)
    }

    /// The connection it consumes on.
    pub fn connection(&self) -> &Connection {
        &self.engine.conn
    }

    /// The producer for handlers (see [`WorkerProducer`]).
    pub fn producer(&self) -> WorkerProducer {
        self.producer.clone()
    }

    /// A handle that stops the worker.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.engine.stop.clone()
    }

    /// What happens from now on. A receiver that falls more than 1,024 events behind loses the
    /// oldest (`RecvError::Lagged`).
    pub fn events(&self) -> broadcast::Receiver<WorkerEvent> {
        self.engine.events.subscribe()
    }

    /// Subscribes the consumers and handles messages until asked to stop, then stops
    /// gracefully: consumers cancelled, handlers in progress finished (within the shutdown
    /// timeout) and their messages settled, producer connection closed, consumer connection
    /// closed unless kept. Lost connections are recovered underneath without returning.
    ///
    /// # Errors
    ///
    /// When a consumer cannot subscribe at the start (a refused declaration, a missing
    /// queue), when the connection ends for good (recovery off, or it gave up), or when a
    /// consumer the broker ended cannot subscribe again for a reason retrying will not mend
    /// (the worker then stops gracefully first). Otherwise, the error of closing the
    /// connection, if any.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the handlers in progress without settling their messages:
    /// the broker delivers them again once their channel closes. Use the
    /// [`ShutdownHandle`] to stop gracefully.
    pub async fn run(self) -> Result<()> {
        let Self { engine, producer } = self;
        let conn = engine.conn.clone();
        let keep = engine.settings.keep_connection;
        let result = engine.run().await;
        producer.close().await;
        let closed = if keep { Ok(()) } else { conn.close().await };
        result?;
        closed
    }
}

// ---- the engine, shared with the blocking worker ----

/// The worker's settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) concurrency: u16,
    pub(crate) on_error: HandlerErrorPolicy,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) keep_connection: bool,
    pub(crate) signals: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            concurrency: 1,
            on_error: HandlerErrorPolicy::Reject,
            max_attempts: None,
            shutdown_timeout: Duration::from_secs(30),
            keep_connection: false,
            signals: false,
        }
    }
}

/// Starts a handler call: decodes the message if the handler is typed (an error is settled by
/// the consumer's decode policy), and returns the future of the call, which catches panics.
pub(crate) trait Runner: Send + Sync + 'static {
    /// The call's future, or why the message cannot be handed over.
    fn start(&self, message: Message) -> Result<BoxFuture<'static, HandlerOutcome>>;
}

struct AsyncRunner<H>(Arc<H>);

impl<H: Handler> Runner for AsyncRunner<H> {
    fn start(&self, message: Message) -> Result<BoxFuture<'static, HandlerOutcome>> {
        let handler = Arc::clone(&self.0);
        let call = async move { handler.handle(message).await };
        Ok(Box::pin(async move {
            let started = std::time::Instant::now();
            let outcome = outcome_of(AssertUnwindSafe(call).catch_unwind().await);
            crate::consumer::record_process(started, matches!(outcome, HandlerOutcome::Succeeded));
            outcome
        }))
    }
}

struct TypedRunner<T, H> {
    handler: Arc<H>,
    _value: PhantomData<fn() -> T>,
}

impl<T, H> Runner for TypedRunner<T, H>
where
    T: DeserializeOwned + Send + 'static,
    H: TypedHandler<T>,
{
    fn start(&self, message: Message) -> Result<BoxFuture<'static, HandlerOutcome>> {
        let value = message.decode::<T>()?;
        let handler = Arc::clone(&self.handler);
        let call = async move { handler.handle(value, message).await };
        Ok(Box::pin(async move {
            let started = std::time::Instant::now();
            let outcome = outcome_of(AssertUnwindSafe(call).catch_unwind().await);
            crate::consumer::record_process(started, matches!(outcome, HandlerOutcome::Succeeded));
            outcome
        }))
    }
}

/// A handler's result, or its caught panic, as an outcome.
pub(crate) fn outcome_of<E: fmt::Display>(
    result: std::result::Result<std::result::Result<(), E>, Box<dyn Any + Send>>,
) -> HandlerOutcome {
    match result {
        Ok(Ok(())) => HandlerOutcome::Succeeded,
        Ok(Err(e)) => HandlerOutcome::Failed(e.to_string()),
        Err(panic) => HandlerOutcome::Panicked(panic_text(panic.as_ref())),
    }
}

use crate::consumer::panic_text;

/// One consumer with its handler.
#[derive(Clone)]
pub(crate) struct Spec {
    builder: ConsumerBuilder,
    runner: Arc<dyn Runner>,
}

/// What the engine needs to run; a [`Worker`] without its producer.
pub(crate) struct Engine {
    pub(crate) conn: Connection,
    specs: Vec<Spec>,
    pub(crate) settings: Settings,
    pub(crate) events: broadcast::Sender<WorkerEvent>,
    pub(crate) stop: ShutdownHandle,
}

/// How a run ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    /// Handlers abandoned at the deadline.
    pub(crate) abandoned: usize,
}

/// A subscribed consumer in the engine's merged stream, tagged with its spec's index.
struct Sub {
    idx: usize,
    consumer: Consumer,
    /// Consumer tag → queue.
    queues: Vec<(String, Arc<str>)>,
    ended: bool,
}

enum Pulled {
    Message(Message),
    Failed(Error),
    Ended,
}

impl Sub {
    fn new(idx: usize, consumer: Consumer) -> Self {
        let queues = consumer
            .subscriptions()
            .map(|(q, t)| (t.to_owned(), Arc::from(q)))
            .collect();
        Self {
            idx,
            consumer,
            queues,
            ended: false,
        }
    }

    fn queue_of(&self, message: &Message) -> Arc<str> {
        let tag = message.consumer_tag();
        self.queues
            .iter()
            .find(|(t, _)| t == tag)
            .or(self.queues.first())
            .map_or_else(|| Arc::from(""), |(_, q)| Arc::clone(q))
    }

    fn queue_names(&self) -> impl Iterator<Item = String> + '_ {
        self.queues.iter().map(|(_, q)| q.to_string())
    }
}

impl Stream for Sub {
    type Item = (usize, Pulled);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        let pulled = match this.consumer.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(m))) => Pulled::Message(m),
            Poll::Ready(Some(Err(e))) => {
                this.ended = true;
                Pulled::Failed(e)
            }
            Poll::Ready(None) => {
                this.ended = true;
                Pulled::Ended
            }
        };
        Poll::Ready(Some((this.idx, pulled)))
    }
}

/// A handler call in progress.
struct Job {
    message: Message,
    queue: Arc<str>,
    key: u64,
    attempt: u32,
    /// The attempt came from the broker's `x-delivery-count`.
    counted_by_broker: bool,
    abort: AbortHandle,
    _permit: Option<OwnedSemaphorePermit>,
}

type Resubscribe = BoxFuture<'static, (usize, Result<Consumer>)>;
type Finished = BoxFuture<
    'static,
    (
        u64,
        std::result::Result<HandlerOutcome, tokio::task::JoinError>,
    ),
>;

/// The run's state.
struct Run {
    conn: Connection,
    specs: Vec<Spec>,
    settings: Settings,
    events: broadcast::Sender<WorkerEvent>,
    attempts: Attempts,
    jobs: HashMap<u64, Job>,
    next_job: u64,
}

impl Engine {
    /// Runs until stopped; see [`Worker::run`]. Closes no connection.
    pub(crate) async fn run(self) -> Result<Summary> {
        let Self {
            conn,
            specs,
            settings,
            events,
            stop,
        } = self;
        let mut stop_rx = stop.stop.subscribe();
        if *stop_rx.borrow_and_update() {
            tracing::info!("the worker was stopped before it ran");
            return Ok(Summary { abandoned: 0 });
        }
        let mut run = Run {
            conn,
            specs,
            settings,
            events,
            attempts: Attempts::default(),
            jobs: HashMap::new(),
            next_job: 0,
        };
        let mut subs = SelectAll::new();
        for idx in 0..run.specs.len() {
            subs.push(Sub::new(idx, run.subscribe(idx).await?));
        }
        let queues: Vec<String> = subs.iter().flat_map(Sub::queue_names).collect();
        tracing::info!(
            ?queues,
            concurrency = run.settings.concurrency,
            "worker consuming"
        );
        run.emit(|| WorkerEvent::ConsumeReady { queues });

        let permits = Arc::new(Semaphore::new(usize::from(run.settings.concurrency)));
        let mut finished: FuturesUnordered<Finished> = FuturesUnordered::new();
        let mut resubscribing: FuturesUnordered<Resubscribe> = FuturesUnordered::new();
        let mut conn_events = Some(run.conn.client().events());
        let signals = run.settings.signals;
        let mut signal = std::pin::pin!(termination_signal());
        let mut fatal = None;

        loop {
            tokio::select! {
                biased;
                _ = stop_rx.wait_for(|stop| *stop) => {
                    tracing::info!("stopping the worker as asked");
                    break;
                }
                name = &mut signal, if signals => {
                    tracing::info!(signal = name, "stopping the worker on a signal");
                    stop.shutdown();
                    break;
                }
                Some((id, result)) = finished.next() => run.finish(id, result),
                Some((idx, subscribed)) = resubscribing.next() => match subscribed {
                    Ok(consumer) => {
                        let sub = Sub::new(idx, consumer);
                        let queues: Vec<String> = sub.queue_names().collect();
                        tracing::info!(?queues, "consumer subscribed again");
                        subs.push(sub);
                        run.emit(|| WorkerEvent::ConsumeReady { queues });
                    }
                    Err(e) if e.is_recoverable() && !run.connection_ended() => {
                        tracing::warn!(error = %e, "cannot subscribe again yet; retrying");
                        resubscribing.push(run.resubscribe(idx));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot subscribe again; stopping the worker");
                        fatal = Some(e);
                        break;
                    }
                },
                event = next_event(&mut conn_events) => match event {
                    Some(event) => run.connection_event(event, &subs),
                    None => conn_events = None,
                },
                (permit, pulled) = pull(&permits, &mut subs), if !subs.is_empty() => {
                    let Some((idx, pulled)) = pulled else { continue };
                    match pulled {
                        Pulled::Message(message) => {
                            if let Some(fut) = run.dispatch(&subs, idx, message, permit) {
                                finished.push(fut);
                            }
                        }
                        Pulled::Failed(e) => {
                            if let Some(e) = run.consumer_ended(idx, e.to_string(), &subs) {
                                fatal = Some(e);
                                break;
                            }
                            resubscribing.push(run.resubscribe(idx));
                        }
                        Pulled::Ended => {
                            let reason = "the consumer ended".to_owned();
                            if let Some(e) = run.consumer_ended(idx, reason, &subs) {
                                fatal = Some(e);
                                break;
                            }
                            resubscribing.push(run.resubscribe(idx));
                        }
                    }
                }
            }
        }

        // Stop: no new message is taken from here on.
        drop(resubscribing);
        let deadline = Instant::now() + run.settings.shutdown_timeout;
        if run.conn.client().is_open() {
            let cancels = cancel_all(&subs);
            let by = deadline.min(Instant::now() + CANCEL_TIMEOUT);
            if tokio::time::timeout_at(by, cancels).await.is_err() {
                tracing::warn!("the broker did not confirm the consumers' cancel in time");
            }
        }
        // Otherwise (the link is down) dropping the consumers is enough: recovery will not
        // subscribe them again.
        // Deliveries buffered but not handed out go back to their queues when their channel
        // closes, once the messages in progress are settled.
        drop(subs);
        let in_progress = run.jobs.len();
        tracing::info!(
            in_progress,
            timeout = ?run.settings.shutdown_timeout,
            "consumers cancelled; waiting for the handlers in progress"
        );
        run.emit(|| WorkerEvent::Stopping { in_progress });
        while !run.jobs.is_empty() {
            tokio::select! {
                biased;
                Some((id, result)) = finished.next() => run.finish(id, result),
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        // Results that came in with the deadline are used, not thrown away.
        while let Some(Some((id, result))) = finished.next().now_or_never() {
            run.finish(id, result);
        }
        let abandoned = run.abandon_all();
        run.emit(|| WorkerEvent::ConsumeEnd { abandoned });
        tracing::info!(abandoned, "the worker's handlers are done");
        match fatal {
            Some(e) => Err(e),
            None => Ok(Summary { abandoned }),
        }
    }
}

impl Run {
    /// Subscribes spec `idx`'s consumer, with the worker's prefetch.
    async fn subscribe(&self, idx: usize) -> Result<Consumer> {
        let Some(spec) = self.specs.get(idx) else {
            return Err(Error::Amqp(lepus::Error::InvalidState(
                "no such consumer in the worker",
            )));
        };
        spec.builder
            .clone()
            .prefetch(self.settings.concurrency)
            .consume()
            .await
    }

    /// Subscribes spec `idx`'s consumer again after a pause.
    fn resubscribe(&self, idx: usize) -> Resubscribe {
        let spec = self.specs.get(idx).map(|s| s.builder.clone());
        let prefetch = self.settings.concurrency;
        Box::pin(async move {
            tokio::time::sleep(RESUBSCRIBE_EVERY).await;
            let subscribed = match spec {
                Some(builder) => builder.prefetch(prefetch).consume().await,
                None => Err(Error::Amqp(lepus::Error::InvalidState(
                    "no such consumer in the worker",
                ))),
            };
            (idx, subscribed)
        })
    }

    /// Whether the connection ended for good (not being recovered).
    fn connection_ended(&self) -> bool {
        let client = self.conn.client();
        !client.is_open() && !client.is_recovering()
    }

    /// A consumer ended: reports it, and returns an error when the connection ended for good
    /// (nothing to subscribe on again).
    fn consumer_ended(&self, idx: usize, reason: String, subs: &SelectAll<Sub>) -> Option<Error> {
        let queues: Vec<String> = subs
            .iter()
            .filter(|s| s.idx == idx)
            .flat_map(Sub::queue_names)
            .collect();
        if self.connection_ended() {
            tracing::error!(?queues, %reason, "the connection ended; stopping the worker");
            self.emit(|| WorkerEvent::ConsumerEnded {
                queues: queues.clone(),
                reason: reason.clone(),
            });
            return Some(Error::ConsumerEnded {
                queue: queues.join(", "),
                reason,
            });
        }
        tracing::warn!(?queues, %reason, "a consumer ended; subscribing again");
        self.emit(|| WorkerEvent::ConsumerEnded { queues, reason });
        None
    }

    /// Reports what the connection went through.
    fn connection_event(&self, event: ConnectionEvent, subs: &SelectAll<Sub>) {
        match event {
            ConnectionEvent::Disconnected { cause, .. } => {
                tracing::warn!(error = %cause, "worker connection lost; lepus is recovering it");
                self.emit(|| WorkerEvent::ConnectionLost { cause });
            }
            ConnectionEvent::Recovered { address, took } => {
                tracing::info!(%address, ?took, "worker connection revived");
                self.emit(|| WorkerEvent::ConnectionRevived { address, took });
                let queues: Vec<String> = subs.iter().flat_map(Sub::queue_names).collect();
                self.emit(|| WorkerEvent::ConsumeReady { queues });
            }
            ConnectionEvent::RecoveryFailed { error } => {
                tracing::error!(%error, "the worker's connection could not be recovered");
            }
            ConnectionEvent::TopologyFailed { entity, error } => {
                tracing::warn!(%entity, %error, "could not declare again after a recovery");
            }
            _ => {}
        }
    }

    /// Starts the handler of a message pulled from spec `idx`'s consumer.
    fn dispatch(
        &mut self,
        subs: &SelectAll<Sub>,
        idx: usize,
        message: Message,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Option<Finished> {
        let (Some(sub), Some(spec)) = (subs.iter().find(|s| s.idx == idx), self.specs.get(idx))
        else {
            // Cannot happen: the message was just pulled from that consumer. Give it back.
            let _ = message.requeue();
            return None;
        };
        let queue = sub.queue_of(&message);
        let key = attempt_key(&queue, &message);
        let (attempt, counted_by_broker) = match delivery_count(&message) {
            Some(count) => (count.saturating_add(1), true),
            None => (self.attempts.failures(key).saturating_add(1), false),
        };
        let call = match spec.runner.start(message.clone()) {
            Ok(call) => call,
            Err(error) => {
                sub.consumer.decode_failed(&message, &error);
                self.attempts.forget(key);
                let settlement = Settlement::Already(message.state());
                self.report(
                    &queue,
                    &message,
                    attempt,
                    HandlerOutcome::Undecodable(error.to_string()),
                    settlement,
                );
                return None;
            }
        };
        let span = tracing::info_span!(
            "handle",
            queue = %queue,
            delivery_tag = message.delivery_tag(),
            attempt
        );
        let handle = tokio::spawn(call.instrument(span));
        let id = self.next_job;
        self.next_job = self.next_job.wrapping_add(1);
        self.jobs.insert(
            id,
            Job {
                message,
                queue,
                key,
                attempt,
                counted_by_broker,
                abort: handle.abort_handle(),
                _permit: permit,
            },
        );
        Some(Box::pin(async move { (id, handle.await) }))
    }

    /// Settles the message of a finished handler call.
    fn finish(
        &mut self,
        id: u64,
        result: std::result::Result<HandlerOutcome, tokio::task::JoinError>,
    ) {
        let Some(job) = self.jobs.remove(&id) else {
            return;
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => HandlerOutcome::Panicked(panic_text(e.into_panic().as_ref())),
            Err(_) => HandlerOutcome::Abandoned,
        };
        let message = &job.message;
        let settlement = match &outcome {
            HandlerOutcome::Succeeded => {
                if message.acknowledged() {
                    Settlement::Already(message.state())
                } else {
                    settled(message.ack(), Settlement::Acked)
                }
            }
            HandlerOutcome::Failed(error) => {
                tracing::warn!(
                    queue = %job.queue,
                    delivery_tag = message.delivery_tag(),
                    attempt = job.attempt,
                    %error,
                    "a message handler failed"
                );
                self.failed(&job)
            }
            HandlerOutcome::Panicked(panic) => {
                tracing::error!(
                    queue = %job.queue,
                    delivery_tag = message.delivery_tag(),
                    attempt = job.attempt,
                    %panic,
                    "a message handler panicked"
                );
                self.failed(&job)
            }
            HandlerOutcome::Undecodable(_) | HandlerOutcome::Abandoned => {
                if message.acknowledged() {
                    Settlement::Already(message.state())
                } else {
                    settled(message.requeue(), Settlement::Requeued)
                }
            }
        };
        if settlement != Settlement::Requeued {
            self.attempts.forget(job.key);
        }
        if let Settlement::Lost(error) = &settlement {
            tracing::info!(
                queue = %job.queue,
                delivery_tag = message.delivery_tag(),
                %error,
                "could not settle a handled message; the broker delivers it again"
            );
        }
        self.report(&job.queue, message, job.attempt, outcome, settlement);
    }

    /// Settles the message of a failed or panicked handler per the policy.
    fn failed(&mut self, job: &Job) -> Settlement {
        let message = &job.message;
        if message.acknowledged() {
            return Settlement::Already(message.state());
        }
        match self.settings.on_error {
            HandlerErrorPolicy::Reject => settled(message.reject(), Settlement::Rejected),
            HandlerErrorPolicy::Requeue => {
                if self
                    .settings
                    .max_attempts
                    .is_some_and(|max| job.attempt >= max)
                {
                    tracing::warn!(
                        queue = %job.queue,
                        delivery_tag = message.delivery_tag(),
                        attempts = job.attempt,
                        "giving up on a message: rejected to the dead-letter exchange"
                    );
                    return settled(
                        message.reject(),
                        Settlement::GaveUp {
                            attempts: job.attempt,
                        },
                    );
                }
                if !job.counted_by_broker {
                    self.attempts.record_failure(job.key);
                }
                settled(message.requeue(), Settlement::Requeued)
            }
        }
    }

    /// Abandons the handlers still running: their tasks are aborted and their messages
    /// requeued. Returns how many.
    fn abandon_all(&mut self) -> usize {
        let jobs: Vec<Job> = self.jobs.drain().map(|(_, job)| job).collect();
        let abandoned = jobs.len();
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "handlers still running at the shutdown deadline; their messages are requeued"
            );
        }
        for job in jobs {
            job.abort.abort();
            let message = &job.message;
            let settlement = if message.acknowledged() {
                Settlement::Already(message.state())
            } else {
                settled(message.requeue(), Settlement::Requeued)
            };
            self.report(
                &job.queue,
                message,
                job.attempt,
                HandlerOutcome::Abandoned,
                settlement,
            );
        }
        abandoned
    }

    fn report(
        &self,
        queue: &Arc<str>,
        message: &Message,
        attempt: u32,
        outcome: HandlerOutcome,
        settlement: Settlement,
    ) {
        self.emit(|| WorkerEvent::Handled {
            queue: Arc::clone(queue),
            delivery_tag: message.delivery_tag(),
            message_id: message
                .properties()
                .message_id
                .as_ref()
                .and_then(|id| id.as_str())
                .map(str::to_owned),
            attempt,
            outcome,
            settlement,
        });
    }

    /// Sends an event, made only when someone listens.
    fn emit(&self, event: impl FnOnce() -> WorkerEvent) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(event());
        }
    }
}

/// The settlement `ok` stands for when `sent` succeeded, else why not.
fn settled(sent: Result<()>, ok: Settlement) -> Settlement {
    match sent {
        Ok(()) => ok,
        Err(Error::MessageState(state)) => Settlement::Already(state),
        Err(e) => Settlement::Lost(e.to_string()),
    }
}

/// Waits for a handler permit, then for the next message of any consumer.
async fn pull(
    permits: &Arc<Semaphore>,
    subs: &mut SelectAll<Sub>,
) -> (Option<OwnedSemaphorePermit>, Option<(usize, Pulled)>) {
    let permit = Arc::clone(permits).acquire_owned().await.ok();
    (permit, subs.next().await)
}

/// The next event of the connection; `None` once there are no more.
async fn next_event(
    rx: &mut Option<broadcast::Receiver<ConnectionEvent>>,
) -> Option<ConnectionEvent> {
    let Some(rx) = rx else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(event) => return Some(event),
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

/// Cancels every subscription, waiting for the broker's `cancel-ok`s. The future owns what
/// it needs, so that the worker's future stays `Send` (a consumer is not `Sync`).
fn cancel_all(subs: &SelectAll<Sub>) -> impl Future<Output = ()> + Send + 'static {
    let cancels: Vec<_> = subs
        .iter()
        .flat_map(|sub| {
            let channel = sub.consumer.channel().clone();
            sub.queues.iter().map(move |(tag, queue)| {
                let channel = channel.clone();
                let tag = tag.clone();
                let queue = Arc::clone(queue);
                async move {
                    if let Err(e) = channel.basic_cancel(tag.as_str()).await {
                        tracing::debug!(%queue, error = %e, "could not cancel a consumer");
                    }
                }
            })
        })
        .collect();
    futures_util::future::join_all(cancels).map(|_| ())
}

/// The first termination signal: SIGTERM or SIGINT (Ctrl-C). Never resolves when signals
/// cannot be listened for (with a warning).
async fn termination_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => return "SIGTERM",
                interrupted = tokio::signal::ctrl_c() => {
                    if interrupted.is_ok() {
                        return "SIGINT";
                    }
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                if tokio::signal::ctrl_c().await.is_ok() {
                    return "SIGINT";
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_ok() {
            return "Ctrl-C";
        }
    }
    tracing::warn!("cannot listen for Ctrl-C; stop the worker with its shutdown handle");
    std::future::pending().await
}

/// The broker's delivery count, on quorum queues.
fn delivery_count(message: &Message) -> Option<u32> {
    let count = message.header(DELIVERY_COUNT)?.as_i64()?;
    u32::try_from(count).ok()
}

/// What identifies a message for counting its attempts: the queue and its message id, or the
/// queue, exchange, routing key and body.
fn attempt_key(queue: &str, message: &Message) -> u64 {
    let mut hasher = DefaultHasher::new();
    queue.hash(&mut hasher);
    match message
        .properties()
        .message_id
        .as_ref()
        .and_then(|id| id.as_str())
    {
        Some(id) => {
            0u8.hash(&mut hasher);
            id.hash(&mut hasher);
        }
        None => {
            1u8.hash(&mut hasher);
            message.exchange().hash(&mut hasher);
            message.routing_key().hash(&mut hasher);
            message.raw_body().hash(&mut hasher);
        }
    }
    hasher.finish()
}

/// Failed attempts per message, for messages the broker does not count; the oldest entries
/// are forgotten beyond [`ATTEMPTS_REMEMBERED`].
#[derive(Default)]
struct Attempts {
    /// Key → (failures, the sequence number of its entry in `order`).
    failures: HashMap<u64, (u32, u64)>,
    /// Keys in the order they were first counted, with their sequence numbers; entries whose
    /// key was forgotten (or counted again since) are skipped.
    order: VecDeque<(u64, u64)>,
    seq: u64,
}

impl Attempts {
    fn failures(&self, key: u64) -> u32 {
        self.failures.get(&key).map_or(0, |(n, _)| *n)
    }

    fn record_failure(&mut self, key: u64) {
        if let Some((n, _)) = self.failures.get_mut(&key) {
            *n = n.saturating_add(1);
            return;
        }
        self.seq = self.seq.wrapping_add(1);
        self.failures.insert(key, (1, self.seq));
        self.order.push_back((key, self.seq));
        while self.failures.len() > ATTEMPTS_REMEMBERED {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.failures.get(&old).is_some_and(|(_, s)| *s == seq) {
                self.failures.remove(&old);
            }
        }
        if self.order.len() > ATTEMPTS_REMEMBERED.saturating_mul(2) {
            let failures = &self.failures;
            self.order
                .retain(|(k, seq)| failures.get(k).is_some_and(|(_, s)| s == seq));
        }
    }

    fn forget(&mut self, key: u64) {
        self.failures.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_counted_and_forgotten() {
        let mut a = Attempts::default();
        assert_eq!(a.failures(7), 0);
        a.record_failure(7);
        a.record_failure(7);
        assert_eq!(a.failures(7), 2);
        a.forget(7);
        assert_eq!(a.failures(7), 0);
    }

    #[test]
    fn attempts_stay_bounded() {
        let mut a = Attempts::default();
        for key in 0..(ATTEMPTS_REMEMBERED as u64 + 10) {
            a.record_failure(key);
        }
        assert_eq!(a.failures.len(), ATTEMPTS_REMEMBERED);
        assert_eq!(a.failures(0), 0, "the oldest are forgotten");
        assert_eq!(a.failures(ATTEMPTS_REMEMBERED as u64 + 9), 1);
        // Forgetting and counting again does not grow the order without bound.
        for round in 0..3 * ATTEMPTS_REMEMBERED as u64 {
            a.forget(round);
            a.record_failure(round);
        }
        assert!(a.order.len() <= 2 * ATTEMPTS_REMEMBERED + 1);
    }

    #[test]
    fn the_producer_connection_is_named_after_the_workers() {
        let mut options = ConnectionOptions::new();
        options.connection_name("billing");
        let mut options = producer_options(options);
        let name = options
            .client_properties_mut()
            .get("connection_name")
            .and_then(lepus::FieldValue::as_str)
            .map(str::to_owned);
        assert_eq!(name.as_deref(), Some("billing (producer)"));
    }

    #[test]
    fn the_run_future_is_send() {
        fn send<T: Send>(_: &T) {}
        fn check(worker: Worker) {
            send(&worker.run());
        }
        let _ = check;
    }
}
