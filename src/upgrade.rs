//! Binary upgrade without a dropped connection: `stayup upgrade`.
//!
//! A reload changes everything a configuration holds, but not stayup's own
//! code: a new release (a rustls fix, say) used to mean a restart, and a
//! restart closes every connection. An upgrade is nginx's binary upgrade
//! and HAProxy's `-x` socket transfer in one step:
//!
//! 1. `stayup upgrade` asks the running daemon (over the control socket).
//! 2. The daemon starts the binary now installed at the path it was itself
//!    started from, as its child (so that it stays in the same service,
//!    with the same stderr), with a one-time token in its environment.
//! 3. The new process connects to the old one's control socket and is
//!    handed every listening socket (`SCM_RIGHTS`): the same sockets, not
//!    new binds, so no connection is refused or lost from the accept queue
//!    while the two processes change places. The session-ticket keys and
//!    the session cache come with them, so that clients resume with the
//!    new process (`tickets`, `sessions`).
//! 4. It loads and validates the configuration exactly as a first start
//!    does. If that fails, it says why and exits; the old process never
//!    stopped serving and reports the reason: nothing changed.
//! 5. Once it serves (and has taken over the control socket), it says so;
//!    the old process stops accepting, stops reloading, answers
//!    `stayup upgrade`, and keeps its open connections until they end (or
//!    `drain.timeout`), then exits. Until then it tells the new process
//!    how many it still has, for the new one's status. Under systemd the
//!    new process becomes the service's main process (`MAINPID=`, needs
//!    `NotifyAccess=all`).

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde_json::{Value, json};
use tokio::io::Interest;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

/// The environment variable that carries the one-time token to the new process.
pub const ENV_TOKEN: &str = "STAYUP_UPGRADE_TOKEN";
/// The environment variable naming the old process's control socket.
pub const ENV_SOCKET: &str = "STAYUP_UPGRADE_SOCKET";

/// How long the old process waits for the new one to serve.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long each step of the hand-over itself may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a retired process looks whether its connection count changed.
const DRAIN_REPORT_EVERY: Duration = Duration::from_millis(250);
/// The kernel's limit on descriptors in one `SCM_RIGHTS` message.
const MAX_FDS: usize = 253;
/// How much of the session cache an upgrade hands over, as text (the
/// newest sessions; sessions without client certificates are a few
/// hundred bytes each, so a full cache fits).
const SESSIONS_BUDGET: usize = 16 * 1024 * 1024;
/// The longest answer line a new process reads.
const MAX_ANSWER: usize = SESSIONS_BUDGET + 1024 * 1024;
/// The longest answer the old process gives to a report of the new one.
const MAX_REPORT: usize = 64 * 1024;

/// Why an upgrade did not take place. The old process keeps serving.
#[derive(Debug)]
pub enum UpgradeError {
    /// Another upgrade is under way.
    Busy,
    /// This daemon was not started by `stayup run` (an embedding server, the
    /// demo), or the path of its binary is not known.
    Unavailable,
    /// The binary could not be located or started.
    Spawn(PathBuf, String),
    /// The new process failed before serving, with its own reason.
    Failed(String),
    /// The new process ended before it said whether it serves.
    Exited(PathBuf, String),
    /// The new process did not serve in time (it was stopped).
    TimedOut(PathBuf),
    /// The hand-over of the listening sockets failed.
    HandOver(String),
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpgradeError::Busy => f.write_str("another upgrade is under way"),
            UpgradeError::Unavailable => f.write_str(
                "this daemon cannot be upgraded: it was not started by `stayup run`, or the path of its binary is not known",
            ),
            UpgradeError::Spawn(exe, e) => write!(f, "cannot start {}: {e}", exe.display()),
            UpgradeError::Failed(reason) => write!(f, "the new process did not start: {reason}"),
            UpgradeError::Exited(exe, status) => write!(
                f,
                "the new process ({}) {status} before serving; its log is in this daemon's log",
                exe.display()
            ),
            UpgradeError::TimedOut(exe) => write!(
                f,
                "the new process ({}) did not serve within {}s and was stopped",
                exe.display(),
                READY_TIMEOUT.as_secs()
            ),
            UpgradeError::HandOver(e) => write!(f, "hand-over of the listening sockets failed: {e}"),
        }
    }
}

