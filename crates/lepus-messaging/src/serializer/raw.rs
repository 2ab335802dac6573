//! A deserializer over a body that no serializer decodes (raw bytes or text in a charset), and
//! the charset rules of kombu's `loads` for such bodies.

use std::borrow::Cow;
use std::marker::PhantomData;

use serde::de::{self, value::SeqDeserializer, IntoDeserializer, Visitor};

use crate::BoxError;

/// A body that no serializer decoded: text or bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawBody<'a> {
    /// The body as text in its content encoding.
    Text(Cow<'a, str>),
    /// The body as it is.
    Bytes(&'a [u8]),
}

/// kombu's rule for a body no decoder is registered for: unless the content encoding is
/// `binary` or `ascii-8bit`, the body is text in that charset.
///
/// A missing content encoding means UTF-8 (as in kombu), except that a body that is not valid
/// UTF-8 is then returned as bytes rather than refused. Supported charsets: UTF-8, ASCII and
/// Latin-1 (ISO-8859-1), under their common Python names.
pub(crate) fn charset_decode<'a>(
    body: &'a [u8],
    content_encoding: Option<&str>,
) -> Result<RawBody<'a>, BoxError> {
    let Some(encoding) = content_encoding else {
        return Ok(match std::str::from_utf8(body) {
            Ok(text) => RawBody::Text(Cow::Borrowed(text)),
            Err(_) => RawBody::Bytes(body),
        });
    };
    let encoding = encoding.trim().to_ascii_lowercase();
    match encoding.as_str() {
        "binary" | "ascii-8bit" => Ok(RawBody::Bytes(body)),
        "utf-8" | "utf8" | "utf_8" | "u8" | "utf" | "cp65001" => {
            Ok(RawBody::Text(Cow::Borrowed(std::str::from_utf8(body)?)))
        }
        "ascii" | "us-ascii" | "us_ascii" | "646" => {
            if let Some(pos) = body.iter().position(|b| !b.is_ascii()) {
                return Err(format!("the body is not ASCII: byte {pos} is not").into());
            }
            // ASCII is valid UTF-8.
            Ok(RawBody::Text(Cow::Borrowed(std::str::from_utf8(body)?)))
        }
        "latin-1" | "latin1" | "latin_1" | "iso-8859-1" | "iso8859-1" | "iso8859_1" | "8859"
        | "cp819" | "l1" => Ok(RawBody::Text(Cow::Owned(
            body.iter().map(|&b| char::from(b)).collect(),
        ))),
        other => Err(format!("unsupported content encoding {other:?}").into()),
    }
}

/// Deserializes a [`RawBody`]: text visits as a string, bytes as bytes; either can become a
/// sequence of `u8` (so `Vec<u8>` works), and `Option`s and newtypes are looked through.
pub(crate) struct RawDeserializer<'a, E> {
    body: RawBody<'a>,
    marker: PhantomData<fn() -> E>,
}

impl<'a, E> RawDeserializer<'a, E> {
    pub(crate) fn new(body: RawBody<'a>) -> Self {
        Self {
            body,
            marker: PhantomData,
        }
    }

    fn visit_seq<'de, V: Visitor<'de>>(bytes: &[u8], visitor: V) -> Result<V::Value, E>
    where
        E: de::Error,
    {
        let mut seq = SeqDeserializer::<_, E>::new(bytes.iter().copied());
        let value = visitor.visit_seq(&mut seq)?;
        seq.end()?;
        Ok(value)
    }
}

