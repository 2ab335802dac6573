//! [`Consumer`]: decoded messages from one or more queues, as a stream or through a handler.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::stream::{SelectAll, StreamExt};
use futures_util::FutureExt;
use lepus::{BasicConsumeOptions, BasicQosOptions, Channel, FieldTable, FieldValue, ShortStr};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::connection::Connection;
use crate::entity::Queue;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::serializer::Accept;

/// A callback of [`DecodeErrorPolicy::Callback`]: the message and why it cannot be handed
/// over.
pub type DecodeErrorCallback = Arc<dyn Fn(&Message, &Error) + Send + Sync>;

/// What a consumer does with a message it cannot hand over: its content type is not in the
/// accept list, its body does not inflate, or (for a typed handler) it does not decode.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum DecodeErrorPolicy {
    /// Reject it without requeue, so that a dead-letter exchange catches it, and log one
    /// line (the default).
    #[default]
    Reject,
    /// Reject it with requeue: the broker delivers it again (to a consumer that accepts it,
    /// one hopes).
    Requeue,
    /// Acknowledge it: it is dropped (kombu's `ConsumerMixin` does this).
    Ack,
    /// Hand it to a callback, which settles it (an unsettled message is rejected after).
    Callback(DecodeErrorCallback),
}

impl fmt::Debug for DecodeErrorPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reject => "Reject",
            Self::Requeue => "Requeue",
            Self::Ack => "Ack",
            Self::Callback(_) => "Callback",
        })
    }
}

/// What a handler's error or panic does to its message (when the handler did not settle it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerErrorPolicy {
    /// Reject it without requeue (to the dead-letter exchange, if any): the default, so that
    /// a message that always fails cannot loop.
    #[default]
    Reject,
    /// Reject it with requeue: it is delivered again.
    Requeue,
}

/// Builds a [`Consumer`]; from [`Connection::consumer`].
#[derive(Debug, Clone)]
#[must_use = "call consume() to start consuming"]
pub struct ConsumerBuilder {
    conn: Connection,
    queues: Vec<Queue>,
    prefetch: Option<u16>,
    tag_prefix: Option<String>,
    exclusive: bool,
    priority: Option<i32>,
    arguments: FieldTable,
    accept: Accept,
    no_ack: bool,
    auto_declare: bool,
    on_decode_error: DecodeErrorPolicy,
    on_handler_error: HandlerErrorPolicy,
    buffer: Option<usize>,
}

impl ConsumerBuilder {
    pub(crate) fn new(conn: Connection, queues: Vec<Queue>) -> Self {
        Self {
            conn,
            queues,
            prefetch: None,
            tag_prefix: None,
            exclusive: false,
            priority: None,
            arguments: FieldTable::default(),
            accept: Accept::default(),
            no_ack: false,
            auto_declare: true,
            on_decode_error: DecodeErrorPolicy::default(),
            on_handler_error: HandlerErrorPolicy::default(),
            buffer: None,
        }
    }

    /// How many unacknowledged messages the broker sends ahead (`basic.qos` on the
    /// consumer's channel; default: no limit, as kombu).
    pub fn prefetch(mut self, count: u16) -> Self {
        self.prefetch = Some(count);
        self
    }

