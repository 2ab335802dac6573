//! Scripted-broker tests of the connection state machine, in the style of quinn-proto's
//! `src/tests/` and h2's mock peer: no sockets, a fake clock, frames in and frames out.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use lepus_wire::method::{basic, channel, confirm, connection, queue};
use lepus_wire::{
    frame, BasicProperties, DecodeError, FieldTable, FieldValue, Frame, LongStr, Method, ReplyCode,
    ShortStr,
};

use crate::{
    ChannelError, Close, Config, ConnectionError, Event, Heartbeat, Reply, Sasl, MIN_FRAME_MAX,
};

mod util;

use util::*;

// ---- 1. handshake ----

#[test]
fn handshake_sends_header_start_ok_tune_ok_open_and_connects() {
    let mut b = Broker::new(Config::default());
    assert!(!b.conn.is_open());
    assert!(!b.conn.is_closed());
    // Nothing may be used before the handshake ends.
    assert_eq!(
        b.conn.open_channel(),
        Err(ChannelError::InvalidState("connection is not open yet"))
    );

    // The protocol header goes first, alone.
    assert_eq!(b.conn.pending_bytes(), 8);
    b.take_header();

    b.send_method(0, start("AMQPLAIN PLAIN"));
    assert_eq!(b.conn.server_properties(), server_properties());
    let sent = b.sent();
    let [Frame::Method {
        channel: 0,
        method: Method::ConnectionStartOk(ok),
    }] = &sent[..]
    else {
        panic!("expected start-ok, got {sent:?}");
    };
    assert_eq!(ok.mechanism, "PLAIN");
    assert_eq!(ok.response, "\0guest\0guest");
    assert_eq!(ok.locale, "en_US");
    let props = &ok.client_properties;
    assert_eq!(
        props.get("product").and_then(FieldValue::as_str),
        Some("lepus")
    );
    assert_eq!(
        props.get("platform").and_then(FieldValue::as_str),
        Some("Rust")
    );
    assert!(props.get("version").and_then(FieldValue::as_str).is_some());
    let caps = props
        .get("capabilities")
        .and_then(FieldValue::as_table)
        .expect("capabilities table");
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
            "capability {cap}"
        );
    }
    assert!(b.events().is_empty());

    b.send_method(
        0,
        connection::Tune {
            channel_max: 100,
            frame_max: 65_536,
            heartbeat: 30,
        },
    );
    assert_eq!(
        b.sent(),
        [
            method_frame(
                0,
                connection::TuneOk {
                    channel_max: 100,
                    frame_max: 65_536,
                    heartbeat: 30,
                }
            ),
            method_frame(
                0,
                connection::Open {
                    virtual_host: short("/"),
                }
            ),
        ]
    );
    assert!(b.events().is_empty());
    assert!(!b.conn.is_open());

    b.send_method(0, connection::OpenOk);
    assert_eq!(b.events(), [Event::Connected]);
    assert!(b.conn.is_open());
    assert_eq!(
        b.conn.negotiated(),
        crate::Negotiated {
            channel_max: 100,
            frame_max: 65_536,
            heartbeat: 30,
        }
    );
    // The server's properties are kept after the handshake.
    assert_eq!(
        b.conn
            .server_properties()
            .get("product")
            .and_then(FieldValue::as_str),
        Some("RabbitMQ")
    );
    assert!(b.sent().is_empty());
}

#[test]
fn handshake_one_byte_at_a_time() {
    let mut b = Broker::new(Config::default());
    let mut script = BytesMut::new();
    method_frame(0, start("PLAIN")).encode(&mut script);
    for byte in script.iter() {
        assert!(b.sent().is_empty());
        b.send_bytes(&[*byte]);
    }
    assert!(matches!(
        &b.sent()[..],
        [Frame::Method {
            method: Method::ConnectionStartOk(_),
            ..
        }]
    ));
    let mut script = BytesMut::new();
    method_frame(0, TUNE).encode(&mut script);
    for chunk in script.chunks(3) {
        b.send_bytes(chunk);
    }
    assert_eq!(b.sent().len(), 2);
    b.send_method(0, connection::OpenOk);
    assert_eq!(b.events(), [Event::Connected]);
    assert_eq!(b.unread(), 0);
}

#[test]
fn amqplain_and_secure_challenge() {
    let config = Config {
        sasl: Sasl::AmqPlain {
            username: "u".into(),
            password: "p".into(),
        },
        vhost: "prod".into(),
        ..Config::default()
    };
    let mut b = Broker::new(config);
    b.send_method(0, start("PLAIN AMQPLAIN"));
    let sent = b.sent();
    let [Frame::Method {
        method: Method::ConnectionStartOk(ok),
        ..
    }] = &sent[..]
    else {
        panic!("expected start-ok, got {sent:?}");
    };
    assert_eq!(ok.mechanism, "AMQPLAIN");
    let expected = Sasl::AmqPlain {
        username: "u".into(),
        password: "p".into(),
    }
    .response();
    assert_eq!(ok.response, expected);
    // A challenge is answered with the same response.
    b.send_method(
        0,
        connection::Secure {
            challenge: LongStr::from("?"),
        },
    );
    assert_eq!(
        b.sent(),
        [method_frame(
            0,
            connection::SecureOk {
                response: expected.clone()
            }
        )]
    );
    b.send_method(0, TUNE);
    let sent = b.sent();
    assert_eq!(
        sent.get(1),
        Some(&method_frame(
            0,
            connection::Open {
                virtual_host: short("prod")
            }
        ))
    );
}

// ---- 2. tune negotiation ----

fn negotiate(config: Config, tune: connection::Tune) -> crate::Negotiated {
    let mut b = Broker::new(config);
    b.send_method(0, start("PLAIN"));
    b.sent();
    b.send_method(0, tune);
    let sent = b.sent();
    let Some(Frame::Method {
        channel: 0,
        method: Method::ConnectionTuneOk(ok),
    }) = sent.first()
    else {
        panic!("expected tune-ok, got {sent:?}");
    };
    b.send_method(0, connection::OpenOk);
    assert_eq!(b.events(), [Event::Connected]);
    let n = b.conn.negotiated();
    assert_eq!(
        (ok.channel_max, ok.frame_max, ok.heartbeat),
        (n.channel_max, n.frame_max, n.heartbeat),
        "tune-ok must carry the negotiated values"
    );
    n
}

fn with_limits(channel_max: u16, frame_max: u32, heartbeat: Heartbeat) -> Config {
    Config {
        channel_max,
        frame_max,
        heartbeat,
        ..Config::default()
    }
}

fn tune(channel_max: u16, frame_max: u32, heartbeat: u16) -> connection::Tune {
    connection::Tune {
        channel_max,
        frame_max,
        heartbeat,
    }
}

/// channel_max, frame_max and heartbeat as configured.
type ClientLimits = (u16, u32, Heartbeat);
/// channel_max, frame_max and heartbeat as proposed in `connection.tune` (or negotiated).
type ServerLimits = (u16, u32, u16);

#[test]
fn tune_negotiation_table() {
    use Heartbeat::{Disabled, Secs, ServerDefault};
    // (config channel_max, frame_max, heartbeat), (server ...), expected (channel_max, frame_max,
    // heartbeat)
    let table: &[(ClientLimits, ServerLimits, ServerLimits)] = &[
        // channel_max: 0 on one side takes the other; both set takes the lower.
        (
            (0, 131_072, ServerDefault),
            (2047, 131_072, 0),
            (2047, 131_072, 0),
        ),
        (
            (100, 131_072, ServerDefault),
            (0, 131_072, 0),
            (100, 131_072, 0),
        ),
        (
            (100, 131_072, ServerDefault),
            (2047, 131_072, 0),
            (100, 131_072, 0),
        ),
        (
            (2047, 131_072, ServerDefault),
            (10, 131_072, 0),
            (10, 131_072, 0),
        ),
        // frame_max: 0 on both sides is lepus's default; 0 on one side takes the other.
        ((2047, 0, ServerDefault), (2047, 0, 0), (2047, 131_072, 0)),
        (
            (2047, 0, ServerDefault),
            (2047, 65_536, 0),
            (2047, 65_536, 0),
        ),
        (
            (2047, 65_536, ServerDefault),
            (2047, 0, 0),
            (2047, 65_536, 0),
        ),
        (
            (2047, 65_536, ServerDefault),
            (2047, 131_072, 0),
            (2047, 65_536, 0),
        ),
        (
            (2047, 131_072, ServerDefault),
            (2047, 16_384, 0),
            (2047, 16_384, 0),
        ),
        // A config frame_max below 8192 is raised to 8192.
        (
            (2047, 1000, ServerDefault),
            (2047, 131_072, 0),
            (2047, MIN_FRAME_MAX, 0),
        ),
        (
            (2047, 1000, ServerDefault),
            (2047, 0, 0),
            (2047, MIN_FRAME_MAX, 0),
        ),
        (
            (2047, 8191, ServerDefault),
            (2047, 131_072, 0),
            (2047, 8192, 0),
        ),
        // Heartbeat: ServerDefault takes the server's, Disabled is 0, Secs(n) is n.
        (
            (2047, 131_072, ServerDefault),
            (2047, 131_072, 60),
            (2047, 131_072, 60),
        ),
        (
            (2047, 131_072, ServerDefault),
            (2047, 131_072, 0),
            (2047, 131_072, 0),
        ),
        (
            (2047, 131_072, Disabled),
            (2047, 131_072, 60),
            (2047, 131_072, 0),
        ),
        (
            (2047, 131_072, Disabled),
            (2047, 131_072, 0),
            (2047, 131_072, 0),
        ),
        (
            (2047, 131_072, Secs(5)),
            (2047, 131_072, 60),
            (2047, 131_072, 5),
        ),
        (
            (2047, 131_072, Secs(5)),
            (2047, 131_072, 0),
            (2047, 131_072, 5),
        ),
        (
            (2047, 131_072, Secs(120)),
            (2047, 131_072, 60),
            (2047, 131_072, 120),
        ),
        (
            (2047, 131_072, Secs(0)),
            (2047, 131_072, 60),
            (2047, 131_072, 0),
        ),
    ];
    for &((cc, cf, ch), (sc, sf, sh), (ec, ef, eh)) in table {
        let n = negotiate(with_limits(cc, cf, ch), tune(sc, sf, sh));
        assert_eq!(
            (n.channel_max, n.frame_max, n.heartbeat),
            (ec, ef, eh),
            "config ({cc}, {cf}, {ch:?}) against server ({sc}, {sf}, {sh})"
        );
    }
}

