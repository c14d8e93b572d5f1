//! Bidirectional copy with an idle timeout.
//!
//! `tokio::io::copy_bidirectional` has no notion of idleness; wrapping both
//! streams in a reader that stamps the time of the last byte lets a sibling
//! timer decide when a connection has been silent for too long, without
//! re-implementing the copy loop.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

struct Stamped<'a, S> {
    inner: &'a mut S,
    origin: Instant,
    last: Arc<AtomicU64>,
}

impl<S> Stamped<'_, S> {
    fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stamped<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stamped<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Copies both ways like `copy_bidirectional`, but gives up with
/// `ErrorKind::TimedOut` once neither side has sent a byte for `idle`.
pub async fn copy_with_idle_timeout<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let origin = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut sa = Stamped {
        inner: a,
        origin,
        last: last.clone(),
    };
    let mut sb = Stamped {
        inner: b,
        origin,
        last: last.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut sa, &mut sb);
    tokio::pin!(copy);
    loop {
        let deadline = origin + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            r = &mut copy => return r,
            _ = tokio::time::sleep_until(deadline) => {
                let again = origin + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
                if again <= Instant::now() {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle timeout"));
                }
            }
        }
    }
}
