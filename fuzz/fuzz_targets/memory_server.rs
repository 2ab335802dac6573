//! Arbitrary client bytes fed to lepus-memory's in-process broker, after a valid handshake.
//!
//! Connection A is open with channel 1 in confirm mode, consuming from a queue whose messages
//! expire and are dead-lettered; connection B consumes from the same queue with a prefetch of 1.
//! The fuzzer's bytes then go to A in reads whose sizes the data chooses, while the fake clock
//! moves on (message TTLs and heartbeats fall due) and every woken connection's output is taken.
//! The broker must never panic, and everything it writes must decode as AMQP frames.
//!
//! Input layout: the first byte `n` says how many of the following bytes are read sizes; those
//! `n` bytes are used in turn as read sizes (0 means 1) and as clock steps (size × 25 ms); the
//! rest is the client's byte stream.
#![no_main]

use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use lepus_memory::{Broker, BrokerConfig, ConnId};
use lepus_wire::method::{basic, channel, confirm, connection, queue};
use lepus_wire::{FieldTable, FieldValue, Frame, LongStr, MethodArgs, ShortStr, PROTOCOL_HEADER};
use libfuzzer_sys::fuzz_target;

/// Sends one method frame from the scripted client.
fn send<M: MethodArgs>(broker: &mut Broker, id: ConnId, now: Instant, channel: u16, m: &M) {
    let mut buf = BytesMut::new();
    lepus_wire::frame::encode_method(&mut buf, channel, m, u32::MAX)
        .expect("scripted frame encodes");
    broker.handle_input(id, now, &mut buf);
}

/// Takes and decodes what connection `id` has to write; the broker's output must be frames.
fn take(broker: &mut Broker, id: ConnId, now: Instant) {
    while let Some(out) = broker.take_output(id, now) {
        let mut buf = BytesMut::from(&out[..]);
        loop {
            match Frame::decode(&mut buf, u32::MAX) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => panic!("the broker wrote an undecodable frame: {e}"),
            }
        }
        assert!(buf.is_empty(), "the broker wrote a partial frame");
    }
}

/// Takes the output of every woken connection.
fn drain(broker: &mut Broker, now: Instant) {
    while let Some(id) = broker.poll_woken() {
        take(broker, id, now);
    }
}

/// A connection through the handshake (PLAIN guest/guest, heartbeat 1 s, frame_max 8192)
/// with channel 1 open.
fn connect(broker: &mut Broker, now: Instant) -> ConnId {
    let id = broker.open_connection(now);
    broker.handle_input(id, now, &mut BytesMut::from(&PROTOCOL_HEADER[..]));
    let capabilities = FieldTable::new()
        .with("consumer_cancel_notify", true)
        .with("connection.blocked", true)
        .with("publisher_confirms", true)
        .with("basic.nack", true);
    let start_ok = connection::StartOk {
        client_properties: FieldTable::new()
            .with("capabilities", FieldValue::Table(capabilities)),
        mechanism: ShortStr::from_static("PLAIN"),
        response: LongStr::from("\0guest\0guest"),
        locale: ShortStr::from_static("en_US"),
    };
    send(broker, id, now, 0, &start_ok);
    let tune_ok = connection::TuneOk {
        channel_max: 16,
        frame_max: 8192,
        heartbeat: 1,
    };
    send(broker, id, now, 0, &tune_ok);
    let open = connection::Open {
        virtual_host: ShortStr::from_static("/"),
        ..Default::default()
    };
    send(broker, id, now, 0, &open);
    send(broker, id, now, 1, &channel::Open);
    assert!(!broker.wants_close(id), "the scripted handshake is refused");
    id
}

fn consume(broker: &mut Broker, id: ConnId, now: Instant, tag: &'static str) {
    let consume = basic::Consume {
        queue: ShortStr::from_static("q"),
        consumer_tag: ShortStr::from_static(tag),
        ..Default::default()
    };
    send(broker, id, now, 1, &consume);
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len()).min(32);
    let (steps, stream) = rest.split_at(n);
    let steps: &[u8] = if steps.is_empty() { &[64] } else { steps };

    let start = Instant::now();
    let mut now = start;
    let mut broker = Broker::new(BrokerConfig::default(), now, SystemTime::UNIX_EPOCH);
    let a = connect(&mut broker, now);
    let b = connect(&mut broker, now);
    let declare = |name: &'static str, arguments: FieldTable| queue::Declare {
        queue: ShortStr::from_static(name),
        arguments,
        ..Default::default()
    };
    send(&mut broker, a, now, 1, &declare("dead", FieldTable::new()));
    let args = FieldTable::new()
        .with("x-message-ttl", FieldValue::I32(200))
        .with("x-dead-letter-exchange", "")
        .with("x-dead-letter-routing-key", "dead")
        .with("x-max-length", FieldValue::I32(16));
    send(&mut broker, a, now, 1, &declare("q", args));
    send(&mut broker, a, now, 1, &confirm::Select { nowait: false });
    consume(&mut broker, a, now, "a");
    let qos = basic::Qos {
        prefetch_size: 0,
        prefetch_count: 1,
        global: false,
    };
    send(&mut broker, b, now, 1, &qos);
    consume(&mut broker, b, now, "b");
    drain(&mut broker, now);

    let mut input = BytesMut::new();
    let mut stream = stream;
    let mut b_alive = true;
    for &step in steps.iter().cycle() {
        if stream.is_empty() {
            break;
        }
        let (chunk, tail) = stream.split_at(usize::from(step).max(1).min(stream.len()));
        stream = tail;
        input.extend_from_slice(chunk);
        broker.handle_input(a, now, &mut input);
        drain(&mut broker, now);
        if broker.wants_close(a) {
            broker.connection_lost(a, now);
            drain(&mut broker, now);
            return;
        }
        // B stays alive, acking what it got, so the clock never drops it for silence.
        if b_alive {
            let ack = basic::Ack {
                delivery_tag: 0,
                multiple: true,
            };
            send(&mut broker, b, now, 1, &ack);
            drain(&mut broker, now);
            if broker.wants_close(b) {
                broker.connection_lost(b, now);
                b_alive = false;
            }
        }
        now += Duration::from_millis(25 * u64::from(step));
        if broker.poll_timeout().is_some_and(|t| t <= now) {
            broker.handle_timeout(now);
        }
        drain(&mut broker, now);
    }
    broker.handle_timeout(now + Duration::from_secs(10));
    drain(&mut broker, now);
    broker.connection_lost(a, now);
    if b_alive {
        broker.connection_lost(b, now);
    }
    drain(&mut broker, now);
});