#[test]
fn channel_max_zero_on_both_sides_is_lepus_default() {
    // Neither side sets a limit: lepus picks its own bound, RabbitMQ's default.
    let n = negotiate(
        with_limits(0, 131_072, Heartbeat::ServerDefault),
        tune(0, 131_072, 0),
    );
    assert_eq!(n.channel_max, crate::DEFAULT_CHANNEL_MAX);
}

#[test]
fn negotiated_frame_max_limits_incoming_frames() {
    let mut b = Broker::handshake_with(Config::default(), tune(2047, 8192, 0));
    let ch = b.open_channel();
    // A body frame of exactly frame_max is fine ...
    b.send_frames(&[
        method_frame(ch, deliver(1)),
        header_frame(ch, 8184, BasicProperties::default()),
        body_frame(ch, &[1; 8184]),
    ]);
    assert!(matches!(&b.events()[..], [Event::Delivery { .. }]));
    // ... one byte more is a frame error, caught from the frame header alone.
    let mut too_big = vec![3, 0, 1];
    too_big.extend_from_slice(&8185u32.to_be_bytes());
    b.send_bytes(&too_big);
    assert_eq!(
        b.closed(),
        ConnectionError::Protocol(DecodeError::FrameTooLarge {
            size: 8193,
            max: 8192
        })
    );
    assert_eq!(b.sent_connection_close().reply_code, ReplyCode::FRAME_ERROR);
}

#[test]
fn channel_ids_stop_at_channel_max() {
    let mut b = Broker::handshake_with(Config::default(), tune(2, 131_072, 0));
    assert_eq!(b.open_channel(), 1);
    assert_eq!(b.open_channel(), 2);
    assert_eq!(b.conn.open_channel(), Err(ChannelError::NoFreeChannel(2)));
    assert!(b.sent().is_empty());
}

#[test]
fn a_channel_opens_on_the_id_asked_for() {
    let mut b = Broker::handshake_with(Config::default(), tune(10, 131_072, 0));
    let generation = b.conn.open_channel_with_id(7).unwrap();
    assert_eq!(b.sent(), [method_frame(7, channel::Open)]);
    assert_eq!(b.conn.channel_generation(7), Some(generation));
    // The lowest free id is still 1 for the next plain open.
    assert_eq!(b.open_channel(), 1);
    // In use, zero, and above channel_max are refused without sending anything.
    for id in [7, 0, 11] {
        assert!(b.conn.open_channel_with_id(id).is_err(), "{id}");
    }
    assert!(b.sent().is_empty());
}

// ---- 3. handshake failures ----

#[test]
fn unsupported_mechanism_fails_without_start_ok() {
    let mut b = Broker::new(Config::default());
    b.send_method(0, start("AMQPLAIN"));
    assert_eq!(
        b.closed(),
        ConnectionError::UnsupportedMechanism {
            wanted: "PLAIN",
            offered: "AMQPLAIN".into()
        }
    );
    assert!(b.sent().is_empty(), "no start-ok after a refused mechanism");
    // A mechanism name that merely contains the wanted one does not count.
    let mut b = Broker::new(Config::default());
    b.send_method(0, start("XPLAIN PLAINX"));
    assert!(matches!(
        b.closed(),
        ConnectionError::UnsupportedMechanism { .. }
    ));
}

#[test]
fn version_mismatch() {
    // 8-0 is what AMQP 0-8 brokers put in connection.start.
    for (major, minor) in [(8, 0), (0, 8), (1, 0), (0, 10)] {
        let mut b = Broker::new(Config::default());
        b.send_method(
            0,
            connection::Start {
                version_major: major,
                version_minor: minor,
                ..start("PLAIN")
            },
        );
        assert_eq!(
            b.closed(),
            ConnectionError::VersionMismatch { major, minor }
        );
        assert!(b.sent().is_empty());
    }
}

#[test]
fn server_protocol_header_reply_is_not_amqp_091() {
    let theirs = *b"AMQP\x01\x01\x00\x0a";
    let not_amqp = || ConnectionError::NotAmqp {
        received: Bytes::copy_from_slice(&theirs),
    };
    let mut b = Broker::new(Config::default());
    b.send_bytes(&theirs);
    let err = b.closed();
    assert_eq!(err, not_amqp());
    assert_eq!(err.to_string(), "the server speaks AMQP 0-10, not 0-9-1");
    assert!(b.sent().is_empty());
    b.send_method(0, start("PLAIN"));
    assert!(b.events().is_empty(), "nothing after Closed");

    // The same, arriving in two reads: a partial header decides nothing.
    for cut in [2, 4, 7] {
        let mut b = Broker::new(Config::default());
        b.send_bytes(&theirs[..cut]);
        assert!(b.events().is_empty(), "cut at {cut}");
        assert!(!b.conn.is_closed());
        b.send_bytes(&theirs[cut..]);
        assert_eq!(b.closed(), not_amqp());
    }
}

#[test]
fn other_protocols_before_start_are_named_for_what_they_are() {
    for (reply, text) in [
        (
            &b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"[..],
            "the server does not speak AMQP 0-9-1 (it sent \"HTTP/1.1 400 Bad Request…\")",
        ),
        (b"AMQP\x00\x01\x00\x00", "the server speaks AMQP 1.0.0, not 0-9-1"),
        (b"AMQP\x03\x01\x00\x00", "the server speaks AMQP 1.0.0, not 0-9-1"),
        (b"AMQP\x01\x01\x08\x00", "the server speaks AMQP 0-8, not 0-9-1"),
        (
            b"SSH-2.0-OpenSSH_9.2\r\n",
            "the server does not speak AMQP 0-9-1 (it sent \"SSH-2.0-OpenSSH_9.2…\")",
        ),
        // A TLS alert: the port expects TLS.
        (
            b"\x15\x03\x01\x00\x02\x02\x46",
            "the server expects TLS (use amqps://)",
        ),
        // Anything else binary is shown escaped.
        (
            b"\x00\xffab\x7f",
            "the server does not speak AMQP 0-9-1 (it sent \"\\x00\\xffab\\x7f…\")",
        ),
        // A method frame on a channel other than 0, and one far over any frame_max.
        (
            b"\x01\x00\x05\x00\x00\x00\x04abcd\xce",
            "the server does not speak AMQP 0-9-1 (it sent \"\\x01\\x00\\x05\\x00\\x00\\x00\\x04abcd\\xce…\")",
        ),
    ] {
        let mut b = Broker::new(Config::default());
        b.send_bytes(reply);
        let err = b.closed();
        assert!(matches!(err, ConnectionError::NotAmqp { .. }), "{err:?}");
        assert_eq!(err.to_string(), text);
        assert_eq!(err.reply_code(), Some(ReplyCode::FRAME_ERROR));
        // Before the handshake there is no connection to close politely.
        assert!(b.sent().is_empty());
    }
    // A frame header that may still be a real one waits for more bytes.
    let mut b = Broker::new(Config::default());
    b.send_bytes(b"\x01\x00\x00");
    assert!(b.events().is_empty());
    assert!(!b.conn.is_closed());
}

// ---- 4. server close ----

#[test]
fn server_close_during_handshake() {
    let mut b = Broker::new(Config::default());
    b.send_method(0, start("PLAIN"));
    b.sent();
    let text = "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN";
    b.send_method(0, connection_close(ReplyCode::ACCESS_REFUSED, text, 0, 0));
    assert_eq!(b.sent(), [method_frame(0, connection::CloseOk)]);
    let err = b.closed();
    assert_eq!(
        err,
        ConnectionError::ServerClosed(Close {
            code: ReplyCode::ACCESS_REFUSED,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        })
    );
    assert_eq!(err.reply_code(), Some(ReplyCode(403)));
    // Nothing more happens: a late tune is ignored.
    b.send_method(0, TUNE);
    assert!(b.sent().is_empty());
    assert!(b.events().is_empty());
}

