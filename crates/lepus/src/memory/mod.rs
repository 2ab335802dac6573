//! `memory://`: brokers that live inside the process, for tests and development.
//!
//! `Connection::connect("memory://")` connects to the process's default in-memory broker, and
//! `memory://NAME` to a separate one named `NAME` (tests running in parallel each take their
//! own). The broker is `lepus-memory`'s model of RabbitMQ: the connection speaks AMQP 0-9-1
//! frames to it over an in-memory stream, through the same codec, protocol core and driver as a
//! TCP connection, so every lepus API works on it unchanged. The URL takes credentials and a
//! vhost like an `amqp://` one (`memory://guest:guest@NAME/%2f`); the default broker knows the
//! user `guest`/`guest` and the vhost `/`.
//!
//! A broker lives as long as a connection to it or a [`MemoryBroker`] handle exists. The
//! handle inspects it (queue depths, unacked messages, consumers) and injects faults: closing
//! connections with a reply code, dropping them without a close, stalling them (to exercise
//! heartbeats and timeouts), refusing new ones for a while (to exercise recovery), and
//! `connection.blocked`. [`MemoryBroker::link`] opens a [`MemoryLink`]: connections made to
//! its URL reach the same broker, and it cuts or freezes them alone.
//!
//! Timers (message TTL, queue expiry, heartbeats) run on tokio's clock, so tests can use
//! paused time. Across processes `memory://` means nothing: a CLI command given `memory://`
//! runs against a broker of its own that ends with the command.
//!
//! # Limits
//!
//! What a single node in one process cannot mean: durability (durable entities and persistent
//! messages last as long as the broker), clustering, and replication (quorum and stream queues
//! behave as classic queues, minus the options RabbitMQ refuses for them; quorum queues count
//! returns in `x-delivery-count` and honour `x-delivery-limit`, stream offsets are not
//! modelled). [`MemoryBroker`]'s faults apply to every connection of a broker, a
//! [`MemoryLink`]'s to the connections made through it. `connection.blocked` is a
//! notification: the broker keeps reading publishes. A client that stops reading gets no more
//! deliveries once 256 KiB wait for it, as a socket's buffers would hold RabbitMQ back.
//!
//! ```
//! use lepus::memory::MemoryBroker;
//! use lepus::{BasicProperties, BasicPublishOptions, Connection, QueueDeclareOptions};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let broker = MemoryBroker::named("doc-memory");
//! let conn = Connection::connect(&broker.url()).await?;
//! let ch = conn.open_channel().await?;
//! ch.queue_declare("jobs", QueueDeclareOptions::default()).await?;
//! ch.basic_publish("", "jobs", BasicPublishOptions::default(), &BasicProperties::default(), "hello")
//!     .await?;
//! conn.close().await?;
//! assert_eq!(broker.queue("jobs").map(|q| q.messages_ready), Some(1));
//! # Ok::<(), lepus::Error>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use bytes::BytesMut;
use lepus_memory::Broker;
pub use lepus_memory::{BrokerConfig, ConnId, ExchangeInfo, ExchangeKind, QueueInfo};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

mod pipe;

use crate::config::ConnectionOptions;
use crate::error::{Error, Result};
use crate::transport::Streams;
use crate::ReplyCode;

/// Bytes the in-memory stream holds in each direction before a writer waits.
const PIPE: usize = 256 * 1024;

/// A name in the registry: a broker, or a link to one (see [`MemoryLink`]).
struct Named {
    broker: Weak<Shared>,
    link: Option<u64>,
}

/// The process's brokers (and links) by name; a broker no connection or handle holds is gone.
fn registry() -> MutexGuard<'static, HashMap<String, Named>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Named>>> = OnceLock::new();
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Shared {
    name: String,
    state: Mutex<State>,
}

struct State {
    broker: Broker,
    conns: HashMap<ConnId, Slot>,
    refuse_until: Option<Instant>,
    /// Wakes the broker's timer task (see [`run_timers`]).
    timer: Arc<Notify>,
    /// The timer task, started with the first connection (and again should the runtime it
    /// ran on have ended).
    timer_task: Option<tokio::task::JoinHandle<()>>,
    /// The deadline the timer task sleeps until.
    armed: Option<std::time::Instant>,
    /// Every connection is frozen (see [`MemoryBroker::stall`]).
    stalled: bool,
    /// The links opened to this broker, by id.
    links: HashMap<u64, LinkState>,
    next_link: u64,
}

/// What a [`MemoryLink`] does to its connections.
#[derive(Default)]
struct LinkState {
    frozen: bool,
    accepted: usize,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The timer task holds the broker weakly: let it see that the broker is gone.
        self.lock().timer.notify_one();
    }
}

