//! Bounds-checked reading from received bytes.
//!
//! Every read checks the remaining length first and returns [`DecodeError::Truncated`] instead
//! of panicking the way `bytes::Buf` does. Lengths read from the peer are only ever compared with
//! what is already in memory, never used to reserve memory.

use bytes::{Buf, Bytes};

use crate::error::DecodeError;

/// A cursor over a received frame payload.
pub(crate) struct Reader<'a> {
    buf: &'a mut Bytes,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a mut Bytes) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    #[inline]
    fn need(&self, n: usize, context: &'static str) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                context,
                needed: n as u64,
                available: self.buf.len() as u64,
            });
        }
        Ok(())
    }

    #[inline]
    pub(crate) fn u8(&mut self, context: &'static str) -> Result<u8, DecodeError> {
        self.need(1, context)?;
        Ok(self.buf.get_u8())
    }

    #[inline]
    pub(crate) fn u16(&mut self, context: &'static str) -> Result<u16, DecodeError> {
        self.need(2, context)?;
        Ok(self.buf.get_u16())
    }

    #[inline]
    pub(crate) fn u32(&mut self, context: &'static str) -> Result<u32, DecodeError> {
        self.need(4, context)?;
        Ok(self.buf.get_u32())
    }

    #[inline]
    pub(crate) fn u64(&mut self, context: &'static str) -> Result<u64, DecodeError> {
        self.need(8, context)?;
        Ok(self.buf.get_u64())
    }

    /// The next `len` bytes, sharing memory with the input.
    #[inline]
    pub(crate) fn bytes(
        &mut self,
        len: usize,
        context: &'static str,
    ) -> Result<Bytes, DecodeError> {
        self.need(len, context)?;
        Ok(self.buf.split_to(len))
    }

    /// Like [`bytes`](Self::bytes), for a 32-bit length read from the peer.
    #[inline]
    pub(crate) fn bytes_u32(
        &mut self,
        len: u32,
        context: &'static str,
    ) -> Result<Bytes, DecodeError> {
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated {
            context,
            needed: u64::from(len),
            available: self.buf.len() as u64,
        })?;
        self.bytes(len, context)
    }

    /// Fails with [`DecodeError::TrailingBytes`] unless every byte was consumed.
    pub(crate) fn finish(&self, context: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                context,
                count: self.buf.len(),
            })
        }
    }
}