#[test]
fn server_close_when_open() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    assert!(b.conn.call(ch, queue_declare("q").into()).unwrap());
    b.sent();
    b.send_method(
        0,
        connection_close(
            ReplyCode::COMMAND_INVALID,
            "COMMAND_INVALID - unknown exchange type 'x'",
            40,
            10,
        ),
    );
    assert_eq!(b.sent(), [method_frame(0, connection::CloseOk)]);
    let ConnectionError::ServerClosed(close) = b.closed() else {
        panic!("expected ServerClosed");
    };
    assert_eq!(close.code, ReplyCode::COMMAND_INVALID);
    assert_eq!(close.text, "COMMAND_INVALID - unknown exchange type 'x'");
    assert_eq!((close.class_id, close.method_id), (40, 10));
    assert_eq!(close.method_name(), Some("exchange.declare"));
    assert_eq!(b.conn.channel_generation(ch), None);
    assert_commands_fail(&mut b, ch);
}

// ---- 5. client close ----

#[test]
fn crossing_connection_closes() {
    let mut b = Broker::handshake();
    b.conn.close(ReplyCode::REPLY_SUCCESS, "bye");
    b.sent_connection_close();
    // The server closed at the same time: answer its close, and end with its reason.
    b.send_method(
        0,
        connection_close(
            ReplyCode::CONNECTION_FORCED,
            "CONNECTION_FORCED - shutdown",
            0,
            0,
        ),
    );
    assert_eq!(b.sent(), [method_frame(0, connection::CloseOk)]);
    assert!(matches!(
        b.closed(),
        ConnectionError::ServerClosed(c) if c.code == ReplyCode::CONNECTION_FORCED
    ));
}

#[test]
fn commands_after_close_report_the_real_reason() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    let close = connection_close(
        ReplyCode::CONNECTION_FORCED,
        "CONNECTION_FORCED - bye",
        0,
        0,
    );
    b.send_method(0, close);
    let err = b.closed();
    assert_eq!(
        b.conn.call(ch, queue_declare("q").into()),
        Err(ChannelError::ConnectionClosed(err))
    );
}

#[test]
fn client_close_handshake() {
    let mut b = Broker::handshake();
    b.conn.close(ReplyCode::REPLY_SUCCESS, "bye");
    assert!(!b.conn.is_open());
    assert!(!b.conn.is_closed());
    let close = b.sent_connection_close();
    assert_eq!(close.reply_code, ReplyCode::REPLY_SUCCESS);
    assert_eq!(close.reply_text, "bye");
    assert_eq!((close.class_id, close.method_id), (0, 0));
    // A second close sends nothing.
    b.conn.close(ReplyCode::REPLY_SUCCESS, "again");
    assert!(b.sent().is_empty());
    // Connection frames other than close/close-ok are discarded.
    b.send_method(
        0,
        connection::Blocked {
            reason: short("memory"),
        },
    );
    b.send_method(0, connection::OpenOk);
    b.send_frames(&[Frame::Heartbeat]);
    assert!(b.events().is_empty());
    assert!(b.sent().is_empty());
    assert_eq!(b.conn.blocked(), None);
    b.send_method(0, connection::CloseOk);
    assert_eq!(
        b.closed(),
        ConnectionError::LocallyClosed(Close {
            code: ReplyCode::REPLY_SUCCESS,
            text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })
    );
    assert!(b.sent().is_empty(), "nothing answers close-ok");
}

#[test]
fn channel_frames_after_client_close_are_discarded() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    b.conn
        .call(ch, confirm::Select { nowait: false }.into())
        .unwrap();
    b.sent();
    b.conn.close(ReplyCode::REPLY_SUCCESS, "bye");
    b.sent_connection_close();
    b.send_frames(&[
        method_frame(ch, confirm::SelectOk),
        method_frame(
            ch,
            basic::Ack {
                delivery_tag: 1,
                multiple: false,
            },
        ),
        method_frame(ch, deliver(1)),
        header_frame(ch, 2, BasicProperties::default()),
        body_frame(ch, b"hi"),
        method_frame(ch, channel_close(ReplyCode::NOT_FOUND, "NOT_FOUND", 50, 10)),
    ]);
    assert_eq!(b.events(), [], "spec 2.2.4: discard all but close/close-ok");
    assert_eq!(b.sent(), [], "only close-ok may follow connection.close");
    b.send_method(0, connection::CloseOk);
    assert!(matches!(b.closed(), ConnectionError::LocallyClosed(_)));
}

#[test]
fn commands_fail_while_closing() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    b.conn.close(ReplyCode::REPLY_SUCCESS, "bye");
    b.sent();
    assert!(b.conn.open_channel().is_err());
    assert!(b.conn.call(ch, queue_declare("q").into()).is_err());
    assert!(b
        .conn
        .basic_publish(
            ch,
            &basic::Publish::default(),
            &BasicProperties::default(),
            Bytes::from_static(b"x")
        )
        .is_err());
    assert!(b.sent().is_empty());
}

#[test]
fn transport_closed_while_closing_is_a_local_close() {
    let mut b = Broker::handshake();
    b.conn.close(ReplyCode::REPLY_SUCCESS, "bye");
    b.sent();
    b.conn.handle_transport_closed("eof".into());
    let err = b.closed();
    assert!(
        matches!(&err, ConnectionError::LocallyClosed(c) if c.code == ReplyCode::REPLY_SUCCESS),
        "{err:?}"
    );
    // Unlike a transport loss while open.
    let mut b = Broker::handshake();
    b.conn.handle_transport_closed("reset".into());
    assert_eq!(b.closed(), ConnectionError::TransportClosed("reset".into()));
}

#[test]
fn transport_closed_while_closing_keeps_the_close_reason() {
    let mut b = Broker::handshake();
    b.conn.close(ReplyCode::CONNECTION_FORCED, "shutting down");
    b.sent();
    b.conn.handle_transport_closed("eof".into());
    assert_eq!(
        b.closed(),
        ConnectionError::LocallyClosed(Close {
            code: ReplyCode::CONNECTION_FORCED,
            text: "shutting down".into(),
            class_id: 0,
            method_id: 0,
        })
    );
}

#[test]
fn close_before_open_ends_at_once() {
    let mut b = Broker::new(Config::default());
    b.send_method(0, start("PLAIN"));
    b.sent();
    b.conn.close(ReplyCode::REPLY_SUCCESS, "never mind");
    assert!(b.sent().is_empty());
    assert!(matches!(b.closed(), ConnectionError::LocallyClosed(c) if c.text == "never mind"));
}

// ---- 6. channels and reply pairing ----

#[test]
fn channels_get_ids_one_two_three() {
    let mut b = Broker::handshake();
    let mut generations = Vec::new();
    for expected in 1..=3 {
        let (id, generation) = b.conn.open_channel().unwrap();
        assert_eq!(id, expected);
        assert_eq!(b.conn.channel_generation(id), Some(generation));
        assert!(b.conn.channel_is_live(id, generation));
        generations.push(generation);
        assert_eq!(b.sent(), [method_frame(id, channel::Open)]);
    }
    generations.dedup();
    assert_eq!(generations.len(), 3, "generations differ");
    // open-ok may come back in any channel order; each pairs with its own channel.open.
    for id in [2, 1, 3] {
        b.send_method(id, channel::OpenOk);
        assert_eq!(
            b.events(),
            [Event::Reply {
                channel: id,
                reply: Reply::Method(channel::OpenOk.into())
            }]
        );
    }
}

#[test]
fn pipelined_requests_pair_replies_fifo() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    let declare = queue_declare("jobs");
    let bind = queue::Bind {
        queue: short("jobs"),
        exchange: short("amq.direct"),
        routing_key: short("jobs"),
        nowait: false,
        arguments: FieldTable::new(),
    };
    let qos = basic::Qos {
        prefetch_size: 0,
        prefetch_count: 10,
        global: false,
    };
    assert!(b.conn.call(ch, declare.clone().into()).unwrap());
    assert!(b.conn.call(ch, bind.clone().into()).unwrap());
    assert!(b.conn.call(ch, qos.clone().into()).unwrap());
    assert_eq!(
        b.sent(),
        [
            method_frame(ch, declare),
            method_frame(ch, bind),
            method_frame(ch, qos)
        ]
    );
    let declare_ok = queue::DeclareOk {
        queue: short("jobs"),
        message_count: 3,
        consumer_count: 0,
    };
    b.send_frames(&[
        method_frame(ch, declare_ok.clone()),
        method_frame(ch, queue::BindOk),
        method_frame(ch, basic::QosOk),
    ]);
    let reply = |m: Method| Event::Reply {
        channel: ch,
        reply: Reply::Method(m),
    };
    assert_eq!(
        b.events(),
        [
            reply(declare_ok.into()),
            reply(queue::BindOk.into()),
            reply(basic::QosOk.into())
        ]
    );
    assert!(b.sent().is_empty());
    assert!(b.conn.is_open());
}

