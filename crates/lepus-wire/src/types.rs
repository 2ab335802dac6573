//! Primitive wire types: short and long strings, decimals.

use std::borrow::{Borrow, Cow};
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::Reader;
use crate::error::{DecodeError, EncodeError};

/// An AMQP short string: at most 255 bytes, sent with a one-octet length.
///
/// Queue, exchange and consumer-tag names, routing keys and most properties are short strings.
/// The wire type is a run of octets; RabbitMQ treats names as UTF-8 but passes routing keys
/// through as given, so a `ShortStr` holds bytes and [`as_str`](Self::as_str) says whether they
/// are UTF-8. Decoding shares the received frame's memory instead of copying.
///
/// Methods that take a name accept a `ShortStr` directly, as they accept `&str` and `String`
/// (see [`AsShortStr`]): a consumer tag or a delivery's routing key goes back to the broker
/// without a conversion.
///
/// # Examples
///
/// ```
/// # use lepus_wire as lepus;
/// use lepus::ShortStr;
///
/// let key = ShortStr::try_from("orders.created")?;
/// assert_eq!(key.as_str(), Some("orders.created"));
/// assert_eq!(key, "orders.created");
/// assert!(ShortStr::try_from("x".repeat(256)).is_err());
/// # Ok::<(), lepus::EncodeError>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShortStr(Bytes);

impl ShortStr {
    /// The longest short string, in bytes.
    pub const MAX_LEN: usize = 255;

    /// A short string from a `'static` string, without copying.
    ///
    /// # Panics
    ///
    /// If `s` is longer than 255 bytes; meant for literals, whose length is known.
    pub const fn from_static(s: &'static str) -> Self {
        assert!(
            s.len() <= Self::MAX_LEN,
            "short string longer than 255 bytes"
        );
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// A short string from bytes, checking the length.
    ///
    /// # Errors
    ///
    /// [`EncodeError::ShortStrTooLong`] when `bytes` is longer than 255 bytes.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Result<Self, EncodeError> {
        let bytes = bytes.into();
        if bytes.len() > Self::MAX_LEN {
            return Err(EncodeError::ShortStrTooLong { len: bytes.len() });
        }
        Ok(Self(bytes))
    }

    /// The string as UTF-8 text, or `None` when its bytes are not UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The string as text, with invalid UTF-8 replaced by U+FFFD.
    pub fn to_string_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The raw bytes, sharing memory with `self`.
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[inline]
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let len = r.u8("short string length")?;
        Ok(Self(r.bytes(usize::from(len), "short string")?))
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        // The constructors keep the length within 255, so the cast cannot truncate.
        out.put_u8(self.0.len() as u8);
        out.put_slice(&self.0);
    }
}

impl TryFrom<&str> for ShortStr {
    type Error = EncodeError;

    fn try_from(s: &str) -> Result<Self, EncodeError> {
        Self::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl TryFrom<String> for ShortStr {
    type Error = EncodeError;

    fn try_from(s: String) -> Result<Self, EncodeError> {
        Self::from_bytes(s)
    }
}

impl TryFrom<&String> for ShortStr {
    type Error = EncodeError;

    fn try_from(s: &String) -> Result<Self, EncodeError> {
        Self::try_from(s.as_str())
    }
}

impl TryFrom<Bytes> for ShortStr {
    type Error = EncodeError;

    fn try_from(b: Bytes) -> Result<Self, EncodeError> {
        Self::from_bytes(b)
    }
}

/// A value that can be sent as an AMQP short string: the names, tags and keys that methods take.
///
/// Implemented for text (`&str`, `&String`, `Cow<str>`), for [`ShortStr`], and for references
/// to them, so the same method accepts a literal, a `String` the application built (passed as
/// `&name`, as to a `&str` parameter), and a `ShortStr` the broker sent, such as a consumer tag
/// or a delivery's routing key:
///
/// ```
/// # use lepus_wire as lepus;
/// use lepus::{AsShortStr, ShortStr};
///
/// fn queue_name(name: impl AsShortStr) -> Result<ShortStr, lepus::EncodeError> {
///     name.to_short_str()
/// }
///
/// let tag = ShortStr::from_static("amq.ctag-1");
/// assert_eq!(queue_name("jobs")?, "jobs");
/// assert_eq!(queue_name(&String::from("jobs"))?, "jobs");
/// assert_eq!(queue_name(&tag)?, "amq.ctag-1");
/// assert!(queue_name(&"x".repeat(256)).is_err());
/// # Ok::<(), lepus::EncodeError>(())
/// ```
///
/// The length is checked when the value is converted, not by the trait: [`to_short_str`]
/// fails on more than 255 bytes.
///
/// [`to_short_str`]: AsShortStr::to_short_str
pub trait AsShortStr {
    /// The octets to send, which may be more than 255 (the conversion checks).
    fn as_short_bytes(&self) -> &[u8];

    /// The value as a [`ShortStr`], copied unless it already is one.
    ///
    /// # Errors
    ///
    /// [`EncodeError::ShortStrTooLong`] for more than 255 bytes.
    fn to_short_str(&self) -> Result<ShortStr, EncodeError> {
        ShortStr::from_bytes(Bytes::copy_from_slice(self.as_short_bytes()))
    }
}

impl AsShortStr for str {
    fn as_short_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

// For `&String`, not `String`: an owned `String` is passed as `&name`, as to a `&str`
// parameter. Were `String` itself accepted, every `f(&format!(..))` would draw clippy's
// `needless_borrows_for_generic_args`, and code written for the `&str` signatures would too.
impl AsShortStr for &String {
    fn as_short_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsShortStr for Cow<'_, str> {
    fn as_short_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsShortStr for ShortStr {
    fn as_short_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Shares the bytes: no copy.
    fn to_short_str(&self) -> Result<ShortStr, EncodeError> {
        Ok(self.clone())
    }
}

impl<T: AsShortStr + ?Sized> AsShortStr for &T {
    fn as_short_bytes(&self) -> &[u8] {
        (**self).as_short_bytes()
    }

    fn to_short_str(&self) -> Result<ShortStr, EncodeError> {
        (**self).to_short_str()
    }
}

impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => fmt::Debug::fmt(s, f),
            None => write!(f, "b{:?}", self.0),
        }
    }
}

impl fmt::Display for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}

