//! Field tables and field values, with the type tags RabbitMQ reads and writes.
//!
//! The 0-9-1 specification and RabbitMQ disagree on some tags; lepus follows RabbitMQ, which is
//! what every broker in practice speaks (see the RabbitMQ errata for AMQP 0-9-1):
//!
//! | tag | value | Rust | | tag | value | Rust |
//! |---|---|---|---|---|---|---|
//! | `t` | boolean | `bool` | | `l` | signed 64-bit | `i64` |
//! | `b` | signed 8-bit | `i8` | | `f` | 32-bit float | `f32` |
//! | `B` | unsigned 8-bit | `u8` | | `d` | 64-bit float | `f64` |
//! | `s` | signed 16-bit | `i16` | | `D` | decimal | [`Decimal`] |
//! | `u` | unsigned 16-bit | `u16` | | `S` | long string | [`LongStr`] |
//! | `I` | signed 32-bit | `i32` | | `x` | byte array | [`Bytes`] |
//! | `i` | unsigned 32-bit | `u32` | | `A` | array | `Vec<FieldValue>` |
//! | `T` | timestamp (seconds) | `u64` | | `F` | nested table | [`FieldTable`] |
//! | `V` | void | `()` | | | | |
//!
//! The decoder also reads `L`, which py-amqp writes for integers beyond 32 bits and RabbitMQ
//! passes through, as a signed 64-bit integer; the encoder always writes `l` for `i64`.
//!
//! # Converting Rust values
//!
//! [`FieldValue`] converts with `From` from the types in the table, and from the ones that map
//! onto a tag without loss:
//!
//! | Rust | tag |
//! |---|---|
//! | `&str`, `String`, `&String`, `Cow<str>`, [`ShortStr`], [`LongStr`] | `S` long string |
//! | `Vec<u8>`, `&[u8]`, [`Bytes`] | `x` byte array |
//! | `Vec<FieldValue>` | `A` array |
//! | `()` | `V` void |
//!
//! `u64` and `usize` convert with `TryFrom` into `l`, failing above `i64::MAX`: the tags
//! RabbitMQ reads have no unsigned 64-bit integer, and RabbitMQ's `l` is signed, so a larger
//! value would arrive negative. A plain `From<u64>` would have to pick between that silent
//! wrap and `T` (a timestamp), which is a different thing; write
//! [`FieldValue::Timestamp`] for a timestamp.
//!
//! ```
//! # use lepus_wire as lepus;
//! use lepus::{FieldTable, FieldValue};
//!
//! let user = String::from("alice");
//! let retries: u64 = 3;
//! let mut headers = FieldTable::new().with("user", user.as_str()).with("raw", vec![0u8, 1]);
//! headers.try_insert("retries", FieldValue::try_from(retries)?)?;
//! assert_eq!(headers.get("user").and_then(FieldValue::as_str), Some("alice"));
//! assert_eq!(headers.get("retries"), Some(&FieldValue::I64(3)));
//! assert!(FieldValue::try_from(u64::MAX).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::fmt;
use std::num::TryFromIntError;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::Reader;
use crate::error::{DecodeError, EncodeError};
use crate::types::{Decimal, LongStr, ShortStr};

/// How deeply tables and arrays may nest inside one another before decoding fails.
///
/// This bounds the decoder's recursion, so that a peer cannot exhaust the stack.
pub const MAX_NESTING: usize = 64;

/// One value in a [`FieldTable`] or field array.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FieldValue {
    /// `t`: a boolean.
    Bool(bool),
    /// `b`: a signed 8-bit integer.
    I8(i8),
    /// `B`: an unsigned 8-bit integer.
    U8(u8),
    /// `s`: a signed 16-bit integer.
    I16(i16),
    /// `u`: an unsigned 16-bit integer.
    U16(u16),
    /// `I`: a signed 32-bit integer.
    I32(i32),
    /// `i`: an unsigned 32-bit integer.
    U32(u32),
    /// `l` (and `L` when decoding): a signed 64-bit integer.
    I64(i64),
    /// `f`: a 32-bit float.
    F32(f32),
    /// `d`: a 64-bit float.
    F64(f64),
    /// `D`: a decimal.
    Decimal(Decimal),
    /// `S`: a long string; RabbitMQ uses it for every string value.
    LongStr(LongStr),
    /// `x`: a byte array.
    Bytes(Bytes),
    /// `A`: an array of values.
    Array(Vec<FieldValue>),
    /// `T`: a timestamp, in seconds since the Unix epoch.
    Timestamp(u64),
    /// `F`: a nested table.
    Table(FieldTable),
    /// `V`: no value.
    Void,
}

