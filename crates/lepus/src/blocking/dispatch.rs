//! Callback consumers and server events, handed out by `Connection::drain_events`.
//!
//! Every source `drain_events` waits on lives here: the async [`Consumer`](crate::Consumer)
//! stream of each callback consumer, the `basic.return` receiver of each channel, and the
//! connection's event stream. A call polls them all under one lock, takes at most one delivery
//! per consumer (together with that consumer's callback, so a callback never runs on two
//! threads at once), and runs the callbacks after the lock is released, so callbacks may call
//! anything, including `basic_consume` and `basic_cancel`.
//!
//! **Wakeups.** Each source keeps only the last waker it was polled with. Several threads may
//! wait in `drain_events` at once, so sources are polled with one shared [`FanOut`] waker that
//! wakes every waiting thread; a thread that finds nothing registers again. No wakeup is lost
//! to a thread that has already returned.
//!
//! **Deliveries without a callback.** A delivery taken from a consumer that was cancelled
//! before its callback could run, or left over in the consumer's buffer when it is cancelled,
//! is rejected with requeue (like py-amqp's `_on_basic_deliver` for an unknown consumer tag),
//! except for `no_ack` consumers, whose deliveries the broker has already forgotten. Deliveries
//! that arrive after `basic.cancel-ok` never reach this layer: the async driver rejects them.
//!
//! **Lock order.** This lock, then the async layer's locks (consumer queues, connection state).
//! Callbacks and removed entries are dropped after the lock is released, since their captures
//! may own handles whose `Drop` comes back here.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use futures_core::Stream;
use lepus_proto::Close;
use lepus_wire::ShortStr;
use tokio::sync::mpsc;

use super::channel::{Channel, ChannelState};
use super::event::Event;
use crate::confirm::ReturnedMessage;
use crate::consumer::{Consumer as AsyncConsumer, Delivery};
use crate::driver::ConnectionEvent;
use crate::error::Error;

/// A consumer callback, as stored.
pub(super) type Callback = Box<dyn FnMut(&Channel, Delivery) + Send + 'static>;

/// The sources of one connection.
pub(super) struct Dispatch {
    state: Mutex<State>,
    fanout: Arc<FanOut>,
}

struct State {
    next_id: u64,
    consumers: Vec<ConsumerEntry>,
    channels: Vec<ChannelEntry>,
    connection_events: mpsc::UnboundedReceiver<ConnectionEvent>,
    /// Events known before a poll, such as a block already in force at connect time.
    pending: VecDeque<Event>,
}

struct ConsumerEntry {
    id: u64,
    channel: Channel,
    tag: ShortStr,
    no_ack: bool,
    stream: AsyncConsumer,
    /// `None` while a `drain_events` call runs it.
    callback: Option<Callback>,
    /// Cancelled while its callback was out: removed when the callback comes back.
    cancelled: bool,
    /// Ended during this poll: removed at its end.
    done: bool,
}

struct ChannelEntry {
    state: Arc<ChannelState>,
    id: u16,
    returns: mpsc::UnboundedReceiver<ReturnedMessage>,
}

/// What one poll found.
pub(super) enum Ready {
    /// Events and deliveries to dispatch, in order.
    Batch(Vec<Item>),
    /// The connection is closed, with the error if a source reported it.
    Closed(Option<Error>),
}

/// One thing to dispatch.
// Most items are deliveries; boxing them would add an allocation each.
#[allow(clippy::large_enum_variant)]
pub(super) enum Item {
    Event(Event),
    Delivery(Lease),
}

/// A delivery together with its consumer's callback, taken out of the registry to run
/// without the lock. Dropping it puts the callback back and rejects (with requeue) a delivery
/// that did not reach the callback, so a panicking callback loses nothing.
pub(super) struct Lease {
    dispatch: Arc<Dispatch>,
    entry: u64,
    channel: Channel,
    no_ack: bool,
    callback: Option<Callback>,
    delivery: Option<Delivery>,
}

