//! The plaintext backend every proxy forwards to, run as its own process on
//! the load generator's CPU.
//!
//! The first byte a client sends picks what the connection is:
//! - `E`: echo everything, for as long as the connection lives;
//! - `O`: echo one 64-byte message, then close (the handshake load: the
//!   backend closes first, so neither the client nor the proxy piles up
//!   TIME_WAIT sockets on ephemeral ports);
//! - `S`: sink: count and discard (bulk throughput);
//! - `Q`: answer the sink's byte count so far (8 bytes, big-endian), then close.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const MESSAGE: usize = 64;

pub async fn run() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("ready {}", listener.local_addr()?.port());
    let sunk = Arc::new(AtomicU64::new(0));
    loop {
        let (s, _) = match listener.accept().await {
            Ok(a) => a,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let sunk = sunk.clone();
        tokio::spawn(async move {
            let _ = serve(s, sunk).await;
        });
    }
}

async fn serve(mut s: TcpStream, sunk: Arc<AtomicU64>) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await?;
    match first[0] {
        b'E' => {
            let mut buf = vec![0u8; 1024];
            s.write_all(&first).await?;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                s.write_all(&buf[..n]).await?;
            }
        }
        b'O' => {
            let mut msg = [0u8; MESSAGE];
            msg[0] = first[0];
            s.read_exact(&mut msg[1..]).await?;
            s.write_all(&msg).await?;
            Ok(())
        }
        b'S' => {
            sunk.fetch_add(1, Ordering::Relaxed);
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                sunk.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        b'Q' => {
            s.write_all(&sunk.load(Ordering::Relaxed).to_be_bytes())
                .await
        }
        _ => Ok(()),
    }
}

/// Asks the backend at `port` how many bytes its sink has taken.
pub async fn sunk(port: u16) -> Result<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"Q").await?;
    let mut b = [0u8; 8];
    s.read_exact(&mut b).await?;
    Ok(u64::from_be_bytes(b))
}
