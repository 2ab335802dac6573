//! Waiting for one publish's confirm without async: what a sliding confirm window needs.

use std::sync::Arc;
use std::time::Duration;

use super::connection::Inner;
use crate::confirm::Confirmation;
use crate::error::{Error, Result};

/// The broker's verdict on one message published with
/// [`Channel::basic_publish`](super::Channel::basic_publish), to wait for later.
///
/// The message is already on its way: dropping this does not cancel it. On a channel without
/// confirms it resolves at once to [`Confirmation::NotRequested`]. Confirms usually arrive in
/// publishing order, so a sliding window keeps these in a queue and waits for the oldest
/// once the window is full (py-amqp programs do the same with `events['basic_ack']`
/// callbacks and `drain_events`); one that is already confirmed returns without blocking.
///
/// # Examples
///
/// ```
/// # fn demo(ch: &lepus::blocking::Channel) -> Result<(), lepus::Error> {
/// use std::collections::VecDeque;
/// use lepus::{BasicProperties, BasicPublishOptions};
///
/// # ch.queue_declare("jobs", lepus::QueueDeclareOptions::default())?;
/// ch.confirm_select()?;
/// let props = BasicProperties::default();
/// let mut window = VecDeque::new();
/// for i in 0..10_000 {
///     let body = format!("job {i}");
///     window.push_back(ch.basic_publish("", "jobs", BasicPublishOptions::default(), &props, body)?);
///     if window.len() > 1000 {
///         let oldest = window.pop_front().expect("the window is not empty");
///         assert!(oldest.wait()?.is_ack());
///     }
/// }
/// for confirm in window {
///     assert!(confirm.wait()?.is_ack());
/// }
/// # Ok(()) }
/// # fn main() -> Result<(), lepus::Error> {
/// # let conn = lepus::blocking::Connection::connect("memory://")?;
/// # let ch = conn.open_channel()?;
/// # demo(&ch)?;
/// # conn.close()
/// # }
/// ```
pub struct PublisherConfirm {
    inner: crate::PublisherConfirm,
    conn: Arc<Inner>,
}

impl std::fmt::Debug for PublisherConfirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl PublisherConfirm {
    pub(super) fn new(inner: crate::PublisherConfirm, conn: Arc<Inner>) -> Self {
        Self { inner, conn }
    }

    /// Blocks until the broker acks or nacks the message, or the channel or connection ends.
    ///
    /// # Errors
    ///
    /// The channel's or connection's error when it ends before the confirm arrives.
    #[track_caller]
    pub fn wait(self) -> Result<Confirmation> {
        self.conn.io.block_on(self.inner)
    }

    /// Like [`wait`](Self::wait), for at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the broker has not answered by then (the confirm is then no
    /// longer tracked: use [`Channel::wait_for_confirms`](super::Channel::wait_for_confirms)
    /// to learn about it), and as [`wait`](Self::wait).
    #[track_caller]
    pub fn wait_timeout(self, timeout: Duration) -> Result<Confirmation> {
        let Self { inner, conn } = self;
        conn.io.block_on(async move {
            tokio::time::timeout(timeout, inner)
                .await
                .unwrap_or(Err(Error::Timeout {
                    what: "publisher confirm",
                    after: timeout,
                }))
        })
    }
}
