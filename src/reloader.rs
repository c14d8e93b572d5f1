//! The reloader: the one task that writes the current generation.
//!
//! Every trigger (signal, control socket, watcher, poll, embedding code)
//! sends a request here. Requests that arrive while a reload runs are
//! answered by the next reload, which reads the files after they asked; a
//! burst of requests is coalesced into one reload. Each reload loads a
//! complete candidate off to the side, and either commits it with one atomic
//! store or keeps the old generation, and every asker gets the same
//! [`Outcome`].

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::{Config, ConfigError, read_config_bytes};
use crate::generation::{BuildError, Generation, Identity, Shared, Trigger};
use crate::material::{self, Material, MaterialError};
use crate::proxy::{BindError, Listeners};

/// How many outcomes the history keeps.
pub const HISTORY_LEN: usize = 32;

/// How often a reload re-reads files that keep changing under it before it
/// gives up.
const STABILITY_ATTEMPTS: usize = 5;

/// Why a candidate generation was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadError {
    Config(ConfigError),
    Material(MaterialError),
    Build(BuildError),
    Bind(BindError),
    /// The files kept changing while they were being read.
    Unstable {
        file: PathBuf,
    },
}

impl LoadError {
    /// A short stable name for the kind of error.
    pub fn class(&self) -> &'static str {
        match self {
            LoadError::Config(e) => e.class(),
            LoadError::Material(e) => e.class(),
            LoadError::Build(_) => "build",
            LoadError::Bind(_) => "bind",
            LoadError::Unstable { .. } => "unstable",
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Config(e) => e.fmt(f),
            LoadError::Material(e) => e.fmt(f),
            LoadError::Build(e) => e.fmt(f),
            LoadError::Bind(e) => e.fmt(f),
            LoadError::Unstable { file } => write!(
                f,
                "{}: kept changing while it was being loaded; publish new files and then rename the top-level file into place",
                file.display()
            ),
        }
    }
}

impl std::error::Error for LoadError {}

impl From<ConfigError> for LoadError {
    fn from(e: ConfigError) -> Self {
        LoadError::Config(e)
    }
}
impl From<MaterialError> for LoadError {
    fn from(e: MaterialError) -> Self {
        LoadError::Material(e)
    }
}

/// A configuration and its material, loaded and validated, not yet built.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub config: Config,
    pub material: Material,
    pub identity: Identity,
}

/// Reads the top-level file once, parses it, reads and validates every file
/// it references. Does not bind or serve; `stayup check` is exactly this.
pub fn load_candidate(
    path: &Path,
    shared: &Shared,
    now: SystemTime,
) -> Result<Candidate, LoadError> {
    let bytes = read_config_bytes(path)?;
    let config = Config::parse(path, &bytes)?;
    let material = material::load_with(&config, &shared.provider, now, &shared.pairs)?;
    let identity = Identity {
        config_path: path.to_path_buf(),
        config_sha256: material::sha256(&bytes),
        files: material.files.clone(),
    };
    Ok(Candidate {
        config,
        material,
        identity,
    })
}

/// Re-reads every file of `identity` and returns the first that now differs.
pub fn changed_file(identity: &Identity) -> Option<PathBuf> {
    let now = read_config_bytes(&identity.config_path)
        .ok()
        .map(|b| material::sha256(&b));
    if now != Some(identity.config_sha256) {
        return Some(identity.config_path.clone());
    }
    identity
        .files
        .iter()
        .find(|f| {
            material::read_capped(&f.path, material::MAX_MATERIAL_BYTES)
                .ok()
                .map(|b| material::sha256(&b))
                != Some(f.sha256)
        })
        .map(|f| f.path.clone())
}

/// Which file the top-level path leads to, and its content: differs when a
/// new file was renamed or swapped into place, even with identical bytes.
fn top_level_stamp(path: &Path) -> Option<(u64, u64, [u8; 32])> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let bytes = read_config_bytes(path).ok()?;
    Some((meta.dev(), meta.ino(), material::sha256(&bytes)))
}

