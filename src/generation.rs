//! Config + material -> an immutable [`Generation`].
//!
//! A generation is everything a connection needs for its whole life: the
//! rustls configuration of its listener, its backend and its limits. It is
//! never changed after it is built; a reload builds a new one. Connections
//! hold an `Arc<Generation>`, so a superseded generation is freed exactly when
//! its last connection ends.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use tokio_util::sync::CancellationToken;

use crate::config::{Backend, Config, TlsVersion};
use crate::material::{CertInfo, FileDigest, LoadedCert, Material};

/// State that outlives every generation: the crypto provider, and the TLS
/// session cache and ticket keys, shared so that a client that resumes a
/// session after a reload still can (and after an upgrade: see `sessions`
/// and `tickets`).
pub struct Shared {
    /// Cipher suites in the provider's order: what a client that puts
    /// ChaCha20 first gets its pick from (see `suites`).
    pub provider: Arc<CryptoProvider>,
    /// The same with stayup's order of cipher suites, AES-128-GCM first.
    pub provider_aes128_first: Arc<CryptoProvider>,
    pub session_cache: Arc<crate::sessions::SessionCache>,
    pub ticketer: Arc<crate::tickets::TicketKeys>,
    /// The certificate pairs of the last load, for the next one.
    pub pairs: crate::material::PairCache,
    /// Each listener's counts by name, across generations.
    listener_stats: Mutex<HashMap<String, Arc<ListenerStats>>>,
    /// Open connections over every listener.
    pub total_connections: Arc<AtomicUsize>,
    /// Every generation that still exists (the live one and those draining).
    live: Mutex<Vec<Weak<Generation>>>,
}

/// One listener's counts, kept across generations by name: a reload does
/// not reset them.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Open connections, for the listener's `max_connections`.
    pub open: AtomicUsize,
    pub handshakes_ok: AtomicU64,
    /// Of `handshakes_ok`, those that resumed a session.
    pub handshakes_resumed: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub bytes_from_clients: AtomicU64,
    pub bytes_to_clients: AtomicU64,
    /// Connections that ended, by how (in the order of
    /// [`crate::proxy::END_KINDS`]).
    pub ended: [AtomicU64; crate::proxy::END_KINDS.len()],
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// Uses the aws-lc-rs provider, with the key schedule of its TLS 1.3
    /// SHA-384 suites over prepared HMAC keys (see `keyschedule`).
    pub fn new() -> Result<Arc<Shared>, crate::tickets::TicketKeysError> {
        Self::with_provider(Arc::new(crate::keyschedule::prepared(
            &rustls::crypto::aws_lc_rs::default_provider(),
        )))
    }

    pub fn with_provider(
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Shared>, crate::tickets::TicketKeysError> {
        Ok(Arc::new(Shared {
            provider_aes128_first: Arc::new(crate::suites::aes128_first(&provider)),
            provider,
            session_cache: Arc::new(crate::sessions::SessionCache::new(
                crate::sessions::CAPACITY,
            )),
            ticketer: Arc::new(crate::tickets::TicketKeys::new()?),
            pairs: crate::material::PairCache::default(),
            listener_stats: Mutex::new(HashMap::new()),
            total_connections: Arc::new(AtomicUsize::new(0)),
            live: Mutex::new(Vec::new()),
        }))
    }

    /// The counts of the listener called `name`. Looked up when a
    /// generation is built, so that connections reach them without a lock.
    pub fn listener_stats(&self, name: &str) -> Arc<ListenerStats> {
        let mut map = self
            .listener_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    /// Every listener's counts (including listeners since removed), by name.
    pub fn all_listener_stats(&self) -> Vec<(String, Arc<ListenerStats>)> {
        let map = self
            .listener_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn register(&self, g: &Arc<Generation>) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(g));
    }

    /// The generations that still exist, oldest first.
    pub fn live_generations(&self) -> Vec<Arc<Generation>> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|w| w.strong_count() > 0);
        live.iter().filter_map(Weak::upgrade).collect()
    }
}

/// What made a reload happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    Startup,
    /// The first generation of a process started by `stayup upgrade`.
    Upgrade,
    Signal,
    Control,
    Watch,
    Poll,
    Api,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Upgrade => "upgrade",
            Trigger::Signal => "signal",
            Trigger::Control => "control",
            Trigger::Watch => "watch",
            Trigger::Poll => "poll",
            Trigger::Api => "api",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The content a generation was built from: the top-level file's digest and