    /// Consumer tags `{prefix}{n}` for the n-th queue (from 1), instead of the broker's.
    pub fn tag_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.tag_prefix = Some(prefix.into());
        self
    }

    /// Whether to be each queue's only consumer.
    pub fn exclusive(mut self, on: bool) -> Self {
        self.exclusive = on;
        self
    }

    /// The consumer priority (`x-priority`): higher ones get messages first.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// `basic.consume` arguments for every queue (each queue's own consumer arguments are
    /// added).
    pub fn arguments(mut self, arguments: FieldTable) -> Self {
        self.arguments = arguments;
        self
    }

    /// The content types to decode (default: JSON, plus the always-trusted raw and text
    /// types).
    pub fn accept(mut self, accept: Accept) -> Self {
        self.accept = accept;
        self
    }

    /// Whether the broker forgets messages once sent (default `false`: acknowledge them).
    pub fn no_ack(mut self, on: bool) -> Self {
        self.no_ack = on;
        self
    }

    /// Whether each queue is declared (with its exchange and bindings) before consuming
    /// (default `true`, as kombu).
    pub fn auto_declare(mut self, on: bool) -> Self {
        self.auto_declare = on;
        self
    }

    /// What happens to a message that cannot be decoded or is not accepted.
    pub fn on_decode_error(mut self, policy: DecodeErrorPolicy) -> Self {
        self.on_decode_error = policy;
        self
    }

    /// What happens to a message whose handler failed or panicked.
    pub fn on_handler_error(mut self, policy: HandlerErrorPolicy) -> Self {
        self.on_handler_error = policy;
        self
    }

    /// How many deliveries may wait in lepus's buffer per queue (see
    /// [`lepus::BasicConsumeOptions::buffer`]).
    pub fn buffer(mut self, deliveries: usize) -> Self {
        self.buffer = Some(deliveries);
        self
    }

    /// Opens a channel, declares the queues, sets the prefetch and subscribes to each queue.
    ///
    /// # Errors
    ///
    /// Declaration errors (see [`Queue::declare`]), 403 for an exclusive consumer of a queue
    /// that has one, and connection errors.
    pub async fn consume(self) -> Result<Consumer> {
        let channel = self.conn.client().open_channel().await?;
        let guard = Arc::new(ChannelGuard {
            channel: channel.clone(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        });
        if let Some(n) = self.prefetch {
            channel.basic_qos(n, BasicQosOptions::default()).await?;
        }
        let mut streams = SelectAll::new();
        let mut subscribed = Vec::new();
        for (n, queue) in self.queues.iter().enumerate() {
            let name = if self.auto_declare && !queue.is_no_declare() {
                queue.declare(&channel).await?.name
            } else {
                queue.name().to_owned()
            };
            let mut arguments = self.arguments.clone();
            for (k, v) in queue.consume_arguments().iter() {
                arguments.insert(k.clone(), v.clone());
            }
            if let Some(p) = self.priority {
                arguments.insert(ShortStr::from_static("x-priority"), FieldValue::I32(p));
            }
            let mut options = BasicConsumeOptions {
                no_ack: self.no_ack,
                exclusive: self.exclusive,
                arguments,
                ..Default::default()
            };
            if let Some(b) = self.buffer {
                options.buffer = b;
            }
            let tag = match &self.tag_prefix {
                Some(prefix) => format!("{prefix}{}", n.saturating_add(1)),
                None => String::new(),
            };
            let consumer = channel
                .basic_consume(name.as_str(), tag.as_str(), options)
                .await?;
            subscribed.push((name.clone(), consumer.tag().clone()));
            let queue_name: Arc<str> = name.into();
            streams.push(consumer.map(move |r| (Arc::clone(&queue_name), r)).boxed());
        }
        Ok(Consumer {
            conn: self.conn,
            channel,
            guard,
            streams,
            subscribed,
            accept: Arc::new(self.accept),
            no_ack: self.no_ack,
            on_decode_error: self.on_decode_error,
            on_handler_error: self.on_handler_error,
            done: false,
        })
    }
}

/// Closes the consumer's channel once the consumer and every message from it are gone, so
/// that messages handed out can still be settled after the consumer was dropped.
/// The runtime is the one the consumer was made on (for the blocking API: its connection's
/// I/O runtime), so that the close can be sent from a thread without a runtime.
struct ChannelGuard {
    channel: Channel,
    runtime: Option<tokio::runtime::Handle>,
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        let channel = self.channel.clone();
        if let Some(rt) = &self.runtime {
            drop(rt.spawn(async move {
                let _ = channel.close().await;
            }));
        }
    }
}

type Deliveries =
    Pin<Box<dyn Stream<Item = (Arc<str>, lepus::Result<lepus::Delivery>)> + Send + 'static>>;

/// Messages from one or more queues (kombu's `Consumer`): a [`Stream`] of [`Message`]s, or
/// a loop that calls a handler for each ([`run`](Self::run), [`run_typed`](Self::run_typed)).
///
/// It has a channel of its own (so its prefetch is its own). A message whose content type is
/// not in the accept list, or whose body does not inflate, never reaches the application: the
/// [`DecodeErrorPolicy`] settles it (by default: rejected to the dead-letter exchange, with
/// one log line). When the broker cancels a subscription (its queue was deleted) or the
/// channel closes, the consumer yields one [`Error::ConsumerEnded`] and ends.
///
/// Dropping it cancels the subscriptions and gives back the deliveries it had buffered; its
/// channel closes once the messages handed out are dropped too (they can still be settled
/// until then).
///
/// # Examples
///
/// ```
/// use serde::Deserialize;
/// use lepus_messaging::{Connection, Queue};
///
/// #[derive(Deserialize)]
/// struct Order { id: u64, item: String }
///
/// # #[tokio::main]
/// # async fn main() -> lepus_messaging::Result<()> {
/// let conn = Connection::connect("memory://").await?;
/// # let order = serde_json::json!({"id": 1, "item": "book"});
/// # let q = Queue::new("orders");
/// # conn.producer().build()?.publish(&order).to_queue(&q).declare(q.clone()).await?;
/// let mut consumer = conn.consumer([Queue::new("orders")]).prefetch(100).consume().await?;
/// # // Cancel the subscription after the first order, so that `run_typed` returns.
/// # let ch = consumer.channel().clone();
/// # let tag = consumer.subscriptions().next().map(|(_, tag)| tag.to_owned()).unwrap();
/// # let (ch, tag) = (&ch, &tag);
/// consumer
///     .run_typed(|order: Order, _message| async move {
///         println!("order {}: {}", order.id, order.item);
/// #       ch.basic_cancel(tag.as_str()).await.map_err(std::io::Error::other)?;
///         Ok::<_, std::io::Error>(()) // acked; an error rejects it
///     })
///     .await?;
/// # Ok(()) }
/// ```
pub struct Consumer {
    conn: Connection,
    channel: Channel,
    guard: Arc<ChannelGuard>,
    streams: SelectAll<Deliveries>,
    subscribed: Vec<(String, ShortStr)>,
    accept: Arc<Accept>,
    no_ack: bool,
    on_decode_error: DecodeErrorPolicy,
    on_handler_error: HandlerErrorPolicy,
    done: bool,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("channel", &self.channel.id())
            .field("subscribed", &self.subscribed)
            .finish()
    }
}