impl<'de, 'a: 'de, E: de::Error> de::Deserializer<'de> for RawDeserializer<'a, E> {
    type Error = E;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match self.body {
            RawBody::Text(Cow::Borrowed(text)) => visitor.visit_borrowed_str(text),
            RawBody::Text(Cow::Owned(text)) => visitor.visit_string(text),
            RawBody::Bytes(bytes) => visitor.visit_borrowed_bytes(bytes),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match self.body {
            RawBody::Text(Cow::Borrowed(text)) => visitor.visit_borrowed_bytes(text.as_bytes()),
            RawBody::Text(Cow::Owned(text)) => visitor.visit_byte_buf(text.into_bytes()),
            RawBody::Bytes(bytes) => visitor.visit_borrowed_bytes(bytes),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match &self.body {
            RawBody::Text(text) => Self::visit_seq(text.as_bytes(), visitor),
            RawBody::Bytes(bytes) => Self::visit_seq(bytes, visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, E> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, E> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, E> {
        // A text body names a unit variant, as a JSON string would.
        match self.body {
            RawBody::Text(text) => visitor.visit_enum(text.into_deserializer()),
            RawBody::Bytes(bytes) => visitor.visit_borrowed_bytes(bytes),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        unit unit_struct tuple_struct map struct identifier ignored_any
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
    use serde::de::value::Error as ValueError;
    use serde::Deserialize;

    use super::*;

    fn raw<T: serde::de::DeserializeOwned>(body: RawBody<'_>) -> Result<T, ValueError> {
        T::deserialize(RawDeserializer::<ValueError>::new(body))
    }

    #[test]
    fn charset_rules() {
        assert_eq!(
            charset_decode(b"x", Some("binary")).unwrap(),
            RawBody::Bytes(b"x")
        );
        assert_eq!(
            charset_decode(b"x", Some("ASCII-8BIT")).unwrap(),
            RawBody::Bytes(b"x")
        );
        assert_eq!(
            charset_decode("é".as_bytes(), Some("UTF-8")).unwrap(),
            RawBody::Text("é".into())
        );
        assert_eq!(
            charset_decode(b"\xe9", Some("latin-1")).unwrap(),
            RawBody::Text("é".into())
        );
        assert_eq!(
            charset_decode(b"ab", Some("us-ascii")).unwrap(),
            RawBody::Text("ab".into())
        );
        assert!(charset_decode(b"\xe9", Some("ascii")).is_err());
        assert!(charset_decode(b"\xff", Some("utf-8")).is_err());
        assert!(charset_decode(b"x", Some("utf-16")).is_err());
        // No encoding: UTF-8 if it is, bytes otherwise.
        assert_eq!(
            charset_decode(b"ok", None).unwrap(),
            RawBody::Text("ok".into())
        );
        assert_eq!(
            charset_decode(b"\xff", None).unwrap(),
            RawBody::Bytes(b"\xff")
        );
    }

    #[test]
    fn typed_targets() {
        assert_eq!(raw::<String>(RawBody::Text("hi".into())).unwrap(), "hi");
        assert_eq!(raw::<String>(RawBody::Bytes(b"hi")).unwrap(), "hi");
        assert!(raw::<String>(RawBody::Bytes(b"\xff")).is_err());
        assert_eq!(
            raw::<Vec<u8>>(RawBody::Bytes(b"\xff\x00")).unwrap(),
            vec![0xff, 0]
        );
        assert_eq!(
            raw::<Vec<u8>>(RawBody::Text("é".into())).unwrap(),
            "é".as_bytes()
        );
        assert_eq!(
            raw::<serde_bytes::ByteBuf>(RawBody::Bytes(b"\xff"))
                .unwrap()
                .into_vec(),
            vec![0xff]
        );
        assert_eq!(
            raw::<Option<String>>(RawBody::Text("x".into()))
                .unwrap()
                .as_deref(),
            Some("x")
        );
        assert_eq!(raw::<[u8; 2]>(RawBody::Bytes(b"ab")).unwrap(), *b"ab");
        #[derive(Deserialize, Debug, PartialEq)]
        struct Wrapper(String);
        assert_eq!(
            raw::<Wrapper>(RawBody::Text("w".into())).unwrap(),
            Wrapper("w".into())
        );
        #[derive(Deserialize, Debug, PartialEq)]
        enum Kind {
            Ping,
        }
        assert_eq!(
            raw::<Kind>(RawBody::Text("Ping".into())).unwrap(),
            Kind::Ping
        );
        assert!(raw::<u32>(RawBody::Text("1".into())).is_err());
        assert!(raw::<[u8; 3]>(RawBody::Bytes(b"ab")).is_err());
    }
}
