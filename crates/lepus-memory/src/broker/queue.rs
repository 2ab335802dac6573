//! Queues: ready messages in order (per priority level), their arguments and consumers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lepus_wire::{BasicProperties, FieldTable, FieldValue, ShortStr};

use super::ConnId;

/// A message's content, shared by every queue it was routed to.
///
/// The content header is kept as the frame the publisher sent (its channel number is patched
/// on delivery), so storing a message keeps no decoded properties and delivering it copies
/// bytes instead of encoding them again.
#[derive(Debug)]
pub(crate) struct Content {
    /// The whole content header frame.
    pub(crate) header: Bytes,
    pub(crate) body: Bytes,
    pub(crate) exchange: ShortStr,
    pub(crate) routing_key: ShortStr,
    /// The `priority` property.
    pub(crate) priority: u8,
}

impl Content {
    /// Content whose header frame is `header`, as received.
    pub(crate) fn received(
        header: Bytes,
        properties: &BasicProperties,
        body: Bytes,
        exchange: ShortStr,
        routing_key: ShortStr,
    ) -> Self {
        Self {
            header,
            priority: properties.priority.unwrap_or(0),
            body,
            exchange,
            routing_key,
        }
    }

    /// Content with `properties`, encoded into a header frame now.
    pub(crate) fn new(
        properties: &BasicProperties,
        body: Bytes,
        exchange: ShortStr,
        routing_key: ShortStr,
    ) -> Self {
        let mut header = bytes::BytesMut::new();
        // No frame limit: a header that fit the publisher's frame still fits.
        let _ = lepus_wire::frame::encode_header(
            &mut header,
            0,
            body.len() as u64,
            properties,
            u32::MAX,
        );
        Self::received(header.freeze(), properties, body, exchange, routing_key)
    }

    /// The message's properties, decoded from its header frame.
    pub(crate) fn properties(&self) -> BasicProperties {
        match lepus_wire::Frame::decode_bytes(&mut self.header.clone(), u32::MAX) {
            Ok(Some(lepus_wire::Frame::Header { header, .. })) => header.properties,
            _ => BasicProperties::default(),
        }
    }
}

/// One message in a queue, or delivered and not settled yet.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) content: Arc<Content>,
    /// Position in the queue: requeued messages go back where they were.
    pub(crate) seq: u64,
    pub(crate) expires_at: Option<Instant>,
    /// How often the message came back to the queue (a quorum queue's `x-delivery-count`).
    pub(crate) returns: u32,
    pub(crate) redelivered: bool,
    pub(crate) priority: u8,
}

impl Entry {
    pub(crate) fn size(&self) -> usize {
        self.content.body.len()
    }
}

/// What happens when a queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

/// The arguments of a queue that change its behaviour.
#[derive(Debug, Clone, Default)]
pub(crate) struct QueueArgs {
    pub(crate) message_ttl: Option<Duration>,
    pub(crate) expires: Option<Duration>,
    pub(crate) max_length: Option<u64>,
    pub(crate) max_length_bytes: Option<u64>,
    pub(crate) overflow: Option<Overflow>,
    pub(crate) max_priority: Option<u8>,
    pub(crate) dead_letter_exchange: Option<String>,
    pub(crate) dead_letter_routing_key: Option<String>,
    pub(crate) single_active_consumer: bool,
    pub(crate) queue_type: QueueType,
    /// Quorum queues: dead-letter a message returned more often than this.
    pub(crate) delivery_limit: Option<u64>,
}

/// The kind of queue, from `x-queue-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum QueueType {
    #[default]
    Classic,
    Quorum,
    Stream,
}

