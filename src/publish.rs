//! `stayup publish`, `history`, `rollback` and `gc`: the writer's side of
//! the reload discipline, so that the safe rotation is one command.
//!
//! Publish copies new material into the content-addressed store beside the
//! configuration, writes the new top-level file under a temporary name in
//! the same folder, validates that exact file with the loader a reload uses
//! ([`load_candidate`]), records it in `history/`, renames it over the
//! configuration and fsyncs the folder. Then it asks a running daemon to
//! reload and reports the outcome.
//!
//! Every step leaves the top-level path naming a complete file (the old one
//! until the rename, the new one after) whose referenced files are complete:
//! store files are fully written and fsynced before any configuration names
//! them, and are never rewritten in place.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::config::{Config, read_config_bytes};
use crate::generation::Shared;
use crate::history::{self, Entry};
use crate::material::{self, MAX_MATERIAL_BYTES};
use crate::reloader::{Candidate, load_candidate};
use crate::store::{self, Kind, Owner, STORE_DIR, checkpoint};
use crate::yamledit::{self, Slot};

/// How long publish waits for a daemon's reload outcome (a reload may wait
/// for files that keep changing to settle).
const DAEMON_WAIT: Duration = Duration::from_secs(120);

/// A dry run stores material in `<this><pid>` beside the configuration and
/// removes it afterwards.
const DRY_RUN_PREFIX: &str = ".stayup-dry-run.";

/// How long publish waits for a daemon's status before it decides that no
/// daemon answers.
const STATUS_WAIT: Duration = Duration::from_secs(30);

/// What `stayup publish` was asked to do.
#[derive(Debug, Clone)]
pub enum Request {
    /// Replace one certificate entry of one listener.
    Pair {
        listener: String,
        /// 1-based position in the listener's `certificates`.
        index: usize,
        cert: PathBuf,
        key: PathBuf,
    },
    /// Replace the whole configuration.
    From(PathBuf),
}

impl Request {
    /// The request the command-line flags describe, if they describe one.
    pub fn from_flags(
        from: Option<PathBuf>,
        listener: Option<String>,
        index: usize,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Option<Request> {
        match (from, listener, cert, key) {
            (Some(from), ..) => Some(Request::From(from)),
            (None, Some(listener), Some(cert), Some(key)) => Some(Request::Pair {
                listener,
                index,
                cert,
                key,
            }),
            _ => None,
        }
    }
}

/// A failure that stops the command; nothing was activated.
struct Stop(String);

impl<E: std::fmt::Display> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop(e.to_string())
    }
}

/// The configuration's location and the attributes new files inherit.
struct Site {
    config: PathBuf,
    dir: PathBuf,
    owner: Option<Owner>,
    mode: u32,
    /// Held for the whole command: publishes, rollbacks and gc of one
    /// configuration run one at a time.
    _lock: File,
}

impl Site {
    fn open(config: &Path) -> Result<Site, Stop> {
        let meta = std::fs::symlink_metadata(config)
            .map_err(|e| Stop(format!("{}: cannot read: {e}", config.display())))?;
        if meta.file_type().is_symlink() {
            return Err(Stop(format!(
                "{}: is a symlink; publish replaces the top-level file by renaming a new file over it, which would replace the link itself. Point --config at the file it names, or publish to the system that manages the link",
                config.display()
            )));
        }
        if !meta.is_file() {
            return Err(Stop(format!("{}: is not a regular file", config.display())));
        }
        let dir = match config.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let lock = File::open(&dir)
            .map_err(|e| Stop(format!("{}: cannot open the folder: {e}", dir.display())))?;
        lock.lock()
            .map_err(|e| Stop(format!("{}: cannot lock the folder: {e}", dir.display())))?;
        Ok(Site {
            config: config.to_path_buf(),
            owner: Owner::of(config),
            mode: meta.permissions().mode() & 0o777,
            dir,
            _lock: lock,
        })
    }

    fn store_dir(&self) -> PathBuf {
        self.dir.join(STORE_DIR)
    }
}

/// Files one run put into a store folder, removed again if the run is
/// refused so that a refusal changes nothing on disk.
#[derive(Default)]
struct Staged {
    dir: PathBuf,
    dir_created: bool,
    created: Vec<PathBuf>,
    /// (store path, the input it was copied from)
    origins: Vec<(PathBuf, PathBuf)>,
}

