//! [`Queue`]: a queue as a value, with typed arguments.

use std::time::Duration;

use lepus::{Channel, FieldTable, FieldValue, QueueDeclareOptions, QueueDeclared, ShortStr};

use super::{Binding, Exchange};
use crate::error::{Error, Result};

/// What a full queue does with a new message (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest message: RabbitMQ's default.
    DropHead,
    /// Refuse the new message: a publisher with confirms gets a nack.
    RejectPublish,
    /// Refuse the new message and dead-letter it (classic queues only).
    RejectPublishDlx,
}

impl Overflow {
    /// The value sent to the broker.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DropHead => "drop-head",
            Self::RejectPublish => "reject-publish",
            Self::RejectPublishDlx => "reject-publish-dlx",
        }
    }
}

/// A queue's type (`x-queue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QueueType {
    /// The classic queue.
    Classic,
    /// A replicated Raft queue: durable, never exclusive or auto-delete.
    Quorum,
    /// An append-only log: durable, never exclusive or auto-delete, consumed with a prefetch.
    Stream,
}

impl QueueType {
    /// The value sent to the broker.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
            Self::Stream => "stream",
        }
    }
}

/// The typed queue arguments: each maps to one `x-*` key, durations in milliseconds.
#[derive(Debug, Clone, Default, PartialEq)]
struct Typed {
    message_ttl: Option<Duration>,
    expires: Option<Duration>,
    max_length: Option<u64>,
    max_length_bytes: Option<u64>,
    overflow: Option<Overflow>,
    max_priority: Option<u8>,
    dead_letter_exchange: Option<String>,
    dead_letter_routing_key: Option<String>,
    queue_type: Option<QueueType>,
    delivery_limit: Option<u32>,
    single_active_consumer: Option<bool>,
    consumer_timeout: Option<Duration>,
}

/// A queue, described as a value and declared when used (kombu's `Queue`).
///
/// Defaults as kombu's: durable, not exclusive, not auto-delete, bound to nothing (so reachable
/// through the default exchange by its name). [`exclusive`](Self::exclusive) implies
/// auto-delete. An empty name asks the broker for one; [`declare`](Self::declare) returns it.
///
/// The queue arguments RabbitMQ knows are typed setters (`message_ttl`, `max_length`,
/// `queue_type`, ...) instead of raw `x-*` keys, and a definition RabbitMQ would refuse with
/// 406 (an exclusive quorum queue, a priority stream) is refused locally, with a clear error,
/// before anything is sent.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lepus::ExchangeKind;
/// use lepus_messaging::{Exchange, Overflow, Queue, QueueType};
///
/// let tasks = Queue::new("tasks")
///     .exchange(Exchange::with_kind("work", ExchangeKind::Direct))
///     .routing_key("tasks")
///     .queue_type(QueueType::Quorum)
///     .message_ttl(Duration::from_secs(60))
///     .max_length(10_000)
///     .overflow(Overflow::RejectPublish)
///     .dead_letter_exchange("work.dlx");
/// let args = tasks.queue_arguments().unwrap();
/// assert_eq!(args.get("x-message-ttl").and_then(|v| v.as_i64()), Some(60_000));
/// assert_eq!(args.get("x-queue-type").and_then(|v| v.as_str()), Some("quorum"));
///
/// // RabbitMQ refuses exclusive quorum queues: so does lepus, before sending.
/// assert!(Queue::new("q").queue_type(QueueType::Quorum).exclusive(true).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    name: String,
    exchange: Option<Exchange>,
    routing_key: String,
    bindings: Vec<Binding>,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    typed: Typed,
    arguments: FieldTable,
    binding_arguments: FieldTable,
    consumer_arguments: FieldTable,
    no_declare: bool,
}

