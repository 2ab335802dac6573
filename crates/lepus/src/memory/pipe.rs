//! The stream between a client and an in-memory broker.
//!
//! `tokio::io::duplex` copies twice each way: into its buffer on write, out of it on read.
//! Here the client's writes are appended to a buffer the broker takes whole, without the
//! second copy (publishes are most of the traffic, and their bodies stay slices of that
//! buffer). The broker's output is copied into a buffer the client reads from, so that the
//! broker can reuse its own output buffer at once: a delivery costs no allocation.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What one direction holds, and who waits on it.
#[derive(Default)]
struct Half<T> {
    data: T,
    len: usize,
    /// The writing side is done (shut down or dropped).
    writer_gone: bool,
    /// The reading side is gone: writes fail.
    reader_gone: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

#[derive(Default)]
struct Shared {
    /// Client to broker: bytes appended by the client, taken whole by the broker.
    up: Mutex<Half<BytesMut>>,
    /// Broker to client: the broker's output, waiting to be read.
    down: Mutex<Half<BytesMut>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A pipe holding at most `limit` bytes each way before the writer waits.
pub(super) fn pipe(limit: usize) -> (ClientRead, ClientWrite, BrokerSide) {
    let shared = Arc::new(Shared::default());
    (
        ClientRead(Arc::clone(&shared)),
        ClientWrite {
            shared: Arc::clone(&shared),
            limit,
        },
        BrokerSide { shared, limit },
    )
}

/// The client's read side: the broker's output.
pub(super) struct ClientRead(Arc<Shared>);

/// The client's write side.
pub(super) struct ClientWrite {
    shared: Arc<Shared>,
    limit: usize,
}

/// The broker's end of the pipe.
pub(super) struct BrokerSide {
    shared: Arc<Shared>,
    limit: usize,
}

impl AsyncRead for ClientRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut down = lock(&self.0.down);
        if down.len == 0 {
            if down.writer_gone {
                return Poll::Ready(Ok(()));
            }
            down.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = down.len.min(buf.remaining());
        buf.put_slice(down.data.get(..n).unwrap_or_default());
        down.data.advance(n);
        down.len -= n;
        if let Some(w) = down.writer.take() {
            w.wake();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for ClientRead {
    fn drop(&mut self) {
        let mut down = lock(&self.0.down);
        down.reader_gone = true;
        down.data.clear();
        down.len = 0;
        if let Some(w) = down.writer.take() {
            w.wake();
        }
    }
}

impl AsyncWrite for ClientWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        src: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut up = lock(&self.shared.up);
        if up.reader_gone || up.writer_gone {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = self.limit.saturating_sub(up.len);
        if room == 0 {
            up.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(src.len());
        up.data.extend_from_slice(src.get(..n).unwrap_or_default());
        up.len += n;
        if let Some(r) = up.reader.take() {
            r.wake();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut up = lock(&self.shared.up);
        if up.reader_gone || up.writer_gone {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let mut room = self.limit.saturating_sub(up.len);
        if room == 0 {
            up.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut written = 0;
        for buf in bufs {
            let n = room.min(buf.len());
            up.data.extend_from_slice(buf.get(..n).unwrap_or_default());
            written += n;
            room -= n;
            if room == 0 {
                break;
            }
        }
        up.len += written;
        if let Some(r) = up.reader.take() {
            r.wake();
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.close();
        Poll::Ready(Ok(()))
    }
}

impl ClientWrite {
    fn close(&self) {
        let mut up = lock(&self.shared.up);
        up.writer_gone = true;
        if let Some(r) = up.reader.take() {
            r.wake();
        }
    }
}

impl Drop for ClientWrite {
    fn drop(&mut self) {
        self.close();
    }
}

impl BrokerSide {
    /// Everything the client wrote since the last call; `None` once the client is done
    /// writing and everything was taken.
    pub(super) async fn take(&self) -> Option<BytesMut> {
        std::future::poll_fn(|cx| {
            let mut up = lock(&self.shared.up);
            if up.len > 0 {
                up.len = 0;
                // Taken whole, not split: a split would leave a buffer that allocates the
                // whole original capacity again for the next small write.
                let data = std::mem::take(&mut up.data);
                if let Some(w) = up.writer.take() {
                    w.wake();
                }
                return Poll::Ready(Some(data));
            }
            if up.writer_gone {
                return Poll::Ready(None);
            }
            up.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Copies `bytes` to the client, waiting while the client holds `limit` bytes unread.
    ///
    /// # Errors
    ///
    /// `BrokenPipe` once the client stopped reading for good.
    pub(super) async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let mut rest = bytes;
        std::future::poll_fn(|cx| {
            let mut down = lock(&self.shared.down);
            if down.reader_gone {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            // At most `limit` bytes wait unread, so the buffer stops growing once it is that
            // large, and is reused from then on.
            let room = self.limit.saturating_sub(down.len);
            let n = room.min(rest.len());
            if n > 0 {
                down.data
                    .extend_from_slice(rest.get(..n).unwrap_or_default());
                down.len += n;
                rest = rest.get(n..).unwrap_or_default();
                if let Some(r) = down.reader.take() {
                    r.wake();
                }
            }
            if rest.is_empty() {
                return Poll::Ready(Ok(()));
            }
            down.writer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Ends the broker's output: the client reads what is queued, then the end of the stream.
    pub(super) fn close(&self) {
        let mut down = lock(&self.shared.down);
        down.writer_gone = true;
        if let Some(r) = down.reader.take() {
            r.wake();
        }
        drop(down);
        // The client's writes fail from now on, as on a closed socket.
        let mut up = lock(&self.shared.up);
        up.reader_gone = true;
        if let Some(w) = up.writer.take() {
            w.wake();
        }
    }
}

impl Drop for BrokerSide {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_cross_both_ways_and_the_ends_are_seen() {
        let (mut read, mut write, broker) = pipe(8);
        write.write_all(b"hello").await.unwrap();
        assert_eq!(&broker.take().await.unwrap()[..], b"hello");
        // A write larger than the limit waits for the broker to take the first part.
        let writer = tokio::spawn(async move {
            write.write_all(b"0123456789abcdef").await.unwrap();
            write
        });
        let mut got = Vec::new();
        while got.len() < 16 {
            got.extend_from_slice(&broker.take().await.unwrap());
        }
        assert_eq!(&got[..], b"0123456789abcdef");
        let write = writer.await.unwrap();
        broker.send(b"abc").await.unwrap();
        broker.send(b"defgh").await.unwrap();
        let mut buf = [0u8; 6];
        read.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"abcdef");
        drop(write);
        assert!(broker.take().await.is_none(), "the client's end was seen");
        broker.close();
        let mut rest = Vec::new();
        read.read_to_end(&mut rest).await.unwrap();
        assert_eq!(&rest[..], b"gh");
    }

    #[tokio::test]
    async fn writes_fail_once_the_other_side_is_gone() {
        let (read, mut write, broker) = pipe(8);
        drop(broker);
        assert!(write.write_all(b"x").await.is_err());
        let (read2, _write2, broker2) = pipe(8);
        drop(read2);
        assert!(broker2.send(b"x").await.is_err());
        drop(read);
    }
}