impl std::error::Error for UpgradeError {}

/// What the new process reports once it serves.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    pub pid: u32,
    pub generation: u64,
}

/// What an upgrade in progress waits for.
struct Pending {
    token: String,
    ready: Option<oneshot::Sender<Result<Ready, String>>>,
}

/// The old process's side: the listening sockets it can hand over, and
/// the upgrade in progress, if any. Lives in the [`crate::proxy::ProxyContext`].
#[derive(Default)]
pub struct Upgrader {
    /// The binary's path and the configuration path, as started.
    launch: OnceLock<(PathBuf, PathBuf)>,
    /// Configured listener address -> a duplicate of its listening socket.
    listeners: Mutex<HashMap<SocketAddr, Arc<OwnedFd>>>,
    /// Configured admin address -> a duplicate of the admin socket.
    admin: Mutex<Option<(SocketAddr, Arc<OwnedFd>)>>,
    pending: Mutex<Option<Pending>>,
    /// Cancelled when a new process has taken over: the daemon then stops
    /// everything but its open connections.
    pub retired: CancellationToken,
    /// What the new process was handed, for the one that was started by an
    /// upgrade: taken by the listeners and the admin endpoint at start.
    inherited: Mutex<Inherited>,
    /// The process this one replaced, while it still runs.
    previous: Mutex<Option<Previous>>,
}

/// The process an upgrade replaced, while it drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Previous {
    pub pid: u32,
    /// Its open connections, as it last said (None: not heard yet).
    pub connections: Option<u64>,
}

/// Listening sockets received from the old process.
#[derive(Debug, Default)]
pub struct Inherited {
    pub listeners: HashMap<SocketAddr, std::net::TcpListener>,
    pub admin: Option<(SocketAddr, std::net::TcpListener)>,
    /// The old process's pid (0: a process that predates telling it).
    pub pid: u32,
    /// The old process's current generation: the new one numbers its
    /// first generation after it, so that generation numbers never go back
    /// (a monitor that watches them sees one more commit, not a restart).
    pub generation: u64,
    /// The old process's session-ticket keys, so that its clients resume
    /// here (absent from a process that predates them).
    pub tickets: Option<crate::tickets::Exported>,
    /// The old process's session cache, likewise.
    pub sessions: Option<crate::tickets::Exported>,
}

/// What the old process hands over besides the sockets.
pub struct Secrets<'a> {
    tickets: &'a crate::tickets::TicketKeys,
    /// `None` when the new process did not ask for them.
    sessions: Option<Arc<crate::sessions::SessionCache>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A duplicate of a socket's descriptor, kept for a later hand-over.
fn dup(fd: BorrowedFd<'_>) -> Option<Arc<OwnedFd>> {
    fd.try_clone_to_owned().ok().map(Arc::new)
}

