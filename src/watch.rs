//! The automatic trigger: notices when the top-level path starts to name new
//! content and asks the reloader, exactly as SIGHUP does.
//!
//! # What is watched, and why
//! The **parent folder** of the top-level file, non-recursively. A watch on
//! the file itself follows its inode, so it goes deaf after the first rename
//! or symlink swap, which is precisely how new configurations are published.
//! Of that folder's events only those that name the file, or an entry whose
//! name starts with `..` (Kubernetes' `..data`, `..data_tmp` and timestamped
//! folders), count; a queue overflow (`Rescan`) counts as "anything may have
//! changed". Opens and read-only closes never count: the reloader's own reads
//! would otherwise wake the watch again, for ever. If the top-level path is
//! a symlink into some other folder (`/etc/stayup/stayup.yaml ->
//! /srv/deploy/current.yaml`), the folder of every symlink it leads through
//! and the folder of the file it resolves to are watched too, for those
//! entries only, so a rename or a re-pointed symlink there is seen as soon as
//! one in the first folder is. The chain is followed again after every
//! event that counted. (Kubernetes' `..` folders inside the watched folder
//! are not added: every change there comes with a swap of `..data`.)
//!
//! # Debounce
//! A reload is requested once the folder has been quiet for `reload.debounce`
//! after the last event that counted: a trailing-edge debounce kept here, on
//! raw `notify` events, rather than notify-debouncer-full's. That debouncer
//! delays *each* event by the timeout and then releases it on its next tick:
//! its latency is the timeout plus up to one tick (a quarter of the timeout
//! by default, 50 ms at 200 ms), which misses the target of debounce + 20 ms
//! unless its thread wakes every few milliseconds for the life of the
//! process, and in a storm (a rename every 10 ms for a second) it releases
//! events on every tick, which would be a reload per tick. Its other work
//! (stitching rename pairs, a file-id cache) is of no use here, because every
//! reload re-resolves the path from scratch. A quiet period measured with one
//! tokio timer costs nothing while idle, fires exactly `debounce` after the
//! last event, and coalesces a storm of any length into one request.
//!
//! # Poll backstop and immutability check
//! Every `reload.poll` (0: never) the top-level path is re-resolved and
//! re-hashed; new content, or a different file behind the path, is reloaded
//! with [`Trigger::Poll`]. This catches filesystems without inotify and any
//! missed event. When the folder cannot be watched (inotify limits, a
//! filesystem that refuses watches, the folder gone), polling takes over at
//! least every [`UNWATCHED_POLL`], and the watch is set up again as soon as
//! it can be.
//!
//! On the same timer, every referenced file is hashed and compared with what
//! the live generation loaded. Referenced files are immutable by contract, so
//! a difference does **not** reload (a certificate flipped before its key
//! would be a half-updated pair); it is reported, once per file and
//! generation, and recorded with [`ReloadHandle::set_modified_in_place`].

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::format_duration;
use crate::generation::Trigger;
use crate::material::{self, FileDigest};
use crate::reloader::{ReloadHandle, ReloadResult};

/// How often the top-level file is polled, and the watch retried, while the
/// folder cannot be watched: polling is then the only trigger, so it must be
/// much faster than a backstop.
pub const UNWATCHED_POLL: Duration = Duration::from_secs(1);

/// Starts the watcher for `handle`'s configuration; it runs until `stop` is
/// cancelled. The watch is set up before this returns, so a change made
/// after the daemon reports ready is never missed. It follows the
/// `reload.*` settings of every committed generation.
pub fn start(handle: &ReloadHandle, stop: CancellationToken) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watch = Watch::new(handle.clone(), tx);
    if watch.settings.watch {
        watch.arm();
        watch.announce();
    }
    watch.retick();
    tokio::spawn(watch.run(rx, stop));
}

/// The `reload.*` settings the watcher follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settings {
    watch: bool,
    debounce: Duration,
    poll: Duration,
}

impl Settings {
    fn of(handle: &ReloadHandle) -> Settings {
        let r = &handle.current().config.reload;
        Settings {
            watch: r.watch,
            debounce: r.debounce,
            poll: r.poll,
        }
    }
}

/// The top-level path split the way the watch needs it.
#[derive(Debug, Clone)]
struct Target {
    path: PathBuf,
    dir: PathBuf,
    name: OsString,
}

