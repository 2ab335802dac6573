//! Blocking [`SimpleQueue`] and [`SimpleBuffer`] (see [`crate::simple`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{Connection, Publish};
use crate::consumer::DecodeErrorPolicy;
use crate::entity::Queue;
use crate::error::Result;
use crate::message::Message;
use crate::serializer::Accept;

/// Builds a blocking [`SimpleQueue`] (see [`crate::SimpleQueueBuilder`] for each setting).
#[derive(Debug, Clone)]
#[must_use = "call build() to declare the queue and get the simple queue"]
pub struct SimpleQueueBuilder {
    io: Arc<lepus::blocking::Connection>,
    inner: crate::SimpleQueueBuilder,
}

impl SimpleQueueBuilder {
    forward! {
        /// The serializer of puts (default `json`).
        fn serializer(name: impl Into<String>);
        /// The compression method of puts (default none).
        fn compression(method: impl Into<String>);
        /// The content types `get` hands over.
        fn accept(accept: Accept);
        /// What `get` does with a message it cannot hand over.
        fn on_decode_error(policy: DecodeErrorPolicy);
        /// How many unacknowledged messages `get`'s consumer takes ahead (default 1).
        fn prefetch(count: u16);
        /// Whether the broker forgets messages once sent (default `false`).
        fn no_ack(on: bool);
    }

    /// Declares the exchange, the queue and the binding (see
    /// [`crate::SimpleQueueBuilder::build`]).
    ///
    /// # Errors
    ///
    /// As [`crate::SimpleQueueBuilder::build`].
    #[track_caller]
    pub fn build(self) -> Result<SimpleQueue> {
        let inner = self.io.block_on(self.inner.build())?;
        Ok(SimpleQueue { io: self.io, inner })
    }
}

/// kombu's `SimpleQueue` for plain threads (see [`crate::SimpleQueue`]).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lepus_messaging::blocking::{Connection, SimpleQueue};
/// use lepus_messaging::Error;
///
/// # fn main() -> lepus_messaging::Result<()> {
/// let conn = Connection::connect("memory://")?;
/// let queue = SimpleQueue::new(&conn, "jobs")?;
/// queue.put(&"hello").send()?;
/// match queue.get(Duration::from_secs(1)) {
///     Ok(message) => {
///         println!("{}", message.decode::<String>()?);
///         message.ack()?;
///     }
///     Err(Error::Timeout(_)) => println!("empty"), // kombu's Empty
///     Err(e) => return Err(e),
/// }
/// queue.close()?;
/// # Ok(()) }
/// ```
pub struct SimpleQueue {
    io: Arc<lepus::blocking::Connection>,
    inner: crate::SimpleQueue,
}

impl fmt::Debug for SimpleQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl SimpleQueue {
    /// Declares the simple queue `name` with the default settings.
    ///
    /// # Errors
    ///
    /// As [`crate::SimpleQueueBuilder::build`].
    #[track_caller]
    pub fn new(conn: &Connection, name: &str) -> Result<Self> {
        Self::builder(conn, name).build()
    }

    /// Starts a simple queue named `name` (see [`crate::SimpleQueue::builder`]).
    pub fn builder(conn: &Connection, name: &str) -> SimpleQueueBuilder {
        SimpleQueueBuilder {
            io: Arc::clone(&conn.io),
            inner: crate::SimpleQueue::builder(&conn.inner, name),
        }
    }

    /// Starts a simple queue over a queue of one's own (see
    /// [`crate::SimpleQueue::from_queue`]).
    pub fn from_queue(conn: &Connection, queue: Queue) -> SimpleQueueBuilder {
        SimpleQueueBuilder {
            io: Arc::clone(&conn.io),
            inner: crate::SimpleQueue::from_queue(&conn.inner, queue),
        }
    }

    /// A publish of `value` to the queue; finish it with [`Publish::send`].
    pub fn put<'a, T>(&'a self, value: &'a T) -> Publish<'a>
    where
        T: Serialize + Sync + ?Sized,
    {
        Publish {
            io: &self.io,
            inner: self.inner.put(value),
        }
    }

    /// The next message within `timeout` (see [`crate::SimpleQueue::get`]).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`](crate::Error::Timeout) when none came (kombu's `Empty`); as
    /// [`crate::SimpleQueue::get`].
    #[track_caller]
    pub fn get(&self, timeout: Duration) -> Result<Message> {
        self.io.block_on(self.inner.get(timeout))
    }

    /// One message if one is ready, without waiting; `None` when the queue is empty.
    ///
    /// # Errors
    ///
    /// As [`crate::SimpleQueue::get_nowait`].
    #[track_caller]
    pub fn get_nowait(&self) -> Result<Option<Message>> {
        self.io.block_on(self.inner.get_nowait())
    }

    /// How many messages are ready (kombu's `qsize` and `len`).
    ///
    /// # Errors
    ///
    /// As [`crate::SimpleQueue::len`].
    #[track_caller]
    pub fn len(&self) -> Result<u32> {
        self.io.block_on(self.inner.len())
    }

    /// The same as [`len`](Self::len), under kombu's name.
    ///
    /// # Errors
    ///
    /// As [`crate::SimpleQueue::len`].
    #[track_caller]
    pub fn qsize(&self) -> Result<u32> {
        self.len()
    }