impl Staged {
    fn undo(&self) {
        for f in &self.created {
            let _ = std::fs::remove_file(f);
        }
        if self.dir_created {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// Material read from the caller's paths, ready to be stored.
struct Input {
    slot: Slot,
    given: PathBuf,
    resolved: PathBuf,
    bytes: Vec<u8>,
    kind: Kind,
}

fn read_input(slot: Slot, given: &Path, kind: Kind) -> Result<Input, Stop> {
    // Resolve symlinks once and read the target's bytes once: certbot's
    // `live/` links can be re-pointed at any time, and what is copied is
    // what gets validated.
    let resolved = std::fs::canonicalize(given)
        .map_err(|e| Stop(format!("{}: cannot resolve: {e}", given.display())))?;
    let bytes = material::read_capped(&resolved, MAX_MATERIAL_BYTES)
        .map_err(|e| Stop(format!("{}: cannot read: {e}", resolved.display())))?;
    Ok(Input {
        slot,
        given: given.to_path_buf(),
        resolved,
        bytes,
        kind,
    })
}

fn store_inputs(site: &Site, inputs: &[Input], dir: &Path) -> Result<Staged, Stop> {
    let mut staged = Staged {
        dir: dir.to_path_buf(),
        dir_created: store::ensure_dir(dir, site.owner)?,
        ..Staged::default()
    };
    for i in inputs {
        match store::put(dir, &i.bytes, i.kind, site.owner) {
            Ok((path, created)) => {
                if created {
                    staged.created.push(path.clone());
                }
                staged.origins.push((path, i.resolved.clone()));
            }
            Err(e) => {
                staged.undo();
                return Err(e.into());
            }
        }
    }
    if let Err(e) = store::sync_dir(dir) {
        staged.undo();
        return Err(e.into());
    }
    Ok(staged)
}

/// Where the new top-level file refers to a stored input, relative to the
/// configuration's folder so that the folder can be moved as a whole.
fn reference(store_rel: &str, i: &Input) -> String {
    format!("{store_rel}/{}", store::file_name(&i.bytes, i.kind))
}

/// Writes `bytes` as the candidate, validates it as a reload would, records
/// it in history, renames it over the configuration and fsyncs the folder.
/// With `dry_run`, stops after validation and leaves nothing behind.
fn activate(
    site: &Site,
    old: Option<&[u8]>,
    bytes: &[u8],
    staged: &Staged,
    dry_run: bool,
) -> Result<Candidate, Stop> {
    let shared = Shared::new()?;
    let tmp = match store::write_temp(&site.config, bytes, site.mode, site.owner) {
        Ok(t) => t,
        Err(e) => {
            staged.undo();
            return Err(e.into());
        }
    };
    checkpoint("candidate");
    let candidate = match load_candidate(&tmp, &shared, SystemTime::now()) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            staged.undo();
            let mut reason = e.to_string().replace(
                &tmp.display().to_string(),
                &site.config.display().to_string(),
            );
            for (stored, from) in &staged.origins {
                if reason.contains(&stored.display().to_string()) {
                    reason.push_str(&format!(
                        "\n  ({} is the copy of {})",
                        stored.display(),
                        from.display()
                    ));
                }
            }
            return Err(Stop(format!("refused, nothing changed: {reason}")));
        }
    };
    checkpoint("validated");
    if dry_run {
        let _ = std::fs::remove_file(&tmp);
        return Ok(candidate);
    }
    let record = || -> Result<(), store::StoreError> {
        let entries = history::list(&site.dir).unwrap_or_default();
        // The first publish also keeps the file it replaces, so that there
        // is something to roll back to.
        // (Only if it is a configuration at all: history is what rollback
        // offers, and gc must be able to read every entry it keeps.)
        if let Some(old) = old
            && Config::parse(&site.config, old).is_ok()
            && !entries.iter().any(|e| same_content(e, old))
        {
            history::record(&site.dir, old, site.owner)?;
        }
        history::record(&site.dir, bytes, site.owner)?;
        Ok(())
    };
    if let Err(e) = record() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    checkpoint("history");
    store::rename(&tmp, &site.config)?;
    checkpoint("rename");
    store::sync_dir(&site.dir)?;
    checkpoint("sync");
    Ok(candidate)
}

fn same_content(e: &Entry, bytes: &[u8]) -> bool {
    e.short_hash() == &hex::encode(material::sha256(bytes))[..12]
        && e.read().is_ok_and(|b| b == bytes)
}

/// The daemon, as seen before anything changed.
struct DaemonLink {
    socket: PathBuf,
    generation: Option<u64>,
}

/// The daemon serving `config` (see [`crate::control::find_daemon`]: never
/// another configuration's daemon that happens to share the folder).
async fn find_daemon(config: &Path) -> Result<DaemonLink, String> {
    let socket = match crate::control::find_daemon(config).await {
        Ok(found) => found.socket,
        Err(nf) => {
            return Err(format!(
                "no daemon answering on {} ({})",
                nf.socket.display(),
                nf.error
            ));
        }
    };
    match tokio::time::timeout(STATUS_WAIT, crate::control::request(&socket, "status")).await {
        Ok(Ok(status)) => Ok(DaemonLink {
            socket,
            generation: status.get("generation").and_then(Value::as_u64),
        }),
        Ok(Err(e)) => Err(format!("no daemon answering on {} ({e})", socket.display())),
        Err(_) => Err(format!(
            "the daemon on {} did not answer a status request",
            socket.display()
        )),
    }
}

/// Asks the daemon to reload and prints what happened. Returns the exit
/// status: 0 the daemon serves the new content, 1 it rejected it, 2 it did
/// not answer.
async fn notify(daemon: Result<DaemonLink, String>) -> u8 {
    let link = match daemon {
        Ok(l) => l,
        Err(why) => {
            println!("{why}; the new configuration takes effect when stayup starts");
            return 0;
        }
    };
    let answer =
        match tokio::time::timeout(DAEMON_WAIT, crate::control::request(&link.socket, "reload"))
            .await
        {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                eprintln!(
                    "stayup: the daemon on {} did not answer the reload request: {e}",
                    link.socket.display()
                );
                return 2;
            }
            Err(_) => {
                eprintln!(
                    "stayup: the daemon on {} gave no reload outcome within {}s",
                    link.socket.display(),
                    DAEMON_WAIT.as_secs()
                );
                return 2;
            }
        };
    let (text, code) = verdict(&answer, link.generation);
    if code == 2 {
        eprintln!("stayup: {text}");
    } else {
        println!("{text}");
    }
    code
}

