//! The registry against byte-exact kombu fixtures, and its decoding rules.
//!
//! Fixtures were generated with kombu 5.7.0 on CPython 3.11 (msgpack 1.2.4, PyYAML 6.0.4):
//! `kombu.serialization.dumps(value, serializer=...)`, with
//! `U = uuid.UUID('6f1c3b2a-9d4e-4f5a-8b7c-0d1e2f3a4b5c')` and the values named in each
//! constant's comment.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use serde_json::{json, Value};

use super::*;

/// `{"a": 1, "b": {"c": [1, 2.5, None, True], "d": "x"}, "e": []}` as json.
const JSON_NESTED: &[u8] =
    b"{\"a\": 1, \"b\": {\"c\": [1, 2.5, null, true], \"d\": \"x\"}, \"e\": []}";
/// `"h\u00e9llo w\u00f6rld \u2603 \U0001d11e \"q\" \\"` as json.
const JSON_UNICODE: &[u8] = b"\"h\\u00e9llo w\\u00f6rld \\u2603 \\ud834\\udd1e \\\"q\\\" \\\\\"";
/// `[2**64 - 1, -2**63, 0, 2**63 - 1, -1]` as json.
const JSON_INTS: &[u8] =
    b"[18446744073709551615, -9223372036854775808, 0, 9223372036854775807, -1]";
/// `[0.1, -1.5e300, 3.0, 1e-7]` as json.
const JSON_FLOATS: &[u8] = b"[0.1, -1.5e+300, 3.0, 1e-07]";
/// `datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)` as json.
const JSON_DT_AWARE: &[u8] =
    b"{\"__type__\": \"datetime\", \"__value__\": \"2024-01-02T03:04:05.123456+00:00\"}";
/// `datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=5, minutes=30)))` as json.
const JSON_DT_OFFSET: &[u8] =
    b"{\"__type__\": \"datetime\", \"__value__\": \"2024-01-02T03:04:05+05:30\"}";
/// `datetime(2024, 1, 2, 3, 4, 5, 123456)` as json.
const JSON_DT_NAIVE: &[u8] =
    b"{\"__type__\": \"datetime\", \"__value__\": \"2024-01-02T03:04:05.123456\"}";
/// `date(2024, 2, 29)` as json.
const JSON_DATE: &[u8] = b"{\"__type__\": \"date\", \"__value__\": \"2024-02-29\"}";
/// `time(13, 14, 15, 500000)` as json.
const JSON_TIME: &[u8] = b"{\"__type__\": \"time\", \"__value__\": \"13:14:15.500000\"}";
/// `Decimal('12345.678900')` as json.
const JSON_DECIMAL: &[u8] = b"{\"__type__\": \"decimal\", \"__value__\": \"12345.678900\"}";
/// `U` as json.
const JSON_UUID: &[u8] =
    b"{\"__type__\": \"uuid\", \"__value__\": {\"hex\": \"6f1c3b2a9d4e4f5a8b7c0d1e2f3a4b5c\"}}";
/// `b'hello \xe2\x98\x83'` as json.
const JSON_BYTES_UTF8: &[u8] = b"{\"__type__\": \"bytes\", \"__value__\": \"hello \\u2603\"}";
/// `b'\xff\x00\x01\x80'` as json.
const JSON_BYTES_BIN: &[u8] = b"{\"__type__\": \"base64\", \"__value__\": \"/wABgA==\"}";
/// `[1, None, "x"]` as json.
const JSON_LIST_NONE: &[u8] = b"[1, null, \"x\"]";
/// `{"when": DT_AWARE, "day": DATE, "at": TIME, "amount": DECIMAL, "id": U, "text": b"hello", "blob": BYTES_BIN, "tags": ["a", None], "big": 2**64 - 1, "neg": -2**63}` as json.
const JSON_RECORD: &[u8] = b"{\"when\": {\"__type__\": \"datetime\", \"__value__\": \"2024-01-02T03:04:05.123456+00:00\"}, \"day\": {\"__type__\": \"date\", \"__value__\": \"2024-02-29\"}, \"at\": {\"__type__\": \"time\", \"__value__\": \"13:14:15.500000\"}, \"amount\": {\"__type__\": \"decimal\", \"__value__\": \"12345.678900\"}, \"id\": {\"__type__\": \"uuid\", \"__value__\": {\"hex\": \"6f1c3b2a9d4e4f5a8b7c0d1e2f3a4b5c\"}}, \"text\": {\"__type__\": \"bytes\", \"__value__\": \"hello\"}, \"blob\": {\"__type__\": \"base64\", \"__value__\": \"/wABgA==\"}, \"tags\": [\"a\", null], \"big\": 18446744073709551615, \"neg\": -9223372036854775808}";
/// `{"a": 1, "b": {"c": [1, 2.5, None, True], "d": "x"}, "e": []}` as msgpack.
#[cfg(feature = "msgpack")]
const MSGPACK_NESTED: &[u8] = b"\x83\xa1a\x01\xa1b\x82\xa1c\x94\x01\xcb@\x04\x00\x00\x00\x00\x00\x00\xc0\xc3\xa1d\xa1x\xa1e\x90";
/// `"h\u00e9llo w\u00f6rld \u2603 \U0001d11e \"q\" \\"` as msgpack.
#[cfg(feature = "msgpack")]
const MSGPACK_UNICODE: &[u8] =
    b"\xbch\xc3\xa9llo w\xc3\xb6rld \xe2\x98\x83 \xf0\x9d\x84\x9e \"q\" \\";