/// every referenced file's digest. Two loads with equal identities would
/// build the same generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The top-level path as given.
    pub config_path: PathBuf,
    pub config_sha256: [u8; 32],
    pub files: Vec<FileDigest>,
}

impl Identity {
    /// One hash over everything, for display and comparison.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.config_sha256);
        for f in &self.files {
            h.update(f.path.as_os_str().as_encoded_bytes());
            h.update([0]);
            h.update(f.sha256);
        }
        hex::encode(h.finalize())
    }

    pub fn config_hash(&self) -> String {
        hex::encode(self.config_sha256)
    }
}

/// Chooses a certificate by SNI: exact names first, then a wildcard for the
/// parent domain, else the listener's first certificate.
#[derive(Debug)]
pub struct SniResolver {
    certs: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl SniResolver {
    pub fn new(certs: &[LoadedCert]) -> SniResolver {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, c) in certs.iter().enumerate() {
            for n in &c.dns_names {
                match n.strip_prefix("*.") {
                    Some(suffix) => {
                        wildcard.entry(suffix.to_string()).or_insert(i);
                    }
                    None => {
                        exact.entry(n.clone()).or_insert(i);
                    }
                }
            }
        }
        SniResolver {
            certs: certs.iter().map(|c| c.certified.clone()).collect(),
            exact,
            wildcard,
        }
    }

    /// The index of the certificate served for `sni`.
    pub fn select(&self, sni: Option<&str>) -> usize {
        let Some(name) = sni else { return 0 };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(&i) = self.exact.get(&name) {
            return i;
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(&i) = self.wildcard.get(parent)
        {
            return i;
        }
        0
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certs.get(self.select(hello.server_name())).cloned()
    }
}

/// One listener as a generation serves it.
#[derive(Debug)]
pub struct ListenerRuntime {
    pub name: String,
    pub bind: SocketAddr,
    pub backend: Backend,
    pub tls: crate::suites::ListenerTls,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    /// Shared with every other generation's listener of the same name, so
    /// that `max_connections` and the metrics span reloads.
    pub stats: Arc<ListenerStats>,
    pub backend_proxy_protocol: crate::proxy_protocol::ProxyProtocol,
}

/// An immutable, fully validated configuration, ready to serve.
#[derive(Debug)]
pub struct Generation {
    pub id: u64,
    pub config: Config,
    pub identity: Identity,
    pub trigger: Trigger,
    pub loaded_at: SystemTime,
    pub listeners: Vec<ListenerRuntime>,
    by_bind: HashMap<SocketAddr, usize>,
    pub certificates: Vec<CertInfo>,
    /// Cancelled to close this generation's connections (drain deadline).
    pub drain: CancellationToken,
    connections: AtomicUsize,
    accepted: AtomicU64,
    pub shared: Arc<Shared>,
}

/// Why a validated configuration could still not be built into rustls
/// configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    pub listener: String,
    pub file: Option<PathBuf>,
    pub reason: String,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        write!(f, "listener {:?}: {}", self.listener, self.reason)
    }
}

impl std::error::Error for BuildError {}

static TLS12_AND_13: &[&rustls::SupportedProtocolVersion] = &[&version::TLS13, &version::TLS12];
static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&version::TLS13];

