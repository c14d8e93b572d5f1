//! Listeners accept, snapshot the current generation, terminate TLS and pipe
//! to the backend.
//!
//! The per-connection path takes exactly one snapshot of the current
//! generation (`load_full`, lock-free) and keeps it for the connection's
//! life; nothing on this path takes a lock across I/O. Listening sockets are
//! keyed by their configured address and survive reloads that keep the
//! address, so a reload never closes and re-binds a port.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::KeepaliveConfig;
use crate::generation::{Generation, ListenerRuntime};
use crate::proxy_protocol::ProxyProtocol;

/// A listener address that could not be bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindError {
    /// The configuration file that asked for the address.
    pub file: std::path::PathBuf,
    pub listener: String,
    pub addr: SocketAddr,
    pub reason: String,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: listener {:?}: cannot bind {}: {}",
            self.file.display(),
            self.listener,
            self.addr,
            self.reason
        )
    }
}

impl std::error::Error for BindError {}

/// Counters shared by every connection, for status and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub handshakes_ok: AtomicU64,
    /// Of `handshakes_ok`, those that resumed a session (ticket or ID).
    pub handshakes_resumed: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub backend_failures: AtomicU64,
    pub refused_over_limit: AtomicU64,
    pub bytes_from_clients: AtomicU64,
    pub bytes_to_clients: AtomicU64,
    pub drained: AtomicU64,
}

/// What every accept loop and connection shares.
pub struct ProxyContext {
    pub tracker: TaskTracker,
    /// Stops every accept loop (SIGTERM).
    pub stop_accepting: CancellationToken,
    /// Closes every connection (the stop deadline passed).
    pub hard_stop: CancellationToken,
    pub counters: Counters,
    pub total_open: AtomicUsize,
    /// Configured address -> the address actually bound (differs for port 0).
    bound: std::sync::Mutex<HashMap<SocketAddr, SocketAddr>>,
    /// The sockets an upgrade hands to a new process, and its progress.
    pub upgrader: crate::upgrade::Upgrader,
}

impl ProxyContext {
    pub fn new() -> Arc<ProxyContext> {
        Arc::new(ProxyContext {
            tracker: TaskTracker::new(),
            stop_accepting: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            counters: Counters::default(),
            total_open: AtomicUsize::new(0),
            bound: std::sync::Mutex::new(HashMap::new()),
            upgrader: crate::upgrade::Upgrader::default(),
        })
    }

    /// Configured listener address -> the local address actually bound.
    pub fn local_addrs(&self) -> HashMap<SocketAddr, SocketAddr> {
        self.bound.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record_bound(&self, bound: &HashMap<SocketAddr, Bound>) {
        *self.bound.lock().unwrap_or_else(|p| p.into_inner()) =
            bound.iter().map(|(k, b)| (*k, b.local)).collect();
    }
}

struct Bound {
    /// Stops this address's accept loop.
    stop: CancellationToken,
    local: SocketAddr,
}

/// Sockets bound for a candidate generation but not yet serving.
pub struct Prepared {
    new: Vec<(SocketAddr, TcpListener)>,
}

/// The listening sockets, keyed by configured address. Owned by the reloader.
pub struct Listeners {
    ctx: Arc<ProxyContext>,
    bound: HashMap<SocketAddr, Bound>,
}

impl Listeners {
    pub fn new(ctx: Arc<ProxyContext>) -> Listeners {
        Listeners {
            ctx,
            bound: HashMap::new(),
        }
    }

    /// Binds every address `config` has that is not bound yet. Fails whole:
    /// if one address cannot be bound, the ones bound here are closed again.
    pub fn prepare(&self, config: &crate::config::Config) -> Result<Prepared, BindError> {
        let mut new = Vec::new();
        for l in &config.listeners {
            if self.bound.contains_key(&l.bind) {
                continue;
            }
            // Started by an upgrade: the old process's socket for this
            // address, not a new bind (which would fail, or lose the queue).
            if let Some(listener) = self.ctx.upgrader.take_listener(l.bind) {
                new.push((l.bind, listener));
                continue;
            }
            let listener = bind(l.bind).map_err(|e| BindError {
                file: config.path.clone(),
                listener: l.name.clone(),
                addr: l.bind,
                reason: e.to_string(),
            })?;
            new.push((l.bind, listener));
        }
        Ok(Prepared { new })
    }

