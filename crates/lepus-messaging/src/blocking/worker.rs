//! The [`Worker`] for plain threads: handlers on a pool of std threads, no async runtime in
//! sight; documented on [`Worker`].

use std::fmt;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::future::BoxFuture;
use lepus::ConnectionOptions;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, oneshot};

use super::{Connection, ConsumerBuilder, Producer};
use crate::consumer::HandlerErrorPolicy;
use crate::entity::Queue;
use crate::error::Result;
use crate::message::Message;
use crate::worker::{outcome_of, producer_options, stopped, Runner};
use crate::{HandlerOutcome, ShutdownHandle, WorkerEvent};

/// Handles one message on a worker thread: a closure `Fn(Message) -> Result<(), E>`, or a
/// type of one's own. `Ok` acks the message; an error or a panic settles it per the worker's
/// [`HandlerErrorPolicy`] (unless the handler settled it itself).
pub trait Handler: Send + Sync + 'static {
    /// Why a message failed; logged and reported.
    type Error: fmt::Display;

    /// Handles `message`.
    fn handle(&self, message: Message) -> std::result::Result<(), Self::Error>;
}

impl<F, E> Handler for F
where
    F: Fn(Message) -> std::result::Result<(), E> + Send + Sync + 'static,
    E: fmt::Display,
{
    type Error = E;

    fn handle(&self, message: Message) -> std::result::Result<(), Self::Error> {
        self(message)
    }
}

/// Handles one message decoded into `T` on a worker thread: a closure `Fn(T, Message) ->
/// Result<(), E>`, or a type of one's own. A body that does not decode is settled by the
/// consumer's [`DecodeErrorPolicy`](crate::DecodeErrorPolicy).
pub trait TypedHandler<T>: Send + Sync + 'static {
    /// Why a message failed; logged and reported.
    type Error: fmt::Display;

    /// Handles `value`, decoded from `message`.
    fn handle(&self, value: T, message: Message) -> std::result::Result<(), Self::Error>;
}

impl<T, F, E> TypedHandler<T> for F
where
    F: Fn(T, Message) -> std::result::Result<(), E> + Send + Sync + 'static,
    E: fmt::Display,
{
    type Error = E;

    fn handle(&self, value: T, message: Message) -> std::result::Result<(), Self::Error> {
        self(value, message)
    }
}

/// Builds a blocking [`Worker`] (see [`crate::WorkerBuilder`] for each setting).
#[must_use = "call build() to get the worker"]
pub struct WorkerBuilder {
    conn: Connection,
    inner: crate::WorkerBuilder,
    pool: Arc<Pool>,
    producer: WorkerProducer,
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl WorkerBuilder {
    fn new(conn: Connection, options: ConnectionOptions) -> Self {
        let inner = crate::Worker::builder(conn.as_async().clone(), options.clone());
        let producer = WorkerProducer {
            inner: Arc::new(ProducerSlot {
                options: producer_options(options),
                registry: conn.registry().clone(),
                opened: Mutex::new(None),
                closed: AtomicBool::new(false),
            }),
        };
        Self {
            conn,
            inner,
            pool: Arc::new(Pool::default()),
            producer,
        }
    }

    /// The connection the worker consumes on.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// A consumer of `queues` on the worker's connection, to set up and pass to
    /// [`handle`](Self::handle). Its prefetch is replaced by the worker's concurrency.
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

    /// A handle that stops the worker, from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.inner.shutdown_handle()
    }

    /// How many handler threads run (default 1); each consumer's prefetch is set to it.
    pub fn concurrency(mut self, threads: u16) -> Self {
        self.inner = self.inner.concurrency(threads);
        self
    }

    /// What a failed or panicking handler's message gets (see
    /// [`crate::WorkerBuilder::on_error`]).
    pub fn on_error(mut self, policy: HandlerErrorPolicy) -> Self {
        self.inner = self.inner.on_error(policy);
        self
    }

