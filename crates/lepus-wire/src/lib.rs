//! The AMQP 0-9-1 wire codec of lepus: bytes in, typed frames out, and back.
//!
//! This crate is the bottom layer of lepus. It does no I/O, starts no tasks and reads no clock;
//! the protocol state machines (`lepus-proto`) and the tokio client (`lepus`) sit above it.
//!
//! ```text
//!   socket bytes ──► BytesMut ──► Frame::decode ──► Frame::{Method, Header, Body, Heartbeat}
//!                                                     │        │        └─ Bytes slice (no copy)
//!                                                     │        └─ ContentHeader + BasicProperties
//!                                                     └─ Method::QueueDeclareOk(queue::DeclareOk { .. })
//!
//!   method struct ──► encode_method / encode_header / encode_body_header ──► BytesMut ──► socket
//! ```
//!
//! - [`Frame`] decodes one frame at a time from a growable buffer and returns `Ok(None)` for a
//!   partial one, so a read loop can append bytes and call it again. It rejects a declared size
//!   above the negotiated frame_max before reserving any memory.
//! - [`Method`] covers every method of AMQP 0-9-1 with RabbitMQ's extensions; each is a struct
//!   with named fields in [`method`]'s class modules, generated from RabbitMQ's JSON spec.
//! - [`FieldTable`] and [`FieldValue`] use the type tags RabbitMQ reads and writes.
//! - [`BasicProperties`] holds the 14 message properties in the spec's flag order.
//! - Decoding never panics, never over-allocates on a length the peer claims, and bounds
//!   recursion ([`MAX_NESTING`]); every failure is a [`DecodeError`] that knows the reply code
//!   to close the connection with.
//!
//! A crate that depends on `lepus` reaches this one as `lepus::lepus_wire`, and finds the types
//! it needs day to day ([`FieldTable`], [`BasicProperties`], [`ShortStr`], ...) at the root of
//! `lepus`. The examples on those types are written as such a crate writes them
//! (`use lepus::FieldTable;`); with this crate alone, read `lepus_wire` for `lepus`.
//!
//! # Examples
//!
//! Encode a publish (method frame, content header, body) and decode it back:
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use lepus_wire::method::basic;
//! use lepus_wire::{frame, BasicProperties, Frame, Method, ShortStr, FRAME_END};
//!
//! let body = Bytes::from_static(b"hello");
//! let mut out = BytesMut::new();
//! let publish = basic::Publish {
//!     routing_key: ShortStr::from_static("greetings"),
//!     ..Default::default()
//! };
//! frame::encode_method(&mut out, 1, &publish, 131_072).unwrap();
//! let properties = BasicProperties::default();
//! frame::encode_header(&mut out, 1, body.len() as u64, &properties, 131_072).unwrap();
//! frame::encode_body_header(&mut out, 1, body.len());
//! out.extend_from_slice(&body);
//! out.extend_from_slice(&[FRAME_END]);
//!
//! let Some(Frame::Method { method: Method::BasicPublish(p), .. }) = Frame::decode(&mut out, 131_072)? else {
//!     panic!("expected basic.publish");
//! };
//! assert_eq!(p.routing_key, "greetings");
//! assert!(matches!(Frame::decode(&mut out, 131_072)?, Some(Frame::Header { .. })));
//! assert_eq!(
//!     Frame::decode(&mut out, 131_072)?,
//!     Some(Frame::Body { channel: 1, body })
//! );
//! # Ok::<(), lepus_wire::DecodeError>(())
//! ```

mod codec;
pub mod error;
pub mod field_table;
pub mod frame;
pub mod method;
pub mod properties;
pub mod reply_code;
mod types;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use error::{DecodeError, EncodeError};
pub use field_table::{FieldTable, FieldValue, MAX_NESTING};
pub use frame::{Frame, FRAME_END, FRAME_MIN_SIZE, PROTOCOL_HEADER};
pub use method::{Method, MethodArgs};
pub use properties::{BasicProperties, BasicPropertiesBuilder, ContentHeader, DeliveryMode};
pub use reply_code::ReplyCode;
pub use types::{AsShortStr, Decimal, LongStr, ShortStr};