/// `[2**64 - 1, -2**63, 0, 2**63 - 1, -1]` as msgpack.
#[cfg(feature = "msgpack")]
const MSGPACK_INTS: &[u8] = b"\x95\xcf\xff\xff\xff\xff\xff\xff\xff\xff\xd3\x80\x00\x00\x00\x00\x00\x00\x00\x00\xcf\x7f\xff\xff\xff\xff\xff\xff\xff\xff";
/// `[0.1, -1.5e300, 3.0, 1e-7]` as msgpack.
#[cfg(feature = "msgpack")]
const MSGPACK_FLOATS: &[u8] = b"\x94\xcb?\xb9\x99\x99\x99\x99\x99\x9a\xcb\xfeA\xeb-f\x00X5\xcb@\x08\x00\x00\x00\x00\x00\x00\xcb>z\xd7\xf2\x9a\xbc\xafH";
/// `b'hello \xe2\x98\x83'` as msgpack.
#[cfg(feature = "msgpack")]
const MSGPACK_BYTES_UTF8: &[u8] = b"\xc4\x09hello \xe2\x98\x83";
/// `b'\xff\x00\x01\x80'` as msgpack.
#[cfg(feature = "msgpack")]
const MSGPACK_BYTES_BIN: &[u8] = b"\xc4\x04\xff\x00\x01\x80";
/// `[1, None, "x"]` as msgpack.
#[cfg(feature = "msgpack")]
const MSGPACK_LIST_NONE: &[u8] = b"\x93\x01\xc0\xa1x";
/// `{"a": 1, "b": {"c": [1, 2.5, None, True], "d": "x"}, "e": []}` as yaml.
#[cfg(feature = "yaml")]
const YAML_NESTED: &[u8] =
    b"a: 1\x0ab:\x0a  c:\x0a  - 1\x0a  - 2.5\x0a  - null\x0a  - true\x0a  d: x\x0ae: []\x0a";
/// `"h\u00e9llo w\u00f6rld \u2603 \U0001d11e \"q\" \\"` as yaml.
#[cfg(feature = "yaml")]
const YAML_UNICODE: &[u8] = b"\"h\\xE9llo w\\xF6rld \\u2603 \\U0001D11E \\\"q\\\" \\\\\"\x0a";
/// `[2**64 - 1, -2**63, 0, 2**63 - 1, -1]` as yaml.
#[cfg(feature = "yaml")]
const YAML_INTS: &[u8] =
    b"- 18446744073709551615\x0a- -9223372036854775808\x0a- 0\x0a- 9223372036854775807\x0a- -1\x0a";
/// `[0.1, -1.5e300, 3.0, 1e-7]` as yaml.
#[cfg(feature = "yaml")]
const YAML_FLOATS: &[u8] = b"- 0.1\x0a- -1.5e+300\x0a- 3.0\x0a- 1.0e-07\x0a";
/// `[1, None, "x"]` as yaml.
#[cfg(feature = "yaml")]
const YAML_LIST_NONE: &[u8] = b"- 1\x0a- null\x0a- x\x0a";
/// `b'\xff\x00\x01\x80'` as yaml.
#[cfg(feature = "yaml")]
const YAML_BYTES_BIN: &[u8] = b"!!binary |\x0a  /wABgA==\x0a";
/// `datetime(2024, 1, 2, 3, 4, 5, 123456)` as yaml.
#[cfg(feature = "yaml")]
const YAML_DT_NAIVE: &[u8] = b"2024-01-02 03:04:05.123456\x0a...\x0a";
/// `date(2024, 2, 29)` as yaml.
#[cfg(feature = "yaml")]
const YAML_DATE: &[u8] = b"2024-02-29\x0a...\x0a";

const UNICODE: &str = "h\u{e9}llo w\u{f6}rld \u{2603} \u{1d11e} \"q\" \\";
const UUID_TEXT: &str = "6f1c3b2a-9d4e-4f5a-8b7c-0d1e2f3a4b5c";

fn json_ct() -> (Option<&'static str>, Option<&'static str>) {
    (Some("application/json"), Some("utf-8"))
}

fn decode_json<T: DeserializeOwned>(body: &[u8]) -> T {
    let (ct, ce) = json_ct();
    Registry::default()
        .decode(body, ct, ce, &Accept::default())
        .unwrap()
}

fn aware() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::microseconds(123_456)
}

fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()
}

fn at() -> NaiveTime {
    NaiveTime::from_hms_micro_opt(13, 14, 15, 500_000).unwrap()
}

fn amount() -> Decimal {
    "12345.678900".parse().unwrap()
}

/// The RECORD fixture with real types. Decoding needs no annotations; encoding for kombu
/// needs the marker modules.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Record {
    #[serde(with = "markers::datetime")]
    when: DateTime<Utc>,
    #[serde(with = "markers::date")]
    day: NaiveDate,
    #[serde(with = "markers::time")]
    at: NaiveTime,
    #[serde(with = "markers::decimal")]
    amount: Decimal,
    #[serde(with = "markers::uuid")]
    id: uuid::Uuid,
    #[serde(with = "markers::bytes")]
    text: Vec<u8>,
    #[serde(with = "markers::bytes")]
    blob: Vec<u8>,
    tags: Vec<Option<String>>,
    big: u64,
    neg: i64,
}

/// The same record with no annotations at all: decoding alone needs none.
#[derive(Deserialize, Debug, PartialEq)]
struct PlainRecord {
    when: DateTime<Utc>,
    day: NaiveDate,
    at: NaiveTime,
    amount: Decimal,
    id: uuid::Uuid,
    text: ByteBuf,
    blob: ByteBuf,
    tags: Vec<Option<String>>,
    big: u64,
    neg: i64,
}

