//! Per-channel state: outstanding requests, confirm sequence, and message assembly.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use lepus_wire::method::basic;
use lepus_wire::{BasicProperties, ContentHeader};

use super::replies::Expected;
use crate::event::Message;

#[derive(Debug)]
pub(crate) struct ChannelState {
    pub(crate) generation: u64,
    /// `channel.close` was sent; waiting for close-ok.
    pub(crate) closing: bool,
    /// Outstanding synchronous requests, oldest first.
    pub(crate) pending: VecDeque<Expected>,
    /// A message being assembled from method, header and body frames.
    pub(crate) incoming: Option<Incoming>,
    /// In confirm mode, the sequence number of the next publish.
    pub(crate) next_publish_seq: Option<u64>,
    /// The server closed the channel while our own close was outstanding, and that was
    /// reported; only the server's close-ok is still to come.
    pub(crate) close_reported: bool,
}

impl ChannelState {
    pub(crate) fn new(generation: u64) -> Self {
        Self {
            generation,
            closing: false,
            pending: VecDeque::new(),
            incoming: None,
            next_publish_seq: None,
            close_reported: false,
        }
    }
}

/// The method a message arrived with.
#[derive(Debug)]
pub(crate) enum Pending {
    Deliver(basic::Deliver),
    Return(basic::Return),
    GetOk(basic::GetOk),
}

#[derive(Debug)]
enum Body {
    Empty,
    /// One frame's bytes, shared with the read buffer: no copy.
    One(Bytes),
    /// Several frames, copied together into one buffer.
    Many(BytesMut),
}

#[derive(Debug)]
pub(crate) struct Incoming {
    pending: Pending,
    pub(crate) properties: Option<BasicProperties>,
    body_size: u64,
    received: u64,
    body: Body,
}

impl Incoming {
    pub(crate) fn new(pending: Pending) -> Self {
        Self {
            pending,
            properties: None,
            body_size: 0,
            received: 0,
            body: Body::Empty,
        }
    }

    pub(crate) fn start_body(&mut self, header: ContentHeader) {
        self.body_size = header.body_size;
        self.properties = Some(header.properties);
    }

    /// Adds a body frame; `false` if it goes past the declared size.
    pub(crate) fn push_body(&mut self, piece: Bytes) -> bool {
        let len = piece.len() as u64;
        if self.received + len > self.body_size {
            return false;
        }
        self.received += len;
        self.body = match std::mem::replace(&mut self.body, Body::Empty) {
            Body::Empty if self.received == self.body_size => Body::One(piece),
            Body::Empty => {
                // The header's size was checked against max_message_size, so this reservation
                // is bounded by configuration, not by the peer.
                let mut buf = BytesMut::with_capacity(self.body_size as usize);
                buf.extend_from_slice(&piece);
                Body::Many(buf)
            }
            Body::One(first) => {
                let mut buf = BytesMut::with_capacity(self.body_size as usize);
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&piece);
                Body::Many(buf)
            }
            Body::Many(mut buf) => {
                buf.extend_from_slice(&piece);
                Body::Many(buf)
            }
        };
        true
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.properties.is_some() && self.received == self.body_size
    }

    pub(crate) fn finish(self) -> (Pending, Message) {
        let body = match self.body {
            Body::Empty => Bytes::new(),
            Body::One(b) => b,
            Body::Many(b) => b.freeze(),
        };
        let properties = self.properties.unwrap_or_default();
        (self.pending, Message { properties, body })
    }
}
