//! serde `with`-modules that write kombu's JSON type markers, so that a Python consumer's
//! kombu turns a field back into a `datetime`, `date`, `time`, `Decimal`, `UUID` or `bytes`.
//!
//! kombu's JSON encoder writes those Python types as `{"__type__": <kind>, "__value__": ...}`
//! (see [the module docs](super)). Decoding needs nothing special:
//! [`Registry::decode`](super::Registry::decode) unwraps markers for any target that
//! deserializes from a string (chrono, time, rust_decimal, uuid types). To *send* such a
//! value, put one of these modules on the field:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use lepus_messaging::serializer::{markers, Registry};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Invoice {
//!     // Any type that serializes as an ISO 8601 string: chrono, time, or plain text.
//!     #[serde(with = "markers::datetime")]
//!     issued: String,
//!     #[serde(with = "markers::decimal")]
//!     total: String,
//!     #[serde(with = "markers::bytes")]
//!     scan: Vec<u8>,
//! }
//!
//! let invoice = Invoice {
//!     issued: "2024-01-02T03:04:05+00:00".into(),
//!     total: "12.50".into(),
//!     scan: vec![0xff, 0xd8],
//! };
//! let registry = Registry::default();
//! let encoded = registry.encode("json", &invoice).unwrap();
//! assert_eq!(
//!     std::str::from_utf8(&encoded.body).unwrap(),
//!     r#"{"issued":{"__type__":"datetime","__value__":"2024-01-02T03:04:05+00:00"},"#.to_owned()
//!         + r#""total":{"__type__":"decimal","__value__":"12.50"},"#
//!         + r#""scan":{"__type__":"base64","__value__":"/9g="}}"#,
//! );
//! let back: Invoice = registry
//!     .decode(&encoded.body, Some("application/json"), Some("utf-8"), &Default::default())
//!     .unwrap();
//! assert_eq!(back, invoice);
//! ```
//!
//! Each module's `serialize` takes any value that serializes as a string (or, for
//! [`bytes`](mod@bytes), any `AsRef<[u8]>`), and `Option`s of those (`None` is written as
//! `null`). Its `deserialize` accepts the marker *or* the plain form (a string; bytes for
//! [`bytes`](mod@bytes)), so it also works with `serde_json::from_slice` directly and with
//! producers that send plain strings (kombu before 5.3 sent UUIDs as plain strings).
//!
//! The markers are JSON's: with a format that is not human-readable (msgpack) the modules
//! write the plain form instead (a string; raw bytes for [`bytes`](mod@bytes)), which is what
//! a Python consumer reads from msgpack anyway. YAML is human-readable, so YAML gets the
//! marker objects, which Python's YAML loader leaves as dicts.
//!
//! Python 3.11+'s `datetime.fromisoformat` reads what chrono writes (a `Z` or `+00:00`
//! offset, up to nine fractional digits, truncated to microseconds); Python 3.7 to 3.10 accept
//! only `+00:00` and exactly 3 or 6 fractional digits. Python's `Decimal` reads any decimal
//! string rust_decimal writes.

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::ser::{self, Serialize, SerializeMap, Serializer};
use serde_json::Value;

use super::capture::{capture, Captured};
use super::raw::{RawBody, RawDeserializer};

/// `datetime` markers: `{"__type__": "datetime", "__value__": "<ISO 8601>"}`.
///
/// For `chrono::DateTime<Tz>`, `chrono::NaiveDateTime`, `time::OffsetDateTime` (with its
/// `rfc3339`/ISO serde support) or a `String`.
pub mod datetime {
    use super::*;

    /// Writes the value's string form inside a `datetime` marker.
    ///
    /// # Errors
    ///
    /// If the value does not serialize as a string.
    pub fn serialize<T, S>(value: &T, serializer: S) -> Result<S::Ok, S::Error>
    where
        T: Serialize + ?Sized,
        S: Serializer,
    {
        serialize_text("datetime", value, serializer)
    }

