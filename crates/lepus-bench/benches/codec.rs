//! Codec throughput, lepus-wire against amq-protocol (lapin's codec), on identical inputs.
//!
//! One message is three frames: `basic.publish` (or `basic.deliver`) + content header (default
//! properties) + one body frame, with a 64-byte and a 4 KiB body. The routing key and consumer
//! tag match the shared peer codec benchmark. Encoding prepares prebuilt values for the socket
//! into a reused buffer: amq-protocol copies every body into it (as lapin does), lepus copies
//! bodies under 4 KiB and queues larger ones by reference for a vectored write (as lepus-proto's
//! transmit queue does). Decoding parses the three frames from contiguous received bytes into owned values,
//! one at a time as a read loop does, and drops each.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use amq_protocol::frame::{gen_frame, parse_frame, AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic as amq_basic, AMQPClass, BasicProperties as AmqProperties};
use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lepus_wire::method::basic;
use lepus_wire::{frame, BasicProperties, ContentHeader, Frame, ShortStr, FRAME_END};

const CHANNEL: u16 = 1;
const FRAME_MAX: u32 = 131_072;
const ROUTING_KEY: &str = "bench.codec.publish.0123456789abcdef";
const CONSUMER_TAG: &str = "amq.ctag-0123456789abcdefghijkl";

#[derive(Clone, Copy)]
enum Kind {
    Publish,
    Deliver,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Deliver => "deliver",
        }
    }
}

