//! Message body serializers, wire-compatible with kombu's `kombu.serialization`.
//!
//! A [`Registry`] maps serializer names (`json`) to content types (`application/json`) and
//! content encodings (`utf-8`), encodes values for a producer and decodes bodies for a
//! consumer, following kombu's `dumps` and `loads`:
//!
//! | Name | Content type | Content encoding | Cargo feature |
//! |---|---|---|---|
//! | `json` | `application/json` | `utf-8` | always |
//! | `msgpack` | `application/x-msgpack` | `binary` | `msgpack` (default) |
//! | `yaml` | `application/x-yaml` | `utf-8` | `yaml` (default) |
//! | `raw` | `application/data` | `binary` (`utf-8` for a string) | always |
//! | `text` | `text/plain` | `utf-8` | always |
//!
//! Others can be added with [`Registry::register`] and the object-safe [`Serializer`] trait.
//! `pickle` (`application/x-python-serialize`) is never decoded: [`Accept`] refuses it even
//! when it is listed, since unpickling runs arbitrary code in Python and cannot be done safely
//! (or at all) here.
//!
//! # Decoding
//!
//! [`Registry::decode`] (into a type) and [`Registry::decode_payload`] (into a [`Payload`])
//! follow kombu's `loads`:
//!
//! 1. A missing content type means `application/data`.
//! 2. A content type outside the consumer's [`Accept`] list is refused with
//!    [`Error::ContentDisallowed`], except the always-trusted `application/data`,
//!    `application/text` and `text/plain`.
//! 3. An empty body is returned as it is (empty bytes), whatever its type.
//! 4. A content type a serializer decodes is decoded by it; a failure is [`Error::Decode`].
//! 5. Any other body (raw, text, or an allowed type no serializer knows) is text in its content
//!    encoding (UTF-8, ASCII or Latin-1) unless that encoding is `binary` or `ascii-8bit`, in
//!    which case it is bytes. A missing content encoding means UTF-8, as in kombu, but a body
//!    that is not valid UTF-8 is then handed over as bytes instead of refused.
//!
//! kombu itself trusts only `application/data` and `application/text`: a kombu consumer with
//! an accept list refuses `text/plain` (what kombu's `dumps` makes of a `str` without a
//! serializer, and what the `text` serializer writes) unless the list names it.
//!
//! Typed decoding of raw and text bodies works for targets that take a string or bytes:
//! `String`, `Vec<u8>` (as a sequence of bytes), `serde_bytes::ByteBuf`, `bytes::Bytes` (with
//! its `serde` feature), `Box<str>`, and `Option`s and newtypes of them; a text body also
//! decodes into an enum's unit variant of that name. Everything else is an [`Error::Decode`].
//!
//! # JSON type markers
//!
//! kombu's JSON writes Python `datetime`, `date`, `time`, `Decimal`, `UUID` and `bytes` values
//! as `{"__type__": <kind>, "__value__": <value>}` objects. Typed JSON decoding unwraps them
//! wherever they appear, so that a `chrono::DateTime`, `rust_decimal::Decimal`, `uuid::Uuid`,
//! `String` or `serde_bytes::ByteBuf` field reads them directly; an unknown `__type__` is a
//! decode error, as in kombu. [`Registry::decode_payload`] keeps them as they are. To send
//! such values to Python, see [`markers`].
//!
//! # Limits
//!
//! * JSON: Python's `json.dumps` writes `NaN` and `Infinity` for non-finite floats; those
//!   bodies are not valid JSON and fail to decode. Integers beyond 64 bits decode into
//!   `i128`/`u128` targets, but become floats in a [`Payload`].
//! * YAML: PyYAML writes `bytes` as `!!binary`; here that arrives as its base64 text (the YAML
//!   parser does not report the tag), and YAML never decodes into a byte-string target.
//! * msgpack: kombu's msgpack has no datetime or other extension types; msgpack extension
//!   values arrive in a [`Payload`] as `[type, bytes]`.
//!
//! # Examples
//!
//! ```
//! use lepus_messaging::serializer::{Accept, Payload, Registry};
//!
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct Job {
//!     id: u64,
//!     name: String,
//! }
//!
//! let registry = Registry::default();
//! let job = Job { id: 7, name: "resize".into() };
//! let encoded = registry.encode("json", &job).unwrap();
//! assert_eq!(encoded.content_type, "application/json");
//! assert_eq!(encoded.content_encoding, "utf-8");
//!
//! // A consumer that accepts json only (kombu's default).
//! let accept = Accept::default();
//! let back: Job = registry
//!     .decode(&encoded.body, Some(&encoded.content_type), Some("utf-8"), &accept)
//!     .unwrap();
//! assert_eq!(back, job);
//!
//! // The same body, untyped.
//! let payload = registry
//!     .decode_payload(&encoded.body, Some("application/json"), None, &accept)
//!     .unwrap();
//! assert_eq!(payload, Payload::Value(serde_json::json!({"id": 7, "name": "resize"})));
//! ```

mod capture;
mod dynamic;
mod json;
pub mod markers;
mod raw;
#[cfg(test)]
mod tests;
#[cfg(feature = "yaml")]
mod yaml;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;

pub use dynamic::bytes_marker;
pub use erased_serde;

use self::capture::{capture, Captured};
use self::dynamic::Dynamic;
use self::raw::{charset_decode, RawBody, RawDeserializer};
use crate::{BoxError, Error, Result};

/// The content type of a body without one, and of the `raw` serializer.
const DATA: &str = "application/data";
/// Decoded whatever the accept list says (kombu's `TRUSTED_CONTENT`, plus `text/plain`).
const TRUSTED: [&str; 3] = [DATA, "application/text", "text/plain"];
/// pickle's content type: never decoded.
const PICKLE: &str = "application/x-python-serialize";

/// A serializer registered by the application, such as protobuf or CBOR through serde.
///
/// It is object-safe through [`erased_serde`] (re-exported as
/// [`serializer::erased_serde`](crate::serializer::erased_serde)). Register it with
/// [`Registry::register`]; the registry then encodes with it by name and decodes bodies of its
/// content type.
///
/// # Examples
///
/// ```
/// use lepus_messaging::serializer::{erased_serde, Accept, Registry, Serializer};
/// use lepus_messaging::BoxError;
///
/// /// Indented JSON under its own content type.
/// struct PrettyJson;
///
/// impl Serializer for PrettyJson {
///     fn name(&self) -> &str {
///         "pretty-json"
///     }
///     fn content_type(&self) -> &str {
///         "application/x-pretty-json"
///     }
///     fn content_encoding(&self) -> &str {
///         "utf-8"
///     }
///     fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, BoxError> {
///         Ok(serde_json::to_vec_pretty(value)?)
///     }
///     fn decode(
///         &self,
///         body: &[u8],
///         visit: &mut dyn FnMut(
///             &mut dyn erased_serde::Deserializer<'_>,
///         ) -> Result<(), erased_serde::Error>,
///     ) -> Result<(), BoxError> {
///         let mut de = serde_json::Deserializer::from_slice(body);
///         visit(&mut <dyn erased_serde::Deserializer<'_>>::erase(&mut de))?;
///         de.end()?;
///         Ok(())
///     }
/// }
///
/// let mut registry = Registry::default();
/// registry.register(PrettyJson);
/// let encoded = registry.encode("pretty-json", &vec![1, 2]).unwrap();
/// assert_eq!(encoded.content_type, "application/x-pretty-json");
/// let accept = Accept::new(&registry, ["pretty-json"]).unwrap();
/// let back: Vec<u32> = registry
///     .decode(&encoded.body, Some("application/x-pretty-json"), None, &accept)
///     .unwrap();
/// assert_eq!(back, [1, 2]);
/// ```
pub trait Serializer: Send + Sync + 'static {
    /// The name producers pick it by, such as `"json"`.
    fn name(&self) -> &str;

    /// The content type it writes and reads, such as `"application/json"`.
    fn content_type(&self) -> &str;

    /// The content encoding of what it writes: a charset such as `"utf-8"`, or `"binary"`.
    fn content_encoding(&self) -> &str;

    /// Serializes a value.
    ///
    /// # Errors
    ///
    /// Whatever the format fails with; it becomes [`Error::Encode`].
    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, BoxError>;

    /// Calls `visit` once with a deserializer over `body`, then checks that the whole body was
    /// read.
    ///
    /// # Errors
    ///
    /// What `visit` returned, or the format's own failure; either becomes [`Error::Decode`].
    fn decode(
        &self,
        body: &[u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<(), BoxError>;
}

/// The serializers a producer encodes with and a consumer decodes with.
///
/// [`Registry::default`] holds the built-ins (see [the module docs](self)). A registry is
/// cheap to clone (one `Arc`); [`register`](Self::register) changes only the clone it is called
/// on.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

/// A value serialized for the wire: the body and the two properties that name its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The serialized body.
    pub body: Bytes,
    /// The message's `content_type` property, such as `application/json`.
    pub content_type: Cow<'static, str>,
    /// The message's `content_encoding` property, such as `utf-8` or `binary`.
    pub content_encoding: Cow<'static, str>,
}

/// The content types a consumer agrees to decode (kombu's `accept`).
///
/// The default accepts `application/json` only, as kombu does by default. Whatever the list,
/// `application/data`, `application/text` and `text/plain` are always decoded (they are bytes
/// or text, not code), and pickle (`application/x-python-serialize`) never is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accept {
    /// Sorted and deduplicated; `None` accepts every content type.
    only: Option<Vec<String>>,
}