impl Upgrader {
    /// Records where the running binary and its configuration are, while
    /// the binary is still the one running (a package upgrade replaces the
    /// file later; the path then names the new one).
    pub fn set_launch(&self, config_path: &Path) {
        if let Ok(exe) = std::env::current_exe() {
            // Linux names a binary replaced since it started "... (deleted)".
            let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
                Some(s) => PathBuf::from(s),
                None => exe,
            };
            let _ = self.launch.set((exe, config_path.to_path_buf()));
        }
    }

    /// A listening socket that now serves, by configured address.
    pub fn record_listener(&self, addr: SocketAddr, fd: BorrowedFd<'_>) {
        if let Some(d) = dup(fd) {
            lock(&self.listeners).insert(addr, d);
        }
    }

    /// A listening socket that no longer serves.
    pub fn forget_listener(&self, addr: SocketAddr) {
        lock(&self.listeners).remove(&addr);
    }

    /// The admin endpoint's socket now serving (None: no admin endpoint).
    pub fn record_admin(&self, socket: Option<(SocketAddr, BorrowedFd<'_>)>) {
        *lock(&self.admin) = socket.and_then(|(a, fd)| dup(fd).map(|d| (a, d)));
    }

    /// Stores what this process was handed by the one it replaces.
    pub fn set_inherited(&self, inherited: Inherited) {
        *lock(&self.inherited) = inherited;
    }

    /// The inherited listening socket for a configured address, if any.
    pub fn take_listener(&self, addr: SocketAddr) -> Option<tokio::net::TcpListener> {
        let l = lock(&self.inherited).listeners.remove(&addr)?;
        into_tokio(l)
    }

    /// The inherited admin socket, if it was for this configured address.
    pub fn take_admin(&self, addr: SocketAddr) -> Option<tokio::net::TcpListener> {
        let mut inherited = lock(&self.inherited);
        match inherited.admin.take() {
            Some((a, l)) if a == addr => into_tokio(l),
            other => {
                inherited.admin = other;
                None
            }
        }
    }

    /// The process this one replaced, while it still runs (for status).
    pub fn previous(&self) -> Option<Previous> {
        *lock(&self.previous)
    }

    /// Closes whatever was inherited and not taken (addresses the new
    /// configuration no longer has).
    pub fn drop_inherited(&self) {
        *lock(&self.inherited) = Inherited::default();
    }

    /// Runs an upgrade: starts the new binary and waits until it serves or
    /// fails. On success the caller answers the asker, then calls
    /// [`Upgrader::retire`].
    pub async fn upgrade(&self, socket: &Path) -> Result<Ready, UpgradeError> {
        let Some((exe, config)) = self.launch.get().cloned() else {
            return Err(UpgradeError::Unavailable);
        };
        let token = new_token().map_err(|e| UpgradeError::Spawn(exe.clone(), e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if pending.is_some() {
                return Err(UpgradeError::Busy);
            }
            *pending = Some(Pending {
                token: token.clone(),
                ready: Some(tx),
            });
        }
        let result = self.start_and_wait(&exe, &config, socket, &token, rx).await;
        *lock(&self.pending) = None;
        result
    }

    async fn start_and_wait(
        &self,
        exe: &Path,
        config: &Path,
        socket: &Path,
        token: &str,
        rx: oneshot::Receiver<Result<Ready, String>>,
    ) -> Result<Ready, UpgradeError> {
        tracing::info!(binary = %exe.display(), "upgrade: starting the new process");
        let mut child = tokio::process::Command::new(exe)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env(ENV_TOKEN, token)
            .env(ENV_SOCKET, socket)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| UpgradeError::Spawn(exe.to_path_buf(), e.to_string()))?;
        let answer = |r: Result<Result<Ready, String>, oneshot::error::RecvError>| match r {
            Ok(Ok(ready)) => Ok(ready),
            Ok(Err(reason)) => Err(UpgradeError::Failed(reason)),
            Err(_) => Err(UpgradeError::HandOver(
                "the hand-over ended without an answer".into(),
            )),
        };
        tokio::pin!(rx);
        let outcome = tokio::select! {
            r = &mut rx => answer(r),
            status = child.wait() => {
                // A process that failed says why before it exits; its word
                // may still be on its way through the hand-over connection.
                match tokio::time::timeout(Duration::from_secs(1), &mut rx).await {
                    Ok(r @ Ok(Err(_))) => answer(r),
                    _ => Err(UpgradeError::Exited(
                        exe.to_path_buf(),
                        match status {
                            Ok(s) => format!("exited ({s})"),
                            Err(e) => format!("could not be waited for ({e})"),
                        },
                    )),
                }
            }
            _ = tokio::time::sleep(READY_TIMEOUT) => Err(UpgradeError::TimedOut(exe.to_path_buf())),
        };
        match &outcome {
            Ok(_) => {
                // The new process outlives this one; it is not waited for.
                drop(child);
            }
            Err(_) => {
                // A process that failed is gone or going; one that hangs is stopped.
                let _ = child.start_kill();
                let _ = tokio::time::timeout(STEP_TIMEOUT, child.wait()).await;
            }
        }
        outcome
    }

    /// After a successful upgrade has been answered: stop everything but
    /// the open connections.
    pub fn retire(&self) {
        self.release();
        self.retired.cancel();
    }

    /// Closes the duplicates kept for a hand-over: a stopping daemon's
    /// ports must refuse connections, not queue them for nobody.
    pub fn release(&self) {
        lock(&self.listeners).clear();
        *lock(&self.admin) = None;
    }

    /// The old process's side of the hand-over, on the control connection
    /// the new process opened: checks the token, sends the listening
    /// sockets, then waits for the new process to say whether it serves.
    pub async fn hand_over<R>(
        &self,
        request: &Value,
        lines: &mut tokio::io::Lines<R>,
        w: &mut OwnedWriteHalf,
        ctx: &crate::proxy::ProxyContext,
        handle: &crate::reloader::ReloadHandle,
    ) -> std::io::Result<()>
    where
        R: tokio::io::AsyncBufRead + Unpin,
    {
        let token = request.get("token").and_then(Value::as_str).unwrap_or("");
        let expected = lock(&self.pending).as_ref().map(|p| p.token.clone());
        if expected.is_none_or(|t| t.is_empty() || t != token) {
            return write_line(
                w,
                &json!({ "error": "no upgrade is waiting for this process" }),
            )
            .await;
        }
        // Only a new process that says it takes the session cache gets it:
        // an older binary (a downgrade) would refuse so long an answer.
        let sessions = (request.get("sessions") == Some(&Value::Bool(true)))
            .then(|| handle.shared.session_cache.clone());
        let result = self
            .send_and_wait(
                lines,
                w,
                &ctx.stop_accepting,
                handle.current().id,
                Secrets {
                    tickets: &handle.shared.ticketer,
                    sessions,
                },
            )
            .await;
        let report = match &result {
            Ok(r) => r.clone(),
            Err(e) => Err(format!("hand-over failed: {e}")),
        };
        let served = report.is_ok();
        if let Some(tx) = lock(&self.pending).as_mut().and_then(|p| p.ready.take()) {
            let _ = tx.send(report);
        }
        if served {
            report_drain(w, &ctx.tracker).await?;
        }
        result.map(|_| ())
    }

    async fn send_and_wait<R>(
        &self,
        lines: &mut tokio::io::Lines<R>,
        w: &mut OwnedWriteHalf,
        stop_accepting: &CancellationToken,
        generation: u64,
        secrets: Secrets<'_>,
    ) -> std::io::Result<Result<Ready, String>>
    where
        R: tokio::io::AsyncBufRead + Unpin,
    {
        let listeners: Vec<(SocketAddr, Arc<OwnedFd>)> = lock(&self.listeners)
            .iter()
            .map(|(a, f)| (*a, f.clone()))
            .collect();
        let admin = lock(&self.admin).clone();
        let mut fds: Vec<Arc<OwnedFd>> = listeners.iter().map(|(_, f)| f.clone()).collect();
        fds.extend(admin.iter().map(|(_, f)| f.clone()));
        if fds.len() > MAX_FDS {
            let reason = format!(
                "{} listening sockets are more than one hand-over can carry ({MAX_FDS})",
                fds.len()
            );
            write_line(w, &json!({ "error": reason })).await?;
            return Ok(Err(reason));
        }
        let mut answer = json!({
            "listeners": listeners.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>(),
            "admin": admin.as_ref().map(|(a, _)| a.to_string()),
            "generation": generation,
            "pid": std::process::id(),
        });
        let tickets = secrets.tickets.export();
        // A full session cache is megabytes of text: written off the
        // runtime, so that open connections do not wait for it.
        let sessions = secrets.sessions;
        let text = tokio::task::spawn_blocking(move || {
            let sessions = sessions.map(|s| s.export(SESSIONS_BUDGET));
            answer["tickets"] = tickets.as_str().into();
            answer["sessions"] = sessions
                .as_ref()
                .map(crate::tickets::Exported::as_str)
                .into();
            // Holds the ticket keys and sessions: erased once sent.
            let mut text = Zeroizing::new(answer.to_string());
            text.push('\n');
            text
        })
        .await
        .map_err(std::io::Error::other)?;
        send_with_fds(w, text.as_bytes(), &fds).await?;
        drop(fds);
        // The new process loads its configuration now; a first load reads
        // every file and may take a while with many certificates.
        let line = match tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) => return Ok(Err("the new process closed the hand-over".into())),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(Err("the new process did not report in time".into())),
        };
        let report: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if let Some(reason) = report.get("failed").and_then(Value::as_str) {
            return Ok(Err(reason.to_string()));
        }
        let ready = Ready {
            pid: report
                .get("pid")
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or(0),
            generation: report
                .get("generation")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        };
        if ready.pid == 0 {
            return Ok(Err(format!(
                "unexpected report from the new process: {line}"
            )));
        }
        // Confirmed before this process stops accepting: if the new one
        // cannot hear it, it exits and this one serves on.
        write_line(w, &json!({ "ok": true })).await?;
        // From here on only the new process accepts: the sockets are the
        // same, so connections waiting in their queues are the new one's.
        stop_accepting.cancel();
        // The asker is answered once the new process has the control
        // socket too, so that its next `stayup status` reaches the new one.
        let _ = tokio::time::timeout(STEP_TIMEOUT, lines.next_line()).await;
        Ok(Ok(ready))
    }
}

