//! The load generator: new-connection handshakes, bulk upload, echo
//! round-trips, idle connections. Everything runs on the driver's
//! single-threaded runtime, on the load generator's CPU.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::backend::MESSAGE;

const OP_TIMEOUT: Duration = Duration::from_secs(10);

pub type Conn = TlsStream<TcpStream>;

/// Why one attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    Handshake,
    Data,
}

/// TCP connect, TLS handshake, one 64-byte message with `mode` as its first byte.
pub async fn open(
    addr: SocketAddr,
    cfg: &Arc<ClientConfig>,
    mode: u8,
) -> std::result::Result<Conn, Failure> {
    let tcp = match tokio::time::timeout(OP_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        _ => return Err(Failure::Connect),
    };
    let _ = tcp.set_nodelay(true);
    let mut tls = match tokio::time::timeout(
        OP_TIMEOUT,
        TlsConnector::from(cfg.clone()).connect(crate::tls::server_name(), tcp),
    )
    .await
    {
        Ok(Ok(t)) => t,
        _ => return Err(Failure::Handshake),
    };
    match tokio::time::timeout(OP_TIMEOUT, echo_once(&mut tls, mode)).await {
        Ok(Ok(())) => Ok(tls),
        _ => Err(Failure::Data),
    }
}

/// TCP connect and one 64-byte message, no TLS: the same connection as
/// `open` for a proxy forwarding plain TCP (the floor of the handshake test).
async fn open_plain(addr: SocketAddr, mode: u8) -> std::result::Result<TcpStream, Failure> {
    let mut tcp = match tokio::time::timeout(OP_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        _ => return Err(Failure::Connect),
    };
    let _ = tcp.set_nodelay(true);
    match tokio::time::timeout(OP_TIMEOUT, echo_once(&mut tcp, mode)).await {
        Ok(Ok(())) => Ok(tcp),
        _ => Err(Failure::Data),
    }
}

