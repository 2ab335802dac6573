//! The broker model: virtual hosts with their exchanges and queues, and the connections
//! attached to them.

pub(crate) mod dead_letter;
pub(crate) mod exchange;
pub(crate) mod queue;

use rustc_hash::FxHashMap;
use std::time::{Duration, Instant, SystemTime};

use lepus_wire::{FieldTable, FieldValue};

use exchange::Exchange;
pub use exchange::ExchangeKind;
use queue::Queue;

/// Identifies one connection to a [`Broker`](crate::Broker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection {}", self.0)
    }
}

/// A virtual host: its exchanges and queues.
#[derive(Debug)]
pub(crate) struct Vhost {
    pub(crate) exchanges: FxHashMap<String, Exchange>,
    pub(crate) queues: FxHashMap<String, Queue>,
}

impl Vhost {
    /// A vhost with the exchanges RabbitMQ declares in every one.
    pub(crate) fn new() -> Self {
        let mut exchanges = FxHashMap::default();
        for (name, kind) in [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            exchanges.insert(name.to_owned(), Exchange::new(name, kind));
        }
        Self {
            exchanges,
            queues: FxHashMap::default(),
        }
    }
}

/// How a [`Broker`](crate::Broker) presents itself and what it accepts.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Users and their passwords; `guest`/`guest` by default.
    pub users: Vec<(String, String)>,
    /// Virtual hosts; `/` by default.
    pub vhosts: Vec<String>,
    /// The largest channel number offered in `connection.tune` (RabbitMQ: 2047).
    pub channel_max: u16,
    /// The largest frame offered in `connection.tune` (RabbitMQ: 131072).
    pub frame_max: u32,
    /// The heartbeat interval offered in `connection.tune`, in seconds (RabbitMQ: 60).
    pub heartbeat: u16,
    /// The largest message body accepted (RabbitMQ 3.10: 128 MiB).
    pub max_message_size: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            users: vec![("guest".to_owned(), "guest".to_owned())],
            vhosts: vec!["/".to_owned()],
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
            max_message_size: 128 * 1024 * 1024,
        }
    }
}

/// What a queue holds, as an operator would see it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QueueInfo {
    /// The queue's name.
    pub name: String,
    /// Messages ready for delivery.
    pub messages_ready: usize,
    /// Messages delivered and not yet acknowledged.
    pub messages_unacknowledged: usize,
    /// Consumers attached.
    pub consumers: usize,
    /// Declared durable (which means nothing in memory).
    pub durable: bool,
    /// Declared exclusive to one connection.
    pub exclusive: bool,
    /// Declared auto-delete.
    pub auto_delete: bool,
    /// The arguments it was declared with.
    pub arguments: FieldTable,
}

impl QueueInfo {
    pub(crate) fn of(q: &Queue) -> Self {
        Self {
            name: q.name.to_string(),
            messages_ready: q.ready_count(),
            messages_unacknowledged: q.unacked,
            consumers: q.consumers.len(),
            durable: q.durable,
            exclusive: q.owner.is_some(),
            auto_delete: q.auto_delete,
            arguments: q.arguments.clone(),
        }
    }
}

/// What an exchange is, as an operator would see it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ExchangeInfo {
    /// The exchange's name.
    pub name: String,
    /// Its kind.
    pub kind: ExchangeKind,
    /// How many bindings lead from it.
    pub bindings: usize,
    /// Declared auto-delete.
    pub auto_delete: bool,
    /// Declared internal.
    pub internal: bool,
}

/// Wall-clock time derived from the monotonic `now` the caller passes in, so the broker never
/// reads a clock itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) base: Instant,
    pub(crate) wall: SystemTime,
}

impl Clock {
    pub(crate) fn unix_secs(&self, now: Instant) -> u64 {
        let wall = self.wall + now.saturating_duration_since(self.base);
        wall.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs()
    }
}

/// RabbitMQ's name for a field value's type, as its error texts print it.
pub(crate) fn type_name(v: &FieldValue) -> &'static str {
    match v {
        FieldValue::Bool(_) => "bool",
        FieldValue::I8(_) => "byte",
        FieldValue::U8(_) => "unsignedbyte",
        FieldValue::I16(_) => "short",
        FieldValue::U16(_) => "unsignedshort",
        FieldValue::I32(_) => "signedint",
        FieldValue::U32(_) => "unsignedint",
        FieldValue::I64(_) => "long",
        FieldValue::F32(_) => "float",
        FieldValue::F64(_) => "double",
        FieldValue::Decimal(_) => "decimal",
        FieldValue::LongStr(_) => "longstr",
        FieldValue::Bytes(_) => "binary",
        FieldValue::Array(_) => "array",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Table(_) => "table",
        _ => "void",
    }
}

/// A field value as RabbitMQ's error texts print it.
pub(crate) fn show_value(v: &FieldValue) -> String {
    match v {
        FieldValue::Bool(b) => b.to_string(),
        FieldValue::LongStr(s) => s.to_string_lossy().into_owned(),
        FieldValue::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        FieldValue::F32(f) => f.to_string(),
        FieldValue::F64(f) => f.to_string(),
        other => match other.as_i64() {
            Some(n) => n.to_string(),
            None => format!("{other:?}"),
        },
    }
}
