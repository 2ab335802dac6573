//! Consumers: a [`Stream`] of deliveries per `basic.consume`, and acknowledgements.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_core::Stream;
use lepus_proto::Message;
use lepus_wire::method::basic;
use lepus_wire::{BasicProperties, MethodArgs, ShortStr};

use crate::driver::{HandleGuard, Shared};
use crate::error::{Error, Result};

/// A message delivered to a consumer (or fetched with `basic.get`).
///
/// Acknowledge it with [`ack`](Self::ack), [`nack`](Self::nack) or [`reject`](Self::reject).
/// An acknowledgement can only reach the channel that delivered the message: after that channel
/// closed, or on a message consumed with `no_ack`, these return an error locally instead of
/// letting the broker close the channel with 406.
#[derive(Debug)]
pub struct Delivery {
    /// The channel-scoped tag that acknowledges this message.
    pub delivery_tag: u64,
    /// The message was delivered before and not acknowledged.
    pub redelivered: bool,
    /// The exchange it was published to (empty for the default exchange).
    pub exchange: ShortStr,
    /// The routing key it was published with.
    pub routing_key: ShortStr,
    /// The consumer it was delivered to (empty for `basic.get`).
    pub consumer_tag: ShortStr,
    /// The message's properties.
    pub properties: BasicProperties,
    /// The body. A single-frame body shares the socket read buffer: no copy.
    pub body: Bytes,
    acker: Acker,
    /// The `process` span, from the hand-over to the application until the delivery is
    /// dropped (see [`crate::telemetry`]); disabled unless a subscriber wants it.
    span: tracing::Span,
}

/// What [`Delivery`] needs to acknowledge itself.
#[derive(Clone)]
pub(crate) struct Acker {
    shared: Arc<Shared>,
    channel: u16,
    generation: u64,
    no_ack: bool,
    /// The link it came over (see `Inner::epoch`).
    epoch: u64,
}

impl std::fmt::Debug for Acker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acker")
            .field("channel", &self.channel)
            .field("generation", &self.generation)
            .field("no_ack", &self.no_ack)
            .finish()
    }
}

impl Delivery {
    pub(crate) fn new(
        shared: &Arc<Shared>,
        channel: u16,
        generation: u64,
        no_ack: bool,
        deliver: basic::Deliver,
        message: Message,
    ) -> Self {
        Self {
            delivery_tag: deliver.delivery_tag,
            redelivered: deliver.redelivered,
            exchange: deliver.exchange,
            routing_key: deliver.routing_key,
            consumer_tag: deliver.consumer_tag,
            properties: message.properties,
            body: message.body,
            acker: Acker {
                shared: Arc::clone(shared),
                channel,
                generation,
                no_ack,
                epoch: shared.epoch(),
            },
            span: tracing::Span::none(),
        }
    }

    pub(crate) fn from_get(
        shared: &Arc<Shared>,
        channel: u16,
        generation: u64,
        no_ack: bool,
        get_ok: basic::GetOk,
        message: Message,
    ) -> Self {
        Self {
            delivery_tag: get_ok.delivery_tag,
            redelivered: get_ok.redelivered,
            exchange: get_ok.exchange,
            routing_key: get_ok.routing_key,
            consumer_tag: ShortStr::default(),
            properties: message.properties,
            body: message.body,
            acker: Acker {
                shared: Arc::clone(shared),
                channel,
                generation,
                no_ack,
                epoch: shared.epoch(),
            },
            span: tracing::Span::none(),
        }
    }

    /// The channel the message arrived on.
    pub fn channel_id(&self) -> u16 {
        self.acker.channel
    }

    /// The `process` span of this delivery, open from when the [`Consumer`] handed it over
    /// until the delivery is dropped, with the message's attributes (see
    /// [`telemetry`](crate::telemetry)); acknowledgements are its children. Enter it (or
    /// `.instrument(delivery.span().clone())` a future) around the work on the message so
    /// that the work's own spans nest under it. Disabled when no subscriber is interested,
    /// and for messages from `basic.get`, whose `receive` span ends with the call.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// A settle span (`ack`, `nack`, `reject`) under this delivery's span.
    fn settle_span(&self, operation: &'static str) -> tracing::Span {
        crate::telemetry::settle(
            operation,
            &self.span,
            &self.exchange,
            &self.routing_key,
            self.delivery_tag,
        )
    }

