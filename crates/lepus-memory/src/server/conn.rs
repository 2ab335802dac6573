//! The server side of one connection: its handshake phase, channels and output buffer.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use lepus_wire::method::basic;
use lepus_wire::{frame, FieldTable, MethodArgs, ReplyCode, ShortStr, FRAME_END};

use crate::broker::queue::{Content, Entry};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for the protocol header.
    Header,
    StartOk,
    TuneOk,
    Open,
    Running,
    /// The server sent `connection.close` and waits for `close-ok`.
    Closing,
}

/// A message delivered on a channel and not settled yet.
#[derive(Debug)]
pub(crate) struct Unacked {
    pub(crate) queue: Arc<str>,
    pub(crate) entry: Entry,
    /// The consumer it went to; `None` for `basic.get`.
    pub(crate) consumer: Option<ShortStr>,
}

/// A consumer as its channel sees it.
#[derive(Debug)]
pub(crate) struct ChanConsumer {
    pub(crate) queue: Arc<str>,
    pub(crate) no_ack: bool,
    pub(crate) prefetch: u16,
    pub(crate) unacked: u32,
}

/// A settlement made inside a transaction, applied at commit.
#[derive(Debug)]
pub(crate) enum TxSettle {
    Ack(Unacked),
    Requeue(Unacked),
    Discard(Unacked),
}

/// What a transaction holds until commit.
#[derive(Debug, Default)]
pub(crate) struct Tx {
    pub(crate) publishes: Vec<crate::server::basic::Published>,
    pub(crate) settles: Vec<(u64, TxSettle)>,
}

/// A message being received: the publish, then its header, then its body frames.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) publish: basic::Publish,
    pub(crate) properties: Option<lepus_wire::BasicProperties>,
    /// The content header frame as received.
    pub(crate) header: Bytes,
    pub(crate) size: u64,
    pub(crate) body: BytesMut,
    pub(crate) first: Option<Bytes>,
}

/// One open channel.
#[derive(Debug, Default)]
pub(crate) struct Channel {
    /// The server closed the channel and waits for `close-ok`.
    pub(crate) closing: bool,
    pub(crate) next_tag: u64,
    pub(crate) unacked: BTreeMap<u64, Unacked>,
    /// Prefetch for consumers started from now on (`basic.qos`, global = false).
    pub(crate) prefetch: u16,
    /// Prefetch shared by all the channel's consumers (`basic.qos`, global = true).
    pub(crate) global_prefetch: u16,
    /// Deliveries to consumers not yet settled.
    pub(crate) consumer_unacked: u32,
    pub(crate) consumers: FxHashMap<ShortStr, ChanConsumer>,
    pub(crate) confirm: bool,
    pub(crate) publish_seq: u64,
    pub(crate) confirmed: u64,
    pub(crate) tx: Option<Tx>,
    pub(crate) incoming: Option<Incoming>,
    /// The direct reply-to consumer: its tag and its reply address.
    pub(crate) reply_to: Option<(ShortStr, String)>,
    pub(crate) flow_paused: bool,
    pub(crate) last_queue: Option<String>,
}

impl Channel {
    /// Whether the consumer `tag` may take one more message.
    pub(crate) fn can_take(&self, tag: &ShortStr) -> bool {
        if self.closing || self.flow_paused {
            return false;
        }
        let Some(c) = self.consumers.get(tag) else {
            return false;
        };
        c.no_ack
            || ((c.prefetch == 0 || c.unacked < u32::from(c.prefetch))
                && (self.global_prefetch == 0
                    || self.consumer_unacked < u32::from(self.global_prefetch)))
    }

    /// Forgets a settled delivery's place in its consumer's window.
    pub(crate) fn settled(&mut self, consumer: Option<&ShortStr>) {
        if let Some(c) = consumer.and_then(|tag| self.consumers.get_mut(tag)) {
            c.unacked = c.unacked.saturating_sub(1);
            self.consumer_unacked = self.consumer_unacked.saturating_sub(1);
        } else if consumer.is_some() {
            self.consumer_unacked = self.consumer_unacked.saturating_sub(1);
        }
    }
}

