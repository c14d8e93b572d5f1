//! Bidirectional copy with an optional idle timeout, holding no buffer while
//! a connection is idle.
//!
//! `tokio::io::copy_bidirectional` gives every connection two 8 KiB buffers
//! for its whole life. A proxy for long-lived connections (databases, MQTT,
//! WebSockets) mostly holds idle ones, so that is most of its memory per
//! connection. Here each direction reads into a buffer on the thread's stack
//! and writes straight from it; only bytes the writer cannot take yet are
//! moved to the heap, and that spill is freed as soon as it is written. An
//! idle connection owns no copy buffer at all.
//!
//! A writer is flushed once per burst: when the reader has nothing more for
//! now, or (by the shutdown) when it has ended. A writer that queues its
//! writes until the flush (the client's TLS stream, `batch`) thus sends a
//! burst in one system call, and the last bytes with its end.
//!
//! The idle timer is re-armed lazily: it fires at most once per `idle`
//! period, and then checks when the last byte was read.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The most one write carries: four full TLS records' plaintext. It lives on
/// the stack only while a direction is being polled.
const CHUNK: usize = 64 * 1024;

/// One direction of the copy.
#[derive(Default)]
struct Half {
    /// Bytes read but not yet written, only while the writer is behind.
    spill: Option<Box<[u8]>>,
    pos: usize,
    /// The reader has reached EOF.
    read_done: bool,
    /// The writer has been shut down: this direction is finished.
    done: bool,
    /// Written since the last flush.
    need_flush: bool,
    /// Bytes read since the caller last looked.
    read_some: bool,
    amt: u64,
    /// `amt` as last passed to the progress callback.
    reported: u64,
}

impl Half {
    /// Bytes written since the last call.
    fn unreported(&mut self) -> u64 {
        let new = self.amt - self.reported;
        self.reported = self.amt;
        new
    }

    fn write_all_or_spill<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
        bytes: &[u8],
    ) -> Poll<io::Result<()>> {
        let mut off = 0;
        while off < bytes.len() {
            match Pin::new(&mut *w).poll_write(cx, &bytes[off..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    off += n;
                    self.amt += n as u64;
                    self.need_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.spill = Some(bytes[off..].into());
                    self.pos = 0;
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Copies from `r` to `w` until `r` ends and `w` is shut down.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(self.amt));
        }
        loop {
            if let Some(spill) = self.spill.take() {
                let rest = &spill[self.pos..];
                let mut off = 0;
                while off < rest.len() {
                    match Pin::new(&mut *w).poll_write(cx, &rest[off..]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        Poll::Ready(Ok(n)) => {
                            off += n;
                            self.amt += n as u64;
                            self.need_flush = true;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            self.pos += off;
                            self.spill = Some(spill);
                            return Poll::Pending;
                        }
                    }
                }
                self.pos = 0;
            }
            if self.read_done {
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(self.amt));
            }
            let mut stack = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut buf = ReadBuf::uninit(&mut stack);
            match Pin::new(&mut *r).poll_read(cx, &mut buf) {
                Poll::Pending => {
                    if self.need_flush {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            if buf.filled().is_empty() {
                self.read_done = true;
                continue;
            }
            self.read_some = true;
            // Gather whatever else is readable already (more TLS records), so
            // that one write carries it all: fewer writes, and fewer wake-ups
            // of the process reading the other end.
            let mut drained = false;
            while buf.remaining() > 0 {
                let before = buf.filled().len();
                match Pin::new(&mut *r).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if buf.filled().len() > before => {}
                    Poll::Ready(Ok(())) => {
                        self.read_done = true;
                        break;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        drained = true;
                        break;
                    }
                }
            }
            ready!(self.write_all_or_spill(cx, w, buf.filled()))?;
            // The burst is over and the reader will wake us: send it now
            // rather than after one more read that would find nothing. When
            // the reader ended instead, the shutdown (next turn) sends the
            // last bytes and the writer's end together: for TLS, the last
            // records and the close_notify in one segment.
            if drained {
                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                self.need_flush = false;
                return Poll::Pending;
            }
        }
    }
}

/// The error `copy_with_idle_timeout` ends with when `idle` passed with no
/// traffic, told apart from a socket's own timeout by `is_idle_timeout`.
#[derive(Debug)]
struct IdleTimeout;

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("idle timeout")
    }
}

impl std::error::Error for IdleTimeout {}

/// Whether the copy ended because neither side sent anything for `idle`
/// (rather than because a side failed).
pub fn is_idle_timeout(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<IdleTimeout>())
}