/// The record as Python's text forms, to compare encodings with kombu's exactly.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct TextRecord {
    #[serde(with = "markers::datetime")]
    when: String,
    #[serde(with = "markers::date")]
    day: String,
    #[serde(with = "markers::time")]
    at: String,
    #[serde(with = "markers::decimal")]
    amount: String,
    #[serde(with = "markers::uuid")]
    id: String,
    #[serde(with = "markers::bytes")]
    text: Vec<u8>,
    #[serde(with = "markers::bytes")]
    blob: ByteBuf,
    tags: Vec<Option<String>>,
    big: u64,
    neg: i64,
}

fn record() -> Record {
    Record {
        when: aware(),
        day: day(),
        at: at(),
        amount: amount(),
        id: UUID_TEXT.parse().unwrap(),
        text: b"hello".to_vec(),
        blob: b"\xff\x00\x01\x80".to_vec(),
        tags: vec![Some("a".into()), None],
        big: u64::MAX,
        neg: i64::MIN,
    }
}

// ---- JSON: kombu -> Rust -------------------------------------------------------------------

#[test]
fn json_plain_fixtures_decode() {
    let nested: Value = decode_json(JSON_NESTED);
    assert_eq!(
        nested,
        json!({"a": 1, "b": {"c": [1, 2.5, null, true], "d": "x"}, "e": []})
    );
    assert_eq!(decode_json::<String>(JSON_UNICODE), UNICODE);
    assert_eq!(
        decode_json::<(u64, i64, u8, i64, i8)>(JSON_INTS),
        (u64::MAX, i64::MIN, 0, i64::MAX, -1)
    );
    assert_eq!(
        decode_json::<Vec<i128>>(JSON_INTS),
        [
            i128::from(u64::MAX),
            i128::from(i64::MIN),
            0,
            i128::from(i64::MAX),
            -1
        ]
    );
    assert_eq!(
        decode_json::<Vec<f64>>(JSON_FLOATS),
        [0.1, -1.5e300, 3.0, 1e-7]
    );
    assert_eq!(
        decode_json::<Vec<Option<Value>>>(JSON_LIST_NONE),
        [Some(json!(1)), None, Some(json!("x"))]
    );
}

#[test]
fn json_marker_fixtures_decode_into_real_types() {
    assert_eq!(decode_json::<DateTime<Utc>>(JSON_DT_AWARE), aware());
    let offset = FixedOffset::east_opt(5 * 3600 + 30 * 60).unwrap();
    assert_eq!(
        decode_json::<DateTime<FixedOffset>>(JSON_DT_OFFSET),
        offset.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()
    );
    assert_eq!(
        decode_json::<NaiveDateTime>(JSON_DT_NAIVE),
        aware().naive_utc()
    );
    assert_eq!(decode_json::<NaiveDate>(JSON_DATE), day());
    assert_eq!(decode_json::<NaiveTime>(JSON_TIME), at());
    let decimal = decode_json::<Decimal>(JSON_DECIMAL);
    assert_eq!(decimal, amount());
    assert_eq!(decimal.to_string(), "12345.678900", "the scale survives");
    assert_eq!(
        decode_json::<uuid::Uuid>(JSON_UUID),
        UUID_TEXT.parse::<uuid::Uuid>().unwrap()
    );
    assert_eq!(decode_json::<String>(JSON_UUID), UUID_TEXT);
    assert_eq!(
        decode_json::<ByteBuf>(JSON_BYTES_UTF8).into_vec(),
        b"hello \xe2\x98\x83"
    );
    assert_eq!(decode_json::<String>(JSON_BYTES_UTF8), "hello \u{2603}");
    assert_eq!(
        decode_json::<ByteBuf>(JSON_BYTES_BIN).into_vec(),
        b"\xff\x00\x01\x80"
    );
    assert_eq!(decode_json::<Vec<u8>>(JSON_BYTES_BIN), b"\xff\x00\x01\x80");
    // Strings get the marker's text.
    assert_eq!(
        decode_json::<String>(JSON_DT_AWARE),
        "2024-01-02T03:04:05.123456+00:00"
    );
    assert_eq!(decode_json::<String>(JSON_DECIMAL), "12345.678900");
}

#[test]
fn json_record_fixture_decodes_with_and_without_annotations() {
    assert_eq!(decode_json::<Record>(JSON_RECORD), record());
    let plain: PlainRecord = decode_json(JSON_RECORD);
    assert_eq!(plain.when, aware());
    assert_eq!(plain.id, record().id);
    assert_eq!(plain.text.as_slice(), b"hello");
    assert_eq!(plain.blob.as_slice(), b"\xff\x00\x01\x80");
    assert_eq!((plain.big, plain.neg), (u64::MAX, i64::MIN));
    // The annotated modules also read the markers straight from serde_json.
    assert_eq!(
        serde_json::from_slice::<Record>(JSON_RECORD).unwrap(),
        record()
    );
}

#[test]
fn json_payload_keeps_markers() {
    let registry = Registry::default();
    let (ct, ce) = json_ct();
    let payload = registry
        .decode_payload(JSON_RECORD, ct, ce, &Accept::default())
        .unwrap();
    let Payload::Value(value) = payload else {
        panic!("{payload:?}")
    };
    assert_eq!(
        value["when"],
        json!({"__type__": "datetime", "__value__": "2024-01-02T03:04:05.123456+00:00"})
    );
    assert_eq!(
        value["id"],
        json!({"__type__": "uuid", "__value__": {"hex": "6f1c3b2a9d4e4f5a8b7c0d1e2f3a4b5c"}})
    );
    assert_eq!(value["big"], json!(u64::MAX));
}