/// The old process's last words on the hand-over connection: how many
/// connections it still has, each time that changes, so that the new
/// process can show it. The connection ends when this process exits.
async fn report_drain(
    w: &mut OwnedWriteHalf,
    connections: &tokio_util::task::TaskTracker,
) -> std::io::Result<()> {
    let mut last = None;
    loop {
        let open = connections.len();
        if last != Some(open) {
            write_line(w, &json!({ "open": open })).await?;
            last = Some(open);
        }
        tokio::time::sleep(DRAIN_REPORT_EVERY).await;
    }
}

async fn write_line(w: &mut OwnedWriteHalf, v: &Value) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut text = v.to_string();
    text.push('\n');
    w.write_all(text.as_bytes()).await
}

/// Sends `bytes` with `fds` attached to the first of them.
async fn send_with_fds(
    w: &mut OwnedWriteHalf,
    bytes: &[u8],
    fds: &[Arc<OwnedFd>],
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space =
        vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(borrowed.len()))];
    let sent = {
        let stream: &tokio::net::UnixStream = w.as_ref();
        loop {
            stream.writable().await?;
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
                return Err(std::io::Error::other("descriptors do not fit the message"));
            }
            match stream.try_io(Interest::WRITABLE, || {
                rustix::net::sendmsg(
                    stream,
                    &[IoSlice::new(bytes)],
                    &mut control,
                    SendFlags::NOSIGNAL,
                )
                .map_err(std::io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    };
    w.write_all(&bytes[sent..]).await
}

fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

fn into_tokio(l: std::net::TcpListener) -> Option<tokio::net::TcpListener> {
    l.set_nonblocking(true).ok()?;
    tokio::net::TcpListener::from_std(l).ok()
}

/// The new process's side: set when this process was started by an upgrade.
pub struct Incoming {
    socket: PathBuf,
    token: String,
    stream: Option<StdUnixStream>,
    /// Bytes read past the last line of the hand-over connection.
    unread: Vec<u8>,
}

/// Why the new process could not get the old one's sockets.
#[derive(Debug)]
pub struct HandOverError(String);

impl std::fmt::Display for HandOverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upgrade: {}", self.0)
    }
}