impl QueueType {
    fn module(self) -> &'static str {
        match self {
            Self::Classic => "rabbit_classic_queue",
            Self::Quorum => "rabbit_quorum_queue",
            Self::Stream => "rabbit_stream_queue",
        }
    }

    /// Arguments this kind of queue refuses.
    fn refuses(self, arg: &str) -> bool {
        match self {
            Self::Classic => matches!(arg, "x-delivery-limit" | "x-quorum-initial-group-size"),
            Self::Quorum => matches!(arg, "x-max-priority" | "x-queue-mode"),
            Self::Stream => matches!(
                arg,
                "x-max-length"
                    | "x-message-ttl"
                    | "x-expires"
                    | "x-overflow"
                    | "x-dead-letter-exchange"
                    | "x-dead-letter-routing-key"
                    | "x-delivery-limit"
                    | "x-single-active-consumer"
                    | "x-max-priority"
                    | "x-queue-mode"
            ),
        }
    }
}

/// Why a declaration was refused, worded as RabbitMQ words it once the queue's name and vhost
/// are known.
pub(crate) struct ArgError {
    arg: String,
    reason: ArgReason,
}

enum ArgReason {
    /// `: detail` after the queue.
    Detail(String),
    /// Not for this kind of queue.
    QueueType(QueueType),
    /// A property (not an argument) this kind of queue refuses.
    Property(&'static str),
}

impl ArgError {
    fn detail(arg: &str, detail: impl Into<String>) -> Self {
        Self {
            arg: arg.to_owned(),
            reason: ArgReason::Detail(detail.into()),
        }
    }

    /// The text after `PRECONDITION_FAILED - `.
    pub(crate) fn text(&self, queue: &str, vhost: &str) -> String {
        let arg = &self.arg;
        match &self.reason {
            ArgReason::Detail(d) => {
                format!("invalid arg '{arg}' for queue '{queue}' in vhost '{vhost}': {d}")
            }
            ArgReason::QueueType(t) => format!(
                "invalid arg '{arg}' for queue '{queue}' in vhost '{vhost}' of queue type {}",
                t.module()
            ),
            ArgReason::Property(p) => {
                format!("invalid property '{p}' for queue '{queue}' in vhost '{vhost}'")
            }
        }
    }
}

fn integer(name: &str, v: &FieldValue) -> Result<i64, ArgError> {
    match v.as_i64() {
        Some(n) if !matches!(v, FieldValue::F32(_) | FieldValue::F64(_)) => Ok(n),
        _ => Err(ArgError::detail(
            name,
            format!("\"expected integer, got {}\"", super::type_name(v)),
        )),
    }
}

fn non_negative(name: &str, v: &FieldValue) -> Result<u64, ArgError> {
    let n = integer(name, v)?;
    u64::try_from(n).map_err(|_| ArgError::detail(name, format!("{{value_negative,{n}}}")))
}

impl QueueArgs {
    /// Reads the arguments RabbitMQ validates, with its refusals, for a queue declared with
    /// these properties.
    pub(crate) fn parse(
        args: &FieldTable,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
    ) -> Result<Self, ArgError> {
        let mut out = Self::default();
        if let Some(kind) = args.get("x-queue-type") {
            out.queue_type = match kind.as_str() {
                Some("classic") => QueueType::Classic,
                Some("quorum") => QueueType::Quorum,
                Some("stream") => QueueType::Stream,
                other => {
                    let shown = other.map_or_else(|| super::show_value(kind), str::to_owned);
                    return Err(ArgError::detail(
                        "x-queue-type",
                        format!("\"unsupported queue type '{shown}'\""),
                    ));
                }
            };
        }
        if out.queue_type != QueueType::Classic {
            let property = if auto_delete {
                Some("auto-delete")
            } else if exclusive {
                Some("exclusive-owner")
            } else if !durable {
                Some("non-durable")
            } else {
                None
            };
            if let Some(p) = property {
                return Err(ArgError {
                    arg: String::new(),
                    reason: ArgReason::Property(p),
                });
            }
        }
        for (key, _) in args.iter() {
            let key = key.to_string_lossy();
            if out.queue_type.refuses(&key) {
                return Err(ArgError {
                    arg: key.into_owned(),
                    reason: ArgReason::QueueType(out.queue_type),
                });
            }
        }
        for (key, value) in args.iter() {
            let key = key.to_string_lossy();
            match key.as_ref() {
                "x-message-ttl" => {
                    out.message_ttl = Some(Duration::from_millis(non_negative(&key, value)?));
                }
                "x-expires" => {
                    let ms = non_negative(&key, value)?;
                    if ms == 0 {
                        return Err(ArgError::detail(&key, "{value_zero,0}"));
                    }
                    out.expires = Some(Duration::from_millis(ms));
                }
                "x-max-length" => out.max_length = Some(non_negative(&key, value)?),
                "x-max-length-bytes" => out.max_length_bytes = Some(non_negative(&key, value)?),
                "x-delivery-limit" => out.delivery_limit = Some(non_negative(&key, value)?),
                "x-max-priority" => {
                    let n = non_negative(&key, value)?;
                    if n > 255 {
                        return Err(ArgError::detail(
                            &key,
                            format!("{{max_value_exceeded,{n}}}"),
                        ));
                    }
                    out.max_priority = Some(n as u8);
                }
                "x-overflow" => {
                    out.overflow = Some(match value.as_str() {
                        Some("drop-head") => Overflow::DropHead,
                        Some("reject-publish") => Overflow::RejectPublish,
                        Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                        _ => return Err(ArgError::detail(&key, "invalid_overflow")),
                    });
                }
                "x-dead-letter-exchange" => {
                    out.dead_letter_exchange = value.as_str().map(str::to_owned);
                }
                "x-dead-letter-routing-key" => {
                    out.dead_letter_routing_key = value.as_str().map(str::to_owned);
                }
                "x-single-active-consumer" => {
                    out.single_active_consumer = value.as_bool().unwrap_or(false);
                }
                _ => {}
            }
        }
        if out.dead_letter_routing_key.is_some() && out.dead_letter_exchange.is_none() {
            return Err(ArgError::detail(
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined",
            ));
        }
        Ok(out)
    }
}

/// A consumer as its queue sees it.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerRef {
    pub(crate) conn: ConnId,
    pub(crate) channel: u16,
    pub(crate) tag: ShortStr,
    pub(crate) priority: i64,
    pub(crate) exclusive: bool,
}