    /// After a commit: start accepting on the new addresses and stop on the
    /// ones the generation no longer has. Established connections are not
    /// touched.
    pub fn activate(
        &mut self,
        prepared: Prepared,
        generation: &Generation,
        store: Arc<ArcSwap<Generation>>,
    ) {
        for (addr, listener) in prepared.new {
            let local = listener.local_addr().unwrap_or(addr);
            let stop = CancellationToken::new();
            tracing::info!(
                listener = generation.listener_for(addr).map(|l| l.name.as_str()).unwrap_or(""),
                addr = %local,
                "listening"
            );
            self.ctx
                .upgrader
                .record_listener(addr, std::os::fd::AsFd::as_fd(&listener));
            tokio::spawn(accept_loop(
                self.ctx.clone(),
                store.clone(),
                listener,
                addr,
                stop.clone(),
            ));
            self.bound.insert(addr, Bound { stop, local });
        }
        let gone: Vec<SocketAddr> = self
            .bound
            .keys()
            .filter(|a| generation.listener_for(**a).is_none())
            .copied()
            .collect();
        for addr in gone {
            if let Some(b) = self.bound.remove(&addr) {
                tracing::info!(addr = %b.local, "listener removed; no longer accepting");
                self.ctx.upgrader.forget_listener(addr);
                b.stop.cancel();
            }
        }
        self.ctx.record_bound(&self.bound);
    }