/// A body decoded without a target type.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A structured value. From JSON it is the document as it is, kombu's type markers
    /// included. From msgpack, YAML or a registered serializer, byte strings become kombu's
    /// byte markers (`{"__type__": "bytes", "__value__": <UTF-8 text>}` or
    /// `{"__type__": "base64", "__value__": <base64>}`, which a Python consumer of the JSON
    /// turns back into `bytes`), map keys that are not strings become their JSON text,
    /// non-finite floats become `null`, and integers beyond 64 bits become floats.
    Value(serde_json::Value),
    /// A body that is text in its content encoding: `text/plain`, `raw` strings, or an allowed
    /// content type no serializer decodes.
    Text(String),
    /// A body that is bytes: content encoding `binary`, or empty.
    Bytes(Bytes),
}

#[derive(Clone)]
struct Inner {
    /// In registration order; a later entry wins a content type.
    entries: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    name: Cow<'static, str>,
    content_type: Cow<'static, str>,
    content_encoding: Cow<'static, str>,
    codec: Codec,
}

#[derive(Clone)]
enum Codec {
    Json,
    #[cfg(feature = "msgpack")]
    Msgpack,
    #[cfg(feature = "yaml")]
    Yaml,
    Raw,
    Text,
    Custom(Arc<dyn Serializer>),
}

