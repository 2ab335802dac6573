//! Arbitrary bytes from a broker, fed to lepus-proto's client state machine once it is open,
//! with a channel that consumes and publishes in confirm mode.
//!
//! The client must never panic, whatever the broker sends: everything ends in events, frames to
//! write, or a connection error. Between reads the fake clock moves on (heartbeats fall due)
//! and the client acks, publishes and opens channels as an application would.
#![no_main]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lepus_proto::wire::method::{basic, channel, confirm, connection};
use lepus_proto::wire::{
    frame, BasicProperties, FieldTable, LongStr, Method, MethodArgs, ShortStr,
};
use lepus_proto::{Config, Connection, Event, Heartbeat};
use libfuzzer_sys::fuzz_target;

/// Delivers one method frame from the scripted broker.
fn send<M: MethodArgs>(conn: &mut Connection, now: Instant, channel: u16, method: &M) {
    let mut buf = BytesMut::new();
    frame::encode_method(&mut buf, channel, method, u32::MAX).expect("scripted frame encodes");
    conn.handle_input(now, &mut buf);
}

/// Takes everything the client wants to write and every event; returns the delivery tags seen.
fn drain(conn: &mut Connection, now: Instant, tags: &mut Vec<u64>) {
    let mut out = VecDeque::new();
    let _ = conn.poll_transmit(now, &mut out);
    while let Some(event) = conn.poll_event() {
        if let Event::Delivery { deliver, .. } = event {
            tags.push(deliver.delivery_tag);
        }
    }
}

/// An open connection with channel 1 consuming and in confirm mode, three publishes unconfirmed.
fn open(now: Instant) -> Connection {
    let mut config = Config::default();
    config.heartbeat = Heartbeat::Secs(1);
    let mut conn = Connection::new(config);
    let start = connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: FieldTable::default(),
        mechanisms: LongStr::from("PLAIN"),
        locales: LongStr::from("en_US"),
    };
    send(&mut conn, now, 0, &start);
    let tune = connection::Tune {
        channel_max: 8,
        frame_max: 8192,
        heartbeat: 1,
    };
    send(&mut conn, now, 0, &tune);
    send(&mut conn, now, 0, &connection::OpenOk);
    let (id, _) = conn.open_channel().expect("a channel opens");
    send(&mut conn, now, id, &channel::OpenOk);
    let select: Method = confirm::Select { nowait: false }.into();
    conn.call(id, select).expect("confirm.select is sent");
    send(&mut conn, now, id, &confirm::SelectOk);
    let consume: Method = basic::Consume {
        queue: ShortStr::from_static("q"),
        consumer_tag: ShortStr::from_static("c"),
        ..Default::default()
    }
    .into();
    conn.call(id, consume).expect("basic.consume is sent");
    let ok = basic::ConsumeOk {
        consumer_tag: ShortStr::from_static("c"),
    };
    send(&mut conn, now, id, &ok);
    for _ in 0..3 {
        let body = Bytes::from_static(b"body");
        let _ = conn.publish(id, "", "q", true, &BasicProperties::default(), body);
    }
    drain(&mut conn, now, &mut Vec::new());
    conn
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks a read size, so frames straddle reads in many ways.
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let mut now = Instant::now();
    let mut conn = open(now);
    let mut buf = BytesMut::new();
    let mut tags = Vec::new();
    for chunk in data.chunks(usize::from(step).max(1)) {
        buf.extend_from_slice(chunk);
        conn.handle_input(now, &mut buf);
        drain(&mut conn, now, &mut tags);
        // What an application does between reads: ack what arrived, publish, open a channel.
        for tag in tags.drain(..) {
            let _ = conn.send(
                1,
                &basic::Ack {
                    delivery_tag: tag,
                    multiple: false,
                },
            );
        }
        let _ = conn.publish(1, "", "q", true, &BasicProperties::default(), Bytes::new());
        let _ = conn.open_channel();
        now += Duration::from_millis(400);
        conn.handle_timeout(now);
        drain(&mut conn, now, &mut tags);
        if conn.is_closed() {
            return;
        }
    }
});
