//! lepus: an AMQP 0-9-1 client for RabbitMQ, async on tokio.
//!
//! ```text
//!   your code ──► Connection / Channel handles ──┐   (lock, encode, wake: no channel hop)
//!                                                 ▼
//!                      lepus-proto::Connection (sans-IO state machine)
//!                       ▲                     │
//!            reader task│ bytes in            │ bytes out │writer task (vectored, batched)
//!                       └────── socket (TCP or TLS) ◄─────┘
//! ```
//!
//! The protocol logic lives in [`lepus_proto`], which does no I/O; this crate adds the socket,
//! TLS (rustls), timers and the async API. Every AMQP 0-9-1 method of RabbitMQ is here:
//! exchanges and queues, consumers as [`Stream`](futures_core::Stream)s, publisher confirms as
//! futures, transactions, returns, flow control, heartbeats and `connection.blocked`.
//! [`blocking`] offers the same client without async, in the spirit of py-amqp. The
//! [`manual`] explains the design: locking, replies, confirms, heartbeats, backpressure, and
//! how reads and writes are batched so that a busy connection costs few wake-ups.
//!
//! # Examples
//!
//! Connect, declare and bind, publish with confirms, consume with acks:
//!
//! ```
//! use lepus::{
//!     BasicConsumeOptions, BasicProperties, BasicPublishOptions, BindOptions, Connection,
//!     ExchangeDeclareOptions, ExchangeKind, QueueDeclareOptions,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lepus::Error> {
//! // "amqp://guest:guest@127.0.0.1:5672/%2f" for a RabbitMQ; "memory://" is in-process.
//! let conn = Connection::connect("memory://").await?;
//! let ch = conn.open_channel().await?;
//!
//! ch.exchange_declare("orders", ExchangeKind::Topic, ExchangeDeclareOptions::default()).await?;
//! let q = ch.queue_declare("orders.eu", QueueDeclareOptions::default()).await?;
//! ch.queue_bind(&q.name, "orders", "eu.#", BindOptions::default()).await?;
//!
//! ch.confirm_select().await?;
//! let props = BasicProperties::default();
//! let confirm = ch
//!     .basic_publish("orders", "eu.fr", BasicPublishOptions::default(), &props, "hello")
//!     .await?;
//! assert!(confirm.await?.is_ack());
//!
//! let mut consumer = ch.basic_consume(&q.name, "", BasicConsumeOptions::default()).await?;
//! if let Some(delivery) = consumer.recv().await {
//!     let delivery = delivery?;
//!     assert_eq!(&delivery.body[..], b"hello");
//!     delivery.ack()?;
//! }
//! conn.close().await?;
//! # Ok(()) }
//! ```
//!
//! # `memory://`
//!
//! With the default `memory` feature, `memory://` (and `memory://NAME`) connects to a broker
//! inside the process: `lepus-memory`'s model of RabbitMQ, reached over an in-memory stream
//! through the same codec, protocol core and driver as TCP. Tests and examples run on it with
//! no broker installed, and a conformance suite holds it to RabbitMQ's behaviour. See
//! [`memory`] for what it implements, its limits, and the handle that inspects it and
//! injects faults.
//!
//! # Observability
//!
//! Publishes, deliveries, `basic.get` and acknowledgements emit `tracing` spans named and
//! attributed after OpenTelemetry's messaging conventions (see [`telemetry`]);
//! [`Connection::stats`] counts reads, writes, bytes, messages, recoveries and replays without
//! any subscriber. Without a subscriber the spans cost one cached check and no allocation.
//!
//! # Errors
//!
//! One [`Error`] type. A soft error from the broker closes only the channel
//! ([`Error::ChannelClosed`] with its [`ReplyCode`], text and failing method); a hard error
//! closes the connection ([`Error::ConnectionClosed`]) and fails every waiter, consumer and
//! pending confirm at once.

pub mod blocking;
mod channel;
mod config;
mod confirm;
mod connection;
mod consumer;
mod driver;
mod error;
pub mod manual;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "metrics")]
mod metrics;
mod options;
mod recovery;
pub mod telemetry;
mod transport;
pub mod uri;

pub use channel::{Channel, GetMessage};
pub use config::{ConnectionOptions, FailoverStrategy, TlsOptions};
pub use confirm::{Confirmation, PublisherConfirm, ReturnedMessage};
pub use connection::Connection;
pub use consumer::{Consumer, Delivery};
pub use driver::{ConnectionEvent, ConnectionStats};
pub use error::{Error, Result};
pub use lepus_proto::{Close, ConnectionError, Heartbeat, Negotiated, Sasl};
pub use lepus_wire::{
    AsShortStr, BasicProperties, BasicPropertiesBuilder, DeliveryMode, EncodeError, FieldTable,
    FieldValue, LongStr, ReplyCode, ShortStr,
};
pub use options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BindOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, ExchangeKind, ParseExchangeKindError, QueueDeclareOptions,
    QueueDeclared, QueueDeleteOptions,
};
pub use recovery::{RecoveryPolicy, TopologyEntity, TopologyFilter};
pub use {bytes, lepus_proto, lepus_wire};
