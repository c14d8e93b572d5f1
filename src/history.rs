//! `history/`: a copy of every top-level file publish activated.
//!
//! Entries are named `<UTC time>-<first 12 hex of SHA-256>.yaml`, so a plain
//! `ls` sorts them by time and shows which content each is; the name without
//! `.yaml` is the ID `stayup rollback --to` takes. Entries are written
//! durably before the top-level file is replaced, so a crash can leave at
//! most one entry that never became live (and `stayup history` shows which
//! entry is live by content, not by position).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config::{Config, read_config_bytes};
use crate::material;
use crate::store::{self, Owner, StoreError};

/// The history folder's name, beside the top-level file.
pub const HISTORY_DIR: &str = "history";

/// One recorded top-level file.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The file name without `.yaml`.
    pub id: String,
    pub path: PathBuf,
}

impl Entry {
    /// The time part of the ID, as written.
    pub fn time(&self) -> String {
        let t = self.id.split('-').next().unwrap_or("");
        // 20261124T192130.123456Z -> 2026-11-24 19:21:30 UTC
        if t.len() >= 15 && t.is_char_boundary(15) {
            format!(
                "{}-{}-{} {}:{}:{} UTC",
                &t[0..4],
                &t[4..6],
                &t[6..8],
                &t[9..11],
                &t[11..13],
                &t[13..15]
            )
        } else {
            t.to_string()
        }
    }

    /// The short hash part of the ID.
    pub fn short_hash(&self) -> &str {
        self.id.rsplit('-').next().unwrap_or("")
    }

    pub fn read(&self) -> Result<Vec<u8>, String> {
        read_config_bytes(&self.path).map_err(|e| e.to_string())
    }
}

pub fn dir(config_dir: &Path) -> PathBuf {
    config_dir.join(HISTORY_DIR)
}

fn is_entry_name(name: &str) -> Option<&str> {
    let id = name.strip_suffix(".yaml")?;
    let (time, hash) = id.rsplit_once('-')?;
    (hash.len() == 12
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
        && time.len() == 23
        && time.starts_with(|c: char| c.is_ascii_digit()))
    .then_some(id)
}

