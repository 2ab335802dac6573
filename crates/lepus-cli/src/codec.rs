//! kombu's message formats, through `lepus-messaging`: `publish --serializer/--compression`
//! encodes bodies as a kombu producer does, `consume`/`get --decode` decodes them as a kombu
//! consumer does.
//!
//! ```text
//! publish:  JSON text ─► Json (keys kept in order) ─► Registry::encode ─► compression::compress
//!           (content_type, content_encoding and the `compression` header: what they return)
//! decode:   body ─► compression::decompress (`compression` header, at most DECODE_LIMIT bytes)
//!                ─► Registry::decode_payload (refused outside the accept list) ─► "payload"
//! ```
//!
//! Publishing reads its input as JSON and never as Python values, so the `raw` and `text`
//! serializers take a JSON string; `raw` also takes kombu's bytes markers
//! (`{"__type__": "base64", "__value__": "..."}` or `{"__type__": "bytes", ...}`), the form
//! `--decode` prints bytes in, and sends their bytes with content encoding `binary`.

use std::borrow::Cow;
use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use lepus::bytes::Bytes;
use lepus::{BasicProperties, Delivery};
use lepus_messaging::compression;
use lepus_messaging::serializer::{Accept, Payload, Registry};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use crate::error::CliError;

/// The most bytes a compressed body may inflate to with `--decode`: the client's default
/// largest message (128 MiB). Past it the message is refused, before more is allocated.
pub(crate) const DECODE_LIMIT: usize = 128 * 1024 * 1024;

/// The header naming a body's compression method, as kombu writes it.
pub(crate) const COMPRESSION_HEADER: &str = "compression";

/// The serializer names `--serializer` takes, for messages.
const SERIALIZERS: &str = "json, msgpack, yaml, raw or text";

/// `--serializer NAME`: a serializer of the default registry, by name or content type;
/// returns its name.
///
/// # Errors
///
/// A line naming the serializers there are.
pub(crate) fn parse_serializer(s: &str) -> Result<String, String> {
    Registry::default()
        .serializers()
        .find(|(name, content_type, _)| *name == s || *content_type == s)
        .map(|(name, _, _)| name.to_owned())
        .ok_or_else(|| format!("unknown serializer '{s}' (use {SERIALIZERS})"))
}

/// `--compression METHOD`: a compression method by name, alias or MIME type; returns its MIME
/// type, the value of the `compression` header.
///
/// # Errors
///
/// A line naming the methods there are.
pub(crate) fn parse_compression(s: &str) -> Result<&'static str, String> {
    compression::resolve(s).ok_or_else(|| {
        let names: Vec<&str> = compression::methods().map(|(name, _)| name).collect();
        format!(
            "unknown compression method '{s}' (use {})",
            names.join(", ")
        )
    })
}

/// `--accept NAME_OR_TYPE`: a serializer name the registry knows, or any content type.
///
/// # Errors
///
/// A line naming the serializers there are.
pub(crate) fn parse_accept(s: &str) -> Result<String, String> {
    Accept::new(&Registry::default(), [s])
        .map(|_| s.to_owned())
        .map_err(|_| {
            format!(
                "unknown serializer '{s}' (use {SERIALIZERS}, or a content type such as \
                 application/json)"
            )
        })
}

/// Serializes and compresses bodies for `publish`.
#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    registry: Registry,
    /// `--serializer`, by name.
    serializer: Option<String>,
    /// `--compression`, by MIME type.
    compression: Option<&'static str>,
}

/// A body ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Encoded {
    /// The body: serialized, then compressed.
    pub(crate) body: Bytes,
    /// `content_type` and `content_encoding` as the serializer set them; `None` without one.
    pub(crate) content: Option<(Cow<'static, str>, Cow<'static, str>)>,
}

/// Why a body could not be encoded.
#[derive(Debug)]
pub(crate) enum EncodeError {
    /// The input is not one JSON value.
    Json(serde_json::Error),
    /// `raw` or `text` got something other than a string (or, for `raw`, a bytes marker).
    NotAString {
        /// The serializer's name.
        serializer: String,
        /// What the input is: `a number`, `an object`, ...
        found: &'static str,
    },
    /// A bytes marker whose `__value__` is not valid base64.
    BadMarker(base64::DecodeError),
    /// The serializer or the compression method failed.
    Messaging(lepus_messaging::Error),
}

