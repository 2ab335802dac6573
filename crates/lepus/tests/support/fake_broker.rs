//! A scripted AMQP 0-9-1 server over TCP, for what a real broker will not do on demand (flood a
//! consumer beyond its prefetch window, answer late, speak another protocol). Each accepted
//! connection runs the test's script with a [`Peer`] that reads and writes frames.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use lepus::bytes::{Bytes, BytesMut};
use lepus::lepus_wire::method::{basic, channel, connection};
use lepus::lepus_wire::{
    BasicProperties, ContentHeader, FieldTable, Frame, LongStr, Method, ShortStr,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// A listening fake server; dropped, it stops accepting.
pub(crate) struct FakeBroker {
    pub(crate) addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FakeBroker {
    /// Runs `script` for every accepted connection.
    pub(crate) async fn start<S, F>(script: S) -> Self
    where
        S: Fn(Peer) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(script(Peer::new(stream)));
            }
        });
        Self { addr, task }
    }

    /// Client options pointing at this server.
    pub(crate) fn options(&self) -> lepus::ConnectionOptions {
        let mut o = lepus::ConnectionOptions::new();
        o.address(self.addr.ip().to_string(), self.addr.port());
        o
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The write side of a [`Peer`], which a task of the script may use while the script reads.
pub(crate) type PeerWriter = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

/// The server's side of one connection.
pub(crate) struct Peer {
    reader: OwnedReadHalf,
    writer: PeerWriter,
    inbound: BytesMut,
}

impl Peer {
    fn new(stream: TcpStream) -> Self {
        let (reader, writer) = stream.into_split();
        Self {
            reader,
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            inbound: BytesMut::new(),
        }
    }

    /// The write side, for a task that writes while the script reads.
    pub(crate) fn writer(&self) -> PeerWriter {
        Arc::clone(&self.writer)
    }

    /// Sends raw bytes.
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.writer.lock().await.write_all(bytes).await;
    }

    /// Sends a method frame.
    pub(crate) async fn send(&mut self, channel: u16, method: impl Into<Method>) {
        let mut out = BytesMut::new();
        Frame::Method {
            channel,
            method: method.into(),
        }
        .encode(&mut out);
        self.send_raw(&out).await;
    }

    /// Appends a `basic.deliver` with a one-frame body to `out`, to send many at once.
    pub(crate) fn encode_delivery(
        out: &mut BytesMut,
        channel: u16,
        consumer_tag: &ShortStr,
        delivery_tag: u64,
        body: &'static [u8],
    ) {
        Frame::Method {
            channel,
            method: basic::Deliver {
                consumer_tag: consumer_tag.clone(),
                delivery_tag,
                redelivered: false,
                exchange: ShortStr::from_static(""),
                routing_key: ShortStr::from_static("q"),
            }
            .into(),
        }
        .encode(out);
        Frame::Header {
            channel,
            header: ContentHeader {
                body_size: body.len() as u64,
                properties: BasicProperties::default(),
            },
        }
        .encode(out);
        Frame::Body {
            channel,
            body: Bytes::from_static(body),
        }
        .encode(out);
    }

    /// The next frame from the client; `None` once it closed the connection. The protocol
    /// header is skipped.
    pub(crate) async fn recv(&mut self) -> Option<Frame> {
        loop {
            if self.inbound.starts_with(b"AMQP") && self.inbound.len() >= 8 {
                let _ = self.inbound.split_to(8);
            }
            if !self.inbound.starts_with(b"AMQP") {
                if let Ok(Some(frame)) = Frame::decode(&mut self.inbound, u32::MAX) {
                    return Some(frame);
                }
            }
            match self.reader.read_buf(&mut self.inbound).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next method frame, skipping heartbeats and content; `None` once the client closed.
    pub(crate) async fn recv_method(&mut self) -> Option<(u16, Method)> {
        loop {
            match self.recv().await? {
                Frame::Method { channel, method } => return Some((channel, method)),
                _ => continue,
            }
        }
    }

    /// Plays a broker's part of the handshake: start, tune (no heartbeats), open-ok.
    pub(crate) async fn handshake(&mut self) {
        self.send(
            0,
            connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: FieldTable::new().with("product", "fake broker"),
                mechanisms: LongStr::from("PLAIN AMQPLAIN"),
                locales: LongStr::from("en_US"),
            },
        )
        .await;
        self.expect(|m| matches!(m, Method::ConnectionStartOk(_)))
            .await;
        self.send(
            0,
            connection::Tune {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 0,
            },
        )
        .await;
        self.expect(|m| matches!(m, Method::ConnectionTuneOk(_)))
            .await;
        self.expect(|m| matches!(m, Method::ConnectionOpen(_)))
            .await;
        self.send(0, connection::OpenOk).await;
    }

    /// Reads methods until one matches `wanted`, and returns its channel and the method.
    pub(crate) async fn expect(&mut self, wanted: impl Fn(&Method) -> bool) -> (u16, Method) {
        loop {
            let Some((channel, method)) = self.recv_method().await else {
                panic!("the client closed the connection while the script waited");
            };
            if wanted(&method) {
                return (channel, method);
            }
        }
    }

    /// Answers the usual requests of a consuming client (channel.open, basic.qos,
    /// queue.declare) until `basic.consume`, which it answers with consume-ok; returns the
    /// channel and consumer tag.
    pub(crate) async fn serve_until_consume(&mut self) -> (u16, ShortStr) {
        loop {
            let Some((channel, method)) = self.recv_method().await else {
                panic!("the client closed the connection before consuming");
            };
            match method {
                Method::ChannelOpen(_) => self.send(channel, channel::OpenOk).await,
                Method::BasicQos(_) => self.send(channel, basic::QosOk).await,
                Method::QueueDeclare(d) => {
                    let ok = lepus::lepus_wire::method::queue::DeclareOk {
                        queue: d.queue,
                        message_count: 0,
                        consumer_count: 0,
                    };
                    self.send(channel, ok).await;
                }
                Method::BasicConsume(c) => {
                    let tag = if c.consumer_tag.is_empty() {
                        ShortStr::from_static("amq.ctag-fake")
                    } else {
                        c.consumer_tag
                    };
                    let ok = basic::ConsumeOk {
                        consumer_tag: tag.clone(),
                    };
                    self.send(channel, ok).await;
                    return (channel, tag);
                }
                _ => {}
            }
        }
    }

    /// Answers channel.close and connection.close politely until the client goes away.
    pub(crate) async fn serve_closing(&mut self) {
        while let Some((channel, method)) = self.recv_method().await {
            match method {
                Method::ChannelClose(_) => self.send(channel, channel::CloseOk).await,
                Method::ConnectionClose(_) => {
                    self.send(0, connection::CloseOk).await;
                    return;
                }
                _ => {}
            }
        }
    }
}
