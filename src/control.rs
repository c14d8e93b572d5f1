//! The control socket: `reload` and `status` over line-delimited JSON.
//!
//! One request per line, one answer per line:
//!
//! ```text
//! -> {"command":"reload"}
//! <- {"result":"committed","generation":3,"previous":2,"trigger":"control",...}
//! -> {"command":"status"}
//! <- {"generation":3,"source_sha256":"...",...}
//! ```
//!
//! A `reload` answer comes when the reload it started (or joined) has ended,
//! so `stayup reload` can exit with the real outcome, unlike tools whose
//! reload command only sends a signal.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::generation::Trigger;
use crate::proxy::ProxyContext;
use crate::reloader::{Outcome, ReloadHandle};

/// The socket a configuration names, or the default `stayup.sock` beside it.
pub fn socket_path(config: &Config) -> PathBuf {
    config
        .control
        .socket
        .clone()
        .unwrap_or_else(|| default_socket_path(&config.path))
}

/// `stayup.sock` in the configuration file's folder.
pub fn default_socket_path(config_path: &Path) -> PathBuf {
    match config_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join("stayup.sock"),
        _ => PathBuf::from("stayup.sock"),
    }
}

/// Why the control socket could not be set up.
#[derive(Debug)]
pub enum ControlError {
    /// Another live daemon answers on the socket.
    InUse(PathBuf),
    Io(PathBuf, std::io::Error),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::InUse(p) => write!(
                f,
                "{}: another stayup daemon is answering on this control socket; refusing to take it over",
                p.display()
            ),
            ControlError::Io(p, e) => {
                write!(f, "{}: cannot create control socket: {e}", p.display())
            }
        }
    }
}

impl std::error::Error for ControlError {}

/// Fails with [`ControlError::InUse`] when a live daemon answers on `path`.
/// `stayup run` asks this before it binds any listener, so a second daemon
/// started by mistake refuses without touching the first one's ports.
pub async fn ensure_free(path: &Path) -> Result<(), ControlError> {
    if std::fs::symlink_metadata(path).is_ok() && UnixStream::connect(path).await.is_ok() {
        return Err(ControlError::InUse(path.to_path_buf()));
    }
    Ok(())
}

/// Binds the control socket: a stale file from a dead process is replaced,
/// a socket that a live daemon answers on is never stolen.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if std::fs::symlink_metadata(path).is_ok() {
        ensure_free(path).await?;
        std::fs::remove_file(path).map_err(|e| ControlError::Io(path.to_path_buf(), e))?;
    }
    bind_over(path).await
}

/// Binds the control socket in place of whatever is at `path`, in one
/// rename: a process started by an upgrade takes the socket over from the
/// old one, which keeps answering the connections it already has.
pub async fn bind_over(path: &Path) -> Result<UnixListener, ControlError> {
    // Bind under a temporary name, restrict it, then rename into place, so
    // the socket is never reachable with looser permissions.
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "stayup.sock".into()),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| ControlError::Io(path.to_path_buf(), e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            ControlError::Io(path.to_path_buf(), e)
        })?;
    Ok(listener)
}