impl Codec {
    /// Whether the codec decodes its content type (raw and text bodies follow the charset
    /// rule instead).
    fn decodes(&self) -> bool {
        !matches!(self, Self::Raw | Self::Text)
    }
}

impl Default for Registry {
    fn default() -> Self {
        let builtin = |name, content_type, content_encoding, codec| Entry {
            name: Cow::Borrowed(name),
            content_type: Cow::Borrowed(content_type),
            content_encoding: Cow::Borrowed(content_encoding),
            codec,
        };
        let entries = vec![
            builtin("json", "application/json", "utf-8", Codec::Json),
            #[cfg(feature = "msgpack")]
            builtin("msgpack", "application/x-msgpack", "binary", Codec::Msgpack),
            #[cfg(feature = "yaml")]
            builtin("yaml", "application/x-yaml", "utf-8", Codec::Yaml),
            builtin("raw", DATA, "binary", Codec::Raw),
            builtin("text", "text/plain", "utf-8", Codec::Text),
        ];
        Self {
            inner: Arc::new(Inner { entries }),
        }
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.inner
                    .entries
                    .iter()
                    .map(|e| (&e.name, &e.content_type)),
            )
            .finish()
    }
}

impl Registry {
    /// The built-in serializers; the same as [`Registry::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a serializer, replacing any of the same name (built-ins included). For decoding,
    /// the serializer registered last wins its content type.
    pub fn register(&mut self, serializer: impl Serializer) {
        let entry = Entry {
            name: Cow::Owned(serializer.name().to_owned()),
            content_type: Cow::Owned(serializer.content_type().to_owned()),
            content_encoding: Cow::Owned(serializer.content_encoding().to_owned()),
            codec: Codec::Custom(Arc::new(serializer)),
        };
        let inner = Arc::make_mut(&mut self.inner);
        inner.entries.retain(|e| e.name != entry.name);
        inner.entries.push(entry);
    }