#[test]
fn json_unknown_marker_is_a_decode_error() {
    let body = br#"{"job": {"__type__": "frozenset", "__value__": [1]}}"#;
    let (ct, ce) = json_ct();
    let err = Registry::default()
        .decode::<BTreeMap<String, Value>>(body, ct, ce, &Accept::default())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Decode { content_type, .. } if content_type == "application/json"),
        "{err:?}"
    );
    assert!(
        std::error::Error::source(&err)
            .unwrap()
            .to_string()
            .contains("\"frozenset\""),
        "{err}"
    );
}

// ---- JSON: Rust -> kombu -------------------------------------------------------------------

#[test]
fn json_encoding_matches_kombu_values() {
    let registry = Registry::default();
    // Python's text forms: the JSON equals kombu's, value for value.
    let text = TextRecord {
        when: "2024-01-02T03:04:05.123456+00:00".into(),
        day: "2024-02-29".into(),
        at: "13:14:15.500000".into(),
        amount: "12345.678900".into(),
        id: UUID_TEXT.into(),
        text: b"hello".to_vec(),
        blob: ByteBuf::from(b"\xff\x00\x01\x80".to_vec()),
        tags: vec![Some("a".into()), None],
        big: u64::MAX,
        neg: i64::MIN,
    };
    let encoded = registry.encode("json", &text).unwrap();
    assert_eq!(encoded.content_type, "application/json");
    assert_eq!(encoded.content_encoding, "utf-8");
    let ours: Value = serde_json::from_slice(&encoded.body).unwrap();
    let kombu: Value = serde_json::from_slice(JSON_RECORD).unwrap();
    assert_eq!(ours, kombu);
    // Same key order inside each marker as kombu: __type__ first.
    let body = std::str::from_utf8(&encoded.body).unwrap();
    assert!(
        body.contains(
            r#""id":{"__type__":"uuid","__value__":{"hex":"6f1c3b2a9d4e4f5a8b7c0d1e2f3a4b5c"}}"#
        ),
        "{body}"
    );

    // Real types: the markers are the same apart from chrono's own text forms, which Python's
    // fromisoformat reads back to the same values.
    let encoded = registry.encode("json", &record()).unwrap();
    let ours: Value = serde_json::from_slice(&encoded.body).unwrap();
    for field in ["day", "amount", "id", "text", "blob", "tags", "big", "neg"] {
        assert_eq!(ours[field], kombu[field], "{field}");
    }
    assert_eq!(
        ours["when"],
        json!({"__type__": "datetime", "__value__": "2024-01-02T03:04:05.123456Z"})
    );
    assert_eq!(
        ours["at"],
        json!({"__type__": "time", "__value__": "13:14:15.500"})
    );
    assert_eq!(decode_json::<Record>(&encoded.body), record());
}

#[test]
fn json_single_values_match_kombu_fixtures() {
    #[derive(Serialize)]
    struct W<'a>(#[serde(with = "markers::bytes")] &'a [u8]);
    let registry = Registry::default();
    let cases: [(Value, &[u8]); 4] = [
        (
            serde_json::to_value(W(b"hello \xe2\x98\x83")).unwrap(),
            JSON_BYTES_UTF8,
        ),
        (
            serde_json::to_value(W(b"\xff\x00\x01\x80")).unwrap(),
            JSON_BYTES_BIN,
        ),
        (json!([1, null, "x"]), JSON_LIST_NONE),
        (json!(UNICODE), JSON_UNICODE),
    ];
    for (value, fixture) in cases {
        let encoded = registry.encode("json", &value).unwrap();
        let ours: Value = serde_json::from_slice(&encoded.body).unwrap();
        assert_eq!(ours, serde_json::from_slice::<Value>(fixture).unwrap());
    }
    #[derive(Serialize)]
    struct D(#[serde(with = "markers::date")] NaiveDate);
    let encoded = registry.encode("json", &D(day())).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&encoded.body).unwrap(),
        serde_json::from_slice::<Value>(JSON_DATE).unwrap()
    );
    #[derive(Serialize)]
    struct U(#[serde(with = "markers::uuid")] uuid::Uuid);
    let encoded = registry
        .encode("json", &U(UUID_TEXT.parse().unwrap()))
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&encoded.body).unwrap(),
        serde_json::from_slice::<Value>(JSON_UUID).unwrap()
    );
    #[derive(Serialize)]
    struct N(#[serde(with = "markers::decimal")] Decimal);
    let encoded = registry.encode("json", &N(amount())).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&encoded.body).unwrap(),
        serde_json::from_slice::<Value>(JSON_DECIMAL).unwrap()
    );
    #[derive(Serialize)]
    struct Dt(#[serde(with = "markers::datetime")] NaiveDateTime);
    let encoded = registry.encode("json", &Dt(aware().naive_utc())).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&encoded.body).unwrap(),
        serde_json::from_slice::<Value>(JSON_DT_NAIVE).unwrap()
    );
}

// ---- msgpack -------------------------------------------------------------------------------

#[cfg(feature = "msgpack")]
mod msgpack {
    use super::*;

    fn decode<T: DeserializeOwned>(body: &[u8]) -> T {
        let registry = Registry::default();
        let accept = Accept::new(&registry, ["msgpack"]).unwrap();
        registry
            .decode(body, Some("application/x-msgpack"), Some("binary"), &accept)
            .unwrap()
    }

