//! A local TCP proxy in front of the broker that a test can freeze, to play a network that
//! stops delivering bytes (a dead peer, a stalled link), or pace, to play a broker that sends
//! in small batches or a link that drains slowly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy; dropped, it stops accepting.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    /// Every byte the clients sent that the proxy passed on, in order.
    sent_upstream: Arc<std::sync::Mutex<Vec<u8>>>,
    /// Counts cuts: a connection ends when the count passes the one at its start.
    cut: tokio::sync::watch::Sender<u64>,
    /// Connections accepted so far.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    /// On `memory://`, the proxy is a link to the in-memory broker, which cuts and freezes
    /// the connections made through it the same way.
    link: Option<lepus::memory::MemoryLink>,
}

/// How the proxy passes on what the broker sends: at most `chunk` bytes per write, with a
/// pause of `gap` after each.
#[derive(Clone, Copy)]
pub(crate) struct Pace {
    pub(crate) chunk: usize,
    pub(crate) gap: Duration,
}

impl Proxy {
    /// Forwards every accepted connection to `upstream` until frozen.
    pub(crate) async fn start(upstream: SocketAddr) -> Self {
        Self::start_paced(upstream, None).await
    }

    /// Like [`start`](Self::start), passing the broker's bytes on at `pace` if given.
    pub(crate) async fn start_paced(upstream: SocketAddr, pace: Option<Pace>) -> Self {
        Self::start_with(upstream, None, pace).await
    }

    /// Like [`start`](Self::start), passing the client's bytes on at `up` and the broker's at
    /// `down`, where given.
    pub(crate) async fn start_with(
        upstream: SocketAddr,
        up: Option<Pace>,
        down: Option<Pace>,
    ) -> Self {
        Self::listen("127.0.0.1:0".parse().unwrap(), upstream, up, down).await
    }

    /// Like [`start`](Self::start), listening on `listen`.
    pub(crate) async fn start_at(listen: SocketAddr, upstream: SocketAddr) -> Self {
        Self::listen(listen, upstream, None, None).await
    }

    async fn listen(
        listen: SocketAddr,
        upstream: SocketAddr,
        up: Option<Pace>,
        down: Option<Pace>,
    ) -> Self {
        if let Some(broker) = memory_broker() {
            assert!(
                up.is_none() && down.is_none(),
                "a memory:// link cannot pace bytes"
            );
            return Self {
                addr: listen,
                frozen: Arc::new(AtomicBool::new(false)),
                sent_upstream: Arc::default(),
                cut: tokio::sync::watch::Sender::new(0),
                accepted: Arc::default(),
                task: tokio::spawn(async {}),
                link: Some(broker.link()),
            };
        }
        let listener = TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&frozen);
        let sent_upstream = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = Arc::clone(&sent_upstream);
        let cut = tokio::sync::watch::Sender::new(0u64);
        let cut_rx = cut.subscribe();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let born = *cut_rx.borrow();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (from, to, pace, record) in [
                    (cr, sw, up, Some(Arc::clone(&record))),
                    (sr, cw, down, None),
                ] {
                    let mut cut = cut_rx.clone();
                    let pumping = pump(from, to, Arc::clone(&flag), pace, record);
                    tokio::spawn(async move {
                        tokio::select! {
                            () = pumping => {}
                            _ = cut.wait_for(|cuts| *cuts != born) => {}
                        }
                    });
                }
            }
        });
        Self {
            addr,
            frozen,
            sent_upstream,
            cut,
            accepted,
            task,
            link: None,
        }
    }

    /// Points `options` at the proxy.
    pub(crate) fn route(&self, options: &mut lepus::ConnectionOptions) {
        match &self.link {
            Some(link) => options.address(link.name(), 0),
            None => options.address(self.addr.ip().to_string(), self.addr.port()),
        };
    }

    /// Closes every proxied connection at once; bytes not yet forwarded are lost. Connections
    /// accepted later are forwarded as usual.
    pub(crate) fn cut(&self) {
        if let Some(link) = &self.link {
            link.cut();
        }
        self.cut.send_modify(|cuts| *cuts += 1);
    }

    /// How many connections the proxy accepted so far.
    pub(crate) fn accepted(&self) -> usize {
        match &self.link {
            Some(link) => link.accepted(),
            None => self.accepted.load(Ordering::SeqCst),
        }
    }

    /// Stops forwarding in both directions; sockets stay open, bytes are held back.
    pub(crate) fn freeze(&self) {
        if let Some(link) = &self.link {
            link.freeze();
        }
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Every byte clients sent through the proxy to the broker so far.
    pub(crate) fn sent_upstream(&self) -> Vec<u8> {
        assert!(self.link.is_none(), "a memory:// link records no bytes");
        self.sent_upstream.lock().unwrap().clone()
    }

    /// Forwards again what was held back, and everything after it.
    pub(crate) fn thaw(&self) {
        if let Some(link) = &self.link {
            link.thaw();
        }
        self.frozen.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
    pace: Option<Pace>,
    record: Option<Arc<std::sync::Mutex<Vec<u8>>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let want = pace.map_or(buf.len(), |p| p.chunk.min(buf.len()));
        let Some(space) = buf.get_mut(..want) else {
            return;
        };
        let n = match from.read(space).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            // Hold the bytes, keep the socket open: the peer sees silence, not a close.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let Some(chunk) = buf.get(..n) else { return };
        if to.write_all(chunk).await.is_err() {
            return;
        }
        if let Some(record) = &record {
            record.lock().unwrap().extend_from_slice(chunk);
        }
        if let Some(pace) = pace {
            tokio::time::sleep(pace.gap).await;
        }
    }
}

/// Connects to the broker through `proxy`, with the test options adjusted by `configure`.
pub(crate) async fn through(
    proxy: &Proxy,
    configure: impl FnOnce(&mut lepus::ConnectionOptions),
) -> lepus::Connection {
    let mut o = super::options();
    proxy.route(&mut o);
    configure(&mut o);
    lepus::Connection::connect_with(o).await.unwrap()
}

/// A listener that accepts connections and never answers, for handshake timeouts.
pub(crate) async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

/// The broker's address, from the test URL.
pub(crate) fn broker_addr() -> SocketAddr {
    if memory_broker().is_some() {
        // A proxy on memory:// is a link to the broker, not a TCP forwarder.
        return "127.0.0.1:0".parse().unwrap();
    }
    let uri = lepus::uri::AmqpUri::parse(&super::url()).unwrap();
    let host = if uri.host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        uri.host
    };
    format!("{host}:{}", uri.port).parse().unwrap()
}

/// Whether `test` must be skipped because the tests run against `memory://`: it exercises
/// TCP-level behaviour (through this proxy, over a caller's socket) or what only RabbitMQ
/// announces, which an in-process broker does not have. Says so on stderr.
pub(crate) fn rabbitmq_only(test: &str) -> bool {
    let memory = super::url().starts_with("memory:");
    if memory {
        eprintln!("{test}: RabbitMQ only (TCP-level behaviour), skipped on memory://");
    }
    memory
}

/// The in-memory broker the tests run against, when the test URL is `memory://`.
fn memory_broker() -> Option<lepus::memory::MemoryBroker> {
    let uri = lepus::uri::AmqpUri::parse(&super::url()).ok()?;
    (uri.scheme == lepus::uri::Scheme::Memory)
        .then(|| lepus::memory::MemoryBroker::named(&uri.host))
}