    /// Reads the value from a `datetime` marker or a plain string.
    ///
    /// # Errors
    ///
    /// If the input is neither, or the target does not parse the string.
    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
    where
        T: DeserializeOwned,
        D: Deserializer<'de>,
    {
        deserialize_text("datetime", deserializer)
    }
}

/// `date` markers: `{"__type__": "date", "__value__": "YYYY-MM-DD"}`.
///
/// For `chrono::NaiveDate`, `time::Date` or a `String`.
pub mod date {
    use super::*;

    /// Writes the value's string form inside a `date` marker.
    ///
    /// # Errors
    ///
    /// If the value does not serialize as a string.
    pub fn serialize<T, S>(value: &T, serializer: S) -> Result<S::Ok, S::Error>
    where
        T: Serialize + ?Sized,
        S: Serializer,
    {
        serialize_text("date", value, serializer)
    }

    /// Reads the value from a `date` marker or a plain string.
    ///
    /// # Errors
    ///
    /// If the input is neither, or the target does not parse the string.
    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
    where
        T: DeserializeOwned,
        D: Deserializer<'de>,
    {
        deserialize_text("date", deserializer)
    }
}

/// `time` markers: `{"__type__": "time", "__value__": "HH:MM:SS[.ffffff]"}`.
///
/// For `chrono::NaiveTime`, `time::Time` or a `String`.
pub mod time {
    use super::*;

    /// Writes the value's string form inside a `time` marker.
    ///
    /// # Errors
    ///
    /// If the value does not serialize as a string.
    pub fn serialize<T, S>(value: &T, serializer: S) -> Result<S::Ok, S::Error>
    where
        T: Serialize + ?Sized,
        S: Serializer,
    {
        serialize_text("time", value, serializer)
    }

    /// Reads the value from a `time` marker or a plain string.
    ///
    /// # Errors
    ///
    /// If the input is neither, or the target does not parse the string.
    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
    where
        T: DeserializeOwned,
        D: Deserializer<'de>,
    {
        deserialize_text("time", deserializer)
    }
}

/// `decimal` markers: `{"__type__": "decimal", "__value__": "<str(Decimal)>"}`.
///
/// For `rust_decimal::Decimal` (which serializes as a string with its default `serde`
/// support or `serde-str`; not with `serde-float`), `bigdecimal` or a `String`.
pub mod decimal {
    use super::*;

    /// Writes the value's string form inside a `decimal` marker.
    ///
    /// # Errors
    ///
    /// If the value does not serialize as a string.
    pub fn serialize<T, S>(value: &T, serializer: S) -> Result<S::Ok, S::Error>
    where
        T: Serialize + ?Sized,
        S: Serializer,
    {
        serialize_text("decimal", value, serializer)
    }

    /// Reads the value from a `decimal` marker or a plain string.
    ///
    /// # Errors
    ///
    /// If the input is neither, or the target does not parse the string.
    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
    where
        T: DeserializeOwned,
        D: Deserializer<'de>,
    {
        deserialize_text("decimal", deserializer)
    }
}

/// `uuid` markers: `{"__type__": "uuid", "__value__": {"hex": "<32 lowercase hex digits>"}}`.
///
/// For `uuid::Uuid` or a `String` holding a UUID in any of its usual text forms; dashes are
/// stripped on the way out, and the hyphenated form is handed to the target on the way in.
pub mod uuid {
    use super::*;

    /// Writes the value's UUID inside a `uuid` marker.
    ///
    /// # Errors
    ///
    /// If the value does not serialize as a string holding 32 hex digits (dashes, braces and a
    /// `urn:uuid:` prefix allowed).
    pub fn serialize<T, S>(value: &T, serializer: S) -> Result<S::Ok, S::Error>
    where
        T: Serialize + ?Sized,
        S: Serializer,
    {
        serialize_text("uuid", value, serializer)
    }

