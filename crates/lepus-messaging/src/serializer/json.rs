//! Typed JSON decoding that understands kombu's JSON type markers.
//!
//! kombu's JSON encoder (`kombu/utils/json.py`) writes Python values JSON has no type for as
//! `{"__type__": <kind>, "__value__": <value>}`, and its decoder turns every object whose key
//! set is exactly `{"__type__", "__value__"}` back into the value (an unknown kind is an
//! error). [`from_slice`] does the same for a Rust target: it wraps serde_json's streaming
//! deserializer (in the manner of `serde_ignored` and `serde_path_to_error`) and, wherever the
//! target asks for a value and finds a marker, hands the target the marker's plain form:
//!
//! | `__type__` | what the target sees |
//! |---|---|
//! | `datetime`, `date`, `time`, `decimal` | the `__value__` string (ISO 8601 text, `str(Decimal)`) |
//! | `uuid` (`__value__` is `{"hex": "<32 hex>"}`) | the hyphenated lowercase UUID string |
//! | `bytes` | the text: a string, or its UTF-8 bytes to a byte target, or a sequence of `u8` |
//! | `base64` | the decoded bytes (a byte buffer, or a sequence of `u8`) |
//!
//! Markers are found at any depth: in maps, sequences, `Option`s, enums and newtypes.
//! Everything else is serde_json's own behaviour (integers up to `i128`/`u128`, options,
//! enums). A body with no `__type__` in it at all goes straight to `serde_json::from_slice`.
//!
//! Limits: keys written with escapes (`"\u005f_type__"`) are not recognised as markers (kombu
//! never writes them); markers inside values the target ignores are not checked; in the rare
//! object that has a `__type__` or `__value__` key and other keys too, those two values are
//! buffered as `serde_json::Value`, so integers there beyond the `i64`/`u64` range become
//! floats.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use serde::de::{
    self, value::SeqDeserializer, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess,
    IntoDeserializer, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde_json::Value;

const TYPE: &str = "__type__";
const VALUE: &str = "__value__";
/// The newtype name serde_json's `RawValue` asks for.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Deserializes a JSON body into `T`, unwrapping kombu's type markers.
pub(crate) fn from_slice<T: DeserializeOwned>(body: &[u8]) -> serde_json::Result<T> {
    if memchr::memmem::find(body, TYPE.as_bytes()).is_none() {
        return serde_json::from_slice(body);
    }
    wrapped(body)
}

fn wrapped<T: DeserializeOwned>(body: &[u8]) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = T::deserialize(MarkerDe(&mut de))?;
    de.end()?;
    Ok(value)
}

/// What the target asked for, as far as a marker's plain form depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hint {
    Any,
    Str,
    Bytes,
    Seq,
    Other,
}

/// A deserializer that unwraps markers in whatever `D` produces.
struct MarkerDe<D>(D);

/// A seed that unwraps markers in whatever its deserializer produces.
struct MarkerSeed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for MarkerSeed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(MarkerDe(deserializer))
    }
}

macro_rules! forward_other {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method(Wrap::new(visitor, Hint::Other))
        })*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MarkerDe<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(Wrap::new(visitor, Hint::Any))
    }

    // serde_json refuses an object where a string, bytes or a sequence is asked for without
    // telling the visitor; ask for anything instead, so that a marker reaches `visit_map`. For
    // every other input serde_json's `deserialize_any` calls the same visitor method.
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(Wrap::new(visitor, Hint::Str))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(Wrap::new(visitor, Hint::Str))
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(Wrap::new(visitor, Hint::Bytes))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(Wrap::new(visitor, Hint::Bytes))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(Wrap::new(visitor, Hint::Seq))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(Wrap::new(visitor, Hint::Seq))
    }

    forward_other! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char deserialize_unit
        deserialize_option deserialize_map deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_unit_struct(name, Wrap::new(visitor, Hint::Other))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        // serde_json's `RawValue` (feature `raw_value`) captures the text as it is.
        if name == RAW_VALUE_TOKEN {
            return self.0.deserialize_newtype_struct(name, visitor);
        }
        self.0
            .deserialize_newtype_struct(name, Wrap::new(visitor, Hint::Other))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_tuple_struct(name, len, Wrap::new(visitor, Hint::Other))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_struct(name, fields, Wrap::new(visitor, Hint::Other))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_enum(name, variants, Wrap::new(visitor, Hint::Other))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// The target's visitor, with the hint of what the target asked for.