/// The result of one reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Committed,
    Unchanged,
    Rejected,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Committed => "committed",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Rejected => "rejected",
        }
    }
}

impl fmt::Display for ReloadResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing a committed generation does differently from its predecessor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `listener-added`, `listener-removed`, `bind-changed`, `backend-changed`,
    /// `certificate-swapped`, `certificate-added`, `certificate-removed`,
    /// `client-ca-changed`, `setting-changed`.
    pub kind: &'static str,
    /// The listener or setting concerned.
    pub subject: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.subject)?;
        match (&self.from, &self.to) {
            (Some(a), Some(b)) => write!(f, ": {a} -> {b}"),
            (None, Some(b)) => write!(f, ": {b}"),
            (Some(a), None) => write!(f, ": {a}"),
            (None, None) => Ok(()),
        }
    }
}

fn cert_summary(c: &crate::material::CertInfo) -> String {
    let short = c.fingerprint.get(..16).unwrap_or(&c.fingerprint);
    format!(
        "{short} (expires {})",
        crate::status::format_unix(c.not_after)
    )
}

/// What differs between two generations, for the outcome and the log.
pub fn diff(old: &Generation, new: &Generation) -> Vec<Change> {
    let mut out = Vec::new();
    let ch = |kind, subject: &str, from: Option<String>, to: Option<String>| Change {
        kind,
        subject: subject.to_string(),
        from,
        to,
    };
    for n in &new.config.listeners {
        match old.config.listeners.iter().find(|o| o.name == n.name) {
            None => out.push(ch(
                "listener-added",
                &n.name,
                None,
                Some(n.bind.to_string()),
            )),
            Some(o) => {
                if o.bind != n.bind {
                    out.push(ch(
                        "bind-changed",
                        &n.name,
                        Some(o.bind.to_string()),
                        Some(n.bind.to_string()),
                    ));
                }
                if o.backend != n.backend {
                    out.push(ch(
                        "backend-changed",
                        &n.name,
                        Some(o.backend.to_string()),
                        Some(n.backend.to_string()),
                    ));
                }
                let oc: Vec<_> = old
                    .certificates
                    .iter()
                    .filter(|c| c.listener == n.name)
                    .collect();
                let nc: Vec<_> = new
                    .certificates
                    .iter()
                    .filter(|c| c.listener == n.name)
                    .collect();
                for i in 0..oc.len().max(nc.len()) {
                    match (oc.get(i), nc.get(i)) {
                        (Some(a), Some(b)) if a.fingerprint != b.fingerprint => out.push(ch(
                            "certificate-swapped",
                            &n.name,
                            Some(cert_summary(a)),
                            Some(cert_summary(b)),
                        )),
                        (None, Some(b)) => out.push(ch(
                            "certificate-added",
                            &n.name,
                            None,
                            Some(cert_summary(b)),
                        )),
                        (Some(a), None) => out.push(ch(
                            "certificate-removed",
                            &n.name,
                            Some(cert_summary(a)),
                            None,
                        )),
                        _ => {}
                    }
                }
                let ca_digest = |g: &Generation, l: &crate::config::ListenerConfig| {
                    l.tls.client_ca.as_ref().map(|p| {
                        g.identity
                            .files
                            .iter()
                            .find(|f| &f.path == p)
                            .map(|f| hex::encode(f.sha256))
                            .unwrap_or_default()
                    })
                };
                if ca_digest(old, o) != ca_digest(new, n) {
                    out.push(ch("client-ca-changed", &n.name, None, None));
                }
                if o.max_connections != n.max_connections
                    || o.backend_proxy_protocol != n.backend_proxy_protocol
                    || o.tls.handshake_timeout != n.tls.handshake_timeout
                    || o.tls.session_resumption != n.tls.session_resumption
                    || o.tls.alpn != n.tls.alpn
                    || o.tls.min_version != n.tls.min_version
                    || o.tls.cipher_suites != n.tls.cipher_suites
                    || o.tls.groups != n.tls.groups
                {
                    out.push(ch("listener-settings-changed", &n.name, None, None));
                }
            }
        }
    }
    for o in &old.config.listeners {
        if !new.config.listeners.iter().any(|n| n.name == o.name) {
            out.push(ch(
                "listener-removed",
                &o.name,
                Some(o.bind.to_string()),
                None,
            ));
        }
    }
    let (a, b) = (&old.config, &new.config);
    let mut setting = |name: &str, x: String, y: String| {
        if x != y {
            out.push(ch("setting-changed", name, Some(x), Some(y)));
        }
    };
    use crate::config::format_duration as d;
    setting(
        "reload.watch",
        a.reload.watch.to_string(),
        b.reload.watch.to_string(),
    );
    setting(
        "reload.debounce",
        d(a.reload.debounce),
        d(b.reload.debounce),
    );
    setting("reload.poll", d(a.reload.poll), d(b.reload.poll));
    setting("drain.timeout", d(a.drain.timeout), d(b.drain.timeout));
    setting(
        "shutdown.timeout",
        d(a.shutdown.timeout),
        d(b.shutdown.timeout),
    );
    setting("log.level", a.log.level.clone(), b.log.level.clone());
    setting(
        "log.connections",
        a.log.connections.to_string(),
        b.log.connections.to_string(),
    );
    setting(
        "log.format",
        format!("{:?}", a.log.format).to_lowercase(),
        format!("{:?}", b.log.format).to_lowercase(),
    );
    setting("warn_expiry", d(a.warn_expiry), d(b.warn_expiry));
    setting(
        "tcp_keepalive",
        a.tcp_keepalive.to_string(),
        b.tcp_keepalive.to_string(),
    );
    setting(
        "limits",
        format!("{:?}", a.limits),
        format!("{:?}", b.limits),
    );
    setting(
        "control.socket",
        format!("{:?}", a.control.socket),
        format!("{:?}", b.control.socket),
    );
    setting("admin", format!("{:?}", a.admin), format!("{:?}", b.admin));
    out
}