impl FieldValue {
    /// The type tag this value is sent with.
    pub fn tag(&self) -> u8 {
        match self {
            Self::Bool(_) => b't',
            Self::I8(_) => b'b',
            Self::U8(_) => b'B',
            Self::I16(_) => b's',
            Self::U16(_) => b'u',
            Self::I32(_) => b'I',
            Self::U32(_) => b'i',
            Self::I64(_) => b'l',
            Self::F32(_) => b'f',
            Self::F64(_) => b'd',
            Self::Decimal(_) => b'D',
            Self::LongStr(_) => b'S',
            Self::Bytes(_) => b'x',
            Self::Array(_) => b'A',
            Self::Timestamp(_) => b'T',
            Self::Table(_) => b'F',
            Self::Void => b'V',
        }
    }

    /// The value as a boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an `i64`, if it is an integer of any width that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::U8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as an `f64`, if it is a float.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as text, if it is a long string holding UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::LongStr(s) => s.as_str(),
            _ => None,
        }
    }

    /// The raw bytes of a long string or byte array.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::LongStr(s) => Some(s.as_bytes()),
            Self::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The nested table, if this is one.
    pub fn as_table(&self) -> Option<&FieldTable> {
        match self {
            Self::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The array's values, if this is an array.
    pub fn as_array(&self) -> Option<&[FieldValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    fn decode(r: &mut Reader<'_>, depth: usize) -> Result<Self, DecodeError> {
        const CTX: &str = "field value";
        let tag = r.u8("field type tag")?;
        Ok(match tag {
            b't' => Self::Bool(r.u8(CTX)? != 0),
            b'b' => Self::I8(r.u8(CTX)? as i8),
            b'B' => Self::U8(r.u8(CTX)?),
            b's' => Self::I16(r.u16(CTX)? as i16),
            b'u' => Self::U16(r.u16(CTX)?),
            b'I' => Self::I32(r.u32(CTX)? as i32),
            b'i' => Self::U32(r.u32(CTX)?),
            b'l' | b'L' => Self::I64(r.u64(CTX)? as i64),
            b'f' => Self::F32(f32::from_bits(r.u32(CTX)?)),
            b'd' => Self::F64(f64::from_bits(r.u64(CTX)?)),
            b'D' => Self::Decimal(Decimal {
                scale: r.u8(CTX)?,
                value: r.u32(CTX)? as i32,
            }),
            b'S' => Self::LongStr(LongStr::decode(r)?),
            b'x' => {
                let len = r.u32("byte array length")?;
                Self::Bytes(r.bytes_u32(len, "byte array")?)
            }
            b'A' => Self::Array(decode_array(r, depth + 1)?),
            b'T' => Self::Timestamp(r.u64(CTX)?),
            b'F' => Self::Table(FieldTable::decode_nested(r, depth + 1)?),
            b'V' => Self::Void,
            tag => {
                return Err(DecodeError::UnknownFieldType {
                    tag,
                    context: "field table",
                })
            }
        })
    }

    fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.tag());
        match self {
            Self::Bool(v) => out.put_u8(u8::from(*v)),
            Self::I8(v) => out.put_i8(*v),
            Self::U8(v) => out.put_u8(*v),
            Self::I16(v) => out.put_i16(*v),
            Self::U16(v) => out.put_u16(*v),
            Self::I32(v) => out.put_i32(*v),
            Self::U32(v) => out.put_u32(*v),
            Self::I64(v) => out.put_i64(*v),
            Self::F32(v) => out.put_f32(*v),
            Self::F64(v) => out.put_f64(*v),
            Self::Decimal(d) => {
                out.put_u8(d.scale);
                out.put_i32(d.value);
            }
            Self::LongStr(s) => s.encode(out),
            Self::Bytes(b) => {
                // An array over 4 GiB makes its frame exceed frame_max, which is rejected.
                out.put_u32(b.len() as u32);
                out.put_slice(b);
            }
            Self::Array(values) => with_length_prefix(out, |out| {
                for v in values {
                    v.encode(out);
                }
            }),
            Self::Timestamp(t) => out.put_u64(*t),
            Self::Table(t) => t.encode(out),
            Self::Void => {}
        }
    }
}