/// The inode of the socket file we bound, so that we only ever remove our
/// own file (not one that replaced it).
fn inode(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Serves the control socket until `stop`; removes the socket file then
/// (if it is still ours) before returning.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    handle: ReloadHandle,
    ctx: Arc<ProxyContext>,
    stop: CancellationToken,
) {
    let ours = inode(&path);
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => break,
            c = listener.accept() => c,
        };
        match conn {
            Ok((stream, _)) => {
                let handle = handle.clone();
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    if let Err(e) = session(stream, handle, ctx).await {
                        tracing::debug!(error = %e, "control connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    if ours.is_some() && inode(&path) == ours {
        let _ = std::fs::remove_file(&path);
    }
}

/// Serves the control socket at the path the current generation names and
/// follows it through reloads: when a committed generation names another
/// `control.socket`, the new socket is bound first and the old one closed
/// and removed; if the new one cannot be bound, the old one keeps serving.
/// Returns after `stop`, once the socket file is removed.
pub fn run(
    first: Option<(PathBuf, UnixListener)>,
    handle: ReloadHandle,
    ctx: Arc<ProxyContext>,
    stop: CancellationToken,
) -> impl Future<Output = ()> {
    // Subscribed now, not when the task first runs: no commit is missed.
    let outcomes = handle.subscribe();
    follow_socket(first, handle, ctx, stop, outcomes)
}

async fn follow_socket(
    first: Option<(PathBuf, UnixListener)>,
    handle: ReloadHandle,
    ctx: Arc<ProxyContext>,
    stop: CancellationToken,
    mut outcomes: tokio::sync::broadcast::Receiver<crate::reloader::Outcome>,
) {
    let tasks = tokio_util::task::TaskTracker::new();
    let start = |path: PathBuf, l: UnixListener| {
        let token = stop.child_token();
        tasks.spawn(serve(
            l,
            path.clone(),
            handle.clone(),
            ctx.clone(),
            token.clone(),
        ));
        (path, token)
    };
    let mut current = first.map(|(p, l)| start(p, l));
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            r = outcomes.recv() => match r {
                Ok(o) => Some(o),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
        };
        if outcome.is_some_and(|o| o.result != crate::reloader::ReloadResult::Committed) {
            continue;
        }
        let wanted = socket_path(&handle.current().config);
        if current.as_ref().is_some_and(|(p, _)| *p == wanted) {
            continue;
        }
        match bind(&wanted).await {
            Ok(l) => {
                tracing::info!(socket = %wanted.display(), "control socket moved");
                if let Some((_, token)) = current.take() {
                    token.cancel();
                }
                current = Some(start(wanted, l));
            }
            Err(e) => tracing::warn!(
                "{e}; the control socket stays at {}",
                current
                    .as_ref()
                    .map(|(p, _)| p.display().to_string())
                    .unwrap_or_else(|| "(none)".into())
            ),
        }
    }
    if let Some((_, token)) = current {
        token.cancel();
    }
    tasks.close();
    tasks.wait().await;
}

async fn session(
    stream: UnixStream,
    handle: ReloadHandle,
    ctx: Arc<ProxyContext>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        if line.len() > 64 * 1024 {
            break;
        }
        let request: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => json!({ "error": format!("request is not JSON: {e}") }),
        };
        match request.get("command").and_then(Value::as_str) {
            // The new process of an upgrade, asking for the sockets.
            Some("hand-over") => {
                return ctx
                    .upgrader
                    .hand_over(&request, &mut lines, &mut w, &ctx, &handle)
                    .await;
            }
            Some("upgrade") => {
                let (answer, upgraded) = upgrade(&handle, &ctx).await;
                let mut text = answer.to_string();
                text.push('\n');
                let written = w.write_all(text.as_bytes()).await;
                if upgraded {
                    // Answered first: this process may exit soon after.
                    ctx.upgrader.retire();
                }
                written?;
                continue;
            }
            _ => {}
        }
        let answer = match request.get("error") {
            Some(_) => request,
            None => answer(&request, &handle, &ctx).await,
        };
        let mut text = answer.to_string();
        text.push('\n');
        w.write_all(text.as_bytes()).await?;
    }
    Ok(())
}

async fn answer(request: &Value, handle: &ReloadHandle, ctx: &ProxyContext) -> Value {
    match request.get("command").and_then(Value::as_str) {
        Some("reload") => match handle.reload(Trigger::Control).await {
            Some(o) => outcome_json(&o),
            None => json!({ "error": "the reloader has stopped" }),
        },
        Some("status") => crate::status::status_json(handle, ctx),
        Some(other) => json!({ "error": format!("unknown command {other:?}") }),
        None => json!({ "error": "request has no \"command\"" }),
    }
}