/// Copies both ways like `copy_bidirectional`: when one side ends, the
/// other side's writer is shut down, and the copy ends when both directions
/// have. Returns the bytes copied from `a` to `b` and from `b` to `a`. With
/// a non-zero `idle`, gives up with `ErrorKind::TimedOut` once neither side
/// has sent a byte for `idle`.
///
/// `progress` is told the bytes written each way as they go (never zero
/// both), so counters of long-lived connections move while they stream
/// rather than when they end, which may be days later.
pub async fn copy_with_idle_timeout<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    mut progress: impl FnMut(u64, u64),
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a_to_b = Half::default();
    let mut b_to_a = Half::default();
    let mut last = Instant::now();
    // Only connections with an idle timeout pay for a timer.
    let mut timer = (!idle.is_zero()).then(|| Box::pin(tokio::time::sleep(idle)));
    poll_fn(|cx| {
        let copied = (|| -> Poll<io::Result<(u64, u64)>> {
            let ab = a_to_b.poll_copy(cx, a, b)?;
            let ba = b_to_a.poll_copy(cx, b, a)?;
            match (ab, ba) {
                (Poll::Ready(up), Poll::Ready(down)) => Poll::Ready(Ok((up, down))),
                _ => Poll::Pending,
            }
        })();
        let (up, down) = (a_to_b.unreported(), b_to_a.unreported());
        if up != 0 || down != 0 {
            progress(up, down);
        }
        if copied.is_ready() {
            return copied;
        }
        let Some(timer) = timer.as_mut() else {
            return Poll::Pending;
        };
        if a_to_b.read_some || b_to_a.read_some {
            a_to_b.read_some = false;
            b_to_a.read_some = false;
            last = Instant::now();
        }
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = last + idle;
            if deadline <= Instant::now() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, IdleTimeout)));
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Two connected loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.expect("connect"), s.expect("accept").0)
    }

    /// client <-> (a | copy | b) <-> server, over real sockets.
    async fn through(
        idle: Duration,
    ) -> (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<io::Result<(u64, u64)>>,
    ) {
        let (client, mut a) = pair().await;
        let (mut b, server) = pair().await;
        let copy =
            tokio::spawn(
                async move { copy_with_idle_timeout(&mut a, &mut b, idle, |_, _| {}).await },
            );
        (client, server, copy)
    }

    #[tokio::test]
    async fn copies_both_ways_and_propagates_eof() {
        let (mut client, mut server, copy) = through(Duration::ZERO).await;
        // More than the kernel buffers hold, so the writer falls behind and
        // the spill path runs; checked byte for byte.
        let up: Vec<u8> = (0..8_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let down: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 + i / 97) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let c = tokio::spawn(async move {
            let (mut r, mut w) = client.split();
            let send = async {
                w.write_all(&up2).await?;
                w.shutdown().await
            };
            let mut got = Vec::new();
            let recv = r.read_to_end(&mut got);
            let (s, g) = tokio::join!(send, recv);
            s?;
            g?;
            Ok::<_, io::Error>(got)
        });
        let s = tokio::spawn(async move {
            let (mut r, mut w) = server.split();
            let send = async {
                w.write_all(&down2).await?;
                w.shutdown().await
            };
            let mut got = Vec::new();
            let recv = r.read_to_end(&mut got);
            let (s, g) = tokio::join!(send, recv);
            s?;
            g?;
            Ok::<_, io::Error>(got)
        });
        let at_client = c.await.expect("client task").expect("client io");
        let at_server = s.await.expect("server task").expect("server io");
        assert!(at_server == up, "upload corrupted");
        assert!(at_client == down, "download corrupted");
        let (a_to_b, b_to_a) = copy.await.expect("copy task").expect("copy");
        assert_eq!(a_to_b, up.len() as u64);
        assert_eq!(b_to_a, down.len() as u64);
    }

    #[tokio::test]
    async fn half_close_keeps_the_other_direction() {
        let (mut client, mut server, copy) = through(Duration::ZERO).await;
        client.shutdown().await.expect("client shutdown");
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).await.expect("server read"), 0);
        server.write_all(b"late reply").await.expect("server write");
        server.shutdown().await.expect("server shutdown");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("client read");
        assert_eq!(got, b"late reply");
        assert_eq!(copy.await.expect("task").expect("copy"), (0, 10));
    }

    #[tokio::test]
    async fn idle_connection_times_out() {
        let (_client, _server, copy) = through(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let e = tokio::time::timeout(Duration::from_secs(20), copy)
            .await
            .expect("the idle timeout must end the copy")
            .expect("task")
            .expect_err("an idle copy must fail");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn traffic_postpones_the_idle_timeout() {
        let idle = Duration::from_secs(1);
        let (mut client, mut server, copy) = through(idle).await;
        // Traffic every 100 ms for 2.5 s: more than two idle periods, never idle.
        for _ in 0..25 {
            client.write_all(b"ping").await.expect("write");
            let mut buf = [0u8; 4];
            server.read_exact(&mut buf).await.expect("read");
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!copy.is_finished(), "timed out despite traffic");
        }
        let e = tokio::time::timeout(Duration::from_secs(20), copy)
            .await
            .expect("the idle timeout must end the copy")
            .expect("task")
            .expect_err("an idle copy must fail");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
