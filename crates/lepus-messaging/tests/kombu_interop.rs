//! Wire compatibility with kombu, both ways, against RabbitMQ: kombu (Python, in the virtual
//! environment `scripts/python-env.sh` makes) publishes every case of
//! `tests/interop/kombu_peer.py` with every serializer and compression method and lepus
//! decodes them into the matching Rust types; lepus publishes the same values and kombu's
//! `Consumer` decodes them into the same Python values, types included (a datetime stays a
//! datetime, a Decimal a Decimal, bytes stay bytes). A disallowed content type is refused on
//! both sides.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use lepus::FieldValue;
use lepus_messaging::serializer::markers;
use lepus_messaging::{Accept, DecodeErrorPolicy, Error, Message, Producer, Queue};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_bytes::ByteBuf;
use serde_json::{json, Value};
use support::{connect, unique};
use uuid::Uuid;

const SERIALIZERS: [&str; 5] = ["json", "msgpack", "yaml", "raw", "text"];
const COMPRESSIONS: [&str; 5] = ["zlib", "bzip2", "lzma", "brotli", "zstd"];

/// The cases each serializer carries (as `kombu_peer.py`'s table says, and why).
fn cases(serializer: &str) -> Vec<&'static str> {
    const PLAIN: [&str; 7] = [
        "nested",
        "unicode",
        "big_uint",
        "min_int",
        "float",
        "big_float",
        "list",
    ];
    const TYPED: [&str; 6] = [
        "datetime_utc",
        "datetime_naive",
        "date",
        "time",
        "decimal",
        "uuid",
    ];
    const BYTES: [&str; 2] = ["bytes_utf8", "bytes_binary"];
    match serializer {
        "json" => PLAIN.iter().chain(&TYPED).chain(&BYTES).copied().collect(),
        "msgpack" => PLAIN.iter().chain(&BYTES).copied().collect(),
        "yaml" => PLAIN.to_vec(),
        "raw" => vec!["raw"],
        "text" => vec!["text"],
        other => panic!("no cases for {other}"),
    }
}

// ---- the values, typed in Rust ----

fn datetime_utc() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap() + chrono::Duration::microseconds(123_456)
}

fn datetime_naive() -> NaiveDateTime {
    datetime_utc().naive_utc()
}

fn date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()
}

fn time() -> NaiveTime {
    NaiveTime::from_hms_micro_opt(13, 14, 15, 500_000).unwrap()
}

fn decimal() -> Decimal {
    "12345.678901234567890".parse().unwrap()
}

fn uuid() -> Uuid {
    "5f0c2f6e-8a55-4f6a-9d8e-1b2c3d4e5f60".parse().unwrap()
}

fn nested() -> Value {
    json!({"a": [1, 2, {"b": null, "c": true}], "d": {"e": "f", "g": -1.5}})
}

fn list() -> Value {
    json!([1, "two", 3.5, null, false])
}

const UNICODE: &str = "héllo wörld ✓ 日本 🐇";
const TEXT: &str = "plain text ✓";

fn raw() -> Vec<u8> {
    (0..=255u8).collect()
}