/// Runs an upgrade (see [`crate::upgrade`]) and says how it went; true
/// when the new process serves and this one is to retire.
async fn upgrade(handle: &ReloadHandle, ctx: &ProxyContext) -> (Value, bool) {
    let socket = socket_path(&handle.current().config);
    let pid = std::process::id();
    match ctx.upgrader.upgrade(&socket).await {
        Ok(ready) => {
            tracing::info!(
                pid = ready.pid,
                previous_pid = pid,
                "upgrade: committed; the new process serves"
            );
            (
                json!({
                    "result": "upgraded",
                    "pid": ready.pid,
                    "previous_pid": pid,
                    "generation": ready.generation,
                    "draining": ctx.tracker.len(),
                }),
                true,
            )
        }
        Err(e) => {
            tracing::warn!(reason = %e, "upgrade: rejected; this process keeps serving");
            (
                json!({
                    "result": "rejected",
                    "pid": pid,
                    "generation": handle.current().id,
                    "reason": e.to_string(),
                }),
                false,
            )
        }
    }
}

/// The JSON form of an outcome, as the control socket and status give it.
pub fn outcome_json(o: &Outcome) -> Value {
    json!({
        "result": o.result.as_str(),
        "generation": o.generation,
        "previous": o.previous,
        "trigger": o.trigger.as_str(),
        "reason": o.reason,
        "class": o.error_class,
        "changes": o.changes.iter().map(|c| json!({
            "kind": c.kind,
            "subject": c.subject,
            "from": c.from,
            "to": c.to,
        })).collect::<Vec<_>>(),
        "at": crate::status::format_system_time(o.at),
        "duration_ms": (o.duration.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
    })
}

/// Sends one request to the daemon at `socket` and returns its answer.
pub async fn request(socket: &Path, command: &str) -> std::io::Result<Value> {
    let stream = UnixStream::connect(socket).await?;
    let (r, mut w) = stream.into_split();
    let mut line = json!({ "command": command }).to_string();
    line.push('\n');
    w.write_all(line.as_bytes()).await?;
    let mut lines = BufReader::new(r).lines();
    match lines.next_line().await? {
        Some(l) => serde_json::from_str(&l)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the daemon closed the control connection without answering",
        )),
    }
}

/// Finds the control socket for the configuration at `config_path`. When
/// the file does not parse (the case a reload is about to reject), the
/// default location is tried; the parse error is returned alongside.
pub fn locate(config_path: &Path) -> (PathBuf, Option<String>) {
    match crate::config::read_config_bytes(config_path).and_then(|b| Config::parse(config_path, &b))
    {
        Ok(c) => (socket_path(&c), None),
        Err(e) => (default_socket_path(config_path), Some(e.to_string())),
    }
}

/// How long `stayup status` waits for an answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stayup reload` waits: a reload retries while files keep
/// changing, but a daemon that has not answered by then is stuck.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the daemon serving a configuration answers.
#[derive(Debug)]
pub struct Found {
    pub socket: PathBuf,
}

/// Why no daemon was found: the socket tried first and the error.
#[derive(Debug)]
pub struct NotFound {
    pub socket: PathBuf,
    pub error: String,
    /// Set when the configuration does not parse.
    pub parse_error: Option<String>,
}

impl NotFound {
    /// Says so for `stayup <command>`; the exit status for "unreachable".
    fn report(&self, command: &str) -> u8 {
        eprintln!(
            "stayup {command}: no daemon answering on {}: {}",
            self.socket.display(),
            self.error
        );
        2
    }
}