    /// The content type of a serializer given by name (`"json"`) or content type
    /// (`"application/json"`), if one is registered.
    pub fn content_type_of(&self, name_or_content_type: &str) -> Option<&str> {
        self.entry(name_or_content_type)
            .map(|e| e.content_type.as_ref())
    }

    /// The registered serializers, as `(name, content type, content encoding)`.
    pub fn serializers(&self) -> impl Iterator<Item = (&str, &str, &str)> + '_ {
        self.inner.entries.iter().map(|e| {
            (
                e.name.as_ref(),
                e.content_type.as_ref(),
                e.content_encoding.as_ref(),
            )
        })
    }

    /// Serializes `value` with the serializer of that name (or content type), as kombu's
    /// `dumps`.
    ///
    /// `raw` takes a value that serializes as bytes (`serde_bytes::Bytes`, `Vec<u8>`, `&[u8]`,
    /// `bytes::Bytes`) and sends it as it is, `binary`; or a string, sent as UTF-8 with content
    /// encoding `utf-8`. `text` takes a string (or UTF-8 bytes). msgpack writes structs as
    /// maps with field names and byte strings as msgpack `bin` (as kombu's `use_bin_type=True`
    /// does); a `Vec<u8>` without `serde_bytes` is a sequence of integers there. YAML is
    /// written as a flow document PyYAML reads back as the same values (every string quoted,
    /// floats in PyYAML's form, byte strings as `!!binary`), since plain YAML 1.2 scalars
    /// such as `yes`, `2024-01-01` or `1e-7` mean something else to PyYAML's YAML 1.1.
    ///
    /// # Errors
    ///
    /// [`Error::SerializerNotInstalled`] for an unknown serializer; [`Error::Encode`] if the
    /// value cannot be serialized with it.
    pub fn encode<T: serde::Serialize + ?Sized>(
        &self,
        serializer: &str,
        value: &T,
    ) -> Result<Encoded> {
        let entry = self
            .entry(serializer)
            .ok_or_else(|| Error::SerializerNotInstalled(serializer.to_owned()))?;
        let fail = |source: BoxError| Error::Encode {
            serializer: entry.name.to_string(),
            source,
        };
        let body = match &entry.codec {
            Codec::Json => serde_json::to_vec(value).map_err(|e| fail(e.into()))?,
            #[cfg(feature = "msgpack")]
            Codec::Msgpack => rmp_serde::to_vec_named(value).map_err(|e| fail(e.into()))?,
            #[cfg(feature = "yaml")]
            Codec::Yaml => yaml::to_vec(value).map_err(|e| fail(e.into()))?,
            Codec::Raw => {
                return match capture(value).map_err(|e| fail(e.into()))? {
                    Captured::Bytes(bytes) => Ok(Encoded {
                        body: bytes.into(),
                        content_type: entry.content_type.clone(),
                        content_encoding: Cow::Borrowed("binary"),
                    }),
                    Captured::Str(text) => Ok(Encoded {
                        body: text.into(),
                        content_type: entry.content_type.clone(),
                        content_encoding: Cow::Borrowed("utf-8"),
                    }),
                    Captured::None => {
                        Err(fail("raw expects a string or bytes, got nothing".into()))
                    }
                };
            }
            Codec::Text => match capture(value).map_err(|e| fail(e.into()))? {
                Captured::Str(text) => text.into_bytes(),
                Captured::Bytes(bytes) => String::from_utf8(bytes)
                    .map_err(|e| fail(e.into()))?
                    .into_bytes(),
                Captured::None => return Err(fail("text expects a string, got nothing".into())),
            },
            Codec::Custom(serializer) => serializer.encode(&ByRef(value)).map_err(fail)?,
        };
        Ok(Encoded {
            body: body.into(),
            content_type: entry.content_type.clone(),
            content_encoding: entry.content_encoding.clone(),
        })
    }

    /// As [`encode`](Self::encode), writing a JSON body into `buf` (a buffer many bodies
    /// share) instead of a fresh allocation; the body returned is split off `buf`. Other
    /// serializers encode as `encode` does.
    ///
    /// # Errors
    ///
    /// As [`encode`](Self::encode).
    pub fn encode_into<T: serde::Serialize + ?Sized>(
        &self,
        serializer: &str,
        value: &T,
        buf: &mut bytes::BytesMut,
    ) -> Result<Encoded> {
        let entry = self
            .entry(serializer)
            .ok_or_else(|| Error::SerializerNotInstalled(serializer.to_owned()))?;
        if !matches!(entry.codec, Codec::Json) {
            return self.encode(serializer, value);
        }
        buf.clear();
        if let Err(e) = serde_json::to_writer(bytes::BufMut::writer(&mut *buf), value) {
            buf.clear();
            return Err(Error::Encode {
                serializer: entry.name.to_string(),
                source: e.into(),
            });
        }
        Ok(Encoded {
            body: buf.split().freeze(),
            content_type: entry.content_type.clone(),
            content_encoding: entry.content_encoding.clone(),
        })
    }

    /// Decodes a body into `T`, as kombu's `loads` (see [the module docs](self)); JSON type
    /// markers are unwrapped.
    ///
    /// # Errors
    ///
    /// [`Error::ContentDisallowed`] if `accept` refuses the content type; [`Error::Decode`] if
    /// the body does not decode into `T`.
    pub fn decode<T: DeserializeOwned>(
        &self,
        body: &[u8],
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        accept: &Accept,
    ) -> Result<T> {
        let content_type = checked(content_type, accept)?;
        let fail = |source: BoxError| Error::Decode {
            content_type: content_type.to_owned(),
            source,
        };
        if body.is_empty() {
            return raw_typed(RawBody::Bytes(body)).map_err(fail);
        }
        match self.decoder(content_type) {
            Some(Codec::Json) => json::from_slice(body).map_err(|e| fail(e.into())),
            #[cfg(feature = "msgpack")]
            Some(Codec::Msgpack) => msgpack_from_slice(body).map_err(fail),
            #[cfg(feature = "yaml")]
            Some(Codec::Yaml) => serde_norway::from_slice(body).map_err(|e| fail(e.into())),
            Some(Codec::Custom(serializer)) => {
                custom_typed(serializer.as_ref(), body).map_err(fail)
            }
            Some(Codec::Raw | Codec::Text) | None => {
                raw_typed(charset_decode(body, content_encoding).map_err(fail)?).map_err(fail)
            }
        }
    }

    /// Decodes a body without a target type, as kombu's `loads` (see [`Payload`] for what each
    /// format becomes); JSON type markers are kept as they are.
    ///
    /// # Errors
    ///
    /// [`Error::ContentDisallowed`] if `accept` refuses the content type; [`Error::Decode`] if
    /// the body is not valid in its format.
    pub fn decode_payload(
        &self,
        body: &[u8],
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        accept: &Accept,
    ) -> Result<Payload> {
        let content_type = checked(content_type, accept)?;
        let fail = |source: BoxError| Error::Decode {
            content_type: content_type.to_owned(),
            source,
        };
        if body.is_empty() {
            return Ok(Payload::Bytes(Bytes::new()));
        }
        let value = match self.decoder(content_type) {
            Some(Codec::Json) => serde_json::from_slice(body).map_err(|e| fail(e.into()))?,
            #[cfg(feature = "msgpack")]
            Some(Codec::Msgpack) => msgpack_from_slice::<Dynamic>(body).map_err(fail)?.0,
            #[cfg(feature = "yaml")]
            Some(Codec::Yaml) => {
                serde_norway::from_slice::<Dynamic>(body)
                    .map_err(|e| fail(e.into()))?
                    .0
            }
            Some(Codec::Custom(serializer)) => {
                custom_typed::<Dynamic>(serializer.as_ref(), body)
                    .map_err(fail)?
                    .0
            }
            Some(Codec::Raw | Codec::Text) | None => {
                return Ok(
                    match charset_decode(body, content_encoding).map_err(fail)? {
                        RawBody::Text(text) => Payload::Text(text.into_owned()),
                        RawBody::Bytes(bytes) => Payload::Bytes(Bytes::copy_from_slice(bytes)),
                    },
                );
            }
        };
        Ok(Payload::Value(value))
    }

    fn entry(&self, name_or_content_type: &str) -> Option<&Entry> {
        let mut entries = self.inner.entries.iter().rev();
        if name_or_content_type.contains('/') {
            entries.find(|e| e.content_type == name_or_content_type)
        } else {
            entries.find(|e| e.name == name_or_content_type)
        }
    }

    fn decoder(&self, content_type: &str) -> Option<&Codec> {
        self.inner
            .entries
            .iter()
            .rev()
            .find(|e| e.content_type == content_type && e.codec.decodes())
            .map(|e| &e.codec)
    }
}

