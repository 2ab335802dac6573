//! Any self-describing format's value as a `serde_json::Value`, for
//! [`Payload::Value`](super::Payload::Value) from msgpack, YAML and registered serializers.
//!
//! What JSON cannot hold is mapped the way a Python consumer of kombu's JSON would see it:
//! byte strings become kombu's byte markers (`{"__type__": "bytes", "__value__": <text>}` when
//! UTF-8, else `{"__type__": "base64", "__value__": <base64>}`), so they round-trip to Python
//! `bytes`; map keys that are not strings become their JSON text (`1` -> `"1"`, as Python's
//! `json.dumps` does); non-finite floats become `null`; integers beyond `i64`/`u64` become
//! floats; an enum (a YAML tag) becomes `{"<variant>": <value>}`.

use std::fmt;

use base64::Engine as _;
use serde::de::{
    self, Deserialize, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde_json::{Map, Number, Value};

/// A `serde_json::Value` deserialized from any self-describing format.
pub(crate) struct Dynamic(pub(crate) Value);

impl<'de> Deserialize<'de> for Dynamic {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DynamicVisitor).map(Dynamic)
    }
}

/// kombu's JSON form of a Python `bytes` value: `{"__type__": "bytes", "__value__": text}`
/// when the bytes are UTF-8, else `{"__type__": "base64", "__value__": base64}`; kombu's JSON
/// decoder turns either back into `bytes`.
///
/// ```
/// let v = lepus_messaging::serializer::bytes_marker(b"\xff");
/// assert_eq!(v, serde_json::json!({"__type__": "base64", "__value__": "/w=="}));
/// ```
pub fn bytes_marker(bytes: &[u8]) -> Value {
    let (kind, text) = match std::str::from_utf8(bytes) {
        Ok(text) => ("bytes", text.to_owned()),
        Err(_) => (
            "base64",
            base64::engine::general_purpose::STANDARD.encode(bytes),
        ),
    };
    let mut map = Map::with_capacity(2);
    map.insert("__type__".to_owned(), Value::String(kind.to_owned()));
    map.insert("__value__".to_owned(), Value::String(text));
    Value::Object(map)
}

/// A key as Python's `json.dumps` would write it.
fn key_text(key: Value) -> String {
    match key {
        Value::String(s) => s,
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_owned(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

struct DynamicVisitor;

impl<'de> Visitor<'de> for DynamicVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        #[allow(clippy::cast_precision_loss)] // documented: beyond 64 bits, a float
        Ok(Number::from_i128(v).map_or_else(|| self.visit_float(v as f64), Value::Number))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        #[allow(clippy::cast_precision_loss)] // documented: beyond 64 bits, a float
        Ok(Number::from_u128(v).map_or_else(|| self.visit_float(v as f64), Value::Number))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(self.visit_float(v))
    }

    fn visit_char<E: de::Error>(self, v: char) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(bytes_marker(v))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Dynamic(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some((Dynamic(k), Dynamic(v))) = map.next_entry()? {
            out.insert(key_text(k), v);
        }
        Ok(Value::Object(out))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (Dynamic(tag), variant) = data.variant::<Dynamic>()?;
        let Dynamic(value) = variant.newtype_variant()?;
        let mut out = Map::with_capacity(1);
        out.insert(key_text(tag), value);
        Ok(Value::Object(out))
    }
}

impl DynamicVisitor {
    fn visit_float(&self, v: f64) -> Value {
        Number::from_f64(v).map_or(Value::Null, Value::Number)
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
    use serde_json::json;

    use super::*;

    #[test]
    fn bytes_become_kombu_markers() {
        assert_eq!(
            bytes_marker(b"hi"),
            json!({"__type__": "bytes", "__value__": "hi"})
        );
        assert_eq!(
            bytes_marker(b"\xff\x00"),
            json!({"__type__": "base64", "__value__": "/wA="})
        );
    }

    #[test]
    fn keys_become_text() {
        assert_eq!(key_text(json!(1)), "1");
        assert_eq!(key_text(json!(-1.5)), "-1.5");
        assert_eq!(key_text(json!(true)), "true");
        assert_eq!(key_text(json!(null)), "null");
        assert_eq!(key_text(json!("k")), "k");
        assert_eq!(key_text(json!([1, 2])), "[1,2]");
    }

    #[test]
    fn from_a_value_deserializer() {
        // serde_json::Value is itself a self-describing deserializer.
        let Dynamic(v) = Dynamic::deserialize(json!({"a": [1, null, 2.5, "x"]})).unwrap();
        assert_eq!(v, json!({"a": [1, null, 2.5, "x"]}));
    }
}
