//! Publisher confirms and returned messages.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use lepus_wire::{BasicProperties, ReplyCode, ShortStr};

use crate::driver::Shared;
use crate::error::{Error, Result};

/// A message the broker sent back (`basic.return`): mandatory and unroutable.
#[derive(Debug, Clone, PartialEq)]
pub struct ReturnedMessage {
    /// Why it came back, usually `312 NO_ROUTE`.
    pub reply_code: ReplyCode,
    /// The broker's text, such as `NO_ROUTE`.
    pub reply_text: String,
    /// The exchange it was published to.
    pub exchange: ShortStr,
    /// Its routing key.
    pub routing_key: ShortStr,
    /// Its properties.
    pub properties: BasicProperties,
    /// Its body.
    pub body: Bytes,
}

/// A confirmed publish kept to be published again after a recovery.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    /// UTF-8, checked when it was published.
    pub(crate) exchange: ShortStr,
    /// UTF-8, checked when it was published.
    pub(crate) routing_key: ShortStr,
    pub(crate) mandatory: bool,
    pub(crate) properties: BasicProperties,
    pub(crate) body: Bytes,
}

/// The confirmed publishes kept for replay, by confirm number, oldest first.
///
/// Numbers only grow and the broker confirms mostly in order (often with `multiple`), so a
/// ring buffer serves: a publish is a push at the back, a confirm a pop at the front; only an
/// out-of-order single confirm removes from the middle. No allocation per message.
#[derive(Debug, Default)]
pub(crate) struct Kept {
    items: VecDeque<(u64, Replay)>,
}

impl Kept {
    /// Keeps publish `seq`.
    pub(crate) fn insert(&mut self, seq: u64, replay: Replay) {
        match self.items.back() {
            Some((last, _)) if *last >= seq => {
                let at = self.items.partition_point(|(n, _)| *n < seq);
                self.items.insert(at, (seq, replay));
            }
            _ => self.items.push_back((seq, replay)),
        }
    }

    /// Forgets what confirm `tag` (and, with `multiple`, every earlier number) settled.
    pub(crate) fn settle(&mut self, tag: u64, multiple: bool) {
        if multiple {
            while self.items.front().is_some_and(|(n, _)| *n <= tag) {
                self.items.pop_front();
            }
        } else if let Ok(at) = self.items.binary_search_by_key(&tag, |(n, _)| *n) {
            self.items.remove(at);
        }
    }

    /// Whether publish `seq` is kept.
    pub(crate) fn contains(&self, seq: u64) -> bool {
        self.items.binary_search_by_key(&seq, |(n, _)| *n).is_ok()
    }

    /// The kept publishes, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &(u64, Replay)> {
        self.items.iter()
    }
}

/// How the broker settled a published message.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Confirmation {
    /// The broker took responsibility for the message. When it was mandatory and unroutable,
    /// RabbitMQ returns it first and then acks it; the returned message is attached here.
    Ack(Option<Box<ReturnedMessage>>),
    /// The broker could not take the message (for example, an internal error or a queue's
    /// overflow setting `reject-publish`).
    Nack(Option<Box<ReturnedMessage>>),
    /// The channel is not in confirm mode: nothing to wait for.
    NotRequested,
    /// The connection was lost before the broker confirmed the message: it may or may not
    /// have reached the broker. Publishing it again is at-least-once (a duplicate is
    /// possible); not publishing it again may lose it.
    Uncertain,
}

impl Confirmation {
    /// Whether the broker acked the message and did not return it.
    pub fn is_ack(&self) -> bool {
        matches!(self, Self::Ack(None))
    }

    /// Whether the broker nacked the message.
    pub fn is_nack(&self) -> bool {
        matches!(self, Self::Nack(_))
    }

    /// The returned message, if the broker sent it back.
    pub fn returned(&self) -> Option<&ReturnedMessage> {
        match self {
            Self::Ack(r) | Self::Nack(r) => r.as_deref(),
            Self::NotRequested | Self::Uncertain => None,
        }
    }
}