    /// The failed attempt that rejects a message instead of requeueing it (see
    /// [`crate::WorkerBuilder::max_attempts`]).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.inner = self.inner.max_attempts(attempts);
        self
    }

    /// How long a stop waits for the handlers in progress (default 30 s). A handler still
    /// running then is abandoned (its message requeued); its thread is left to finish.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.inner = self.inner.shutdown_timeout(timeout);
        self
    }

    /// Whether the consumer connection stays open when the worker stops (default `false`).
    pub fn keep_connection(mut self, keep: bool) -> Self {
        self.inner = self.inner.keep_connection(keep);
        self
    }

    /// Whether SIGTERM and Ctrl-C stop the worker gracefully (default `false`).
    pub fn stop_on_signals(mut self, on: bool) -> Self {
        self.inner = self.inner.stop_on_signals(on);
        self
    }

    /// Runs `handler` on a worker thread for each message of `consumer`.
    pub fn handle(mut self, consumer: ConsumerBuilder, handler: impl Handler) -> Self {
        let runner = ThreadRunner {
            pool: Arc::clone(&self.pool),
            handler: Arc::new(handler),
        };
        self.inner = self.inner.with_runner(consumer.inner, Arc::new(runner));
        self
    }

    /// Runs `handler` on a worker thread for each message of `consumer`, decoded into `T`
    /// first.
    pub fn handle_typed<T, H>(mut self, consumer: ConsumerBuilder, handler: H) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        H: TypedHandler<T>,
    {
        let runner = TypedThreadRunner::<T, H> {
            pool: Arc::clone(&self.pool),
            handler: Arc::new(handler),
            _value: PhantomData,
        };
        self.inner = self.inner.with_runner(consumer.inner, Arc::new(runner));
        self
    }

    /// Makes the worker; nothing is sent and no thread starts until [`Worker::run`].
    ///
    /// # Errors
    ///
    /// As [`crate::WorkerBuilder::build`].
    pub fn build(self) -> Result<Worker> {
        Ok(Worker {
            conn: self.conn,
            inner: self.inner.build()?,
            pool: self.pool,
            producer: self.producer,
        })
    }
}

/// Consumers with handlers on a pool of std threads, run until asked to stop: no async runtime
/// in sight.
/// sight.
///
/// The behaviour is the async [`crate::Worker`]'s, to the letter (it runs the same engine on
/// the connection's I/O runtime): concurrency and prefetch, settlement by the handler's
/// result, caught panics, bounded attempts, recovery underneath, events, graceful stop and the
/// lazily opened producer connection. Handlers run on [`concurrency`](WorkerBuilder::concurrency)
/// threads of their own, outside any runtime, so they may use the blocking API themselves.
///
/// # Examples
///
/// ```
/// use lepus_messaging::blocking::Worker;
/// use lepus_messaging::Queue;
///
/// # fn main() -> lepus_messaging::Result<()> {
/// let builder = Worker::connect("memory://")?;
/// # let q = Queue::new("jobs");
/// # let job = serde_json::json!({"job": 1});
/// # builder.connection().producer().build()?.publish(&job).to_queue(&q).declare(q.clone()).send()?;
/// # let stop_after_one = builder.shutdown_handle(); // so that `run` returns
/// let jobs = builder.consumer([Queue::new("jobs")]);
/// let producer = builder.producer();
/// let worker = builder
///     .concurrency(4) // four handler threads, prefetch 4
///     .stop_on_signals(true)
///     .handle_typed(jobs, move |job: serde_json::Value, _message| {
///         println!("{job}");
/// #       stop_after_one.shutdown();
///         producer.producer()?.publish(&job).routing_key("jobs.done").send()?;
///         Ok::<_, lepus_messaging::Error>(()) // acked
///     })
///     .build()?;
/// let stop = worker.shutdown_handle(); // stop.shutdown() from any thread
/// # drop(stop);
/// worker.run()?; // blocks until stopped
/// # Ok(()) }
/// ```
pub struct Worker {
    conn: Connection,
    inner: crate::Worker,
    pool: Arc<Pool>,
    producer: WorkerProducer,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Worker {
    /// Connects to the broker at `uri` (starting the connection's I/O thread) and starts a
    /// builder; the producer connection is opened with the same options when first used.
    ///
    /// # Errors
    ///
    /// When the URI is bad or the connection cannot be opened.
    #[track_caller]
    pub fn connect(uri: &str) -> Result<WorkerBuilder> {
        Self::connect_with(ConnectionOptions::from_uri(uri)?)
    }

    /// Connects with `options` and starts a builder.
    ///
    /// # Errors
    ///
    /// When the connection cannot be opened.
    #[track_caller]
    pub fn connect_with(options: ConnectionOptions) -> Result<WorkerBuilder> {
        let client = lepus::blocking::Connection::connect_with(options.clone())?;
        Ok(WorkerBuilder::new(Connection::new(client), options))
    }

    /// Starts a builder on a connection of one's own; `options` are what the producer
    /// connection is opened with.
    pub fn builder(conn: Connection, options: ConnectionOptions) -> WorkerBuilder {
        WorkerBuilder::new(conn, options)
    }

    /// The connection it consumes on.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The producer for handlers (see [`WorkerProducer`]).
    pub fn producer(&self) -> WorkerProducer {
        self.producer.clone()
    }

    /// A handle that stops the worker, from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.inner.shutdown_handle()
    }

