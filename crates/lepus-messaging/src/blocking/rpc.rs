//! Blocking [`RpcClient`] and [`RpcServer`] (see [`crate::rpc`]).

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use lepus::DeliveryMode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Connection;
use crate::consumer::{DecodeErrorPolicy, HandlerErrorPolicy};
use crate::entity::{Exchange, Queue};
use crate::error::Result;
use crate::message::Message;
use crate::rpc::{outcome_of, Route};
use crate::serializer::Accept;

/// How often a blocking server looks at its stop condition while no request comes.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Builds a blocking [`RpcClient`] (see [`crate::RpcClientBuilder`] for each setting).
#[derive(Debug, Clone)]
#[must_use = "call build() to get the client"]
pub struct RpcClientBuilder {
    io: Arc<lepus::blocking::Connection>,
    inner: crate::RpcClientBuilder,
}

impl RpcClientBuilder {
    forward! {
        /// The exchange requests go to by default (default: the default exchange).
        fn exchange(exchange: impl Into<Exchange>);
        /// The serializer of requests (default `json`).
        fn serializer(name: impl Into<String>);
        /// The compression method of requests (default none).
        fn compression(method: impl Into<String>);
        /// The content types replies may decode from.
        fn accept(accept: Accept);
        /// The delivery mode of requests (default transient).
        fn delivery_mode(mode: DeliveryMode);
        /// Whether requests expire with their call's timeout (default `true`).
        fn expire_requests(on: bool);
    }

    /// Opens the client's channel and subscribes it to direct reply-to (see
    /// [`crate::RpcClientBuilder::build`]).
    ///
    /// # Errors
    ///
    /// As [`crate::RpcClientBuilder::build`].
    #[track_caller]
    pub fn build(self) -> Result<RpcClient> {
        let inner = self.io.block_on(self.inner.build())?;
        Ok(RpcClient { io: self.io, inner })
    }
}

/// Calls a server and waits for its reply, from plain threads (see [`crate::RpcClient`]).
///
/// `Clone + Send + Sync`: threads may call at once through clones, each call blocking only
/// its own thread.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lepus_messaging::blocking::{Connection, RpcClient};
///
/// # fn main() -> lepus_messaging::Result<()> {
/// let conn = Connection::connect("memory://")?;
/// # // A server of the "adder" queue, on a thread of its own.
/// # conn.maybe_declare(lepus_messaging::Queue::new("adder"))?;
/// # let server = lepus_messaging::blocking::RpcServer::builder(&conn, "adder").build()?;
/// # std::thread::spawn(move || {
/// #     server.serve(|(a, b): (i64, i64), _request| Ok::<_, std::io::Error>(a + b))
/// # });
/// let client = RpcClient::new(&conn)?;
/// let sum: i64 = client.call("adder", &(2, 3), Duration::from_secs(5))?;
/// # assert_eq!(sum, 5);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RpcClient {
    io: Arc<lepus::blocking::Connection>,
    inner: crate::RpcClient,
}

impl fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl RpcClient {
    /// A client with the default settings.
    ///
    /// # Errors
    ///
    /// As [`crate::RpcClientBuilder::build`].
    #[track_caller]
    pub fn new(conn: &Connection) -> Result<Self> {
        Self::builder(conn).build()
    }

    /// Starts a client on `conn`.
    pub fn builder(conn: &Connection) -> RpcClientBuilder {
        RpcClientBuilder {
            io: Arc::clone(&conn.io),
            inner: crate::RpcClient::builder(&conn.inner),
        }
    }

    /// Sends `request` and waits at most `timeout` for the reply (see
    /// [`crate::RpcClient::call`]).
    ///
    /// # Errors
    ///
    /// As [`crate::RpcClient::call`].
    #[track_caller]
    pub fn call<Req, Resp>(
        &self,
        route: impl Into<Route>,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp>
    where
        Req: Serialize + Sync + ?Sized,
        Resp: DeserializeOwned,
    {
        self.io.block_on(self.inner.call(route, request, timeout))
    }

    /// As [`call`](Self::call), returning the reply undecoded.
    ///
    /// # Errors
    ///
    /// As [`crate::RpcClient::call_message`].
    #[track_caller]
    pub fn call_message<Req>(
        &self,
        route: impl Into<Route>,
        request: &Req,
        timeout: Duration,
    ) -> Result<Message>
    where
        Req: Serialize + Sync + ?Sized,
    {
        self.io
            .block_on(self.inner.call_message(route, request, timeout))
    }

    /// How many calls wait for their reply.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    /// The async client this one drives.
    pub fn as_async(&self) -> &crate::RpcClient {
        &self.inner
    }
}

/// Builds a blocking [`RpcServer`] (see [`crate::RpcServerBuilder`] for each setting).
#[derive(Debug, Clone)]
#[must_use = "call build() to get the server"]
pub struct RpcServerBuilder {
    io: Arc<lepus::blocking::Connection>,
    inner: crate::RpcServerBuilder,
}

impl RpcServerBuilder {
    forward! {
        /// How many unacknowledged requests the broker sends ahead (default 1).
        fn prefetch(count: u16);
        /// The content types requests may decode from.
        fn accept(accept: Accept);
        /// What happens to a request that cannot be decoded.
        fn on_decode_error(policy: DecodeErrorPolicy);
        /// What happens to a request whose handler failed or panicked.
        fn on_handler_error(policy: HandlerErrorPolicy);
        /// The serializer of replies the request's serializer cannot write.
        fn serializer(name: impl Into<String>);
        /// Whether a request is acked only once its reply is confirmed (default `true`).
        fn confirm_replies(on: bool);
    }