impl PartialEq<str> for ShortStr {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for ShortStr {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl Borrow<[u8]> for ShortStr {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for ShortStr {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// An AMQP long string: up to 2^32 - 1 bytes, sent with a four-octet length.
///
/// Used for binary data such as SASL responses and, inside field tables, for strings (tag `S`).
/// Decoding shares the received frame's memory instead of copying.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LongStr(Bytes);

impl LongStr {
    /// A long string from a `'static` string, without copying.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// A long string from bytes, without copying.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    /// The string as UTF-8 text, or `None` when its bytes are not UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The string as text, with invalid UTF-8 replaced by U+FFFD.
    pub fn to_string_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The raw bytes, sharing memory with `self`.
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[inline]
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let len = r.u32("long string length")?;
        Ok(Self(r.bytes_u32(len, "long string")?))
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        // A longer string makes the frame exceed frame_max, which the frame encoder rejects.
        out.put_u32(self.0.len() as u32);
        out.put_slice(&self.0);
    }
}

// No length check here: a long string over 4 GiB cannot fit in any frame, and the frame encoder
// rejects a frame larger than frame_max (itself a u32) before anything is sent.
impl From<&'static str> for LongStr {
    fn from(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for LongStr {
    fn from(s: String) -> Self {
        Self(Bytes::from(s))
    }
}

impl From<Vec<u8>> for LongStr {
    fn from(v: Vec<u8>) -> Self {
        Self(Bytes::from(v))
    }
}

impl From<Bytes> for LongStr {
    fn from(b: Bytes) -> Self {
        Self(b)
    }
}

impl fmt::Debug for LongStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => fmt::Debug::fmt(s, f),
            None => write!(f, "b{:?}", self.0),
        }
    }
}

impl PartialEq<str> for LongStr {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for LongStr {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

/// A decimal number as AMQP sends it: `value / 10^scale`.
///
/// `Decimal { scale: 2, value: 123 }` is 1.23. RabbitMQ reads the value as a signed 32-bit
/// integer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Decimal {
    /// Number of decimal digits after the point.
    pub scale: u8,
    /// The unscaled value.
    pub value: i32,
}

impl fmt::Display for Decimal {
    /// Writes the number with exactly `scale` digits after the point: `1.230`, `-0.05`, `42`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.value.unsigned_abs().to_string();
        let sign = if self.value < 0 { "-" } else { "" };
        let scale = usize::from(self.scale);
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_str_limits() {
        assert!(ShortStr::try_from("a".repeat(255)).is_ok());
        assert_eq!(
            ShortStr::try_from("a".repeat(256)),
            Err(EncodeError::ShortStrTooLong { len: 256 })
        );
    }

    #[test]
    fn as_short_str_accepts_text_and_short_strings() {
        fn convert(v: impl AsShortStr) -> Result<ShortStr, EncodeError> {
            v.to_short_str()
        }
        let tag = ShortStr::from_static("amq.ctag-1");
        let owned = String::from("jobs");
        assert_eq!(convert("jobs").unwrap(), "jobs");
        assert_eq!(convert(&owned).unwrap(), "jobs");
        assert_eq!(convert(Cow::Borrowed("jobs")).unwrap(), "jobs");
        let nested: &&str = &"jobs";
        assert_eq!(convert(nested).unwrap(), "jobs");
        assert_eq!(convert(&tag).unwrap(), tag);
        // A ShortStr passes through without a copy.
        let passed = convert(tag.clone()).unwrap();
        assert_eq!(passed.as_bytes().as_ptr(), tag.as_bytes().as_ptr());
        assert_eq!(
            convert(&"x".repeat(256)),
            Err(EncodeError::ShortStrTooLong { len: 256 })
        );
        assert!(convert(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn short_str_non_utf8_is_kept() {
        let s = ShortStr::from_bytes(vec![0xff, b'a']).unwrap();
        assert_eq!(s.as_str(), None);
        assert_eq!(s.as_bytes(), &[0xff, b'a']);
        assert_eq!(s.to_string_lossy(), "\u{fffd}a");
    }

    #[test]
    fn decimal_display_keeps_scale() {
        let d = |scale, value| Decimal { scale, value }.to_string();
        assert_eq!(d(3, 1230), "1.230");
        assert_eq!(d(2, -5), "-0.05");
        assert_eq!(d(0, 42), "42");
        assert_eq!(d(1, 0), "0.0");
        assert_eq!(d(2, i32::MIN), "-21474836.48");
    }
}
