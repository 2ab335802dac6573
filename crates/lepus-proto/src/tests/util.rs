//! A scripted broker: encodes server frames, feeds them to a [`Connection`], and decodes what
//! the client wrote. No sockets; the clock is an [`Instant`] moved forward by hand.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lepus_wire::method::{basic, channel, connection};
use lepus_wire::{
    BasicProperties, ContentHeader, FieldTable, FieldValue, Frame, LongStr, Method, ReplyCode,
    ShortStr, PROTOCOL_HEADER,
};

use crate::{Config, Connection, ConnectionError, Event};

/// What the scripted server proposes in `connection.tune` unless a test says otherwise.
pub(super) const TUNE: connection::Tune = connection::Tune {
    channel_max: 2047,
    frame_max: 131_072,
    heartbeat: 0,
};

/// The server side of one connection, with the client under test and a fake clock.
pub(super) struct Broker {
    /// The client under test.
    pub(super) conn: Connection,
    /// The fake clock.
    pub(super) now: Instant,
    /// Server bytes the client has not consumed yet (a partial frame stays here).
    inbound: BytesMut,
    /// Client bytes not yet decoded (a partial frame would stay here).
    outbound: BytesMut,
    /// Whether the 8-byte protocol header was taken off the client's output.
    header_seen: bool,
}

impl Broker {
    /// A fresh client, before anything was read or written.
    pub(super) fn new(config: Config) -> Self {
        Self {
            conn: Connection::new(config),
            now: Instant::now(),
            inbound: BytesMut::new(),
            outbound: BytesMut::new(),
            header_seen: false,
        }
    }

    /// A client with the default config, opened against the default tune.
    pub(super) fn handshake() -> Self {
        Self::handshake_with(Config::default(), TUNE)
    }

    /// Runs start → start-ok, tune → tune-ok + open, open-ok → `Connected`, checking each step.
    pub(super) fn handshake_with(config: Config, tune: connection::Tune) -> Self {
        let mut b = Self::new(config);
        b.send_method(0, start("AMQPLAIN PLAIN"));
        let sent = b.sent();
        assert!(
            matches!(
                &sent[..],
                [Frame::Method {
                    channel: 0,
                    method: Method::ConnectionStartOk(_)
                }]
            ),
            "expected start-ok, got {sent:?}"
        );
        b.send_method(0, tune);
        let sent = b.sent();
        assert!(
            matches!(
                &sent[..],
                [
                    Frame::Method {
                        channel: 0,
                        method: Method::ConnectionTuneOk(_)
                    },
                    Frame::Method {
                        channel: 0,
                        method: Method::ConnectionOpen(_)
                    },
                ]
            ),
            "expected tune-ok and open, got {sent:?}"
        );
        b.send_method(0, connection::OpenOk);
        assert_eq!(b.events(), [Event::Connected]);
        assert!(b.conn.is_open());
        assert!(b.sent().is_empty());
        b
    }

    /// Moves the fake clock forward.
    pub(super) fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Delivers raw bytes from the server in one read.
    pub(super) fn send_bytes(&mut self, bytes: &[u8]) {
        self.inbound.extend_from_slice(bytes);
        self.conn.handle_input(self.now, &mut self.inbound);
    }

    /// Encodes frames and delivers them in one read.
    pub(super) fn send_frames(&mut self, frames: &[Frame]) {
        let mut buf = BytesMut::new();
        for f in frames {
            f.encode(&mut buf);
        }
        self.send_bytes(&buf);
    }

    /// Delivers one method frame.
    pub(super) fn send_method(&mut self, channel: u16, method: impl Into<Method>) {
        self.send_frames(&[method_frame(channel, method)]);
    }

    /// Delivers a content-carrying method, its header, and the body cut into `piece`-byte frames
    /// (no body frame for an empty body), all in one read.
    pub(super) fn send_content(
        &mut self,
        channel: u16,
        method: impl Into<Method>,
        properties: BasicProperties,
        body: &[u8],
        piece: usize,
    ) {
        let mut frames = vec![
            method_frame(channel, method),
            header_frame(channel, body.len() as u64, properties),
        ];
        frames.extend(body.chunks(piece).map(|c| body_frame(channel, c)));
        self.send_frames(&frames);
    }

    /// Server bytes the client has not consumed.
    pub(super) fn unread(&self) -> usize {
        self.inbound.len()
    }

    /// Takes the client's first output, which must be the protocol header and nothing else.
    pub(super) fn take_header(&mut self) {
        assert!(!self.header_seen);
        assert_eq!(&self.sent_raw()[..], &PROTOCOL_HEADER);
        self.header_seen = true;
    }

    /// Drains `poll_transmit` and returns the bytes, the protocol header included.
    pub(super) fn sent_raw(&mut self) -> Bytes {
        let mut chunks = VecDeque::new();
        let n = self.conn.poll_transmit(self.now, &mut chunks);
        let mut out = BytesMut::new();
        for c in chunks {
            out.extend_from_slice(&c);
        }
        assert_eq!(
            n,
            out.len(),
            "poll_transmit's count disagrees with its chunks"
        );
        assert_eq!(self.conn.pending_bytes(), 0);
        out.freeze()
    }

