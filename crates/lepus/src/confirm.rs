//! Publisher confirms and returned messages.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use lepus_wire::{BasicProperties, ReplyCode, ShortStr};
use tokio::sync::oneshot;

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
            Self::NotRequested => None,
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
    rx: Option<(oneshot::Receiver<Result<Confirmation>>, Arc<Shared>)>,
}

impl std::fmt::Debug for PublisherConfirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherConfirm")
            .field("requested", &self.rx.is_some())
            .finish()
    }
}

impl PublisherConfirm {
    pub(crate) fn new(rx: oneshot::Receiver<Result<Confirmation>>, shared: Arc<Shared>) -> Self {
        Self {
            rx: Some((rx, shared)),
        }
    }

    /// For a channel without confirms: resolves at once.
    pub(crate) fn not_requested() -> Self {
        Self { rx: None }
    }
}

impl Future for PublisherConfirm {
    type Output = Result<Confirmation>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some((rx, shared)) = self.rx.as_mut() else {
            return Poll::Ready(Ok(Confirmation::NotRequested));
        };
        match Pin::new(rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_)) => Poll::Ready(Err(Error::InvalidState(
                "the connection ended before the confirm arrived",
            ))),
            Poll::Pending => {
                // About to wait for the broker: make sure the publish is on its way.
                shared.flush_inline();
                Poll::Pending
            }
        }
    }
}