impl Generation {
    /// Builds a generation. Does not register it as live; see [`Generation::register`].
    pub fn build(
        id: u64,
        config: Config,
        material: Material,
        identity: Identity,
        trigger: Trigger,
        shared: &Arc<Shared>,
    ) -> Result<Generation, BuildError> {
        let mut listeners = Vec::new();
        let mut by_bind = HashMap::new();
        let mut certificates = Vec::new();
        for (i, (l, m)) in config.listeners.iter().zip(material.listeners).enumerate() {
            let err = |file: Option<PathBuf>, reason: String| BuildError {
                listener: l.name.clone(),
                file,
                reason,
            };
            let verifier = match &m.client_ca {
                Some(roots) => Some(
                    WebPkiClientVerifier::builder_with_provider(
                        roots.clone(),
                        shared.provider.clone(),
                    )
                    .build()
                    .map_err(|e| err(l.tls.client_ca.clone(), format!("client CA: {e}")))?,
                ),
                None => None,
            };
            let resolver = Arc::new(SniResolver::new(&m.certs));
            // Resumption survives reloads, but never across listeners or a
            // change of client CA (see `resumption`).
            let resumption = l.tls.session_resumption.then(|| {
                let ca_digest = l.tls.client_ca.as_ref().map(|p| {
                    identity
                        .files
                        .iter()
                        .find(|f| &f.path == p)
                        .map(|f| f.sha256)
                        .unwrap_or_default()
                });
                let scope = crate::resumption::scope(&l.name, ca_digest.as_ref());
                (
                    Arc::new(crate::resumption::ScopedSessions::new(
                        shared.session_cache.clone(),
                        scope,
                    )),
                    Arc::new(crate::resumption::ScopedTickets::new(
                        shared.ticketer.clone(),
                        scope,
                    )),
                )
            });
            let build = |provider: &Arc<CryptoProvider>, ours: bool| {
                let builder = ServerConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(match l.tls.min_version {
                        TlsVersion::Tls12 => TLS12_AND_13,
                        TlsVersion::Tls13 => TLS13_ONLY,
                    })
                    .map_err(|e| err(None, e.to_string()))?;
                let builder = match &verifier {
                    Some(v) => builder.with_client_cert_verifier(v.clone()),
                    None => builder.with_no_client_auth(),
                };
                let mut tls = builder.with_cert_resolver(resolver.clone());
                tls.ignore_client_order = ours;
                tls.alpn_protocols = l.tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
                match &resumption {
                    Some((sessions, tickets)) => {
                        tls.session_storage = sessions.clone();
                        tls.ticketer = tickets.clone();
                    }
                    None => {
                        // The builder's ticketer never produces tickets; with
                        // no session storage and no TLS 1.3 tickets sent,
                        // nothing can resume.
                        tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
                        tls.send_tls13_tickets = 0;
                    }
                }
                Ok(Arc::new(tls))
            };
            let with_groups = |p: &Arc<CryptoProvider>| {
                if l.tls.groups.is_empty() {
                    p.clone()
                } else {
                    Arc::new(crate::groups::only(p, &l.tls.groups))
                }
            };
            let (ours, clients) = if l.tls.cipher_suites.is_empty() {
                (
                    with_groups(&shared.provider_aes128_first),
                    with_groups(&shared.provider),
                )
            } else {
                // The operator's set and order; a ChaCha20-first client
                // still gets its own order within it.
                let only = with_groups(&Arc::new(crate::suites::only(
                    &shared.provider,
                    &l.tls.cipher_suites,
                )));
                (only.clone(), only)
            };
            let tls = crate::suites::ListenerTls {
                ours: build(&ours, true)?,
                clients: build(&clients, false)?,
            };
            certificates.extend(m.certs.iter().map(|c| c.info.clone()));
            by_bind.insert(l.bind, i);
            listeners.push(ListenerRuntime {
                name: l.name.clone(),
                bind: l.bind,
                backend: l.backend.clone(),
                tls,
                handshake_timeout: l.tls.handshake_timeout,
                max_connections: l.max_connections,
                stats: shared.listener_stats(&l.name),
                backend_proxy_protocol: l.backend_proxy_protocol,
            });
        }
        Ok(Generation {
            id,
            config,
            identity,
            trigger,
            loaded_at: SystemTime::now(),
            listeners,
            by_bind,
            certificates,
            drain: CancellationToken::new(),
            connections: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            shared: shared.clone(),
        })
    }

    /// Wraps the generation and records it as live.
    pub fn register(self) -> Arc<Generation> {
        let g = Arc::new(self);
        g.shared.register(&g);
        g
    }

    /// The listener bound to the configured address `bind`, if this generation has one.
    pub fn listener_for(&self, bind: SocketAddr) -> Option<&ListenerRuntime> {
        self.by_bind.get(&bind).map(|&i| &self.listeners[i])
    }

    /// Connections currently open on this generation.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections this generation has accepted in all.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Counts a connection for as long as the guard lives.
    pub fn track(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            generation: self.clone(),
        }
    }
}

/// Keeps a generation alive and counted while a connection uses it.
#[derive(Debug)]
pub struct ConnectionGuard {
    pub generation: Arc<Generation>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.generation.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