impl Consumer {
    /// The queues it consumes from (the broker's names for server-named ones) with their
    /// consumer tags.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&str, &str)> {
        self.subscribed
            .iter()
            .map(|(q, t)| (q.as_str(), t.as_str().unwrap_or_default()))
    }

    /// Its channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The next message, or `None` when the consumer has ended.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        self.next().await
    }

    /// Cancels every subscription (waiting for the broker's `cancel-ok`). Deliveries buffered
    /// but not handed out go back to their queues; messages handed out can still be settled.
    ///
    /// # Errors
    ///
    /// Connection errors.
    pub async fn cancel(mut self) -> Result<()> {
        self.done = true;
        let mut first = None;
        for (_, tag) in &self.subscribed {
            if let Err(e) = self.channel.basic_cancel(tag.clone()).await {
                first.get_or_insert(e);
            }
        }
        // Dropping the streams requeues whatever they still buffer.
        self.streams = SelectAll::new();
        match first {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Calls `handler` for each message until the consumer ends, one message at a time. A
    /// message the handler did not settle is acknowledged when it returns `Ok`, and settled
    /// per the [`HandlerErrorPolicy`] when it returns an error or panics (the panic is caught
    /// and logged; the loop goes on).
    ///
    /// # Errors
    ///
    /// [`Error::ConsumerEnded`] when the broker cancelled a subscription or the channel
    /// closed.
    pub async fn run<F, Fut, E>(&mut self, handler: F) -> Result<()>
    where
        F: FnMut(Message) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: fmt::Display,
    {
        self.run_until(handler, std::future::pending()).await
    }

    /// As [`run`](Self::run), until `stop` resolves: the message in the handler is finished
    /// and settled, then it returns `Ok` (the subscriptions stay; drop or
    /// [`cancel`](Self::cancel) the consumer to end them).
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    pub async fn run_until<F, Fut, E>(
        &mut self,
        mut handler: F,
        stop: impl Future<Output = ()>,
    ) -> Result<()>
    where
        F: FnMut(Message) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: fmt::Display,
    {
        let mut stop = std::pin::pin!(stop);
        loop {
            let next = tokio::select! {
                biased;
                () = &mut stop => return Ok(()),
                next = self.next() => next,
            };
            let Some(message) = next else {
                return Ok(());
            };
            let message = message?;
            let settle = message.clone();
            let span = message.delivery().span().clone();
            let started = std::time::Instant::now();
            let outcome = AssertUnwindSafe(handler(message))
                .catch_unwind()
                .instrument(span)
                .await;
            record_process(started, outcome.as_ref().is_ok_and(|r| r.is_ok()));
            self.after_handler(&settle, outcome.map(|r| r.map_err(|e| e.to_string())));
        }
    }

    /// As [`run`](Self::run), with each body decoded into `T` first (kombu's callbacks get
    /// the decoded body and the message). A body that does not decode is settled by the
    /// [`DecodeErrorPolicy`] and the handler is not called.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    pub async fn run_typed<T, F, Fut, E>(&mut self, mut handler: F) -> Result<()>
    where
        T: DeserializeOwned,
        F: FnMut(T, Message) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: fmt::Display,
    {
        while let Some(message) = self.next().await {
            let message = message?;
            let value = match message.decode::<T>() {
                Ok(v) => v,
                Err(e) => {
                    self.decode_failed(&message, &e);
                    continue;
                }
            };
            let settle = message.clone();
            let span = message.delivery().span().clone();
            let started = std::time::Instant::now();
            let outcome = AssertUnwindSafe(handler(value, message))
                .catch_unwind()
                .instrument(span)
                .await;
            record_process(started, outcome.as_ref().is_ok_and(|r| r.is_ok()));
            self.after_handler(&settle, outcome.map(|r| r.map_err(|e| e.to_string())));
        }
        Ok(())
    }

    /// Settles a message after its handler: ack on success unless settled, the policy on
    /// failure.
    pub(crate) fn after_handler(
        &self,
        message: &Message,
        outcome: std::result::Result<
            std::result::Result<(), String>,
            Box<dyn std::any::Any + Send>,
        >,
    ) {
        let failure = match outcome {
            Ok(Ok(())) => {
                if !message.acknowledged() {
                    if let Err(e) = message.ack() {
                        tracing::warn!(error = %e, "could not acknowledge a handled message");
                    }
                }
                return;
            }
            Ok(Err(e)) => e,
            Err(panic) => {
                let what = panic_text(panic.as_ref());
                tracing::error!(
                    panic = %what,
                    routing_key = message.routing_key(),
                    "a message handler panicked"
                );
                format!("panicked: {what}")
            }
        };
        tracing::warn!(
            error = %failure,
            routing_key = message.routing_key(),
            policy = ?self.on_handler_error,
            "a message handler failed"
        );
        if message.acknowledged() {
            return;
        }
        let settled = match self.on_handler_error {
            HandlerErrorPolicy::Reject => message.reject(),
            HandlerErrorPolicy::Requeue => message.requeue(),
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, "could not settle a failed message");
        }
    }

    /// Applies the decode policy to a message that cannot be handed over.
    pub(crate) fn decode_failed(&self, message: &Message, error: &Error) {
        let settled = match &self.on_decode_error {
            DecodeErrorPolicy::Reject => {
                tracing::warn!(%error, routing_key = message.routing_key(), "rejected a message that cannot be decoded");
                message.reject()
            }
            DecodeErrorPolicy::Requeue => {
                tracing::warn!(%error, routing_key = message.routing_key(), "requeued a message that cannot be decoded");
                message.requeue()
            }
            DecodeErrorPolicy::Ack => {
                tracing::warn!(%error, routing_key = message.routing_key(), "dropped (acked) a message that cannot be decoded");
                message.ack()
            }
            DecodeErrorPolicy::Callback(f) => {
                f(message, error);
                if message.acknowledged() {
                    Ok(())
                } else {
                    message.reject()
                }
            }
        };
        if let Err(e) = settled {
            if !matches!(e, Error::MessageState(_)) {
                tracing::warn!(error = %e, "could not settle a message that cannot be decoded");
            }
        }
    }

    /// Turns a delivery into a message, or settles it by the decode policy.
    fn admit(&self, delivery: lepus::Delivery) -> Option<Message> {
        match self
            .conn
            .message(delivery, self.no_ack, Arc::clone(&self.accept), None)
        {
            Ok(message) => {
                let content_type = message.content_type().unwrap_or("application/data");
                if self.accept.allows(content_type) {
                    Some(message.with_guard(Arc::clone(&self.guard) as Arc<dyn Send + Sync>))
                } else {
                    let error = Error::ContentDisallowed {
                        content_type: content_type.to_owned(),
                    };
                    self.decode_failed(&message, &error);
                    None
                }
            }
            Err((error, message)) => {
                self.decode_failed(&message, &error);
                None
            }
        }
    }
}

impl Stream for Consumer {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.streams.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some((_, Ok(delivery)))) => {
                    if let Some(message) = this.admit(delivery) {
                        return Poll::Ready(Some(Ok(message)));
                    }
                }
                Poll::Ready(Some((queue, Err(e)))) => {
                    this.done = true;
                    this.streams = SelectAll::new();
                    return Poll::Ready(Some(Err(Error::ConsumerEnded {
                        queue: queue.to_string(),
                        reason: e.to_string(),
                    })));
                }
            }
        }
    }
}

/// Records a handler's duration as `messaging.process.duration` (with the `metrics`
/// feature), with `error.type` when it failed.
pub(crate) fn record_process(started: std::time::Instant, ok: bool) {
    #[cfg(feature = "metrics")]
    {
        let mut labels = vec![
            metrics::Label::new("messaging.system", "rabbitmq"),
            metrics::Label::new("messaging.operation.name", "process"),
        ];
        if !ok {
            labels.push(metrics::Label::new("error.type", "handler_failed"));
        }
        metrics::histogram!("messaging.process.duration", labels).record(started.elapsed());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (started, ok);
}

/// What a caught panic said.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}
