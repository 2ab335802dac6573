//! lepus-messaging: kombu's messaging layer in Rust, over the [`lepus`] client, and
//! wire-compatible with kombu both ways.
//!
//! A kombu user describes exchanges and queues as values, publishes objects with a serializer
//! and a compression method, and consumes decoded messages, refusing content types outside an
//! accept list. This crate does the same with Rust values (anything `serde` handles), and
//! speaks kombu's wire format exactly: content types and encodings, the `compression` header,
//! the JSON type markers for datetimes, decimals, UUIDs and bytes. A Rust service can join a
//! system of kombu and Celery producers and consumers (the interop tests run real kombu
//! against this crate, both ways, for every serializer and compression method).
//!
//! ```text
//!   Exchange / Queue / Binding (values) ──► Connection::maybe_declare (cache per connection)
//!   Producer ── serializer ─► compression ─► lepus::Channel::basic_publish ─► confirm
//!   Consumer ◄── accept list ◄── decompression ◄── lepus::Consumer (one channel, prefetch)
//! ```
//!
//! - [`Exchange`], [`Queue`] and [`Binding`] are plain values with builders; a queue's
//!   RabbitMQ arguments are typed ([`Queue::message_ttl`], [`Queue::queue_type`], ...) and
//!   combinations RabbitMQ refuses are refused before anything is sent.
//! - [`Producer`] publishes with confirms by default, pipelined when asked, with a
//!   [`RetryPolicy`] for lost connections; lepus's automatic recovery republishes what lost
//!   its confirm underneath.
//! - [`Consumer`] is a `Stream` of [`Message`]s, or runs a handler per message; undecodable
//!   or refused messages, handler errors and panics are settled by policies, not by crashing
//!   the consumer.
//! - [`serializer`]: json (default), msgpack, yaml, raw bytes and text, plus your own through
//!   [`serializer::Serializer`]; [`compression`]: zlib, bzip2, lzma, brotli, zstd behind cargo
//!   features, with bounded decompression.
//! - [`Worker`]: consumers with handlers under supervision (kombu's `ConsumerMixin`, done
//!   properly): N handlers at once, settlement by result, bounded redeliveries, graceful
//!   shutdown, recovery underneath, a lazily opened producer connection.
//! - [`simple`]: `SimpleQueue` and `SimpleBuffer`; [`rpc`]: `RpcClient` over direct
//!   reply-to and `RpcServer` (kombu's `send_reply`); [`broadcast`]: kombu's fanout pattern.
//! - [`blocking`]: the same for plain threads.
//! - [`kombu`]: each kombu call and its equivalent here.
//!
//! # Publish a struct, consume it with a handler
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use lepus_messaging::{Connection, Exchange, Queue};
//! use lepus::ExchangeKind;
//!
//! #[derive(Serialize, Deserialize)]
//! struct Order { id: u64, item: String }
//!
//! # #[tokio::main]
//! # async fn main() -> lepus_messaging::Result<()> {
//! // "amqp://guest:guest@127.0.0.1:5672/%2f" for a RabbitMQ; "memory://" is in-process.
//! let conn = Connection::connect("memory://").await?;
//! let shop = Exchange::with_kind("shop", ExchangeKind::Topic);
//! let orders = Queue::new("orders").exchange(shop.clone()).routing_key("order.*");
//!
//! let producer = conn.producer().exchange(shop).build()?;
//! producer
//!     .publish(&Order { id: 1, item: "book".into() })
//!     .routing_key("order.created")
//!     .declare(orders.clone()) // exchange, queue and binding, once per connection
//!     .await?; // confirmed by the broker
//!
//! let mut consumer = conn.consumer([orders]).prefetch(50).consume().await?;
//! # // Cancel the subscription after the first order, so that `run_typed` returns.
//! # let ch = consumer.channel().clone();
//! # let tag = consumer.subscriptions().next().map(|(_, tag)| tag.to_owned()).unwrap();
//! # let (ch, tag) = (&ch, &tag);
//! consumer
//!     .run_typed(|order: Order, _message| async move {
//!         println!("order {}: {}", order.id, order.item);
//! #       ch.basic_cancel(tag.as_str()).await.map_err(std::io::Error::other)?;
//!         Ok::<_, std::io::Error>(()) // Ok acks; an error rejects (or requeues, per policy)
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Accept lists and compression
//!
//! ```
//! use lepus_messaging::{Accept, Connection, Queue};
//!
//! # async fn demo(conn: Connection) -> lepus_messaging::Result<()> {
//! let q = Queue::new("events");
//! let producer = conn.producer().serializer("msgpack").compression("zlib").build()?;
//! producer.publish(&vec![1, 2, 3]).to_queue(&q).declare(q.clone()).await?;
//!
//! // Only JSON is decoded by default (plus raw bytes and text): say msgpack is welcome.
//! let accept = Accept::new(conn.registry(), ["json", "msgpack"])?;
//! let mut consumer = conn.consumer([q]).accept(accept).consume().await?;
//! if let Some(message) = consumer.recv().await {
//!     let message = message?;
//!     let numbers: Vec<u32> = message.decode()?; // inflated, accept-checked, decoded
//!     message.ack()?;
//! #   let _ = numbers;
//! }
//! # Ok(()) }
//! # #[tokio::main]
//! # async fn main() -> lepus_messaging::Result<()> {
//! # let conn = lepus_messaging::Connection::connect("memory://").await?;
//! # demo(conn).await
//! # }
//! ```
//!
//! # Retries and pipelining
//!
//! ```
//! use lepus_messaging::{Connection, RetryPolicy};
//!
//! # async fn demo(conn: Connection) -> lepus_messaging::Result<()> {
//! let producer = conn
//!     .producer()
//!     .routing_key("jobs")
//!     .retry(RetryPolicy::default()) // 3 retries after a lost connection; never after a 404
//!     .build()?;
//! let mut confirms = Vec::new();
//! for job in 0..10_000u32 {
//!     confirms.push(producer.publish(&job).pipelined().await?);
//! }
//! for confirm in confirms {
//!     confirm.await?; // Err(Nacked), Err(Returned), ... per message
//! }
//! # Ok(()) }
//! # #[tokio::main]
//! # async fn main() -> lepus_messaging::Result<()> {
//! # let conn = lepus_messaging::Connection::connect("memory://").await?;
//! # demo(conn).await
//! # }
//! ```
//!
//! # Cargo features
//!
//! `msgpack`, `yaml` and `zlib` are on by default; `bzip2`, `lzma`, `brotli` and `zstd` (or
//! `all-compression`) add the other compression methods. YAML is read with `serde_norway`, the
//! maintained fork of `serde_yaml`, and written by lepus in a form PyYAML reads back exactly
//! (every string quoted, floats as PyYAML writes them).

pub mod blocking;
pub mod broadcast;
pub mod compression;
mod connection;
mod consumer;
mod entity;
pub mod error;
pub mod kombu;
mod message;
mod producer;
pub mod rpc;
pub mod serializer;
pub mod simple;
mod worker;

pub use broadcast::Broadcast;
pub use connection::{Connection, Entity};
pub use consumer::{
    Consumer, ConsumerBuilder, DecodeErrorCallback, DecodeErrorPolicy, HandlerErrorPolicy,
};
pub use entity::{Binding, Exchange, Overflow, Queue, QueueType};
pub use error::{BoxError, Error, Result};
pub use message::{Message, MessageState};
pub use producer::{Confirm, Producer, ProducerBuilder, Publish, RetryPolicy};
pub use rpc::{send_reply, Route, RpcClient, RpcClientBuilder, RpcServer, RpcServerBuilder};
pub use serializer::{Accept, Payload, Registry};
pub use simple::{SimpleBuffer, SimpleBufferBuilder, SimpleQueue, SimpleQueueBuilder};
pub use worker::{
    Handler, HandlerOutcome, Settlement, ShutdownHandle, TypedHandler, Worker, WorkerBuilder,
    WorkerEvent, WorkerProducer,
};