#[test]
fn nowait_request_expects_no_reply() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    let declare = queue::Declare {
        nowait: true,
        ..queue_declare("q")
    };
    assert!(!b.conn.call(ch, declare.into()).unwrap());
    b.sent();
    // So a declare-ok now answers nothing.
    b.send_method(
        ch,
        queue::DeclareOk {
            queue: short("q"),
            message_count: 0,
            consumer_count: 0,
        },
    );
    assert!(matches!(b.closed(), ConnectionError::UnexpectedFrame(_)));
    assert_eq!(
        b.sent_connection_close().reply_code,
        ReplyCode::UNEXPECTED_FRAME
    );
}

#[test]
fn reply_not_matching_oldest_request_is_unexpected_frame() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    b.conn.call(ch, queue_declare("q").into()).unwrap();
    b.conn
        .call(
            ch,
            basic::Qos {
                prefetch_size: 0,
                prefetch_count: 1,
                global: false,
            }
            .into(),
        )
        .unwrap();
    b.sent();
    // qos-ok first: the oldest request is the declare.
    b.send_method(ch, basic::QosOk);
    let err = b.closed();
    assert!(
        matches!(&err, ConnectionError::UnexpectedFrame(what) if what.contains("basic.qos-ok") && what.contains("queue.declare")),
        "{err:?}"
    );
    assert_eq!(err.reply_code(), Some(ReplyCode::UNEXPECTED_FRAME));
    let close = b.sent_connection_close();
    assert_eq!(close.reply_code, ReplyCode::UNEXPECTED_FRAME);
    assert!(!close.reply_text.is_empty());
    // Later input is ignored.
    b.send_method(
        ch,
        queue::DeclareOk {
            queue: short("q"),
            message_count: 0,
            consumer_count: 0,
        },
    );
    assert!(b.events().is_empty());
    assert!(b.sent().is_empty());
}

#[test]
fn connection_method_out_of_state_is_unexpected_frame() {
    for method in [
        Method::from(connection::OpenOk),
        start("PLAIN").into(),
        TUNE.into(),
        connection::CloseOk.into(),
    ] {
        let mut b = Broker::handshake();
        let name = method.name();
        b.send_method(0, method);
        let err = b.closed();
        assert!(
            matches!(&err, ConnectionError::UnexpectedFrame(w) if w.contains(name)),
            "{name}: {err:?}"
        );
        assert_eq!(
            b.sent_connection_close().reply_code,
            ReplyCode::UNEXPECTED_FRAME
        );
    }
    // A channel method on channel 0 as well.
    let mut b = Broker::handshake();
    b.send_method(0, channel::OpenOk);
    assert!(matches!(b.closed(), ConnectionError::UnexpectedFrame(_)));
}

#[test]
fn unexpected_connection_method_is_described_in_words() {
    let mut b = Broker::handshake();
    b.send_method(0, connection::OpenOk);
    assert_eq!(
        b.closed().to_string(),
        "unexpected frame from the server: connection.open-ok on channel 0 on an open connection"
    );
}

#[test]
fn method_on_never_opened_channel_is_channel_error() {
    let mut b = Broker::handshake();
    b.send_method(7, basic::QosOk);
    assert!(matches!(b.closed(), ConnectionError::UnexpectedFrame(_)));
    assert_eq!(
        b.sent_connection_close().reply_code,
        ReplyCode::CHANNEL_ERROR
    );
}

#[test]
fn call_on_bad_channel_ids() {
    let mut b = Broker::handshake();
    assert!(matches!(
        b.conn.call(0, queue_declare("q").into()),
        Err(ChannelError::InvalidState(_))
    ));
    assert_eq!(
        b.conn.call(9, queue_declare("q").into()),
        Err(ChannelError::NotOpen(9))
    );
    assert_eq!(
        b.conn.send(
            9,
            &basic::Ack {
                delivery_tag: 1,
                multiple: false
            }
        ),
        Err(ChannelError::NotOpen(9))
    );
    assert!(b.sent().is_empty());
}

// ---- 7. channel close ----

#[test]
fn server_channel_close_frees_the_id() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    let old_generation = b.conn.channel_generation(ch).unwrap();
    b.conn.call(ch, queue_declare("missing").into()).unwrap();
    b.sent();
    let text = "NOT_FOUND - no queue 'missing' in vhost '/'";
    b.send_method(ch, channel_close(ReplyCode::NOT_FOUND, text, 50, 10));
    assert_eq!(b.sent(), [method_frame(ch, channel::CloseOk)]);
    let events = b.events();
    let [Event::ChannelClosed {
        channel,
        close: Some(close),
    }] = &events[..]
    else {
        panic!("expected ChannelClosed, got {events:?}");
    };
    assert_eq!(*channel, ch);
    assert_eq!(close.code, ReplyCode::NOT_FOUND);
    assert_eq!(close.text, text);
    assert_eq!((close.class_id, close.method_id), (50, 10));
    assert_eq!(close.method_name(), Some("queue.declare"));
    assert_eq!(
        close.to_string(),
        "404 NOT_FOUND - no queue 'missing' in vhost '/' (queue.declare)"
    );
    assert!(b.conn.is_open(), "a soft error closes only the channel");
    assert_eq!(b.conn.channel_generation(ch), None);
    assert!(!b.conn.channel_is_live(ch, old_generation));
    assert_eq!(
        b.conn.call(ch, queue_declare("q").into()),
        Err(ChannelError::NotOpen(ch))
    );
    // The id is reused, with a new generation.
    let (again, generation) = b.conn.open_channel().unwrap();
    assert_eq!(again, ch);
    assert_ne!(generation, old_generation);
    assert!(!b.conn.channel_is_live(ch, old_generation));
    assert!(b.conn.channel_is_live(ch, generation));
    assert_eq!(b.sent(), [method_frame(ch, channel::Open)]);
    b.send_method(ch, channel::OpenOk);
    assert!(matches!(&b.events()[..], [Event::Reply { .. }]));
}

#[test]
fn client_channel_close_ignores_everything_but_close_ok() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    let other = b.open_channel();
    let generation = b.conn.channel_generation(ch).unwrap();
    b.conn.call(ch, queue_declare("q").into()).unwrap();
    b.sent();
    let close = channel_close(ReplyCode::REPLY_SUCCESS, "bye", 0, 0);
    assert!(b.conn.call(ch, close.clone().into()).unwrap());
    assert_eq!(b.sent(), [method_frame(ch, close)]);
    assert!(!b.conn.channel_is_live(ch, generation));
    assert_eq!(
        b.conn.call(ch, queue_declare("q").into()),
        Err(ChannelError::Closed)
    );
    assert_eq!(
        b.conn.send(
            ch,
            &basic::Ack {
                delivery_tag: 1,
                multiple: false
            }
        ),
        Err(ChannelError::Closed)
    );
    // Whatever the server sent before it saw the close is dropped.
    b.send_frames(&[
        method_frame(
            ch,
            queue::DeclareOk {
                queue: short("q"),
                message_count: 0,
                consumer_count: 0,
            },
        ),
        method_frame(ch, deliver(1)),
        header_frame(ch, 3, BasicProperties::default()),
        body_frame(ch, b"abc"),
        method_frame(
            ch,
            basic::Ack {
                delivery_tag: 1,
                multiple: false,
            },
        ),
        method_frame(
            ch,
            basic::Cancel {
                consumer_tag: short("c"),
                nowait: false,
            },
        ),
    ]);
    assert_eq!(b.events(), []);
    assert_eq!(b.sent(), []);
    // Other channels carry on.
    b.send_method(
        other,
        basic::Ack {
            delivery_tag: 9,
            multiple: false,
        },
    );
    assert_eq!(
        b.events(),
        [Event::Confirm {
            channel: other,
            delivery_tag: 9,
            multiple: false,
            ack: true
        }]
    );
    b.send_method(ch, channel::CloseOk);
    assert_eq!(
        b.events(),
        [Event::ChannelClosed {
            channel: ch,
            close: None
        }]
    );
    assert!(b.sent().is_empty());
    assert_eq!(b.conn.channel_generation(ch), None);
    assert_eq!(b.conn.open_channel().unwrap().0, ch);
}

#[test]
fn crossing_channel_closes() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    b.conn
        .call(
            ch,
            channel_close(ReplyCode::REPLY_SUCCESS, "bye", 0, 0).into(),
        )
        .unwrap();
    b.sent();
    // The server closed the channel at the same time ...
    b.send_method(
        ch,
        channel_close(
            ReplyCode::PRECONDITION_FAILED,
            "PRECONDITION_FAILED",
            60,
            80,
        ),
    );
    assert_eq!(b.sent(), [method_frame(ch, channel::CloseOk)]);
    assert!(matches!(
        &b.events()[..],
        [Event::ChannelClosed { close: Some(_), .. }]
    ));
    // ... and, as the spec requires, answers our close with close-ok.
    b.send_method(ch, channel::CloseOk);
    assert_eq!(b.events(), []);
    assert_eq!(b.sent(), []);
    assert!(b.conn.is_open());
}