impl Target {
    fn new(config_path: &Path) -> Target {
        let path = std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf());
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("/"),
        };
        let name = path.file_name().map(OsString::from).unwrap_or_default();
        Target { path, dir, name }
    }

    /// Whether an entry of the watched folder can change what the path names.
    fn concerns(&self, entry: &Path) -> bool {
        if entry.parent() != Some(self.dir.as_path()) {
            return false;
        }
        entry
            .file_name()
            .is_some_and(|n| n == self.name || n.as_encoded_bytes().starts_with(b".."))
    }
}

/// Whether an event can mean new content. Opens and read-only closes are
/// what our own reads cause.
fn counts(ev: &Event) -> bool {
    match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Other => ev.need_rescan(),
        _ => true,
    }
}

/// Device and inode: which folder or file a path leads to right now.
type FileId = (u64, u64);

fn file_id(path: &Path) -> std::io::Result<FileId> {
    std::fs::metadata(path).map(|m| (m.dev(), m.ino()))
}

/// The entries, as (folder, name), that the path leads through after its
/// own: each symlink it is or points to in turn, each symlinked folder on
/// the way to those, and the file it resolves to in the end. A rename or a
/// re-pointed symlink at any of them changes what the path names.
fn chain(path: &Path) -> Vec<(PathBuf, OsString)> {
    /// Linux's own limit on symlinks followed in one lookup.
    const MAX_HOPS: usize = 40;
    fn add(out: &mut Vec<(PathBuf, OsString)>, p: &Path) {
        if let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
            let entry = (dir.to_path_buf(), name.to_os_string());
            if !out.contains(&entry) {
                out.push(entry);
            }
        }
    }
    let mut out = Vec::new();
    let mut at = path.to_path_buf();
    for _ in 0..MAX_HOPS {
        let Ok(to) = std::fs::read_link(&at) else {
            break;
        };
        // An absolute target replaces the folder; a relative one is taken
        // from the symlink's folder.
        at = at.parent().unwrap_or(Path::new("/")).join(to);
        add(&mut out, &at);
        for folder in at.ancestors().skip(1) {
            if std::fs::symlink_metadata(folder).is_ok_and(|m| m.file_type().is_symlink()) {
                add(&mut out, folder);
            }
        }
    }
    if let Ok(real) = std::fs::canonicalize(path) {
        add(&mut out, &real);
    }
    out
}

/// What the top-level path names at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Nothing (or a dangling symlink).
    Absent,
    /// Something that cannot be read; the reload will say why.
    Unreadable(String),
    /// This file, with this content.
    File { id: FileId, sha256: [u8; 32] },
}

fn look(path: &Path) -> Seen {
    let id = match file_id(path) {
        Ok(id) => id,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Seen::Absent,
        Err(e) => return Seen::Unreadable(e.to_string()),
    };
    match crate::config::read_config_bytes(path) {
        Ok(bytes) => Seen::File {
            id,
            sha256: material::sha256(&bytes),
        },
        Err(e) => Seen::Unreadable(e.to_string()),
    }
}

async fn look_async(path: &Path) -> Seen {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || look(&path))
        .await
        .unwrap_or_else(|e| Seen::Unreadable(e.to_string()))
}

/// The referenced files whose content no longer matches what was loaded,
/// with why (changed, or no longer readable).
fn drifted(files: &[FileDigest]) -> Vec<(PathBuf, String)> {
    files
        .iter()
        .filter_map(|f| {
            match material::read_capped(&f.path, material::MAX_MATERIAL_BYTES) {
                Ok(bytes) if material::sha256(&bytes) == f.sha256 => None,
                Ok(_) => Some("its content changed"),
                Err(_) => Some("it can no longer be read"),
            }
            .map(|why| (f.path.clone(), why.to_string()))
        })
        .collect()
}

/// A live watch on the folder. Dropping it ends the watch.
struct Armed {
    watcher: RecommendedWatcher,
    /// The other folders the path leads through, watched as well, with the
    /// folder each path led to when its watch was set up.
    others: Vec<(PathBuf, FileId)>,
    /// The folder the watch is on: if the path later leads elsewhere, the
    /// folder was replaced and the watch must move.
    dir: FileId,
}

type Events = mpsc::UnboundedSender<notify::Result<Event>>;

struct Watch {
    handle: ReloadHandle,
    target: Target,
    settings: Settings,
    tx: Events,
    armed: Option<Armed>,
    /// Why the watch could not be set up, once reported.
    unwatched: Option<String>,
    ticker: Option<Interval>,
    /// When the current quiet period ends.
    pending: Option<Instant>,
    /// What the path named when last looked at.
    seen: Option<Seen>,
    /// The file is absent and this was reported.
    absent: bool,
    /// A request is out and its outcome has not been seen: referenced files
    /// may legitimately differ from the live generation until it commits.
    awaiting: bool,
    /// The generation whose referenced files were found changed, and which.
    drift: (u64, Vec<PathBuf>),
    /// The entries the path leads through after its own (see `chain`).
    hops: Vec<(PathBuf, OsString)>,
}