impl Queue {
    /// A durable queue of this name (empty: the broker names it).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            exchange: None,
            routing_key: String::new(),
            bindings: Vec::new(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            typed: Typed::default(),
            arguments: FieldTable::default(),
            binding_arguments: FieldTable::default(),
            consumer_arguments: FieldTable::default(),
            no_declare: false,
        }
    }

    /// A queue the broker names when it is declared: exclusive, so auto-delete.
    pub fn server_named() -> Self {
        Self::new("").durable(false).exclusive(true)
    }

    /// The same definition under another name (such as the one the broker gave it).
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The exchange to bind it to, with [`routing_key`](Self::routing_key).
    #[must_use]
    pub fn exchange(mut self, exchange: impl Into<Exchange>) -> Self {
        self.exchange = Some(exchange.into());
        self
    }

    /// The routing key of the binding to [`exchange`](Self::exchange); publishing through a
    /// producer to this queue uses it too.
    #[must_use]
    pub fn routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_key = routing_key.into();
        self
    }

    /// One more binding, declared (its exchange, then the bind) after the queue.
    #[must_use]
    pub fn binding(mut self, binding: Binding) -> Self {
        self.bindings.push(binding);
        self
    }

    /// Whether it survives a broker restart (default `true`).
    #[must_use]
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Whether only this connection may use it; it is then deleted when the connection closes
    /// (and so auto-delete, as kombu).
    #[must_use]
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        if exclusive {
            self.auto_delete = true;
        }
        self
    }

    /// Whether the broker deletes it when its last consumer goes (default `false`).
    #[must_use]
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }

    /// How long a message may wait in it (`x-message-ttl`).
    #[must_use]
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.typed.message_ttl = Some(ttl);
        self
    }

    /// How long it may stay unused before the broker deletes it (`x-expires`).
    #[must_use]
    pub fn expires(mut self, after: Duration) -> Self {
        self.typed.expires = Some(after);
        self
    }

    /// The most messages it holds (`x-max-length`).
    #[must_use]
    pub fn max_length(mut self, messages: u64) -> Self {
        self.typed.max_length = Some(messages);
        self
    }

    /// The most body bytes it holds (`x-max-length-bytes`).
    #[must_use]
    pub fn max_length_bytes(mut self, bytes: u64) -> Self {
        self.typed.max_length_bytes = Some(bytes);
        self
    }

    /// What happens to a message that arrives when it is full (`x-overflow`).
    #[must_use]
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.typed.overflow = Some(overflow);
        self
    }

    /// Makes it a priority queue with priorities 0 to `max` (`x-max-priority`).
    #[must_use]
    pub fn max_priority(mut self, max: u8) -> Self {
        self.typed.max_priority = Some(max);
        self
    }

    /// Where expired, rejected and overflowing messages go (`x-dead-letter-exchange`).
    #[must_use]
    pub fn dead_letter_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.typed.dead_letter_exchange = Some(exchange.into());
        self
    }

    /// The routing key dead-lettered messages get (`x-dead-letter-routing-key`).
    #[must_use]
    pub fn dead_letter_routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.typed.dead_letter_routing_key = Some(routing_key.into());
        self
    }

    /// Its type (`x-queue-type`).
    #[must_use]
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.typed.queue_type = Some(queue_type);
        self
    }

    /// How many times a message may be returned to a quorum queue before it is dropped or
    /// dead-lettered (`x-delivery-limit`).
    #[must_use]
    pub fn delivery_limit(mut self, limit: u32) -> Self {
        self.typed.delivery_limit = Some(limit);
        self
    }

    /// Whether only one consumer at a time gets its messages, the others standing by
    /// (`x-single-active-consumer`).
    #[must_use]
    pub fn single_active_consumer(mut self, on: bool) -> Self {
        self.typed.single_active_consumer = Some(on);
        self
    }

    /// How long a delivery may stay unacknowledged before the broker closes the channel
    /// (`x-consumer-timeout`; needs a broker that allows it per queue).
    #[must_use]
    pub fn consumer_timeout(mut self, timeout: Duration) -> Self {
        self.typed.consumer_timeout = Some(timeout);
        self
    }

    /// One raw queue argument, for what has no typed setter. A typed setter of the same key
    /// wins.
    ///
    /// # Panics
    ///
    /// If `key` is longer than 255 bytes (a literal of that length is a bug); keys not known
    /// until run time go through [`arguments`](Self::arguments).
    #[must_use]
    pub fn argument(mut self, key: &'static str, value: impl Into<FieldValue>) -> Self {
        self.arguments.insert(ShortStr::from_static(key), value);
        self
    }

    /// Replaces the raw queue arguments (typed setters still win).
    #[must_use]
    pub fn arguments(mut self, arguments: FieldTable) -> Self {
        self.arguments = arguments;
        self
    }

    /// Arguments of the binding to [`exchange`](Self::exchange).
    #[must_use]
    pub fn binding_arguments(mut self, arguments: FieldTable) -> Self {
        self.binding_arguments = arguments;
        self
    }

    /// Arguments of `basic.consume` when a consumer subscribes to it.
    #[must_use]
    pub fn consumer_arguments(mut self, arguments: FieldTable) -> Self {
        self.consumer_arguments = arguments;
        self
    }

    /// Never declare it (nor its exchange and bindings): it exists already.
    #[must_use]
    pub fn no_declare(mut self, no_declare: bool) -> Self {
        self.no_declare = no_declare;
        self
    }

    /// Its name (empty until the broker names it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exchange of its main binding, if any.
    pub fn bound_exchange(&self) -> Option<&Exchange> {
        self.exchange.as_ref()
    }

    /// The routing key of its main binding.
    pub fn key(&self) -> &str {
        &self.routing_key
    }

    /// Its further bindings.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// Whether it is durable.
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// Whether it is exclusive.
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }

    /// Whether it is auto-delete.
    pub fn is_auto_delete(&self) -> bool {
        self.auto_delete
    }

    /// Whether [`declare`](Self::declare) is skipped.
    pub fn is_no_declare(&self) -> bool {
        self.no_declare
    }

    /// The `basic.consume` arguments.
    pub fn consume_arguments(&self) -> &FieldTable {
        &self.consumer_arguments
    }

    /// Its type, when set.
    pub fn kind(&self) -> Option<QueueType> {
        self.typed.queue_type
    }

    /// Whether a [`maybe_declare`](crate::Connection::maybe_declare) may remember it as
    /// declared: not when it is auto-delete or exclusive (it may be gone by the next use), or
    /// when it expires (typed or raw `x-expires`; kombu looks only at the raw key).
    pub fn can_cache_declaration(&self) -> bool {
        !(self.auto_delete
            || self.exclusive
            || self.typed.expires.is_some()
            || self.arguments.contains_key("x-expires"))
    }

    /// The queue arguments sent at declaration: the raw ones, overridden by the typed ones.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDeclaration`] for a combination RabbitMQ refuses (see
    /// [`validate`](Self::validate)).
    pub fn queue_arguments(&self) -> Result<FieldTable> {
        self.validate()?;
        let mut args = self.arguments.clone();
        let t = &self.typed;
        let mut set = |key: &'static str, value: FieldValue| {
            args.insert(ShortStr::from_static(key), value);
        };
        if let Some(d) = t.message_ttl {
            set("x-message-ttl", millis(d));
        }
        if let Some(d) = t.expires {
            set("x-expires", millis(d));
        }
        if let Some(n) = t.max_length {
            set("x-max-length", FieldValue::I64(saturating_i64(n)));
        }
        if let Some(n) = t.max_length_bytes {
            set("x-max-length-bytes", FieldValue::I64(saturating_i64(n)));
        }
        if let Some(o) = t.overflow {
            set("x-overflow", FieldValue::from(o.as_str()));
        }
        if let Some(p) = t.max_priority {
            set("x-max-priority", FieldValue::I64(i64::from(p)));
        }
        if let Some(x) = &t.dead_letter_exchange {
            set("x-dead-letter-exchange", FieldValue::from(x.as_str()));
        }
        if let Some(k) = &t.dead_letter_routing_key {
            set("x-dead-letter-routing-key", FieldValue::from(k.as_str()));
        }
        if let Some(q) = t.queue_type {
            set("x-queue-type", FieldValue::from(q.as_str()));
        }
        if let Some(n) = t.delivery_limit {
            set("x-delivery-limit", FieldValue::I64(i64::from(n)));
        }
        if let Some(on) = t.single_active_consumer {
            set("x-single-active-consumer", FieldValue::Bool(on));
        }
        if let Some(d) = t.consumer_timeout {
            set("x-consumer-timeout", millis(d));
        }
        Ok(args)
    }

    /// Checks the definition against what RabbitMQ refuses with 406 PRECONDITION_FAILED, so
    /// the error comes before anything is sent and names the setting.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDeclaration`] naming the queue and the conflict.
    pub fn validate(&self) -> Result<()> {
        let t = &self.typed;
        let raw_type = self
            .arguments
            .get("x-queue-type")
            .and_then(FieldValue::as_str);
        let kind = match (t.queue_type, raw_type) {
            (Some(k), _) => Some(k),
            (None, Some("quorum")) => Some(QueueType::Quorum),
            (None, Some("stream")) => Some(QueueType::Stream),
            (None, _) => None,
        };
        let refuse = |reason: String| {
            Err(Error::InvalidDeclaration {
                entity: format!("queue {:?}", self.name),
                reason,
            })
        };
        if t.message_ttl
            .is_some_and(|d| d.as_millis() > u128::from(u32::MAX))
        {
            return refuse("the message TTL is longer than RabbitMQ allows (2^32-1 ms)".into());
        }
        if t.expires.is_some_and(|d| d.is_zero()) {
            return refuse("expires must be at least 1 ms".into());
        }
        if t.dead_letter_routing_key.is_some()
            && t.dead_letter_exchange.is_none()
            && !self.arguments.contains_key("x-dead-letter-exchange")
        {
            return refuse("a dead-letter routing key needs a dead-letter exchange".into());
        }
        let Some(kind @ (QueueType::Quorum | QueueType::Stream)) = kind else {
            if t.delivery_limit.is_some() {
                return refuse("a delivery limit needs a quorum queue".into());
            }
            return Ok(());
        };
        let what = kind.as_str();
        if self.exclusive {
            return refuse(format!("{what} queues cannot be exclusive"));
        }
        if self.auto_delete {
            return refuse(format!("{what} queues cannot be auto-delete"));
        }
        if !self.durable {
            return refuse(format!("{what} queues must be durable"));
        }
        if t.max_priority.is_some() || self.arguments.contains_key("x-max-priority") {
            return refuse(format!("{what} queues have no priorities (x-max-priority)"));
        }
        if kind == QueueType::Stream {
            let unsupported = [
                (t.message_ttl.is_some(), "a message TTL (use x-max-age)"),
                (t.expires.is_some(), "expires"),
                (t.max_length.is_some(), "a max length in messages"),
                (t.overflow.is_some(), "an overflow policy"),
                (t.dead_letter_exchange.is_some(), "dead-lettering"),
                (t.delivery_limit.is_some(), "a delivery limit"),
                (t.single_active_consumer.is_some(), "single active consumer"),
            ];
            if let Some((_, what)) = unsupported.iter().find(|(set, _)| *set) {
                return refuse(format!("stream queues do not support {what}"));
            }
        }
        Ok(())
    }

    /// Declares it as kombu does: the exchange, the queue, the binding to the exchange (when
    /// it has a name), then each further binding (its exchange, then the bind). Returns the
    /// queue's name (the broker's, for a server-named queue) and counts. With
    /// [`no_declare`](Self::no_declare) nothing is sent and the counts are zero.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDeclaration`] before sending anything; 406 when it exists with other
    /// settings, 405 when another connection holds it exclusively, and connection errors.
    pub async fn declare(&self, channel: &Channel) -> Result<QueueDeclared> {
        if self.no_declare {
            return Ok(QueueDeclared {
                name: self.name.clone(),
                message_count: 0,
                consumer_count: 0,
            });
        }
        let arguments = self.queue_arguments()?;
        if let Some(exchange) = &self.exchange {
            exchange.declare(channel).await?;
        }
        let declared = channel
            .queue_declare(
                self.name.as_str(),
                QueueDeclareOptions {
                    durable: self.durable,
                    exclusive: self.exclusive,
                    auto_delete: self.auto_delete,
                    arguments,
                    ..Default::default()
                },
            )
            .await?;
        self.bind(channel, &declared.name).await?;
        Ok(declared)
    }

    /// Binds the queue named `name` (this one, once declared) as its definition says.
    async fn bind(&self, channel: &Channel, name: &str) -> Result<()> {
        if let Some(exchange) = self.exchange.as_ref().filter(|e| !e.name().is_empty()) {
            Binding::new(exchange.clone())
                .routing_key(self.routing_key.clone())
                .arguments(self.binding_arguments.clone())
                .bind_queue(channel, name)
                .await?;
        }
        for binding in &self.bindings {
            binding.declare(channel).await?;
            binding.bind_queue(channel, name).await?;
        }
        Ok(())
    }

    /// Its counts, without creating it (a passive declare).
    ///
    /// # Errors
    ///
    /// 404 when it does not exist (the channel closes), and connection errors.
    pub async fn declare_passive(&self, channel: &Channel) -> Result<QueueDeclared> {
        Ok(channel.queue_declare_passive(self.name.as_str()).await?)
    }

    /// Removes every message that is ready (not the unacknowledged ones), returning how many.
    ///
    /// # Errors
    ///
    /// 404 when it does not exist, and connection errors.
    pub async fn purge(&self, channel: &Channel) -> Result<u32> {
        Ok(channel.queue_purge(self.name.as_str()).await?)
    }

    /// Deletes it, returning how many messages it held; `if_unused` and `if_empty` make the
    /// broker refuse (406) when it has consumers or messages.
    ///
    /// # Errors
    ///
    /// 406 per the conditions, and connection errors.
    pub async fn delete(&self, channel: &Channel, if_unused: bool, if_empty: bool) -> Result<u32> {
        Ok(channel
            .queue_delete(
                self.name.as_str(),
                lepus::QueueDeleteOptions {
                    if_unused,
                    if_empty,
                    ..Default::default()
                },
            )
            .await?)
    }
}