// ---- 8. content assembly ----

#[test]
fn single_frame_delivery_shares_the_read_buffer() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    let props = BasicProperties {
        content_type: Some(short("text/plain")),
        delivery_mode: Some(2),
        headers: Some(FieldTable::new().with("attempt", 3)),
        ..BasicProperties::default()
    };
    let body = b"hello, world".repeat(100);
    let mut input = BytesMut::new();
    for f in [
        method_frame(ch, deliver(42)),
        header_frame(ch, body.len() as u64, props.clone()),
        body_frame(ch, &body),
    ] {
        f.encode(&mut input);
    }
    let range = input.as_ptr() as usize..input.as_ptr() as usize + input.len();
    b.conn.handle_input(b.now, &mut input);
    assert!(input.is_empty());
    let events = b.events();
    let [Event::Delivery {
        channel,
        deliver: d,
        message,
    }] = &events[..]
    else {
        panic!("expected a delivery, got {events:?}");
    };
    assert_eq!(*channel, ch);
    assert_eq!(d, &deliver(42));
    assert_eq!(message.properties, props);
    assert_eq!(&message.body[..], &body[..]);
    let at = message.body.as_ptr() as usize;
    assert!(
        range.contains(&at) && range.contains(&(at + message.body.len() - 1)),
        "a one-frame body must be a slice of the read buffer, not a copy"
    );
}

#[test]
fn body_split_over_three_frames() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    let body: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    b.send_content(ch, deliver(1), BasicProperties::default(), &body, 400);
    let events = b.events();
    let [Event::Delivery { message, .. }] = &events[..] else {
        panic!("expected a delivery, got {events:?}");
    };
    assert_eq!(&message.body[..], &body[..]);
}

#[test]
fn frames_cut_across_reads() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    let mut input = BytesMut::new();
    for f in [
        method_frame(ch, deliver(1)),
        header_frame(ch, 10, BasicProperties::default()),
        body_frame(ch, b"01234"),
        body_frame(ch, b"56789"),
    ] {
        f.encode(&mut input);
    }
    for chunk in input.chunks(7) {
        assert!(b.events().is_empty());
        b.send_bytes(chunk);
    }
    let events = b.events();
    let [Event::Delivery { message, .. }] = &events[..] else {
        panic!("expected a delivery, got {events:?}");
    };
    assert_eq!(&message.body[..], b"0123456789");
    assert_eq!(b.unread(), 0);
}

#[test]
fn empty_body_needs_no_body_frame() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    b.send_content(ch, deliver(1), BasicProperties::default(), b"", 1);
    assert_eq!(
        b.events(),
        [Event::Delivery {
            channel: ch,
            deliver: deliver(1),
            message: crate::Message::default(),
        }]
    );
    // The channel is ready for the next message at once.
    b.send_content(ch, deliver(2), BasicProperties::default(), b"x", 1);
    assert!(
        matches!(&b.events()[..], [Event::Delivery { deliver, .. }] if deliver.delivery_tag == 2)
    );
    assert!(b.conn.is_open());
}

#[test]
fn body_longer_than_declared_is_unexpected_frame() {
    for pieces in [&[&b"abcdef"[..]][..], &[b"abc", b"def"]] {
        let mut b = Broker::handshake();
        let ch = b.open_channel();
        let mut frames = vec![
            method_frame(ch, deliver(1)),
            header_frame(ch, 5, BasicProperties::default()),
        ];
        frames.extend(pieces.iter().map(|p| body_frame(ch, p)));
        b.send_frames(&frames);
        let err = b.closed();
        assert!(
            matches!(&err, ConnectionError::UnexpectedFrame(w) if w.contains("longer")),
            "{err:?}"
        );
        assert_eq!(
            b.sent_connection_close().reply_code,
            ReplyCode::UNEXPECTED_FRAME
        );
    }
}

#[test]
fn method_in_the_middle_of_a_message_is_unexpected_frame() {
    // After the method, and after part of the body.
    for body_first in [false, true] {
        let mut b = Broker::handshake();
        let ch = b.open_channel();
        let mut frames = vec![method_frame(ch, deliver(1))];
        if body_first {
            frames.push(header_frame(ch, 10, BasicProperties::default()));
            frames.push(body_frame(ch, b"1234"));
        }
        frames.push(method_frame(
            ch,
            basic::Ack {
                delivery_tag: 1,
                multiple: false,
            },
        ));
        b.send_frames(&frames);
        let events = b.events();
        assert!(
            matches!(&events[..], [Event::Closed(ConnectionError::UnexpectedFrame(w))] if w.contains("middle")),
            "{events:?}"
        );
        assert_eq!(
            b.sent_connection_close().reply_code,
            ReplyCode::UNEXPECTED_FRAME
        );
    }
}

#[test]
fn header_or_body_without_method_is_unexpected_frame() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    b.send_frames(&[header_frame(ch, 1, BasicProperties::default())]);
    assert!(matches!(b.closed(), ConnectionError::UnexpectedFrame(_)));
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    b.send_frames(&[method_frame(ch, deliver(1)), body_frame(ch, b"x")]);
    assert!(matches!(b.closed(), ConnectionError::UnexpectedFrame(_)));
}

#[test]
fn message_over_max_message_size() {
    let config = Config {
        max_message_size: 1000,
        ..Config::default()
    };
    let mut b = Broker::handshake_with(config, TUNE);
    let ch = b.open_channel();
    // Exactly the limit is fine.
    b.send_content(ch, deliver(1), BasicProperties::default(), &[0; 1000], 600);
    assert!(matches!(&b.events()[..], [Event::Delivery { .. }]));
    // One byte more ends the connection as soon as the header says so.
    b.send_frames(&[
        method_frame(ch, deliver(2)),
        header_frame(ch, 1001, BasicProperties::default()),
    ]);
    let err = b.closed();
    assert_eq!(
        err,
        ConnectionError::MessageTooLarge {
            size: 1001,
            max: 1000
        }
    );
    assert_eq!(b.sent_connection_close().reply_code, ReplyCode::FRAME_ERROR);
}

#[test]
fn deliveries_interleaved_across_channels() {
    let mut b = Broker::handshake();
    let one = b.open_channel();
    let two = b.open_channel();
    b.send_frames(&[
        method_frame(one, deliver(1)),
        method_frame(two, deliver(7)),
        header_frame(one, 6, BasicProperties::default()),
        header_frame(
            two,
            4,
            BasicProperties {
                priority: Some(5),
                ..BasicProperties::default()
            },
        ),
        body_frame(one, b"aaa"),
        body_frame(two, b"bbbb"),
        body_frame(one, b"AAA"),
    ]);
    let events = b.events();
    assert_eq!(events.len(), 2, "{events:?}");
    let Event::Delivery {
        channel,
        deliver: d,
        message,
    } = &events[0]
    else {
        panic!("{events:?}")
    };
    assert_eq!((*channel, d.delivery_tag), (two, 7));
    assert_eq!(&message.body[..], b"bbbb");
    assert_eq!(message.properties.priority, Some(5));
    let Event::Delivery {
        channel,
        deliver: d,
        message,
    } = &events[1]
    else {
        panic!("{events:?}")
    };
    assert_eq!((*channel, d.delivery_tag), (one, 1));
    assert_eq!(&message.body[..], b"aaaAAA");
    assert_eq!(message.properties, BasicProperties::default());
}

#[test]
fn basic_get_ok_and_get_empty() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    let get = basic::Get {
        queue: short("q"),
        no_ack: false,
    };
    assert!(b.conn.call(ch, get.clone().into()).unwrap());
    assert!(b.conn.call(ch, get.clone().into()).unwrap());
    assert!(b.conn.call(ch, queue_declare("after").into()).unwrap());
    assert_eq!(b.sent().len(), 3);
    let get_ok = basic::GetOk {
        delivery_tag: 5,
        redelivered: true,
        exchange: short(""),
        routing_key: short("q"),
        message_count: 0,
    };
    let props = BasicProperties {
        message_id: Some(short("m-1")),
        ..BasicProperties::default()
    };
    b.send_content(ch, get_ok.clone(), props.clone(), b"payload", 3);
    b.send_method(ch, basic::GetEmpty);
    let declare_ok = queue::DeclareOk {
        queue: short("after"),
        message_count: 0,
        consumer_count: 0,
    };
    b.send_method(ch, declare_ok.clone());
    assert_eq!(
        b.events(),
        [
            Event::Reply {
                channel: ch,
                reply: Reply::GetOk {
                    get_ok,
                    message: crate::Message {
                        properties: props,
                        body: Bytes::from_static(b"payload"),
                    },
                },
            },
            Event::Reply {
                channel: ch,
                reply: Reply::Method(Method::BasicGetEmpty(basic::GetEmpty)),
            },
            Event::Reply {
                channel: ch,
                reply: Reply::Method(declare_ok.into()),
            },
        ]
    );
    assert!(b.conn.is_open());
}

