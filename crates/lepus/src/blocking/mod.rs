//! A blocking client, in the spirit of py-amqp: for scripts, CLIs, tests and workers that
//! handle one message at a time without an async runtime.
//!
//! Coming from Python? [`py_amqp`] maps each py-amqp call to its lepus equivalent.
//!
//! ```text
//!   your threads                               the lepus-io thread (one per connection)
//!   ────────────                               ────────────────────────────────────────
//!   Channel::queue_declare ──┐                 current-thread tokio runtime, running
//!   Channel::basic_publish ──┤ block_on(async  the async client's reader and writer tasks:
//!   Connection::drain_events ┘  method) ─────► heartbeats, socket reads, buffering of
//!        │    ▲                                deliveries, returns and confirms
//!        │    └── reply / delivery ◄───────────┘
//!        └─► consumer callbacks run here, on the thread that called drain_events
//! ```
//!
//! This module has no protocol behaviour of its own. Each blocking method is one `block_on`
//! of the [async method](crate::Channel) of the same name, with the same option structs,
//! results and [`Error`] (the shape of rust-postgres's `postgres` crate over
//! `tokio-postgres`). What it adds is where those futures run, and py-amqp's way of consuming:
//! callbacks keyed by consumer tag, dispatched by [`Connection::drain_events`].
//!
//! # Examples
//!
//! Declare, publish with a confirm, consume with a callback:
//!
//! ```
//! use std::time::Duration;
//! use lepus::blocking::{Connection, Drained};
//! use lepus::{BasicConsumeOptions, BasicProperties, BasicPublishOptions, QueueDeclareOptions};
//!
//! # fn main() -> Result<(), lepus::Error> {
//! // "amqp://guest:guest@127.0.0.1:5672/%2f" for a RabbitMQ; "memory://" is in-process.
//! let conn = Connection::connect("memory://")?;
//! let ch = conn.open_channel()?;
//! let q = ch.queue_declare("jobs", QueueDeclareOptions::default())?;
//!
//! ch.confirm_select()?;
//! let props = BasicProperties::default();
//! let confirmation =
//!     ch.basic_publish_confirm("", &q.name, BasicPublishOptions::default(), &props, "hello")?;
//! assert!(confirmation.is_ack());
//!
//! ch.basic_consume(&q.name, "", BasicConsumeOptions::default(), |_ch, delivery| {
//!     println!("got {:?}", delivery.body);
//!     if let Err(e) = delivery.ack() {
//!         eprintln!("ack failed: {e}");
//!     }
//! })?;
//! while let Drained::Events(_) = conn.drain_events(Some(Duration::from_secs(1)))? {}
//! conn.close()?;
//! # Ok(()) }
//! ```
//!
//! # The I/O thread, and why there is no heartbeat tick
//!
//! [`Connection::connect`] starts a thread named `lepus-io` with a current-thread tokio
//! runtime, and runs the async client's driver tasks on it. That thread reads the socket,
//! answers and sends heartbeats, and buffers deliveries, returned messages and confirms, all
//! while your threads sleep, compute, or wait on something else. A blocking call enters the
//! same runtime with `Handle::block_on`: the call's future is polled on your thread, and the
//! `lepus-io` thread wakes it when the reply arrives. py-amqp, which has no thread of its own,
//! reads frames only inside `drain_events` and asks the application to call `heartbeat_tick`
//! often enough; here a worker may spend minutes on one message without losing the
//! connection.
//!
//! Deliveries wait in their consumer's bounded buffer
//! ([`BasicConsumeOptions::buffer`](BasicConsumeOptions::buffer)); when one is full the I/O
//! thread stops reading the socket until it drains (TCP backpressure). Heartbeats go on, but
//! nothing else is read, replies to other calls included: drain callback consumers regularly,
//! and set [`basic_qos`](Channel::basic_qos) so the broker does not send more than you mean to
//! hold.
//!
//! # Consuming
//!
//! - **Callbacks, py-amqp style:** [`Channel::basic_consume`] registers a
//!   `FnMut(&Channel, Delivery) + Send` callback under the consumer tag; each
//!   [`Connection::drain_events`] call waits until something happens, runs the callbacks of
//!   what arrived on the calling thread, and returns [`Drained::Events`], or
//!   [`Drained::TimedOut`] when its timeout passes first. Deliveries for a consumer that was
//!   cancelled before its callback could see them are rejected with requeue, so the broker
//!   hands them to another consumer.
//! - **An iterator:** [`Channel::basic_consume_iter`] returns a [`Consumer`], an
//!   `Iterator<Item = Result<Delivery>>` with [`Consumer::recv_timeout`] for a bounded wait.
//!   It does not need `drain_events`.
//!
//! # Server events
//!
//! What the broker sends on its own initiative comes back from
//! [`Connection::drain_events`] as an [`Event`]: a mandatory message it could not route
//! ([`Event::Returned`]), a consumer it cancelled ([`Event::ConsumerCancelled`], after its
//! queue was deleted), a channel it closed ([`Event::ChannelClosed`]), and
//! `connection.blocked`/`unblocked` ([`Event::Blocked`], [`Event::Unblocked`]). A closed
//! connection is the `Err` of `drain_events` and of every later call. Iterator consumers see
//! cancellation and channel closure as their `Err` item.
//!
//! These events wait in the connection, without a bound, until `drain_events` hands them out
//! (a returned message waits there even when [`Channel::basic_publish_confirm`] also attached
//! it to its [`Confirmation`]). A program that publishes mandatory messages but never drains
//! should call `drain_events(Some(Duration::ZERO))` now and then.
//!
//! # Threads
//!
//! | Type | `Send` | `Sync` | `Clone` | Notes |
//! |---|---|---|---|---|
//! | [`Connection`] | yes | yes | no | owns the connection; share by `&` or `Arc` |
//! | [`Channel`] | yes | yes | yes | clones are the same channel |
//! | [`Consumer`] | yes | yes | no | methods take `&mut self` |
//! | [`Delivery`] | yes | yes | no | acks without blocking, from any thread |
//!
//! Two threads may use one channel at once: calls go out in the order they reach the channel
//! and each gets its own reply, but the channel's state is shared: one thread's soft error
//! closes it for both, `tx_commit` and `wait_for_confirms` cover both threads' publishes.
//! Prefer a channel per thread. Several threads may call `drain_events` at once; a consumer's
//! callback never runs on two threads at the same time.
//!
//! # Calling from async code
//!
//! The blocking API must not be called from inside an async runtime (a tokio task, or a
//! future run by `block_on`): blocking there would stall the runtime's thread. Tokio detects
//! it, and the call **panics** with *"Cannot start a runtime from within a runtime"*; every
//! blocking method is `#[track_caller]`, so the panic names your line. In async code, use the
//! async client ([`crate::Connection`]) instead, or move the blocking work to
//! `tokio::task::spawn_blocking`, where these calls are allowed.
//!
//! A panic, rather than an error, because it is a programming error that no caller can handle
//! at run time, and because tokio offers no public way to tell a task (forbidden) from a
//! `spawn_blocking` thread (allowed) beforehand: checking `Handle::try_current()` would reject
//! the allowed case too. Dropping handles never panics, wherever it happens.
//!
//! # Dropping
//!
//! Dropping the [`Connection`] closes the connection (flushing what was published first);
//! channels and consumers that outlive it fail with
//! [`Error::ConnectionClosed`]. Dropping the last handle of
//! all waits for the close to finish (at most the close timeout) and stops the I/O thread.
//! Dropping a [`Consumer`] that has not ended cancels it in the background and rejects its
//! buffered deliveries with requeue.

mod channel;
mod confirm;
mod connection;
mod consumer;
mod dispatch;
mod event;
pub mod py_amqp;
mod runtime;

pub use channel::Channel;
pub use confirm::PublisherConfirm;
pub use connection::Connection;
pub use consumer::{Consumer, Received};
pub use event::{Drained, Event};

#[doc(no_inline)]
pub use crate::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, BasicQosOptions, BindOptions,
    Confirmation, ConnectionOptions, Delivery, Error, ExchangeDeclareOptions,
    ExchangeDeleteOptions, ExchangeKind, FieldTable, GetMessage, Heartbeat, QueueDeclareOptions,
    QueueDeclared, QueueDeleteOptions, ReplyCode, Result, ReturnedMessage, ShortStr,
};