impl Encoder {
    /// The encoder for `--serializer` and `--compression`; `None` when neither is given and
    /// bodies go out byte for byte.
    pub(crate) fn new(
        serializer: Option<String>,
        compression: Option<&'static str>,
    ) -> Option<Self> {
        if serializer.is_none() && compression.is_none() {
            return None;
        }
        Some(Self {
            registry: Registry::default(),
            serializer,
            compression,
        })
    }

    /// Serializes `input` (JSON text) with `--serializer`, if given, and compresses the result
    /// with `--compression`, if given.
    ///
    /// # Errors
    ///
    /// [`EncodeError`]: input that is not JSON, or not what `raw`/`text` take; a codec failure.
    pub(crate) fn encode(&self, input: &Bytes) -> Result<Encoded, EncodeError> {
        let (body, content) = match &self.serializer {
            None => (input.clone(), None),
            Some(name) => {
                let value: Json = serde_json::from_slice(input).map_err(EncodeError::Json)?;
                let encoded = match (name.as_str(), &value) {
                    (_, Json::String(_)) | ("json" | "msgpack" | "yaml", _) => {
                        self.registry.encode(name, &value)
                    }
                    ("raw", _) => match value.bytes_marker() {
                        Some(bytes) => {
                            let bytes = bytes.map_err(EncodeError::BadMarker)?;
                            self.registry.encode(name, &RawBytes(&bytes))
                        }
                        None => return Err(value.not_a_string(name)),
                    },
                    ("text", _) => return Err(value.not_a_string(name)),
                    // A serializer this CLI does not know the input of: let it judge.
                    _ => self.registry.encode(name, &value),
                }
                .map_err(EncodeError::Messaging)?;
                let content = (encoded.content_type, encoded.content_encoding);
                (encoded.body, Some(content))
            }
        };
        let body = match self.compression {
            None => body,
            Some(method) => compression::compress(method, &body)
                .map(|(compressed, _)| Bytes::from(compressed))
                .map_err(EncodeError::Messaging)?,
        };
        Ok(Encoded { body, content })
    }
}

impl EncodeError {
    /// The error in words, for an input that is one line (`--lines`) or a whole body: JSON
    /// errors in a line give only the column.
    pub(crate) fn describe(&self, one_line: bool) -> String {
        match self {
            Self::Json(e) if one_line && e.line() == 1 => {
                let text = e.to_string();
                let position = format!(" at line 1 column {}", e.column());
                let message = text.strip_suffix(&position).unwrap_or(&text);
                format!("not valid JSON: {message} at column {}", e.column())
            }
            other => other.to_string(),
        }
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Json(e) => write!(f, "not valid JSON: {e}"),
            Self::NotAString { serializer, found } if serializer == "raw" => write!(
                f,
                "--serializer raw takes a JSON string or a bytes marker \
                 ({{\"__type__\": \"base64\", \"__value__\": \"...\"}}), not {found}"
            ),
            Self::NotAString { serializer, found } => {
                write!(
                    f,
                    "--serializer {serializer} takes a JSON string, not {found}"
                )
            }
            Self::BadMarker(e) => write!(f, "the bytes marker's __value__ is not base64: {e}"),
            Self::Messaging(e) => write!(f, "{e}"),
        }
    }
}

/// Decompresses and deserializes bodies for `consume --decode` and `get --decode`.
#[derive(Debug, Clone)]
pub(crate) struct Decoder {
    registry: Registry,
    accept: Accept,
}

/// Why a body was not decoded: the message is then requeued.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// The `compression` header is there but is not a string.
    CompressionHeader,
    /// Refused by the accept list, not decompressible (or a bomb), or not decodable.
    Messaging(lepus_messaging::Error),
}

impl Decoder {
    /// A decoder accepting `accept` (serializer names or content types), JSON when empty, as
    /// kombu's default.
    ///
    /// # Errors
    ///
    /// [`CliError::Usage`] for a serializer name the registry does not know (clap checks
    /// each `--accept` already).
    pub(crate) fn new(accept: &[String]) -> Result<Self, CliError> {
        let registry = Registry::default();
        let accept = if accept.is_empty() {
            Accept::default()
        } else {
            Accept::new(&registry, accept).map_err(|e| CliError::Usage(e.to_string()))?
        };
        Ok(Self { registry, accept })
    }

