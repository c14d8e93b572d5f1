//! Test harness: real files, a real `stayup` process, real TLS clients on
//! loopback. Every wait is for an event (a log line, a socket), bounded by a
//! generous timeout so a slow machine is not a failure.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use stayup::pki::{Ca, LeafSpec, Pem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A free loopback port for a listener (see [`free_addr`]).
pub fn free_port() -> u16 {
    free_addr().port()
}

/// A port the kernel hands out from its ephemeral range: free now, but any
/// outgoing connection may take it before it is bound again.
fn ephemeral_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A folder with a CA, certificates, keys and a top-level configuration file.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub config: PathBuf,
}

impl Site {
    pub fn new() -> Site {
        install_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("certs")).expect("mkdir certs");
        let ca = Ca::new("stayup test CA").expect("CA");
        let config = dir.path().join("stayup.yaml");
        Site { dir, ca, config }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `certs/<name>.pem` and `certs/<name>.key` for a server
    /// certificate covering `names`; returns the PEM (for its fingerprint).
    pub fn cert(&self, name: &str, names: &[&str]) -> Pem {
        self.cert_with(name, &LeafSpec::server(names))
    }

    pub fn cert_with(&self, name: &str, spec: &LeafSpec) -> Pem {
        let pem = self.ca.leaf(spec).expect("leaf");
        pem.write(
            &self.path(&format!("certs/{name}.pem")),
            &self.path(&format!("certs/{name}.key")),
        )
        .expect("write pair");
        pem
    }

    /// Writes `rel` with `bytes` (creating folders).
    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, bytes).expect("write");
        p
    }

    /// Publishes a new top-level file the safe way: write a temporary file
    /// in the same folder, then rename it over the configuration.
    pub fn publish(&self, yaml: &str) {
        let tmp = self.path(".stayup.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write tmp config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    /// A client configuration trusting this site's CA.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca.pem.cert, None)
    }
}

/// One listener's YAML block.
pub fn listener_yaml(name: &str, bind: SocketAddr, backend: SocketAddr, certs: &[&str]) -> String {
    let mut s = format!(
        "  - name: {name}\n    bind: \"{bind}\"\n    backend: \"{backend}\"\n    tls:\n      certificates:\n"
    );
    for c in certs {
        s.push_str(&format!(
            "        - cert: certs/{c}.pem\n          key: certs/{c}.key\n"
        ));
    }
    s
}

/// A whole configuration with one listener, watch off (tests that want the
/// watcher turn it on).
pub fn simple_config(bind: SocketAddr, backend: SocketAddr, cert: &str) -> String {
    format!(
        "listeners:\n{}reload:\n  watch: false\n",
        listener_yaml("web", bind, backend, &[cert])
    )
}

/// The usual start of a test: a site with certificate "a" for localhost,
/// an echo backend, a free address, the configuration `yaml(bind, backend)`
/// published, and the daemon started on it.
pub async fn serving(
    yaml: impl FnOnce(SocketAddr, SocketAddr) -> String,
) -> (Site, EchoBackend, SocketAddr, Daemon) {
    let (site, backend, bind) = site_for(yaml).await;
    let daemon = Daemon::start(&site.config).await;
    (site, backend, bind, daemon)
}

/// [`serving`] without the daemon, for tests that start it their own way.
pub async fn site_for(
    yaml: impl FnOnce(SocketAddr, SocketAddr) -> String,
) -> (Site, EchoBackend, SocketAddr) {
    let site = Site::new();
    site.cert("a", &["localhost"]);
    let backend = EchoBackend::start().await;
    let bind = free_addr();
    site.publish(&yaml(bind, backend.addr));
    (site, backend, bind)
}