struct Wrap<V> {
    visitor: V,
    hint: Hint,
}

impl<V> Wrap<V> {
    fn new(visitor: V, hint: Hint) -> Self {
        Self { visitor, hint }
    }
}

macro_rules! forward_visit {
    ($($method:ident: $ty:ty,)*) => {
        $(fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.visitor.$method(v)
        })*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    forward_visit! {
        visit_bool: bool,
        visit_i8: i8,
        visit_i16: i16,
        visit_i32: i32,
        visit_i64: i64,
        visit_i128: i128,
        visit_u8: u8,
        visit_u16: u16,
        visit_u32: u32,
        visit_u64: u64,
        visit_u128: u128,
        visit_f32: f32,
        visit_f64: f64,
        visit_char: char,
        visit_bytes: &[u8],
        visit_borrowed_bytes: &'de [u8],
        visit_byte_buf: Vec<u8>,
    }

    // Where bytes were asked for, serde_json hands a string over as bytes: keep doing so,
    // since `deserialize_bytes` became `deserialize_any` above.
    fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
        match self.hint {
            Hint::Bytes => self.visitor.visit_bytes(v.as_bytes()),
            _ => self.visitor.visit_str(v),
        }
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        match self.hint {
            Hint::Bytes => self.visitor.visit_borrowed_bytes(v.as_bytes()),
            _ => self.visitor.visit_borrowed_str(v),
        }
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
        match self.hint {
            Hint::Bytes => self.visitor.visit_byte_buf(v.into_bytes()),
            _ => self.visitor.visit_string(v),
        }
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.visitor.visit_some(MarkerDe(deserializer))
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<V::Value, D::Error> {
        self.visitor.visit_newtype_struct(MarkerDe(deserializer))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_seq(SeqWrap(seq))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_enum(EnumWrap(data))
    }

    /// Reads keys until the object is known to be a marker or not. A marker goes to the target
    /// in its plain form; any other object goes to the target whole, the keys and values read
    /// so far replayed first.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<V::Value, A::Error> {
        let Some(k1) = map.next_key_seed(KeySeed)? else {
            return self.visitor.visit_map(Replay::new(map, []));
        };
        if !is_marker_key(&k1) {
            return self.visitor.visit_map(Replay::new(map, [(k1, None)]));
        }
        let v1: Value = map.next_value()?;
        let Some(k2) = map.next_key_seed(KeySeed)? else {
            return self.visitor.visit_map(Replay::new(map, [(k1, Some(v1))]));
        };
        if !is_marker_key(&k2) || k2 == k1 {
            return self
                .visitor
                .visit_map(Replay::new(map, [(k1, Some(v1)), (k2, None)]));
        }
        let v2: Value = map.next_value()?;
        if let Some(k3) = map.next_key_seed(KeySeed)? {
            let buffered = [(k1, Some(v1)), (k2, Some(v2)), (k3, None)];
            return self.visitor.visit_map(Replay::new(map, buffered));
        }
        let (kind, value) = if k1 == TYPE { (v1, v2) } else { (v2, v1) };
        let plain = Unwrapped::from_marker(kind, value).map_err(de::Error::custom)?;
        plain.visit(self.hint, self.visitor)
    }
}

fn is_marker_key(key: &str) -> bool {
    key == TYPE || key == VALUE
}

struct SeqWrap<A>(A);

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for SeqWrap<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(MarkerSeed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct EnumWrap<A>(A);

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for EnumWrap<A> {
    type Error = A::Error;
    type Variant = VariantWrap<A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let (value, variant) = self.0.variant_seed(seed)?;
        Ok((value, VariantWrap(variant)))
    }
}

struct VariantWrap<A>(A);

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for VariantWrap<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        self.0.newtype_variant_seed(MarkerSeed(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, Wrap::new(visitor, Hint::Other))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0
            .struct_variant(fields, Wrap::new(visitor, Hint::Other))
    }
}

/// Reads a map key as text, borrowed when the input allows.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

type Buffered<'de> = (Cow<'de, str>, Option<Value>);

/// A map whose first entries were already read: they are replayed, then the rest of the map
/// follows, values unwrapped as everywhere.
struct Replay<'de, A> {
    map: A,
    buffered: [Option<Buffered<'de>>; 3],
    next: usize,
    /// The value of the key last handed out, if it was buffered.
    value: Option<Value>,
}