    /// Stops every accept loop.
    pub fn stop_all(&mut self) {
        for (addr, b) in self.bound.drain() {
            self.ctx.upgrader.forget_listener(addr);
            b.stop.cancel();
        }
        self.ctx.record_bound(&self.bound);
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Lets a restarted stayup bind while old connections sit in TIME_WAIT;
    // it does not let two live sockets share the port.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // A burst of new connections waits here (see `accept_loop`); the
    // kernel caps this at net.core.somaxconn (4096 by default).
    socket.listen(4096)
}

async fn accept_loop(
    ctx: Arc<ProxyContext>,
    store: Arc<ArcSwap<Generation>>,
    listener: TcpListener,
    addr: SocketAddr,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            _ = ctx.stop_accepting.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                // The one snapshot this connection will ever take.
                let generation = store.load_full();
                ctx.tracker
                    .spawn(serve(ctx.clone(), generation, tcp, peer, addr));
                // One connection per turn of the runtime (nginx's default,
                // `multi_accept off`): every task already woken runs, and
                // the I/O driver is polled, before the next accept. Taking
                // the backlog in one go (tokio allows 128 before it makes
                // a task yield) put each burst of new handshakes in front
                // of the data of open connections: a 64-byte echo under
                // the benchmark's handshake load took 11 ms p50 and 27 ms
                // p99, against 0.5 and 0.9 ms this way, for 4-7% fewer
                // handshakes per CPU-second at full load. Waking itself
                // instead (back of the run queue, no driver poll) cost
                // nothing but left 3.5 and 6.8 ms. The rest of a burst
                // waits in the kernel's accept queue.
                tokio::task::yield_now().await;
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(addr = %addr, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Turns on TCP keepalive and the user timeout as configured (see
/// `KeepaliveConfig` for why). A failure is logged, not fatal: the
/// connection works without them.
fn set_keepalive(tcp: &TcpStream, keepalive: &KeepaliveConfig) {
    let sock = socket2::SockRef::from(tcp);
    if keepalive.enabled() {
        let params = socket2::TcpKeepalive::new()
            .with_time(keepalive.idle)
            .with_interval(keepalive.interval)
            .with_retries(keepalive.probes);
        if let Err(e) = sock.set_tcp_keepalive(&params) {
            tracing::debug!(error = %e, "could not turn on TCP keepalive");
        }
    }
    if !keepalive.user_timeout.is_zero()
        && let Err(e) = sock.set_tcp_user_timeout(Some(keepalive.user_timeout))
    {
        tracing::debug!(error = %e, "could not set the TCP user timeout");
    }
}

/// Decrements a counter when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn take_slot(counter: &AtomicUsize, max: usize) -> Option<Slot<'_>> {
    let before = counter.fetch_add(1, Ordering::Relaxed);
    let slot = Slot(counter);
    if max != 0 && before >= max {
        return None;
    }
    Some(slot)
}

/// Closes a refused connection with a FIN rather than a reset: a socket
/// closed with unread input (the client's hello) makes the kernel send RST,
/// which clients report as an error of the network rather than a refusal.
/// The unread input is drained for a short, bounded time: short because a
/// refusal happens under overload, when holding descriptors for refused
/// clients is the last thing the process needs. Callers box it: its read
/// buffer would otherwise be part of every connection's task.
async fn close_gently(mut tcp: TcpStream) {
    use tokio::io::AsyncReadExt;
    let _ = tcp.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(250), drain).await;
}

/// How a connection ended, for the connection log (`log.connections`).
enum End {
    /// Turned away by `max_connections` (the listener's or the total).
    Refused(&'static str),
    /// Its error says what the client did wrong (an unknown CA, no common
    /// protocol, no certificate where one is required) or that it left.
    HandshakeFailed(std::io::Error),
    HandshakeTimeout,
    BackendFailed(String),
    /// Both sides finished.
    Closed,
    IdleTimeout,
    /// A side failed (a reset, a broken pipe, a keepalive that went
    /// unanswered).
    Error(std::io::Error),
    /// Closed by `drain.timeout`: its generation had been superseded.
    Drained,
    /// Closed by the stop (its deadline, or a second stop signal).
    Stopped,
}

/// How connections end, as the connection log and the metrics name it.
pub const END_KINDS: [&str; 9] = [
    "closed",
    "error",
    "idle-timeout",
    "drained",
    "stopped",
    "handshake-failed",
    "handshake-timeout",
    "backend-failed",
    "refused",
];

impl End {
    /// The index of its name in [`END_KINDS`].
    fn kind(&self) -> usize {
        match self {
            End::Closed => 0,
            End::Error(_) => 1,
            End::IdleTimeout => 2,
            End::Drained => 3,
            End::Stopped => 4,
            End::HandshakeFailed(_) => 5,
            End::HandshakeTimeout => 6,
            End::BackendFailed(_) => 7,
            End::Refused(_) => 8,
        }
    }

    fn as_str(&self) -> &'static str {
        END_KINDS[self.kind()]
    }

    fn detail(&self) -> Option<String> {
        match self {
            End::Refused(why) => Some((*why).to_string()),
            // The only stream that can end this way is the client's TLS
            // one; rustls's own message for it carries a link to its manual.
            End::Error(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Some("the client closed the connection without a TLS close_notify".to_string())
            }
            End::HandshakeFailed(e) | End::Error(e) => Some(e.to_string()),
            End::BackendFailed(e) => Some(e.clone()),
            _ => None,
        }
    }
}

/// What a connection learned on its way, kept outside its handling so that
/// the log line has it even when the drain or the stop cut the handling
/// short. The strings are only copied when connections are logged.
#[derive(Default)]
struct Seen {
    bytes_in: u64,
    bytes_out: u64,
    tls: Option<Box<TlsSeen>>,
}

/// Filled in from the client's hello on (so that a failed handshake's line
/// still says which name the client asked for), the rest once the
/// handshake is done.
#[derive(Default)]
struct TlsSeen {
    /// From the accept to the end of the handshake.
    handshake_ms: Option<u64>,
    /// The backend connection: how long its connect took (the PROXY
    /// protocol header included), and stayup's side of it, which is the
    /// address the backend's own logs show.
    backend: Option<(u64, Option<SocketAddr>)>,
    version: Option<&'static str>,
    cipher: Option<&'static str>,
    /// The key exchange group (X25519MLKEM768 for a post-quantum client).
    group: Option<&'static str>,
    sni: Option<String>,
    alpn: Option<String>,
    /// The common name of a client certificate verified against `client_ca`.
    client_cn: Option<String>,
}

async fn serve(
    ctx: Arc<ProxyContext>,
    generation: Arc<Generation>,
    tcp: TcpStream,
    peer: SocketAddr,
    addr: SocketAddr,
) {
    let Some(listener) = generation.listener_for(addr) else {
        return;
    };
    let started = std::time::Instant::now();
    // Logged while the connection still counts as open, so that once
    // status shows it gone its line has been written.
    let log = |end: End, seen: &Seen| log_end(&generation, listener, peer, started, seen, &end);
    let limits = &generation.config.limits;
    let Some(_total) = take_slot(&ctx.total_open, limits.max_connections) else {
        ctx.counters
            .refused_over_limit
            .fetch_add(1, Ordering::Relaxed);
        log(
            End::Refused("limits.max_connections reached"),
            &Seen::default(),
        );
        Box::pin(close_gently(tcp)).await;
        return;
    };
    let Some(_own) = take_slot(&listener.stats.open, listener.max_connections) else {
        ctx.counters
            .refused_over_limit
            .fetch_add(1, Ordering::Relaxed);
        drop(_total);
        log(End::Refused("max_connections reached"), &Seen::default());
        Box::pin(close_gently(tcp)).await;
        return;
    };
    let _guard = generation.track();
    let _ = tcp.set_nodelay(true);
    set_keepalive(&tcp, &generation.config.tcp_keepalive);

    let mut seen = Seen::default();
    let end = tokio::select! {
        _ = generation.drain.cancelled() => {
            ctx.counters.drained.fetch_add(1, Ordering::Relaxed);
            End::Drained
        }
        _ = ctx.hard_stop.cancelled() => {
            ctx.counters.drained.fetch_add(1, Ordering::Relaxed);
            End::Stopped
        }
        end = handle(&ctx, &generation, listener, tcp, peer, started, &mut seen) => end,
    };
    log(end, &seen);
}

/// Whether the client closed before it sent its TLS hello: a TCP health
/// check (a Kubernetes `tcpSocket` probe, a load balancer's) or a port
/// scan. The connection log leaves these to the debug line, like HAProxy's
/// `dontlognull`; health checks every few seconds would drown it.
fn closed_before_hello(end: &End, seen: &Seen) -> bool {
    matches!(end, End::HandshakeFailed(e) if e.kind() == std::io::ErrorKind::UnexpectedEof)
        && seen.tls.is_none()
}

/// The connection log's line (`log.connections`), or without it a debug
/// line for a connection that did not end normally.
fn log_end(
    generation: &Generation,
    listener: &ListenerRuntime,
    peer: SocketAddr,
    started: std::time::Instant,
    seen: &Seen,
    end: &End,
) {
    listener.stats.ended[end.kind()].fetch_add(1, Ordering::Relaxed);
    if generation.config.log.connections && !closed_before_hello(end, seen) {
        let tls = seen.tls.as_deref();
        tracing::info!(
            target: "stayup::connection",
            listener = %listener.name,
            generation = generation.id,
            client = %peer,
            sni = %tls.and_then(|t| t.sni.as_deref()).unwrap_or("-"),
            tls = %tls.and_then(|t| t.version).unwrap_or("-"),
            cipher = %tls.and_then(|t| t.cipher).unwrap_or("-"),
            group = %tls.and_then(|t| t.group).unwrap_or("-"),
            alpn = %tls.and_then(|t| t.alpn.as_deref()).unwrap_or("-"),
            client_cn = tls.and_then(|t| t.client_cn.as_deref()),
            backend = %listener.backend,
            backend_from = tls.and_then(|t| t.backend?.1).map(tracing::field::display),
            handshake_ms = tls.and_then(|t| t.handshake_ms),
            connect_ms = tls.and_then(|t| t.backend).map(|b| b.0),
            duration_ms = millis(started.elapsed()),
            bytes_in = seen.bytes_in,
            bytes_out = seen.bytes_out,
            end = %end.as_str(),
            reason = end.detail().as_deref(),
            "connection"
        );
    } else if !matches!(end, End::Closed | End::Drained | End::Stopped) {
        tracing::debug!(
            listener = %listener.name,
            %peer,
            end = %end.as_str(),
            reason = end.detail().as_deref(),
            "connection ended"
        );
    }
}

async fn handle(
    ctx: &ProxyContext,
    generation: &Generation,
    listener: &ListenerRuntime,
    tcp: TcpStream,
    peer: SocketAddr,
    started: std::time::Instant,
    seen: &mut Seen,
) -> End {
    let own = &listener.stats;
    // The handshake and the backend connect are boxed: a future's size is
    // that of its largest state, and these transient ones would otherwise
    // make every connection's task reserve room for them for its whole life.
    let logged = generation.config.log.connections;
    let accept = async {
        // The client's hello first (cheap to read), then the expensive
        // part: key exchange and signature.
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
        if logged {
            // The name the client asked for, even if the handshake then fails.
            seen.tls = Some(Box::new(TlsSeen {
                sni: start.client_hello().server_name().map(str::to_string),
                ..TlsSeen::default()
            }));
        }
        // The expensive part waits until the tasks already woken have had
        // their turn: a burst of handshakes goes behind the data of open
        // connections, not in front of it (HAProxy runs handshakes in a
        // lower-priority class for the same reason). With one accept per
        // turn (`accept_loop`) this took the benchmark's echo under the
        // handshake load from 0.49 / 0.90 ms (p50 / p99) to 0.36 / 0.68 ms.
        tokio::task::yield_now().await;
        let tls = listener.tls.for_hello(&start.client_hello());
        start.into_stream(tls).await
    };
    let mut tls = match Box::pin(tokio::time::timeout(listener.handshake_timeout, accept)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            ctx.counters
                .handshakes_failed
                .fetch_add(1, Ordering::Relaxed);
            own.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            return End::HandshakeFailed(e);
        }
        Err(_) => {
            ctx.counters
                .handshake_timeouts
                .fetch_add(1, Ordering::Relaxed);
            own.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
            return End::HandshakeTimeout;
        }
    };
    ctx.counters.handshakes_ok.fetch_add(1, Ordering::Relaxed);
    own.handshakes_ok.fetch_add(1, Ordering::Relaxed);
    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        ctx.counters
            .handshakes_resumed
            .fetch_add(1, Ordering::Relaxed);
        own.handshakes_resumed.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(seen) = seen.tls.as_mut() {
        let conn = tls.get_ref().1;
        seen.handshake_ms = Some(millis(started.elapsed()));
        seen.version = tls_version_name(conn.protocol_version());
        seen.cipher = conn
            .negotiated_cipher_suite()
            .and_then(|s| crate::suites::name(s.suite()));
        seen.group = conn
            .negotiated_key_exchange_group()
            .and_then(|g| crate::groups::name(g.name()));
        seen.alpn = conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        seen.client_cn = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| crate::proxy_protocol::common_name(c));
    }
    let backend = &listener.backend;
    let header = match listener.backend_proxy_protocol {
        ProxyProtocol::None => Vec::new(),
        version => version.header(&proxy_connection(&tls, peer)),
    };
    // Connected, and the PROXY protocol header (if any) taken, within the
    // connect timeout. A fresh socket takes the header (a few hundred bytes
    // at most) at once; an empty one costs nothing. The header is moved in,
    // so it is freed once sent rather than kept for the connection's life.
    let keepalive = &generation.config.tcp_keepalive;
    let open = async move {
        let mut s = TcpStream::connect((backend.host.as_str(), backend.port))
            .await
            .map_err(|e| ("backend connect failed", e))?;
        let _ = s.set_nodelay(true);
        set_keepalive(&s, keepalive);
        s.write_all(&header)
            .await
            .map_err(|e| ("backend did not take the PROXY protocol header", e))?;
        Ok(s)
    };
    let connecting = logged.then(std::time::Instant::now);
    let mut upstream = match Box::pin(tokio::time::timeout(
        generation.config.limits.backend_connect_timeout,
        open,
    ))
    .await
    {
        Ok(Ok(s)) => s,
        failed => {
            ctx.counters
                .backend_failures
                .fetch_add(1, Ordering::Relaxed);
            let reason = match failed {
                Ok(Err((what, e))) => {
                    tracing::warn!(listener = %listener.name, backend = %backend, error = %e, "{what}");
                    format!("{what}: {e}")
                }
                _ => {
                    tracing::warn!(listener = %listener.name, backend = %backend, "backend connect timed out");
                    "backend connect timed out".to_string()
                }
            };
            let _ = tls.shutdown().await;
            return End::BackendFailed(reason);
        }
    };
    if let (Some(connecting), Some(t)) = (connecting, seen.tls.as_mut()) {
        t.backend = Some((millis(connecting.elapsed()), upstream.local_addr().ok()));
    }
    let idle = generation.config.limits.idle_timeout;
    let count = |up: u64, down: u64| {
        ctx.counters
            .bytes_from_clients
            .fetch_add(up, Ordering::Relaxed);
        ctx.counters
            .bytes_to_clients
            .fetch_add(down, Ordering::Relaxed);
        own.bytes_from_clients.fetch_add(up, Ordering::Relaxed);
        own.bytes_to_clients.fetch_add(down, Ordering::Relaxed);
        seen.bytes_in += up;
        seen.bytes_out += down;
    };
    // Writes to the client are sent a burst at a time, and the last ones
    // with the close_notify (see `batch`).
    let mut client = crate::batch::BatchedTls(&mut tls);
    match crate::pipe::copy_with_idle_timeout(&mut client, &mut upstream, idle, count).await {
        Ok(_) => End::Closed,
        Err(e) if crate::pipe::is_idle_timeout(&e) => {
            // stayup's own decision: end the TLS session properly
            // (close_notify) so the client sees a clean close, but never
            // wait long for a client that does not read.
            let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
            End::IdleTimeout
        }
        // A side failed (a reset, a broken pipe). No close_notify: if the
        // client's side failed there is nobody to send it to, and if the
        // backend's did, the stream was cut short and a close_notify would
        // tell the client it ended complete; closing without one lets the
        // client tell a truncated stream from a finished one (HAProxy and
        // nginx do the same).
        Err(e) => End::Error(e),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn tls_version_name(version: Option<rustls::ProtocolVersion>) -> Option<&'static str> {
    match version {
        Some(rustls::ProtocolVersion::TLSv1_3) => Some("TLSv1.3"),
        Some(rustls::ProtocolVersion::TLSv1_2) => Some("TLSv1.2"),
        _ => None,
    }
}

/// What the PROXY protocol header says about this connection.
fn proxy_connection(
    tls: &tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
) -> crate::proxy_protocol::Connection<'_> {
    let (tcp, conn) = tls.get_ref();
    let client_cert = conn.peer_certificates().and_then(|c| c.first());
    crate::proxy_protocol::Connection {
        client: Some(peer),
        local: tcp.local_addr().ok(),
        alpn: conn.alpn_protocol(),
        server_name: conn.server_name(),
        tls_version: tls_version_name(conn.protocol_version()),
        client_cn: client_cert.and_then(|c| crate::proxy_protocol::common_name(c)),
        client_cert: client_cert.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::{Shared, Trigger};
    use crate::pki::{Ca, LeafSpec};

    /// Where the test generation's listener is configured (nothing listens
    /// there): `serve` and `accept_loop` are told this address, as
    /// `Listeners` tells them the configured one, while the socket itself
    /// is on a free port.
    const CONFIGURED: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        9,
    ));