    /// Decodes a message's body as kombu's consumer would: inflate it per its `compression`
    /// header (at most [`DECODE_LIMIT`] bytes), check its content type against the accept
    /// list, deserialize it.
    ///
    /// # Errors
    ///
    /// [`DecodeError`]: the message must not be settled as decoded.
    pub(crate) fn decode(&self, d: &Delivery) -> Result<Payload, DecodeError> {
        self.decode_parts(&d.body, &d.properties)
    }

    /// [`decode`](Self::decode) of a body with these properties.
    fn decode_parts(&self, body: &[u8], props: &BasicProperties) -> Result<Payload, DecodeError> {
        let method = props
            .headers
            .as_ref()
            .and_then(|h| h.get(COMPRESSION_HEADER));
        let body: Cow<'_, [u8]> = match method {
            None => Cow::Borrowed(body),
            Some(method) => {
                let method = method.as_str().ok_or(DecodeError::CompressionHeader)?;
                Cow::Owned(
                    compression::decompress(method, body, DECODE_LIMIT)
                        .map_err(DecodeError::Messaging)?,
                )
            }
        };
        self.registry
            .decode_payload(
                &body,
                props.content_type.as_ref().and_then(|s| s.as_str()),
                props.content_encoding.as_ref().and_then(|s| s.as_str()),
                &self.accept,
            )
            .map_err(DecodeError::Messaging)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CompressionHeader => {
                f.write_str("refusing to decode the body: its compression header is not a string")
            }
            Self::Messaging(e) => write!(f, "{e}"),
        }
    }
}

/// A decoded payload as JSON: a value as it is, text as a string, bytes as kombu's bytes
/// marker, as `lepus-messaging` writes the byte strings inside msgpack and YAML values
/// (`{"__type__": "bytes", "__value__": <text>}` when they are UTF-8, else
/// `{"__type__": "base64", "__value__": <base64>}`).
pub(crate) struct PayloadJson<'a>(pub(crate) &'a Payload);

impl Serialize for PayloadJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Payload::Value(v) => v.serialize(s),
            Payload::Text(t) => s.serialize_str(t),
            Payload::Bytes(b) => lepus_messaging::serializer::bytes_marker(b).serialize(s),
        }
    }
}

/// A JSON value with its object keys in input order (`serde_json::Value` sorts them, and the
/// `preserve_order` feature would change serde_json for the whole workspace), so that msgpack
/// and YAML maps keep the order they were written in.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// For error messages: `a number`, `an object`, ...
    fn kind(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "a boolean",
            Self::Number(_) => "a number",
            Self::String(_) => "a string",
            Self::Array(_) => "an array",
            Self::Object(_) => "an object",
        }
    }

    fn not_a_string(&self, serializer: &str) -> EncodeError {
        EncodeError::NotAString {
            serializer: serializer.to_owned(),
            found: self.kind(),
        }
    }

    /// The bytes of kombu's bytes marker, `{"__type__": "bytes" | "base64", "__value__": s}`
    /// and nothing else; `None` when this is not one.
    fn bytes_marker(&self) -> Option<Result<Vec<u8>, base64::DecodeError>> {
        let Self::Object(entries) = self else {
            return None;
        };
        let field = |key: &str| {
            entries.iter().find_map(|(k, v)| match v {
                Self::String(s) if k == key => Some(s.as_str()),
                _ => None,
            })
        };
        if entries.len() != 2 {
            return None;
        }
        match (field("__type__")?, field("__value__")?) {
            ("bytes", text) => Some(Ok(text.as_bytes().to_vec())),
            ("base64", text) => Some(BASE64.decode(text)),
            _ => None,
        }
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Null => s.serialize_unit(),
            Self::Bool(b) => s.serialize_bool(*b),
            Self::Number(n) => n.serialize(s),
            Self::String(t) => s.serialize_str(t),
            Self::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Self::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        // JSON text has no NaN or infinity, so this is always a number.
        serde_json::Number::from_f64(v)
            .map(Json::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
        while let Some(entry) = map.next_entry::<String, Json>()? {
            entries.push(entry);
        }
        Ok(Json::Object(entries))
    }
}

/// Bytes that serialize as a byte string, for the `raw` serializer.
struct RawBytes<'a>(&'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

#[cfg(test)]
mod tests {
    use lepus::{FieldTable, ShortStr};
    use serde_json::json;