impl<'de, A> Replay<'de, A> {
    fn new<const N: usize>(map: A, entries: [Buffered<'de>; N]) -> Self {
        let mut buffered = [None, None, None];
        for (slot, entry) in buffered.iter_mut().zip(entries) {
            *slot = Some(entry);
        }
        Self {
            map,
            buffered,
            next: 0,
            value: None,
        }
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Replay<'de, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.value = None;
        if let Some((key, value)) = self.buffered.get_mut(self.next).and_then(Option::take) {
            self.next += 1;
            self.value = value;
            return seed
                .deserialize(KeyDeserializer::<A::Error>::new(key))
                .map(Some);
        }
        self.map.next_key_seed(seed)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        match self.value.take() {
            Some(value) => seed.deserialize(MarkerDe(value)).map_err(de::Error::custom),
            None => self.map.next_value_seed(MarkerSeed(seed)),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        let buffered = self.buffered.iter().filter(|slot| slot.is_some()).count();
        self.map.size_hint().map(|n| n.saturating_add(buffered))
    }
}

/// Replays a JSON object key as serde_json's own map-key deserializer would hand it out:
/// a string, or a number, boolean, unit variant or bytes parsed from it when the target asks.
struct KeyDeserializer<'de, E> {
    key: Cow<'de, str>,
    marker: std::marker::PhantomData<fn() -> E>,
}

impl<'de, E> KeyDeserializer<'de, E> {
    fn new(key: Cow<'de, str>) -> Self {
        Self {
            key,
            marker: std::marker::PhantomData,
        }
    }
}

impl<'de, E: de::Error> KeyDeserializer<'de, E> {
    fn not_numeric<V: Visitor<'de>>(&self, visitor: &V) -> E {
        E::invalid_type(de::Unexpected::Str(&self.key), visitor)
    }

    /// serde_json's `deserialize_number` on the key's text: a non-negative integer visits as
    /// `u64`, a negative one as `i64`, anything else (or out of range) as `f64`.
    fn number<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        let text = self.key.as_ref();
        let integer = !text.is_empty()
            && text
                .strip_prefix('-')
                .unwrap_or(text)
                .bytes()
                .all(|b| b.is_ascii_digit());
        if integer {
            if let Ok(v) = text.parse::<u64>() {
                return visitor.visit_u64(v);
            }
            if let Ok(v) = text.parse::<i64>() {
                return visitor.visit_i64(v);
            }
        }
        match text.parse::<f64>() {
            Ok(v)
                if v.is_finite() && text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) =>
            {
                visitor.visit_f64(v)
            }
            _ => Err(self.not_numeric(&visitor)),
        }
    }
}

macro_rules! numeric_key {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
            self.number(visitor)
        })*
    };
}

