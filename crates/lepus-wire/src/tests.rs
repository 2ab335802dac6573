//! Crate-wide tests: property round trips, conformance with the JSON spec, golden bytes.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::Value;

use crate::frame::{self, encode_any_method};
use crate::method::{self, connection, strategies, METHODS};
use crate::testing::{field_table, properties};
use crate::{ContentHeader, DecodeError, FieldTable, Frame, LongStr, Method, ShortStr};

const MAX: u32 = 1 << 20;

fn encode_frame(f: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    f.encode(&mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_method_round_trips(method in strategies::method(), channel in any::<u16>()) {
        let mut out = BytesMut::new();
        encode_any_method(&mut out, channel, &method, MAX).unwrap();
        let decoded = Frame::decode(&mut out, MAX).unwrap();
        prop_assert_eq!(decoded, Some(Frame::Method { channel, method }));
        prop_assert!(out.is_empty());
    }

    #[test]
    fn field_tables_round_trip(table in field_table()) {
        let mut out = BytesMut::new();
        table.encode_to(&mut out);
        let mut bytes = out.freeze();
        let wire = bytes.clone();
        let decoded = FieldTable::decode_from(&mut bytes).unwrap();
        prop_assert!(bytes.is_empty());
        // Re-encoding gives back the same bytes: order and types are kept.
        let mut again = BytesMut::new();
        decoded.encode_to(&mut again);
        prop_assert_eq!(&again[..], &wire[..]);
        prop_assert_eq!(decoded, table);
    }

    #[test]
    fn content_headers_round_trip(properties in properties(), body_size in any::<u64>()) {
        let header = ContentHeader { body_size, properties };
        let f = Frame::Header { channel: 7, header };
        let mut out = encode_frame(&f);
        prop_assert_eq!(Frame::decode(&mut out, MAX).unwrap(), Some(f));
    }

    /// A stream of frames decodes the same however the bytes are split across reads.
    #[test]
    fn stream_decoding_is_independent_of_read_sizes(
        methods in vec(strategies::method(), 1..8),
        cuts in vec(1usize..64, 1..64),
    ) {
        let frames: Vec<Frame> = methods
            .into_iter()
            .enumerate()
            .flat_map(|(i, method)| {
                [
                    Frame::Method { channel: i as u16, method },
                    Frame::Body { channel: 1, body: Bytes::from(vec![i as u8; i * 7]) },
                    Frame::Heartbeat,
                ]
            })
            .collect();
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        let wire = wire.freeze();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut at = 0;
        for cut in cuts.iter().cycle() {
            if at >= wire.len() {
                break;
            }
            let end = (at + cut).min(wire.len());
            buf.extend_from_slice(&wire[at..end]);
            at = end;
            while let Some(f) = Frame::decode(&mut buf, MAX).unwrap() {
                decoded.push(f);
            }
        }
        prop_assert_eq!(decoded, frames);
    }

    /// Arbitrary bytes never panic the decoder; what decodes re-encodes to a frame that decodes
    /// to the same value.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(f)) = Frame::decode(&mut buf, 4096) {
            let mut out = encode_frame(&f);
            prop_assert_eq!(Frame::decode(&mut out, MAX).unwrap(), Some(f));
        }
    }

    /// Method payloads with a valid header but random arguments never panic.
    #[test]
    fn random_arguments_never_panic(index in 0..METHODS.len(), args in vec(any::<u8>(), 0..300)) {
        let info = &METHODS[index];
        let mut payload = BytesMut::new();
        payload.put_u16(info.class_id);
        payload.put_u16(info.method_id);
        payload.put_slice(&args);
        let _ = Method::decode(&mut payload.freeze());
    }
}

