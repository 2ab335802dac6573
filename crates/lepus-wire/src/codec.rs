//! Bounds-checked reading from received bytes.
//!
//! Every read checks the remaining length first and returns [`DecodeError::Truncated`] instead
//! of panicking the way `bytes::Buf` does. Lengths read from the peer are only ever compared with
//! what is already in memory, never used to reserve memory.
//!
//! A [`Reader`] is a window over a received buffer: numbers are read from a plain slice, and
//! only strings and byte arrays become [`Bytes`] (slices sharing the buffer's memory). Nested
//! structures (field tables, arrays) are read through a narrower window over the same buffer,
//! so decoding a frame costs one reference count per string it holds and nothing per frame.

use bytes::Bytes;

use crate::error::DecodeError;

/// A cursor over part of a received buffer.
pub(crate) struct Reader<'a> {
    /// The buffer strings are sliced from.
    src: &'a Bytes,
    /// What is left to read: always a part of `src`.
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over all of `src`.
    #[inline]
    pub(crate) fn new(src: &'a Bytes) -> Self {
        Self { src, rest: src }
    }

    /// A reader over `src[start..end]`, or `None` when that range is not within `src`.
    #[inline]
    pub(crate) fn window(src: &'a Bytes, start: usize, end: usize) -> Option<Self> {
        let rest = src.get(start..end)?;
        Some(Self { src, rest })
    }

    /// Bytes left to read.
    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    #[inline]
    fn truncated(&self, needed: usize, context: &'static str) -> DecodeError {
        DecodeError::Truncated {
            context,
            needed: needed as u64,
            available: self.rest.len() as u64,
        }
    }

    /// The next `N` bytes as an array.
    #[inline]
    fn array<const N: usize>(&mut self, context: &'static str) -> Result<[u8; N], DecodeError> {
        match self.rest.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(*head)
            }
            None => Err(self.truncated(N, context)),
        }
    }

    #[inline]
    pub(crate) fn u8(&mut self, context: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(context).map(|[b]| b)
    }

    #[inline]
    pub(crate) fn u16(&mut self, context: &'static str) -> Result<u16, DecodeError> {
        self.array(context).map(u16::from_be_bytes)
    }

    #[inline]
    pub(crate) fn u32(&mut self, context: &'static str) -> Result<u32, DecodeError> {
        self.array(context).map(u32::from_be_bytes)
    }

    #[inline]
    pub(crate) fn u64(&mut self, context: &'static str) -> Result<u64, DecodeError> {
        self.array(context).map(u64::from_be_bytes)
    }

    /// The next `len` bytes as a slice of the window.
    #[inline]
    fn take(&mut self, len: usize, context: &'static str) -> Result<&'a [u8], DecodeError> {
        match self.rest.split_at_checked(len) {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(head)
            }
            None => Err(self.truncated(len, context)),
        }
    }

    /// The next `len` bytes, sharing memory with the input.
    #[inline]
    pub(crate) fn bytes(
        &mut self,
        len: usize,
        context: &'static str,
    ) -> Result<Bytes, DecodeError> {
        let head = self.take(len, context)?;
        if head.is_empty() {
            return Ok(Bytes::new());
        }
        // `head` lies within `src` (every window is cut from it), so the offset is in range.
        let start = head.as_ptr() as usize - self.src.as_ptr() as usize;
        Ok(self.src.slice(start..start + head.len()))
    }

    /// Converts a 32-bit length read from the peer, failing as a truncation when it cannot be
    /// in memory.
    #[inline]
    fn len_u32(&self, len: u32, context: &'static str) -> Result<usize, DecodeError> {
        usize::try_from(len).map_err(|_| DecodeError::Truncated {
            context,
            needed: u64::from(len),
            available: self.rest.len() as u64,
        })
    }

    /// Like [`bytes`](Self::bytes), for a 32-bit length read from the peer.
    #[inline]
    pub(crate) fn bytes_u32(
        &mut self,
        len: u32,
        context: &'static str,
    ) -> Result<Bytes, DecodeError> {
        let len = self.len_u32(len, context)?;
        self.bytes(len, context)
    }

    /// A reader over the next `len` bytes (a nested table or array), which this one skips.
    #[inline]
    pub(crate) fn nested(&mut self, len: u32, context: &'static str) -> Result<Self, DecodeError> {
        let len = self.len_u32(len, context)?;
        let rest = self.take(len, context)?;
        Ok(Self {
            src: self.src,
            rest,
        })
    }

    /// Fails with [`DecodeError::TrailingBytes`] unless every byte was consumed.
    #[inline]
    pub(crate) fn finish(&self, context: &'static str) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                context,
                count: self.rest.len(),
            })
        }
    }
}

/// Reads one value from the front of `buf` with `read` and advances `buf` past what it took
/// (on success only).
#[inline]
pub(crate) fn read_from<T>(
    buf: &mut Bytes,
    read: impl FnOnce(&mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    let (value, left) = {
        let mut r = Reader::new(buf);
        let value = read(&mut r)?;
        (value, r.remaining())
    };
    bytes::Buf::advance(buf, buf.len() - left);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_share_the_buffer_and_nested_windows_stay_inside_their_length() {
        let src = Bytes::from_static(&[0, 0, 0, 3, b'a', b'b', b'c', 9, 0xff]);
        let mut r = Reader::new(&src);
        let len = r.u32("len").unwrap();
        let mut inner = r.nested(len, "table").unwrap();
        let s = inner.bytes(2, "s").unwrap();
        assert_eq!(&s[..], b"ab");
        assert_eq!(
            s.as_ptr(),
            src[4..].as_ptr(),
            "a slice of the input, not a copy"
        );
        assert!(matches!(
            inner.bytes(2, "s"),
            Err(DecodeError::Truncated {
                needed: 2,
                available: 1,
                ..
            })
        ));
        assert_eq!(
            r.u8("after").unwrap(),
            9,
            "the outer reader skipped the window"
        );
        assert!(matches!(
            r.finish("end"),
            Err(DecodeError::TrailingBytes { count: 1, .. })
        ));
        assert!(matches!(
            r.nested(u32::MAX, "big"),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn read_from_advances_only_past_what_a_successful_read_took() {
        let mut buf = Bytes::from_static(&[0, 7, 1, 2]);
        assert_eq!(read_from(&mut buf, |r| r.u16("x")).unwrap(), 7);
        assert_eq!(&buf[..], &[1, 2]);
        assert!(read_from(&mut buf, |r| r.u32("x")).is_err());
        assert_eq!(&buf[..], &[1, 2], "nothing consumed on error");
    }
}