/// The daemon serving `config_path`, found at the socket the file names or,
/// when that does not answer (the file does not parse, or names a socket
/// the daemon has not moved to yet), at the default socket beside it, but
/// only if the daemon there says it serves this same file: a folder may
/// hold several configurations, and reloading another daemon would be
/// worse than no answer.
pub async fn find_daemon(config_path: &Path) -> Result<Found, NotFound> {
    let (named, parse_error) = locate(config_path);
    let default = default_socket_path(config_path);
    let mut tried = Vec::new();
    if parse_error.is_none() {
        match UnixStream::connect(&named).await {
            Ok(_) => return Ok(Found { socket: named }),
            Err(e) => tried.push((named.clone(), e.to_string())),
        }
    }
    if parse_error.is_some() || default != named {
        match tokio::time::timeout(STATUS_TIMEOUT, request(&default, "status")).await {
            Ok(Ok(status)) => {
                let ours = std::path::absolute(config_path).ok();
                let theirs = status
                    .get("config")
                    .and_then(Value::as_str)
                    .map(PathBuf::from);
                if ours.is_some() && ours == theirs {
                    return Ok(Found { socket: default });
                }
                tried.push((
                    default.clone(),
                    format!(
                        "the daemon there serves {}, not this file",
                        theirs
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| "another configuration".into())
                    ),
                ));
            }
            Ok(Err(e)) => tried.push((default.clone(), e.to_string())),
            Err(_) => tried.push((default.clone(), "no answer in time".into())),
        }
    }
    let (socket, error) = tried
        .into_iter()
        .next()
        .unwrap_or((named, "not tried".into()));
    Err(NotFound {
        socket,
        error,
        parse_error,
    })
}

/// How a client command reaches the daemon: through the configuration it
/// serves (`--config`), or straight at its control socket (`--socket`), for
/// a socket that is not where the file says: a sidecar container that shares
/// only the socket's folder, or a configuration whose folder has moved.
#[derive(Debug, Clone)]
pub enum Target {
    Config(PathBuf),
    Socket(PathBuf),
}

impl Target {
    async fn find(&self) -> Result<Found, NotFound> {
        match self {
            Target::Config(config) => find_daemon(config).await,
            Target::Socket(socket) => match UnixStream::connect(socket).await {
                Ok(_) => Ok(Found {
                    socket: socket.clone(),
                }),
                Err(e) => Err(NotFound {
                    socket: socket.clone(),
                    error: e.to_string(),
                    parse_error: None,
                }),
            },
        }
    }
}

/// `stayup reload`: asks the daemon for a reload and prints the outcome.
/// Returns the exit status: 0 committed or unchanged, 1 rejected, 2 unreachable.
pub async fn cli_reload(target: &Target, as_json: bool) -> u8 {
    let found = match target.find().await {
        Ok(f) => f,
        Err(nf) => {
            if let Some(reason) = nf.parse_error {
                // Whatever daemon runs, it would reject this content.
                eprintln!("stayup reload: {reason}");
                eprintln!(
                    "stayup reload: the configuration does not parse, so a reload would be rejected; no daemon found at {} ({})",
                    nf.socket.display(),
                    nf.error
                );
                return 1;
            }
            return nf.report("reload");
        }
    };
    let Some(answer) = ask(&found.socket, "reload", RELOAD_TIMEOUT).await else {
        return 2;
    };
    if as_json {
        println!("{answer}");
    } else {
        print_outcome(&answer);
    }
    match answer.get("result").and_then(Value::as_str) {
        Some("committed") | Some("unchanged") => 0,
        Some("rejected") => 1,
        _ => {
            eprintln!("stayup reload: unexpected answer from the daemon: {answer}");
            2
        }
    }
}

/// Sends `command` and waits up to `limit` for the outcome; says on stderr
/// why there is none.
async fn ask(socket: &Path, command: &str, limit: Duration) -> Option<Value> {
    match tokio::time::timeout(limit, request(socket, command)).await {
        Ok(Ok(a)) => Some(a),
        Ok(Err(e)) => {
            eprintln!(
                "stayup {command}: the daemon at {} did not answer: {e}",
                socket.display()
            );
            None
        }
        Err(_) => {
            eprintln!(
                "stayup {command}: the daemon at {} gave no outcome within {}s",
                socket.display(),
                limit.as_secs()
            );
            None
        }
    }
}

