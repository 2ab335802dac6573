//! A scripted AMQP 0-9-1 server for what a real RabbitMQ will not do on request: deliver far
//! beyond the prefetch window, answer a request late or never.
//!
//! It speaks just enough of the protocol for the `lepus` binary: the handshake (start, tune,
//! open-ok), channel.open-ok, basic.qos-ok, basic.consume-ok, queue.declare-ok, queue.purge-ok,
//! confirm.select-ok (then one basic.ack per publish), basic.cancel-ok, and the close
//! handshakes of channels and the connection. Acks, nacks and rejects from the client are
//! ignored. What it does beyond that is set by a [`Script`].
//!
//! Each connection gets a reader thread, which decodes the client's frames and decides the
//! replies, and a writer thread, which sends them in order. The writer blocks when the client
//! stops reading, exactly as a broker's socket does: a reply queued behind a flood of
//! deliveries reaches the client only once the client has read the flood.
//!
//! ```text
//! let broker = FakeBroker::start(Script { deliveries: 100_000, ..Script::default() });
//! lepus_bare().args(["--url", &broker.url(), "consume", "--queue", "q", "--count", "1"]);
//! assert!(broker.received().contains(&"basic.cancel".to_string()));
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use lepus::bytes::BytesMut;
use lepus_wire::method::{basic, channel, confirm, connection, queue};
use lepus_wire::{
    frame, BasicProperties, FieldTable, FieldValue, Frame, LongStr, Method, ShortStr, FRAME_END,
};

/// The frame_max the fake broker offers in `connection.tune`.
pub(crate) const FRAME_MAX: u32 = 131_072;

/// What the fake broker does beyond answering requests.
#[derive(Debug, Clone)]
pub(crate) struct Script {
    /// Deliveries sent right after `basic.consume-ok`, whatever the prefetch (all of them,
    /// unless the client closes the connection first).
    pub(crate) deliveries: u64,
    /// Deliveries sent after `basic.cancel` arrives, before `basic.cancel-ok`.
    pub(crate) deliveries_after_cancel: u64,
    /// Body size of each delivery, at least the text `m<delivery tag>` (one body frame: at
    /// most [`FRAME_MAX`] - 8).
    pub(crate) body_size: usize,
    /// When to answer `queue.purge`; `None`: never.
    pub(crate) purge_ok_after: Option<Duration>,
    /// The message count in `queue.purge-ok`.
    pub(crate) purged: u32,
    /// In confirm mode, ack each publish; `false`: never confirm.
    pub(crate) ack_publishes: bool,
}

impl Default for Script {
    /// No deliveries; every request answered at once (publishes acked); `queue.purge-ok` says 0.
    fn default() -> Self {
        Self {
            deliveries: 0,
            deliveries_after_cancel: 0,
            body_size: 0,
            purge_ok_after: Some(Duration::ZERO),
            purged: 0,
            ack_publishes: true,
        }
    }
}

/// A running fake broker on a free port of 127.0.0.1. Its threads end with the test process.
pub(crate) struct FakeBroker {
    port: u16,
    received: Arc<Mutex<Vec<String>>>,
}

impl FakeBroker {
    /// Listens and serves every connection with `script`.
    pub(crate) fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (script, log) = (script.clone(), Arc::clone(&log));
                thread::spawn(move || serve(stream, &script, &log));
            }
        });
        Self { port, received }
    }

    /// The URL to pass to `lepus --url`.
    pub(crate) fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The names of the methods received so far, in order (`basic.cancel`, ...).
    pub(crate) fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }

    /// How many methods of this name were received.
    pub(crate) fn count(&self, name: &str) -> usize {
        self.received().iter().filter(|m| *m == name).count()
    }
}

/// What the reader asks the writer to send.
enum Out {
    /// A method frame on a channel.
    Method(u16, Method),
    /// Deliveries to a consumer; they stop early once the client closes the connection.
    Deliveries {
        channel: u16,
        consumer_tag: ShortStr,
        count: u64,
    },
}