impl std::error::Error for HandOverError {}

impl Incoming {
    /// Whether this process was started by an upgrade.
    pub fn from_env() -> Option<Incoming> {
        let token = std::env::var(ENV_TOKEN).ok().filter(|t| !t.is_empty())?;
        let socket = std::env::var_os(ENV_SOCKET).map(PathBuf::from)?;
        Some(Incoming {
            socket,
            token,
            stream: None,
            unread: Vec::new(),
        })
    }

    /// Connects to the old process and receives its listening sockets.
    pub async fn fetch(&mut self) -> Result<Inherited, HandOverError> {
        let socket = self.socket.clone();
        let token = self.token.clone();
        let (stream, inherited, rest) =
            tokio::task::spawn_blocking(move || fetch_blocking(&socket, &token))
                .await
                .map_err(|e| HandOverError(e.to_string()))??;
        self.stream = Some(stream);
        self.unread = rest;
        Ok(inherited)
    }

    /// Tells the old process this one serves, and waits until it has
    /// stopped accepting (bounded).
    pub async fn ready(&mut self, generation: u64) -> Result<(), HandOverError> {
        let report = json!({ "pid": std::process::id(), "generation": generation });
        let answer = self.report(report, true).await?;
        match answer.get("ok").and_then(Value::as_bool) {
            Some(true) => Ok(()),
            _ => Err(HandOverError(format!(
                "the old process did not confirm: {answer}"
            ))),
        }
    }

