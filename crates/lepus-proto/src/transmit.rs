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

/// Frames are encoded into blocks of at most this size, so that a burst of small frames costs
/// one allocation per block rather than one per frame (while earlier bytes are still being
/// written, a block cannot be reused in place).
const BLOCK: usize = 64 * 1024;

/// The smallest block: what a quiet connection holds. Blocks double while traffic fills them
/// faster than the driver takes it, up to [`BLOCK`].
const MIN_BLOCK: usize = 4 * 1024;

/// Room kept free before encoding a frame: larger frames grow the buffer themselves.
const HEADROOM: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct Transmit {
    buf: BytesMut,
    chunks: VecDeque<Bytes>,
    queued: usize,
    /// The size of the block `buf` was cut from (0 before the first).
    block: usize,
    /// The most bytes the driver took at once since that block began.
    peak: usize,
}

impl Transmit {
    /// The buffer to encode frames into.
    #[inline]
    pub(crate) fn buf(&mut self) -> &mut BytesMut {
        self.room(HEADROOM)
    }

    /// The buffer to encode frames into, with at least `need` bytes free.
    #[inline]
    fn room(&mut self, need: usize) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < need {
            self.next_block(need);
        }
        &mut self.buf
    }

    /// Starts a new block. It doubles when the last one filled up before the driver took its
    /// bytes; otherwise it is sized after the most the driver took at once, so a connection
    /// that went quiet goes back to small blocks. The old block is reused in place when its
    /// bytes were all written and it is not too large.
    #[cold]
    fn next_block(&mut self, need: usize) {
        let busy = !self.buf.is_empty() || !self.chunks.is_empty();
        let want = if busy {
            self.block.saturating_mul(2)
        } else {
            self.peak.saturating_mul(4)
        };
        let size = want
            .next_power_of_two()
            .clamp(MIN_BLOCK, BLOCK)
            .max(need.next_power_of_two());
        self.seal();
        self.block = size;
        self.peak = 0;
        if self.buf.try_reclaim(size) && self.buf.capacity() <= 2 * size {
            return;
        }
        self.buf = BytesMut::with_capacity(size);
    }

    /// Lets go of the current block if nothing waits in it: called when the connection has
    /// been quiet for a while, so that an idle connection holds no block at all.
    pub(crate) fn release(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
            self.block = 0;
            self.peak = 0;
        }
        if self.chunks.is_empty() {
            self.chunks = VecDeque::new();
        }
    }

    /// Appends body bytes, by reference when they are large.
    #[inline]
    pub(crate) fn push_body(&mut self, body: Bytes) {
        if body.len() < ZERO_COPY_MIN {
            self.room(body.len()).extend_from_slice(&body);
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
        self.peak = self.peak.max(n);
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

    /// Encodes `n` bytes of small frames.
    fn encode(t: &mut Transmit, n: usize) {
        for _ in 0..n / 100 {
            t.buf().extend_from_slice(&[1; 100]);
        }
    }

    #[test]
    fn blocks_grow_under_load_and_start_small_again_after_a_lull() {
        let mut t = Transmit::default();
        encode(&mut t, 100);
        assert_eq!(
            t.block, MIN_BLOCK,
            "a new connection starts with a small block"
        );
        // The driver does not keep up: each full block doubles the next.
        encode(&mut t, 200_000);
        assert_eq!(t.block, BLOCK);
        let mut out = VecDeque::new();
        assert_eq!(t.drain_into(&mut out), 100 + 200_000 / 100 * 100);
        drop(out);
        // Now a trickle, taken frame by frame: once this block is used up, the next is sized
        // after what the driver took at once since it began: small again.
        for _ in 0..2 * BLOCK / 100 {
            encode(&mut t, 100);
            let mut out = VecDeque::new();
            t.drain_into(&mut out);
        }
        assert_eq!(t.block, MIN_BLOCK);
    }

    #[test]
    fn a_trickle_reuses_one_small_block_in_place() {
        let mut t = Transmit::default();
        encode(&mut t, 100);
        let mut out = VecDeque::new();
        t.drain_into(&mut out);
        drop(out);
        let first = t.buf.as_ptr() as usize - 100;
        for _ in 0..10 * MIN_BLOCK / 100 {
            encode(&mut t, 100);
            let mut out = VecDeque::new();
            t.drain_into(&mut out);
        }
        let at = t.buf.as_ptr() as usize;
        assert!(
            (first..first + MIN_BLOCK).contains(&at),
            "the written block is reclaimed, not replaced"
        );
    }

    #[test]
    fn release_lets_go_of_an_empty_block_only() {
        let mut t = Transmit::default();
        encode(&mut t, 100);
        t.release();
        assert_eq!(t.len(), 100, "bytes waiting are kept");
        let mut out = VecDeque::new();
        t.drain_into(&mut out);
        t.release();
        assert_eq!(t.buf.capacity(), 0);
        assert_eq!(t.block, 0);
        encode(&mut t, 100);
        assert_eq!(t.block, MIN_BLOCK);
    }

    #[test]
    fn a_small_body_larger_than_the_headroom_gets_a_block_that_holds_it() {
        let mut t = Transmit::default();
        t.buf().extend_from_slice(b"head");
        t.push_body(Bytes::from(vec![3u8; ZERO_COPY_MIN - 1]));
        let mut out = VecDeque::new();
        assert_eq!(t.drain_into(&mut out), 4 + ZERO_COPY_MIN - 1);
        let all: Vec<u8> = out.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(&all[..4], b"head");
        assert!(all[4..].iter().all(|&b| b == 3));
    }
}