#[test]
fn get_ok_without_get_is_unexpected() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    b.send_content(
        ch,
        basic::GetOk {
            delivery_tag: 1,
            redelivered: false,
            exchange: short(""),
            routing_key: short("q"),
            message_count: 0,
        },
        BasicProperties::default(),
        b"x",
        1,
    );
    assert!(matches!(b.closed(), ConnectionError::UnexpectedFrame(_)));
}

#[test]
fn basic_return_with_content() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    let ret = basic::Return {
        reply_code: ReplyCode::NO_ROUTE,
        reply_text: short("NO_ROUTE"),
        exchange: short("amq.direct"),
        routing_key: short("nowhere"),
    };
    b.send_content(ch, ret.clone(), BasicProperties::default(), b"lost", 2);
    assert_eq!(
        b.events(),
        [Event::Returned {
            channel: ch,
            returned: ret,
            message: crate::Message {
                properties: BasicProperties::default(),
                body: Bytes::from_static(b"lost"),
            },
        }]
    );
}

// ---- 9. publishing ----

#[test]
fn publish_splits_body_at_frame_max() {
    let mut b = Broker::handshake_with(Config::default(), tune(2047, 8192, 0));
    let ch = b.open_channel();
    let body: Bytes = (0..20_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let publish = basic::Publish {
        exchange: short("ex"),
        routing_key: short("rk"),
        mandatory: true,
        immediate: false,
    };
    let props = BasicProperties {
        content_type: Some(short("application/octet-stream")),
        ..BasicProperties::default()
    };
    assert_eq!(
        b.conn.basic_publish(ch, &publish, &props, body.clone()),
        Ok(None)
    );
    let sent = b.sent();
    assert_eq!(sent.first(), Some(&method_frame(ch, publish)));
    assert_eq!(
        sent.get(1),
        Some(&header_frame(ch, body.len() as u64, props))
    );
    let mut joined = Vec::new();
    let mut sizes = Vec::new();
    for f in &sent[2..] {
        let Frame::Body { channel, body } = f else {
            panic!("expected body frames, got {f:?}");
        };
        assert_eq!(*channel, ch);
        sizes.push(body.len());
        joined.extend_from_slice(body);
    }
    let max_payload = 8192 - frame::FRAME_OVERHEAD;
    assert!(sizes.iter().all(|&s| s <= max_payload), "{sizes:?}");
    assert_eq!(sizes, [8184, 8184, 20_000 - 2 * 8184]);
    assert_eq!(joined, body);
}

#[test]
fn publish_empty_body_sends_no_body_frame() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    b.conn
        .basic_publish(
            ch,
            &basic::Publish::default(),
            &BasicProperties::default(),
            Bytes::new(),
        )
        .unwrap();
    assert_eq!(
        b.sent(),
        [
            method_frame(ch, basic::Publish::default()),
            header_frame(ch, 0, BasicProperties::default())
        ]
    );
}

#[test]
fn publish_small_bodies_in_one_frame() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    for body in [&b"x"[..], b"hello"] {
        b.conn
            .basic_publish(
                ch,
                &basic::Publish::default(),
                &BasicProperties::default(),
                Bytes::copy_from_slice(body),
            )
            .unwrap();
        assert_eq!(
            b.sent(),
            [
                method_frame(ch, basic::Publish::default()),
                header_frame(ch, body.len() as u64, BasicProperties::default()),
                body_frame(ch, body),
            ]
        );
    }
}

#[test]
fn publish_with_properties_too_large_sends_nothing() {
    let mut b = Broker::handshake_with(Config::default(), tune(2047, 8192, 0));
    let ch = b.open_channel();
    let big = LongStr::from(vec![b'x'; 9000]);
    let props = BasicProperties {
        headers: Some(FieldTable::new().with("big", big)),
        ..BasicProperties::default()
    };
    let result = b.conn.basic_publish(
        ch,
        &basic::Publish::default(),
        &props,
        Bytes::from_static(b"x"),
    );
    assert!(matches!(result, Err(ChannelError::Encode(_))), "{result:?}");
    assert_eq!(b.conn.pending_bytes(), 0);
    assert!(b.sent().is_empty());
}

#[test]
fn confirm_mode_sequence_numbers_and_confirms() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    let publish = |b: &mut Broker| {
        b.conn.basic_publish(
            ch,
            &basic::Publish::default(),
            &BasicProperties::default(),
            Bytes::from_static(b"m"),
        )
    };
    assert_eq!(
        publish(&mut b),
        Ok(None),
        "no sequence numbers before confirm.select"
    );
    assert_eq!(b.conn.next_publish_seq(ch), None);
    assert!(b
        .conn
        .call(ch, confirm::Select { nowait: false }.into())
        .unwrap());
    assert_eq!(b.conn.next_publish_seq(ch), Some(1));
    // Publishes right after select count from 1, before select-ok arrives.
    assert_eq!(publish(&mut b), Ok(Some(1)));
    assert_eq!(publish(&mut b), Ok(Some(2)));
    b.send_method(ch, confirm::SelectOk);
    assert_eq!(
        b.events(),
        [Event::Reply {
            channel: ch,
            reply: Reply::Method(confirm::SelectOk.into())
        }]
    );
    assert_eq!(publish(&mut b), Ok(Some(3)));
    assert_eq!(b.conn.next_publish_seq(ch), Some(4));
    let sent = b.sent();
    assert!(sent.contains(&method_frame(ch, confirm::Select { nowait: false })));
    assert_eq!(
        sent.iter()
            .filter(|f| matches!(
                f,
                Frame::Method {
                    method: Method::BasicPublish(_),
                    ..
                }
            ))
            .count(),
        4
    );
    b.send_method(
        ch,
        basic::Ack {
            delivery_tag: 2,
            multiple: true,
        },
    );
    b.send_method(
        ch,
        basic::Nack {
            delivery_tag: 3,
            multiple: false,
            requeue: false,
        },
    );
    assert_eq!(
        b.events(),
        [
            Event::Confirm {
                channel: ch,
                delivery_tag: 2,
                multiple: true,
                ack: true
            },
            Event::Confirm {
                channel: ch,
                delivery_tag: 3,
                multiple: false,
                ack: false
            },
        ]
    );
    assert!(b.sent().is_empty());
}

#[test]
fn consumer_ack_goes_out_as_is() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    let ack = basic::Ack {
        delivery_tag: 77,
        multiple: true,
    };
    b.conn.send(ch, &ack).unwrap();
    assert_eq!(b.sent(), [method_frame(ch, ack)]);
}

#[test]
fn basic_publish_sends_the_publish_as_given() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    let publish = basic::Publish {
        exchange: short("ex"),
        routing_key: ShortStr::from_bytes(&b"key-\xff"[..]).unwrap(),
        mandatory: false,
        immediate: true,
    };
    b.conn
        .basic_publish(ch, &publish, &BasicProperties::default(), Bytes::new())
        .unwrap();
    assert_eq!(b.sent().first(), Some(&method_frame(ch, publish)));
}

#[test]
fn update_secret_reply_on_channel_zero() {
    let mut b = Broker::handshake();
    b.conn
        .update_secret(LongStr::from("new-token"), "refresh")
        .unwrap();
    assert_eq!(
        b.sent(),
        [method_frame(
            0,
            connection::UpdateSecret {
                new_secret: LongStr::from("new-token"),
                reason: short("refresh"),
            }
        )]
    );
    b.send_method(0, connection::UpdateSecretOk);
    assert_eq!(
        b.events(),
        [Event::Reply {
            channel: 0,
            reply: Reply::Method(connection::UpdateSecretOk.into()),
        }]
    );
    // A second update-secret-ok answers nothing.
    b.send_method(0, connection::UpdateSecretOk);
    assert!(matches!(b.closed(), ConnectionError::UnexpectedFrame(_)));
    assert_eq!(
        b.sent_connection_close().reply_code,
        ReplyCode::UNEXPECTED_FRAME
    );
}

// ---- 10. server-side consumer cancel ----

#[test]
fn server_cancel_is_answered_unless_nowait() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    b.send_method(
        ch,
        basic::Cancel {
            consumer_tag: short("amq.ctag-1"),
            nowait: false,
        },
    );
    assert_eq!(
        b.sent(),
        [method_frame(
            ch,
            basic::CancelOk {
                consumer_tag: short("amq.ctag-1")
            }
        )]
    );
    assert_eq!(
        b.events(),
        [Event::ConsumerCancelled {
            channel: ch,
            consumer_tag: short("amq.ctag-1")
        }]
    );
    b.send_method(
        ch,
        basic::Cancel {
            consumer_tag: short("amq.ctag-2"),
            nowait: true,
        },
    );
    assert!(b.sent().is_empty());
    assert_eq!(
        b.events(),
        [Event::ConsumerCancelled {
            channel: ch,
            consumer_tag: short("amq.ctag-2")
        }]
    );
}