impl Watch {
    fn new(handle: ReloadHandle, tx: Events) -> Watch {
        let target = Target::new(&handle.config_path);
        let settings = Settings::of(&handle);
        Watch {
            handle,
            target,
            settings,
            tx,
            armed: None,
            unwatched: None,
            ticker: None,
            pending: None,
            seen: None,
            absent: false,
            awaiting: false,
            drift: (0, Vec::new()),
            hops: Vec::new(),
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<notify::Result<Event>>,
        stop: CancellationToken,
    ) {
        let mut outcomes = self.handle.subscribe();
        if self.settings.watch {
            self.baseline().await;
        }
        loop {
            let deadline = self.pending;
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(ev) = rx.recv() => self.on_event(ev),
                _ = sleep_until(deadline), if deadline.is_some() => self.fire().await,
                _ = tick(&mut self.ticker) => self.on_tick().await,
                o = outcomes.recv() => match o {
                    Ok(o) => self.on_outcome(o.result).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.on_outcome(ReloadResult::Committed).await,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    }

    /// Notes what the path names now; if it already differs from what the
    /// live generation loaded (it changed while the daemon started), reloads.
    async fn baseline(&mut self) {
        let seen = look_async(&self.target.path).await;
        let live = self.handle.current().identity.config_sha256;
        let differs = matches!(&seen, Seen::File { sha256, .. } if *sha256 != live);
        self.seen = Some(seen);
        if differs {
            self.request(Trigger::Watch);
        }
    }

    /// Sets up the watch on the folder, or reports why it cannot be and
    /// falls back to polling.
    fn arm(&mut self) {
        match arm(&self.target.dir, self.tx.clone()) {
            Ok(armed) => {
                self.armed = Some(armed);
                self.follow();
                if self.unwatched.take().is_some() {
                    tracing::info!(
                        target: "stayup::watch",
                        folder = %self.target.dir.display(),
                        "watching the configuration folder again"
                    );
                    // Whatever happened while unwatched is picked up now.
                    self.schedule();
                }
            }
            Err(reason) => {
                if self.unwatched.as_deref() != Some(&reason) {
                    tracing::warn!(
                        target: "stayup::watch",
                        folder = %self.target.dir.display(),
                        "cannot watch {} for changes ({reason}); falling back to polling {} every {} until the watch can be set up",
                        self.target.dir.display(),
                        self.target.path.display(),
                        format_duration(self.poll_period().unwrap_or(UNWATCHED_POLL)),
                    );
                }
                self.unwatched = Some(reason);
            }
        }
        self.retick();
    }

    /// Watches the other folders the path leads through now (and no longer
    /// the ones it has stopped leading through).
    fn follow(&mut self) {
        let Some(armed) = &mut self.armed else {
            return;
        };
        let dir = &self.target.dir;
        // Kubernetes' `..` folders inside the watched folder change only
        // with a swap of `..data`, which the watched folder sees.
        let kubelets = |d: &Path| {
            d.strip_prefix(dir).is_ok_and(|rest| {
                rest.components()
                    .next()
                    .is_some_and(|c| c.as_os_str().as_encoded_bytes().starts_with(b".."))
            })
        };
        let hops = chain(&self.target.path);
        // One watch per folder: inotify gives a folder reached by two paths
        // one watch, and notify would then report it under the wrong one.
        let mut wanted: Vec<(PathBuf, FileId)> = Vec::new();
        for (d, _) in hops.iter().filter(|(d, _)| d != dir && !kubelets(d)) {
            if let Ok(id) = file_id(d)
                && id != armed.dir
                && !wanted.iter().any(|(_, seen)| *seen == id)
            {
                wanted.push((d.clone(), id));
            }
        }
        // A path that leads to another folder than when it was watched (a
        // re-pointed symlinked folder) is watched again.
        for gone in armed.others.iter().filter(|w| !wanted.contains(w)) {
            // It may be gone already, with its watch.
            let _ = armed.watcher.unwatch(&gone.0);
        }
        let mut others = Vec::new();
        for w in wanted {
            if armed.others.contains(&w) {
                others.push(w);
                continue;
            }
            match armed.watcher.watch(&w.0, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::debug!(target: "stayup::watch", folder = %w.0.display(), "watching a folder the configuration path leads through");
                    others.push(w);
                }
                // The poll covers what this folder would have shown.
                Err(e) => {
                    tracing::debug!(target: "stayup::watch", folder = %w.0.display(), "cannot watch a folder the configuration path leads through: {e}");
                }
            }
        }
        armed.others = others;
        self.hops = hops;
    }

    fn disarm(&mut self) {
        self.armed = None;
        self.retick();
    }

    fn announce(&self) {
        let s = self.settings;
        if self.armed.is_some() {
            tracing::info!(
                target: "stayup::watch",
                folder = %self.target.dir.display(),
                debounce = %format_duration(s.debounce),
                poll = %format_duration(s.poll),
                "watching {} for changes",
                self.target.path.display()
            );
        }
    }

    /// How often to poll, if at all.
    fn poll_period(&self) -> Option<Duration> {
        if !self.settings.watch {
            return None;
        }
        let poll = self.settings.poll;
        match (&self.armed, poll.is_zero()) {
            (Some(_), true) => None,
            (Some(_), false) => Some(poll),
            (None, true) => Some(UNWATCHED_POLL),
            (None, false) => Some(poll.min(UNWATCHED_POLL)),
        }
    }

    /// Makes the poll timer match the settings and the watch state.
    fn retick(&mut self) {
        let want = self.poll_period();
        if self.ticker.as_ref().map(Interval::period) == want {
            return;
        }
        self.ticker = want.map(|p| {
            let mut t = tokio::time::interval_at(Instant::now() + p, p);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
    }

    /// Starts (or restarts) the quiet period.
    fn schedule(&mut self) {
        self.pending = Some(Instant::now() + self.settings.debounce);
    }

    fn request(&mut self, trigger: Trigger) {
        tracing::debug!(target: "stayup::watch", trigger = %trigger, "{} may name new content; reloading", self.target.path.display());
        self.awaiting = true;
        self.handle.request(trigger);
    }

    fn on_event(&mut self, ev: notify::Result<Event>) {
        if !self.settings.watch || self.armed.is_none() {
            return;
        }
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                // The watch may have lost events; look again after the
                // debounce, and move the watch if the folder went.
                tracing::warn!(target: "stayup::watch", folder = %self.target.dir.display(), "watch error: {e}");
                self.check_folder();
                self.schedule();
                return;
            }
        };
        if !counts(&ev) {
            return;
        }
        tracing::trace!(target: "stayup::watch", kind = ?ev.kind, paths = ?ev.paths, "event");
        if ev.need_rescan() {
            self.schedule();
            return;
        }
        let folder_event = ev.paths.iter().any(|p| p == &self.target.dir)
            && matches!(
                ev.kind,
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
            );
        if folder_event {
            self.check_folder();
        }
        let concerns = |p: &PathBuf| {
            self.target.concerns(p)
                || self
                    .hops
                    .iter()
                    .any(|(d, n)| p.parent() == Some(d.as_path()) && p.file_name() == Some(n))
        };
        if ev.paths.iter().any(concerns) {
            self.schedule();
        }
    }

    /// Drops the watch when the path no longer leads to the watched folder
    /// (removed, or moved away and maybe replaced).
    fn check_folder(&mut self) {
        let Some(armed) = &self.armed else { return };
        let now = file_id(&self.target.dir).ok();
        if now == Some(armed.dir) {
            return;
        }
        tracing::warn!(
            target: "stayup::watch",
            folder = %self.target.dir.display(),
            generation = self.handle.current().id,
            "the configuration folder {} was removed or replaced; the live generation keeps serving; watching for it to come back",
            self.target.dir.display()
        );
        self.unwatched = Some("the folder was removed or replaced".to_string());
        self.disarm();
    }

    /// The quiet period ended: reload unless the path names nothing.
    async fn fire(&mut self) {
        self.pending = None;
        self.follow();
        let seen = look_async(&self.target.path).await;
        self.seen = Some(seen.clone());
        if self.note_presence(&seen) {
            self.request(Trigger::Watch);
        }
    }

    /// Reports the path becoming absent or coming back; true if it names
    /// something to load.
    fn note_presence(&mut self, seen: &Seen) -> bool {
        if *seen == Seen::Absent {
            if !self.absent {
                tracing::warn!(
                    target: "stayup::watch",
                    file = %self.target.path.display(),
                    generation = self.handle.current().id,
                    "{} is absent; the live generation keeps serving; it is loaded as soon as it is back",
                    self.target.path.display()
                );
                self.absent = true;
            }
            return false;
        }
        if self.absent {
            tracing::info!(target: "stayup::watch", file = %self.target.path.display(), "{} is back", self.target.path.display());
            self.absent = false;
        }
        true
    }

    async fn on_tick(&mut self) {
        if !self.settings.watch {
            return;
        }
        match &self.armed {
            None => self.arm(),
            Some(_) => {
                self.check_folder();
                self.follow();
            }
        }
        if self.pending.is_some() {
            // The watch saw something; its reload will settle it.
            return;
        }
        let seen = look_async(&self.target.path).await;
        if self.seen.as_ref() != Some(&seen) {
            self.seen = Some(seen.clone());
            if self.note_presence(&seen) {
                self.request(Trigger::Poll);
            }
            return;
        }
        tracing::debug!(target: "stayup::watch", file = %self.target.path.display(), "poll: top-level file unchanged");
        if !self.awaiting {
            self.check_referenced().await;
        }
    }

    /// Compares every referenced file with what the live generation loaded,
    /// and reports the ones that changed under it.
    async fn check_referenced(&mut self) {
        let live = self.handle.current();
        let files = live.identity.files.clone();
        let found = tokio::task::spawn_blocking(move || drifted(&files))
            .await
            .unwrap_or_default();
        if self.drift.0 != live.id {
            self.drift = (live.id, Vec::new());
        }
        for (file, why) in &found {
            if !self.drift.1.contains(file) {
                tracing::warn!(
                    target: "stayup::watch",
                    file = %file.display(),
                    generation = live.id,
                    "{}: {why} since generation {} loaded it; referenced files are immutable, so this does not reload and generation {} keeps serving what it loaded; publish new files and a top-level file that names them, or run an explicit reload (`stayup reload`, SIGHUP)",
                    file.display(),
                    live.id,
                    live.id,
                );
            }
        }
        let paths: Vec<PathBuf> = found.into_iter().map(|(p, _)| p).collect();
        if paths != self.drift.1 {
            self.handle.set_modified_in_place(paths.clone());
            self.drift.1 = paths;
        }
    }

    async fn on_outcome(&mut self, result: ReloadResult) {
        self.awaiting = false;
        if result != ReloadResult::Committed {
            return;
        }
        // The new generation loaded its files afresh.
        if !self.drift.1.is_empty() {
            self.drift = (self.handle.current().id, Vec::new());
            self.handle.set_modified_in_place(Vec::new());
        }
        let new = Settings::of(&self.handle);
        if new == self.settings {
            return;
        }
        let old = std::mem::replace(&mut self.settings, new);
        if new.watch && !old.watch {
            self.arm();
            self.baseline().await;
        } else if !new.watch && old.watch {
            self.armed = None;
            self.unwatched = None;
            self.pending = None;
            tracing::info!(target: "stayup::watch", "automatic reload is off (reload.watch: false); SIGHUP and `stayup reload` still work");
        }
        self.retick();
        self.announce();
    }
}

fn arm(dir: &Path, tx: Events) -> Result<Armed, String> {
    let id = file_id(dir).map_err(|e| e.to_string())?;
    let mut watcher = notify::recommended_watcher(move |ev| {
        let _ = tx.send(ev);
    })
    .map_err(|e| e.to_string())?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| e.to_string())?;
    Ok(Armed {
        watcher,
        others: Vec::new(),
        dir: id,
    })
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_count() {
        let t = Target::new(Path::new("/etc/stayup/config.yaml"));
        assert!(t.concerns(Path::new("/etc/stayup/config.yaml")));
        assert!(t.concerns(Path::new("/etc/stayup/..data")));
        assert!(t.concerns(Path::new("/etc/stayup/..data_tmp")));
        assert!(t.concerns(Path::new("/etc/stayup/..2026_11_24_10_00_00.1")));
        assert!(!t.concerns(Path::new("/etc/stayup/.config.yaml.swp")));
        assert!(!t.concerns(Path::new("/etc/stayup/stayup.sock")));
        assert!(!t.concerns(Path::new("/etc/other/config.yaml")));
        assert!(!t.concerns(Path::new("/etc/stayup")));
    }

    #[test]
    fn reads_do_not_count() {
        let open = Event::new(EventKind::Access(AccessKind::Open(AccessMode::Any)));
        let closed = Event::new(EventKind::Access(AccessKind::Close(AccessMode::Read)));
        let written = Event::new(EventKind::Access(AccessKind::Close(AccessMode::Write)));
        let rescan = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(!counts(&open));
        assert!(!counts(&closed));
        assert!(counts(&written));
        assert!(counts(&rescan));
        assert!(!counts(&Event::new(EventKind::Other)));
    }
}