/// A queue of a virtual host.
#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) name: Arc<str>,
    pub(crate) durable: bool,
    pub(crate) auto_delete: bool,
    /// The connection an exclusive queue belongs to.
    pub(crate) owner: Option<ConnId>,
    pub(crate) arguments: FieldTable,
    pub(crate) args: QueueArgs,
    /// Ready messages per priority level, lowest first, each in queue order.
    levels: Vec<VecDeque<Entry>>,
    ready_bytes: u64,
    ready_count: usize,
    pub(crate) unacked: usize,
    pub(crate) consumers: Vec<ConsumerRef>,
    /// Round-robin position among consumers.
    pub(crate) next_consumer: usize,
    next_seq: u64,
    pub(crate) had_consumer: bool,
    /// Last use, for `x-expires`.
    pub(crate) last_used: Instant,
}

impl Queue {
    pub(crate) fn new(
        name: Arc<str>,
        durable: bool,
        auto_delete: bool,
        owner: Option<ConnId>,
        arguments: FieldTable,
        args: QueueArgs,
        now: Instant,
    ) -> Self {
        let levels = usize::from(args.max_priority.unwrap_or(0)) + 1;
        Self {
            name,
            durable,
            auto_delete,
            owner,
            arguments,
            args,
            levels: (0..levels).map(|_| VecDeque::new()).collect(),
            ready_bytes: 0,
            ready_count: 0,
            unacked: 0,
            consumers: Vec::new(),
            next_consumer: 0,
            next_seq: 0,
            had_consumer: false,
            last_used: now,
        }
    }

    pub(crate) fn ready_count(&self) -> usize {
        self.ready_count
    }