/// Writes one argument of a spec type with a value that depends on its position, so that a
/// swapped or mistyped argument changes the bytes.
fn spec_value(ty: &str, n: u8, out: &mut BytesMut) {
    match ty {
        "octet" => out.put_u8(n),
        "short" => out.put_u16(0x0100 + u16::from(n)),
        "long" => out.put_u32(0x0102_0300 + u32::from(n)),
        "longlong" | "timestamp" => out.put_u64(0x0102_0304_0506_0700 + u64::from(n)),
        "shortstr" => {
            out.put_u8(2);
            out.put_slice(&[b'a' + n, b'z']);
        }
        "longstr" => {
            out.put_u32(3);
            out.put_slice(&[b'A' + n, 0, 0xff]);
        }
        "table" => {
            // {"k<n>": I n}
            out.put_u32(8);
            out.put_slice(&[2, b'k', b'0' + n, b'I', 0, 0, 0, n]);
        }
        other => panic!("unexpected type {other}"),
    }
}

fn resolve(domains: &[Value], domain: &str) -> String {
    domains
        .iter()
        .find(|d| d[0] == domain)
        .and_then(|d| d[1].as_str())
        .unwrap_or(domain)
        .to_string()
}

/// Checks ids, argument order and types of every method against the JSON spec, independently
/// of the generator: the bytes are built here from the spec alone.
#[test]
fn codec_matches_the_json_spec() {
    let spec: Value =
        serde_json::from_str(include_str!("../spec/amqp-rabbitmq-0.9.1.json")).unwrap();
    let domains = spec["domains"].as_array().unwrap();
    let mut seen = 0;
    for class in spec["classes"].as_array().unwrap() {
        let class_id = class["id"].as_u64().unwrap() as u16;
        for m in class["methods"].as_array().unwrap() {
            let method_id = m["id"].as_u64().unwrap() as u16;
            let name = format!(
                "{}.{}",
                class["name"].as_str().unwrap(),
                m["name"].as_str().unwrap()
            );
            let info = METHODS
                .iter()
                .find(|i| i.class_id == class_id && i.method_id == method_id)
                .unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(info.name, name);
            assert_eq!(
                info.synchronous,
                m["synchronous"].as_bool().unwrap_or(false),
                "{name}"
            );
            assert_eq!(
                info.content,
                m["content"].as_bool().unwrap_or(false),
                "{name}"
            );

            let args = m["arguments"].as_array().unwrap();
            assert_eq!(info.arguments.len(), args.len(), "{name}");
            let mut payload = BytesMut::new();
            payload.put_u16(class_id);
            payload.put_u16(method_id);
            let mut bits: Vec<bool> = Vec::new();
            let mut reserved_bytes = Vec::new();
            for (i, (a, ai)) in args.iter().zip(info.arguments).enumerate() {
                let domain = a["domain"].as_str().or(a["type"].as_str()).unwrap();
                let ty = resolve(domains, domain);
                assert_eq!(ai.name, a["name"].as_str().unwrap(), "{name}");
                assert_eq!(ai.ty, ty, "{name}.{}", ai.name);
                if ty == "bit" {
                    // Reserved bits keep their fixed value (all false) so re-encoding matches.
                    bits.push(!ai.reserved && i % 2 == 0);
                    continue;
                }
                for chunk in bits.chunks(8) {
                    payload.put_u8(
                        chunk
                            .iter()
                            .enumerate()
                            .map(|(j, b)| u8::from(*b) << j)
                            .sum(),
                    );
                }
                bits.clear();
                if ai.reserved {
                    // Reserved values are zero or empty on the wire.
                    let at = payload.len();
                    match ty.as_str() {
                        "short" => payload.put_u16(0),
                        "shortstr" => payload.put_u8(0),
                        "longstr" => payload.put_u32(0),
                        other => panic!("reserved {other}"),
                    }
                    reserved_bytes.push(at);
                } else {
                    spec_value(&ty, i as u8, &mut payload);
                }
            }
            for chunk in bits.chunks(8) {
                payload.put_u8(
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(j, b)| u8::from(*b) << j)
                        .sum(),
                );
            }
            let wire = payload.freeze();
            let method =
                Method::decode(&mut wire.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(method.name(), name);
            assert_eq!(
                (method.class_id(), method.method_id()),
                (class_id, method_id)
            );
            let mut again = BytesMut::new();
            method.encode(&mut again);
            assert_eq!(&again[..], &wire[..], "{name} re-encodes differently");
            seen += 1;
        }
    }
    assert_eq!(seen, METHODS.len());
}