    /// Runs a settlement inside its span, recording a failure.
    fn settling(&self, operation: &'static str, send: impl FnOnce() -> Result<()>) -> Result<()> {
        let span = self.settle_span(operation);
        let _entered = span.enter();
        let result = send();
        if let Err(e) = &result {
            crate::telemetry::record_error(&span, e);
        }
        #[cfg(feature = "metrics")]
        if result.is_ok() {
            let m = &self.acker.shared.events.metrics;
            match operation {
                "ack" => &m.acks,
                "nack" => &m.nacks,
                _ => &m.rejects,
            }
            .increment(1);
        }
        result
    }

    /// Acknowledges this message.
    ///
    /// The ack is queued at once. It is written with the connection's next read or the
    /// consumer's next wait, and within about 2 ms at the latest; at once when the broker
    /// could be waiting for it under a prefetch limit (see [`manual`](crate::manual) and
    /// [`ConnectionOptions::write_coalescing`](crate::ConnectionOptions::write_coalescing)).
    ///
    /// # Errors
    ///
    /// When the delivering channel is closed, or the message was consumed with `no_ack`.
    pub fn ack(&self) -> Result<()> {
        self.settling("ack", || {
            self.acker.send(
                &basic::Ack {
                    delivery_tag: self.delivery_tag,
                    multiple: false,
                },
                self.delivery_tag,
                false,
            )
        })
    }

    /// Acknowledges this message and every earlier unacknowledged one on its channel.
    ///
    /// # Errors
    ///
    /// As [`ack`](Self::ack).
    pub fn ack_multiple(&self) -> Result<()> {
        self.settling("ack", || {
            self.acker.send(
                &basic::Ack {
                    delivery_tag: self.delivery_tag,
                    multiple: true,
                },
                self.delivery_tag,
                true,
            )
        })
    }

    /// Negatively acknowledges this message: requeued if `requeue`, else dropped or
    /// dead-lettered.
    ///
    /// # Errors
    ///
    /// As [`ack`](Self::ack).
    pub fn nack(&self, requeue: bool) -> Result<()> {
        self.settling("nack", || {
            self.acker.send(
                &basic::Nack {
                    delivery_tag: self.delivery_tag,
                    multiple: false,
                    requeue,
                },
                self.delivery_tag,
                false,
            )
        })
    }

    /// Like [`nack`](Self::nack), for this and every earlier unacknowledged message.
    ///
    /// # Errors
    ///
    /// As [`ack`](Self::ack).
    pub fn nack_multiple(&self, requeue: bool) -> Result<()> {
        self.settling("nack", || {
            self.acker.send(
                &basic::Nack {
                    delivery_tag: self.delivery_tag,
                    multiple: true,
                    requeue,
                },
                self.delivery_tag,
                true,
            )
        })
    }

    /// Rejects this message (`basic.reject`): requeued if `requeue`, else dropped or
    /// dead-lettered.
    ///
    /// # Errors
    ///
    /// As [`ack`](Self::ack).
    pub fn reject(&self, requeue: bool) -> Result<()> {
        self.settling("reject", || {
            self.acker.send(
                &basic::Reject {
                    delivery_tag: self.delivery_tag,
                    requeue,
                },
                self.delivery_tag,
                false,
            )
        })
    }
}

impl Acker {
    fn send<M: MethodArgs>(&self, method: &M, delivery_tag: u64, multiple: bool) -> Result<()> {
        if self.no_ack {
            return Err(Error::InvalidState(
                "the message was consumed with no_ack and needs no acknowledgement",
            ));
        }
        self.shared.lock().queue_ack(
            &self.shared,
            (self.channel, self.generation, Some(self.epoch)),
            method,
            delivery_tag,
            multiple,
        )
    }
}

struct QueueState {
    deliveries: VecDeque<Delivery>,
    /// The connection went quiet: the consumer gives back the room of its own batch buffer.
    shrink_local: bool,
    waker: Option<Waker>,
    ended: bool,
    end_error: Option<Error>,
}

/// The buffer between the reader task and one consumer.
pub(crate) struct ConsumerQueue {
    state: Mutex<QueueState>,
    capacity: usize,
    pub(crate) no_ack: bool,
    tag: Mutex<ShortStr>,
    /// The consumer is being cancelled (or its channel closed): a full buffer must not stop
    /// the reader, which has the broker's cancel-ok (or close-ok) to read.
    stopping: AtomicBool,
}