impl From<&str> for Queue {
    /// A durable queue of this name.
    fn from(name: &str) -> Self {
        Self::new(name)
    }
}

fn millis(d: Duration) -> FieldValue {
    FieldValue::I64(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_implies_auto_delete_as_kombu() {
        let q = Queue::new("q").exclusive(true);
        assert!(q.is_auto_delete());
        assert!(!q.can_cache_declaration());
    }

    #[test]
    fn typed_arguments_override_raw_ones_in_milliseconds() {
        let q = Queue::new("q")
            .argument("x-message-ttl", 5i64)
            .argument("x-custom", "kept")
            .message_ttl(Duration::from_millis(1500))
            .max_length_bytes(u64::MAX);
        let args = q.queue_arguments().unwrap();
        assert_eq!(
            args.get("x-message-ttl").and_then(FieldValue::as_i64),
            Some(1500)
        );
        assert_eq!(
            args.get("x-custom").and_then(FieldValue::as_str),
            Some("kept")
        );
        assert_eq!(
            args.get("x-max-length-bytes").and_then(FieldValue::as_i64),
            Some(i64::MAX)
        );
    }

    #[test]
    fn expiring_queues_are_never_cached() {
        assert!(!Queue::new("q")
            .expires(Duration::from_secs(1))
            .can_cache_declaration());
        assert!(!Queue::new("q")
            .argument("x-expires", 1000i64)
            .can_cache_declaration());
        assert!(Queue::new("q").can_cache_declaration());
    }

    #[test]
    fn refuses_what_rabbitmq_refuses() {
        let quorum = || Queue::new("q").queue_type(QueueType::Quorum);
        for bad in [
            quorum().exclusive(true),
            quorum().auto_delete(true),
            quorum().durable(false),
            quorum().max_priority(5),
            Queue::new("q").queue_type(QueueType::Stream).max_length(5),
            Queue::new("q").delivery_limit(3),
            Queue::new("q")
                .argument("x-queue-type", "quorum")
                .exclusive(true),
        ] {
            let err = bad.validate().unwrap_err();
            assert!(matches!(err, Error::InvalidDeclaration { .. }), "{err}");
        }
        assert!(quorum()
            .delivery_limit(3)
            .single_active_consumer(true)
            .validate()
            .is_ok());
    }
}
