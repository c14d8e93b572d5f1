//! The running daemon: the reloader, the listeners and the triggers, wired
//! together, with a graceful stop.
//!
//! Like mini-redis' `server::run`, [`Daemon::start`] and [`run`] take what
//! they need (the config path, a shutdown future) so that tests and
//! embedding servers drive the real thing.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::generation::{Shared, Trigger};
use crate::proxy::{Listeners, ProxyContext};
use crate::reloader::{CommitHook, LoadError, ReloadHandle, Reloader};

/// A started daemon. Dropping it does not stop it; call [`Daemon::stop`].
pub struct Daemon {
    handle: ReloadHandle,
    ctx: Arc<ProxyContext>,
    stop_reloader: CancellationToken,
    reloader: Option<JoinHandle<()>>,
}

impl Daemon {
    /// Loads the first generation, binds its listeners and starts serving.
    /// Must be called inside a tokio runtime. `hooks` run after every commit,
    /// the first one included.
    pub fn start(
        config_path: &Path,
        shared: Arc<Shared>,
        hooks: Vec<CommitHook>,
    ) -> Result<Daemon, LoadError> {
        Daemon::start_inheriting(config_path, shared, hooks, None)
    }

    /// Like [`Daemon::start`], serving on the listening sockets an upgrade
    /// handed over (by configured address) instead of binding those anew.
    pub fn start_inheriting(
        config_path: &Path,
        shared: Arc<Shared>,
        hooks: Vec<CommitHook>,
        inherited: Option<crate::upgrade::Inherited>,
    ) -> Result<Daemon, LoadError> {
        let ctx = ProxyContext::new();
        let mut first = (1, Trigger::Startup);
        if let Some(inherited) = inherited {
            first = (inherited.generation.saturating_add(1), Trigger::Upgrade);
            ctx.upgrader.set_inherited(inherited);
        }
        let listeners = Listeners::new(ctx.clone());
        let mut reloader = Reloader::start(config_path, shared, listeners, first)?;
        let handle = reloader.handle();
        let first = handle.current();
        for hook in hooks {
            hook(&first);
            reloader.on_commit(hook);
        }
        let stop_reloader = CancellationToken::new();
        let task = tokio::spawn(reloader.run(stop_reloader.clone()));
        Ok(Daemon {
            handle,
            ctx,
            stop_reloader,
            reloader: Some(task),
        })
    }

    pub fn handle(&self) -> ReloadHandle {
        self.handle.clone()
    }

    /// Configured listener address -> the local address actually bound
    /// (they differ for port 0).
    pub fn local_addrs(
        &self,
    ) -> std::collections::HashMap<std::net::SocketAddr, std::net::SocketAddr> {
        self.ctx.local_addrs()
    }

    pub fn context(&self) -> Arc<ProxyContext> {
        self.ctx.clone()
    }

    /// Stops accepting and reloading; open connections run on.
    async fn stop_serving(&mut self) {
        self.ctx.stop_accepting.cancel();
        self.ctx.upgrader.release();
        self.stop_reloader.cancel();
        if let Some(reloader) = self.reloader.take() {
            let _ = reloader.await;
        }
        self.ctx.tracker.close();
    }

    /// After an upgrade handed the listening sockets to a new process: keeps
    /// the open connections until they end, or for `drain.timeout` when it
    /// is set, as for any superseded generation. `shutdown` (SIGTERM) turns
    /// this into an ordinary stop.
    pub async fn retire(mut self, shutdown: impl Future<Output = ()>) {
        self.stop_serving().await;
        let drain = self.handle.current().config.drain.timeout;
        let tracker = self.ctx.tracker.clone();
        let drained = async {
            if drain.is_zero() {
                tracker.wait().await;
                true
            } else {
                tokio::time::timeout(drain, tracker.wait()).await.is_ok()
            }
        };
        tokio::select! {
            done = drained => {
                if !done {
                    self.close_the_rest("drain.timeout reached; closing the remaining connections").await;
                }
            }
            _ = shutdown => self.stop(terminate_signal()).await,
        }
    }

    /// Stops accepting, lets open connections run for up to
    /// `shutdown.timeout` of the live configuration, then closes the rest.
    /// When `hurry` completes first (a second SIGTERM or Ctrl-C: an operator
    /// who will not wait), the rest are closed at once.
    pub async fn stop(mut self, hurry: impl Future<Output = ()>) {
        let deadline = self.handle.current().config.shutdown.timeout;
        self.stop_serving().await;
        tokio::pin!(hurry);
        // Polled once now, so that a signal handler behind it is in place
        // before the log line below invites the signal.
        let mut hurried = tokio::select! {
            biased;
            _ = &mut hurry => true,
            _ = std::future::ready(()) => false,
        };
        let open = self.ctx.tracker.len();
        if open > 0 && !hurried {
            tracing::info!(
                connections = open,
                deadline = %crate::config::format_duration(deadline),
                "stopped accepting; waiting for open connections to finish (stop again to close them now)"
            );
            let finished = tokio::select! {
                done = tokio::time::timeout(deadline, self.ctx.tracker.wait()) => done.is_ok(),
                _ = &mut hurry => {
                    hurried = true;
                    false
                }
            };
            if finished {
                return;
            }
        }
        if self.ctx.tracker.is_empty() {
            return;
        }
        self.close_the_rest(if hurried {
            "asked again to stop; closing the remaining connections"
        } else {
            "stop deadline reached; closing the remaining connections"
        })
        .await;
    }