impl Default for Accept {
    /// `application/json` only.
    fn default() -> Self {
        Self {
            only: Some(vec!["application/json".to_owned()]),
        }
    }
}

impl Accept {
    /// Accepts the listed serializers, by name (`"json"`, resolved in `registry`) or content
    /// type (anything containing a `/`, taken as it is).
    ///
    /// `"pickle"` is known by name so that kombu-style lists carry over, but pickle bodies are
    /// still refused.
    ///
    /// # Errors
    ///
    /// [`Error::SerializerNotInstalled`] for a name the registry does not know, as kombu's
    /// `prepare_accept_content` does (for example `"msgpack"` with its feature off).
    pub fn new<I, S>(registry: &Registry, names_or_types: I) -> Result<Accept>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut only = Vec::new();
        for item in names_or_types {
            let item = item.as_ref();
            let content_type = if item.contains('/') {
                item
            } else if let Some(content_type) = registry.content_type_of(item) {
                content_type
            } else if item == "pickle" {
                PICKLE
            } else {
                return Err(Error::SerializerNotInstalled(item.to_owned()));
            };
            only.push(content_type.to_owned());
        }
        only.sort_unstable();
        only.dedup();
        Ok(Self { only: Some(only) })
    }

    /// Accepts every content type, including types no serializer decodes (those are handed
    /// over as text or bytes); pickle is still refused.
    pub fn any() -> Accept {
        Self { only: None }
    }

    /// Whether a body of this content type would be decoded.
    pub fn allows(&self, content_type: &str) -> bool {
        if content_type == PICKLE {
            return false;
        }
        if TRUSTED.contains(&content_type) {
            return true;
        }
        match &self.only {
            None => true,
            Some(only) => only
                .binary_search_by(|t| t.as_str().cmp(content_type))
                .is_ok(),
        }
    }

    /// The accepted content types, sorted (the always-trusted ones aside), or `None` for
    /// [`Accept::any`].
    pub fn content_types(&self) -> Option<&[String]> {
        self.only.as_deref()
    }
}