/// Writes a 32-bit length, then what `body` writes, then back-patches the length.
fn with_length_prefix(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let at = out.len();
    out.put_u32(0);
    body(out);
    // Longer than u32::MAX makes the frame exceed frame_max; the frame encoder rejects it.
    let len = (out.len() - at - 4) as u32;
    if let Some(slot) = out.get_mut(at..at + 4) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
}

fn decode_array(r: &mut Reader<'_>, depth: usize) -> Result<Vec<FieldValue>, DecodeError> {
    if depth > MAX_NESTING {
        return Err(DecodeError::TooDeep { max: MAX_NESTING });
    }
    let len = r.u32("field array length")?;
    let mut inner = r.nested(len, "field array")?;
    // No capacity from the peer's length: the vector grows with what actually decodes.
    let mut values = Vec::new();
    while inner.remaining() > 0 {
        values.push(FieldValue::decode(&mut inner, depth)?);
    }
    Ok(values)
}

/// An AMQP field table: named values, in the order they were inserted or received.
///
/// Order is kept so that a decoded table encodes back to the same bytes. Lookups are linear,
/// which is faster than hashing for the handful of entries tables hold in practice. Inserting an
/// existing key replaces its value in place.
///
/// # Examples
///
/// ```
/// # use lepus_wire as lepus;
/// use lepus::{FieldTable, FieldValue};
///
/// let args = FieldTable::new()
///     .with("x-message-ttl", 60_000)
///     .with("x-queue-type", "quorum")
///     .with("x-single-active-consumer", true);
/// assert_eq!(args.get("x-message-ttl").and_then(FieldValue::as_i64), Some(60_000));
/// assert_eq!(args.get("x-queue-type").and_then(FieldValue::as_str), Some("quorum"));
/// assert_eq!(args.len(), 3);
/// ```
#[derive(Clone, Default, PartialEq)]
pub struct FieldTable {
    entries: Vec<(ShortStr, FieldValue)>,
}

impl FieldTable {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// Adds or replaces an entry and returns the table, for building tables in one expression.
    ///
    /// # Panics
    ///
    /// If `key` is longer than 255 bytes; use [`try_insert`](Self::try_insert) for keys that
    /// are not literals.
    #[must_use]
    pub fn with(mut self, key: &'static str, value: impl Into<FieldValue>) -> Self {
        self.insert(ShortStr::from_static(key), value);
        self
    }

    /// Adds or replaces an entry, returning the value it replaced.
    pub fn insert(&mut self, key: ShortStr, value: impl Into<FieldValue>) -> Option<FieldValue> {
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, slot)) => Some(std::mem::replace(slot, value)),
            None => {
                self.entries.push((key, value));
                None
            }
        }
    }

    /// Adds or replaces an entry under a key given as text.
    ///
    /// # Errors
    ///
    /// [`EncodeError::ShortStrTooLong`] when the key is longer than 255 bytes.
    pub fn try_insert(
        &mut self,
        key: &str,
        value: impl Into<FieldValue>,
    ) -> Result<Option<FieldValue>, EncodeError> {
        Ok(self.insert(ShortStr::try_from(key)?, value))
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_bytes() == key.as_bytes())
            .map(|(_, v)| v)
    }

    /// Removes the entry under `key` and returns its value.
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        let at = self
            .entries
            .iter()
            .position(|(k, _)| k.as_bytes() == key.as_bytes())?;
        Some(self.entries.remove(at).1)
    }

    /// Whether an entry exists under `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&ShortStr, &FieldValue)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_nested(r, 0)
    }

    fn decode_nested(r: &mut Reader<'_>, depth: usize) -> Result<Self, DecodeError> {
        if depth > MAX_NESTING {
            return Err(DecodeError::TooDeep { max: MAX_NESTING });
        }
        let len = r.u32("field table length")?;
        if len == 0 {
            return Ok(Self::new());
        }
        let mut inner = r.nested(len, "field table")?;
        let mut entries = Vec::new();
        while inner.remaining() > 0 {
            let key = ShortStr::decode(&mut inner)?;
            let value = FieldValue::decode(&mut inner, depth)?;
            entries.push((key, value));
        }
        Ok(Self { entries })
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        if self.entries.is_empty() {
            out.put_u32(0);
            return;
        }
        with_length_prefix(out, |out| {
            for (k, v) in &self.entries {
                k.encode(out);
                v.encode(out);
            }
        });
    }

    /// Decodes a table (with its 32-bit length prefix) from the start of `bytes`.
    ///
    /// The bytes are advanced past the table; values share memory with `bytes`.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] when the bytes are not a well-formed table.
    pub fn decode_from(bytes: &mut Bytes) -> Result<Self, DecodeError> {
        crate::codec::read_from(bytes, Self::decode)
    }

    /// Appends the table, with its 32-bit length prefix, to `out`.
    pub fn encode_to(&self, out: &mut BytesMut) {
        self.encode(out);
    }
}

