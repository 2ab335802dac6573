//! `memory://` for lepus: an AMQP 0-9-1 broker that lives inside the process, with RabbitMQ's
//! semantics, for tests and development without a broker.
//!
//! This crate is the broker as a state machine, in the style of `lepus-proto`: a [`Broker`]
//! takes the bytes each client connection sends and produces the bytes to send back, with no
//! I/O, no tasks and no clock of its own. `lepus` drives it over an in-memory stream when a
//! connection URL starts with `memory://`, so every lepus API runs on it unchanged, through
//! the same codec, protocol core and driver as a TCP connection.
//!
//! It is a test double, not a server: it listens on no socket, persists nothing and lives in
//! one process. What a single node in one process cannot mean is documented as such: durable
//! entities and persistent messages last as long as the broker value; quorum and stream queues
//! behave as classic queues.
//!
//! # What it implements, as RabbitMQ 3.x does
//!
//! - The handshake with PLAIN and AMQPLAIN, `connection.tune`, heartbeats (sent, and a silent
//!   client dropped after two intervals), `authentication_failure_close` (403) and unknown
//!   vhosts (530), the capabilities RabbitMQ announces.
//! - Exchanges: direct, fanout, topic (`*` and `#` as RabbitMQ matches them), headers (`x-match`
//!   all, any, all-with-x, any-with-x), the default exchange and the `amq.*` ones,
//!   exchange-to-exchange bindings, internal and alternate exchanges, auto-delete, equivalence
//!   checks on redeclare, passive declares, `if-unused` deletes, `CC`/`BCC` headers.
//! - Queues: server-named, exclusive, auto-delete, `x-message-ttl` and per-message
//!   `expiration`, `x-expires`, `x-max-length`/`x-max-length-bytes` with drop-head,
//!   reject-publish and reject-publish-dlx, dead-lettering with the `x-death` history and
//!   `x-first-death-*`, `x-max-priority`, purge, `if-unused`/`if-empty` deletes.
//! - Consumers: per-consumer and per-channel prefetch, round-robin, consumer priorities,
//!   exclusive consumers, single active consumer, no-ack, `basic.get`, ack/nack/reject with
//!   `multiple` and `requeue` (requeued messages return to their place, marked redelivered),
//!   `basic.recover`, `basic.cancel` sent when a consumed queue is deleted, unacked messages
//!   requeued when their channel or connection closes.
//! - Publishing: mandatory returns before the confirm, publisher confirms (nacks from
//!   reject-publish queues), transactions, direct reply-to, the message size limit,
//!   `connection.blocked` on demand.
//! - Errors with RabbitMQ's reply codes and texts, and its split between channel and
//!   connection errors.
//!
//! # Examples
//!
//! A client's side of the conversation, bytes in and bytes out:
//!
//! ```
//! use std::time::{Instant, SystemTime};
//! use bytes::BytesMut;
//! use lepus_memory::{Broker, BrokerConfig};
//! use lepus_wire::{Frame, Method, PROTOCOL_HEADER};
//!
//! let now = Instant::now();
//! let mut broker = Broker::new(BrokerConfig::default(), now, SystemTime::now());
//! let conn = broker.open_connection(now);
//! broker.handle_input(conn, now, &mut BytesMut::from(&PROTOCOL_HEADER[..]));
//! let mut out = BytesMut::from(&broker.take_output(conn, now).unwrap()[..]);
//! let Some(Frame::Method { method: Method::ConnectionStart(start), .. }) = Frame::decode(&mut out, 131_072)? else {
//!     panic!("expected connection.start");
//! };
//! assert_eq!(start.mechanisms.as_bytes(), b"PLAIN AMQPLAIN");
//! # Ok::<(), lepus_wire::DecodeError>(())
//! ```

mod broker;
mod server;
#[cfg(test)]
mod tests;

pub use broker::{BrokerConfig, ConnId, ExchangeInfo, ExchangeKind, QueueInfo};
pub use lepus_wire::ReplyCode;
pub use server::Broker;