    use super::*;

    fn encoder(serializer: Option<&str>, compression: Option<&str>) -> Encoder {
        let compression = compression.map(|c| parse_compression(c).unwrap());
        Encoder::new(
            serializer.map(|s| parse_serializer(s).unwrap()),
            compression,
        )
        .unwrap()
    }

    fn encode(serializer: &str, input: &str) -> Result<Encoded, EncodeError> {
        encoder(Some(serializer), None).encode(&Bytes::from(input.to_owned()))
    }

    fn content(e: &Encoded) -> (&str, &str) {
        let (ct, ce) = e.content.as_ref().unwrap();
        (ct, ce)
    }

    /// Decodes `e` as a delivery with the properties publish would set.
    fn decode(
        e: &Encoded,
        compression: Option<&str>,
        accept: &[&str],
    ) -> Result<Payload, DecodeError> {
        let mut props = BasicProperties::default();
        if let Some((ct, ce)) = &e.content {
            props.content_type = Some(ShortStr::try_from(ct.as_ref()).unwrap());
            props.content_encoding = Some(ShortStr::try_from(ce.as_ref()).unwrap());
        }
        if let Some(c) = compression {
            let mut headers = FieldTable::default();
            headers.insert(ShortStr::from_static(COMPRESSION_HEADER), c);
            props.headers = Some(headers);
        }
        let accept: Vec<String> = accept.iter().map(|s| s.to_string()).collect();
        Decoder::new(&accept).unwrap().decode_parts(&e.body, &props)
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(parse_serializer("msgpack").unwrap(), "msgpack");
        assert_eq!(parse_serializer("application/x-yaml").unwrap(), "yaml");
        assert!(parse_serializer("pickle")
            .unwrap_err()
            .contains("json, msgpack"));
        assert_eq!(parse_compression("zlib").unwrap(), "application/x-gzip");
        assert_eq!(parse_compression("xz").unwrap(), "application/x-lzma");
        let e = parse_compression("snappy").unwrap_err();
        assert!(e.contains("zlib, bzip2, lzma, brotli, zstd"), "{e}");
        assert!(parse_accept("yaml").is_ok());
        assert!(parse_accept("application/x-custom").is_ok());
        assert!(parse_accept("nope").is_err());
        assert!(Encoder::new(None, None).is_none());
    }

    #[test]
    fn every_serializer_round_trips_with_every_compression() {
        let value = r#"{"b": [1, -2, 3.5, null, true], "a": {"nested": "é"}}"#;
        let mut methods: Vec<Option<&str>> = vec![None];
        methods.extend(compression::methods().map(|(name, _)| Some(name)));
        for serializer in ["json", "msgpack", "yaml"] {
            for method in &methods {
                let e = encoder(Some(serializer), *method)
                    .encode(&Bytes::from(value))
                    .unwrap();
                let mime = method.map(|m| parse_compression(m).unwrap());
                let got = decode(&e, mime, &[serializer]).unwrap();
                assert_eq!(
                    got,
                    Payload::Value(serde_json::from_str(value).unwrap()),
                    "{serializer} {method:?}"
                );
            }
        }
    }