impl ConsumerQueue {
    pub(crate) fn new(capacity: usize, no_ack: bool) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(QueueState {
                deliveries: VecDeque::new(),
                shrink_local: false,
                waker: None,
                ended: false,
                end_error: None,
            }),
            capacity: capacity.max(1),
            no_ack,
            tag: Mutex::new(ShortStr::default()),
            stopping: AtomicBool::new(false),
        })
    }

    /// Gives back the room a burst of deliveries made, once the consumer took them all, and
    /// wakes the consumer to do the same with the batch it took last.
    pub(crate) fn shrink(&self) {
        let waker = {
            let mut state = self.lock();
            if !state.deliveries.is_empty() {
                return;
            }
            state.deliveries = VecDeque::new();
            state.shrink_local = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Marks the consumer as ending (see [`ConsumerQueue::stopping`]).
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Whether the consumer is ending.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Whether the buffer is full for a consumer that may hold up the reader.
    pub(crate) fn holds_reader(&self) -> bool {
        !self.is_stopping() && self.is_full()
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_tag(&self, tag: ShortStr) {
        *self.tag.lock().unwrap_or_else(|p| p.into_inner()) = tag;
    }

    /// Adds a delivery. Returns whether the queue is now full (reading should pause) and the
    /// consumer's waker, for the caller to wake once it has released the state lock.
    pub(crate) fn push(&self, delivery: Delivery) -> (bool, Option<Waker>) {
        let mut s = self.lock();
        s.deliveries.push_back(delivery);
        (s.deliveries.len() >= self.capacity, s.waker.take())
    }

    /// Drops the deliveries still buffered: their link was lost, and the broker requeues
    /// them.
    pub(crate) fn drop_buffered(&self) {
        self.lock().deliveries.clear();
    }

    pub(crate) fn is_full(&self) -> bool {
        self.lock().deliveries.len() >= self.capacity
    }

    /// Ends the stream after the queued deliveries, with an error item first if given.
    pub(crate) fn end(&self, error: Option<Error>) {
        let mut s = self.lock();
        s.ended = true;
        s.end_error = error;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }
}

/// A stream of deliveries for one consumer, from
/// [`Channel::basic_consume`](crate::Channel::basic_consume).
///
/// Yields `Ok(Delivery)` in the order the broker sent them. The stream ends (`None`) after the
/// consumer is cancelled with [`Channel::basic_cancel`](crate::Channel::basic_cancel); if the
/// broker cancels it (queue deleted, consumer timeout) or the channel or connection closes, it
/// yields one `Err` saying why, then ends.
///
/// Deliveries wait in a bounded buffer ([`BasicConsumeOptions::buffer`]); when it is full, the
/// connection stops reading from the socket until the consumer catches up, so a slow consumer
/// slows the broker down instead of filling memory. Other channels of the connection wait too:
/// give slow consumers a connection of their own.
///
/// Dropping the stream cancels the consumer: lepus sends `basic.cancel` and gives the
/// deliveries still in its buffer back to the queue (reject with requeue).
///
/// [`BasicConsumeOptions::buffer`]: crate::BasicConsumeOptions::buffer
pub struct Consumer {
    queue: Arc<ConsumerQueue>,
    channel: u16,
    generation: u64,
    shared: Arc<Shared>,
    _guard: HandleGuard,
    local: VecDeque<Delivery>,
    tag: ShortStr,
    /// The queue, for the deliveries' spans.
    queue_name: ShortStr,
    done: bool,
}

impl Consumer {
    pub(crate) fn new(
        queue: Arc<ConsumerQueue>,
        shared: Arc<Shared>,
        channel: u16,
        generation: u64,
        tag: ShortStr,
        queue_name: ShortStr,
    ) -> Self {
        Self {
            queue,
            channel,
            generation,
            _guard: HandleGuard::new(&shared),
            shared,
            local: VecDeque::new(),
            tag,
            queue_name,
            done: false,
        }
    }

    /// Opens the delivery's `process` span as it is handed to the application.
    fn hand_over(&self, mut d: Delivery) -> Delivery {
        d.span = crate::telemetry::delivered(
            "process",
            &crate::telemetry::Delivered {
                exchange: &d.exchange,
                routing_key: &d.routing_key,
                queue: self.queue_name.as_str().unwrap_or_default(),
                delivery_tag: d.delivery_tag,
                properties: &d.properties,
                body_size: d.body.len(),
            },
            || self.shared.lock().address.clone(),
        );
        #[cfg(feature = "otel")]
        if !d.span.is_disabled() {
            crate::telemetry::otel::continue_from(&d.span, &d.properties);
        }
        #[cfg(feature = "metrics")]
        {
            let m = &self.shared.events.metrics;
            m.consumed_process.increment(1);
            if d.redelivered {
                m.redeliveries.increment(1);
            }
        }
        d
    }

    /// The consumer tag.
    pub fn tag(&self) -> &ShortStr {
        &self.tag
    }

    /// The next delivery, or `None` when the stream has ended: `stream.next().await` without
    /// needing a `StreamExt` import.
    pub async fn recv(&mut self) -> Option<Result<Delivery>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Deliveries of a link lost since are dropped: the broker delivers them again.
        let epoch = this.shared.epoch();
        while let Some(d) = this.local.pop_front() {
            if d.acker.epoch == epoch {
                return Poll::Ready(Some(Ok(this.hand_over(d))));
            }
        }
        if this.done {
            return Poll::Ready(None);
        }
        let mut s = this.queue.lock();
        if std::mem::take(&mut s.shrink_local) {
            this.local = VecDeque::new();
        }
        if !s.deliveries.is_empty() {
            // Take the whole batch under one lock; the buffer is then empty and reading may go on.
            std::mem::swap(&mut s.deliveries, &mut this.local);
            drop(s);
            #[cfg(feature = "metrics")]
            crate::metrics::consumer_buffered(
                this.queue_name.as_str().unwrap_or_default(),
                this.local.len(),
            );
            if this.shared.read_paused.load(Ordering::Acquire) {
                this.shared.reader_wake.notify_one();
            }
            while let Some(d) = this.local.pop_front() {
                if d.acker.epoch == epoch {
                    return Poll::Ready(Some(Ok(this.hand_over(d))));
                }
            }
            // Only stale ones: look again (the buffer may have filled meanwhile).
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if s.ended {
            this.done = true;
            return Poll::Ready(s.end_error.take().map(Err));
        }
        s.waker = Some(cx.waker().clone());
        drop(s);
        // About to wait for deliveries: send the acks made so far from this thread.
        this.shared.flush_inline();
        Poll::Pending
    }
}

impl Drop for Consumer {
    /// A dropped stream cancels its consumer (`basic.cancel` without waiting for the reply), so
    /// the broker stops sending to it and its buffer cannot stall the connection. Deliveries
    /// already on their way are rejected with requeue, unless it was a no-ack consumer.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut inner = self.shared.lock();
        let Some(slot) = inner.channels.get_mut(&self.channel) else {
            return;
        };
        if slot.generation != self.generation {
            return;
        }
        let queue = slot.consumers.remove(&self.tag);
        // Not subscribed again by a recovery, even one under way.
        inner.topology.consumer_ended(self.channel, &self.tag, true);
        let Some(queue) = queue else {
            return;
        };
        queue.end(None);
        // Unacknowledged deliveries still buffered go back to the queue.
        let buffered: Vec<u64> = {
            let mut s = queue.lock();
            s.deliveries.drain(..).map(|d| d.delivery_tag).collect()
        };
        let buffered = buffered
            .into_iter()
            .chain(self.local.drain(..).map(|d| d.delivery_tag));
        let cancel = basic::Cancel {
            consumer_tag: self.tag.clone(),
            nowait: true,
        };
        let _ = inner.proto.call(self.channel, cancel.into());
        if !queue.no_ack {
            for delivery_tag in buffered {
                let reject = basic::Reject {
                    delivery_tag,
                    requeue: true,
                };
                if inner.proto.send(self.channel, &reject).is_ok() {
                    if let Some(slot) = inner.channels.get_mut(&self.channel) {
                        slot.settle(delivery_tag, false);
                    }
                }
            }
        }
        inner.wake_writer(&self.shared);
        drop(inner);
        if self.shared.read_paused.load(Ordering::Acquire) {
            self.shared.reader_wake.notify_one();
        }
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}