    fn payload(body: &[u8]) -> Payload {
        let registry = Registry::default();
        let accept = Accept::new(&registry, ["msgpack"]).unwrap();
        registry
            .decode_payload(body, Some("application/x-msgpack"), Some("binary"), &accept)
            .unwrap()
    }

    #[test]
    fn kombu_fixtures_decode() {
        assert_eq!(
            decode::<Value>(MSGPACK_NESTED),
            serde_json::from_slice::<Value>(JSON_NESTED).unwrap()
        );
        assert_eq!(decode::<String>(MSGPACK_UNICODE), UNICODE);
        assert_eq!(
            decode::<(u64, i64, u8, i64, i8)>(MSGPACK_INTS),
            (u64::MAX, i64::MIN, 0, i64::MAX, -1)
        );
        assert_eq!(
            decode::<Vec<f64>>(MSGPACK_FLOATS),
            [0.1, -1.5e300, 3.0, 1e-7]
        );
        assert_eq!(
            decode::<ByteBuf>(MSGPACK_BYTES_UTF8).into_vec(),
            b"hello \xe2\x98\x83"
        );
        assert_eq!(
            decode::<ByteBuf>(MSGPACK_BYTES_BIN).into_vec(),
            b"\xff\x00\x01\x80"
        );
        assert_eq!(
            decode::<Vec<Option<Value>>>(MSGPACK_LIST_NONE),
            [Some(json!(1)), None, Some(json!("x"))]
        );
    }

    #[test]
    fn payloads_map_bytes_to_kombu_markers() {
        assert_eq!(
            payload(MSGPACK_NESTED),
            Payload::Value(serde_json::from_slice(JSON_NESTED).unwrap())
        );
        assert_eq!(
            payload(MSGPACK_INTS),
            Payload::Value(serde_json::from_slice(JSON_INTS).unwrap())
        );
        assert_eq!(
            payload(MSGPACK_BYTES_UTF8),
            Payload::Value(json!({"__type__": "bytes", "__value__": "hello \u{2603}"}))
        );
        assert_eq!(
            payload(MSGPACK_BYTES_BIN),
            Payload::Value(serde_json::from_slice(JSON_BYTES_BIN).unwrap())
        );
        // Python dicts with int keys.
        assert_eq!(payload(b"\x81\x01\xa1x"), Payload::Value(json!({"1": "x"})));
        // msgpack.packb(msgpack.ExtType(5, b'ab'))
        assert_eq!(
            payload(b"\xd5\x05ab"),
            Payload::Value(json!([5, {"__type__": "bytes", "__value__": "ab"}]))
        );
    }

    #[test]
    fn encoding_is_byte_exact_with_kombu() {
        let registry = Registry::default();
        for (json_fixture, msgpack_fixture) in [
            (JSON_NESTED, MSGPACK_NESTED),
            (JSON_UNICODE, MSGPACK_UNICODE),
            (JSON_INTS, MSGPACK_INTS),
            (JSON_FLOATS, MSGPACK_FLOATS),
            (JSON_LIST_NONE, MSGPACK_LIST_NONE),
        ] {
            let value: Value = serde_json::from_slice(json_fixture).unwrap();
            let encoded = registry.encode("msgpack", &value).unwrap();
            assert_eq!(encoded.content_type, "application/x-msgpack");
            assert_eq!(encoded.content_encoding, "binary");
            assert_eq!(encoded.body, msgpack_fixture, "{value}");
        }
        // Byte strings go out as bin (use_bin_type=True), strings as str.
        let encoded = registry
            .encode("msgpack", serde_bytes::Bytes::new(b"\xff\x00\x01\x80"))
            .unwrap();
        assert_eq!(encoded.body, MSGPACK_BYTES_BIN);
        let encoded = registry
            .encode("msgpack", &ByteBuf::from(b"hello \xe2\x98\x83".to_vec()))
            .unwrap();
        assert_eq!(encoded.body, MSGPACK_BYTES_UTF8);
        // Structs are maps with field names, as Python dicts.
        #[derive(Serialize)]
        struct Nested {
            a: u8,
            b: Inner,
            e: Vec<u8>,
        }
        #[derive(Serialize)]
        struct Inner {
            c: (u8, f64, Option<u8>, bool),
            d: &'static str,
        }
        let nested = Nested {
            a: 1,
            b: Inner {
                c: (1, 2.5, None, true),
                d: "x",
            },
            e: vec![],
        };
        assert_eq!(
            registry.encode("msgpack", &nested).unwrap().body,
            MSGPACK_NESTED
        );
    }

    #[test]
    fn extra_data_is_refused() {
        let registry = Registry::default();
        let accept = Accept::new(&registry, ["application/x-msgpack"]).unwrap();
        let body = [MSGPACK_LIST_NONE, b"\x01"].concat();
        let err = registry
            .decode::<Value>(&body, Some("application/x-msgpack"), None, &accept)
            .unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
        let err = registry
            .decode_payload(&body, Some("application/x-msgpack"), None, &accept)
            .unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    }
}

// ---- YAML ----------------------------------------------------------------------------------

#[cfg(feature = "yaml")]
mod yaml {
    use super::*;

    fn registry_and_accept() -> (Registry, Accept) {
        let registry = Registry::default();
        let accept = Accept::new(&registry, ["yaml"]).unwrap();
        (registry, accept)
    }

    fn decode<T: DeserializeOwned>(body: &[u8]) -> T {
        let (registry, accept) = registry_and_accept();
        registry
            .decode(body, Some("application/x-yaml"), Some("utf-8"), &accept)
            .unwrap()
    }