/// What one reload did, given to every asker and kept in the history.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub result: ReloadResult,
    pub trigger: Trigger,
    /// The generation serving after this reload.
    pub generation: u64,
    /// The generation serving before it.
    pub previous: u64,
    /// Why it was rejected.
    pub reason: Option<String>,
    pub error_class: Option<&'static str>,
    pub changes: Vec<Change>,
    pub at: SystemTime,
    pub duration: Duration,
}

impl Outcome {
    /// The one-line summary used in logs, `STATUS=` and the CLI.
    pub fn summary(&self) -> String {
        match self.result {
            ReloadResult::Committed => format!(
                "reload committed: generation {} (was {}), trigger {}, {} change(s)",
                self.generation,
                self.previous,
                self.trigger,
                self.changes.len()
            ),
            ReloadResult::Unchanged => format!(
                "reload unchanged: generation {} keeps serving, trigger {}",
                self.generation, self.trigger
            ),
            ReloadResult::Rejected => format!(
                "reload rejected: generation {} keeps serving, trigger {}: {}",
                self.generation,
                self.trigger,
                self.reason.as_deref().unwrap_or("")
            ),
        }
    }
}

struct Request {
    trigger: Trigger,
    reply: Option<oneshot::Sender<Outcome>>,
}

/// Read-side view of the reloader: the current generation and the outcomes.
/// Cheap to clone; everything in it is a snapshot or a channel.
#[derive(Clone)]
pub struct ReloadHandle {
    tx: mpsc::UnboundedSender<Request>,
    store: Arc<ArcSwap<Generation>>,
    history: Arc<Mutex<VecDeque<Outcome>>>,
    outcomes: broadcast::Sender<Outcome>,
    modified_in_place: Arc<Mutex<Vec<PathBuf>>>,
    pub shared: Arc<Shared>,
    pub config_path: PathBuf,
}