    /// Reads the value from a `uuid` marker or a plain string.
    ///
    /// # Errors
    ///
    /// If the input is neither, or the target does not parse the string.
    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
    where
        T: DeserializeOwned,
        D: Deserializer<'de>,
    {
        deserialize_text("uuid", deserializer)
    }
}

/// `bytes` and `base64` markers, as kombu writes a Python `bytes` value: UTF-8 content as
/// `{"__type__": "bytes", "__value__": "<text>"}`, anything else as
/// `{"__type__": "base64", "__value__": "<base64>"}`.
///
/// For `Vec<u8>`, `bytes::Bytes`, `Box<[u8]>`, `serde_bytes::ByteBuf` and other
/// `AsRef<[u8]> + From<Vec<u8>>` types. With msgpack the bytes go out as msgpack `bin`.
pub mod bytes {
    use super::*;

    /// Writes the bytes inside a `bytes` or `base64` marker.
    ///
    /// # Errors
    ///
    /// Only the format's own.
    pub fn serialize<T, S>(value: &T, serializer: S) -> Result<S::Ok, S::Error>
    where
        T: AsRef<[u8]> + ?Sized,
        S: Serializer,
    {
        let bytes = value.as_ref();
        if !serializer.is_human_readable() {
            return serializer.serialize_bytes(bytes);
        }
        super::super::dynamic::bytes_marker(bytes).serialize(serializer)
    }

    /// Reads bytes from a `bytes` or `base64` marker, a plain string (its UTF-8 bytes), a byte
    /// string or a sequence of `u8`.
    ///
    /// # Errors
    ///
    /// If the input is none of those.
    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
    where
        T: From<Vec<u8>>,
        D: Deserializer<'de>,
    {
        let bytes = if deserializer.is_human_readable() {
            deserializer.deserialize_any(BytesVisitor)?
        } else {
            deserializer.deserialize_byte_buf(BytesVisitor)?
        };
        Ok(T::from(bytes))
    }
}

/// Writes `value`'s string form inside a `kind` marker (a plain string if the format is not
/// human-readable); `None` as `None`.
fn serialize_text<T, S>(kind: &'static str, value: &T, serializer: S) -> Result<S::Ok, S::Error>
where
    T: Serialize + ?Sized,
    S: Serializer,
{
    let text = match capture(value) {
        Ok(Captured::Str(text)) => text,
        Ok(Captured::None) => return serializer.serialize_none(),
        // A value that serializes as bytes is not one of these types.
        Ok(Captured::Bytes(_)) => {
            return Err(ser::Error::custom(format_args!(
                "markers::{kind}: expected a value that serializes as a string, got bytes"
            )))
        }
        Err(e) => return Err(ser::Error::custom(format_args!("markers::{kind}: {e}"))),
    };
    if kind == "uuid" {
        let hex = uuid_hex(&text).ok_or_else(|| {
            ser::Error::custom(format_args!("markers::uuid: {text:?} is not a UUID"))
        })?;
        if !serializer.is_human_readable() {
            return serializer.serialize_str(&text);
        }
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("__type__", kind)?;
        map.serialize_entry("__value__", &UuidHex(&hex))?;
        return map.end();
    }
    if !serializer.is_human_readable() {
        return serializer.serialize_str(&text);
    }
    let mut map = serializer.serialize_map(Some(2))?;
    map.serialize_entry("__type__", kind)?;
    map.serialize_entry("__value__", &text)?;
    map.end()
}

/// `{"hex": "<32 hex digits>"}`.
struct UuidHex<'a>(&'a str);

impl Serialize for UuidHex<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("hex", self.0)?;
        map.end()
    }
}

/// Python's `UUID(...).hex`: 32 lowercase hex digits, from any usual text form.
fn uuid_hex(text: &str) -> Option<String> {
    hyphenated(text).map(|canonical| canonical.replace('-', ""))
}