/// Resolves when the broker confirms one published message.
///
/// Returned by [`Channel::basic_publish`](crate::Channel::basic_publish). The message is
/// already on its way when this exists: awaiting it only waits for the broker's verdict, and
/// dropping it does not cancel the publish (so it is not `#[must_use]`: on a channel without
/// confirms there is nothing to wait for). Thousands may be awaited in any order. If the
/// channel or connection closes first, it resolves at once with that error.
pub struct PublisherConfirm {
    pending: Option<Pending>,
}

/// What a confirm future needs to find its result.
struct Pending {
    shared: Arc<Shared>,
    channel: u16,
    generation: u64,
    seq: u64,
    /// When it was published, for `lepus.confirm.duration`.
    #[cfg(feature = "metrics")]
    published: std::time::Instant,
}

impl std::fmt::Debug for PublisherConfirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("PublisherConfirm");
        if let Some(p) = &self.pending {
            d.field("channel", &p.channel).field("seq", &p.seq);
        }
        d.finish()
    }
}

impl PublisherConfirm {
    pub(crate) fn new(shared: Arc<Shared>, channel: u16, generation: u64, seq: u64) -> Self {
        Self {
            pending: Some(Pending {
                shared,
                channel,
                generation,
                seq,
                #[cfg(feature = "metrics")]
                published: std::time::Instant::now(),
            }),
        }
    }

    /// For a channel without confirms: resolves at once.
    pub(crate) fn not_requested() -> Self {
        Self { pending: None }
    }
}

impl Future for PublisherConfirm {
    type Output = Result<Confirmation>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(p) = &self.pending else {
            return Poll::Ready(Ok(Confirmation::NotRequested));
        };
        let mut inner = p.shared.lock();
        let found = inner
            .channels
            .get_mut(&p.channel)
            .filter(|slot| slot.generation == p.generation)
            .and_then(|slot| slot.confirms.poll(p.seq, cx.waker()));
        let result = match found {
            Some(Poll::Pending) => {
                drop(inner);
                // About to wait for the broker: make sure the publish is on its way.
                p.shared.flush_inline();
                return Poll::Pending;
            }
            Some(Poll::Ready(result)) => result,
            // The channel or connection ended: its error.
            None => Err(inner
                .check(p.channel, p.generation)
                .err()
                .unwrap_or_else(|| inner.closed_error())),
        };
        drop(inner);
        #[cfg(feature = "metrics")]
        if matches!(result, Ok(Confirmation::Ack(_) | Confirmation::Nack(_))) {
            p.shared
                .events
                .metrics
                .confirm_duration
                .record(p.published.elapsed());
        }
        self.pending = None;
        Poll::Ready(result)
    }
}

impl Drop for PublisherConfirm {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            let mut inner = p.shared.lock();
            if let Some(slot) = inner
                .channels
                .get_mut(&p.channel)
                .filter(|slot| slot.generation == p.generation)
            {
                slot.confirms.forget(p.seq);
            }
        }
    }
}

/// One published message of a channel in confirm mode.
#[derive(Debug)]
enum Entry {
    /// Not settled by the broker yet. The waker of the future awaiting it, and whether that
    /// future was dropped.
    Waiting {
        waker: Option<Waker>,
        abandoned: bool,
    },
    /// Settled; the result waits for its future.
    Settled(Result<Confirmation>),
    /// Taken by its future, or settled after the future was dropped.
    Gone,
}

/// The confirms of one channel, by sequence number: no allocation per publish once the
/// queue has grown to the number of confirms in flight.
#[derive(Debug, Default)]
pub(crate) struct ConfirmQueue {
    /// Sequence number of `entries[0]`.
    base: u64,
    entries: VecDeque<Entry>,
    /// Index of the first entry still waiting for the broker (`entries.len()` if none).
    first_waiting: usize,
    /// How many entries wait for the broker.
    unsettled: usize,
}

impl ConfirmQueue {
    /// Gives back the room a burst of publishes made, once all are settled.
    pub(crate) fn shrink(&mut self) {
        if self.entries.is_empty() {
            self.entries = VecDeque::new();
        }
    }