#[test]
fn server_flow_is_answered() {
    let mut b = Broker::handshake();
    let ch = b.open_channel();
    b.send_method(ch, channel::Flow { active: false });
    assert_eq!(
        b.sent(),
        [method_frame(ch, channel::FlowOk { active: false })]
    );
    assert_eq!(
        b.events(),
        [Event::Flow {
            channel: ch,
            active: false
        }]
    );
}

// ---- 11. blocked ----

#[test]
fn blocked_and_unblocked() {
    let mut b = Broker::handshake();
    assert_eq!(b.conn.blocked(), None);
    b.send_method(
        0,
        connection::Blocked {
            reason: short("low on memory"),
        },
    );
    assert_eq!(
        b.events(),
        [Event::Blocked {
            reason: "low on memory".into()
        }]
    );
    assert_eq!(b.conn.blocked(), Some("low on memory"));
    b.send_method(0, connection::Unblocked);
    assert_eq!(b.events(), [Event::Unblocked]);
    assert_eq!(b.conn.blocked(), None);
    assert!(b.sent().is_empty());
}

// ---- 12. heartbeats ----

const SECOND: Duration = Duration::from_secs(1);

/// Handshake with heartbeat 10 s, with the clock moving one second between steps: tune-ok is
/// sent at t0+2 and open-ok received at t0+3.
fn heartbeat_broker() -> Broker {
    let mut b = Broker::new(Config::default());
    let t0 = b.now;
    assert_eq!(b.conn.poll_timeout(), None);
    b.sent();
    b.advance(SECOND);
    b.send_method(0, start("PLAIN"));
    b.sent();
    b.advance(SECOND);
    b.send_method(0, tune(2047, 131_072, 10));
    b.sent();
    b.advance(SECOND);
    b.send_method(0, connection::OpenOk);
    assert_eq!(b.events(), [Event::Connected]);
    assert_eq!(b.now, t0 + 3 * SECOND);
    b
}

#[test]
fn heartbeat_deadline_is_last_sent_plus_interval() {
    let mut b = heartbeat_broker();
    let last_sent = b.now - SECOND;
    assert_eq!(b.conn.poll_timeout(), Some(last_sent + 10 * SECOND));
    // Just before: nothing.
    b.now = last_sent + 10 * SECOND - Duration::from_millis(1);
    b.timeout();
    assert_eq!(b.conn.pending_bytes(), 0);
    // At the deadline: one heartbeat frame.
    b.now = last_sent + 10 * SECOND;
    b.timeout();
    let raw = b.sent_raw();
    assert_eq!(&raw[..], &[8, 0, 0, 0, 0, 0, 0, 0xCE]);
    assert!(b.events().is_empty());
    // Sending restarts the interval.
    assert_eq!(b.conn.poll_timeout(), Some(b.now + 10 * SECOND));
}

#[test]
fn sending_anything_postpones_the_heartbeat() {
    let mut b = heartbeat_broker();
    b.advance(5 * SECOND);
    b.send_frames(&[Frame::Heartbeat]);
    let ch = {
        let (id, _) = b.conn.open_channel().unwrap();
        b.sent();
        id
    };
    let sent_at = b.now;
    assert_eq!(b.conn.poll_timeout(), Some(sent_at + 10 * SECOND));
    b.advance(9 * SECOND);
    b.send_method(ch, channel::OpenOk);
    b.timeout();
    assert!(b.sent().is_empty());
}

#[test]
fn heartbeats_every_interval_while_the_server_talks() {
    let mut b = heartbeat_broker();
    let start = b.now;
    let mut heartbeats = Vec::new();
    // The server sends a heartbeat every 5 s; the client only ever sends heartbeats.
    for second in 1..=60u32 {
        b.advance(SECOND);
        if second % 5 == 0 {
            b.send_frames(&[Frame::Heartbeat]);
        }
        if b.conn.poll_timeout().is_some_and(|t| t <= b.now) {
            b.timeout();
        }
        for f in b.sent() {
            assert_eq!(f, Frame::Heartbeat);
            heartbeats.push(b.now - start);
        }
    }
    assert!(b.events().is_empty(), "the connection must stay up");
    assert!(b.conn.is_open());
    // tune-ok went out at start - 1 s, so heartbeats at +9, +19, ... +59.
    let expected: Vec<_> = (0..6).map(|k| (9 + 10 * k) * SECOND).collect();
    assert_eq!(heartbeats, expected);
}

#[test]
fn silence_for_two_intervals_is_heartbeat_timeout() {
    let mut b = heartbeat_broker();
    let last_received = b.now;
    let mut heartbeats = 0;
    // Drive the timer as a driver would; the server says nothing.
    for _ in 0..10 {
        let Some(deadline) = b.conn.poll_timeout() else {
            break;
        };
        assert!(
            deadline <= last_received + 20 * SECOND,
            "no timer past the dead line"
        );
        assert!(
            deadline > b.now,
            "the timer must move on after handle_timeout"
        );
        b.now = deadline;
        b.timeout();
        heartbeats += b.sent().len();
    }
    assert_eq!(b.now, last_received + 20 * SECOND);
    assert_eq!(
        heartbeats, 2,
        "the client kept sending heartbeats meanwhile"
    );
    assert_eq!(b.closed(), ConnectionError::HeartbeatTimeout(10));
    assert_eq!(b.conn.poll_timeout(), None);
}

#[test]
fn no_heartbeat_timeout_just_before_two_intervals() {
    let mut b = heartbeat_broker();
    b.now += 20 * SECOND - Duration::from_millis(1);
    b.timeout();
    assert!(b.conn.is_open());
    assert!(b.events().is_empty());
    // One read resets the dead line.
    b.send_frames(&[Frame::Heartbeat]);
    b.now += 19 * SECOND;
    b.timeout();
    assert!(b.conn.is_open());
}

#[test]
fn heartbeats_disabled_means_no_timer() {
    let config = Config {
        heartbeat: Heartbeat::Disabled,
        ..Config::default()
    };
    let mut b = Broker::handshake_with(config, tune(2047, 131_072, 60));
    assert_eq!(b.conn.negotiated().heartbeat, 0);
    assert_eq!(b.conn.poll_timeout(), None);
    b.advance(Duration::from_secs(3600));
    b.timeout();
    assert!(b.sent().is_empty());
    assert!(b.events().is_empty());
    assert!(b.conn.is_open());
}

// ---- helpers used by several tests ----

fn queue_declare(name: &str) -> queue::Declare {
    queue::Declare {
        queue: ShortStr::try_from(name).unwrap(),
        passive: false,
        durable: true,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::new(),
    }
}

/// After the connection is closed, every command fails and sends nothing.
fn assert_commands_fail(b: &mut Broker, ch: u16) {
    assert!(b.conn.is_closed());
    assert!(b.conn.open_channel().is_err());
    assert!(b.conn.call(ch, queue_declare("q").into()).is_err());
    assert!(b
        .conn
        .send(
            ch,
            &basic::Ack {
                delivery_tag: 1,
                multiple: false
            }
        )
        .is_err());
    assert!(b
        .conn
        .basic_publish(
            ch,
            &basic::Publish::default(),
            &BasicProperties::default(),
            Bytes::from_static(b"x")
        )
        .is_err());
    assert!(b.conn.update_secret(LongStr::from("t"), "r").is_err());
    b.conn.close(ReplyCode::REPLY_SUCCESS, "late");
    b.conn.handle_timeout(b.now + Duration::from_secs(3600));
    b.conn.handle_transport_closed("late".into());
    assert_eq!(b.conn.poll_event(), None);
    assert_eq!(b.conn.pending_bytes(), 0);
    assert_eq!(b.conn.poll_timeout(), None);
}

// ---- 13. property: arbitrary server bytes after the handshake ----

mod prop {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    /// One step of a run: server bytes, or something the application or the clock does.
    #[derive(Debug, Clone)]
    enum Step {
        Feed(Vec<u8>),
        /// The same bytes in two reads, cut at `cut % len`.
        FeedSplit(Vec<u8>, usize),
        OpenChannel,
        Declare(u16),
        Get(u16),
        CloseChannel(u16),
        Publish(u16, usize),
        Tick(u64),
        Close,
    }

    fn encoded(frames: &[Frame]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        for f in frames {
            f.encode(&mut buf);
        }
        buf.to_vec()
    }

    /// Server input: raw garbage, well-formed frames with garbage payloads, and real frames on
    /// channels that may or may not be open, in any order.
    /// Mostly channels that may be open, sometimes channel 0.
    fn chan() -> impl Strategy<Value = u16> + Clone {
        prop_oneof![1 => Just(0u16), 8 => 1u16..4]
    }