    /// A generation serving one listener (from files in the returned
    /// folder), and a socket listening on a free loopback port, with its
    /// address.
    async fn test_site() -> (
        tempfile::TempDir,
        Arc<Generation>,
        tokio::net::TcpListener,
        SocketAddr,
    ) {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("proxy test CA").expect("CA");
        let leaf = ca.leaf(&LeafSpec::server(&["localhost"])).expect("leaf");
        leaf.write(&dir.path().join("c.pem"), &dir.path().join("c.key"))
            .expect("write pair");
        let config = dir.path().join("stayup.yaml");
        std::fs::write(
            &config,
            format!(
                "listeners:\n  - name: web\n    bind: \"{CONFIGURED}\"\n    backend: \"{CONFIGURED}\"\n    \
                 tls:\n      certificates:\n        - cert: c.pem\n          key: c.key\n"
            ),
        )
        .expect("write config");
        let shared = Shared::new().expect("shared");
        let c = crate::reloader::load_candidate(&config, &shared, std::time::SystemTime::now())
            .expect("valid configuration");
        let generation = Arc::new(
            Generation::build(
                1,
                c.config,
                c.material,
                c.identity,
                Trigger::Startup,
                &shared,
            )
            .expect("build"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let local = listener.local_addr().expect("addr");
        (dir, generation, listener, local)
    }

    /// Every open connection is one spawned `serve` future, and a future is
    /// as large as its largest state for its whole life. A buffer or a timer
    /// held inline across an await (the refusal drain's 4 KiB buffer did
    /// this once) would add to every idle connection; the transient states
    /// are boxed so that this stays near the TLS stream's own size.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let (_dir, generation, listener, local) = test_site().await;
        let (_client, accepted) = tokio::join!(TcpStream::connect(local), listener.accept());
        let (tcp, peer) = accepted.expect("accept");

        let task = serve(ProxyContext::new(), generation, tcp, peer, CONFIGURED);
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= 2560,
            "a connection's task is {size} bytes; something large is held across an await"
        );
    }

