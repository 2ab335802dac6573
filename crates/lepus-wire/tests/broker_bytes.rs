//! Decoding bytes captured from a real RabbitMQ (3.10.8), not only bytes lepus wrote itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bytes::BytesMut;
use lepus_wire::{FieldValue, Frame, Method};

/// The `connection.start` RabbitMQ 3.10.8 sends after the protocol header, captured verbatim.
#[test]
fn rabbitmq_connection_start() {
    let captured = include_bytes!("data/rabbitmq-3.10.8-connection-start.bin");
    let mut buf = BytesMut::from(&captured[..]);
    let frame = Frame::decode(&mut buf, 4096).unwrap().unwrap();
    assert!(buf.is_empty());
    let Frame::Method {
        channel: 0,
        method: Method::ConnectionStart(start),
    } = &frame
    else {
        panic!("expected connection.start, got {frame:?}");
    };
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    assert_eq!(start.mechanisms, "PLAIN AMQPLAIN");
    assert_eq!(start.locales, "en_US");
    let props = &start.server_properties;
    assert_eq!(
        props.get("product").and_then(FieldValue::as_str),
        Some("RabbitMQ")
    );
    assert_eq!(
        props.get("version").and_then(FieldValue::as_str),
        Some("3.10.8")
    );
    let caps = props
        .get("capabilities")
        .and_then(FieldValue::as_table)
        .unwrap();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        assert_eq!(
            caps.get(cap).and_then(FieldValue::as_bool),
            Some(true),
            "{cap}"
        );
    }
    // Re-encoding gives back the captured bytes exactly: order and tags are kept.
    let mut out = BytesMut::new();
    frame.encode(&mut out);
    assert_eq!(&out[..], &captured[..]);
}