    /// What happens from now on (see [`crate::Worker::events`]).
    pub fn events(&self) -> WorkerEvents {
        WorkerEvents {
            rx: self.inner.events(),
        }
    }

    /// Starts the handler threads, subscribes the consumers and handles messages until asked
    /// to stop, blocking the calling thread; then stops gracefully (see
    /// [`crate::Worker::run`]) and joins the handler threads (but those of handlers abandoned
    /// at the deadline, which are left to finish).
    ///
    /// # Errors
    ///
    /// As [`crate::Worker::run`]; [`lepus::Error::Io`] when a thread cannot be started.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime, as every blocking call.
    #[track_caller]
    pub fn run(self) -> Result<()> {
        let Self {
            conn,
            inner,
            pool,
            producer,
        } = self;
        let threads = pool.start(inner.engine.settings.concurrency);
        let keep = inner.engine.settings.keep_connection;
        let result = match threads {
            Ok(threads) => {
                let result = conn.client().block_on(inner.engine.run());
                pool.stop();
                if matches!(result, Ok(summary) if summary.abandoned == 0) {
                    for thread in threads {
                        let _ = thread.join();
                    }
                }
                result.map(|_| ())
            }
            Err(e) => {
                pool.stop();
                Err(e)
            }
        };
        producer.close();
        let closed = if keep { Ok(()) } else { conn.close() };
        result?;
        closed
    }
}

/// The events of a blocking [`Worker`] (see [`WorkerEvent`]), for plain threads. An
/// [`Iterator`] that ends when the worker is gone.
#[derive(Debug)]
pub struct WorkerEvents {
    rx: broadcast::Receiver<WorkerEvent>,
}