    fn server_bytes() -> impl Strategy<Value = Vec<u8>> {
        let ch = chan();
        prop_oneof![
            1 => vec(any::<u8>(), 0..48),
            1 => (1u8..=3, ch.clone(), vec(any::<u8>(), 0..24)).prop_map(|(kind, ch, payload)| {
                let mut out = vec![kind];
                out.extend_from_slice(&ch.to_be_bytes());
                out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                out.extend_from_slice(&payload);
                out.push(0xCE);
                out
            }),
            3 => (ch.clone(), any::<u64>()).prop_map(|(ch, tag)| encoded(&[method_frame(ch, deliver(tag))])),
            3 => (ch.clone(), 0u64..40).prop_map(|(ch, size)| {
                encoded(&[header_frame(ch, size, BasicProperties::default())])
            }),
            3 => (ch.clone(), vec(any::<u8>(), 0..40)).prop_map(|(ch, b)| encoded(&[body_frame(ch, &b)])),
            1 => (ch.clone(), any::<u64>(), any::<bool>(), any::<bool>()).prop_map(|(ch, tag, multiple, ack)| {
                if ack {
                    encoded(&[method_frame(ch, basic::Ack { delivery_tag: tag, multiple })])
                } else {
                    encoded(&[method_frame(ch, basic::Nack { delivery_tag: tag, multiple, requeue: false })])
                }
            }),
            3 => (ch.clone(), 0usize..8).prop_map(|(ch, which)| {
                let m: Method = match which {
                    0 => channel::OpenOk.into(),
                    1 => channel::CloseOk.into(),
                    2 => channel_close(ReplyCode::NOT_FOUND, "NOT_FOUND", 50, 10).into(),
                    3 => queue::DeclareOk { queue: short("q"), message_count: 1, consumer_count: 0 }.into(),
                    4 => basic::GetEmpty.into(),
                    5 => basic::Cancel { consumer_tag: short("c"), nowait: false }.into(),
                    6 => channel::Flow { active: false }.into(),
                    _ => basic::GetOk {
                        delivery_tag: 1,
                        redelivered: false,
                        exchange: short(""),
                        routing_key: short("q"),
                        message_count: 0,
                    }
                    .into(),
                };
                encoded(&[method_frame(ch, m)])
            }),
            1 => (0usize..5).prop_map(|which| {
                let f = match which {
                    0 => Frame::Heartbeat,
                    1 => method_frame(0, connection::Blocked { reason: short("r") }),
                    2 => method_frame(0, connection::Unblocked),
                    3 => method_frame(0, connection::CloseOk),
                    _ => method_frame(0, connection_close(ReplyCode::CONNECTION_FORCED, "bye", 0, 0)),
                };
                encoded(&[f])
            }),
        ]
    }

    /// How a well-formed message is spoiled, if at all.
    #[derive(Debug, Clone, Copy)]
    enum Spoil {
        None,
        Drop(usize),
        Duplicate(usize),
        Swap(usize),
        Insert(usize),
    }

    /// A whole content message (deliver, return or get-ok; header; body frames), usually intact,
    /// sometimes with one frame dropped, repeated, swapped or a stray frame put in.
    fn message() -> impl Strategy<Value = Vec<u8>> {
        let spoil = prop_oneof![
            6 => Just(Spoil::None),
            1 => any::<usize>().prop_map(Spoil::Drop),
            1 => any::<usize>().prop_map(Spoil::Duplicate),
            1 => any::<usize>().prop_map(Spoil::Swap),
            1 => any::<usize>().prop_map(Spoil::Insert),
        ];
        (
            1u16..4,
            0usize..3,
            0usize..100,
            1usize..40,
            spoil,
            server_bytes(),
        )
            .prop_map(|(ch, kind, size, piece, spoil, stray)| {
                let method: Method = match kind {
                    0 => deliver(size as u64).into(),
                    1 => basic::Return {
                        reply_code: ReplyCode::NO_ROUTE,
                        reply_text: short("NO_ROUTE"),
                        exchange: short(""),
                        routing_key: short("q"),
                    }
                    .into(),
                    _ => basic::GetOk {
                        delivery_tag: 1,
                        redelivered: false,
                        exchange: short(""),
                        routing_key: short("q"),
                        message_count: 0,
                    }
                    .into(),
                };
                let body: Vec<u8> = (0..size).map(|i| i as u8).collect();
                let mut frames: Vec<Vec<u8>> = vec![
                    encoded(&[method_frame(ch, method)]),
                    encoded(&[header_frame(ch, size as u64, BasicProperties::default())]),
                ];
                frames.extend(body.chunks(piece).map(|c| encoded(&[body_frame(ch, c)])));
                let n = frames.len();
                match spoil {
                    Spoil::None => {}
                    Spoil::Drop(i) => drop(frames.remove(i % n)),
                    Spoil::Duplicate(i) => frames.insert(i % n, frames[i % n].clone()),
                    Spoil::Swap(i) => frames.swap(i % n, (i + 1) % n),
                    Spoil::Insert(i) => frames.insert(i % (n + 1), stray),
                }
                frames.concat()
            })
    }

    fn step() -> impl Strategy<Value = Step> {
        let ch = 1u16..4;
        prop_oneof![
            6 => vec(server_bytes(), 1..4).prop_map(|chunks| Step::Feed(chunks.concat())),
            6 => vec(message(), 1..4).prop_map(|m| Step::Feed(m.concat())),
            3 => (message(), any::<usize>()).prop_map(|(m, cut)| Step::FeedSplit(m, cut)),
            1 => Just(Step::OpenChannel),
            1 => ch.clone().prop_map(Step::Declare),
            1 => ch.clone().prop_map(Step::Get),
            1 => ch.clone().prop_map(Step::CloseChannel),
            1 => (ch, 0usize..20_000).prop_map(|(ch, len)| Step::Publish(ch, len)),
            1 => (0u64..12).prop_map(Step::Tick),
            1 => Just(Step::Close),
        ]
    }

    fn run(b: &mut Broker, step: &Step) {
        // Command results do not matter here, only that nothing panics and the state holds.
        match step {
            Step::Feed(bytes) => b.send_bytes(bytes),
            Step::FeedSplit(bytes, cut) => {
                let (a, z) = bytes.split_at(cut % bytes.len().max(1));
                b.send_bytes(a);
                b.send_bytes(z);
            }
            Step::OpenChannel => drop(b.conn.open_channel()),
            Step::Declare(ch) => drop(b.conn.call(*ch, queue_declare("q").into())),
            Step::Get(ch) => drop(
                b.conn.call(
                    *ch,
                    basic::Get {
                        queue: short("q"),
                        no_ack: true,
                    }
                    .into(),
                ),
            ),
            Step::CloseChannel(ch) => drop(b.conn.call(
                *ch,
                channel_close(ReplyCode::REPLY_SUCCESS, "", 0, 0).into(),
            )),
            Step::Publish(ch, len) => drop(b.conn.basic_publish(
                *ch,
                &basic::Publish::default(),
                &BasicProperties::default(),
                Bytes::from(vec![7u8; *len]),
            )),
            Step::Tick(secs) => {
                b.advance(Duration::from_secs(*secs));
                b.timeout();
            }
            Step::Close => b.conn.close(ReplyCode::REPLY_SUCCESS, "done"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_input_never_panics_and_closed_is_final(
            opened in 0usize..4,
            steps in vec(step(), 0..64),
        ) {
            let config = Config {
                max_message_size: 1 << 20,
                ..Config::default()
            };
            let mut b = Broker::handshake_with(config, tune(4, 8192, 10));
            for _ in 0..opened {
                b.open_channel();
            }
            let mut closed_seen = false;
            for step in &steps {
                run(&mut b, step);
                // Whatever the client writes is whole, decodable frames.
                b.sent();
                for event in b.events() {
                    prop_assert!(!closed_seen, "event {:?} after Closed", event);
                    closed_seen = matches!(event, Event::Closed(_));
                }
                prop_assert_eq!(closed_seen, b.conn.is_closed());
            }
            if !closed_seen {
                b.conn.handle_transport_closed("end of test".into());
                b.sent();
                let events = b.events();
                prop_assert!(matches!(events.last(), Some(Event::Closed(_))), "{:?}", events);
            }
            prop_assert!(b.conn.is_closed());
            // After Closed: every command fails, nothing is queued, and events run dry.
            let ch = 1;
            prop_assert!(b.conn.open_channel().is_err());
            prop_assert!(b.conn.call(ch, queue_declare("q").into()).is_err());
            let ack = basic::Ack { delivery_tag: 1, multiple: false };
            prop_assert!(b.conn.send(ch, &ack).is_err());
            prop_assert!(b
                .conn
                .basic_publish(ch, &basic::Publish::default(), &BasicProperties::default(), Bytes::new())
                .is_err());
            prop_assert!(b.conn.update_secret(LongStr::from("t"), "r").is_err());
            b.conn.close(ReplyCode::REPLY_SUCCESS, "again");
            b.send_bytes(&encoded(&[method_frame(0, connection::CloseOk)]));
            b.conn.handle_timeout(b.now + Duration::from_secs(3600));
            prop_assert_eq!(b.conn.poll_timeout(), None);
            prop_assert_eq!(b.conn.pending_bytes(), 0);
            let mut left = 0;
            while b.conn.poll_event().is_some() {
                left += 1;
                prop_assert!(left < 1000, "poll_event never runs dry");
            }
            prop_assert_eq!(b.conn.poll_event(), None);
        }
    }
}