/// Every entry, oldest first. A missing folder is an empty history.
pub fn list(config_dir: &Path) -> Result<Vec<Entry>, String> {
    let dir = dir(config_dir);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: cannot list: {e}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(id) = is_entry_name(&name) {
            out.push(Entry {
                id: id.to_string(),
                path: e.path(),
            });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn timestamp(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let f = time::macros::format_description!(
        "[year][month][day]T[hour][minute][second].[subsecond digits:6]Z"
    );
    t.format(&f)
        .unwrap_or_else(|_| "00000000T000000.000000Z".to_string())
}

/// Records `bytes` as a new entry, durably. Entries are never overwritten:
/// two records in the same microsecond with the same content are the same
/// entry.
pub fn record(config_dir: &Path, bytes: &[u8], owner: Option<Owner>) -> Result<Entry, StoreError> {
    let dir = dir(config_dir);
    store::ensure_dir(&dir, owner)?;
    let hash = hex::encode(material::sha256(bytes));
    let id = format!("{}-{}", timestamp(SystemTime::now()), &hash[..12]);
    let path = dir.join(format!("{id}.yaml"));
    store::write_durable(&path, bytes, 0o644, owner)?;
    Ok(Entry { id, path })
}

/// Finds the entry `want` names: a whole ID, a unique prefix of one, or a
/// unique prefix (at least 4 characters) of an entry's hash.
pub fn resolve<'a>(entries: &'a [Entry], want: &str) -> Result<&'a Entry, String> {
    let want = want.trim().trim_end_matches(".yaml");
    if let Some(e) = entries.iter().find(|e| e.id == want) {
        return Ok(e);
    }
    let matches =
        |e: &Entry| e.id.starts_with(want) || (want.len() >= 4 && e.short_hash().starts_with(want));
    let mut hashes: Vec<&str> = entries
        .iter()
        .filter(|e| matches(e))
        .map(Entry::short_hash)
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    // The same content recorded several times (a rollback) is one choice:
    // the newest record of it.
    match hashes.len() {
        0 => Err(format!(
            "no history entry matches {want:?} (see `stayup history`)"
        )),
        1 => entries
            .iter()
            .rev()
            .find(|e| matches(e))
            .ok_or_else(|| format!("no history entry matches {want:?}")),
        _ => Err(format!(
            "{want:?} matches several history entries: {}",
            entries
                .iter()
                .filter(|e| matches(e))
                .map(|e| e.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// What changed from `old` to `new`, in a few words.
pub fn describe(old: &Config, new: &Config, base: &Path) -> String {
    let short =
        |p: &Path| -> String { abbreviate(&p.strip_prefix(base).unwrap_or(p).to_string_lossy()) };
    let mut parts = Vec::new();
    for l in &new.listeners {
        let Some(o) = old.listeners.iter().find(|o| o.name == l.name) else {
            parts.push(format!("listener {} added", l.name));
            continue;
        };
        let n = l.tls.certificates.len().max(o.tls.certificates.len());
        for i in 0..n {
            match (o.tls.certificates.get(i), l.tls.certificates.get(i)) {
                (Some(a), Some(b)) => match (a.cert != b.cert, a.key != b.key) {
                    (true, key) => parts.push(format!(
                        "{} certificate {}: {} -> {}{}",
                        l.name,
                        i + 1,
                        short(&a.cert),
                        short(&b.cert),
                        if key { " (and its key)" } else { "" }
                    )),
                    (false, true) => parts.push(format!(
                        "{} key {}: {} -> {}",
                        l.name,
                        i + 1,
                        short(&a.key),
                        short(&b.key)
                    )),
                    (false, false) => {}
                },
                (None, Some(_)) => parts.push(format!("{} certificate {} added", l.name, i + 1)),
                (Some(_), None) => parts.push(format!("{} certificate {} removed", l.name, i + 1)),
                (None, None) => {}
            }
        }
        if o.tls.client_ca != l.tls.client_ca {
            parts.push(format!("{} client_ca changed", l.name));
        }
        if (&o.bind, &o.backend) != (&l.bind, &l.backend) {
            parts.push(format!("{} address changed", l.name));
        }
    }
    for o in &old.listeners {
        if !new.listeners.iter().any(|l| l.name == o.name) {
            parts.push(format!("listener {} removed", o.name));
        }
    }
    if parts.is_empty() {
        parts.push("settings changed".to_string());
    }
    parts.join("; ")
}

/// `store/<64 hex>.pem` shortened to `store/<12 hex>….pem` for display.
pub fn abbreviate(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    if store::is_store_name(name) {
        let (hash, ext) = name.split_at(64);
        format!("{}{}…{ext}", &path[..path.len() - name.len()], &hash[..12])
    } else {
        path.to_string()
    }
}

/// Parses a recorded entry as if it were the top-level file (relative
/// paths resolve against the configuration's folder, as they would once
/// the entry is re-activated).
pub fn parse_as(config_path: &Path, bytes: &[u8]) -> Result<Config, String> {
    Config::parse(config_path, bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str) -> Entry {
        Entry {
            id: id.to_string(),
            path: PathBuf::from(format!("{id}.yaml")),
        }
    }

    #[test]
    fn names_and_resolution() {
        let ts = timestamp(SystemTime::now());
        assert!(is_entry_name(&format!("{ts}-0123456789ab.yaml")).is_some());
        assert!(is_entry_name("notes.yaml").is_none());
        let list = vec![
            e("20261124T100000.000000Z-aaaa00000000"),
            e("20261124T110000.000000Z-bbbb00000000"),
            e("20261124T120000.000000Z-aaaa00000000"),
        ];
        assert_eq!(
            resolve(&list, "aaaa").unwrap().id,
            "20261124T120000.000000Z-aaaa00000000"
        );
        assert_eq!(
            resolve(&list, "20261124T11").unwrap().id,
            "20261124T110000.000000Z-bbbb00000000"
        );
        assert!(resolve(&list, "20261124").is_err());
        assert!(resolve(&list, "cccc").is_err());
        assert_eq!(
            e("20261124T110000.000000Z-bbbb00000000").time(),
            "2026-11-24 11:00:00 UTC"
        );
    }
}