/// What the daemon's answer to the reload means, given the generation it
/// served before publish changed anything; and the exit status.
fn verdict(answer: &Value, before: Option<u64>) -> (String, u8) {
    let generation = answer
        .get("generation")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let previous = answer.get("previous").and_then(Value::as_u64).unwrap_or(0);
    match answer.get("result").and_then(Value::as_str) {
        Some("committed") => (
            format!("daemon: committed generation {generation} (was {previous})"),
            0,
        ),
        // A watcher may have noticed the rename and committed before this
        // request arrived: the content is live, in a newer generation.
        Some("unchanged") => match before {
            Some(before) if generation > before => (
                format!(
                    "daemon: already serving it: generation {generation} was committed (by its file watcher) before this request (was {before})"
                ),
                0,
            ),
            _ => (
                format!("daemon: unchanged, generation {generation} already serves this content"),
                0,
            ),
        },
        Some("rejected") => {
            let mut text = format!("daemon: rejected; generation {generation} keeps serving");
            if let Some(r) = answer.get("reason").and_then(Value::as_str) {
                text.push_str(&format!("\nreason: {r}"));
            }
            (text, 1)
        }
        _ => (format!("unexpected answer from the daemon: {answer}"), 2),
    }
}

fn describe_cert(c: &Candidate, listener: usize, index: usize) -> String {
    let Some(cert) = c
        .material
        .listeners
        .get(listener)
        .and_then(|l| l.certs.get(index))
    else {
        return String::new();
    };
    let i = &cert.info;
    format!(
        "  subject {}\n  names   {}\n  expires {} ({} days left)\n  sha256  {}",
        i.subject,
        if i.sans.is_empty() {
            "(none)".to_string()
        } else {
            i.sans.join(", ")
        },
        crate::status::format_unix(i.not_after),
        crate::status::days_left(i.not_after, SystemTime::now()),
        i.fingerprint
    )
}

