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
//! `connection.blocked`.
//!
//! Timers (message TTL, queue expiry, heartbeats) run on tokio's clock, so tests can use
//! paused time. Across processes `memory://` means nothing: a CLI command given `memory://`
//! runs against a broker of its own that ends with the command.
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
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::config::ConnectionOptions;
use crate::error::{Error, Result};
use crate::transport::Streams;
use crate::ReplyCode;

/// Bytes the in-memory stream holds in each direction before a writer waits.
const PIPE: usize = 256 * 1024;

/// The process's brokers by name; a broker no connection or handle holds is gone.
fn registry() -> MutexGuard<'static, HashMap<String, Weak<Shared>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<Shared>>>> = OnceLock::new();
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Shared {
    name: String,
    state: Mutex<State>,
    /// Stalled connections neither read nor write (see [`MemoryBroker::stall`]).
    stalled: watch::Sender<bool>,
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
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The timer task holds the broker weakly: let it see that the broker is gone.
        self.lock().timer.notify_one();
    }
}

struct Slot {
    wake: Arc<Notify>,
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
        Self::get_or_create(name, None)
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
        if registry.get(name).and_then(Weak::upgrade).is_some() {
            return Err(Error::InvalidArgument(format!(
                "the in-memory broker {name:?} exists already"
            )));
        }
        let shared = new_shared(name, config);
        registry.insert(name.to_owned(), Arc::downgrade(&shared));
        Ok(Self { shared })
    }

    fn get_or_create(name: &str, config: Option<BrokerConfig>) -> Self {
        let mut registry = registry();
        if let Some(shared) = registry.get(name).and_then(Weak::upgrade) {
            return Self { shared };
        }
        let shared = new_shared(name, config.unwrap_or_default());
        registry.insert(name.to_owned(), Arc::downgrade(&shared));
        Self { shared }
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
        self.shared.stalled.send_replace(stalled);
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
        }),
        stalled: watch::Sender::new(false),
    })
}

/// Opens a stream to the in-memory broker `options` name and starts serving it.
pub(crate) async fn connect(options: &ConnectionOptions) -> Result<Streams> {
    let handle = MemoryBroker::named(&options.host);
    let shared = handle.shared;
    let (client, server) = tokio::io::duplex(PIPE);
    let (id, wake) = {
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
        state.conns.insert(
            id,
            Slot {
                wake: Arc::clone(&wake),
                kill: false,
                eof: false,
            },
        );
        (id, wake)
    };
    let (read, write) = tokio::io::split(server);
    let reader = tokio::spawn(serve_input(Arc::clone(&shared), id, read));
    tokio::spawn(serve_output(shared, id, write, wake, reader.abort_handle()));
    let (r, w) = tokio::io::split(client);
    Ok((Box::new(r), Box::new(w), None))
}

/// Waits while the broker is stalled.
async fn unstalled(rx: &mut watch::Receiver<bool>) {
    while *rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Reads what the client sends and hands it to the broker.
async fn serve_input(shared: Arc<Shared>, id: ConnId, mut read: tokio::io::ReadHalf<DuplexStream>) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut stalled = shared.stalled.subscribe();
    loop {
        unstalled(&mut stalled).await;
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match read.read_buf(&mut buf).await {
            Ok(n) if n > 0 => {
                unstalled(&mut stalled).await;
                let mut state = shared.lock();
                state.broker.handle_input(id, now(), &mut buf);
                state.wake_all();
            }
            _ => break,
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
    mut write: tokio::io::WriteHalf<DuplexStream>,
    wake: Arc<Notify>,
    reader: tokio::task::AbortHandle,
) {
    let mut stalled = shared.stalled.subscribe();
    let guard = Ending {
        shared: Arc::clone(&shared),
        id,
        reader,
    };
    loop {
        unstalled(&mut stalled).await;
        let (out, close) = {
            let mut state = shared.lock();
            let (kill, eof) = state
                .conns
                .get(&id)
                .map_or((true, true), |s| (s.kill, s.eof));
            if kill || eof {
                break;
            }
            let out = state.broker.take_output(id, now());
            (out, state.broker.wants_close(id))
        };
        if let Some(out) = out {
            if write.write_all(&out).await.is_err() {
                break;
            }
            continue;
        }
        if close {
            break;
        }
        wake.notified().await;
    }
    let _ = write.shutdown().await;
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