struct Slot {
    wake: Arc<Notify>,
    /// The link the connection came through.
    link: Option<u64>,
    /// The connection neither reads nor writes while this holds true.
    frozen: watch::Sender<bool>,
    /// Drop the stream without a close frame.
    kill: bool,
    /// The client closed its side.
    eof: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl State {
    /// Whether a connection through `link` is frozen now.
    fn frozen(&self, link: Option<u64>) -> bool {
        self.stalled || link.is_some_and(|l| self.links.get(&l).is_some_and(|s| s.frozen))
    }

    /// Tells every connection whether it is frozen now.
    fn refreeze(&self) {
        for slot in self.conns.values() {
            let frozen = self.frozen(slot.link);
            slot.frozen
                .send_if_modified(|f| std::mem::replace(f, frozen) != frozen);
        }
    }

    /// Wakes the writer of every connection the broker produced output for, and the timer
    /// task when the broker's next deadline moved earlier.
    fn wake_all(&mut self) {
        while let Some(id) = self.broker.poll_woken() {
            if let Some(slot) = self.conns.get(&id) {
                slot.wake.notify_one();
            }
        }
        if let Some(next) = self.broker.poll_timeout() {
            if self.armed.is_none_or(|armed| next < armed) {
                self.armed = Some(next);
                self.timer.notify_one();
            }
        }
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// A handle on an in-process broker: inspects it and injects faults. Cloning gives another
/// handle on the same broker.
#[derive(Clone)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// The broker `memory://NAME` reaches, created with the default configuration if it does
    /// not exist.
    pub fn named(name: &str) -> Self {
        Self {
            shared: resolve(name).0,
        }
    }

    /// The process's default broker, which `memory://` reaches.
    pub fn default_broker() -> Self {
        Self::named("")
    }

    /// Creates the broker `NAME` with `config` (users, vhosts, tune values).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when a broker of that name exists already.
    pub fn create(name: &str, config: BrokerConfig) -> Result<Self> {
        let mut registry = registry();
        if registry
            .get(name)
            .and_then(|n| n.broker.upgrade())
            .is_some()
        {
            return Err(Error::InvalidArgument(format!(
                "the in-memory broker {name:?} exists already"
            )));
        }
        let shared = new_shared(name, config);
        registry.insert(name.to_owned(), Named::broker(&shared));
        Ok(Self { shared })
    }

    /// The URL that connects to this broker.
    pub fn url(&self) -> String {
        format!("memory://{}", self.shared.name)
    }

    /// The queue `name` of vhost `/`.
    pub fn queue(&self, name: &str) -> Option<QueueInfo> {
        self.shared.lock().broker.queue("/", name)
    }

    /// The queue `name` of `vhost`.
    pub fn queue_in(&self, vhost: &str, name: &str) -> Option<QueueInfo> {
        self.shared.lock().broker.queue(vhost, name)
    }

    /// Every queue of `vhost`, by name.
    pub fn queues(&self, vhost: &str) -> Vec<QueueInfo> {
        self.shared.lock().broker.queues(vhost)
    }

    /// The exchange `name` of vhost `/`.
    pub fn exchange(&self, name: &str) -> Option<ExchangeInfo> {
        self.shared.lock().broker.exchange("/", name)
    }

    /// How many connections are attached.
    pub fn connection_count(&self) -> usize {
        self.shared.lock().broker.connections().len()
    }

    /// Closes every connection from the broker's side with `code` and `text`, as an operator's
    /// `rabbitmqctl close_connection` does (320 CONNECTION_FORCED).
    pub fn close_connections(&self, code: ReplyCode, text: &str) {
        let mut state = self.shared.lock();
        for id in state.broker.connections() {
            state.broker.close_connection(id, code, text, now());
        }
        state.wake_all();
    }

    /// Drops every connection's stream without a close frame, as a lost link would.
    pub fn drop_connections(&self) {
        let mut state = self.shared.lock();
        for slot in state.conns.values_mut() {
            slot.kill = true;
            slot.wake.notify_one();
        }
    }

    /// Stops (`true`) or resumes (`false`) reading from and writing to every connection, so
    /// the broker looks hung: clients see their heartbeats and timeouts fire.
    pub fn stall(&self, stalled: bool) {
        let mut state = self.shared.lock();
        state.stalled = stalled;
        state.refreeze();
    }

    /// A link to this broker: connections made to [`MemoryLink::url`] reach this broker, and
    /// the link can cut or freeze them alone, as a network between one client and the broker
    /// would, while other connections go on.
    pub fn link(&self) -> MemoryLink {
        let id = {
            let mut state = self.shared.lock();
            state.next_link += 1;
            let id = state.next_link;
            state.links.insert(id, LinkState::default());
            id
        };
        let name = format!("{}~link-{id}", self.shared.name);
        registry().insert(
            name.clone(),
            Named {
                broker: Arc::downgrade(&self.shared),
                link: Some(id),
            },
        );
        MemoryLink {
            shared: Arc::clone(&self.shared),
            id,
            name,
        }
    }

    /// Refuses new connections for `period` (as a broker that is down would), to exercise
    /// reconnection and failover.
    pub fn refuse_connections(&self, period: Duration) {
        self.shared.lock().refuse_until = Some(Instant::now() + period);
    }

    /// Sends `connection.blocked` with `reason` to every connection, as RabbitMQ does under a
    /// resource alarm; [`unblock`](Self::unblock) ends it.
    pub fn block(&self, reason: &str) {
        let mut state = self.shared.lock();
        state.broker.block(reason);
        state.wake_all();
    }

    /// Sends `connection.unblocked` after [`block`](Self::block).
    pub fn unblock(&self) {
        let mut state = self.shared.lock();
        state.broker.unblock();
        state.wake_all();
    }
}

/// A network link between clients and an in-memory broker (see [`MemoryBroker::link`]): what a
/// test proxy is to a TCP broker. Dropped, it stops taking new connections.
pub struct MemoryLink {
    shared: Arc<Shared>,
    id: u64,
    name: String,
}

impl std::fmt::Debug for MemoryLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLink")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl MemoryLink {
    /// The URL that connects to the broker through this link.
    pub fn url(&self) -> String {
        format!("memory://{}", self.name)
    }

    /// The name to connect to (the URL's host part).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ends every connection made through the link, without a close frame, as a lost network
    /// would; later connections through it work.
    pub fn cut(&self) {
        let mut state = self.shared.lock();
        for slot in state.conns.values_mut() {
            if slot.link == Some(self.id) {
                slot.kill = true;
                slot.wake.notify_one();
            }
        }
    }

    /// Stops passing bytes either way on the link's connections (new ones included) until
    /// [`thaw`](Self::thaw): a network that went silent.
    pub fn freeze(&self) {
        self.set_frozen(true);
    }

    /// Passes bytes again after [`freeze`](Self::freeze).
    pub fn thaw(&self) {
        self.set_frozen(false);
    }

    fn set_frozen(&self, frozen: bool) {
        let mut state = self.shared.lock();
        if let Some(link) = state.links.get_mut(&self.id) {
            link.frozen = frozen;
        }
        state.refreeze();
    }

    /// How many connections were made through the link.
    pub fn accepted(&self) -> usize {
        self.shared
            .lock()
            .links
            .get(&self.id)
            .map_or(0, |l| l.accepted)
    }
}

impl Drop for MemoryLink {
    fn drop(&mut self) {
        registry().remove(&self.name);
        let mut state = self.shared.lock();
        if let Some(link) = state.links.get_mut(&self.id) {
            link.frozen = false;
        }
        state.refreeze();
    }
}

impl Named {
    fn broker(shared: &Arc<Shared>) -> Self {
        Self {
            broker: Arc::downgrade(shared),
            link: None,
        }
    }
}

/// The broker (and link) `name` reaches, creating the broker with the default configuration
/// when no broker has that name.
fn resolve(name: &str) -> (Arc<Shared>, Option<u64>) {
    let mut registry = registry();
    if let Some(named) = registry.get(name) {
        if let Some(shared) = named.broker.upgrade() {
            return (shared, named.link);
        }
    }
    let shared = new_shared(name, BrokerConfig::default());
    registry.insert(name.to_owned(), Named::broker(&shared));
    (shared, None)
}

fn new_shared(name: &str, config: BrokerConfig) -> Arc<Shared> {
    Arc::new(Shared {
        name: name.to_owned(),
        state: Mutex::new(State {
            broker: Broker::new(config, now(), std::time::SystemTime::now()),
            conns: HashMap::new(),
            refuse_until: None,
            timer: Arc::new(Notify::new()),
            timer_task: None,
            armed: None,
            stalled: false,
            links: HashMap::new(),
            next_link: 0,
        }),
    })
}

/// Opens a stream to the in-memory broker `options` name and starts serving it.
pub(crate) async fn connect(options: &ConnectionOptions) -> Result<Streams> {
    let (shared, link) = resolve(&options.host);
    let (client_read, client_write, server) = pipe::pipe(PIPE);
    let server = Arc::new(server);
    let (id, wake, frozen) = {
        let mut state = shared.lock();
        if state.refuse_until.is_some_and(|t| Instant::now() < t) {
            return Err(Error::Connect {
                addr: format!("memory://{}", shared.name),
                source: Arc::new(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "the in-memory broker refuses connections for now",
                )),
            });
        }
        if state
            .timer_task
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished)
        {
            let timer = Arc::clone(&state.timer);
            state.timer_task = Some(tokio::spawn(run_timers(Arc::downgrade(&shared), timer)));
        }
        let id = state.broker.open_connection(now());
        let wake = Arc::new(Notify::new());
        let frozen = watch::Sender::new(state.frozen(link));
        let receiver = frozen.subscribe();
        if let Some(l) = link.and_then(|l| state.links.get_mut(&l)) {
            l.accepted += 1;
        }
        state.conns.insert(
            id,
            Slot {
                wake: Arc::clone(&wake),
                link,
                frozen,
                kill: false,
                eof: false,
            },
        );
        (id, wake, receiver)
    };
    let reader = tokio::spawn(serve_input(
        Arc::clone(&shared),
        id,
        Arc::clone(&server),
        frozen.clone(),
    ));
    tokio::spawn(serve_output(
        shared,
        id,
        server,
        wake,
        frozen,
        reader.abort_handle(),
    ));
    Ok((Box::new(client_read), Box::new(client_write), None))
}