/// `connection.start-ok` with PLAIN credentials, written by hand from spec §1.4.2.2.
#[test]
fn golden_connection_start_ok() {
    #[rustfmt::skip]
    let expected: Vec<u8> = [
        &[1, 0, 0][..],                         // method frame, channel 0
        &[0, 0, 0, 55],                         // payload size
        &[0, 10, 0, 11],                        // connection.start-ok
        &[0, 0, 0, 18],                         // client-properties: 18 bytes
        &[7], b"product", b"S", &[0, 0, 0, 5], b"lepus",
        &[5], b"PLAIN",                         // mechanism
        &[0, 0, 0, 13], b"\0guest\0secret",     // response (13 bytes)
        &[5], b"en_US",                         // locale
        &[0xce],
    ]
    .concat();
    let start_ok = connection::StartOk {
        client_properties: FieldTable::new().with("product", "lepus"),
        mechanism: ShortStr::from_static("PLAIN"),
        response: LongStr::from_static("\0guest\0secret"),
        locale: ShortStr::from_static("en_US"),
    };
    let mut out = BytesMut::new();
    frame::encode_method(&mut out, 0, &start_ok, 4096).unwrap();
    assert_eq!(&out[..], &expected[..]);
    assert_eq!(
        Frame::decode(&mut out, 4096).unwrap(),
        Some(Frame::Method {
            channel: 0,
            method: Method::ConnectionStartOk(start_ok)
        })
    );
}

#[test]
fn spec_defaults() {
    assert!(method::basic::Reject::default().requeue);
    assert!(method::basic::Nack::default().requeue);
    assert_eq!(method::exchange::Declare::default().kind, "direct");
    assert_eq!(connection::Open::default().virtual_host, "/");
    assert_eq!(connection::Start::default().version_minor, 9);
}

#[test]
fn unknown_method_and_trailing_bytes() {
    let mut p = Bytes::from_static(&[0, 60, 0, 41]);
    assert_eq!(
        Method::decode(&mut p),
        Err(DecodeError::UnknownMethod {
            class_id: 60,
            method_id: 41
        })
    );
    // tx.select with one extra byte.
    let mut p = Bytes::from_static(&[0, 90, 0, 10, 0]);
    assert_eq!(
        Method::decode(&mut p),
        Err(DecodeError::TrailingBytes {
            context: "tx.select",
            count: 1
        })
    );
    // queue.declare cut short names the method.
    let mut p = Bytes::from_static(&[0, 50, 0, 10, 0, 0, 5, b'a']);
    let err = Method::decode(&mut p).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::InMethod {
                method: "queue.declare",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "in queue.declare: truncated short string: needed 5 more bytes, 1 left"
    );
}

/// Reply codes and their soft/hard classes match the spec's constants.
#[test]
fn reply_codes_match_the_json_spec() {
    let spec: Value =
        serde_json::from_str(include_str!("../spec/amqp-rabbitmq-0.9.1.json")).unwrap();
    let constants = spec["constants"].as_array().unwrap();
    let codes: Vec<_> = constants
        .iter()
        // Frame types and sizes share the list; reply codes are the rest from 200 up.
        .filter(|c| !matches!(c["name"].as_str(), Some("FRAME-MIN-SIZE" | "FRAME-END")))
        .filter(|c| c["value"].as_u64().unwrap() >= 200)
        .map(|c| {
            let name = c["name"].as_str().unwrap().replace('-', "_");
            (
                name,
                c["value"].as_u64().unwrap() as u16,
                c["class"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(codes.len(), crate::reply_code::ALL.len());
    for (name, value, class) in codes {
        let code = crate::ReplyCode(value);
        assert_eq!(code.name(), Some(name.as_str()));
        let ours = crate::reply_code::ALL
            .iter()
            .find(|c| c.1 == value)
            .unwrap();
        assert_eq!(ours.2, class.as_deref(), "{name}");
        assert_eq!(
            code.is_soft(),
            class.as_deref() == Some("soft-error"),
            "{name}"
        );
        assert_eq!(
            code.is_hard(),
            class.as_deref() == Some("hard-error"),
            "{name}"
        );
    }
}