    /// Closes the connections still open, saying why, and waits (briefly)
    /// until they are gone.
    async fn close_the_rest(&self, why: &str) {
        tracing::info!(connections = self.ctx.tracker.len(), "{why}");
        self.ctx.hard_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ctx.tracker.wait()).await;
    }
}

/// Runs a daemon until `shutdown` completes, reloading on SIGHUP. Started
/// by an upgrade (see [`crate::upgrade`]), it takes over the old process's
/// sockets; after handing its own sockets to a new process, it keeps its
/// open connections until they end, then returns.
pub async fn run(
    config_path: PathBuf,
    shared: Arc<Shared>,
    hooks: Vec<CommitHook>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    // Installed first: SIGHUP's default action is to terminate, and a
    // deploy hook may signal a daemon that is still starting. A signal that
    // arrives before the first generation serves is delivered afterwards and
    // simply reloads.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| RunError::Io(format!("cannot install the SIGHUP handler: {e}")))?;
    let mut incoming = crate::upgrade::Incoming::from_env();
    let mut inherited = match incoming.as_mut() {
        Some(i) => Some(i.fetch().await.map_err(|e| RunError::Io(e.to_string()))?),
        None => None,
    };
    // An old process that predates saying its pid is this one's parent.
    let previous_pid = inherited.as_ref().map(|i| match i.pid {
        0 => std::os::unix::process::parent_id(),
        pid => pid,
    });
    // Before the first handshake: the old process's clients resume here.
    if let Some(tickets) = inherited.as_mut().and_then(|i| i.tickets.take()) {
        match shared.ticketer.import(tickets.as_str()) {
            Ok(()) => tracing::info!("upgrade: took over the session-ticket keys"),
            Err(e) => tracing::warn!("upgrade: {e}; clients resume on new tickets only"),
        }
    }
    if let Some(sessions) = inherited.as_mut().and_then(|i| i.sessions.take()) {
        match shared.session_cache.import(sessions.as_str()) {
            Ok(n) => tracing::info!(sessions = n, "upgrade: took over the TLS session cache"),
            Err(e) => tracing::warn!("upgrade: {e}; the session cache starts empty"),
        }
    }
    // Refuse before binding any listener when a live daemon answers on the
    // control socket: a second daemon must not serve beside the one the
    // operator talks to, not even for a moment. (A file that does not parse
    // is refused by `Daemon::start` below.) An upgrade replaces that daemon.
    if incoming.is_none()
        && let Ok(config) = crate::config::read_config_bytes(&config_path)
            .and_then(|b| crate::config::Config::parse(&config_path, &b))
    {
        crate::control::ensure_free(&crate::control::socket_path(&config))
            .await
            .map_err(|e| RunError::Io(e.to_string()))?;
    }
    let daemon = match Daemon::start_inheriting(&config_path, shared, hooks, inherited) {
        Ok(d) => d,
        Err(e) => {
            if let Some(i) = incoming.as_mut() {
                i.failed(&e.to_string()).await;
            }
            return Err(RunError::Load(e));
        }
    };
    let handle = daemon.handle();
    let ctx = daemon.context();
    // Only `stayup run` can be upgraded: it is a binary to start again.
    ctx.upgrader.set_launch(&config_path);
    let background = match crate::triggers::start(&handle, &ctx).await {
        Ok(b) => b,
        Err(e) => {
            if let Some(i) = incoming.as_mut() {
                i.failed(&e).await;
            }
            daemon.stop(std::future::pending()).await;
            return Err(RunError::Io(e));
        }
    };
    // Addresses the configuration no longer has are closed here.
    ctx.upgrader.drop_inherited();
    let control = async {
        if let Some(i) = incoming.as_mut() {
            // The old process stops accepting once it hears this one
            // serves; if it cannot be told, it keeps serving and this one
            // must not.
            i.ready(handle.current().id)
                .await
                .map_err(|e| e.to_string())?;
        }
        background
            .start_control(&handle, &ctx, incoming.is_some())
            .await?;
        if let Some(i) = incoming.as_mut() {
            i.control_taken().await;
        }
        Ok::<(), String>(())
    };
    if let Err(e) = control.await {
        background.shutdown().await;
        daemon.stop(std::future::pending()).await;
        return Err(RunError::Io(e));
    }
    tracing::info!(
        generation = handle.current().id,
        config = %config_path.display(),
        pid = std::process::id(),
        "stayup ready"
    );
    crate::systemd::ready(&handle, incoming.is_some());
    if let Some(i) = incoming.take() {
        tracing::info!("upgrade: this process took over the listening sockets");
        i.follow_previous(previous_pid.unwrap_or(0), ctx.clone());
    }
    tokio::pin!(shutdown);
    let retired = loop {
        tokio::select! {
            _ = &mut shutdown => break false,
            _ = ctx.upgrader.retired.cancelled() => break true,
            _ = hup.recv() => {
                tracing::debug!("SIGHUP received; reloading");
                handle.request(Trigger::Signal);
            }
        }
    };
    if retired {
        tracing::info!(
            connections = ctx.tracker.len(),
            "upgrade: the new process serves; this one keeps its open connections until they end"
        );
        background.shutdown().await;
        daemon.retire(shutdown).await;
        tracing::info!("stopped");
        return Ok(());
    }
    tracing::info!("stopping");
    crate::systemd::stopping();
    background.shutdown().await;
    daemon.stop(terminate_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Why the daemon could not run.
#[derive(Debug)]
pub enum RunError {
    /// The first configuration was not valid.
    Load(LoadError),
    Io(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Load(e) => e.fmt(f),
            RunError::Io(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for RunError {}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn terminate_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