/// Wrappers that send kombu's JSON type markers, so that Python gets the typed value.
#[derive(Serialize)]
#[serde(transparent)]
struct MarkedDateTime<T: Serialize>(#[serde(with = "markers::datetime")] T);
#[derive(Serialize)]
#[serde(transparent)]
struct MarkedDate(#[serde(with = "markers::date")] NaiveDate);
#[derive(Serialize)]
#[serde(transparent)]
struct MarkedTime(#[serde(with = "markers::time")] NaiveTime);
#[derive(Serialize)]
#[serde(transparent)]
struct MarkedDecimal(#[serde(with = "markers::decimal")] Decimal);
#[derive(Serialize)]
#[serde(transparent)]
struct MarkedUuid(#[serde(with = "markers::uuid")] Uuid);
#[derive(Serialize)]
#[serde(transparent)]
struct MarkedBytes(#[serde(with = "markers::bytes")] Vec<u8>);

/// Publishes one case as lepus would send that value.
async fn publish_case(producer: &Producer, queue: &Queue, serializer: &str, case: &str) {
    fn p<'a>(
        x: lepus_messaging::Publish<'a>,
        q: &Queue,
        case: &str,
        s: &str,
    ) -> lepus_messaging::Publish<'a> {
        x.to_queue(q).header("case", case).serializer(s)
    }
    let json = serializer == "json";
    let sent = match case {
        "nested" => p(producer.publish(&nested()), queue, case, serializer).await,
        "unicode" => p(producer.publish(UNICODE), queue, case, serializer).await,
        "big_uint" => p(producer.publish(&u64::MAX), queue, case, serializer).await,
        "min_int" => p(producer.publish(&i64::MIN), queue, case, serializer).await,
        "float" => {
            p(
                producer.publish(&std::f64::consts::PI),
                queue,
                case,
                serializer,
            )
            .await
        }
        "big_float" => p(producer.publish(&1e300f64), queue, case, serializer).await,
        "list" => p(producer.publish(&list()), queue, case, serializer).await,
        "datetime_utc" => {
            p(
                producer.publish(&MarkedDateTime(datetime_utc())),
                queue,
                case,
                serializer,
            )
            .await
        }
        "datetime_naive" => {
            p(
                producer.publish(&MarkedDateTime(datetime_naive())),
                queue,
                case,
                serializer,
            )
            .await
        }
        "date" => {
            p(
                producer.publish(&MarkedDate(date())),
                queue,
                case,
                serializer,
            )
            .await
        }
        "time" => {
            p(
                producer.publish(&MarkedTime(time())),
                queue,
                case,
                serializer,
            )
            .await
        }
        "decimal" => {
            p(
                producer.publish(&MarkedDecimal(decimal())),
                queue,
                case,
                serializer,
            )
            .await
        }
        "uuid" => {
            p(
                producer.publish(&MarkedUuid(uuid())),
                queue,
                case,
                serializer,
            )
            .await
        }
        "bytes_utf8" if json => {
            p(
                producer.publish(&MarkedBytes(b"plain bytes".to_vec())),
                queue,
                case,
                serializer,
            )
            .await
        }
        "bytes_binary" if json => {
            p(
                producer.publish(&MarkedBytes(b"\x00\xff\x10binary".to_vec())),
                queue,
                case,
                serializer,
            )
            .await
        }
        "bytes_utf8" => {
            p(
                producer.publish(&ByteBuf::from(&b"plain bytes"[..])),
                queue,
                case,
                serializer,
            )
            .await
        }
        "bytes_binary" => {
            p(
                producer.publish(&ByteBuf::from(&b"\x00\xff\x10binary"[..])),
                queue,
                case,
                serializer,
            )
            .await
        }
        "raw" => {
            producer
                .publish_bytes(raw())
                .to_queue(queue)
                .header("case", case)
                .await
        }
        "text" => {
            producer
                .publish_text(TEXT)
                .to_queue(queue)
                .header("case", case)
                .await
        }
        other => panic!("unknown case {other}"),
    };
    sent.unwrap_or_else(|e| panic!("publishing {case} with {serializer}: {e}"));
}

/// Decodes one kombu message into the case's Rust type and compares.
fn check(case: &str, m: &Message) -> Result<(), String> {
    fn eq<T: PartialEq + std::fmt::Debug>(got: Result<T, Error>, want: T) -> Result<(), String> {
        match got {
            Ok(got) if got == want => Ok(()),
            Ok(got) => Err(format!("got {got:?}, want {want:?}")),
            Err(e) => Err(format!("decode failed: {e}")),
        }
    }
    match case {
        "nested" => eq(m.decode::<Value>(), nested()),
        "unicode" => eq(m.decode::<String>(), UNICODE.to_owned()),
        "big_uint" => eq(m.decode::<u64>(), u64::MAX),
        "min_int" => eq(m.decode::<i64>(), i64::MIN),
        "float" => eq(m.decode::<f64>(), std::f64::consts::PI),
        "big_float" => eq(m.decode::<f64>(), 1e300),
        "list" => eq(m.decode::<Value>(), list()),
        "datetime_utc" => eq(m.decode::<DateTime<Utc>>(), datetime_utc()),
        "datetime_naive" => eq(m.decode::<NaiveDateTime>(), datetime_naive()),
        "date" => eq(m.decode::<NaiveDate>(), date()),
        "time" => eq(m.decode::<NaiveTime>(), time()),
        "decimal" => eq(m.decode::<Decimal>(), decimal()),
        "uuid" => eq(m.decode::<Uuid>(), uuid()),
        "bytes_utf8" => eq(
            m.decode::<ByteBuf>().map(ByteBuf::into_vec),
            b"plain bytes".to_vec(),
        ),
        "bytes_binary" => eq(
            m.decode::<ByteBuf>().map(ByteBuf::into_vec),
            b"\x00\xff\x10binary".to_vec(),
        ),
        "raw" => eq(m.decode::<ByteBuf>().map(ByteBuf::into_vec), raw()),
        "text" => eq(m.decode::<String>(), TEXT.to_owned()),
        other => Err(format!("unknown case {other}")),
    }
}

fn case_of(m: &Message) -> String {
    m.header("case")
        .and_then(FieldValue::as_str)
        .unwrap_or("<none>")
        .to_owned()
}

/// A queue for one exchange of messages.
async fn scratch(conn: &lepus_messaging::Connection, what: &str) -> Queue {
    let q = Queue::new(unique(what)).expires(Duration::from_secs(120));
    conn.maybe_declare(q.clone()).await.unwrap();
    q
}

/// kombu publishes `serializer` (+ `compression`) cases; lepus consumes and checks each.
async fn kombu_to_lepus(serializer: &str, compression: Option<&str>) -> Vec<String> {
    let conn = connect().await;
    let q = scratch(&conn, &format!("k2l.{serializer}")).await;
    let url = support::url();
    let mut args = vec![
        "publish",
        "--url",
        &url,
        "--queue",
        q.name(),
        "--serializer",
        serializer,
    ];
    if let Some(c) = compression {
        args.extend(["--compression", c]);
    }
    let published = support::kombu::peer(&args).await;
    let want = cases(serializer);
    assert_eq!(published.len(), want.len(), "{published:?}");

    let accept = Accept::new(conn.registry(), [serializer]).unwrap();
    let mut consumer = conn
        .consumer([q.clone().no_declare(true)])
        .accept(accept)
        .on_decode_error(DecodeErrorPolicy::Callback(Arc::new(|m, e| {
            panic!("{} refused: {e}", case_of(m))
        })))
        .consume()
        .await
        .unwrap();
    let mut failures = Vec::new();
    for expected in want {
        let m = support::next(&mut consumer).await;
        let case = case_of(&m);
        assert_eq!(case, expected);
        if let Some(c) = compression {
            assert!(
                m.compression().is_some(),
                "{case}: no compression header with {c}"
            );
        }
        if let Err(e) = check(&case, &m) {
            failures.push(format!(
                "{serializer}/{}/{case}: {e}",
                compression.unwrap_or("-")
            ));
        }
        m.ack().unwrap();
    }
    failures
}

/// lepus publishes `serializer` (+ `compression`) cases; kombu consumes and checks each.
async fn lepus_to_kombu(serializer: &str, compression: Option<&str>) -> Vec<String> {
    let conn = connect().await;
    let q = scratch(&conn, &format!("l2k.{serializer}")).await;
    let mut producer = conn.producer();
    if let Some(c) = compression {
        producer = producer.compression(c);
    }
    let producer = producer.build().unwrap();
    let want = cases(serializer);
    for case in &want {
        publish_case(&producer, &q, serializer, case).await;
    }
    let url = support::url();
    let count = want.len().to_string();
    let accept = match serializer {
        "text" => "text/plain",
        "raw" => "application/data",
        s => s,
    };
    let lines = support::kombu::peer(&[
        "consume",
        "--url",
        &url,
        "--queue",
        q.name(),
        "--count",
        &count,
        "--accept",
        accept,
    ])
    .await;
    assert_eq!(lines.len(), want.len(), "{lines:?}");
    lines
        .iter()
        .zip(want)
        .filter(|(line, case)| line["case"] != **case || line["ok"] != true)
        .map(|(line, _)| format!("{serializer}/{}: {line}", compression.unwrap_or("-")))
        .collect()
}

#[tokio::test]
async fn kombu_publishes_lepus_decodes_every_serializer() {
    let mut failures = Vec::new();
    for s in SERIALIZERS {
        failures.extend(kombu_to_lepus(s, None).await);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn kombu_publishes_lepus_decodes_every_compression() {
    let mut failures = Vec::new();
    for c in COMPRESSIONS {
        failures.extend(kombu_to_lepus("json", Some(c)).await);
    }
    failures.extend(kombu_to_lepus("msgpack", Some("zstd")).await);
    failures.extend(kombu_to_lepus("raw", Some("bzip2")).await);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn lepus_publishes_kombu_decodes_every_serializer() {
    let mut failures = Vec::new();
    for s in SERIALIZERS {
        failures.extend(lepus_to_kombu(s, None).await);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn lepus_publishes_kombu_decodes_every_compression() {
    let mut failures = Vec::new();
    for c in COMPRESSIONS {
        failures.extend(lepus_to_kombu("json", Some(c)).await);
    }
    failures.extend(lepus_to_kombu("msgpack", Some("lzma")).await);
    failures.extend(lepus_to_kombu("text", Some("brotli")).await);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// msgpack and pickle are refused by default on both sides, with the content type named.
#[tokio::test]
async fn a_disallowed_content_type_is_refused_on_both_sides() {
    let conn = connect().await;
    let url = support::url();

    // kombu publishes pickle and msgpack; lepus's default accept list refuses both.
    let q = scratch(&conn, "refuse.k2l").await;
    for s in ["pickle", "msgpack"] {
        support::kombu::peer(&[
            "publish",
            "--url",
            &url,
            "--queue",
            q.name(),
            "--serializer",
            s,
            "--case",
            "unicode",
        ])
        .await;
    }
    let refused = Arc::new(Mutex::new(Vec::new()));
    let r = Arc::clone(&refused);
    let mut consumer = conn
        .consumer([q.clone().no_declare(true)])
        .on_decode_error(DecodeErrorPolicy::Callback(Arc::new(move |m, e| {
            match e {
                Error::ContentDisallowed { content_type } => {
                    r.lock().unwrap().push(content_type.clone())
                }
                other => panic!("unexpected error {other}"),
            }
            m.ack().unwrap();
        })))
        .consume()
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while refused.lock().unwrap().len() < 2 {
            tokio::select! {
                m = consumer.recv() => panic!("a refused message was handed over: {m:?}"),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        *refused.lock().unwrap(),
        ["application/x-python-serialize", "application/x-msgpack"]
    );
    drop(consumer);

    // lepus publishes msgpack; kombu's default refuses it ("disabled"), and so does an accept
    // list of json only ("untrusted").
    let producer = conn.producer().serializer("msgpack").build().unwrap();
    let q = scratch(&conn, "refuse.l2k.default").await;
    publish_case(&producer, &q, "msgpack", "unicode").await;
    let lines = support::kombu::peer(&[
        "consume",
        "--url",
        &url,
        "--queue",
        q.name(),
        "--count",
        "1",
    ])
    .await;
    assert_eq!(lines[0]["error"], "ContentDisallowed", "{lines:?}");
    assert!(lines[0]["message"]
        .as_str()
        .unwrap()
        .contains("application/x-msgpack"));
    let q = scratch(&conn, "refuse.l2k.json").await;
    publish_case(&producer, &q, "msgpack", "unicode").await;
    let lines = support::kombu::peer(&[
        "consume",
        "--url",
        &url,
        "--queue",
        q.name(),
        "--count",
        "1",
        "--accept",
        "json",
    ])
    .await;
    assert_eq!(lines[0]["error"], "ContentDisallowed", "{lines:?}");
}