/// The server side of one connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) phase: Phase,
    pub(crate) vhost: Arc<str>,
    pub(crate) user: String,
    pub(crate) frame_max: u32,
    pub(crate) channel_max: u16,
    pub(crate) heartbeat: u16,
    pub(crate) channels: FxHashMap<u16, Channel>,
    pub(crate) out: BytesMut,
    /// The client understands server-sent `basic.cancel`.
    pub(crate) cancel_notify: bool,
    /// The client understands `connection.blocked`.
    pub(crate) blocked_notify: bool,
    pub(crate) client_properties: FieldTable,
    pub(crate) last_recv: Instant,
    pub(crate) last_sent: Instant,
    /// Close the transport once the output is written.
    pub(crate) close_transport: bool,
    /// Already in the broker's list of connections with output.
    pub(crate) woken: bool,
    /// Deliveries held back because the output was over its high-water mark when taken.
    pub(crate) throttled: bool,
}

impl Conn {
    pub(crate) fn new(frame_max: u32, now: Instant) -> Self {
        Self {
            phase: Phase::Header,
            vhost: Arc::from("/"),
            user: String::new(),
            frame_max,
            channel_max: 0,
            heartbeat: 0,
            channels: FxHashMap::default(),
            out: BytesMut::new(),
            cancel_notify: false,
            blocked_notify: false,
            client_properties: FieldTable::new(),
            last_recv: now,
            last_sent: now,
            close_transport: false,
            woken: false,
            throttled: false,
        }
    }

    /// Queues a method frame.
    pub(crate) fn send<M: MethodArgs>(&mut self, channel: u16, method: &M) {
        // Only a table larger than frame_max could fail; what the server sends is small.
        let _ = frame::encode_method(&mut self.out, channel, method, self.frame_max.max(4096));
    }

    /// Queues a message's content header (as stored) and its body frames.
    pub(crate) fn send_content(&mut self, channel: u16, content: &Content) {
        let at = self.out.len();
        self.out.extend_from_slice(&content.header);
        if let Some(slot) = self.out.get_mut(at + 1..at + 3) {
            slot.copy_from_slice(&channel.to_be_bytes());
        }
        self.send_body(channel, &content.body);
    }

    /// Queues the body frames of `body`, split at the connection's frame_max.
    fn send_body(&mut self, channel: u16, body: &[u8]) {
        let max = self.frame_max.max(4096);
        let piece = (max as usize).saturating_sub(8).max(1);
        self.out
            .reserve(body.len() + 8 * body.len().div_ceil(piece));
        for chunk in body.chunks(piece) {
            frame::encode_body_header(&mut self.out, channel, chunk.len());
            self.out.extend_from_slice(chunk);
            self.out.extend_from_slice(&[FRAME_END]);
        }
    }

    /// Queues a delivery to consumer `tag`.
    pub(crate) fn send_deliver(
        &mut self,
        channel: u16,
        tag: &ShortStr,
        delivery_tag: u64,
        entry: &Entry,
    ) {
        let deliver = basic::Deliver {
            consumer_tag: tag.clone(),
            delivery_tag,
            redelivered: entry.redelivered,
            exchange: entry.content.exchange.clone(),
            routing_key: entry.content.routing_key.clone(),
        };
        self.send(channel, &deliver);
        self.send_content(channel, &entry.content);
    }

    /// Queues `channel.close` for a channel error.
    pub(crate) fn send_channel_close(
        &mut self,
        channel: u16,
        code: ReplyCode,
        text: &str,
        class_method: (u16, u16),
    ) {
        let close = lepus_wire::method::channel::Close {
            reply_code: code,
            reply_text: short(text),
            class_id: class_method.0,
            method_id: class_method.1,
        };
        self.send(channel, &close);
    }
}

/// A short string from text.
///
/// Longer texts end in `...` after 252 bytes, as RabbitMQ cuts its reply texts.
pub(crate) fn short(text: &str) -> ShortStr {
    if text.len() <= ShortStr::MAX_LEN {
        return ShortStr::try_from(text).unwrap_or_default();
    }
    let mut end = ShortStr::MAX_LEN - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = format!("{}...", text.get(..end).unwrap_or_default());
    ShortStr::try_from(cut).unwrap_or_default()
}
