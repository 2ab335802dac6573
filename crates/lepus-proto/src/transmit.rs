//! The outgoing byte queue.
//!
//! Method and header frames are encoded straight into one growing buffer. Large bodies are not
//! copied: the buffer written so far is frozen into a chunk and the body goes into the queue as
//! its own [`Bytes`], ready for a vectored write. Small bodies are copied, because copying a few
//! hundred bytes costs less than another I/O slice.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Bodies at least this long are queued by reference instead of copied.
const ZERO_COPY_MIN: usize = 4096;

/// The encode buffer grows by this much at a time, so that a burst of small frames costs one
/// allocation per block rather than one per frame (while earlier bytes are still being
/// written, the buffer cannot be reused in place).
const BLOCK: usize = 64 * 1024;

/// Room kept free before encoding a frame: larger frames grow the buffer themselves.
const HEADROOM: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct Transmit {
    buf: BytesMut,
    chunks: VecDeque<Bytes>,
    queued: usize,
}

impl Transmit {
    /// The buffer to encode frames into.
    #[inline]
    pub(crate) fn buf(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < HEADROOM {
            self.buf.reserve(BLOCK);
        }
        &mut self.buf
    }

    /// Appends body bytes, by reference when they are large.
    #[inline]
    pub(crate) fn push_body(&mut self, body: Bytes) {
        if body.len() < ZERO_COPY_MIN {
            self.buf().extend_from_slice(&body);
            return;
        }
        self.seal();
        self.queued += body.len();
        self.chunks.push_back(body);
    }

    fn seal(&mut self) {
        if !self.buf.is_empty() {
            let chunk = self.buf.split().freeze();
            self.queued += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// Bytes waiting to be handed to the driver.
    pub(crate) fn len(&self) -> usize {
        self.queued + self.buf.len()
    }

    /// Moves everything queued into `out`, in order, and returns how many bytes that was.
    pub(crate) fn drain_into(&mut self, out: &mut VecDeque<Bytes>) -> usize {
        self.seal();
        let n = self.queued;
        out.extend(self.chunks.drain(..));
        self.queued = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bodies_are_copied_large_ones_are_not() {
        let mut t = Transmit::default();
        t.buf().extend_from_slice(b"head");
        t.push_body(Bytes::from_static(b"small"));
        let large = Bytes::from(vec![7u8; ZERO_COPY_MIN]);
        t.push_body(large.clone());
        t.buf().extend_from_slice(b"end");
        assert_eq!(t.len(), 4 + 5 + ZERO_COPY_MIN + 3);
        let mut out = VecDeque::new();
        assert_eq!(t.drain_into(&mut out), 4 + 5 + ZERO_COPY_MIN + 3);
        assert_eq!(out.len(), 3);
        assert_eq!(&out[0][..], b"headsmall");
        assert_eq!(
            out[1].as_ptr(),
            large.as_ptr(),
            "large body must not be copied"
        );
        assert_eq!(&out[2][..], b"end");
        assert_eq!(t.len(), 0);
    }
}