/// Applies kombu's defaults and accept check: the content type to decode as.
fn checked<'a>(content_type: Option<&'a str>, accept: &Accept) -> Result<&'a str> {
    let content_type = content_type.unwrap_or(DATA);
    if accept.allows(content_type) {
        Ok(content_type)
    } else {
        Err(Error::ContentDisallowed {
            content_type: content_type.to_owned(),
        })
    }
}

fn raw_typed<T: DeserializeOwned>(body: RawBody<'_>) -> Result<T, BoxError> {
    Ok(T::deserialize(
        RawDeserializer::<serde::de::value::Error>::new(body),
    )?)
}

/// msgpack as Python's `unpackb`: one value, nothing after it.
#[cfg(feature = "msgpack")]
fn msgpack_from_slice<T: DeserializeOwned>(body: &[u8]) -> Result<T, BoxError> {
    let mut de = rmp_serde::Deserializer::new(body);
    let value = T::deserialize(&mut de)?;
    let rest = de.into_inner();
    if !rest.is_empty() {
        return Err(format!("{} bytes of extra data after the msgpack value", rest.len()).into());
    }
    Ok(value)
}

fn custom_typed<T: DeserializeOwned>(
    serializer: &dyn Serializer,
    body: &[u8],
) -> Result<T, BoxError> {
    let mut out = None;
    serializer.decode(body, &mut |de| {
        out = Some(erased_serde::deserialize::<T>(de)?);
        Ok(())
    })?;
    out.ok_or_else(|| format!("the {} serializer decoded nothing", serializer.name()).into())
}

/// Lets an unsized value through `&dyn erased_serde::Serialize`.
struct ByRef<'a, T: ?Sized>(&'a T);

impl<T: serde::Serialize + ?Sized> serde::Serialize for ByRef<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}
