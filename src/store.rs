//! Durable writes and the content-addressed store beside the configuration.
//!
//! Every file `stayup publish` creates is written under a temporary name in
//! its final folder, fsynced, renamed into place, and then the folder is
//! fsynced: after a crash at any moment a name either does not exist or
//! names complete bytes. Store files are named by the SHA-256 of their
//! content, so they are immutable: a name is never reused for other bytes,
//! which is what lets a running generation keep referring to them.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::material::{self, MAX_MATERIAL_BYTES};

/// The store's folder name, beside the top-level file.
pub const STORE_DIR: &str = "store";

/// What a stored file is; decides its extension and its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A certificate chain or CA bundle: `.pem`, mode 0644.
    Public,
    /// A private key: `.key`, mode 0600.
    Key,
}

impl Kind {
    fn extension(self) -> &'static str {
        match self {
            Kind::Public => "pem",
            Kind::Key => "key",
        }
    }

    pub fn mode(self) -> u32 {
        match self {
            Kind::Public => 0o644,
            Kind::Key => 0o600,
        }
    }
}

/// An I/O failure, with the file it happened to and what was being done.
#[derive(Debug)]
pub struct StoreError {
    pub path: PathBuf,
    pub action: &'static str,
    pub reason: String,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: cannot {}: {}",
            self.path.display(),
            self.action,
            self.reason
        )
    }
}

impl std::error::Error for StoreError {}

pub fn err(path: &Path, action: &'static str, reason: impl ToString) -> StoreError {
    StoreError {
        path: path.to_path_buf(),
        action,
        reason: reason.to_string(),
    }
}

/// Who should own the files publish creates: the owner of the top-level
/// file. A deploy hook runs as root while the daemon often runs as its own
/// user, which must still be able to read a 0600 key.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub fn of(path: &Path) -> Option<Owner> {
        std::fs::metadata(path).ok().map(|m| Owner {
            uid: m.uid(),
            gid: m.gid(),
        })
    }

    /// Gives `path` to this owner when it is not already theirs. Only root
    /// can do that; anyone else already is the owner in the normal set-up,
    /// and otherwise the daemon's own check will name the unreadable file.
    fn apply(self, path: &Path) {
        let Ok(m) = std::fs::metadata(path) else {
            return;
        };
        if (m.uid(), m.gid()) != (self.uid, self.gid) {
            let _ = std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid));
        }
    }
}

/// fsyncs a folder, so a rename or creation in it survives a power cut.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, "fsync the folder", e))
}

/// A temporary name beside `path`, unique to this process.
pub fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `bytes` to a temporary name beside `path` with `mode` and fsyncs
/// it. Returns the temporary path; the caller renames it.
pub fn write_temp(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<PathBuf, StoreError> {
    let tmp = temp_name(path);
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have removed bits; set exactly what was asked.
        f.set_permissions(Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(&tmp, "write", e));
    }
    if let Some(o) = owner {
        o.apply(&tmp);
    }
    Ok(tmp)
}

/// Removes temporary files left in `dir` by a publish that was killed:
/// `.<name>.<pid>.tmp` whose process is gone and, when `prefix` is given,
/// whose `<name>` starts with it. Returns the paths removed.
pub fn remove_stale_temps(dir: &Path, prefix: Option<&str>) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return removed;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
            continue;
        };
        let Some((stem, pid)) = inner.rsplit_once('.') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if prefix.is_some_and(|p| !stem.starts_with(p))
            || pid == std::process::id()
            || Path::new(&format!("/proc/{pid}")).exists()
            || !e.file_type().is_ok_and(|t| t.is_file())
        {
            continue;
        }
        if std::fs::remove_file(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

/// Removes `<prefix><pid>` folders in `dir` whose process is gone (the
/// private folder of a dry run that was killed). Returns the paths removed.
pub fn remove_stale_dirs(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return removed;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(Ok(pid)) = name.strip_prefix(prefix).map(str::parse::<u32>) else {
            continue;
        };
        if pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
            && e.file_type().is_ok_and(|t| t.is_dir())
            && std::fs::remove_dir_all(e.path()).is_ok()
        {
            removed.push(e.path());
        }
    }
    removed
}

/// Renames `from` over `to`; on failure removes `from`.
pub fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::rename(from, to).map_err(|e| {
        let _ = std::fs::remove_file(from);
        err(to, "rename into place", e)
    })
}

/// Writes `path` completely or not at all (temporary name, fsync, rename,
/// folder fsync).
pub fn write_durable(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<(), StoreError> {
    let tmp = write_temp(path, bytes, mode, owner)?;
    rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Creates `dir` if it is missing (mode 0755). Returns whether it was created.
pub fn ensure_dir(dir: &Path, owner: Option<Owner>) -> Result<bool, StoreError> {
    match std::fs::create_dir(dir) {
        Ok(()) => {
            if let Some(o) = owner {
                o.apply(dir);
            }
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if dir.is_dir() {
                Ok(false)
            } else {
                Err(err(dir, "use as a folder", "it exists and is not a folder"))
            }
        }
        Err(e) => Err(err(dir, "create the folder", e)),
    }
}

/// The store file name for `bytes` of `kind`.
pub fn file_name(bytes: &[u8], kind: Kind) -> String {
    format!(
        "{}.{}",
        hex::encode(material::sha256(bytes)),
        kind.extension()
    )
}

/// Whether `name` looks like a store file (`<64 hex>.pem` or `.key`).
pub fn is_store_name(name: &str) -> bool {
    match name.split_once('.') {
        Some((hash, "pem" | "key")) => {
            hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
        }
        _ => false,
    }
}

/// Puts `bytes` into the store folder `dir`. Returns the file's path and
/// whether this call created it (an existing, intact copy is reused; a
/// damaged one is replaced).
pub fn put(
    dir: &Path,
    bytes: &[u8],
    kind: Kind,
    owner: Option<Owner>,
) -> Result<(PathBuf, bool), StoreError> {
    let path = dir.join(file_name(bytes, kind));
    if let Ok(existing) = material::read_capped(&path, MAX_MATERIAL_BYTES)
        && existing == bytes
    {
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        if mode != kind.mode() {
            std::fs::set_permissions(&path, Permissions::from_mode(kind.mode()))
                .map_err(|e| err(&path, "set the mode of", e))?;
        }
        return Ok((path, false));
    }
    let tmp = write_temp(&path, bytes, kind.mode(), owner)?;
    rename(&tmp, &path)?;
    Ok((path, true))
}

/// Test-only fault injection: `STAYUP_PUBLISH_FAIL_AFTER=<step>` makes
/// publish exit right after `step`, `STAYUP_PUBLISH_PAUSE_AFTER=<step>`
/// makes it announce the step on stderr and wait to be killed. Both let the
/// crash-safety tests stop publish between any two of its steps.
pub fn checkpoint(step: &str) {
    if std::env::var("STAYUP_PUBLISH_FAIL_AFTER").as_deref() == Ok(step) {
        eprintln!("stayup publish: injected failure after step {step}");
        std::process::exit(3);
    }
    if std::env::var("STAYUP_PUBLISH_PAUSE_AFTER").as_deref() == Ok(step) {
        eprintln!("stayup publish: paused after step {step}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names() {
        let name = file_name(b"x", Kind::Key);
        assert!(name.ends_with(".key"));
        assert!(is_store_name(&name));
        assert!(!is_store_name("abc.pem"));
        assert!(!is_store_name(&name.replace(".key", ".tmp")));
    }
}