    /// Whether no message is ready.
    ///
    /// # Errors
    ///
    /// As [`crate::SimpleQueue::len`].
    #[track_caller]
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Removes every ready message, returning how many.
    ///
    /// # Errors
    ///
    /// As [`crate::SimpleQueue::clear`].
    #[track_caller]
    pub fn clear(&self) -> Result<u32> {
        self.io.block_on(self.inner.clear())
    }

    /// Stops consuming (see [`crate::SimpleQueue::close`]).
    ///
    /// # Errors
    ///
    /// Connection errors.
    #[track_caller]
    pub fn close(self) -> Result<()> {
        self.io.block_on(self.inner.close())
    }

    /// The queue, as declared.
    pub fn queue(&self) -> &Queue {
        self.inner.queue()
    }

    /// The async simple queue this one drives.
    pub fn as_async(&self) -> &crate::SimpleQueue {
        &self.inner
    }
}

/// Builds a blocking [`SimpleBuffer`] (see [`crate::SimpleBufferBuilder`]).
#[derive(Debug, Clone)]
#[must_use = "call build() to declare the queue and get the simple buffer"]
pub struct SimpleBufferBuilder {
    io: Arc<lepus::blocking::Connection>,
    inner: crate::SimpleBufferBuilder,
}

impl SimpleBufferBuilder {
    forward! {
        /// The serializer of puts (default `json`).
        fn serializer(name: impl Into<String>);
        /// The compression method of puts (default none).
        fn compression(method: impl Into<String>);
        /// The content types `get` hands over.
        fn accept(accept: Accept);
        /// What `get` does with a message it cannot hand over.
        fn on_decode_error(policy: DecodeErrorPolicy);
    }

    /// Declares the exchange, the queue and the binding.
    ///
    /// # Errors
    ///
    /// As [`crate::SimpleBufferBuilder::build`].
    #[track_caller]
    pub fn build(self) -> Result<SimpleBuffer> {
        let inner = self.io.block_on(self.inner.build())?;
        Ok(SimpleBuffer { io: self.io, inner })
    }
}

/// kombu's `SimpleBuffer` for plain threads (see [`crate::SimpleBuffer`]): transient,
/// exclusive, auto-delete, no-ack.
pub struct SimpleBuffer {
    io: Arc<lepus::blocking::Connection>,
    inner: crate::SimpleBuffer,
}

impl fmt::Debug for SimpleBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl SimpleBuffer {
    /// Declares the simple buffer `name` with the default settings.
    ///
    /// # Errors
    ///
    /// As [`crate::SimpleBufferBuilder::build`].
    #[track_caller]
    pub fn new(conn: &Connection, name: &str) -> Result<Self> {
        Self::builder(conn, name).build()
    }

    /// Starts a simple buffer named `name` (see [`crate::SimpleBuffer::builder`]).
    pub fn builder(conn: &Connection, name: &str) -> SimpleBufferBuilder {
        SimpleBufferBuilder {
            io: Arc::clone(&conn.io),
            inner: crate::SimpleBuffer::builder(&conn.inner, name),
        }
    }

    /// A publish of `value`, transient; finish it with [`Publish::send`].
    pub fn put<'a, T>(&'a self, value: &'a T) -> Publish<'a>
    where
        T: Serialize + Sync + ?Sized,
    {
        Publish {
            io: &self.io,
            inner: self.inner.put(value),
        }
    }

    /// The next message within `timeout`.
    ///
    /// # Errors
    ///
    /// As [`crate::SimpleBuffer::get`].
    #[track_caller]
    pub fn get(&self, timeout: Duration) -> Result<Message> {
        self.io.block_on(self.inner.get(timeout))
    }

    /// One message if one is ready, without waiting.
    ///
    /// # Errors
    ///
    /// As [`crate::SimpleBuffer::get_nowait`].
    #[track_caller]
    pub fn get_nowait(&self) -> Result<Option<Message>> {
        self.io.block_on(self.inner.get_nowait())
    }

    /// How many messages are ready.
    ///
    /// # Errors
    ///
    /// As [`crate::SimpleBuffer::len`].
    #[track_caller]
    pub fn len(&self) -> Result<u32> {
        self.io.block_on(self.inner.len())
    }

    /// The same as [`len`](Self::len), under kombu's name.
    ///
    /// # Errors
    ///
    /// As [`crate::SimpleBuffer::len`].
    #[track_caller]
    pub fn qsize(&self) -> Result<u32> {
        self.len()
    }

    /// Whether no message is ready.
    ///
    /// # Errors
    ///
    /// As [`crate::SimpleBuffer::len`].
    #[track_caller]
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Removes every ready message, returning how many.
    ///
    /// # Errors
    ///
    /// As [`crate::SimpleBuffer::clear`].
    #[track_caller]
    pub fn clear(&self) -> Result<u32> {
        self.io.block_on(self.inner.clear())
    }

    /// Stops consuming; the broker then deletes the queue and the exchange.
    ///
    /// # Errors
    ///
    /// Connection errors.
    #[track_caller]
    pub fn close(self) -> Result<()> {
        self.io.block_on(self.inner.close())
    }

    /// The queue, as declared.
    pub fn queue(&self) -> &Queue {
        self.inner.queue()
    }

    /// The async simple buffer this one drives.
    pub fn as_async(&self) -> &crate::SimpleBuffer {
        &self.inner
    }
}