impl fmt::Debug for FieldTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a FieldTable {
    type Item = (&'a ShortStr, &'a FieldValue);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (ShortStr, FieldValue)>,
        fn(&'a (ShortStr, FieldValue)) -> (&'a ShortStr, &'a FieldValue),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl IntoIterator for FieldTable {
    type Item = (ShortStr, FieldValue);
    type IntoIter = std::vec::IntoIter<(ShortStr, FieldValue)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<V: Into<FieldValue>> FromIterator<(ShortStr, V)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (ShortStr, V)>>(iter: I) -> Self {
        let mut table = Self::new();
        for (k, v) in iter {
            table.insert(k, v);
        }
        table
    }
}

impl<V: Into<FieldValue>> Extend<(ShortStr, V)> for FieldTable {
    fn extend<I: IntoIterator<Item = (ShortStr, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

macro_rules! from_value {
    ($($t:ty => $variant:ident),* $(,)?) => {
        $(impl From<$t> for FieldValue {
            fn from(v: $t) -> Self {
                Self::$variant(v.into())
            }
        })*
    };
}

from_value! {
    bool => Bool, i8 => I8, u8 => U8, i16 => I16, u16 => U16, i32 => I32, u32 => U32,
    i64 => I64, f32 => F32, f64 => F64, Decimal => Decimal, LongStr => LongStr,
    String => LongStr, Bytes => Bytes, Vec<u8> => Bytes, FieldTable => Table,
    Vec<FieldValue> => Array,
}

impl From<&str> for FieldValue {
    /// A long string (`S`), copied; [`LongStr::from_static`] avoids the copy for a literal.
    fn from(s: &str) -> Self {
        Self::LongStr(LongStr::from_bytes(Bytes::copy_from_slice(s.as_bytes())))
    }
}

impl From<&String> for FieldValue {
    /// A long string (`S`), copied.
    fn from(s: &String) -> Self {
        Self::from(s.as_str())
    }
}

impl From<Cow<'_, str>> for FieldValue {
    /// A long string (`S`).
    fn from(s: Cow<'_, str>) -> Self {
        match s {
            Cow::Borrowed(s) => Self::from(s),
            Cow::Owned(s) => Self::from(s),
        }
    }
}

impl From<&[u8]> for FieldValue {
    /// A byte array (`x`), copied.
    fn from(b: &[u8]) -> Self {
        Self::Bytes(Bytes::copy_from_slice(b))
    }
}

impl From<ShortStr> for FieldValue {
    /// A short string goes into a table as a long string: RabbitMQ reads no short strings there.
    fn from(s: ShortStr) -> Self {
        Self::LongStr(LongStr::from_bytes(s.to_bytes()))
    }
}

impl From<&ShortStr> for FieldValue {
    /// A long string (`S`) sharing the short string's bytes.
    fn from(s: &ShortStr) -> Self {
        Self::from(s.clone())
    }
}

impl TryFrom<u64> for FieldValue {
    type Error = TryFromIntError;

    /// A signed 64-bit integer (`l`), or an error above `i64::MAX`: RabbitMQ reads no unsigned
    /// 64-bit tag (see the [module docs](self#converting-rust-values)).
    fn try_from(v: u64) -> Result<Self, TryFromIntError> {
        i64::try_from(v).map(Self::I64)
    }
}

impl TryFrom<usize> for FieldValue {
    type Error = TryFromIntError;

