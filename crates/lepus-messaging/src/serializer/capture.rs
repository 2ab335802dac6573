//! A serde `Serializer` that captures a value serializing as one string or one byte string:
//! the raw and text serializers, and the marker `with`-modules, use it to find out what a value
//! is made of without a format.

use std::fmt;

use serde::ser::{self, Impossible, Serialize};

/// What a value serialized as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Captured {
    /// `serialize_str` or `serialize_char` (or `collect_str`).
    Str(String),
    /// `serialize_bytes`, or a sequence or tuple of `u8`s (`Vec<u8>`, `&[u8]`, `[u8; N]`).
    Bytes(Vec<u8>),
    /// `serialize_none` or `serialize_unit`.
    None,
}

/// Captures `value` as a string, bytes or nothing.
///
/// `Some` and newtype wrappers are looked through. The capture claims to be human-readable, so
/// types with two forms (such as `uuid::Uuid`) give their text form.
pub(crate) fn capture<T: Serialize + ?Sized>(value: &T) -> Result<Captured, CaptureError> {
    value.serialize(Capture)
}

/// The value did not serialize as a string or bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CaptureError(String);

impl CaptureError {
    fn unsupported(what: &str) -> Self {
        Self(format!(
            "expected a value that serializes as a string or bytes, got {what}"
        ))
    }
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CaptureError {}

impl ser::Error for CaptureError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

struct Capture;

macro_rules! unsupported {
    ($($method:ident: $ty:ty => $what:literal,)*) => {
        $(fn $method(self, _v: $ty) -> Result<Captured, CaptureError> {
            Err(CaptureError::unsupported($what))
        })*
    };
}

impl ser::Serializer for Capture {
    type Ok = Captured;
    type Error = CaptureError;
    type SerializeSeq = ByteSeq;
    type SerializeTuple = ByteSeq;
    type SerializeTupleStruct = Impossible<Captured, CaptureError>;
    type SerializeTupleVariant = Impossible<Captured, CaptureError>;
    type SerializeMap = Impossible<Captured, CaptureError>;
    type SerializeStruct = Impossible<Captured, CaptureError>;
    type SerializeStructVariant = Impossible<Captured, CaptureError>;

    unsupported! {
        serialize_bool: bool => "a boolean",
        serialize_i8: i8 => "an integer",
        serialize_i16: i16 => "an integer",
        serialize_i32: i32 => "an integer",
        serialize_i64: i64 => "an integer",
        serialize_i128: i128 => "an integer",
        serialize_u8: u8 => "an integer",
        serialize_u16: u16 => "an integer",
        serialize_u32: u32 => "an integer",
        serialize_u64: u64 => "an integer",
        serialize_u128: u128 => "an integer",
        serialize_f32: f32 => "a float",
        serialize_f64: f64 => "a float",
    }

    fn serialize_char(self, v: char) -> Result<Captured, CaptureError> {
        Ok(Captured::Str(v.to_string()))
    }