impl<'de, E: de::Error> Deserializer<'de> for KeyDeserializer<'de, E> {
    type Error = E;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match self.key {
            Cow::Borrowed(key) => visitor.visit_borrowed_str(key),
            Cow::Owned(key) => visitor.visit_string(key),
        }
    }

    numeric_key! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_u8
        deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f32 deserialize_f64
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match self.key.parse::<i128>() {
            Ok(v) => visitor.visit_i128(v),
            Err(_) => Err(self.not_numeric(&visitor)),
        }
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match self.key.parse::<u128>() {
            Ok(v) if !self.key.starts_with('+') => visitor.visit_u128(v),
            _ => Err(self.not_numeric(&visitor)),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match self.key.as_ref() {
            "true" => visitor.visit_bool(true),
            "false" => visitor.visit_bool(false),
            _ => Err(E::invalid_type(de::Unexpected::Str(&self.key), &visitor)),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match self.key {
            Cow::Borrowed(key) => visitor.visit_borrowed_bytes(key.as_bytes()),
            Cow::Owned(key) => visitor.visit_byte_buf(key.into_bytes()),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        // Map keys cannot be null.
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
        visitor.visit_enum(self.key.into_deserializer())
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        char str string unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

/// A marker's plain form.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Unwrapped {
    /// `datetime`, `date`, `time`, `decimal`, `uuid`: text the target parses.
    Text(String),
    /// `bytes`: bytes that are UTF-8 text.
    Utf8(String),
    /// `base64`: bytes.
    Bytes(Vec<u8>),
}

impl Unwrapped {
    /// kombu's `object_hook` for an object with exactly the two marker keys.
    fn from_marker(kind: Value, value: Value) -> Result<Self, String> {
        let Value::String(kind) = kind else {
            return Err(format!(
                "the kombu JSON type marker's __type__ is not a string: {kind}"
            ));
        };
        match (kind.as_str(), value) {
            ("datetime" | "date" | "time" | "decimal", Value::String(text)) => Ok(Self::Text(text)),
            // Python's Decimal() also takes numbers.
            ("decimal", Value::Number(n)) => Ok(Self::Text(n.to_string())),
            ("uuid", Value::Object(fields)) => match (fields.len(), fields.get("hex")) {
                (1, Some(Value::String(hex))) => uuid_text(hex).map(Self::Text),
                _ => Err(format!(
                    "the kombu JSON uuid marker's __value__ is not {{\"hex\": \"<32 hex digits>\"}}: {}",
                    Value::Object(fields)
                )),
            },
            ("bytes", Value::String(text)) => Ok(Self::Utf8(text)),
            ("base64", Value::String(text)) => base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map(Self::Bytes)
                .map_err(|e| format!("the kombu JSON base64 marker's __value__ is not base64: {e}")),
            ("datetime" | "date" | "time" | "decimal" | "uuid" | "bytes" | "base64", value) => Err(
                format!("the kombu JSON {kind} marker has an unexpected __value__: {value}"),
            ),
            (other, _) => Err(format!("unsupported kombu JSON type marker {other:?}")),
        }
    }

    /// Hands the plain form to the target, shaped by what it asked for.
    fn visit<'de, V: Visitor<'de>, E: de::Error>(
        self,
        hint: Hint,
        visitor: V,
    ) -> Result<V::Value, E> {
        match (self, hint) {
            (Self::Text(text), Hint::Bytes) => visitor.visit_byte_buf(text.into_bytes()),
            (Self::Text(text), _) => visitor.visit_string(text),
            (Self::Utf8(text), Hint::Any | Hint::Str) => visitor.visit_string(text),
            (Self::Utf8(text), Hint::Seq) => visit_byte_seq(text.into_bytes(), visitor),
            (Self::Utf8(text), _) => visitor.visit_byte_buf(text.into_bytes()),
            (Self::Bytes(bytes), Hint::Seq) => visit_byte_seq(bytes, visitor),
            (Self::Bytes(bytes), _) => visitor.visit_byte_buf(bytes),
        }
    }
}

fn visit_byte_seq<'de, V: Visitor<'de>, E: de::Error>(
    bytes: Vec<u8>,
    visitor: V,
) -> Result<V::Value, E> {
    let mut seq = SeqDeserializer::<_, E>::new(bytes.into_iter());
    let value = visitor.visit_seq(&mut seq)?;
    seq.end()?;
    Ok(value)
}

/// Python's `uuid.UUID(hex=...)`: braces, a `urn:uuid:` prefix and hyphens are ignored, and 32
/// hex digits must remain. Returns the canonical hyphenated lowercase form.
pub(crate) fn uuid_text(hex: &str) -> Result<String, String> {
    let trimmed = hex.strip_prefix("urn:").unwrap_or(hex);
    let trimmed = trimmed.strip_prefix("uuid:").unwrap_or(trimmed);
    let digits: Vec<u8> = trimmed
        .trim_matches(|c| c == '{' || c == '}')
        .bytes()
        .filter(|&b| b != b'-')
        .collect();
    if digits.len() != 32 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(format!(
            "the kombu JSON uuid marker's hex is not a UUID: {hex:?}"
        ));
    }
    let mut out = String::with_capacity(36);
    for (i, &b) in digits.iter().enumerate() {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        out.push(char::from(b.to_ascii_lowercase()));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::Deserialize;

    use super::*;

    fn marker(kind: &str, value: &str) -> String {
        format!(r#"{{"__type__": "{kind}", "__value__": {value}}}"#)
    }

    #[test]
    fn plain_objects_pass_through() {
        #[derive(Deserialize, Debug, PartialEq)]
        struct S {
            a: u32,
            b: Option<String>,
        }
        let body = br#"{"a": 1, "b": "x", "__type__": "z"}"#;
        // Unknown fields and a lone __type__ key: not a marker.
        assert_eq!(
            from_slice::<S>(body).unwrap(),
            S {
                a: 1,
                b: Some("x".into())
            }
        );
        let m: BTreeMap<String, Value> =
            from_slice(br#"{"__type__": "date", "other": 2}"#).unwrap();
        assert_eq!(m.len(), 2);
        let m: BTreeMap<String, Value> =
            from_slice(br#"{"__value__": 1, "__type__": "date", "x": 3}"#).unwrap();
        assert_eq!(m["__value__"], 1);
        assert_eq!(m["x"], 3);
        // A buffered value is still unwrapped when replayed.
        let m: BTreeMap<String, Value> = from_slice(
            br#"{"__value__": {"__type__": "date", "__value__": "2024-01-01"}, "x": 1}"#,
        )
        .unwrap();
        assert_eq!(m["__value__"], "2024-01-01");
        let m: BTreeMap<String, u8> = from_slice(br#"{"__type__": 1}"#).unwrap();
        assert_eq!(m["__type__"], 1);
        let m: HashMap<String, u8> = from_slice(br#"{}"#).unwrap();
        assert!(m.is_empty());
    }

    /// The wrapper alone (no fast path) must agree with serde_json on marker-free input.
    fn same_as_serde_json<T>(body: &str)
    where
        T: DeserializeOwned + PartialEq + fmt::Debug,
    {
        // Positions may differ: the wrapper reads an object's first key before the target
        // sees the object.
        let message = |e: serde_json::Error| {
            e.to_string()
                .split(" at line")
                .next()
                .unwrap_or("")
                .to_owned()
        };
        let plain = serde_json::from_str::<T>(body).map_err(message);
        let wrapped = wrapped::<T>(body.as_bytes()).map_err(message);
        assert_eq!(wrapped, plain, "{body}");
    }

    #[test]
    fn wrapper_agrees_with_serde_json() {
        #[derive(Deserialize, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        enum K {
            A,
            B,
        }
        same_as_serde_json::<BTreeMap<u64, i8>>(r#"{"1": -1, "18446744073709551615": 2}"#);
        same_as_serde_json::<BTreeMap<u8, i8>>(r#"{"1": -1, "256": 2}"#);
        same_as_serde_json::<BTreeMap<i64, u8>>(r#"{"-9223372036854775808": 1, "x": 2}"#);
        same_as_serde_json::<BTreeMap<i128, u8>>(
            r#"{"-170141183460469231731687303715884105728": 1}"#,
        );
        same_as_serde_json::<BTreeMap<u128, u8>>(
            r#"{"340282366920938463463374607431768211455": 1}"#,
        );
        same_as_serde_json::<BTreeMap<bool, u8>>(r#"{"true": 1, "false": 0}"#);
        // serde_json's own message for this one names the wrong string ("es").
        assert!(wrapped::<BTreeMap<bool, u8>>(br#"{"yes": 1}"#).is_err());
        same_as_serde_json::<BTreeMap<K, u8>>(r#"{"A": 1, "B": 0}"#);
        same_as_serde_json::<BTreeMap<K, u8>>(r#"{"C": 1}"#);
        same_as_serde_json::<BTreeMap<char, u8>>(r#"{"c": 1}"#);
        same_as_serde_json::<HashMap<Option<String>, u8>>(r#"{"c": 1}"#);
        same_as_serde_json::<Vec<(u8, String)>>(r#"[[1, "a"], [2, "b"]]"#);
        same_as_serde_json::<Value>(r#"{"a": [1, -2, 3.5, true, null, "\u00e9"], "b": {}}"#);
        same_as_serde_json::<Option<Vec<i128>>>(r#"[-170141183460469231731687303715884105728, 1]"#);
        same_as_serde_json::<Option<u8>>("null");
        same_as_serde_json::<String>(r#"{"a": 1}"#);
        same_as_serde_json::<Vec<u8>>(r#""ab""#);
        same_as_serde_json::<serde_bytes::ByteBuf>(r#""ab""#);
        same_as_serde_json::<serde_bytes::ByteBuf>(r#"[1, 2]"#);
        same_as_serde_json::<(u8, u8)>(r#"[1, 2, 3]"#);
        same_as_serde_json::<BTreeMap<String, u8>>(r#"{"a": 1} x"#);
        same_as_serde_json::<BTreeMap<String, u8>>(r#"{"a": 1, "a": 2}"#);
    }

    #[test]
    fn keys_replay_after_a_marker_value() {
        let d = marker("date", r#""2024-01-01""#);
        let m: BTreeMap<u64, String> =
            from_slice(format!(r#"{{"18446744073709551615": {d}, "2": "x"}}"#).as_bytes()).unwrap();
        assert_eq!(m[&u64::MAX], "2024-01-01");
        let m: BTreeMap<i128, String> = from_slice(
            format!(r#"{{"-170141183460469231731687303715884105728": {d}}}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(m[&i128::MIN], "2024-01-01");
        let m: BTreeMap<bool, String> =
            from_slice(format!(r#"{{"true": {d}, "false": "n"}}"#).as_bytes()).unwrap();
        assert_eq!(m[&true], "2024-01-01");
        #[derive(Deserialize, Debug, PartialEq, Eq, PartialOrd, Ord)]
        enum K {
            A,
            B,
        }
        let m: BTreeMap<K, String> =
            from_slice(format!(r#"{{"A": {d}, "B": "b"}}"#).as_bytes()).unwrap();
        assert_eq!(m[&K::A], "2024-01-01");
        assert_eq!(m[&K::B], "b");
    }

    #[test]
    fn unwraps_markers_for_string_targets() {
        let s: String =
            from_slice(marker("datetime", r#""2024-01-02T03:04:05+00:00""#).as_bytes()).unwrap();
        assert_eq!(s, "2024-01-02T03:04:05+00:00");
        // Either key order.
        let s: String = from_slice(br#"{"__value__": "1.50", "__type__": "decimal"}"#).unwrap();
        assert_eq!(s, "1.50");
        let s: String =
            from_slice(marker("uuid", r#"{"hex": "6F1C3B2A9D4E4F5A8B7C0D1E2F3A4B5C"}"#).as_bytes())
                .unwrap();
        assert_eq!(s, "6f1c3b2a-9d4e-4f5a-8b7c-0d1e2f3a4b5c");
        let s: String = from_slice(marker("bytes", r#""h\u00e9""#).as_bytes()).unwrap();
        assert_eq!(s, "hé");
        let s: String = from_slice(marker("base64", r#""aMOp""#).as_bytes()).unwrap();
        assert_eq!(s, "hé");
    }

    #[test]
    fn unwraps_markers_for_byte_targets() {
        let b: serde_bytes::ByteBuf =
            from_slice(marker("base64", r#""/wABgA==""#).as_bytes()).unwrap();
        assert_eq!(b.into_vec(), b"\xff\x00\x01\x80");
        let b: serde_bytes::ByteBuf = from_slice(marker("bytes", r#""abc""#).as_bytes()).unwrap();
        assert_eq!(b.into_vec(), b"abc");
        let b: Vec<u8> = from_slice(marker("base64", r#""/wABgA==""#).as_bytes()).unwrap();
        assert_eq!(b, b"\xff\x00\x01\x80");
        let b: Vec<u8> = from_slice(marker("bytes", r#""abc""#).as_bytes()).unwrap();
        assert_eq!(b, b"abc");
        let b: [u8; 2] = from_slice(marker("base64", r#""/wA=""#).as_bytes()).unwrap();
        assert_eq!(b, [0xff, 0]);
        // A non-UTF-8 base64 body cannot become a String.
        assert!(from_slice::<String>(marker("base64", r#""/wA=""#).as_bytes()).is_err());
        // Plain strings and arrays still work for byte targets next to markers.
        let body = format!(r#"[{}, "ab", [1, 2]]"#, marker("bytes", r#""x""#));
        let b: Vec<serde_bytes::ByteBuf> = from_slice(body.as_bytes()).unwrap();
        assert_eq!(b, [&b"x"[..], b"ab", &[1, 2]]);
    }

    #[test]
    fn unwraps_nested_markers() {
        #[derive(Deserialize, Debug, PartialEq)]
        enum E {
            Unit,
            New(String),
            Tup(String, u8),
            Rec { at: String },
        }
        #[derive(Deserialize, Debug, PartialEq)]
        struct Inner(String);
        #[derive(Deserialize, Debug, PartialEq)]
        struct S {
            list: Vec<Option<String>>,
            map: BTreeMap<String, Vec<String>>,
            opt: Option<Inner>,
            e: Vec<E>,
            any: Value,
            big: u128,
            neg: i128,
        }
        let d = marker("date", r#""2024-02-29""#);
        let body = format!(
            r#"{{"list": [{d}, null], "map": {{"k": [{d}]}}, "opt": {d},
               "e": ["Unit", {{"New": {d}}}, {{"Tup": [{d}, 1]}}, {{"Rec": {{"at": {d}}}}}],
               "any": {{"x": [{d}]}}, "big": 340282366920938463463374607431768211455,
               "neg": -170141183460469231731687303715884105728}}"#
        );
        let s: S = from_slice(body.as_bytes()).unwrap();
        let day = "2024-02-29".to_string();
        assert_eq!(
            s,
            S {
                list: vec![Some(day.clone()), None],
                map: [("k".to_string(), vec![day.clone()])].into(),
                opt: Some(Inner(day.clone())),
                e: vec![
                    E::Unit,
                    E::New(day.clone()),
                    E::Tup(day.clone(), 1),
                    E::Rec { at: day.clone() }
                ],
                any: serde_json::json!({"x": [day]}),
                big: u128::MAX,
                neg: i128::MIN,
            }
        );
    }

    #[test]
    fn untagged_and_flattened_targets() {
        #[derive(Deserialize, Debug, PartialEq)]
        #[serde(untagged)]
        enum U {
            Num(u32),
            Text(String),
        }
        #[derive(Deserialize, Debug, PartialEq)]
        struct F {
            a: String,
            #[serde(flatten)]
            rest: BTreeMap<String, U>,
        }
        let body = format!(
            r#"{{"a": {}, "b": 1, "c": {}}}"#,
            marker("decimal", r#""2.5""#),
            marker("time", r#""10:00:00""#)
        );
        let f: F = from_slice(body.as_bytes()).unwrap();
        assert_eq!(f.a, "2.5");
        assert_eq!(f.rest["b"], U::Num(1));
        assert_eq!(f.rest["c"], U::Text("10:00:00".into()));
    }

    #[test]
    fn marker_errors() {
        let err = from_slice::<String>(marker("set", "[1]").as_bytes()).unwrap_err();
        assert!(
            err.to_string()
                .contains("unsupported kombu JSON type marker \"set\""),
            "{err}"
        );
        let err = from_slice::<Value>(br#"[{"__type__": 5, "__value__": "x"}]"#).unwrap_err();
        assert!(err.to_string().contains("not a string"), "{err}");
        assert!(from_slice::<String>(marker("uuid", r#"{"hex": "123"}"#).as_bytes()).is_err());
        assert!(from_slice::<String>(
            marker("uuid", r#""6f1c3b2a9d4e4f5a8b7c0d1e2f3a4b5c""#).as_bytes()
        )
        .is_err());
        assert!(from_slice::<String>(marker("base64", r#""not base64!""#).as_bytes()).is_err());
        assert!(from_slice::<String>(marker("date", "5").as_bytes()).is_err());
        // A marker is not a struct.
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct S {
            x: u8,
        }
        assert!(from_slice::<S>(marker("date", r#""2024-01-01""#).as_bytes()).is_err());
        // Trailing garbage after a marker body.
        assert!(from_slice::<String>(
            format!("{} x", marker("date", r#""2024-01-01""#)).as_bytes()
        )
        .is_err());
    }

    #[test]
    fn uuid_text_forms() {
        let canonical = "6f1c3b2a-9d4e-4f5a-8b7c-0d1e2f3a4b5c";
        for form in [
            "6f1c3b2a9d4e4f5a8b7c0d1e2f3a4b5c",
            "6F1C3B2A-9D4E-4F5A-8B7C-0D1E2F3A4B5C",
            "{6f1c3b2a-9d4e-4f5a-8b7c-0d1e2f3a4b5c}",
            "urn:uuid:6f1c3b2a-9d4e-4f5a-8b7c-0d1e2f3a4b5c",
        ] {
            assert_eq!(uuid_text(form).unwrap(), canonical, "{form}");
        }
        assert!(uuid_text("6f1c3b2a9d4e4f5a8b7c0d1e2f3a4b5").is_err());
        assert!(uuid_text("6f1c3b2a9d4e4f5a8b7c0d1e2f3a4b5g").is_err());
    }
}