impl fmt::Debug for ReloadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadHandle")
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

impl ReloadHandle {
    /// The generation serving now. Keep the `Arc` as long as needed; it
    /// never changes under you.
    pub fn current(&self) -> Arc<Generation> {
        self.store.load_full()
    }

    /// The shared store, for code that needs a lock-free snapshot per call.
    pub fn store(&self) -> &Arc<ArcSwap<Generation>> {
        &self.store
    }

    /// Asks for a reload and waits for its outcome (or joins the one in
    /// flight if the request arrives before it started reading).
    pub async fn reload(&self, trigger: Trigger) -> Option<Outcome> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request {
                trigger,
                reply: Some(tx),
            })
            .ok()?;
        rx.await.ok()
    }

    /// Asks for a reload without waiting.
    pub fn request(&self, trigger: Trigger) {
        let _ = self.tx.send(Request {
            trigger,
            reply: None,
        });
    }

    /// The last outcomes, oldest first.
    pub fn history(&self) -> Vec<Outcome> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Records the referenced files of the live generation whose content
    /// no longer matches what it loaded (changed in place, against the
    /// immutability contract). Replaces the previous list.
    pub fn set_modified_in_place(&self, files: Vec<PathBuf>) {
        *self
            .modified_in_place
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = files;
    }

    /// Referenced files of the live generation found changed in place.
    pub fn modified_in_place(&self) -> Vec<PathBuf> {
        self.modified_in_place
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every future outcome, from every trigger.
    pub fn subscribe(&self) -> broadcast::Receiver<Outcome> {
        self.outcomes.subscribe()
    }
}

/// Called after every commit, before the outcome is published (for example
/// to apply a new log level).
pub type CommitHook = Box<dyn Fn(&Generation) + Send + Sync>;

/// The writer side. Owned by the reloader task.
pub struct Reloader {
    handle: ReloadHandle,
    rx: mpsc::UnboundedReceiver<Request>,
    listeners: Listeners,
    hooks: Vec<CommitHook>,
}