    /// A signed 64-bit integer (`l`), or an error above `i64::MAX`.
    fn try_from(v: usize) -> Result<Self, TryFromIntError> {
        i64::try_from(v).map(Self::I64)
    }
}

impl From<()> for FieldValue {
    fn from((): ()) -> Self {
        Self::Void
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Result<FieldTable, DecodeError> {
        FieldTable::decode_from(&mut Bytes::copy_from_slice(bytes))
    }

    fn encode(t: &FieldTable) -> Vec<u8> {
        let mut out = BytesMut::new();
        t.encode_to(&mut out);
        out.to_vec()
    }

    /// A table with one value of every type, written by hand from the type list RabbitMQ reads.
    #[test]
    fn golden_table_with_every_type() {
        #[rustfmt::skip]
        let body: Vec<u8> = [
            &[1, b'a', b't', 1][..],
            &[1, b'b', b'b', 0xfe],
            &[1, b'c', b'B', 0xfe],
            &[1, b'd', b's', 0xff, 0xfe],
            &[1, b'e', b'u', 0xff, 0xfe],
            &[1, b'f', b'I', 0xff, 0xff, 0xff, 0xfe],
            &[1, b'g', b'i', 0xff, 0xff, 0xff, 0xfe],
            &[1, b'h', b'l', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe],
            &[1, b'i', b'f', 0x3f, 0xc0, 0, 0],
            &[1, b'j', b'd', 0x40, 0x00, 0, 0, 0, 0, 0, 0],
            &[1, b'k', b'D', 2, 0xff, 0xff, 0xff, 0xfb],
            &[1, b'l', b'S', 0, 0, 0, 2, b'h', b'i'],
            &[1, b'm', b'x', 0, 0, 0, 2, 0x00, 0xff],
            &[1, b'n', b'A', 0, 0, 0, 7, b'I', 0, 0, 0, 1, b't', 0],
            &[1, b'o', b'T', 0, 0, 0, 0, 0x5f, 0x5e, 0x10, 0x00],
            &[1, b'p', b'F', 0, 0, 0, 3, 1, b'q', b'V'],
            &[1, b'r', b'V'],
        ]
        .concat();
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);

        let expected = FieldTable::new()
            .with("a", true)
            .with("b", -2i8)
            .with("c", 254u8)
            .with("d", -2i16)
            .with("e", 65534u16)
            .with("f", -2i32)
            .with("g", 4_294_967_294u32)
            .with("h", -2i64)
            .with("i", 1.5f32)
            .with("j", 2.0f64)
            .with(
                "k",
                Decimal {
                    scale: 2,
                    value: -5,
                },
            )
            .with("l", "hi")
            .with("m", Bytes::from_static(&[0, 0xff]))
            .with("n", vec![FieldValue::I32(1), FieldValue::Bool(false)])
            .with("o", FieldValue::Timestamp(1_600_000_000))
            .with("p", FieldTable::new().with("q", ()))
            .with("r", ());
        assert_eq!(decode(&bytes).unwrap(), expected);
        assert_eq!(encode(&expected), bytes);
    }

    /// The tag octet a value is encoded with, after checking that it decodes back unchanged.
    fn encoded_tag(value: FieldValue) -> u8 {
        let table = FieldTable::new().with("k", value);
        let bytes = encode(&table);
        assert_eq!(decode(&bytes).unwrap(), table);
        // 4 bytes of table length, then the key: one length octet and `k`.
        bytes[6]
    }

    #[test]
    fn borrowed_text_converts_to_a_long_string() {
        // Text that lives only as long as this function: no 'static needed.
        let dynamic = format!("user-{}", 42);
        let borrowed: &str = &dynamic;
        let cases: [(FieldValue, &str); 6] = [
            (borrowed.into(), "user-42"),
            ((&dynamic).into(), "user-42"),
            (dynamic.clone().into(), "user-42"),
            (Cow::Borrowed(borrowed).into(), "user-42"),
            (Cow::<str>::Owned(dynamic.clone()).into(), "user-42"),
            ((&ShortStr::from_static("tag")).into(), "tag"),
        ];
        for (value, text) in cases {
            assert_eq!(value.as_str(), Some(text));
            assert_eq!(encoded_tag(value), b'S');
        }
        let table = FieldTable::new().with("user", borrowed);
        assert_eq!(
            table.get("user").and_then(FieldValue::as_str),
            Some("user-42")
        );
    }

    #[test]
    fn bytes_convert_to_a_byte_array() {
        let raw = vec![0u8, 0xff, 7];
        let cases: [FieldValue; 3] = [
            raw.clone().into(),
            raw.as_slice().into(),
            Bytes::from(raw.clone()).into(),
        ];
        for value in cases {
            assert_eq!(value.as_bytes(), Some(&raw[..]));
            assert_eq!(encoded_tag(value), b'x');
        }
    }

    #[test]
    fn unsigned_64_bit_converts_only_when_it_fits_a_signed_one() {
        assert_eq!(FieldValue::try_from(0u64), Ok(FieldValue::I64(0)));
        let max = u64::try_from(i64::MAX).unwrap();
        assert_eq!(FieldValue::try_from(max), Ok(FieldValue::I64(i64::MAX)));
        assert!(FieldValue::try_from(max + 1).is_err());
        assert!(FieldValue::try_from(u64::MAX).is_err());
        assert_eq!(FieldValue::try_from(7usize), Ok(FieldValue::I64(7)));
        assert_eq!(encoded_tag(FieldValue::try_from(max).unwrap()), b'l');
    }

