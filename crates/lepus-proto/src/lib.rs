//! The sans-IO AMQP 0-9-1 client core of lepus.
//!
//! This crate holds the protocol logic of a client connection and its channels: the handshake
//! and negotiation, pairing replies with requests, assembling messages from frames, publisher
//! confirm sequence numbers, heartbeat deadlines and the close handshakes. It does no I/O and
//! reads no clock: the caller feeds it bytes and the current time, and takes out bytes to write,
//! events, and the next deadline. The tokio client `lepus` drives it; a test drives it with
//! scripted server frames and a fake clock.
//!
//! ```text
//!            bytes read ──► handle_input(now, &mut BytesMut)
//!       deadline passed ──► handle_timeout(now)
//!   open_channel / call /
//!   basic_publish / send ──► [ Connection ] ──► poll_transmit ──► bytes to write
//!                                           ──► poll_event    ──► Event::{Reply, Delivery, ..}
//!                                           ──► poll_timeout  ──► next deadline
//! ```
//!
//! See [`Connection`] for the call order.

mod auth;
mod config;
mod connection;
mod error;
mod event;
mod transmit;

#[cfg(test)]
mod tests;

pub use auth::Sasl;
pub use config::{
    Config, Heartbeat, DEFAULT_CHANNEL_MAX, DEFAULT_FRAME_MAX, DEFAULT_MAX_MESSAGE_SIZE,
    MIN_FRAME_MAX,
};
pub use connection::{Connection, Negotiated};
pub use error::{ChannelError, Close, ConnectionError, ForeignReply};
pub use event::{Event, Message, Reply};
pub use lepus_wire as wire;