    /// Starts tracking the publish numbered `seq` (numbers come in order).
    pub(crate) fn push(&mut self, seq: u64) {
        if self.entries.is_empty() {
            self.base = seq;
            self.first_waiting = 0;
        }
        let next = self.base + self.entries.len() as u64;
        if seq < next {
            return;
        }
        for _ in next..seq {
            self.entries.push_back(Entry::Gone);
        }
        self.entries.push_back(Entry::Waiting {
            waker: None,
            abandoned: false,
        });
        self.unsettled += 1;
        self.skip_settled();
    }

    /// How many publishes wait for the broker's verdict.
    pub(crate) fn unsettled(&self) -> usize {
        self.unsettled
    }

    /// Whether every tracked publish is settled.
    pub(crate) fn is_drained(&self) -> bool {
        self.first_waiting >= self.entries.len()
    }

    /// Settles `tag` (and, with `multiple`, every earlier one) with `ack` or nack. The
    /// returned message belongs to `tag` itself. Wakers of settled futures go to `wake`.
    /// Returns whether anything was nacked.
    pub(crate) fn settle(
        &mut self,
        tag: u64,
        multiple: bool,
        ack: bool,
        mut returned: Option<Box<ReturnedMessage>>,
        wake: &mut Vec<Waker>,
    ) -> bool {
        let Some(last) = tag.checked_sub(self.base).map(|i| i as usize) else {
            return false;
        };
        let first = if multiple { self.first_waiting } else { last };
        let mut nacked = false;
        for (i, entry) in self.entries.iter_mut().enumerate().skip(first) {
            if i > last {
                break;
            }
            let Entry::Waiting { waker, abandoned } = entry else {
                continue;
            };
            nacked |= !ack;
            self.unsettled = self.unsettled.saturating_sub(1);
            wake.extend(waker.take());
            *entry = if *abandoned {
                Entry::Gone
            } else {
                let attached = if i == last { returned.take() } else { None };
                Entry::Settled(Ok(if ack {
                    Confirmation::Ack(attached)
                } else {
                    Confirmation::Nack(attached)
                }))
            };
        }
        self.skip_settled();
        self.pop_gone();
        nacked
    }

    /// Settles everything still waiting as [`Confirmation::Uncertain`] (the link was lost),
    /// but the publishes `kept(number)` keeps waiting for: they are published again.
    pub(crate) fn uncertain(&mut self, kept: impl Fn(u64) -> bool, wake: &mut Vec<Waker>) {
        let base = self.base;
        for (i, entry) in self.entries.iter_mut().enumerate() {
            if kept(base + i as u64) {
                continue;
            }
            if let Entry::Waiting { waker, abandoned } = entry {
                wake.extend(waker.take());
                self.unsettled = self.unsettled.saturating_sub(1);
                *entry = if *abandoned {
                    Entry::Gone
                } else {
                    Entry::Settled(Ok(Confirmation::Uncertain))
                };
            }
        }
        self.first_waiting = 0;
        self.skip_settled();
        self.pop_gone();
    }

    /// Settles everything still waiting with `error` (the channel or connection ended).
    pub(crate) fn fail(&mut self, error: &Error, wake: &mut Vec<Waker>) {
        self.settle_all(&Err(error.clone()), wake);
    }

    fn settle_all(&mut self, result: &Result<Confirmation>, wake: &mut Vec<Waker>) {
        for entry in self.entries.iter_mut() {
            if let Entry::Waiting { waker, abandoned } = entry {
                wake.extend(waker.take());
                *entry = if *abandoned {
                    Entry::Gone
                } else {
                    Entry::Settled(result.clone())
                };
            }
        }
        self.first_waiting = self.entries.len();
        self.unsettled = 0;
        self.pop_gone();
    }