    fn payload(body: &[u8]) -> Payload {
        let (registry, accept) = registry_and_accept();
        registry
            .decode_payload(body, Some("application/x-yaml"), Some("utf-8"), &accept)
            .unwrap()
    }

    #[test]
    fn kombu_fixtures_decode() {
        assert_eq!(
            decode::<Value>(YAML_NESTED),
            serde_json::from_slice::<Value>(JSON_NESTED).unwrap()
        );
        assert_eq!(decode::<String>(YAML_UNICODE), UNICODE);
        assert_eq!(
            decode::<(u64, i64, u8, i64, i8)>(YAML_INTS),
            (u64::MAX, i64::MIN, 0, i64::MAX, -1)
        );
        assert_eq!(decode::<Vec<f64>>(YAML_FLOATS), [0.1, -1.5e300, 3.0, 1e-7]);
        assert_eq!(
            decode::<Vec<Option<Value>>>(YAML_LIST_NONE),
            [Some(json!(1)), None, Some(json!("x"))]
        );
        // PyYAML writes dates and datetimes as YAML timestamps; they arrive as their text.
        assert_eq!(decode::<NaiveDate>(YAML_DATE), day());
        assert_eq!(
            decode::<String>(YAML_DT_NAIVE),
            "2024-01-02 03:04:05.123456"
        );
        assert_eq!(
            payload(YAML_NESTED),
            Payload::Value(serde_json::from_slice(JSON_NESTED).unwrap())
        );
        assert_eq!(
            payload(YAML_INTS),
            Payload::Value(serde_json::from_slice(JSON_INTS).unwrap())
        );
    }

    #[test]
    fn binary_tag_arrives_as_its_text() {
        // PyYAML's safe_dump writes bytes as `!!binary`; serde_norway does not report the tag,
        // so the base64 text arrives as a string.
        assert_eq!(payload(YAML_BYTES_BIN), Payload::Value(json!("/wABgA==\n")));
        let (registry, accept) = registry_and_accept();
        let err =
            registry.decode::<ByteBuf>(YAML_BYTES_BIN, Some("application/x-yaml"), None, &accept);
        assert!(matches!(err, Err(Error::Decode { .. })));
    }

    #[test]
    fn encoding_round_trips() {
        let (registry, accept) = registry_and_accept();
        let value: Value = serde_json::from_slice(JSON_NESTED).unwrap();
        let encoded = registry.encode("yaml", &value).unwrap();
        assert_eq!(encoded.content_type, "application/x-yaml");
        assert_eq!(encoded.content_encoding, "utf-8");
        let back: Value = registry
            .decode(
                &encoded.body,
                Some("application/x-yaml"),
                Some("utf-8"),
                &accept,
            )
            .unwrap();
        assert_eq!(back, value);
        let encoded = registry.encode("yaml", UNICODE).unwrap();
        let back: String = registry
            .decode(
                &encoded.body,
                Some("application/x-yaml"),
                Some("utf-8"),
                &accept,
            )
            .unwrap();
        assert_eq!(back, UNICODE);
    }
}

// ---- raw and text --------------------------------------------------------------------------

#[test]
fn raw_and_text_encode_as_kombu() {
    let registry = Registry::default();
    // kombu: dumps(b'\xff', serializer='raw') == ('application/data', 'binary', b'\xff')
    let e = registry
        .encode("raw", serde_bytes::Bytes::new(b"\xff"))
        .unwrap();
    assert_eq!(
        (&e.body[..], &*e.content_type, &*e.content_encoding),
        (&b"\xff"[..], "application/data", "binary")
    );
    let e = registry.encode("raw", &vec![1_u8, 2]).unwrap();
    assert_eq!(
        (&e.body[..], &*e.content_encoding),
        (&[1_u8, 2][..], "binary")
    );
    // kombu: dumps('x\u00e9', serializer='raw') == ('application/data', 'utf-8', b'x\xc3\xa9')
    let e = registry.encode("raw", "x\u{e9}").unwrap();
    assert_eq!(
        (&e.body[..], &*e.content_type, &*e.content_encoding),
        (&b"x\xc3\xa9"[..], "application/data", "utf-8")
    );
    // kombu: dumps('x') == ('text/plain', 'utf-8', b'x')
    let e = registry.encode("text", "x").unwrap();
    assert_eq!(
        (&e.body[..], &*e.content_type, &*e.content_encoding),
        (&b"x"[..], "text/plain", "utf-8")
    );
    assert!(
        matches!(registry.encode("raw", &1_u8), Err(Error::Encode { serializer, .. }) if serializer == "raw")
    );
    assert!(matches!(
        registry.encode("text", &[0xff_u8]),
        Err(Error::Encode { .. })
    ));
    assert!(matches!(
        registry.encode("text", serde_bytes::Bytes::new(b"\xff")),
        Err(Error::Encode { .. })
    ));
    assert!(matches!(
        registry.encode("text", &None::<String>),
        Err(Error::Encode { .. })
    ));
}