/// One 64-byte message with `mode` as its first byte, and its echo.
async fn echo_once<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, mode: u8) -> std::io::Result<()> {
    let mut msg = [b'x'; MESSAGE];
    msg[0] = mode;
    s.write_all(&msg).await?;
    // tokio-rustls may keep records in rustls until flushed.
    s.flush().await?;
    let mut back = [0u8; MESSAGE];
    s.read_exact(&mut back).await?;
    if back != msg {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}

/// Closes without leaving a TIME_WAIT socket on the client's side.
pub fn abort(conn: Conn) {
    let (tcp, _) = conn.into_inner();
    abort_plain(tcp);
}

/// `abort` for a connection without TLS.
fn abort_plain(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
}

/// One whole connection of the handshake test: `open` (or `open_plain`
/// when `cfg` is `None`), then `abort`.
pub async fn once(
    addr: SocketAddr,
    cfg: Option<&Arc<ClientConfig>>,
    mode: u8,
) -> std::result::Result<(), Failure> {
    match cfg {
        Some(cfg) => open(addr, cfg, mode).await.map(abort),
        None => open_plain(addr, mode).await.map(abort_plain),
    }
}

#[derive(Debug, Default)]
pub struct Counts {
    pub ok: AtomicU64,
    pub connect_errors: AtomicU64,
    pub handshake_errors: AtomicU64,
    pub data_errors: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct CountSnapshot {
    pub ok: u64,
    pub connect_errors: u64,
    pub handshake_errors: u64,
    pub data_errors: u64,
}

impl Counts {
    pub fn snapshot(&self) -> CountSnapshot {
        CountSnapshot {
            ok: self.ok.load(Ordering::Relaxed),
            connect_errors: self.connect_errors.load(Ordering::Relaxed),
            handshake_errors: self.handshake_errors.load(Ordering::Relaxed),
            data_errors: self.data_errors.load(Ordering::Relaxed),
        }
    }
}

impl std::ops::Sub for CountSnapshot {
    type Output = CountSnapshot;
    fn sub(self, o: CountSnapshot) -> CountSnapshot {
        CountSnapshot {
            ok: self.ok - o.ok,
            connect_errors: self.connect_errors - o.connect_errors,
            handshake_errors: self.handshake_errors - o.handshake_errors,
            data_errors: self.data_errors - o.data_errors,
        }
    }
}

/// New-connection load: `concurrency` loops of open (mode `O`) and abort,
/// until `stop` is set; without TLS when `cfg` is `None`.
pub struct HandshakeLoad {
    pub counts: Arc<Counts>,
    /// Nanoseconds from connect to the end of a successful connection
    /// (handshake and echo), from `record_times` on.
    pub times: Arc<std::sync::Mutex<Histogram<u64>>>,
    recording: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HandshakeLoad {
    pub fn start(
        addr: SocketAddr,
        cfg: Option<&Arc<ClientConfig>>,
        concurrency: usize,
    ) -> HandshakeLoad {
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let recording = Arc::new(AtomicBool::new(false));
        let times = Arc::new(std::sync::Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("constant bounds"),
        ));
        let tasks = (0..concurrency)
            .map(|_| {
                let (counts, stop, cfg) = (counts.clone(), stop.clone(), cfg.cloned());
                let (recording, times) = (recording.clone(), times.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        match once(addr, cfg.as_ref(), b'O').await {
                            Ok(()) => {
                                counts.ok.fetch_add(1, Ordering::Relaxed);
                                if recording.load(Ordering::Relaxed)
                                    && let Ok(mut h) = times.lock()
                                {
                                    h.saturating_record(t.elapsed().as_nanos() as u64);
                                }
                            }
                            Err(f) => {
                                let c = match f {
                                    Failure::Connect => &counts.connect_errors,
                                    Failure::Handshake => &counts.handshake_errors,
                                    Failure::Data => &counts.data_errors,
                                };
                                c.fetch_add(1, Ordering::Relaxed);
                                // A refused connect returns at once; do not spin.
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        HandshakeLoad {
            counts,
            times,
            recording,
            stop,
            tasks,
        }
    }

    /// Starts (or stops) recording connection times.
    pub fn record_times(&self, on: bool) {
        self.recording.store(on, Ordering::Relaxed);
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// One connection uploading to the sink until `stop`.
pub struct Upload {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Upload {
    /// Over TLS with `cfg`, or as plain TCP without it (the bulk floor).
    pub async fn start(addr: SocketAddr, cfg: Option<&Arc<ClientConfig>>) -> Result<Upload> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let task = match cfg {
            Some(cfg) => {
                let tls = TlsConnector::from(cfg.clone())
                    .connect(crate::tls::server_name(), tcp)
                    .await?;
                tokio::spawn(upload(tls, stop.clone()))
            }
            None => tokio::spawn(upload(tcp, stop.clone())),
        };
        Ok(Upload { stop, task })
    }

    pub async fn stop(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.context("upload task")?
    }
}

/// Writes 64 KiB at a time until `stop`; the first byte asks the backend to
/// sink.
async fn upload<S: AsyncWrite + Unpin>(mut s: S, stop: Arc<AtomicBool>) -> Result<()> {
    let mut chunk = vec![0u8; 64 * 1024];
    chunk[0] = b'S';
    s.write_all(&chunk).await?;
    chunk[0] = 0;
    while !stop.load(Ordering::Relaxed) {
        s.write_all(&chunk).await?;
    }
    s.shutdown().await.ok();
    Ok(())
}

/// Round-trip latency of 64-byte echoes over `conns` persistent connections,
/// recorded for `measure` after `warmup`.
pub async fn echo_latency(
    addr: SocketAddr,
    cfg: &Arc<ClientConfig>,
    conns: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<Histogram<u64>> {
    let mut opened = Vec::new();
    for _ in 0..conns {
        opened.push(
            open(addr, cfg, b'E')
                .await
                .map_err(|f| anyhow::anyhow!("echo connection: {f:?}"))?,
        );
    }
    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|mut c| {
            let (recording, stop) = (recording.clone(), stop.clone());
            tokio::spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
                let msg = [b'e'; MESSAGE];
                let mut back = [0u8; MESSAGE];
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    c.write_all(&msg).await?;
                    c.flush().await?;
                    c.read_exact(&mut back).await?;
                    if recording.load(Ordering::Relaxed) {
                        h.saturating_record(t.elapsed().as_nanos() as u64);
                    }
                }
                abort(c);
                Ok::<_, anyhow::Error>(h)
            })
        })
        .collect();
    tokio::time::sleep(warmup).await;
    recording.store(true, Ordering::Relaxed);
    tokio::time::sleep(measure).await;
    recording.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for t in tasks {
        let h = t.await.context("echo task")??;
        all.add(&h)?;
    }
    if all.is_empty() {
        bail!("no echo completed");
    }
    Ok(all)
}

/// Opens `n` connections (mode `E`, one round-trip each), `parallel` at a time.
pub async fn open_many(
    addr: SocketAddr,
    cfg: &Arc<ClientConfig>,
    n: usize,
    parallel: usize,
) -> Result<Vec<Conn>> {
    let mut out = Vec::with_capacity(n);
    let mut set = tokio::task::JoinSet::new();
    let mut started = 0;
    while out.len() < n {
        while started < n && set.len() < parallel {
            let cfg = cfg.clone();
            set.spawn(async move { open(addr, &cfg, b'E').await });
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(c))) => out.push(c),
            Some(Ok(Err(f))) => bail!("opening connection {} of {n}: {f:?}", out.len() + 1),
            Some(Err(e)) => bail!("opening connections: {e}"),
            None => break,
        }
    }
    Ok(out)
}

/// How many of `conns` still answer an echo, all asked at once and given
/// `wait` in all.
pub async fn still_answering(conns: &mut [Conn], wait: Duration) -> usize {
    let msg = [b'a'; MESSAGE];
    let rounds = conns.iter_mut().map(|c| async move {
        let round = async {
            c.write_all(&msg).await?;
            c.flush().await?;
            let mut back = [0u8; MESSAGE];
            c.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>(back == msg)
        };
        matches!(tokio::time::timeout(wait, round).await, Ok(Ok(true)))
    });
    let answers = futures_join_all(rounds).await;
    answers.into_iter().filter(|&a| a).count()
}

/// Runs futures concurrently on this task and collects their outputs.
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// One handshake; the name of the cipher suite the server chose.
pub async fn negotiated_suite(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> Option<String> {
    let tls = handshake(addr, cfg).await?;
    let suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| {
        let name = format!("{:?}", s.suite());
        name.strip_prefix("TLS13_")
            .map_or(name.clone(), |n| format!("TLS_{n}"))
    });
    abort(tls);
    suite
}

async fn handshake(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> Option<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    tokio::time::timeout(
        OP_TIMEOUT,
        TlsConnector::from(cfg.clone()).connect(crate::tls::server_name(), tcp),
    )
    .await
    .ok()?
    .ok()
}

/// One handshake; the DER of the leaf the server presented.
pub async fn presented_leaf(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> Option<Vec<u8>> {
    let tls = handshake(addr, cfg).await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    abort(tls);
    leaf
}