fn print_outcome(a: &Value) {
    let result = a.get("result").and_then(Value::as_str).unwrap_or("?");
    let generation = a.get("generation").and_then(Value::as_u64).unwrap_or(0);
    let previous = a.get("previous").and_then(Value::as_u64).unwrap_or(0);
    match result {
        "committed" => println!("committed: generation {generation} (was {previous})"),
        "unchanged" => println!("unchanged: generation {generation} keeps serving (same content)"),
        "rejected" => {
            println!("rejected: generation {generation} keeps serving");
            if let Some(r) = a.get("reason").and_then(Value::as_str) {
                println!("reason: {r}");
            }
        }
        other => println!("{other}"),
    }
    if let Some(changes) = a.get("changes").and_then(Value::as_array) {
        for c in changes {
            let kind = c.get("kind").and_then(Value::as_str).unwrap_or("");
            let subject = c.get("subject").and_then(Value::as_str).unwrap_or("");
            let from = c.get("from").and_then(Value::as_str);
            let to = c.get("to").and_then(Value::as_str);
            match (from, to) {
                (Some(f), Some(t)) => println!("  {kind} {subject}: {f} -> {t}"),
                (None, Some(t)) => println!("  {kind} {subject}: {t}"),
                (Some(f), None) => println!("  {kind} {subject}: {f}"),
                (None, None) => println!("  {kind} {subject}"),
            }
        }
    }
}

/// How long `stayup upgrade` waits: the new process loads its first
/// generation, which the daemon bounds at a minute.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(120);

/// `stayup upgrade`: asks the daemon to hand over to the binary now
/// installed at its path, and prints the outcome. Returns the exit status:
/// 0 upgraded, 1 rejected (the old process keeps serving), 2 unreachable.
pub async fn cli_upgrade(target: &Target, as_json: bool) -> u8 {
    let found = match target.find().await {
        Ok(f) => f,
        Err(nf) => {
            return nf.report("upgrade");
        }
    };
    let Some(answer) = ask(&found.socket, "upgrade", UPGRADE_TIMEOUT).await else {
        return 2;
    };
    if as_json {
        println!("{answer}");
    }
    let number = |k: &str| answer.get(k).and_then(Value::as_u64).unwrap_or(0);
    match answer.get("result").and_then(Value::as_str) {
        Some("upgraded") => {
            if !as_json {
                println!(
                    "upgraded: pid {} serves generation {} (was pid {}, which keeps its {} open connection(s) until they end)",
                    number("pid"),
                    number("generation"),
                    number("previous_pid"),
                    number("draining"),
                );
            }
            0
        }
        Some("rejected") => {
            if !as_json {
                println!("rejected: pid {} keeps serving", number("pid"));
                if let Some(r) = answer.get("reason").and_then(Value::as_str) {
                    println!("reason: {r}");
                }
            }
            1
        }
        _ => {
            eprintln!("stayup upgrade: unexpected answer from the daemon: {answer}");
            2
        }
    }
}

/// `stayup status`: prints the daemon's status. 0, or 2 unreachable.
pub async fn cli_status(target: &Target, as_json: bool) -> u8 {
    let socket = match target.find().await {
        Ok(f) => f.socket,
        Err(nf) => {
            return nf.report("status");
        }
    };
    match tokio::time::timeout(STATUS_TIMEOUT, request(&socket, "status")).await {
        Ok(Ok(s)) => {
            if as_json {
                println!("{s}");
            } else {
                crate::status::print_status(&s);
            }
            0
        }
        Ok(Err(e)) => {
            eprintln!(
                "stayup status: no daemon answering on {}: {e}",
                socket.display()
            );
            2
        }
        Err(_) => {
            eprintln!(
                "stayup status: the daemon at {} did not answer within {}s",
                socket.display(),
                STATUS_TIMEOUT.as_secs()
            );
            2
        }
    }
}