pub fn client_config(ca_pem: &str, client_auth: Option<&Pem>) -> Arc<rustls::ClientConfig> {
    install_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA pem")).expect("add root");
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let cfg = match client_auth {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(pem.cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("client chain");
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
                .expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
    };
    Arc::new(cfg)
}

use rustls::pki_types::pem::PemObject;

/// A client of `site` that offers only `version` and keeps the sessions
/// (tickets, session ids) it is given, to resume them.
pub fn resuming_client(
    site: &Site,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    install_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(site.ca.pem.cert.as_bytes()) {
        roots.add(c.expect("CA pem")).expect("add root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_protocol_versions(&[version])
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::store(Arc::new(
        rustls::client::ClientSessionMemoryCache::new(64),
    ));
    Arc::new(cfg)
}

/// Opens a TLS connection to `addr` with SNI `sni`.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    TlsConnector::from(cfg).connect(name, tcp).await
}

/// Opens a TLS connection that must succeed within `WAIT`.
pub async fn connected(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> TlsStream<TcpStream> {
    tokio::time::timeout(WAIT, connect(addr, sni, cfg))
        .await
        .unwrap_or_else(|_| panic!("TLS connect to {addr} timed out"))
        .unwrap_or_else(|e| panic!("TLS connect to {addr}: {e}"))
}

/// SHA-256 of the certificate the server presented, lower-case hex.
pub fn peer_fingerprint(s: &TlsStream<TcpStream>) -> String {
    let (_, conn) = s.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server presented a certificate");
    hex::encode(stayup::material::sha256(leaf.as_ref()))
}

/// Connects, checks one echo round trip, and returns the fingerprint served.
pub async fn fingerprint_at(addr: SocketAddr, sni: &str, cfg: Arc<rustls::ClientConfig>) -> String {
    let mut s = connected(addr, sni, cfg).await;
    let fp = peer_fingerprint(&s);
    echo_round_trip(&mut s, b"ping").await;
    fp
}

pub async fn echo_round_trip<S>(s: &mut S, msg: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(msg).await.expect("write");
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .expect("echo timed out")
        .expect("read echo");
    assert_eq!(buf, msg);
}

/// A TCP echo server on loopback. With a tag, it first sends `tag\n`, so a
/// test can tell backends apart.
pub struct EchoBackend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoBackend {
    pub async fn start() -> EchoBackend {
        Self::start_tagged(None).await
    }

    pub async fn tagged(tag: &str) -> EchoBackend {
        Self::start_tagged(Some(tag.to_string())).await
    }

    async fn start_tagged(tag: Option<String>) -> EchoBackend {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = l.local_addr().expect("addr");
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let tag = tag.clone();
                tokio::spawn(async move {
                    if let Some(t) = tag
                        && s.write_all(format!("{t}\n").as_bytes()).await.is_err()
                    {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        EchoBackend {
            addr,
            accepted,
            task,
        }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the tag line a tagged backend sends first.
pub async fn read_tag<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        tokio::time::timeout(WAIT, s.read_exact(&mut b))
            .await
            .expect("tag timed out")
            .expect("read tag");
        if b[0] == b'\n' {
            break;
        }
        out.push(b[0]);
    }
    String::from_utf8(out).expect("tag utf8")
}

/// Streams pseudo-random data through an echo connection and checks every
/// byte that comes back, until stopped.
pub struct Streamer {
    stop: Arc<AtomicBool>,
    verified: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Result<u64, String>>,
}

impl Streamer {
    pub fn start<S>(stream: S) -> Streamer
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        Self::start_paced(stream, 4096, Duration::from_millis(5))
    }

    /// Like [`Streamer::start`], sending `chunk` bytes and pausing `pause`
    /// between round trips (many slow streams instead of a few fast ones).
    pub fn start_paced<S>(stream: S, chunk: usize, pause: Duration) -> Streamer
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let verified = Arc::new(AtomicU64::new(0));
        let (st, ver) = (stop.clone(), verified.clone());
        let task = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(stream);
            let mut seq: u64 = 0;
            let mut expect: u64 = 0;
            let mut chunk = vec![0u8; chunk];
            let mut back = vec![0u8; chunk.len()];
            while !st.load(Ordering::Relaxed) {
                for b in chunk.iter_mut() {
                    *b = pattern(seq);
                    seq += 1;
                }
                tokio::time::timeout(WAIT, w.write_all(&chunk))
                    .await
                    .map_err(|_| "write timed out".to_string())?
                    .map_err(|e| format!("write failed after {expect} bytes: {e}"))?;
                tokio::time::timeout(WAIT, r.read_exact(&mut back))
                    .await
                    .map_err(|_| "read timed out".to_string())?
                    .map_err(|e| format!("read failed after {expect} bytes: {e}"))?;
                for &b in back.iter() {
                    if b != pattern(expect) {
                        return Err(format!("corrupt byte at offset {expect}"));
                    }
                    expect += 1;
                }
                ver.store(expect, Ordering::Relaxed);
                tokio::time::sleep(pause).await;
            }
            Ok(expect)
        });
        Streamer {
            stop,
            verified,
            task,
        }
    }

    /// Bytes verified so far.
    pub fn verified(&self) -> u64 {
        self.verified.load(Ordering::Relaxed)
    }

    /// Waits until at least `more` further bytes have been verified.
    pub async fn advance(&self, more: u64) {
        let target = self.verified() + more;
        let deadline = Instant::now() + WAIT;
        while self.verified() < target {
            assert!(
                !self.task.is_finished(),
                "streamer stopped early (its connection failed)"
            );
            assert!(Instant::now() < deadline, "streamer made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops and returns the verified byte count, or why the stream broke.
    pub async fn finish(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(format!("streamer task failed: {e}")),
        }
    }
}

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// A running `stayup` process whose stderr is collected line by line.
pub struct Daemon {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Index of the first line not yet consumed by `wait_for`.
    cursor: usize,
}

pub fn stayup_bin() -> &'static str {
    env!("CARGO_BIN_EXE_stayup")
}

impl Daemon {
    /// Starts `stayup run --config <config>` and waits for "stayup ready".
    pub async fn start(config: &Path) -> Daemon {
        let mut d = Self::spawn(config, &[]);
        d.wait_for("stayup ready").await;
        d
    }

    /// Starts the daemon without waiting, with extra environment variables.
    pub fn spawn(config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(stayup_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn_command(cmd)
    }

    /// Starts a prepared command (for example `stayup run` wrapped in
    /// `setpriv`) and collects its stderr like [`Daemon::spawn`].
    pub fn spawn_command(mut cmd: Command) -> Daemon {
        cmd.stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn stayup");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("STAYUP_TEST_ECHO").is_some() {
                    eprintln!("[stayup] {line}");
                }
                sink.lock().expect("lines").push(line);
            }
        });
        Daemon {
            child,
            lines,
            cursor: 0,
        }
    }

    /// Starts `stayup run --config <config>` through a wrapper command
    /// (for example `setpriv` to drop capabilities), without waiting.
    pub fn spawn_wrapped(wrapper: &[&str], config: &Path) -> Daemon {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..])
            .arg(stayup_bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        Self::spawn_command(cmd)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything the daemon printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// Waits for the next line (after the last one consumed) containing
    /// `needle`, and returns it.
    pub async fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_any(&[needle]).await
    }

    /// Waits for the next line containing any of `needles`.
    pub async fn wait_for_any(&mut self, needles: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let lines = self.lines.lock().expect("lines");
                while self.cursor < lines.len() {
                    let line = &lines[self.cursor];
                    self.cursor += 1;
                    if needles.iter().any(|n| line.contains(n)) {
                        return line.clone();
                    }
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "stayup exited ({status}) while waiting for {needles:?}; output:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needles:?}; output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the next reload outcome line.
    pub async fn outcome(&mut self) -> String {
        self.wait_for_any(&["reload committed", "reload rejected", "reload unchanged"])
            .await
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Sends SIGHUP and returns the outcome line.
    pub async fn reload(&mut self) -> String {
        self.signal("HUP");
        self.outcome().await
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit().await
    }

    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "stayup did not exit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `stayup <args>` to completion and returns (exit code, stdout, stderr).
pub fn stayup(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(stayup_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run stayup");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until a TCP connect to `addr` is refused.
pub async fn wait_refused(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    loop {
        if TcpStream::connect(addr).await.is_err() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Streamer {
    /// Waits (without asking it to stop) until the stream breaks, and
    /// returns why. Fails if it is still healthy after `WAIT`.
    pub async fn wait_broken(self) -> String {
        match tokio::time::timeout(WAIT, self.task).await {
            Err(_) => panic!("the stream is still healthy after {WAIT:?}"),
            Ok(Err(e)) => format!("streamer task failed: {e}"),
            Ok(Ok(Ok(n))) => panic!("the streamer stopped cleanly after {n} bytes"),
            Ok(Ok(Err(why))) => why,
        }
    }

    /// Whether the stream has ended (broken or stopped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// `stayup check --config <config>`: (exit code, stdout, stderr).
pub fn check(config: &Path) -> (i32, String, String) {
    let path = config.to_str().expect("utf-8 path");
    stayup(&["check", "--config", path])
}

/// The `reason=` part of a `reload rejected` log line.
pub fn rejection_reason(line: &str) -> &str {
    line.split_once("reason=")
        .map(|(_, r)| r.trim())
        .unwrap_or_else(|| panic!("no reason= in {line:?}"))
}

/// Opens a TLS connection and starts streaming checksummed data through it.
pub async fn streamer_at(addr: SocketAddr, sni: &str, cfg: Arc<rustls::ClientConfig>) -> Streamer {
    let s = connected(addr, sni, cfg).await;
    let streamer = Streamer::start(s);
    streamer.advance(4096).await;
    streamer
}

/// A free loopback address for a listener. The port is picked below the
/// kernel's ephemeral range, so that no client connection made meanwhile
/// (by this test or by any other one running in parallel) can take it
/// between the pick and the daemon's bind.
pub fn free_addr() -> SocketAddr {
    static PICKS: AtomicU64 = AtomicU64::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(32768);
    let low = 10_000u64;
    if ephemeral_low > low + 1000 {
        let span = ephemeral_low - low;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
        let mut x = (std::process::id() as u64) << 32 ^ nanos;
        for _ in 0..1000 {
            x = x
                .wrapping_add(PICKS.fetch_add(1, Ordering::Relaxed))
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let port = (low + (x >> 33) % span) as u16;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if std::net::TcpListener::bind(addr).is_ok() {
                return addr;
            }
        }
    }
    SocketAddr::from(([127, 0, 0, 1], ephemeral_port()))
}

impl Daemon {
    /// Waits until some line of the output satisfies `pred`, and returns it.
    /// Unlike `wait_for`, this works after the daemon exited: its last lines
    /// may still be on their way through the pipe when the exit is seen.
    pub async fn wait_printed(&self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .find(|l| pred(l.as_str()))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for a line; output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the last line a clean stop prints.
    pub async fn wait_stopped_line(&self) {
        self.wait_printed(|l| l.trim_end().ends_with("stayup::daemon: stopped"))
            .await;
    }
}

/// Open file descriptors of a process (entries of /proc/PID/fd).
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// Resident set size of a process in KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The effective user id of this test process.
pub fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("Uid in /proc/self/status")
}

/// Whether a program is on PATH.
pub fn have_program(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name} >/dev/null 2>&1"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A `stayup run --config <config>` command. When the tests run as root,
/// the daemon is started without the capabilities that let root read any
/// file (via `setpriv`), so "permission denied" can be exercised; the
/// second value says whether unreadable files are really unreadable to it.
pub fn run_command_unprivileged(config: &Path) -> (Command, bool) {
    let mut cmd;
    let denies;
    if euid() != 0 {
        cmd = Command::new(stayup_bin());
        denies = true;
    } else if have_program("setpriv") {
        cmd = Command::new("setpriv");
        cmd.args([
            "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
            stayup_bin(),
        ]);
        denies = true;
    } else {
        cmd = Command::new(stayup_bin());
        denies = false;
    }
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .env_remove("RUST_LOG");
    (cmd, denies)
}

/// `stayup status --config <config> --json`, parsed.
pub async fn status_json(config: &Path) -> serde_json::Value {
    let path = config.to_str().expect("utf8 path").to_string();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || stayup(&["status", "--config", &path, "--json"]))
            .await
            .expect("status thread");
    assert_eq!(code, 0, "stayup status failed: {err}");
    serde_json::from_str(out.trim()).expect("status JSON")
}

/// Waits until the status counter at `pointer` (a JSON pointer such as
/// `/connections/refused_over_limit`) is at least `min`; returns it.
pub async fn wait_counter(config: &Path, pointer: &str, min: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = status_json(config)
            .await
            .pointer(pointer)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| panic!("status has no number at {pointer}"));
        if v >= min {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "status {pointer} stayed at {v}, expected at least {min}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until the peer closes; returns the bytes read, or the error that
/// ended the read (a reset rather than a clean close, for example).
pub async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "peer never closed"))??;
    Ok(out)
}

/// A systemd notification socket (`NOTIFY_SOCKET`) at `path`: a thread
/// receives its datagrams and hands them over as strings.
pub fn notify_receiver(path: &Path) -> std::sync::mpsc::Receiver<String> {
    let sock = std::os::unix::net::UnixDatagram::bind(path).expect("bind notify socket");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = sock.recv(&mut buf) {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    rx
}

/// New TLS connections, one after another, each with one checked echo,
/// until told to stop; counts those served and says how each failure failed.
pub struct Churn {
    stop: Arc<AtomicBool>,
    pub served: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Churn {
    pub fn start(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), served.clone());
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let one = async {
                    let mut c = connect(addr, "localhost", cfg.clone())
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    c.write_all(b"churn")
                        .await
                        .map_err(|e| format!("write: {e}"))?;
                    let mut buf = [0u8; 5];
                    c.read_exact(&mut buf)
                        .await
                        .map_err(|e| format!("read: {e}"))?;
                    if &buf != b"churn" {
                        return Err("wrong echo".to_string());
                    }
                    Ok::<_, String>(())
                };
                match tokio::time::timeout(WAIT, one).await {
                    Ok(Ok(())) => {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => failures.push(e),
                    Err(_) => failures.push("timed out".into()),
                }
            }
            failures
        });
        Churn { stop, served, task }
    }

    /// Waits until at least `at_least` connections were served.
    pub async fn wait_served(&self, at_least: u64) {
        let deadline = Instant::now() + WAIT;
        while self.served.load(Ordering::Relaxed) < at_least {
            assert!(Instant::now() < deadline, "the churn stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops; the number served and the failures.
    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await.expect("churn task");
        (self.served.load(Ordering::Relaxed), failures)
    }
}