impl Reloader {
    /// Loads, validates, binds and builds the first generation, numbered
    /// `first.0` (1, or after the old process's under an upgrade). Fails
    /// (without serving anything) if the configuration is not valid.
    pub fn start(
        config_path: &Path,
        shared: Arc<Shared>,
        listeners: Listeners,
        first: (u64, Trigger),
    ) -> Result<Reloader, LoadError> {
        let (id, trigger) = first;
        let started = Instant::now();
        let cand = load_candidate(config_path, &shared, SystemTime::now())?;
        let prepared = listeners.prepare(&cand.config).map_err(LoadError::Bind)?;
        let generation = Generation::build(
            id,
            cand.config,
            cand.material,
            cand.identity,
            trigger,
            &shared,
        )
        .map_err(LoadError::Build)?
        .register();
        let store = Arc::new(ArcSwap::new(generation.clone()));
        let mut listeners = listeners;
        listeners.activate(prepared, &generation, store.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        let (outcomes, _) = broadcast::channel(64);
        let handle = ReloadHandle {
            tx,
            store,
            history: Arc::new(Mutex::new(VecDeque::new())),
            outcomes,
            modified_in_place: Arc::new(Mutex::new(Vec::new())),
            shared,
            config_path: config_path.to_path_buf(),
        };
        let outcome = Outcome {
            result: ReloadResult::Committed,
            trigger,
            generation: id,
            previous: id.saturating_sub(1),
            reason: None,
            error_class: None,
            changes: Vec::new(),
            at: SystemTime::now(),
            duration: started.elapsed(),
        };
        log_outcome(&outcome, &generation);
        push_history(&handle, outcome);
        Ok(Reloader {
            handle,
            rx,
            listeners,
            hooks: Vec::new(),
        })
    }

    pub fn handle(&self) -> ReloadHandle {
        self.handle.clone()
    }

    /// Adds a hook run after every commit.
    pub fn on_commit(&mut self, hook: CommitHook) {
        self.hooks.push(hook);
    }

    /// Serves reload requests until every handle is dropped or `stop` fires.
    pub async fn run(mut self, stop: tokio_util::sync::CancellationToken) {
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => break,
                r = self.rx.recv() => match r { Some(r) => r, None => break },
            };
            let mut batch = vec![first];
            while let Ok(r) = self.rx.try_recv() {
                batch.push(r);
            }
            // An explicit trigger names the reload when it is coalesced with
            // automatic ones: it is the one an operator waits for.
            let trigger = batch
                .iter()
                .map(|r| r.trigger)
                .find(|t| matches!(t, Trigger::Control | Trigger::Signal | Trigger::Api))
                .unwrap_or(batch[0].trigger);
            let outcome = self.reload_once(trigger).await;
            for r in batch {
                if let Some(reply) = r.reply {
                    let _ = reply.send(outcome.clone());
                }
            }
        }
        self.listeners.stop_all();
    }

    async fn reload_once(&mut self, trigger: Trigger) -> Outcome {
        let started = Instant::now();
        let current = self.handle.current();
        let mut last_unstable = None;
        for _ in 0..STABILITY_ATTEMPTS {
            match self.attempt(trigger, &current, started).await {
                Attempt::Done(outcome) => return self.publish(outcome),
                Attempt::Unstable(file) => {
                    tracing::debug!(file = %file.display(), "files changed during the reload; trying again");
                    last_unstable = Some(file);
                    tokio::time::sleep(
                        current
                            .config
                            .reload
                            .debounce
                            .max(Duration::from_millis(50)),
                    )
                    .await;
                }
            }
        }
        let err = LoadError::Unstable {
            file: last_unstable.unwrap_or_else(|| self.handle.config_path.clone()),
        };
        let outcome = rejected(trigger, &current, &err, started);
        self.publish(outcome)
    }

    async fn attempt(
        &mut self,
        trigger: Trigger,
        current: &Arc<Generation>,
        started: Instant,
    ) -> Attempt {
        let shared = self.handle.shared.clone();
        let path = self.handle.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let before = top_level_stamp(&path);
            let loaded = load_candidate(&path, &shared, SystemTime::now());
            // A failure while the path came to name another file (a `..data`
            // swap mid-read: a certificate from one publication, a key from
            // the next) says nothing about either publication.
            let moved = loaded.is_err() && top_level_stamp(&path) != before;
            (loaded, moved.then_some(path))
        })
        .await;
        let cand = match loaded {
            Ok((Ok(c), _)) => c,
            Ok((Err(_), Some(moved))) => return Attempt::Unstable(moved),
            Ok((Err(e), None)) => return Attempt::Done(rejected(trigger, current, &e, started)),
            Err(join) => {
                let e = LoadError::Build(BuildError {
                    listener: String::new(),
                    file: None,
                    reason: format!("loader task failed: {join}"),
                });
                return Attempt::Done(rejected(trigger, current, &e, started));
            }
        };
        if cand.identity == current.identity {
            return Attempt::Done(Outcome {
                result: ReloadResult::Unchanged,
                trigger,
                generation: current.id,
                previous: current.id,
                reason: None,
                error_class: None,
                changes: Vec::new(),
                at: SystemTime::now(),
                duration: started.elapsed(),
            });
        }
        let prepared = match self.listeners.prepare(&cand.config) {
            Ok(p) => p,
            Err(e) => {
                return Attempt::Done(rejected(trigger, current, &LoadError::Bind(e), started));
            }
        };
        let identity = cand.identity.clone();
        let generation = match Generation::build(
            current.id + 1,
            cand.config,
            cand.material,
            cand.identity,
            trigger,
            &self.handle.shared,
        ) {
            Ok(g) => g,
            Err(e) => {
                return Attempt::Done(rejected(trigger, current, &LoadError::Build(e), started));
            }
        };
        // The stability gate: what we built must still be what is on disk,
        // or we may have mixed files from two publications.
        let changed = tokio::task::spawn_blocking(move || changed_file(&identity))
            .await
            .unwrap_or(None);
        if let Some(file) = changed {
            return Attempt::Unstable(file);
        }

        // Commit: one atomic store. Everything after this only starts or
        // stops accept loops and schedules the drain of the old generation.
        let generation = generation.register();
        let changes = diff(current, &generation);
        for hook in &self.hooks {
            hook(&generation);
        }
        self.handle.store.store(generation.clone());
        self.listeners
            .activate(prepared, &generation, self.handle.store.clone());
        schedule_drain(current, generation.config.drain.timeout);
        Attempt::Done(Outcome {
            result: ReloadResult::Committed,
            trigger,
            generation: generation.id,
            previous: current.id,
            reason: None,
            error_class: None,
            changes,
            at: SystemTime::now(),
            duration: started.elapsed(),
        })
    }

    fn publish(&self, outcome: Outcome) -> Outcome {
        log_outcome(&outcome, &self.handle.current());
        push_history(&self.handle, outcome.clone());
        let _ = self.handle.outcomes.send(outcome.clone());
        outcome
    }
}