/// Waits while the connection is frozen.
async fn unfrozen(rx: &mut watch::Receiver<bool>) {
    while *rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Reads what the client sends and hands it to the broker.
async fn serve_input(
    shared: Arc<Shared>,
    id: ConnId,
    pipe: Arc<pipe::BrokerSide>,
    mut frozen: watch::Receiver<bool>,
) {
    // What the client sent; a partial frame waits here for the rest.
    let mut buf = BytesMut::new();
    loop {
        unfrozen(&mut frozen).await;
        match pipe.take().await {
            Some(chunk) => {
                if buf.is_empty() {
                    buf = chunk;
                } else {
                    buf.extend_from_slice(&chunk);
                }
                unfrozen(&mut frozen).await;
                let mut state = shared.lock();
                state.broker.handle_input(id, now(), &mut buf);
                state.wake_all();
            }
            None => break,
        }
    }
    let mut state = shared.lock();
    if let Some(slot) = state.conns.get_mut(&id) {
        slot.eof = true;
        slot.wake.notify_one();
    }
}

/// Writes what the broker has for the client, and ends the
/// connection when the broker or the client closes it.
async fn serve_output(
    shared: Arc<Shared>,
    id: ConnId,
    pipe: Arc<pipe::BrokerSide>,
    wake: Arc<Notify>,
    mut frozen: watch::Receiver<bool>,
    reader: tokio::task::AbortHandle,
) {
    let guard = Ending {
        shared: Arc::clone(&shared),
        id,
        reader,
    };
    loop {
        let (out, close) = {
            let mut state = shared.lock();
            let (kill, eof) = state
                .conns
                .get(&id)
                .map_or((true, true), |s| (s.kill, s.eof));
            if kill || eof {
                break;
            }
            if *frozen.borrow_and_update() {
                (None, false)
            } else {
                let out = state.broker.take_output(id, now());
                (out, state.broker.wants_close(id))
            }
        };
        if let Some(out) = out {
            if pipe.send(&out).await.is_err() {
                break;
            }
            continue;
        }
        if close {
            break;
        }
        tokio::select! {
            () = wake.notified() => {}
            _ = frozen.changed() => {}
        }
    }
    pipe.close();
    drop(guard);
}

/// Ends a connection in the broker when its task ends, also when the task is dropped with
/// its runtime: the broker then releases what the connection held.
struct Ending {
    shared: Arc<Shared>,
    id: ConnId,
    reader: tokio::task::AbortHandle,
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.reader.abort();
        let mut state = self.shared.lock();
        state.conns.remove(&self.id);
        state.broker.connection_lost(self.id, now());
        state.wake_all();
    }
}

/// Runs the broker's timers (message TTL, queue expiry, heartbeats) until the broker is gone.
async fn run_timers(broker: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let deadline = {
            let Some(shared) = broker.upgrade() else {
                return;
            };
            let mut state = shared.lock();
            let deadline = state.broker.poll_timeout();
            state.armed = deadline;
            deadline
        };
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = wake.notified() => {}
            () = sleep => {
                let Some(shared) = broker.upgrade() else {
                    return;
                };
                let mut state = shared.lock();
                state.broker.handle_timeout(now());
                state.wake_all();
            }
        }
    }
}