    /// Tells the old process that this one answers on the control socket now.
    pub async fn control_taken(&mut self) {
        let _ = self.report(json!({ "control": true }), false).await;
    }

    /// Follows the old process's drain from its reports on the hand-over
    /// connection, for `stayup status`, until it exits (the connection
    /// then ends). `pid` is the old process's.
    pub fn follow_previous(mut self, pid: u32, ctx: Arc<crate::proxy::ProxyContext>) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let stream = stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(stream));
        let Ok(stream) = stream else {
            return;
        };
        let unread = std::mem::take(&mut self.unread);
        *lock(&ctx.upgrader.previous) = Some(Previous {
            pid,
            connections: None,
        });
        tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt};
            let reader = tokio::io::BufReader::new(AsyncReadExt::chain(
                std::io::Cursor::new(unread),
                stream,
            ));
            let mut lines = reader.lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let open = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v.get("open").and_then(Value::as_u64));
                if let (Some(open), Some(p)) = (open, lock(&ctx.upgrader.previous).as_mut()) {
                    p.connections = Some(open);
                }
            }
            *lock(&ctx.upgrader.previous) = None;
            tracing::info!(pid, "upgrade: the previous process has ended");
        });
    }

    /// Tells the old process why this one cannot serve.
    pub async fn failed(&mut self, reason: &str) {
        let _ = self.report(json!({ "failed": reason }), false).await;
    }

    async fn report(&mut self, report: Value, wait: bool) -> Result<Value, HandOverError> {
        let Some(mut stream) = self.stream.take() else {
            return Err(HandOverError("no hand-over connection".into()));
        };
        let unread = std::mem::take(&mut self.unread);
        let (stream, rest, answer) = tokio::task::spawn_blocking(move || {
            let mut text = report.to_string();
            text.push('\n');
            if let Err(e) = stream.write_all(text.as_bytes()) {
                let e = HandOverError(format!("cannot report to the old process: {e}"));
                return (stream, unread, Err(e));
            }
            if !wait {
                return (stream, unread, Ok(Value::Null));
            }
            match read_line(&mut stream, unread, MAX_REPORT) {
                Ok((line, rest)) => {
                    let answer = serde_json::from_slice(&line)
                        .map_err(|e| HandOverError(format!("unreadable answer: {e}")));
                    (stream, rest, answer)
                }
                Err(e) => (stream, Vec::new(), Err(e)),
            }
        })
        .await
        .map_err(|e| HandOverError(e.to_string()))?;
        self.stream = Some(stream);
        self.unread = rest;
        answer
    }
}

type Fetched = (StdUnixStream, Inherited, Vec<u8>);

fn fetch_blocking(socket: &Path, token: &str) -> Result<Fetched, HandOverError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        HandOverError(format!("{what} {}: {e}", socket.display()))
    };
    let mut stream =
        StdUnixStream::connect(socket).map_err(|e| fail("cannot reach the old process at", &e))?;
    let _ = stream.set_read_timeout(Some(STEP_TIMEOUT));
    let _ = stream.set_write_timeout(Some(STEP_TIMEOUT));
    let mut request =
        json!({ "command": "hand-over", "token": token, "sessions": true }).to_string();
    request.push('\n');
    stream
        .write_all(request.as_bytes())
        .map_err(|e| fail("cannot ask the old process at", &e))?;

    let mut buf = vec![0u8; 16 * 1024];
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| fail("no answer from the old process at", &e))?;
    if got.flags.contains(ReturnFlags::CTRUNC) {
        return Err(HandOverError(
            "the listening sockets did not all arrive".into(),
        ));
    }
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let first = buf.get(..got.bytes).unwrap_or_default().to_vec();
    // The answer holds the session-ticket keys: its copies are erased.
    zeroize::Zeroize::zeroize(&mut buf);
    let (line, rest) = read_line(&mut stream, first, MAX_ANSWER)?;
    let mut answer: Value = serde_json::from_slice(&line)
        .map_err(|e| HandOverError(format!("unreadable answer from the old process: {e}")))?;
    let mut secret = |name: &str| match answer.get_mut(name).map(Value::take) {
        Some(Value::String(text)) => Some(crate::tickets::Exported::new(text)),
        _ => None,
    };
    let tickets = secret("tickets");
    let sessions = secret("sessions");
    if let Some(e) = answer.get("error").and_then(Value::as_str) {
        return Err(HandOverError(format!("the old process refused: {e}")));
    }
    let addr = |v: &Value| -> Result<SocketAddr, HandOverError> {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| HandOverError(format!("not an address in the hand-over: {v}")))
    };
    let listeners = answer
        .get("listeners")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let admin = match answer.get("admin") {
        Some(v) if !v.is_null() => Some(addr(v)?),
        _ => None,
    };
    if fds.len() != listeners.len() + usize::from(admin.is_some()) {
        return Err(HandOverError(format!(
            "{} sockets arrived for {} addresses",
            fds.len(),
            listeners.len() + usize::from(admin.is_some())
        )));
    }
    let mut fds = fds.into_iter();
    let mut inherited = Inherited {
        generation: answer
            .get("generation")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        pid: answer
            .get("pid")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0),
        tickets,
        sessions,
        ..Inherited::default()
    };
    for l in &listeners {
        if let Some(fd) = fds.next() {
            inherited
                .listeners
                .insert(addr(l)?, std::net::TcpListener::from(fd));
        }
    }
    if let (Some(a), Some(fd)) = (admin, fds.next()) {
        inherited.admin = Some((a, std::net::TcpListener::from(fd)));
    }
    // The rest of the exchange waits for this process's first load.
    let _ = stream.set_read_timeout(Some(READY_TIMEOUT));
    Ok((stream, inherited, rest))
}