impl WorkerEvents {
    /// The next event, blocking; `None` when the worker is gone. Events a slow reader missed
    /// (more than 1,024 behind) are skipped.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime.
    pub fn recv(&mut self) -> Option<WorkerEvent> {
        loop {
            match self.rx.blocking_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if there is one already.
    pub fn try_recv(&mut self) -> Option<WorkerEvent> {
        loop {
            match self.rx.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Iterator for WorkerEvents {
    type Item = WorkerEvent;

    fn next(&mut self) -> Option<Self::Item> {
        self.recv()
    }
}

/// The producer of a blocking [`Worker`]'s handlers: on a second connection (with an I/O
/// thread of its own), opened on first use with the worker's options (see
/// [`crate::WorkerProducer`]). Closed when the worker stops. Cheap to clone.
#[derive(Clone)]
pub struct WorkerProducer {
    inner: Arc<ProducerSlot>,
}

struct ProducerSlot {
    options: ConnectionOptions,
    registry: crate::Registry,
    opened: Mutex<Option<(Connection, Producer)>>,
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
    /// A producer with the default settings on the producer connection, opening it on first
    /// use. Clones share one producer.
    ///
    /// # Errors
    ///
    /// When the connection cannot be opened, or the worker has stopped.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime.
    #[track_caller]
    pub fn producer(&self) -> Result<Producer> {
        Ok(self.open()?.1)
    }

    /// The producer connection, opening it on first use.
    ///
    /// # Errors
    ///
    /// As [`producer`](Self::producer).
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime.
    #[track_caller]
    pub fn connection(&self) -> Result<Connection> {
        Ok(self.open()?.0)
    }

    /// Whether the producer connection was opened.
    pub fn is_connected(&self) -> bool {
        self.slot().is_some()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(Connection, Producer)>> {
        self.inner
            .opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    #[track_caller]
    fn open(&self) -> Result<(Connection, Producer)> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(stopped());
        }
        // Held while connecting, so that one connection is opened.
        let mut slot = self.slot();
        if let Some(opened) = slot.as_ref() {
            return Ok(opened.clone());
        }
        let client = lepus::blocking::Connection::connect_with(self.inner.options.clone())?;
        let conn = Connection::with_registry(client, self.inner.registry.clone());
        let producer = conn.producer().build()?;
        tracing::info!("opened the producer connection");
        *slot = Some((conn.clone(), producer.clone()));
        Ok((conn, producer))
    }

    /// Closes the producer connection, if it was opened; later uses fail.
    fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let opened = self.slot().take();
        if let Some((conn, _)) = opened {
            if let Err(e) = conn.close() {
                tracing::warn!(error = %e, "closing the producer connection failed");
            }
        }
    }
}

/// A job for a handler thread.
type Job = Box<dyn FnOnce() + Send>;

/// The handler threads, fed through a channel; started by [`Worker::run`].
#[derive(Default)]
struct Pool {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

impl Pool {
    /// Starts `threads` handler threads.
    fn start(&self, threads: u16) -> Result<Vec<JoinHandle<()>>> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::with_capacity(usize::from(threads));
        for n in 0..threads {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("lepus-worker-{n}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next job.
                    let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => return Err(lepus::Error::Io(Arc::new(e)).into()),
            }
        }
        *self.jobs.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
        Ok(handles)
    }

    /// Lets the threads end once the jobs they have are done.
    fn stop(&self) {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Runs `call` on a handler thread; its outcome, caught panics included.
    fn run(
        &self,
        call: impl FnOnce() -> HandlerOutcome + Send + 'static,
    ) -> BoxFuture<'static, HandlerOutcome> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(call());
        });
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|jobs| jobs.send(job).is_ok());
        Box::pin(async move {
            if sent != Some(true) {
                return HandlerOutcome::Failed("the worker's handler threads are gone".to_owned());
            }
            rx.await.unwrap_or_else(|_| {
                HandlerOutcome::Failed("the handler thread ended without an outcome".to_owned())
            })
        })
    }
}

struct ThreadRunner<H> {
    pool: Arc<Pool>,
    handler: Arc<H>,
}

impl<H: Handler> Runner for ThreadRunner<H> {
    fn start(&self, message: Message) -> Result<BoxFuture<'static, HandlerOutcome>> {
        let handler = Arc::clone(&self.handler);
        Ok(self
            .pool
            .run(move || outcome_of(catch_unwind(AssertUnwindSafe(|| handler.handle(message))))))
    }
}

struct TypedThreadRunner<T, H> {
    pool: Arc<Pool>,
    handler: Arc<H>,
    _value: PhantomData<fn() -> T>,
}

impl<T, H> Runner for TypedThreadRunner<T, H>
where
    T: DeserializeOwned + Send + 'static,
    H: TypedHandler<T>,
{
    fn start(&self, message: Message) -> Result<BoxFuture<'static, HandlerOutcome>> {
        let value = message.decode::<T>()?;
        let handler = Arc::clone(&self.handler);
        Ok(self.pool.run(move || {
            outcome_of(catch_unwind(AssertUnwindSafe(|| {
                handler.handle(value, message)
            })))
        }))
    }
}
