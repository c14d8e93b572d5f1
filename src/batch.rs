//! The client's TLS stream as the copy's writer, sending on flush.
//!
//! tokio-rustls encrypts and sends on every write. The copy (`pipe`) writes
//! a burst and then flushes once the reader has nothing more, or shuts the
//! writer down once the reader has ended; so when a write only encrypts into
//! rustls's queue and the flush sends the queue, the records of one burst
//! leave in one system call, and the last bytes of a connection leave in the
//! same segment as its close_notify instead of in a segment of their own
//! followed by another. For the short request-and-close connections that
//! make up most TLS traffic, that is one packet, one wake-up of the client
//! and one system call fewer per connection.

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Reads as the TLS stream does; writes are queued until a flush or the
/// shutdown. The queue is rustls's own, bounded by its buffer limit (64 KiB
/// of records by default): a write that finds it full sends it first.
pub struct BatchedTls<'a>(pub &'a mut TlsStream<TcpStream>);

impl AsyncRead for BatchedTls<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for BatchedTls<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let tls = &mut *self.get_mut().0;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let queued = tls.get_mut().1.writer().write(buf)?;
        if queued > 0 {
            return Poll::Ready(Ok(queued));
        }
        // The queue is full: send it, then queue.
        ready!(Pin::new(&mut *tls).poll_flush(cx))?;
        match tls.get_mut().1.writer().write(buf)? {
            0 => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            n => Poll::Ready(Ok(n)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_flush(cx)
    }

    /// Queues the close_notify behind whatever is queued, sends them
    /// together, then shuts the socket's sending side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Arc;
    use std::time::Duration;

    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::AsyncWriteExt;

    use crate::pki::{Ca, LeafSpec};

    /// A real TLS session over loopback: stayup's side as a tokio-rustls
    /// server stream, the client as rustls over a blocking socket, so that
    /// the test sees exactly what is on the wire and when.
    async fn session() -> (
        TlsStream<TcpStream>,
        rustls::ClientConnection,
        std::net::TcpStream,
    ) {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let ca = Ca::new("batch test CA").expect("CA");
        let leaf = ca.leaf(&LeafSpec::server(&["localhost"])).expect("leaf");
        let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).expect("key");
        let mut server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(leaf.der.clone())], key)
            .expect("server config");
        // No tickets: nothing but the test's own records after the handshake.
        server.send_tls13_tickets = 0;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca.pem.der.clone()))
            .expect("root");
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client_side = tokio::task::spawn_blocking(move || {
            let mut sock = std::net::TcpStream::connect(addr).expect("connect");
            let mut conn = rustls::ClientConnection::new(
                Arc::new(client),
                "localhost".try_into().expect("name"),
            )
            .expect("client");
            while conn.is_handshaking() {
                conn.complete_io(&mut sock).expect("client handshake");
            }
            (conn, sock)
        });
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(server))
            .accept(tcp)
            .await
            .expect("server handshake");
        let (conn, sock) = client_side.await.expect("client task");
        (tls, conn, sock)
    }

    /// Whatever one read of the client's socket returns within `wait`.
    fn read_once(sock: &mut std::net::TcpStream, wait: Duration) -> Vec<u8> {
        sock.set_read_timeout(Some(wait)).expect("timeout");
        let mut buf = vec![0u8; 64 * 1024];
        match sock.read(&mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Vec::new()
            }
            Err(e) => panic!("client read: {e}"),
        }
    }

    /// Everything the server sends until it shuts its side, decrypted:
    /// the plaintext, and whether a close_notify ended it.
    fn read_to_end(
        sock: &mut std::net::TcpStream,
        conn: &mut rustls::ClientConnection,
    ) -> (Vec<u8>, bool) {
        let mut plain = Vec::new();
        let mut closed = false;
        loop {
            let wire = read_once(sock, Duration::from_secs(10));
            if wire.is_empty() {
                return (plain, closed);
            }
            let mut rest = wire.as_slice();
            while !rest.is_empty() {
                conn.read_tls(&mut rest).expect("read_tls");
                let state = conn
                    .process_new_packets()
                    .expect("client accepts the records");
                closed |= state.peer_has_closed();
                let mut chunk = Vec::new();
                let _ = conn.reader().read_to_end(&mut chunk);
                plain.extend_from_slice(&chunk);
            }
        }
    }

    #[tokio::test]
    async fn writes_wait_for_the_flush() {
        let (mut tls, mut conn, mut sock) = session().await;
        let mut w = BatchedTls(&mut tls);
        w.write_all(b"first").await.expect("write");
        w.write_all(b" burst").await.expect("write");
        assert!(
            read_once(&mut sock, Duration::from_millis(200)).is_empty(),
            "a write went out before the flush"
        );
        w.flush().await.expect("flush");
        let wire = read_once(&mut sock, Duration::from_secs(10));
        conn.read_tls(&mut wire.as_slice()).expect("read_tls");
        conn.process_new_packets().expect("records");
        let mut plain = String::new();
        let _ = conn.reader().read_to_string(&mut plain);
        assert_eq!(plain, "first burst");
    }

    #[tokio::test]
    async fn the_last_writes_leave_with_the_close_notify() {
        let (mut tls, mut conn, mut sock) = session().await;
        let mut w = BatchedTls(&mut tls);
        w.write_all(b"the last bytes").await.expect("write");
        assert!(
            read_once(&mut sock, Duration::from_millis(200)).is_empty(),
            "the last write went out on its own"
        );
        w.shutdown().await.expect("shutdown");
        let (plain, closed) = read_to_end(&mut sock, &mut conn);
        assert_eq!(plain, b"the last bytes");
        assert!(closed, "no close_notify after the last bytes");
    }

    /// More than rustls's queue holds, with no flush in between: a write
    /// that finds the queue full sends it, and nothing is lost or reordered.
    #[tokio::test]
    async fn a_full_queue_is_sent_before_more_is_queued() {
        let (mut tls, mut conn, mut sock) = session().await;
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        let expected = data.clone();
        let reader = tokio::task::spawn_blocking(move || read_to_end(&mut sock, &mut conn));
        let mut w = BatchedTls(&mut tls);
        for chunk in data.chunks(40_000) {
            w.write_all(chunk).await.expect("write");
        }
        w.shutdown().await.expect("shutdown");
        let (plain, closed) = reader.await.expect("reader");
        assert!(plain == expected, "the stream arrived altered");
        assert!(closed);
    }
}