/// Serves one connection until the client closes it or goes away.
fn serve(mut stream: TcpStream, script: &Script, log: &Mutex<Vec<String>>) {
    let mut header = [0u8; 8];
    if stream.read_exact(&mut header).is_err() || &header[..4] != b"AMQP" {
        return;
    }
    let stop_flood = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let writer = {
        let stream = stream.try_clone().unwrap();
        let (stop_flood, body_size) = (Arc::clone(&stop_flood), script.body_size);
        thread::spawn(move || write_all_out(stream, &rx, &stop_flood, body_size))
    };
    let capabilities = FieldTable::new()
        .with("publisher_confirms", true)
        .with("basic.nack", true)
        .with("consumer_cancel_notify", true)
        .with("connection.blocked", true);
    let start = connection::Start {
        server_properties: FieldTable::new()
            .with("product", "lepus fake broker")
            .with("capabilities", FieldValue::Table(capabilities)),
        mechanisms: LongStr::from("PLAIN"),
        ..connection::Start::default()
    };
    send(&tx, 0, start.into());

    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut publish_seq = None::<u64>;
    loop {
        let frame = match Frame::decode(&mut buf, u32::MAX) {
            Ok(Some(frame)) => frame,
            Ok(None) => match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
            },
            Err(_) => break,
        };
        let Frame::Method { channel, method } = frame else {
            continue; // content headers and bodies of publishes, heartbeats
        };
        log.lock().unwrap().push(method.name().to_string());
        match method {
            Method::ConnectionStartOk(_) => {
                let tune = connection::Tune {
                    channel_max: 2047,
                    frame_max: FRAME_MAX,
                    heartbeat: 0,
                };
                send(&tx, 0, tune.into());
            }
            Method::ConnectionOpen(_) => send(&tx, 0, connection::OpenOk.into()),
            Method::ConnectionClose(_) => {
                stop_flood.store(true, Ordering::SeqCst);
                send(&tx, 0, connection::CloseOk.into());
                break;
            }
            Method::ChannelOpen(_) => send(&tx, channel, channel::OpenOk.into()),
            Method::ChannelClose(_) => send(&tx, channel, channel::CloseOk.into()),
            Method::BasicQos(_) => send(&tx, channel, basic::QosOk.into()),
            Method::BasicConsume(c) => {
                let consumer_tag = if c.consumer_tag.is_empty() {
                    ShortStr::from_static("amq.ctag-fake")
                } else {
                    c.consumer_tag
                };
                if !c.nowait {
                    let ok = basic::ConsumeOk {
                        consumer_tag: consumer_tag.clone(),
                    };
                    send(&tx, channel, ok.into());
                }
                let _ = tx.send(Out::Deliveries {
                    channel,
                    consumer_tag,
                    count: script.deliveries,
                });
            }
            Method::BasicCancel(c) => {
                let _ = tx.send(Out::Deliveries {
                    channel,
                    consumer_tag: c.consumer_tag.clone(),
                    count: script.deliveries_after_cancel,
                });
                if !c.nowait {
                    let ok = basic::CancelOk {
                        consumer_tag: c.consumer_tag,
                    };
                    send(&tx, channel, ok.into());
                }
            }
            Method::QueueDeclare(q) => {
                let ok = queue::DeclareOk {
                    queue: q.queue,
                    message_count: 0,
                    consumer_count: 0,
                };
                send(&tx, channel, ok.into());
            }
            Method::QueuePurge(_) => {
                if let Some(after) = script.purge_ok_after {
                    let tx = tx.clone();
                    let ok = queue::PurgeOk {
                        message_count: script.purged,
                    };
                    thread::spawn(move || {
                        thread::sleep(after);
                        send(&tx, channel, ok.into());
                    });
                }
            }
            Method::ConfirmSelect(_) => {
                publish_seq = Some(0);
                send(&tx, channel, confirm::SelectOk.into());
            }
            Method::BasicPublish(_) => {
                if let Some(seq) = publish_seq.as_mut().filter(|_| script.ack_publishes) {
                    *seq += 1;
                    let ack = basic::Ack {
                        delivery_tag: *seq,
                        multiple: false,
                    };
                    send(&tx, channel, ack.into());
                }
            }
            // basic.ack, nack and reject, channel.close-ok, ...: nothing to answer.
            _ => {}
        }
    }
    stop_flood.store(true, Ordering::SeqCst);
    drop(tx);
    let _ = writer.join();
    let _ = stream.shutdown(Shutdown::Both);
}

fn send(tx: &Sender<Out>, channel: u16, method: Method) {
    let _ = tx.send(Out::Method(channel, method));
}

/// The writer thread: sends what the reader queued, in order, until the reader is done or the
/// client goes away.
fn write_all_out(mut stream: TcpStream, rx: &Receiver<Out>, stop_flood: &AtomicBool, size: usize) {
    let mut delivery_tag = 0u64;
    let mut out = BytesMut::new();
    for item in rx {
        match item {
            Out::Method(channel, method) => {
                frame::encode_any_method(&mut out, channel, &method, FRAME_MAX).unwrap();
                if stream.write_all(&out).is_err() {
                    return;
                }
                out.clear();
            }
            Out::Deliveries {
                channel,
                consumer_tag,
                count,
            } => {
                let mut sent = 0;
                while sent < count && !stop_flood.load(Ordering::SeqCst) {
                    // A few at a time, so that a close is noticed soon.
                    for _ in 0..count.saturating_sub(sent).min(32) {
                        delivery_tag += 1;
                        delivery(&mut out, channel, &consumer_tag, delivery_tag, size);
                        sent += 1;
                    }
                    if stream.write_all(&out).is_err() {
                        return;
                    }
                    out.clear();
                }
            }
        }
    }
}

/// Appends one `basic.deliver` with its header and body: `m<tag>`, padded with dots to `size`.
fn delivery(out: &mut BytesMut, channel: u16, consumer_tag: &ShortStr, tag: u64, size: usize) {
    let deliver = basic::Deliver {
        consumer_tag: consumer_tag.clone(),
        delivery_tag: tag,
        redelivered: false,
        exchange: ShortStr::from_static(""),
        routing_key: ShortStr::from_static("fake"),
    };
    let mut body = format!("m{tag}").into_bytes();
    if body.len() < size {
        body.resize(size, b'.');
    }
    frame::encode_method(out, channel, &deliver, FRAME_MAX).unwrap();
    let properties = BasicProperties::default();
    frame::encode_header(out, channel, body.len() as u64, &properties, FRAME_MAX).unwrap();
    frame::encode_body_header(out, channel, body.len());
    out.extend_from_slice(&body);
    out.extend_from_slice(&[FRAME_END]);
}