    /// A burst of new connections waits in the kernel's accept queue, not
    /// in the runtime's run queue: between two accepts every other task gets
    /// its turn, so the data of open connections is not held up behind a
    /// burst of handshakes. Without the yield the loop takes the whole
    /// backlog in one poll.
    #[tokio::test(flavor = "current_thread")]
    async fn the_accept_loop_takes_one_connection_per_turn() {
        const BURST: usize = 20;
        let (_dir, generation, listener, local) = test_site().await;
        // Connected in the kernel before the loop starts: a whole burst in
        // the accept queue, the clients silent (their handshakes wait).
        let mut clients = Vec::new();
        for _ in 0..BURST {
            clients.push(TcpStream::connect(local).await.expect("connect"));
        }
        let ctx = ProxyContext::new();
        let store = Arc::new(ArcSwap::new(generation));
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            ctx.clone(),
            store,
            listener,
            CONFIGURED,
            stop.clone(),
        ));
        // How many connections are open after each turn of this task; the
        // connections wait for their ClientHello, so none ends.
        let mut seen = vec![0];
        for _ in 0..100_000 {
            if seen.last() == Some(&BURST) {
                break;
            }
            tokio::task::yield_now().await;
            let open = ctx.tracker.len();
            if seen.last() != Some(&open) {
                seen.push(open);
            }
        }
        stop.cancel();
        assert_eq!(
            seen.last(),
            Some(&BURST),
            "not every connection was accepted: {seen:?}"
        );
        let most = seen.windows(2).map(|w| w[1].saturating_sub(w[0])).max();
        assert!(
            most <= Some(2),
            "the accept loop took {most:?} connections between two turns of another task: {seen:?}"
        );
    }

    /// Bytes waiting to be read on the IPv4 socket `local` connected to
    /// `remote`, as the kernel reports them in /proc/net/tcp.
    fn unread(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
        let hex = |a: SocketAddr| match a {
            SocketAddr::V4(a) => format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(a.ip().octets()),
                a.port()
            ),
            SocketAddr::V6(_) => String::new(),
        };
        let (local, remote) = (hex(local), hex(remote));
        let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
        table.lines().skip(1).find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(1) != Some(&local.as_str()) || f.get(2) != Some(&remote.as_str()) {
                return None;
            }
            let queues = f.get(4)?;
            u64::from_str_radix(queues.split(':').nth(1)?, 16).ok()
        })
    }

    /// A new connection's key exchange waits until the tasks already woken
    /// have run: another task, woken in the same turn, sees the ClientHello
    /// read and the server's reply not yet written. Without the yield in
    /// `handle` both happen in the connection's one turn.
    #[tokio::test(flavor = "current_thread")]
    async fn the_key_exchange_waits_for_the_tasks_already_woken() {
        use tokio::io::AsyncReadExt;
        let (_dir, generation, listener, local) = test_site().await;
        let (client, accepted) = tokio::join!(TcpStream::connect(local), listener.accept());
        let mut client = client.expect("connect");
        let client_addr = client.local_addr().expect("client address");
        let (tcp, peer) = accepted.expect("accept");
        tokio::spawn(serve(
            ProxyContext::new(),
            generation,
            tcp,
            peer,
            CONFIGURED,
        ));
        // The connection's task waits for the ClientHello.
        tokio::time::sleep(Duration::from_millis(20)).await;

        let other = tokio::spawn(async move {
            let mut hello_seen = false;
            for _ in 0..1000 {
                let hello_waiting = unread(local, client_addr).unwrap_or(0) > 0;
                let replied = unread(client_addr, local).unwrap_or(0) > 0;
                if hello_seen && !hello_waiting && !replied {
                    return true;
                }
                if replied {
                    return false;
                }
                hello_seen |= hello_waiting;
                tokio::task::yield_now().await;
            }
            false
        });
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let mut from = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut hello = Vec::new();
        from.write_tls(&mut hello).expect("ClientHello");
        client.write_all(&hello).await.expect("send ClientHello");

        assert!(
            other.await.expect("task"),
            "no other task ran between reading the ClientHello and replying to it"
        );
        // And the reply comes after that.
        let mut buf = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut buf))
            .await
            .expect("the server's reply within 10 s")
            .expect("read");
        assert_eq!(buf[0], 0x16, "a TLS handshake record");
    }
}