    #[test]
    fn small_values_keep_their_own_tags() {
        let cases: [(FieldValue, u8); 12] = [
            (true.into(), b't'),
            ((-1i8).into(), b'b'),
            (1u8.into(), b'B'),
            ((-1i16).into(), b's'),
            (1u16.into(), b'u'),
            ((-1i32).into(), b'I'),
            (1u32.into(), b'i'),
            ((-1i64).into(), b'l'),
            (1.5f32.into(), b'f'),
            (1.5f64.into(), b'd'),
            (vec![FieldValue::Void].into(), b'A'),
            (().into(), b'V'),
        ];
        for (value, tag) in cases {
            assert_eq!(encoded_tag(value), tag);
        }
    }

    mod conversions {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn any_text_is_a_long_string(text in ".{0,64}") {
                let value = FieldValue::from(text.as_str());
                prop_assert_eq!(value.as_str(), Some(text.as_str()));
                prop_assert_eq!(encoded_tag(value), b'S');
            }

            #[test]
            fn any_bytes_are_a_byte_array(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
                let value = FieldValue::from(raw.as_slice());
                prop_assert_eq!(value.as_bytes(), Some(&raw[..]));
                prop_assert_eq!(encoded_tag(value), b'x');
            }

            #[test]
            fn any_u64_is_a_signed_long_or_an_error(v in any::<u64>()) {
                match FieldValue::try_from(v) {
                    Ok(value) => {
                        prop_assert!(i64::try_from(v).is_ok());
                        prop_assert_eq!(value.as_i64().map(|n| n as u64), Some(v));
                        prop_assert_eq!(encoded_tag(value), b'l');
                    }
                    Err(_) => prop_assert!(i64::try_from(v).is_err()),
                }
            }
        }
    }

    #[test]
    fn upper_l_reads_as_signed_64_bit() {
        let bytes = [
            0, 0, 0, 11, 1, b'n', b'L', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        assert_eq!(decode(&bytes).unwrap().get("n"), Some(&FieldValue::I64(-1)));
    }

    #[test]
    fn insert_replaces_in_place_and_keeps_order() {
        let mut t = FieldTable::new().with("a", 1).with("b", 2);
        let old = t.insert(ShortStr::from_static("a"), 3);
        assert_eq!(old, Some(FieldValue::I32(1)));
        let keys: Vec<_> = t.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(t.remove("a"), Some(FieldValue::I32(3)));
        assert!(!t.contains_key("a"));
    }

    #[test]
    fn truncated_table_is_an_error() {
        let err = decode(&[0, 0, 0, 10, 1, b'a']).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Truncated {
                    context: "field table",
                    ..
                }
            ),
            "{err}"
        );
        let err = decode(&[0, 0, 0, 3, 1, b'a', b'I']).unwrap_err();
        assert!(matches!(err, DecodeError::Truncated { .. }), "{err}");
    }

    #[test]
    fn huge_declared_length_does_not_allocate() {
        // 4 GiB declared, 2 bytes present: an error, not an allocation.
        let err = decode(&[0xff, 0xff, 0xff, 0xff, 1, b'a']).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::Truncated {
                needed: 0xffff_ffff,
                ..
            }
        ));
    }

    #[test]
    fn unknown_tag_is_an_error() {
        let err = decode(&[0, 0, 0, 3, 1, b'a', b'Z']).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnknownFieldType {
                tag: b'Z',
                context: "field table"
            }
        );
    }

    #[test]
    fn nesting_is_bounded() {
        // Arrays nested far beyond the limit: each level is `A` + 4-byte length.
        let levels = MAX_NESTING + 10;
        let mut inner: Vec<u8> = Vec::new();
        for _ in 0..levels {
            let mut next = vec![b'A'];
            next.extend_from_slice(&(inner.len() as u32).to_be_bytes());
            next.extend_from_slice(&inner);
            inner = next;
        }
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&((inner.len() + 2) as u32).to_be_bytes());
        bytes.extend_from_slice(&[1, b'k']);
        bytes.extend_from_slice(&inner);
        assert_eq!(
            decode(&bytes).unwrap_err(),
            DecodeError::TooDeep { max: MAX_NESTING }
        );
    }
}