    fn serialize_str(self, v: &str) -> Result<Captured, CaptureError> {
        Ok(Captured::Str(v.to_owned()))
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<Captured, CaptureError> {
        Ok(Captured::Bytes(v.to_vec()))
    }

    fn serialize_none(self) -> Result<Captured, CaptureError> {
        Ok(Captured::None)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Captured, CaptureError> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<Captured, CaptureError> {
        Ok(Captured::None)
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<Captured, CaptureError> {
        Ok(Captured::None)
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
    ) -> Result<Captured, CaptureError> {
        Err(CaptureError::unsupported("an enum"))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Captured, CaptureError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<Captured, CaptureError> {
        Err(CaptureError::unsupported("an enum"))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<ByteSeq, CaptureError> {
        Ok(ByteSeq(Vec::with_capacity(len.unwrap_or(0).min(4096))))
    }

    fn serialize_tuple(self, len: usize) -> Result<ByteSeq, CaptureError> {
        Ok(ByteSeq(Vec::with_capacity(len.min(4096))))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, CaptureError> {
        Err(CaptureError::unsupported("a tuple struct"))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, CaptureError> {
        Err(CaptureError::unsupported("an enum"))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, CaptureError> {
        Err(CaptureError::unsupported("a map"))
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, CaptureError> {
        Err(CaptureError::unsupported("a struct"))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, CaptureError> {
        Err(CaptureError::unsupported("an enum"))
    }
}

/// Collects a sequence of `u8`s (what `Vec<u8>` and `&[u8]` serialize as without
/// `serde_bytes`).
pub(crate) struct ByteSeq(Vec<u8>);

impl ByteSeq {
    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CaptureError> {
        self.0.push(value.serialize(ByteElement)?);
        Ok(())
    }
}

impl ser::SerializeSeq for ByteSeq {
    type Ok = Captured;
    type Error = CaptureError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CaptureError> {
        self.push(value)
    }

    fn end(self) -> Result<Captured, CaptureError> {
        Ok(Captured::Bytes(self.0))
    }
}

impl ser::SerializeTuple for ByteSeq {
    type Ok = Captured;
    type Error = CaptureError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CaptureError> {
        self.push(value)
    }

    fn end(self) -> Result<Captured, CaptureError> {
        Ok(Captured::Bytes(self.0))
    }
}

/// Accepts exactly one `u8`.
struct ByteElement;

macro_rules! not_a_byte {
    ($($method:ident: $ty:ty,)*) => {
        $(fn $method(self, _v: $ty) -> Result<u8, CaptureError> {
            Err(CaptureError::unsupported("a sequence of something other than u8"))
        })*
    };
}

impl ser::Serializer for ByteElement {
    type Ok = u8;
    type Error = CaptureError;
    type SerializeSeq = Impossible<u8, CaptureError>;
    type SerializeTuple = Impossible<u8, CaptureError>;
    type SerializeTupleStruct = Impossible<u8, CaptureError>;
    type SerializeTupleVariant = Impossible<u8, CaptureError>;
    type SerializeMap = Impossible<u8, CaptureError>;
    type SerializeStruct = Impossible<u8, CaptureError>;
    type SerializeStructVariant = Impossible<u8, CaptureError>;

    fn serialize_u8(self, v: u8) -> Result<u8, CaptureError> {
        Ok(v)
    }

    not_a_byte! {
        serialize_bool: bool,
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_i128: i128,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_u128: u128,
        serialize_f32: f32,
        serialize_f64: f64,
        serialize_char: char,
        serialize_str: &str,
        serialize_bytes: &[u8],
        serialize_unit_struct: &'static str,
    }

    fn serialize_none(self) -> Result<u8, CaptureError> {
        Err(CaptureError::unsupported(
            "a sequence of something other than u8",
        ))
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<u8, CaptureError> {
        Err(CaptureError::unsupported(
            "a sequence of something other than u8",
        ))
    }

    fn serialize_unit(self) -> Result<u8, CaptureError> {
        Err(CaptureError::unsupported(
            "a sequence of something other than u8",
        ))
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
    ) -> Result<u8, CaptureError> {
        Err(CaptureError::unsupported(
            "a sequence of something other than u8",
        ))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<u8, CaptureError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<u8, CaptureError> {
        Err(CaptureError::unsupported(
            "a sequence of something other than u8",
        ))
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, CaptureError> {
        Err(CaptureError::unsupported(
            "a sequence of something other than u8",
        ))
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, CaptureError> {
        Err(CaptureError::unsupported(
            "a sequence of something other than u8",
        ))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, CaptureError> {
        Err(CaptureError::unsupported(
            "a sequence of something other than u8",
        ))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, CaptureError> {
        Err(CaptureError::unsupported(
            "a sequence of something other than u8",
        ))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, CaptureError> {
        Err(CaptureError::unsupported(
            "a sequence of something other than u8",
        ))
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, CaptureError> {
        Err(CaptureError::unsupported(
            "a sequence of something other than u8",
        ))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, CaptureError> {
        Err(CaptureError::unsupported(
            "a sequence of something other than u8",
        ))
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    #[test]
    fn captures_strings_bytes_and_nothing() {
        assert_eq!(capture("héllo").unwrap(), Captured::Str("héllo".into()));
        assert_eq!(
            capture(&String::from("x")).unwrap(),
            Captured::Str("x".into())
        );
        assert_eq!(capture(&'c').unwrap(), Captured::Str("c".into()));
        assert_eq!(capture(&Some("x")).unwrap(), Captured::Str("x".into()));
        assert_eq!(capture(&None::<String>).unwrap(), Captured::None);
        assert_eq!(
            capture(&vec![1_u8, 2, 255]).unwrap(),
            Captured::Bytes(vec![1, 2, 255])
        );
        assert_eq!(
            capture(&b"ab"[..]).unwrap(),
            Captured::Bytes(b"ab".to_vec())
        );
        assert_eq!(capture(&[7_u8; 3]).unwrap(), Captured::Bytes(vec![7; 3]));
        assert_eq!(
            capture(serde_bytes::Bytes::new(b"\xff")).unwrap(),
            Captured::Bytes(vec![0xff])
        );
    }

    #[test]
    fn refuses_everything_else() {
        assert!(capture(&1_u32).is_err());
        assert!(capture(&vec![1_u16]).is_err());
        assert!(capture(&vec!["a"]).is_err());
        assert!(capture(&std::collections::BTreeMap::<String, String>::new()).is_err());
        let err = capture(&true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected a value that serializes as a string or bytes, got a boolean"
        );
    }
}