    /// Gives a new message its place and expiry; `ttl` is the message's own.
    pub(crate) fn stamp(&mut self, entry: &mut Entry, message_ttl: Option<Duration>, now: Instant) {
        entry.seq = self.next_seq;
        self.next_seq += 1;
        let ttl = match (self.args.message_ttl, message_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        entry.expires_at = ttl.map(|t| now + t);
        let max = self.args.max_priority.unwrap_or(0);
        entry.priority = entry.content.priority.min(max);
        if self.args.max_priority.is_none() {
            entry.priority = 0;
        }
    }

    fn level_mut(&mut self, priority: u8) -> Option<&mut VecDeque<Entry>> {
        self.levels.get_mut(usize::from(priority))
    }

    /// Appends a new message at the tail.
    pub(crate) fn push(&mut self, entry: Entry) {
        self.ready_bytes += entry.size() as u64;
        self.ready_count += 1;
        if let Some(level) = self.level_mut(entry.priority) {
            level.push_back(entry);
        }
    }

    /// Puts a delivered message back at its original position, marked redelivered.
    pub(crate) fn requeue(&mut self, mut entry: Entry) {
        entry.redelivered = true;
        entry.returns = entry.returns.saturating_add(1);
        self.ready_bytes += entry.size() as u64;
        self.ready_count += 1;
        if let Some(level) = self.level_mut(entry.priority) {
            let at = level.partition_point(|e| e.seq < entry.seq);
            level.insert(at, entry);
        }
    }

    /// The next message to deliver: the head of the highest non-empty level.
    pub(crate) fn peek(&self) -> Option<&Entry> {
        self.levels.iter().rev().find_map(VecDeque::front)
    }

    /// Takes the next message to deliver.
    pub(crate) fn pop(&mut self) -> Option<Entry> {
        let entry = self.levels.iter_mut().rev().find_map(VecDeque::pop_front)?;
        self.ready_bytes -= entry.size() as u64;
        self.ready_count -= 1;
        Some(entry)
    }

    /// Takes the oldest message of the lowest level (what `drop-head` drops).
    pub(crate) fn pop_oldest_lowest(&mut self) -> Option<Entry> {
        let entry = self.levels.iter_mut().find_map(VecDeque::pop_front)?;
        self.ready_bytes -= entry.size() as u64;
        self.ready_count -= 1;
        Some(entry)
    }

    /// Whether the queue is over one of its limits.
    pub(crate) fn over_limit(&self) -> bool {
        self.args
            .max_length
            .is_some_and(|max| self.ready_count as u64 > max)
            || self
                .args
                .max_length_bytes
                .is_some_and(|max| self.ready_bytes > max)
    }

    /// Whether taking `extra` more bytes in one more message would break a limit.
    pub(crate) fn would_overflow(&self, extra: usize) -> bool {
        self.args
            .max_length
            .is_some_and(|max| self.ready_count as u64 >= max)
            || self
                .args
                .max_length_bytes
                .is_some_and(|max| self.ready_bytes + extra as u64 > max)
    }

    /// Removes every ready message; returns how many.
    pub(crate) fn purge(&mut self) -> usize {
        let n = self.ready_count;
        for level in &mut self.levels {
            level.clear();
        }
        self.ready_count = 0;
        self.ready_bytes = 0;
        n
    }

    /// Drains every ready message (for dead-lettering on deletion is not done: RabbitMQ drops).
    pub(crate) fn earliest_expiry(&self) -> Option<Instant> {
        self.levels
            .iter()
            .filter_map(|l| l.front().and_then(|e| e.expires_at))
            .min()
    }

    /// Takes an expired message off the head of any level.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<Entry> {
        let level = self.levels.iter_mut().find(|l| {
            l.front()
                .and_then(|e| e.expires_at)
                .is_some_and(|t| t <= now)
        })?;
        let entry = level.pop_front()?;
        self.ready_bytes -= entry.size() as u64;
        self.ready_count -= 1;
        Some(entry)
    }

    /// When an unused queue with `x-expires` goes away.
    pub(crate) fn expiry_deadline(&self) -> Option<Instant> {
        if !self.consumers.is_empty() {
            return None;
        }
        self.args.expires.map(|e| self.last_used + e)
    }
}
