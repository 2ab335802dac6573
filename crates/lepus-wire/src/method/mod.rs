//! AMQP 0-9-1 methods: one struct per method, grouped by class, and the [`Method`] enum.
//!
//! The structs, their codecs and the dispatch tables are generated from RabbitMQ's JSON spec
//! (see `lepus-codegen`); this module holds the hand-written glue. Bit arguments are `bool`
//! fields, packed by the codec into octets low bit first as the spec requires. Reserved arguments
//! (`ticket`, `insist`, `out-of-band`, ...) are not fields: the encoder writes their fixed values
//! and the decoder skips them.
//!
//! # Examples
//!
//! ```
//! use lepus_wire::method::{queue, Method};
//! use lepus_wire::{FieldTable, ShortStr};
//!
//! let declare = queue::Declare {
//!     queue: ShortStr::from_static("jobs"),
//!     durable: true,
//!     arguments: FieldTable::new().with("x-queue-type", "quorum"),
//!     ..Default::default()
//! };
//! let method = Method::from(declare);
//! assert_eq!((method.class_id(), method.method_id()), (50, 10));
//! assert_eq!(method.name(), "queue.declare");
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::Reader;
use crate::error::DecodeError;

// Generated code is kept exactly as the generator writes it (a test compares the two).
#[rustfmt::skip]
mod generated;

pub use generated::*;

/// A method's arguments: what every generated method struct implements.
///
/// Sealed: the set of methods is fixed by the protocol.
pub trait MethodArgs: Sized + sealed::Sealed {
    /// The class id.
    const CLASS_ID: u16;
    /// The method id.
    const METHOD_ID: u16;
    /// `class.method`, as the spec spells it.
    const NAME: &'static str;

    /// Appends the arguments (not the class and method ids) to `out`.
    fn encode_args(&self, out: &mut BytesMut);

    /// Decodes the arguments (after the class and method ids) from the front of `buf`.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] when the arguments are truncated or malformed.
    fn decode_fields(buf: &mut Bytes) -> Result<Self, DecodeError>;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! seal {
    ($($t:ty),* $(,)?) => { $(impl sealed::Sealed for $t {})* };
}

seal! {
    connection::Start, connection::StartOk, connection::Secure, connection::SecureOk,
    connection::Tune, connection::TuneOk, connection::Open, connection::OpenOk,
    connection::Close, connection::CloseOk, connection::Blocked, connection::Unblocked,
    connection::UpdateSecret, connection::UpdateSecretOk,
    channel::Open, channel::OpenOk, channel::Flow, channel::FlowOk, channel::Close,
    channel::CloseOk,
    access::Request, access::RequestOk,
    exchange::Declare, exchange::DeclareOk, exchange::Delete, exchange::DeleteOk,
    exchange::Bind, exchange::BindOk, exchange::Unbind, exchange::UnbindOk,
    queue::Declare, queue::DeclareOk, queue::Bind, queue::BindOk, queue::Purge,
    queue::PurgeOk, queue::Delete, queue::DeleteOk, queue::Unbind, queue::UnbindOk,
    basic::Qos, basic::QosOk, basic::Consume, basic::ConsumeOk, basic::Cancel,
    basic::CancelOk, basic::Publish, basic::Return, basic::Deliver, basic::Get, basic::GetOk,
    basic::GetEmpty, basic::Ack, basic::Reject, basic::RecoverAsync, basic::Recover,
    basic::RecoverOk, basic::Nack,
    tx::Select, tx::SelectOk, tx::Commit, tx::CommitOk, tx::Rollback, tx::RollbackOk,
    confirm::Select, confirm::SelectOk,
}

/// Reading a method's arguments from a [`Reader`]: what [`MethodArgs::decode_fields`] and
/// [`Method::read`] do, crate-private because the reader is.
pub(crate) trait ReadArgs: Sized {
    /// Decodes the arguments (after the class and method ids).
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

/// Decodes one method's arguments, requiring that they use the whole payload.
#[inline]
fn read_args<M: MethodArgs + ReadArgs>(r: &mut Reader<'_>) -> Result<M, DecodeError> {
    let decoded = M::read(r).map_err(|e| e.in_method(M::NAME))?;
    r.finish(M::NAME)?;
    Ok(decoded)
}

/// Appends class id, method id and arguments.
#[inline]
fn encode_with_ids<M: MethodArgs>(method: &M, out: &mut BytesMut) {
    out.put_u16(M::CLASS_ID);
    out.put_u16(M::METHOD_ID);
    method.encode_args(out);
}