/// Reads up to the first newline, at most `max` bytes; returns the line and
/// what followed it. The line may hold secrets (ticket keys, sessions):
/// every buffer it passed through is erased.
fn read_line(
    stream: &mut StdUnixStream,
    first: Vec<u8>,
    max: usize,
) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), HandOverError> {
    let mut have = Zeroizing::new(first);
    let mut searched = 0;
    let mut chunk = Zeroizing::new(vec![0u8; 64 * 1024]);
    loop {
        if let Some(i) = have[searched..].iter().position(|b| *b == b'\n') {
            let rest = have.split_off(searched + i + 1);
            have.pop();
            return Ok((have, rest));
        }
        searched = have.len();
        if have.len() > max {
            return Err(HandOverError("the old process's answer is too long".into()));
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(HandOverError("the old process closed the hand-over".into()));
            }
            Ok(n) => {
                let got = chunk.get(..n).unwrap_or_default();
                if have.capacity() - have.len() < n {
                    // Grown by hand: a reallocation would leave the old
                    // buffer's bytes behind in freed memory.
                    let mut bigger = Zeroizing::new(Vec::with_capacity((have.len() + n) * 2));
                    bigger.extend_from_slice(&have);
                    have = bigger;
                }
                have.extend_from_slice(got);
            }
            Err(e) => {
                return Err(HandOverError(format!(
                    "no answer from the old process: {e}"
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line of several MiB (a full session cache) arrives whole, with
    /// what followed it, however the reads split it; a longer one is
    /// refused instead of read without end.
    #[test]
    fn read_line_takes_long_lines_up_to_its_limit() {
        let (mut a, mut b) = StdUnixStream::pair().expect("socket pair");
        let line: Vec<u8> = (0..5_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let sent = line.clone();
        let writer = std::thread::spawn(move || {
            a.write_all(&sent).expect("write");
            a.write_all(b"\n{\"open\": 3}\n").expect("write");
            a
        });
        let (got, rest) = read_line(&mut b, b"".to_vec(), 8 * 1024 * 1024).expect("line");
        assert!(got.as_slice() == line.as_slice(), "{} bytes", got.len());
        let mut a = writer.join().expect("writer");
        // What followed the newline, some of it perhaps still to read.
        let (next, _) = read_line(&mut b, rest, MAX_REPORT).expect("next line");
        assert_eq!(next.as_slice(), b"{\"open\": 3}");

        let big = vec![b'x'; 300 * 1024];
        let writer = std::thread::spawn(move || {
            let _ = a.write_all(&big);
        });
        let err = read_line(&mut b, Vec::new(), MAX_REPORT).expect_err("too long");
        assert!(err.0.contains("too long"), "{}", err.0);
        drop(b);
        let _ = writer.join();
    }
}