fn body(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

// ---- lepus ----

enum LepusMethod {
    Publish(basic::Publish),
    Deliver(basic::Deliver),
}

struct LepusMessage {
    method: LepusMethod,
    header: ContentHeader,
    body: Bytes,
}

fn lepus_message(kind: Kind, payload: &[u8]) -> LepusMessage {
    let method = match kind {
        Kind::Publish => LepusMethod::Publish(basic::Publish {
            routing_key: ShortStr::from_static(ROUTING_KEY),
            ..Default::default()
        }),
        Kind::Deliver => LepusMethod::Deliver(basic::Deliver {
            consumer_tag: ShortStr::from_static(CONSUMER_TAG),
            delivery_tag: 123_456,
            redelivered: false,
            exchange: ShortStr::default(),
            routing_key: ShortStr::from_static(ROUTING_KEY),
        }),
    };
    LepusMessage {
        method,
        header: ContentHeader {
            body_size: payload.len() as u64,
            properties: BasicProperties::default(),
        },
        body: Bytes::copy_from_slice(payload),
    }
}

/// Bodies at least this long go out by reference (a vectored write), as in lepus-proto's
/// transmit queue; shorter ones are copied next to their headers.
const ZERO_COPY_MIN: usize = 4096;

/// Prepares one message for the socket the way lepus does: frames encoded into `out`, a large
/// body queued by reference in `segments` instead of copied.
#[inline]
fn lepus_encode(m: &LepusMessage, out: &mut BytesMut, segments: &mut Vec<Bytes>) {
    match &m.method {
        LepusMethod::Publish(p) => frame::encode_method(out, CHANNEL, p, FRAME_MAX).unwrap(),
        LepusMethod::Deliver(d) => frame::encode_method(out, CHANNEL, d, FRAME_MAX).unwrap(),
    }
    frame::encode_header(
        out,
        CHANNEL,
        m.header.body_size,
        &m.header.properties,
        FRAME_MAX,
    )
    .unwrap();
    frame::encode_body_header(out, CHANNEL, m.body.len());
    if m.body.len() >= ZERO_COPY_MIN {
        segments.push(out.split().freeze());
        segments.push(m.body.clone());
    } else {
        out.extend_from_slice(&m.body);
    }
    out.extend_from_slice(&[FRAME_END]);
}

/// Decodes the three frames the way a read loop does: each frame is looked at, then dropped.
#[inline]
fn lepus_decode(wire: &Bytes) {
    let mut buf = wire.clone();
    for _ in 0..3 {
        let frame: Option<Frame> = Frame::decode_bytes(&mut buf, FRAME_MAX).unwrap();
        black_box(&frame);
    }
    debug_assert!(buf.is_empty());
}

// ---- amq-protocol ----

fn amq_frames(kind: Kind, payload: &[u8]) -> [AMQPFrame; 3] {
    let method = match kind {
        Kind::Publish => amq_basic::AMQPMethod::Publish(amq_basic::Publish {
            exchange: "".into(),
            routing_key: ROUTING_KEY.into(),
            mandatory: false,
            immediate: false,
        }),
        Kind::Deliver => amq_basic::AMQPMethod::Deliver(amq_basic::Deliver {
            consumer_tag: CONSUMER_TAG.into(),
            delivery_tag: 123_456,
            redelivered: false,
            exchange: "".into(),
            routing_key: ROUTING_KEY.into(),
        }),
    };
    [
        AMQPFrame::Method(CHANNEL, AMQPClass::Basic(method)),
        AMQPFrame::Header(
            CHANNEL,
            AMQPContentHeader {
                class_id: 60,
                body_size: payload.len() as u64,
                properties: AmqProperties::default(),
            },
        ),
        AMQPFrame::Body(CHANNEL, payload.to_vec()),
    ]
}

#[inline]
fn amq_encode(frames: &[AMQPFrame], mut buf: Vec<u8>) -> Vec<u8> {
    for f in frames {
        buf = gen_frame(f)(WriteContext::from(buf))
            .expect("gen_frame")
            .into_inner()
            .0;
    }
    buf
}

/// The same read-loop shape as `lepus_decode`.
#[inline]
fn amq_decode(mut bytes: &[u8]) {
    for _ in 0..3 {
        let (rest, frame) = parse_frame(bytes).expect("parse_frame");
        black_box(&frame);
        bytes = rest;
    }
}

fn codec(c: &mut Criterion) {
    for kind in [Kind::Publish, Kind::Deliver] {
        for size in [64usize, 4096] {
            let payload = body(size);
            let lepus = lepus_message(kind, &payload);
            let amq = amq_frames(kind, &payload);

            // Both codecs must produce the same bytes, or the comparison means nothing.
            let mut lepus_out = BytesMut::new();
            let mut segments = Vec::new();
            lepus_encode(&lepus, &mut lepus_out, &mut segments);
            let mut lepus_wire: Vec<u8> = segments.iter().flat_map(|s| s.to_vec()).collect();
            lepus_wire.extend_from_slice(&lepus_out);
            let amq_wire = amq_encode(&amq, Vec::new());
            assert_eq!(lepus_wire, amq_wire, "codecs disagree");
            let wire = Bytes::from(lepus_wire);

            let mut group = c.benchmark_group(format!("{}-{size}B", kind.name()));
            group.throughput(Throughput::Elements(1));

            let mut out = BytesMut::with_capacity(64 * 1024);
            let mut segments = Vec::with_capacity(4);
            group.bench_function(BenchmarkId::new("encode", "lepus"), |b| {
                b.iter(|| {
                    out.clear();
                    segments.clear();
                    lepus_encode(black_box(&lepus), &mut out, &mut segments);
                    black_box((&out, &segments));
                })
            });
            let mut vec = Vec::with_capacity(2 * wire.len());
            group.bench_function(BenchmarkId::new("encode", "amq-protocol"), |b| {
                b.iter(|| {
                    vec.clear();
                    vec = amq_encode(black_box(&amq), std::mem::take(&mut vec));
                    black_box(&vec);
                })
            });
            group.bench_function(BenchmarkId::new("decode", "lepus"), |b| {
                b.iter(|| lepus_decode(black_box(&wire)))
            });
            group.bench_function(BenchmarkId::new("decode", "amq-protocol"), |b| {
                b.iter(|| amq_decode(black_box(&wire[..])))
            });
            group.finish();
        }
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