impl Lease {
    /// Runs the callback, unless the consumer was cancelled since the delivery was taken (the
    /// delivery is then rejected with requeue).
    pub(super) fn run(mut self) -> Option<Event> {
        if self.dispatch.is_cancelled(self.entry) {
            return None;
        }
        let (Some(callback), Some(delivery)) = (self.callback.as_mut(), self.delivery.take())
        else {
            return None;
        };
        let event = Event::Delivered {
            channel: delivery.channel_id(),
            consumer_tag: delivery.consumer_tag.clone(),
            delivery_tag: delivery.delivery_tag,
        };
        callback(&self.channel, delivery);
        Some(event)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(delivery) = self.delivery.take() {
            give_back(delivery, self.no_ack);
        }
        if let Some(callback) = self.callback.take() {
            self.dispatch.put_back(self.entry, callback);
        }
    }
}

impl Dispatch {
    pub(super) fn new(connection_events: mpsc::UnboundedReceiver<ConnectionEvent>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                next_id: 0,
                consumers: Vec::new(),
                channels: Vec::new(),
                connection_events,
                pending: VecDeque::new(),
            }),
            fanout: Arc::new(FanOut::default()),
        })
    }

    /// Locks the registry. A panic under this lock cannot leave it inconsistent (each step
    /// is a push or a removal), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh key for a channel handle (channel ids are reused after a close; keys are not).
    pub(super) fn next_key(&self) -> u64 {
        let mut state = self.lock();
        state.next_id += 1;
        state.next_id
    }

    /// Queues an event for the next `drain_events`.
    pub(super) fn push_event(&self, event: Event) {
        self.lock().pending.push_back(event);
        self.fanout.wake_all();
    }

    /// Starts watching a channel's returned messages (and, through them, its closing).
    pub(super) fn add_channel(
        &self,
        state: Arc<ChannelState>,
        id: u16,
        returns: mpsc::UnboundedReceiver<ReturnedMessage>,
    ) {
        self.lock()
            .channels
            .push(ChannelEntry { state, id, returns });
        self.fanout.wake_all();
    }

    /// Registers a callback consumer.
    pub(super) fn add_consumer(
        &self,
        channel: Channel,
        stream: AsyncConsumer,
        no_ack: bool,
        callback: Callback,
    ) {
        {
            let mut state = self.lock();
            state.next_id += 1;
            let entry = ConsumerEntry {
                id: state.next_id,
                channel,
                tag: stream.tag().clone(),
                no_ack,
                stream,
                callback: Some(callback),
                cancelled: false,
                done: false,
            };
            state.consumers.push(entry);
        }
        // Threads already waiting must poll the new consumer too.
        self.fanout.wake_all();
    }

    /// Forgets a consumer after its `basic.cancel-ok`: its callback is not called again (except
    /// for a call already running on another thread), and the deliveries it had buffered are
    /// rejected with requeue.
    pub(super) fn cancel(&self, channel_key: u64, tag: &str) {
        let removed = {
            let mut state = self.lock();
            let Some(pos) = state
                .consumers
                .iter()
                .position(|e| e.channel.key() == channel_key && e.tag == tag && !e.cancelled)
            else {
                return;
            };
            match state.consumers.get_mut(pos) {
                // Its callback is running: `put_back` finishes the job.
                Some(entry) if entry.callback.is_none() => {
                    entry.cancelled = true;
                    None
                }
                _ => Some(state.consumers.remove(pos)),
            }
        };
        if let Some(entry) = removed {
            entry.give_back_buffered();
        }
    }

    /// Forgets a channel closed by the user, with its consumers: the broker requeues what
    /// they had not acknowledged, so their buffered deliveries are simply dropped.
    pub(super) fn remove_channel(&self, channel_key: u64) {
        let garbage = {
            let mut state = self.lock();
            state.channels.retain(|c| c.state.key != channel_key);
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut state.consumers)
                .into_iter()
                .partition(|e| e.channel.key() == channel_key && e.callback.is_some());
            state.consumers = kept;
            for entry in &mut state.consumers {
                if entry.channel.key() == channel_key {
                    entry.cancelled = true;
                }
            }
            gone
        };
        drop(garbage);
    }

    /// Forgets everything (the connection is closed or its handle dropped). This also breaks
    /// reference cycles through callbacks that capture a channel.
    pub(super) fn clear(&self) {
        let garbage = {
            let mut state = self.lock();
            (
                std::mem::take(&mut state.consumers),
                std::mem::take(&mut state.channels),
                std::mem::take(&mut state.pending),
            )
        };
        drop(garbage);
        self.fanout.wake_all();
    }

    fn is_cancelled(&self, id: u64) -> bool {
        self.lock()
            .consumers
            .iter()
            .find(|e| e.id == id)
            .is_none_or(|e| e.cancelled)
    }

    /// Returns a callback taken by a [`Lease`].
    fn put_back(&self, id: u64, callback: Callback) {
        let mut state = self.lock();
        let Some(pos) = state.consumers.iter().position(|e| e.id == id) else {
            drop(state);
            drop(callback);
            return;
        };
        let removed = match state.consumers.get_mut(pos) {
            Some(entry) if !entry.cancelled => {
                entry.callback = Some(callback);
                drop(state);
                // Other threads skipped this consumer while its callback was out.
                self.fanout.wake_all();
                return;
            }
            _ => state.consumers.remove(pos),
        };
        drop(state);
        drop(callback);
        removed.give_back_buffered();
    }

    /// Polls every source once. Registers `cx` to be woken when any of them becomes ready.
    pub(super) fn poll_ready(
        self: &Arc<Self>,
        conn: &crate::Connection,
        cx: &mut Context<'_>,
    ) -> Poll<Ready> {
        // Register before polling, so that readiness between the polls below and our return
        // still wakes this thread.
        self.fanout.register(cx.waker());
        if !conn.is_open() {
            return Poll::Ready(Ready::Closed(None));
        }
        let waker = Waker::from(Arc::clone(&self.fanout));
        let mut shared_cx = Context::from_waker(&waker);
        let mut pass = Pass::default();
        {
            let mut state = self.lock();
            state.poll(self, conn, &mut shared_cx, &mut pass);
        }
        // Dropped here, after the lock: leases put their callbacks back, entries drop theirs.
        drop(pass.garbage);
        if let Some(error) = pass.closed {
            drop(pass.items);
            return Poll::Ready(Ready::Closed(error));
        }
        if pass.items.is_empty() {
            return Poll::Pending;
        }
        Poll::Ready(Ready::Batch(pass.items))
    }
}