fn relative(site: &Site, p: &Path) -> String {
    p.strip_prefix(&site.dir)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

/// `stayup publish`. Returns the exit status.
pub async fn cli_publish(config: &Path, request: Request, dry_run: bool) -> u8 {
    let daemon = if dry_run {
        Err(String::new())
    } else {
        find_daemon(config).await
    };
    let result = match &request {
        Request::Pair {
            listener,
            index,
            cert,
            key,
        } => publish_pair(config, listener, *index, cert, key, dry_run),
        Request::From(new) => publish_from(config, new, dry_run),
    };
    match result {
        Err(Stop(why)) => {
            eprintln!("stayup publish: {why}");
            1
        }
        Ok(change) => finish(config, change, daemon).await,
    }
}

/// What a publish or a rollback did to the top-level file.
enum Change {
    /// Nothing, and nothing to ask the daemon (a dry run of the live content).
    Nothing,
    /// Nothing: a dry run that would have replaced it.
    WouldReplace,
    /// Already the content asked for. The daemon is asked all the same: an
    /// earlier run may have stopped before asking.
    AlreadyLive,
    /// Renamed into place over `previous` (`None`: it was unreadable).
    Replaced {
        previous: Option<Vec<u8>>,
        published: Vec<u8>,
    },
}

/// Asks the daemon, and puts the previous file back if it rejects the new
/// one: a publish changes both what is served and what is on disk, or
/// neither. A file the daemon rejected and left in place would be what the
/// next start (a reboot, a crash) reads, and start-up does not fall back.
/// Returns the exit status.
async fn finish(config: &Path, change: Change, daemon: Result<DaemonLink, String>) -> u8 {
    match change {
        Change::Nothing => 0,
        Change::WouldReplace => {
            println!("dry run: valid; nothing was changed");
            0
        }
        Change::AlreadyLive => {
            let code = notify(daemon).await;
            if code == 1 {
                println!(
                    "{} was already this content and is not what is served; `stayup rollback` re-activates an earlier file",
                    config.display()
                );
            }
            code
        }
        Change::Replaced {
            previous,
            published,
        } => {
            let code = notify(daemon).await;
            if code == 1 {
                let kept =
                    "the new file stays in place; `stayup rollback` re-activates the previous one";
                match previous {
                    None => println!("{kept}"),
                    Some(previous) => match put_back(config, &previous, &published) {
                        Ok(()) => println!(
                            "put the previous {} back in place, as it was before (the rejected one stays in `stayup history`)",
                            config.display()
                        ),
                        Err(Stop(why)) => {
                            println!("could not put the previous file back: {why}; {kept}")
                        }
                    },
                }
            }
            code
        }
    }
}

/// Renames `previous` back over `config`, unless the file has changed again
/// since this run replaced it with `published`. Not validated again: it is
/// exactly what was there before, and no history entry is written (the
/// earlier entry with this content is the live one again).
fn put_back(config: &Path, previous: &[u8], published: &[u8]) -> Result<(), Stop> {
    let site = Site::open(config)?;
    if read_config_bytes(config)? != published {
        return Err(Stop(format!(
            "{} has changed since (another publish, or an edit)",
            config.display()
        )));
    }
    let tmp = store::write_temp(&site.config, previous, site.mode, site.owner)?;
    store::rename(&tmp, &site.config)?;
    store::sync_dir(&site.dir)?;
    Ok(())
}

/// Publishes one certificate pair; errors are refusals.
fn publish_pair(
    config: &Path,
    listener: &str,
    index: usize,
    cert: &Path,
    key: &Path,
    dry_run: bool,
) -> Result<Change, Stop> {
    let site = Site::open(config)?;
    let old = read_config_bytes(config)?;
    let current = Config::parse(config, &old).map_err(|e| {
        Stop(format!(
            "{e}\nthe current configuration must be valid to publish a certificate into it; fix it, or publish a whole file with --from"
        ))
    })?;
    let li = current
        .listeners
        .iter()
        .position(|l| l.name == listener)
        .ok_or_else(|| {
            Stop(format!(
                "{}: no listener named {listener:?} (listeners: {})",
                config.display(),
                current
                    .listeners
                    .iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let count = current.listeners[li].tls.certificates.len();
    if index == 0 || index > count {
        return Err(Stop(format!(
            "{}: listener {listener:?} has {count} certificate entr{}; --index must be 1..{count}",
            config.display(),
            if count == 1 { "y" } else { "ies" }
        )));
    }
    let ci = index - 1;
    let inputs = [
        read_input(Slot::Cert(li, ci), cert, Kind::Public)?,
        read_input(Slot::Key(li, ci), key, Kind::Key)?,
    ];
    for i in &inputs {
        if std::path::absolute(&i.given).ok().as_ref() != Some(&i.resolved) {
            println!("{} resolves to {}", i.given.display(), i.resolved.display());
        }
    }
    let rw = Rewrite::new(&site, std::str::from_utf8(&old)?, &inputs, dry_run, config)?;
    let unchanged = || {
        format!(
            "{}: listener {listener} certificate {index} already is this certificate and key; nothing to change",
            config.display()
        )
    };
    let candidate = match rw.activate(&site, Some(&old), &inputs, dry_run, unchanged)? {
        Ok(c) => c,
        Err(change) => return Ok(change),
    };
    let edits = &rw.edits;
    let before = &current.listeners[li].tls.certificates[ci];
    println!(
        "{} {}: listener {listener} certificate {index}",
        if dry_run {
            "would publish"
        } else {
            "published"
        },
        config.display()
    );
    println!(
        "  cert {} -> {}\n  key  {} -> {}",
        relative(&site, &before.cert),
        edits[0].1,
        relative(&site, &before.key),
        edits[1].1
    );
    println!("{}", describe_cert(&candidate, li, ci));
    Ok(replaced(dry_run, Some(old), rw.candidate.into_bytes()))
}

fn replaced(dry_run: bool, previous: Option<Vec<u8>>, published: Vec<u8>) -> Change {
    if dry_run {
        Change::WouldReplace
    } else {
        Change::Replaced {
            previous,
            published,
        }
    }
}

/// The new top-level text for some inputs.
struct Rewrite {
    /// As it will be published: paths name `store/`.
    text: String,
    /// As it is validated: the same, except that a dry run names its
    /// private folder (removed afterwards) instead of the store.
    candidate: String,
    /// (which path, its new value in `text`)
    edits: Vec<(Slot, String)>,
    /// Where this run puts the inputs.
    store_dir: PathBuf,
}

impl Rewrite {
    /// Stores `inputs` and activates the new text over `old`. `Err` when
    /// the file already is this text: then nothing is activated (`unchanged`
    /// says so), but the store copies are still made sure of and the
    /// daemon is still asked (a previous run may have stopped before).
    fn activate(
        &self,
        site: &Site,
        old: Option<&[u8]>,
        inputs: &[Input],
        dry_run: bool,
        unchanged: impl FnOnce() -> String,
    ) -> Result<Result<Candidate, Change>, Stop> {
        if old == Some(self.text.as_bytes()) {
            println!("{}", unchanged());
            if dry_run {
                return Ok(Err(Change::Nothing));
            }
            store_inputs(site, inputs, &self.store_dir)?;
            return Ok(Err(Change::AlreadyLive));
        }
        let staged = store_inputs(site, inputs, &self.store_dir)?;
        checkpoint("store");
        let result = activate(site, old, self.candidate.as_bytes(), &staged, dry_run);
        if dry_run {
            let _ = std::fs::remove_dir_all(&self.store_dir);
        }
        result.map(Ok)
    }

    fn new(
        site: &Site,
        source: &str,
        inputs: &[Input],
        dry_run: bool,
        source_name: &Path,
    ) -> Result<Rewrite, Stop> {
        let edits_in = |rel: &str| -> Vec<(Slot, String)> {
            inputs.iter().map(|i| (i.slot, reference(rel, i))).collect()
        };
        let rewrite = |edits: &[(Slot, String)]| {
            yamledit::rewrite(source, edits)
                .map_err(|e| Stop(format!("{}: {e}", source_name.display())))
        };
        let edits = edits_in(STORE_DIR);
        let text = rewrite(&edits)?;
        let (candidate, store_dir) = if dry_run {
            let rel = format!("{DRY_RUN_PREFIX}{}", std::process::id());
            (rewrite(&edits_in(&rel))?, site.dir.join(rel))
        } else {
            (text.clone(), site.store_dir())
        };
        Ok(Rewrite {
            text,
            candidate,
            edits,
            store_dir,
        })
    }
}

fn publish_from(config: &Path, new_path: &Path, dry_run: bool) -> Result<Change, Stop> {
    let site = Site::open(config)?;
    let old = read_config_bytes(config).ok();
    let given = read_config_bytes(new_path)?;
    // Relative paths in the new file mean what they mean beside it.
    let parsed = Config::parse(new_path, &given)?;
    let text = std::str::from_utf8(&given)?;
    let mut inputs = Vec::new();
    for s in yamledit::locate(text).map_err(|e| Stop(format!("{}: {e}", new_path.display())))? {
        let (path, kind) = match s.slot {
            Slot::Cert(l, c) => (&parsed.listeners[l].tls.certificates[c].cert, Kind::Public),
            Slot::Key(l, c) => (&parsed.listeners[l].tls.certificates[c].key, Kind::Key),
            Slot::ClientCa(l) => match &parsed.listeners[l].tls.client_ca {
                Some(p) => (p, Kind::Public),
                None => continue,
            },
        };
        inputs.push(read_input(s.slot, path, kind)?);
    }
    let rw = Rewrite::new(&site, text, &inputs, dry_run, new_path)?;
    let unchanged = || {
        format!(
            "{}: already is this configuration; nothing to change",
            config.display()
        )
    };
    let candidate = match rw.activate(&site, old.as_deref(), &inputs, dry_run, unchanged)? {
        Ok(c) => c,
        Err(change) => return Ok(change),
    };
    println!(
        "{} {} as {} ({} file{} copied into {STORE_DIR}/)",
        if dry_run {
            "would publish"
        } else {
            "published"
        },
        new_path.display(),
        config.display(),
        inputs.len(),
        if inputs.len() == 1 { "" } else { "s" }
    );
    if let Some(old) = old.as_deref().and_then(|b| Config::parse(config, b).ok()) {
        println!(
            "  {}",
            history::describe(&old, &candidate.config, &site.dir)
        );
    }
    Ok(replaced(dry_run, old, rw.candidate.into_bytes()))
}

/// `stayup history`: every recorded top-level file, oldest first; `*`
/// marks the one that is live now.
pub fn cli_history(config: &Path) -> u8 {
    let dir = match config.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let entries = match history::list(&dir) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("stayup history: {e}");
            return 1;
        }
    };
    if entries.is_empty() {
        println!(
            "no history yet: {} keeps a copy of every file `stayup publish` or `stayup rollback` activates",
            history::dir(&dir).display()
        );
        return 0;
    }
    let live = read_config_bytes(config).ok();
    // Only the newest record of the live content is the live entry.
    let live_id = live.as_deref().and_then(|l| {
        entries
            .iter()
            .rev()
            .find(|e| same_content(e, l))
            .map(|e| e.id.as_str())
    });
    let mut seen: Vec<(String, &Entry)> = Vec::new();
    let mut previous: Option<Config> = None;
    println!("  {:<36}  {:<23}  change", "ID", "time");
    for e in &entries {
        let bytes = e.read();
        let hash = bytes
            .as_ref()
            .map(|b| hex::encode(material::sha256(b)))
            .unwrap_or_default();
        let is_live = Some(e.id.as_str()) == live_id;
        let parsed = bytes
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|b| history::parse_as(config, b));
        let change = match (&parsed, seen.iter().find(|(h, _)| *h == hash)) {
            (Err(why), _) => format!("unreadable: {why}"),
            (Ok(_), Some((_, first))) => format!("same content as {} (rollback)", first.id),
            (Ok(c), None) => match &previous {
                None => "oldest recorded".to_string(),
                Some(p) => history::describe(p, c, &dir),
            },
        };
        println!(
            "{} {:<36}  {:<23}  {change}",
            if is_live { "*" } else { " " },
            e.id,
            e.time()
        );
        if let Ok(c) = parsed {
            previous = Some(c);
        }
        if !seen.iter().any(|(h, _)| *h == hash) {
            seen.push((hash, e));
        }
    }
    if live_id.is_none() {
        println!(
            "(the live {} matches no entry: it was changed outside stayup publish)",
            config.display()
        );
    }
    0
}

/// `stayup rollback`: re-activates the previous history entry (or `to`)
/// through the same validate-then-rename path as publish.
pub async fn cli_rollback(config: &Path, to: Option<&str>, dry_run: bool) -> u8 {
    let daemon = if dry_run {
        Err(String::new())
    } else {
        find_daemon(config).await
    };
    match rollback(config, to, dry_run) {
        Err(Stop(why)) => {
            eprintln!("stayup rollback: {why}");
            1
        }
        Ok(change) => finish(config, change, daemon).await,
    }
}

fn rollback(config: &Path, to: Option<&str>, dry_run: bool) -> Result<Change, Stop> {
    let site = Site::open(config)?;
    let live = read_config_bytes(config).ok();
    let entries = history::list(&site.dir)?;
    let is_live = |e: &Entry| live.as_deref().is_some_and(|l| same_content(e, l));
    let target = match to {
        Some(id) => history::resolve(&entries, id)?,
        None => {
            // The entry before the live one, skipping records of the same
            // content; when the live file is not in history, the newest.
            let end = entries.iter().rposition(is_live).unwrap_or(entries.len());
            entries[..end]
                .iter()
                .rev()
                .find(|e| !is_live(e))
                .ok_or_else(|| {
                    Stop(format!(
                        "{}: no earlier history entry to roll back to (see `stayup history`)",
                        config.display()
                    ))
                })?
        }
    };
    if is_live(target) {
        return Err(Stop(format!(
            "{} is already live; nothing to roll back",
            target.id
        )));
    }
    let bytes = target.read()?;
    let staged = Staged::default();
    activate(&site, live.as_deref(), &bytes, &staged, dry_run)
        .map_err(|Stop(why)| Stop(format!("{}: {why}", target.id)))?;
    println!(
        "{} {} to {} ({})",
        if dry_run {
            "would roll back"
        } else {
            "rolled back"
        },
        config.display(),
        target.id,
        target.time()
    );
    Ok(replaced(dry_run, live, bytes))
}

/// `stayup gc`: keeps the live file, the last `keep` history entries and
/// every store file any of them references; deletes the rest.
pub async fn cli_gc(config: &Path, keep: usize) -> u8 {
    // A daemon may still serve an older file than the live one (it rejected
    // the newest): its history entry is kept too, so it stays restorable.
    let running = match crate::control::find_daemon(config).await {
        Ok(found) => match tokio::time::timeout(
            STATUS_WAIT,
            crate::control::request(&found.socket, "status"),
        )
        .await
        {
            Ok(Ok(status)) => status
                .get("source_sha256")
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        },
        Err(_) => None,
    };
    match gc(config, keep, running.as_deref()) {
        Ok(()) => 0,
        Err(Stop(why)) => {
            eprintln!("stayup gc: {why}");
            1
        }
    }
}

fn gc(config: &Path, keep: usize, running: Option<&str>) -> Result<(), Stop> {
    let site = Site::open(config)?;
    let live = read_config_bytes(config)?;
    let live_config = Config::parse(config, &live).map_err(|e| {
        Stop(format!(
            "{e}\nthe live configuration does not parse, so what it references is unknown; nothing deleted"
        ))
    })?;
    let entries = history::list(&site.dir)?;
    let first_kept = entries.len().saturating_sub(keep);
    let newest_live = entries.iter().rposition(|e| same_content(e, &live));
    let newest_running = running.and_then(|hash| {
        entries.iter().rposition(|e| {
            e.read()
                .is_ok_and(|b| hex::encode(material::sha256(&b)) == hash)
        })
    });
    let mut kept: Vec<&Entry> = Vec::new();
    let mut dropped: Vec<&Entry> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if i >= first_kept || Some(i) == newest_live || Some(i) == newest_running {
            kept.push(e);
        } else {
            dropped.push(e);
        }
    }
    let mut referenced: HashSet<PathBuf> = HashSet::new();
    let mut add = |c: &Config| {
        for f in c.referenced_files() {
            if let Ok(real) = std::fs::canonicalize(&f) {
                referenced.insert(real);
            }
            referenced.insert(f);
        }
    };
    add(&live_config);
    for e in &kept {
        let c = e
            .read()
            .and_then(|b| history::parse_as(config, &b))
            .map_err(|why| {
                Stop(format!(
                    "history entry {}: {why}; what it references is unknown, nothing deleted",
                    e.id
                ))
            })?;
        add(&c);
    }
    let store_dir = site.store_dir();
    let real_store = std::fs::canonicalize(&store_dir).ok();
    let mut deleted = 0usize;
    let mut kept_files = 0usize;
    if let Ok(rd) = std::fs::read_dir(&store_dir) {
        for f in rd.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if !store::is_store_name(&name) {
                continue;
            }
            let path = store_dir.join(&name);
            let real = real_store.as_ref().map(|d| d.join(&name));
            if referenced.contains(&path) || real.is_some_and(|r| referenced.contains(&r)) {
                kept_files += 1;
                continue;
            }
            std::fs::remove_file(&path)
                .map_err(|e| Stop(format!("{}: cannot delete: {e}", path.display())))?;
            println!("deleted {}", relative(&site, &path));
            deleted += 1;
        }
        store::sync_dir(&store_dir)?;
    }
    for e in &dropped {
        std::fs::remove_file(&e.path)
            .map_err(|err| Stop(format!("{}: cannot delete: {err}", e.path.display())))?;
        println!("deleted {}", relative(&site, &e.path));
    }
    if !dropped.is_empty() {
        store::sync_dir(&history::dir(&site.dir))?;
    }
    // Leftovers of a publish that was killed half-way: never referenced.
    let config_name = site
        .config
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut stale = store::remove_stale_temps(&site.dir, Some(&config_name));
    stale.extend(store::remove_stale_temps(&store_dir, None));
    stale.extend(store::remove_stale_temps(&history::dir(&site.dir), None));
    stale.extend(store::remove_stale_dirs(&site.dir, DRY_RUN_PREFIX));
    for p in &stale {
        println!(
            "deleted {} (left by an interrupted publish)",
            relative(&site, p)
        );
    }
    println!(
        "gc: kept {} history entr{} and {kept_files} referenced store file{}; deleted {} entr{} and {deleted} store file{}",
        kept.len(),
        if kept.len() == 1 { "y" } else { "ies" },
        if kept_files == 1 { "" } else { "s" },
        dropped.len(),
        if dropped.len() == 1 { "y" } else { "ies" },
        if deleted == 1 { "" } else { "s" },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn verdicts() {
        let committed = json!({"result": "committed", "generation": 3, "previous": 2});
        assert_eq!(
            verdict(&committed, Some(2)),
            ("daemon: committed generation 3 (was 2)".to_string(), 0)
        );
        let watched = json!({"result": "unchanged", "generation": 3, "previous": 3});
        let (text, code) = verdict(&watched, Some(2));
        assert_eq!(code, 0);
        assert!(
            text.contains("already serving it") && text.contains("watcher"),
            "{text}"
        );
        let (text, code) = verdict(&watched, Some(3));
        assert_eq!(code, 0);
        assert!(text.contains("unchanged"), "{text}");
        let rejected = json!({"result": "rejected", "generation": 2, "reason": "bind: in use"});
        let (text, code) = verdict(&rejected, Some(2));
        assert_eq!(code, 1);
        assert!(text.contains("reason: bind: in use"), "{text}");
        assert_eq!(verdict(&json!({"error": "x"}), None).1, 2);
    }

    #[test]
    fn put_back_restores_only_the_file_it_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("stayup.yaml");
        std::fs::write(&config, "published\n").expect("write");
        put_back(&config, b"previous\n", b"published\n")
            .unwrap_or_else(|Stop(why)| panic!("{why}"));
        assert_eq!(std::fs::read(&config).expect("read"), b"previous\n");

        // Changed again since (another publish won the folder lock first):
        // left alone, and said so.
        std::fs::write(&config, "someone else's\n").expect("write");
        let Err(Stop(why)) = put_back(&config, b"previous\n", b"published\n") else {
            panic!("put back over a file this run did not write");
        };
        assert!(why.contains("has changed since"), "{why}");
        assert_eq!(std::fs::read(&config).expect("read"), b"someone else's\n");
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("stayup.yaml")]);
    }
}