#[test]
fn raw_and_text_decode_by_charset() {
    let registry = Registry::default();
    let accept = Accept::default();
    let p = |body: &[u8], ct: Option<&str>, ce: Option<&str>| {
        registry.decode_payload(body, ct, ce, &accept)
    };
    assert_eq!(
        p(b"\xff", Some("application/data"), Some("binary")).unwrap(),
        Payload::Bytes(Bytes::from_static(b"\xff"))
    );
    assert_eq!(
        p(b"x\xc3\xa9", Some("application/data"), Some("utf-8")).unwrap(),
        Payload::Text("x\u{e9}".into())
    );
    assert_eq!(
        p(b"x", Some("text/plain"), Some("utf-8")).unwrap(),
        Payload::Text("x".into())
    );
    assert_eq!(
        p(b"x", Some("application/text"), Some("UTF-8")).unwrap(),
        Payload::Text("x".into())
    );
    assert_eq!(
        p(b"\xe9", Some("text/plain"), Some("latin-1")).unwrap(),
        Payload::Text("\u{e9}".into())
    );
    // No content type: application/data; no encoding: UTF-8 if it is.
    assert_eq!(p(b"x", None, None).unwrap(), Payload::Text("x".into()));
    assert_eq!(
        p(b"\xff", None, None).unwrap(),
        Payload::Bytes(Bytes::from_static(b"\xff"))
    );
    assert!(
        matches!(p(b"\xff", None, Some("utf-8")), Err(Error::Decode { content_type, .. }) if content_type == "application/data")
    );
    assert!(matches!(
        p(b"x", Some("text/plain"), Some("utf-16")),
        Err(Error::Decode { .. })
    ));
    // Typed.
    let t = |body: &[u8], ce: Option<&str>| {
        registry.decode::<String>(body, Some("text/plain"), ce, &accept)
    };
    assert_eq!(t(b"hi", Some("utf-8")).unwrap(), "hi");
    assert_eq!(
        registry
            .decode::<Vec<u8>>(b"\xff\x00", None, Some("binary"), &accept)
            .unwrap(),
        b"\xff\x00"
    );
    assert_eq!(
        registry
            .decode::<ByteBuf>(b"\xff", None, Some("binary"), &accept)
            .unwrap()
            .into_vec(),
        b"\xff"
    );
    assert!(matches!(
        registry.decode::<u32>(b"1", Some("text/plain"), None, &accept),
        Err(Error::Decode { .. })
    ));
}

#[test]
fn empty_bodies_are_returned_as_they_are() {
    let registry = Registry::default();
    let accept = Accept::any();
    for ct in [
        None,
        Some("application/json"),
        Some("text/plain"),
        Some("application/x-unknown"),
    ] {
        assert_eq!(
            registry.decode_payload(b"", ct, None, &accept).unwrap(),
            Payload::Bytes(Bytes::new()),
            "{ct:?}"
        );
        assert_eq!(
            registry.decode::<String>(b"", ct, None, &accept).unwrap(),
            ""
        );
        assert_eq!(
            registry.decode::<Vec<u8>>(b"", ct, None, &accept).unwrap(),
            b""
        );
        assert!(matches!(
            registry.decode::<Value>(b"", ct, None, &accept),
            Err(Error::Decode { .. })
        ));
    }
    // Still subject to the accept list.
    let err = registry
        .decode_payload(b"", Some("application/x-yaml"), None, &Accept::default())
        .unwrap_err();
    assert!(matches!(err, Error::ContentDisallowed { .. }));
}

// ---- accept lists --------------------------------------------------------------------------

#[test]
fn accept_lists_follow_kombu() {
    let registry = Registry::default();
    let json_only = Accept::default();
    assert_eq!(Accept::new(&registry, ["json"]).unwrap(), json_only);
    assert_eq!(
        Accept::new(&registry, ["application/json", "json"]).unwrap(),
        json_only
    );
    assert_eq!(
        json_only.content_types(),
        Some(&["application/json".to_owned()][..])
    );
    for trusted in [
        "application/data",
        "application/text",
        "text/plain",
        "application/json",
    ] {
        assert!(json_only.allows(trusted), "{trusted}");
    }
    assert!(!json_only.allows("application/x-yaml"));
    assert!(!json_only.allows("application/json; charset=utf-8"));
    let err = registry
        .decode_payload(b"a: 1", Some("application/x-yaml"), None, &json_only)
        .unwrap_err();
    assert!(
        matches!(&err, Error::ContentDisallowed { content_type } if content_type == "application/x-yaml")
    );

    // Unknown names are refused; MIME types are taken as they are.
    assert!(
        matches!(Accept::new(&registry, ["json", "bson"]), Err(Error::SerializerNotInstalled(n)) if n == "bson")
    );
    let custom = Accept::new(&registry, ["application/x-bson"]).unwrap();
    assert!(custom.allows("application/x-bson") && !custom.allows("application/json"));

    // pickle: known by name, never decoded.
    let with_pickle = Accept::new(&registry, ["json", "pickle"]).unwrap();
    assert!(!with_pickle.allows("application/x-python-serialize"));
    assert!(!Accept::any().allows("application/x-python-serialize"));
    let err = registry
        .decode_payload(
            b"\x80\x04K\x01.",
            Some("application/x-python-serialize"),
            Some("binary"),
            &with_pickle,
        )
        .unwrap_err();
    assert!(matches!(err, Error::ContentDisallowed { .. }));
}

#[test]
fn accept_any_hands_over_unknown_types() {
    let registry = Registry::default();
    let any = Accept::any();
    assert_eq!(any.content_types(), None);
    assert_eq!(
        registry
            .decode_payload(b"<x/>", Some("application/xml"), Some("utf-8"), &any)
            .unwrap(),
        Payload::Text("<x/>".into())
    );
    assert_eq!(
        registry
            .decode_payload(
                b"\x00\x01",
                Some("application/x-protobuf"),
                Some("binary"),
                &any
            )
            .unwrap(),
        Payload::Bytes(Bytes::from_static(b"\x00\x01"))
    );
    assert_eq!(
        registry
            .decode::<String>(b"<x/>", Some("application/xml"), None, &any)
            .unwrap(),
        "<x/>"
    );
}