/// Reads a `kind` marker or a plain string, and parses the string with `T`.
fn deserialize_text<'de, T, D>(kind: &'static str, deserializer: D) -> Result<T, D::Error>
where
    T: DeserializeOwned,
    D: Deserializer<'de>,
{
    deserializer.deserialize_any(TextVisitor {
        kind,
        marker: std::marker::PhantomData,
    })
}

struct TextVisitor<T> {
    kind: &'static str,
    marker: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> TextVisitor<T> {
    fn parse<E: de::Error>(text: &str) -> Result<T, E> {
        T::deserialize(RawDeserializer::<E>::new(RawBody::Text(text.into())))
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for TextVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a kombu {} marker or a string", self.kind)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Self::parse(v)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<T, E> {
        // A binary format's form of a UUID (16 bytes) or other type: let the target decide.
        T::deserialize(RawDeserializer::<E>::new(RawBody::Bytes(v)))
    }

    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        T::deserialize(de::value::UnitDeserializer::<E>::new())
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        T::deserialize(de::value::UnitDeserializer::<E>::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let (kind, value) = read_marker(map)?;
        if kind != self.kind {
            return Err(de::Error::custom(format_args!(
                "expected a kombu {} marker, got a {kind} marker",
                self.kind
            )));
        }
        let text = match (self.kind, value) {
            ("uuid", Value::Object(fields)) => match fields.get("hex") {
                Some(Value::String(hex)) if fields.len() == 1 => hyphenated(hex)
                    .ok_or_else(|| de::Error::custom("the uuid marker's hex is not a UUID"))?,
                _ => {
                    return Err(de::Error::custom(
                        "the uuid marker's __value__ is not {\"hex\": ...}",
                    ))
                }
            },
            (_, Value::String(text)) => text,
            (_, other) => {
                return Err(de::Error::custom(format_args!(
                    "unexpected marker __value__ {other}"
                )))
            }
        };
        Self::parse(&text)
    }
}

/// The canonical hyphenated lowercase form of a UUID in any usual text form.
fn hyphenated(text: &str) -> Option<String> {
    super::json::uuid_text(text).ok()
}

/// Reads an object that must be exactly `{"__type__": <string>, "__value__": <any>}`.
fn read_marker<'de, A: MapAccess<'de>>(mut map: A) -> Result<(String, Value), A::Error> {
    let mut kind = None;
    let mut value = None;
    while let Some(key) = map.next_key::<String>()? {
        match key.as_str() {
            "__type__" if kind.is_none() => kind = Some(map.next_value::<String>()?),
            "__value__" if value.is_none() => value = Some(map.next_value::<Value>()?),
            other => {
                return Err(de::Error::custom(format_args!(
                    "expected a kombu type marker, found key {other:?}"
                )))
            }
        }
    }
    match (kind, value) {
        (Some(kind), Some(value)) => Ok((kind, value)),
        _ => Err(de::Error::custom(
            "expected a kombu type marker with __type__ and __value__",
        )),
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a kombu bytes or base64 marker, a string or bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        Ok(v.as_bytes().to_vec())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Vec<u8>, E> {
        Ok(v.into_bytes())
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<u8>, A::Error> {
        use base64::Engine as _;
        match read_marker(map)? {
            (kind, Value::String(text)) if kind == "bytes" => Ok(text.into_bytes()),
            (kind, Value::String(text)) if kind == "base64" => {
                base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .map_err(de::Error::custom)
            }
            (kind, _) => Err(de::Error::custom(format_args!(
                "expected a kombu bytes or base64 marker, got a {kind} marker"
            ))),
        }
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
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Strings {
        #[serde(with = "super::datetime")]
        at: String,
        #[serde(with = "super::date", default)]
        day: Option<String>,
        #[serde(with = "super::uuid")]
        id: String,
        #[serde(with = "super::bytes")]
        text: Vec<u8>,
        #[serde(with = "super::bytes")]
        blob: Vec<u8>,
    }

    fn sample() -> Strings {
        Strings {
            at: "2024-01-02T03:04:05Z".into(),
            day: None,
            id: "6F1C3B2A-9D4E-4F5A-8B7C-0D1E2F3A4B5C".into(),
            text: b"hi".to_vec(),
            blob: vec![0xff],
        }
    }

    #[test]
    fn writes_markers_in_json() {
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(
            v,
            json!({
                "at": {"__type__": "datetime", "__value__": "2024-01-02T03:04:05Z"},
                "day": null,
                "id": {"__type__": "uuid", "__value__": {"hex": "6f1c3b2a9d4e4f5a8b7c0d1e2f3a4b5c"}},
                "text": {"__type__": "bytes", "__value__": "hi"},
                "blob": {"__type__": "base64", "__value__": "/w=="},
            })
        );
        // Key order as kombu writes it.
        let text = serde_json::to_string(&sample()).unwrap();
        assert!(
            text.starts_with(r#"{"at":{"__type__":"datetime","__value__":"#),
            "{text}"
        );
    }

    #[test]
    fn reads_markers_and_plain_forms_without_the_registry() {
        let mut expected = sample();
        expected.id = "6f1c3b2a-9d4e-4f5a-8b7c-0d1e2f3a4b5c".into();
        let back: Strings =
            serde_json::from_str(&serde_json::to_string(&sample()).unwrap()).unwrap();
        assert_eq!(back, expected);
        let plain: Strings = serde_json::from_value(json!({
            "at": "2024-01-02T03:04:05Z",
            "day": "2024-02-29",
            "id": "6f1c3b2a-9d4e-4f5a-8b7c-0d1e2f3a4b5c",
            "text": "hi",
            "blob": [255],
        }))
        .unwrap();
        assert_eq!(plain.day.as_deref(), Some("2024-02-29"));
        assert_eq!(plain.blob, [0xff]);
        // The wrong kind of marker is refused.
        let err = serde_json::from_value::<Strings>(json!({
            "at": {"__type__": "date", "__value__": "2024-01-02"},
            "id": "x", "text": "", "blob": "",
        }))
        .unwrap_err();
        assert!(
            err.to_string().contains("expected a kombu datetime marker"),
            "{err}"
        );
    }

    #[test]
    fn refuses_values_that_are_not_strings() {
        #[derive(Serialize)]
        struct Bad {
            #[serde(with = "super::decimal")]
            n: f64,
        }
        let err = serde_json::to_string(&Bad { n: 1.5 }).unwrap_err();
        assert!(err.to_string().contains("markers::decimal"), "{err}");
        #[derive(Serialize)]
        struct BadUuid {
            #[serde(with = "super::uuid")]
            id: &'static str,
        }
        assert!(serde_json::to_string(&BadUuid { id: "nope" }).is_err());
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn plain_forms_in_msgpack() {
        let packed = rmp_serde::to_vec_named(&sample()).unwrap();
        let back: Strings = rmp_serde::from_slice(&packed).unwrap();
        assert_eq!(back, sample());
        // The bytes went out as msgpack bin (0xc4), the timestamp as a str.
        assert!(packed.windows(2).any(|w| w == [0xc4, 0x01]));
    }

    #[test]
    fn uuid_hex_forms() {
        assert_eq!(
            uuid_hex("6F1C3B2A-9D4E-4F5A-8B7C-0D1E2F3A4B5C").unwrap(),
            "6f1c3b2a9d4e4f5a8b7c0d1e2f3a4b5c"
        );
        assert_eq!(
            hyphenated("urn:uuid:6f1c3b2a9d4e4f5a8b7c0d1e2f3a4b5c").unwrap(),
            "6f1c3b2a-9d4e-4f5a-8b7c-0d1e2f3a4b5c"
        );
        assert!(uuid_hex("6f1c").is_none());
    }
}