    /// Drains `poll_transmit` and decodes what the client wrote. The first call checks and
    /// strips the protocol header. Every frame must be complete.
    pub(super) fn sent(&mut self) -> Vec<Frame> {
        let raw = self.sent_raw();
        self.outbound.extend_from_slice(&raw);
        if !self.header_seen {
            assert!(
                self.outbound.starts_with(&PROTOCOL_HEADER),
                "client must start with the protocol header, sent {:?}",
                &self.outbound[..]
            );
            let _ = self.outbound.split_to(PROTOCOL_HEADER.len());
            self.header_seen = true;
        }
        let mut frames = Vec::new();
        while let Some(f) = Frame::decode(&mut self.outbound, u32::MAX).expect("client frame") {
            frames.push(f);
        }
        assert!(
            self.outbound.is_empty(),
            "client left a partial frame: {:?}",
            &self.outbound[..]
        );
        frames
    }

    /// Drains `poll_event`.
    pub(super) fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.conn.poll_event()).collect()
    }

    /// Calls `handle_timeout` at the current fake time.
    pub(super) fn timeout(&mut self) {
        self.conn.handle_timeout(self.now);
    }

    /// Opens a channel and completes it with open-ok; returns its id.
    pub(super) fn open_channel(&mut self) -> u16 {
        let (id, _) = self.conn.open_channel().expect("open_channel");
        assert_eq!(
            self.sent(),
            [method_frame(id, channel::Open)],
            "channel.open on {id}"
        );
        self.send_method(id, channel::OpenOk);
        assert_eq!(
            self.events(),
            [Event::Reply {
                channel: id,
                reply: crate::Reply::Method(channel::OpenOk.into()),
            }]
        );
        id
    }

    /// The events so far must end in exactly one `Closed`; returns its error.
    pub(super) fn closed(&mut self) -> ConnectionError {
        let events = self.events();
        let closed: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, Event::Closed(_)))
            .collect();
        assert_eq!(closed.len(), 1, "expected one Closed event in {events:?}");
        let Some(Event::Closed(err)) = events.last() else {
            panic!("Closed must be the last event: {events:?}");
        };
        assert!(self.conn.is_closed());
        assert!(!self.conn.is_open());
        err.clone()
    }

    /// What the client sent must be exactly one `connection.close`; returns it.
    pub(super) fn sent_connection_close(&mut self) -> connection::Close {
        let sent = self.sent();
        match &sent[..] {
            [Frame::Method {
                channel: 0,
                method: Method::ConnectionClose(c),
            }] => c.clone(),
            _ => panic!("expected one connection.close, got {sent:?}"),
        }
    }
}

pub(super) fn method_frame(channel: u16, method: impl Into<Method>) -> Frame {
    Frame::Method {
        channel,
        method: method.into(),
    }
}

pub(super) fn header_frame(channel: u16, body_size: u64, properties: BasicProperties) -> Frame {
    Frame::Header {
        channel,
        header: ContentHeader {
            body_size,
            properties,
        },
    }
}

pub(super) fn body_frame(channel: u16, body: &[u8]) -> Frame {
    Frame::Body {
        channel,
        body: Bytes::copy_from_slice(body),
    }
}

pub(super) fn short(s: &str) -> ShortStr {
    ShortStr::try_from(s).expect("short string")
}

/// RabbitMQ-like server properties.
pub(super) fn server_properties() -> FieldTable {
    let capabilities = FieldTable::new()
        .with("publisher_confirms", true)
        .with("basic.nack", true)
        .with("connection.blocked", true);
    FieldTable::new()
        .with("product", "RabbitMQ")
        .with("version", "4.0.5")
        .with("capabilities", FieldValue::Table(capabilities))
}

/// `connection.start` for 0-9 offering `mechanisms`.
pub(super) fn start(mechanisms: &'static str) -> connection::Start {
    connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: server_properties(),
        mechanisms: LongStr::from(mechanisms),
        locales: LongStr::from("en_US"),
    }
}

pub(super) fn connection_close(
    code: ReplyCode,
    text: &str,
    class: u16,
    method: u16,
) -> connection::Close {
    connection::Close {
        reply_code: code,
        reply_text: short(text),
        class_id: class,
        method_id: method,
    }
}

pub(super) fn channel_close(
    code: ReplyCode,
    text: &str,
    class: u16,
    method: u16,
) -> channel::Close {
    channel::Close {
        reply_code: code,
        reply_text: short(text),
        class_id: class,
        method_id: method,
    }
}

pub(super) fn deliver(tag: u64) -> basic::Deliver {
    basic::Deliver {
        consumer_tag: short("ctag"),
        delivery_tag: tag,
        redelivered: false,
        exchange: short("ex"),
        routing_key: short("rk"),
    }
}