// ---- the registry --------------------------------------------------------------------------

#[test]
fn builtins_and_lookups() {
    let registry = Registry::new();
    let mut expected = vec![("json", "application/json", "utf-8")];
    if cfg!(feature = "msgpack") {
        expected.push(("msgpack", "application/x-msgpack", "binary"));
    }
    if cfg!(feature = "yaml") {
        expected.push(("yaml", "application/x-yaml", "utf-8"));
    }
    expected.extend([
        ("raw", "application/data", "binary"),
        ("text", "text/plain", "utf-8"),
    ]);
    assert_eq!(registry.serializers().collect::<Vec<_>>(), expected);
    assert_eq!(registry.content_type_of("json"), Some("application/json"));
    assert_eq!(
        registry.content_type_of("application/json"),
        Some("application/json")
    );
    assert_eq!(registry.content_type_of("raw"), Some("application/data"));
    assert_eq!(registry.content_type_of("pickle"), None);
    assert_eq!(
        registry.content_type_of("application/x-python-serialize"),
        None
    );
    assert!(
        matches!(registry.encode("pickle", &1), Err(Error::SerializerNotInstalled(n)) if n == "pickle")
    );
    // Encoding by content type works too.
    assert_eq!(registry.encode("application/json", &1).unwrap().body, "1");
    assert!(format!("{registry:?}").contains("\"json\": \"application/json\""));
}

/// JSON under another name and content type, through the erased trait.
struct Other {
    name: &'static str,
    content_type: &'static str,
}

impl Serializer for Other {
    fn name(&self) -> &str {
        self.name
    }
    fn content_type(&self) -> &str {
        self.content_type
    }
    fn content_encoding(&self) -> &str {
        "utf-8"
    }
    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec_pretty(value)?)
    }
    fn decode(
        &self,
        body: &[u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<(), BoxError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        visit(&mut <dyn erased_serde::Deserializer<'_>>::erase(&mut de))?;
        de.end()?;
        Ok(())
    }
}

#[test]
fn custom_serializers() {
    let base = Registry::default();
    let mut registry = base.clone();
    registry.register(Other {
        name: "other",
        content_type: "application/x-other",
    });
    assert_eq!(
        base.content_type_of("other"),
        None,
        "a clone is changed alone"
    );
    assert_eq!(
        registry.content_type_of("other"),
        Some("application/x-other")
    );

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Job {
        id: u32,
        tags: Vec<String>,
    }
    let job = Job {
        id: 1,
        tags: vec!["a".into()],
    };
    let encoded = registry.encode("other", &job).unwrap();
    assert_eq!(
        (&*encoded.content_type, &*encoded.content_encoding),
        ("application/x-other", "utf-8")
    );
    assert!(encoded.body.contains(&b'\n'), "pretty");
    let accept = Accept::new(&registry, ["other"]).unwrap();
    let back: Job = registry
        .decode(&encoded.body, Some("application/x-other"), None, &accept)
        .unwrap();
    assert_eq!(back, job);
    let payload = registry
        .decode_payload(&encoded.body, Some("application/x-other"), None, &accept)
        .unwrap();
    assert_eq!(payload, Payload::Value(json!({"id": 1, "tags": ["a"]})));
    let err = registry
        .decode::<Job>(b"{", Some("application/x-other"), None, &accept)
        .unwrap_err();
    assert!(
        matches!(&err, Error::Decode { content_type, .. } if content_type == "application/x-other"),
        "{err:?}"
    );
    // Unsized values go through too.
    assert_eq!(
        serde_json::from_slice::<String>(&registry.encode("other", "s").unwrap().body).unwrap(),
        "s"
    );

    // Replacing a built-in by name: json is now pretty, and decodes through the trait (so
    // without kombu's markers).
    registry.register(Other {
        name: "json",
        content_type: "application/json",
    });
    let encoded = registry.encode("json", &job).unwrap();
    assert!(encoded.body.contains(&b'\n'));
    assert_eq!(registry.serializers().filter(|s| s.0 == "json").count(), 1);
    assert!(registry
        .decode::<String>(
            JSON_DATE,
            Some("application/json"),
            None,
            &Accept::default()
        )
        .is_err());
}

#[test]
fn encode_into_shares_one_buffer_and_matches_encode() {
    let registry = Registry::default();
    let mut buf = bytes::BytesMut::with_capacity(1024);
    let a = registry
        .encode_into("json", &json!({"a": 1}), &mut buf)
        .unwrap();
    let b = registry.encode_into("json", &[1, 2, 3], &mut buf).unwrap();
    assert_eq!(&a.body[..], br#"{"a":1}"#);
    assert_eq!(&b.body[..], b"[1,2,3]");
    assert_eq!(
        a.body,
        registry.encode("json", &json!({"a": 1})).unwrap().body
    );
    assert_eq!(a.content_type, "application/json");
    // Both bodies live in the buffer's one allocation.
    assert_eq!(
        b.body.as_ptr() as usize,
        a.body.as_ptr() as usize + a.body.len()
    );
    // Other serializers encode as `encode` does.
    let m = registry.encode_into("msgpack", &1u8, &mut buf).unwrap();
    assert_eq!(m.body, registry.encode("msgpack", &1u8).unwrap().body);
    // A value that cannot be encoded leaves the buffer empty.
    let mut map = BTreeMap::new();
    map.insert(vec![1u8], 1);
    assert!(registry.encode_into("json", &map, &mut buf).is_err());
    assert!(buf.is_empty());
}