    #[test]
    fn kombu_content_types() {
        let cases = [
            ("json", r#"{"a": 1}"#, "application/json", "utf-8"),
            ("msgpack", r#"{"a": 1}"#, "application/x-msgpack", "binary"),
            ("yaml", r#"{"a": 1}"#, "application/x-yaml", "utf-8"),
            ("raw", r#""héllo""#, "application/data", "utf-8"),
            (
                "raw",
                r#"{"__type__": "base64", "__value__": "AP8="}"#,
                "application/data",
                "binary",
            ),
            ("text", r#""héllo""#, "text/plain", "utf-8"),
        ];
        for (serializer, input, ct, ce) in cases {
            let e = encode(serializer, input).unwrap();
            assert_eq!(content(&e), (ct, ce), "{serializer} {input}");
        }
        assert_eq!(
            encode("raw", r#""héllo""#).unwrap().body,
            "héllo".as_bytes()
        );
        assert_eq!(
            encode("raw", r#"{"__value__": "AP8=", "__type__": "base64"}"#)
                .unwrap()
                .body,
            &[0, 0xff][..]
        );
        assert_eq!(
            encode("raw", r#"{"__type__": "bytes", "__value__": "ab"}"#)
                .unwrap()
                .body,
            &b"ab"[..]
        );
        assert_eq!(encode("text", r#""a\nb""#).unwrap().body, &b"a\nb"[..]);
        assert_eq!(encode("json", "[1, 2]").unwrap().body, &b"[1,2]"[..]);
    }

    #[test]
    fn object_keys_keep_their_order() {
        let e = encode("json", r#"{"z": 1, "a": {"y": 2, "b": 3}}"#).unwrap();
        assert_eq!(e.body, &br#"{"z":1,"a":{"y":2,"b":3}}"#[..]);
        let e = encode("yaml", r#"{"z": 1, "a": 2}"#).unwrap();
        let yaml = std::str::from_utf8(&e.body).unwrap();
        assert!(yaml.find('z').unwrap() < yaml.find('a').unwrap(), "{yaml}");
    }

    #[test]
    fn bad_input_is_described() {
        let e = encode("json", "{").unwrap_err();
        assert_eq!(
            e.describe(true),
            "not valid JSON: EOF while parsing an object at column 1"
        );
        assert_eq!(
            e.describe(false),
            "not valid JSON: EOF while parsing an object at line 1 column 1"
        );
        let e = encode("msgpack", "[1,\n x]").unwrap_err();
        assert_eq!(
            e.describe(true),
            "not valid JSON: expected value at line 2 column 2"
        );
        let e = encode("text", "{}").unwrap_err();
        assert_eq!(
            e.describe(true),
            "--serializer text takes a JSON string, not an object"
        );
        let e = encode("raw", "12").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("--serializer raw takes a JSON string or a bytes marker"));
        assert!(e.to_string().ends_with("not a number"), "{e}");
        let e = encode("raw", r#"{"__type__": "base64", "__value__": "!"}"#).unwrap_err();
        assert!(matches!(e, EncodeError::BadMarker(_)), "{e}");
        assert!(encode("json", "1 2").is_err());
        assert!(encode("json", "").is_err());
    }

    #[test]
    fn compression_alone_keeps_the_body_and_properties() {
        let e = encoder(None, Some("zstd"))
            .encode(&Bytes::from_static(b"\xff raw"))
            .unwrap();
        assert!(e.content.is_none());
        assert_eq!(
            compression::decompress("application/zstd", &e.body, 1 << 20).unwrap(),
            b"\xff raw"
        );
    }

    #[test]
    fn decoding_refuses_what_is_not_accepted() {
        let e = encode("msgpack", "[1]").unwrap();
        let err = decode(&e, None, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "refusing to decode content of type application/x-msgpack: it is not in the accept list"
        );
        assert_eq!(
            decode(&e, None, &["application/x-msgpack"]).unwrap(),
            Payload::Value(json!([1]))
        );
        // Text and raw are always trusted, as kombu trusts them.
        let e = encode("text", r#""hi""#).unwrap();
        assert_eq!(decode(&e, None, &[]).unwrap(), Payload::Text("hi".into()));
        // A body that is not what its content type says.
        let bad = Encoded {
            body: Bytes::from_static(b"{nope"),
            content: Some(("application/json".into(), "utf-8".into())),
        };
        let err = decode(&bad, None, &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot decode the application/json body"),
            "{err}"
        );
        // A compression header on a body that is not compressed.
        let err = decode(&bad, Some("application/x-gzip"), &[]).unwrap_err();
        assert!(err.to_string().contains("decompress"), "{err}");
        let err = decode(&bad, Some("application/x-snappy"), &[]).unwrap_err();
        assert!(err.to_string().contains("application/x-snappy"), "{err}");
    }

    #[test]
    fn payload_json() {
        let j = |p: Payload| serde_json::to_string(&PayloadJson(&p)).unwrap();
        assert_eq!(j(Payload::Value(json!({"a": [1]}))), r#"{"a":[1]}"#);
        assert_eq!(j(Payload::Text("t\n".into())), r#""t\n""#);
        assert_eq!(
            j(Payload::Bytes(Bytes::from_static(b"\x00\xff"))),
            r#"{"__type__":"base64","__value__":"AP8="}"#
        );
        assert_eq!(
            j(Payload::Bytes(Bytes::from_static(b"ab"))),
            r#"{"__type__":"bytes","__value__":"ab"}"#
        );
    }
}