enum Attempt {
    Done(Outcome),
    Unstable(PathBuf),
}

fn rejected(trigger: Trigger, current: &Generation, e: &LoadError, started: Instant) -> Outcome {
    Outcome {
        result: ReloadResult::Rejected,
        trigger,
        generation: current.id,
        previous: current.id,
        reason: Some(e.to_string()),
        error_class: Some(e.class()),
        changes: Vec::new(),
        at: SystemTime::now(),
        duration: started.elapsed(),
    }
}

fn push_history(handle: &ReloadHandle, outcome: Outcome) {
    let mut h = handle.history.lock().unwrap_or_else(|p| p.into_inner());
    if h.len() == HISTORY_LEN {
        h.pop_front();
    }
    h.push_back(outcome);
}

/// Closes the connections of `old` after `timeout` (zero: never). Holds only
/// a weak reference, so a generation whose connections all end earlier is
/// freed on time.
fn schedule_drain(old: &Arc<Generation>, timeout: Duration) {
    if timeout.is_zero() {
        return;
    }
    let weak = Arc::downgrade(old);
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        if let Some(g) = weak.upgrade() {
            let n = g.connections();
            if n > 0 {
                tracing::info!(
                    generation = g.id,
                    connections = n,
                    "drain timeout reached; closing the connections of a superseded generation"
                );
            }
            g.drain.cancel();
        }
    });
}

/// Exactly one log line per outcome.
fn log_outcome(o: &Outcome, live: &Generation) {
    let changes: Vec<String> = o.changes.iter().map(|c| c.to_string()).collect();
    let changes = changes.join("; ");
    let ms = o.duration.as_secs_f64() * 1000.0;
    match o.result {
        ReloadResult::Committed => tracing::info!(
            target: "stayup::reload",
            generation = o.generation,
            previous = o.previous,
            trigger = %o.trigger,
            source = %live.identity.config_hash(),
            changes = %changes,
            ms = format_args!("{ms:.1}"),
            "reload committed"
        ),
        ReloadResult::Unchanged => {
            if matches!(o.trigger, Trigger::Watch | Trigger::Poll) {
                tracing::debug!(target: "stayup::reload", generation = o.generation, trigger = %o.trigger, "reload unchanged")
            } else {
                tracing::info!(target: "stayup::reload", generation = o.generation, trigger = %o.trigger, "reload unchanged")
            }
        }
        ReloadResult::Rejected => tracing::warn!(
            target: "stayup::reload",
            generation = o.generation,
            trigger = %o.trigger,
            class = o.error_class.unwrap_or(""),
            reason = %o.reason.as_deref().unwrap_or(""),
            "reload rejected"
        ),
    }
}