/// What one poll of the registry collected.
#[derive(Default)]
struct Pass {
    items: Vec<Item>,
    garbage: Vec<ConsumerEntry>,
    /// `Some` when the connection turned out to be closed.
    closed: Option<Option<Error>>,
}

impl State {
    fn poll(
        &mut self,
        dispatch: &Arc<Dispatch>,
        conn: &crate::Connection,
        cx: &mut Context<'_>,
        pass: &mut Pass,
    ) {
        pass.items.extend(self.pending.drain(..).map(Item::Event));
        loop {
            match self.connection_events.poll_recv(cx) {
                Poll::Ready(Some(ConnectionEvent::Blocked(reason))) => {
                    pass.items.push(Item::Event(Event::Blocked { reason }));
                }
                Poll::Ready(Some(ConnectionEvent::Unblocked)) => {
                    pass.items.push(Item::Event(Event::Unblocked));
                }
                Poll::Ready(Some(ConnectionEvent::Closed(_)) | None) => {
                    pass.closed = Some(None);
                    return;
                }
                Poll::Ready(Some(recovery)) => {
                    pass.items.push(Item::Event(Event::Recovery(recovery)));
                }
                Poll::Pending => break,
            }
        }

        let mut closed_channels: Vec<(u64, Option<Close>)> = Vec::new();
        for entry in &mut self.consumers {
            if entry.callback.is_none() || entry.cancelled {
                continue;
            }
            match Pin::new(&mut entry.stream).poll_next(cx) {
                Poll::Pending => {}
                Poll::Ready(Some(Ok(delivery))) => pass.items.push(Item::Delivery(Lease {
                    dispatch: Arc::clone(dispatch),
                    entry: entry.id,
                    channel: entry.channel.clone(),
                    no_ack: entry.no_ack,
                    callback: entry.callback.take(),
                    delivery: Some(delivery),
                })),
                Poll::Ready(Some(Err(e))) if e.is_connection_error() => {
                    pass.closed = Some(Some(e));
                    return;
                }
                Poll::Ready(Some(Err(Error::ChannelClosed(close)))) => {
                    entry.done = true;
                    closed_channels.push((entry.channel.key(), Some(close)));
                }
                // The async consumer's only other error is `ConsumerCancelled` (basic.cancel
                // from the broker); it ends the stream.
                Poll::Ready(Some(Err(_))) => {
                    entry.done = true;
                    pass.items.push(Item::Event(Event::ConsumerCancelled {
                        channel: entry.channel.id(),
                        consumer_tag: entry.tag.clone(),
                    }));
                }
                // Ended without an error: cancelled by this client or its channel closed on
                // request; the canceller or closer cleans up.
                Poll::Ready(None) => entry.done = true,
            }
        }

        for channel in &mut self.channels {
            loop {
                match channel.returns.poll_recv(cx) {
                    Poll::Ready(Some(message)) => pass.items.push(Item::Event(Event::Returned {
                        channel: channel.id,
                        message: Box::new(message),
                    })),
                    // The driver dropped the sender: the channel is closed.
                    Poll::Ready(None) => {
                        if !channel.state.closed_by_user() {
                            closed_channels.push((channel.state.key, None));
                        }
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }

        for (key, reason) in closed_channels {
            if !conn.is_open() {
                // Every channel ends with the connection; report that instead.
                pass.closed = Some(None);
                return;
            }
            self.channel_closed(key, reason, pass);
        }
        let (done, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.consumers)
            .into_iter()
            .partition(|e| e.done);
        self.consumers = kept;
        pass.garbage.extend(done);
    }

    /// Reports a channel the broker closed, once, and drops its consumers.
    fn channel_closed(&mut self, key: u64, mut reason: Option<Close>, pass: &mut Pass) {
        let Some(pos) = self.channels.iter().position(|c| c.state.key == key) else {
            return; // already reported
        };
        let channel = self.channels.remove(pos);
        let mut cx = Context::from_waker(Waker::noop());
        for entry in &mut self.consumers {
            if entry.channel.key() != key {
                continue;
            }
            if entry.callback.is_none() {
                entry.cancelled = true;
                continue;
            }
            entry.done = true;
            // The stream has ended: what is left is buffered deliveries (which can no longer
            // be acknowledged; the broker requeues them) and the broker's reason.
            while let Poll::Ready(Some(item)) = Pin::new(&mut entry.stream).poll_next(&mut cx) {
                if let Err(Error::ChannelClosed(close)) = item {
                    reason.get_or_insert(close);
                }
            }
        }
        if !channel.state.closed_by_user() {
            pass.items.push(Item::Event(Event::ChannelClosed {
                channel: channel.id,
                reason,
            }));
        }
    }
}

impl ConsumerEntry {
    /// Rejects, with requeue, what the cancelled consumer had buffered.
    fn give_back_buffered(mut self) {
        give_back_remaining(&mut self.stream, self.no_ack);
    }
}

/// Takes what an ended (or cancelled) consumer stream still holds, without waiting, and
/// rejects each delivery with requeue.
pub(super) fn give_back_remaining(stream: &mut AsyncConsumer, no_ack: bool) {
    let mut cx = Context::from_waker(Waker::noop());
    while let Poll::Ready(Some(item)) = Pin::new(&mut *stream).poll_next(&mut cx) {
        if let Ok(delivery) = item {
            give_back(delivery, no_ack);
        }
    }
}

/// Rejects a delivery no callback will see, with requeue, so the broker delivers it again.
fn give_back(delivery: Delivery, no_ack: bool) {
    if no_ack {
        // The broker forgot it when it sent it; rejecting would close the channel (406).
        tracing::debug!(
            delivery_tag = delivery.delivery_tag,
            consumer_tag = %delivery.consumer_tag,
            "dropping a no-ack delivery for a cancelled consumer"
        );
        return;
    }
    tracing::debug!(
        delivery_tag = delivery.delivery_tag,
        consumer_tag = %delivery.consumer_tag,
        "rejecting (requeue) a delivery for a cancelled consumer"
    );
    if let Err(e) = delivery.reject(true) {
        // The channel is gone, and with it the delivery: the broker has requeued it.
        tracing::debug!(error = %e, "could not reject a delivery for a cancelled consumer");
    }
}

/// A waker that wakes every thread waiting in `drain_events`.
#[derive(Default)]
struct FanOut {
    wakers: Mutex<Vec<Waker>>,
}

impl FanOut {
    fn register(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    fn wake_all(&self) {
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|p| p.into_inner()));
        for waker in wakers {
            waker.wake();
        }
    }
}

impl Wake for FanOut {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}