    /// Makes the server.
    ///
    /// # Errors
    ///
    /// As [`crate::RpcServerBuilder::build`].
    pub fn build(self) -> Result<RpcServer> {
        Ok(RpcServer {
            io: self.io,
            inner: self.inner.build()?,
        })
    }
}

/// Answers requests from a queue on the calling thread (see [`crate::RpcServer`]): one
/// request at a time; run several servers on several threads for more.
///
/// # Examples
///
/// ```
/// use lepus_messaging::blocking::{Connection, RpcServer};
/// use lepus_messaging::Queue;
///
/// # fn main() -> lepus_messaging::Result<()> {
/// let conn = Connection::connect("memory://")?;
/// # // A client on another thread calls once, then deletes the queue, which ends `serve`.
/// # conn.maybe_declare(Queue::new("adder"))?;
/// # let client = lepus_messaging::blocking::RpcClient::new(&conn)?;
/// # let admin = conn.client().open_channel()?;
/// # let caller = std::thread::spawn(move || -> lepus_messaging::Result<i64> {
/// #     let sum = client.call("adder", &(2, 3), std::time::Duration::from_secs(5))?;
/// #     admin.queue_delete("adder", Default::default())?;
/// #     Ok(sum)
/// # });
/// # let served = (|| -> lepus_messaging::Result<()> {
/// let server = RpcServer::builder(&conn, Queue::new("adder")).build()?;
/// server.serve(|(a, b): (i64, i64), _request| Ok::<_, std::io::Error>(a + b))?;
/// # Ok(()) })();
/// # assert!(matches!(served, Err(lepus_messaging::Error::ConsumerEnded { .. })), "{served:?}");
/// # assert_eq!(caller.join().unwrap()?, 5);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RpcServer {
    io: Arc<lepus::blocking::Connection>,
    inner: crate::RpcServer,
}

impl fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl RpcServer {
    /// Starts a server of `queue`.
    pub fn builder(conn: &Connection, queue: impl Into<Queue>) -> RpcServerBuilder {
        RpcServerBuilder {
            io: Arc::clone(&conn.io),
            inner: crate::RpcServer::builder(&conn.inner, queue),
        }
    }

    /// Declares the queue, consumes it and answers each request with `handler`'s value,
    /// until the consumer ends. The handler runs on the calling thread, outside the I/O
    /// runtime, so it may use the blocking API itself.
    ///
    /// # Errors
    ///
    /// As [`crate::RpcServer::serve`].
    #[track_caller]
    pub fn serve<Req, Resp, F, E>(&self, handler: F) -> Result<()>
    where
        Req: DeserializeOwned,
        Resp: Serialize + Sync,
        F: FnMut(Req, Message) -> std::result::Result<Resp, E>,
        E: fmt::Display,
    {
        self.serve_until(handler, || false)
    }

    /// As [`serve`](Self::serve), until `stop` returns `true`; it is asked before each
    /// request and every 100 ms while none comes. The subscription is then cancelled
    /// (requests it had taken ahead go back to the queue).
    ///
    /// # Errors
    ///
    /// As [`crate::RpcServer::serve`].
    #[track_caller]
    pub fn serve_until<Req, Resp, F, E, S>(&self, mut handler: F, mut stop: S) -> Result<()>
    where
        Req: DeserializeOwned,
        Resp: Serialize + Sync,
        F: FnMut(Req, Message) -> std::result::Result<Resp, E>,
        E: fmt::Display,
        S: FnMut() -> bool,
    {
        let mut consumer = self.io.block_on(self.inner.subscribe())?;
        loop {
            if stop() {
                return self.io.block_on(consumer.cancel());
            }
            let next = self
                .io
                .block_on(async { tokio::time::timeout(STOP_POLL, consumer.recv()).await });
            let message = match next {
                Err(_) => continue,
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(e),
                Ok(Some(Ok(message))) => message,
            };
            let request = match message.decode::<Req>() {
                Ok(request) => request,
                Err(e) => {
                    consumer.decode_failed(&message, &e);
                    continue;
                }
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| handler(request, message.clone())));
            self.io
                .block_on(self.inner.complete(&message, outcome_of(outcome)));
        }
    }

    /// The async server this one drives.
    pub fn as_async(&self) -> &crate::RpcServer {
        &self.inner
    }
}