    /// The result for `seq` if settled (taking it), else registers `waker`. `None` when
    /// there is nothing for `seq` (already taken).
    pub(crate) fn poll(&mut self, seq: u64, waker: &Waker) -> Option<Poll<Result<Confirmation>>> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        let entry = self.entries.get_mut(i)?;
        match entry {
            Entry::Waiting { waker: w, .. } => {
                match w {
                    Some(w) if w.will_wake(waker) => {}
                    _ => *w = Some(waker.clone()),
                }
                Some(Poll::Pending)
            }
            Entry::Settled(_) => {
                let Entry::Settled(result) = std::mem::replace(entry, Entry::Gone) else {
                    return None;
                };
                self.pop_gone();
                Some(Poll::Ready(result))
            }
            Entry::Gone => None,
        }
    }

    /// The future for `seq` was dropped: its result is not kept.
    pub(crate) fn forget(&mut self, seq: u64) {
        let Some(i) = seq.checked_sub(self.base).map(|i| i as usize) else {
            return;
        };
        match self.entries.get_mut(i) {
            Some(Entry::Waiting { waker, abandoned }) => {
                *waker = None;
                *abandoned = true;
            }
            Some(entry @ Entry::Settled(_)) => *entry = Entry::Gone,
            _ => {}
        }
        self.pop_gone();
    }

    fn skip_settled(&mut self) {
        while matches!(self.entries.get(self.first_waiting), Some(e) if !matches!(e, Entry::Waiting { .. }))
        {
            self.first_waiting += 1;
        }
    }

    fn pop_gone(&mut self) {
        while matches!(self.entries.front(), Some(Entry::Gone)) {
            self.entries.pop_front();
            self.base += 1;
            self.first_waiting = self.first_waiting.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lepus_wire::ReplyCode;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn queue(seqs: std::ops::RangeInclusive<u64>) -> ConfirmQueue {
        let mut q = ConfirmQueue::default();
        for seq in seqs {
            q.push(seq);
        }
        q
    }

    fn take(q: &mut ConfirmQueue, seq: u64) -> Option<Poll<Result<Confirmation>>> {
        q.poll(seq, Waker::noop())
    }

    fn is_ack(p: Option<Poll<Result<Confirmation>>>) -> bool {
        matches!(p, Some(Poll::Ready(Ok(c))) if c.is_ack())
    }

    #[test]
    fn a_lost_link_makes_confirms_uncertain_but_those_kept_for_replay() {
        let mut q = queue(1..=6);
        let mut wake = Vec::new();
        assert!(!q.settle(2, true, true, None, &mut wake));
        q.uncertain(|n| n == 4 || n == 6, &mut wake);
        for n in [3, 5] {
            assert!(
                matches!(
                    take(&mut q, n),
                    Some(Poll::Ready(Ok(Confirmation::Uncertain)))
                ),
                "{n}"
            );
        }
        assert_eq!(q.unsettled(), 2);
        assert!(!q.is_drained());
        // The kept ones settle later, with the verdict on their copies.
        assert!(!q.settle(6, true, true, None, &mut wake));
        assert!(is_ack(take(&mut q, 4)) && is_ack(take(&mut q, 6)));
        assert!(q.is_drained());
    }

    #[test]
    fn multiple_settles_everything_up_to_the_tag_and_wakes_waiters() {
        let mut q = queue(1..=5);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        assert!(matches!(q.poll(2, &waker), Some(Poll::Pending)));
        let mut wake = Vec::new();
        assert!(!q.settle(3, true, true, None, &mut wake));
        wake.drain(..).for_each(Waker::wake);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(!q.is_drained());
        for seq in [3, 1, 2] {
            assert!(is_ack(take(&mut q, seq)), "seq {seq}");
        }
        // Taken results are gone; the rest still wait.
        assert!(take(&mut q, 2).is_none());
        assert!(matches!(take(&mut q, 4), Some(Poll::Pending)));
        q.settle(5, true, true, None, &mut wake);
        assert!(q.is_drained());
    }

    #[test]
    fn unsettled_counts_what_still_waits_for_the_broker() {
        let mut q = queue(1..=5);
        let mut wake = Vec::new();
        assert_eq!(q.unsettled(), 5);
        q.settle(3, true, true, None, &mut wake);
        assert_eq!(q.unsettled(), 2);
        // A dropped future's publish still waits for the broker.
        q.forget(4);
        assert_eq!(q.unsettled(), 2);
        q.settle(4, false, false, None, &mut wake);
        assert_eq!(q.unsettled(), 1);
        // Settling again what is settled changes nothing.
        q.settle(3, true, true, None, &mut wake);
        assert_eq!(q.unsettled(), 1);
        q.fail(&Error::ChannelNotOpen(1), &mut wake);
        assert_eq!(q.unsettled(), 0);
        q.push(6);
        assert_eq!(q.unsettled(), 1);
    }

    #[test]
    fn single_confirms_may_come_out_of_order_and_nacks_carry_the_return() {
        let mut q = queue(10..=12);
        let mut wake = Vec::new();
        let returned = Box::new(ReturnedMessage {
            reply_code: ReplyCode::NO_ROUTE,
            reply_text: "NO_ROUTE".into(),
            exchange: ShortStr::default(),
            routing_key: ShortStr::from_static("nowhere"),
            properties: BasicProperties::default(),
            body: Bytes::from_static(b"x"),
        });
        assert!(q.settle(11, false, false, Some(returned), &mut wake));
        assert!(matches!(take(&mut q, 10), Some(Poll::Pending)));
        let Some(Poll::Ready(Ok(Confirmation::Nack(Some(r))))) = take(&mut q, 11) else {
            panic!("expected a nack with the returned message");
        };
        assert_eq!(r.routing_key.as_str(), Some("nowhere"));
        q.settle(10, false, true, None, &mut wake);
        q.settle(12, false, true, None, &mut wake);
        assert!(q.is_drained());
        assert!(is_ack(take(&mut q, 12)));
        assert!(is_ack(take(&mut q, 10)));
        assert!(q.entries.is_empty(), "everything taken is dropped");
    }

    #[test]
    fn dropped_futures_still_count_until_settled_and_keep_nothing() {
        let mut q = queue(1..=3);
        q.forget(1);
        q.forget(2);
        assert!(!q.is_drained(), "the broker has not settled them yet");
        let mut wake = Vec::new();
        q.settle(2, true, true, None, &mut wake);
        assert_eq!(q.base, 3, "settled and forgotten entries are dropped");
        q.fail(&Error::ChannelNotOpen(1), &mut wake);
        assert!(q.is_drained());
        assert!(matches!(
            take(&mut q, 3),
            Some(Poll::Ready(Err(Error::ChannelNotOpen(1))))
        ));
        assert!(q.entries.is_empty());
    }

    #[test]
    fn the_queue_reuses_its_space() {
        let mut q = ConfirmQueue::default();
        let mut wake = Vec::new();
        for round in 0..100u64 {
            for seq in round * 10 + 1..=round * 10 + 10 {
                q.push(seq);
            }
            q.settle(round * 10 + 10, true, true, None, &mut wake);
            for seq in round * 10 + 1..=round * 10 + 10 {
                assert!(is_ack(take(&mut q, seq)));
            }
        }
        assert!(q.entries.is_empty());
        assert!(q.entries.capacity() <= 16);
    }
}

#[cfg(test)]
mod kept_tests {
    use super::*;

    fn replay(n: u8) -> Replay {
        Replay {
            exchange: ShortStr::from_static(""),
            routing_key: ShortStr::from_static("q"),
            mandatory: false,
            properties: BasicProperties::default(),
            body: Bytes::from(vec![n]),
        }
    }

    fn numbers(k: &Kept) -> Vec<u64> {
        k.iter().map(|(n, _)| *n).collect()
    }

    #[test]
    fn confirms_in_order_out_of_order_and_multiple() {
        let mut k = Kept::default();
        for n in 1..=6 {
            k.insert(n, replay(n as u8));
        }
        k.settle(1, false);
        k.settle(4, false); // out of order
        assert_eq!(numbers(&k), [2, 3, 5, 6]);
        assert!(k.contains(5) && !k.contains(4));
        k.settle(5, true); // 2, 3 and 5
        assert_eq!(numbers(&k), [6]);
        k.settle(9, false); // unknown: nothing
        k.insert(3, replay(3)); // an older number still lands in order
        assert_eq!(numbers(&k), [3, 6]);
        k.settle(6, true);
        assert!(numbers(&k).is_empty());
    }
}
