//! The server's session cache, which survives a binary upgrade.
//!
//! With session tickets on, the cache holds only the sessions of TLS 1.2
//! clients that do not take tickets and resume by session ID (Java 8's
//! default client, many embedded ones). rustls's own cache cannot be read
//! out, so after `stayup upgrade` each of those clients paid a full
//! handshake, all of them at once when they reconnect together. This one
//! is bounded the same way (the oldest sessions go first) and the old
//! process hands its sessions to the new one over the token-checked
//! hand-over connection, beside the ticket keys. Sessions hold secrets:
//! they are never written to disk, logged, or shown by `Debug`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use rustls::server::StoresServerSessions;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::tickets::Exported;

/// How many sessions the cache keeps (rustls's default is 256; a proxy in
/// front of many clients wants more).
pub const CAPACITY: usize = 16 * 1024;

/// The shared session cache of one process (see the module documentation).
pub struct SessionCache {
    entries: Mutex<Entries>,
    capacity: usize,
}

#[derive(Default)]
struct Entries {
    values: HashMap<Vec<u8>, Zeroizing<Vec<u8>>>,
    /// Keys, oldest first; may name keys already taken out.
    order: VecDeque<Vec<u8>>,
}

/// Why sessions could not be taken over.
#[derive(Debug, thiserror::Error)]
#[error("the TLS sessions handed over are malformed: {0}")]
pub struct SessionsMalformed(&'static str);

impl fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCache")
            .field("sessions", &self.lock().values.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl SessionCache {
    pub fn new(capacity: usize) -> SessionCache {
        SessionCache {
            entries: Mutex::new(Entries::default()),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The newest sessions, as many as fit in about `budget` bytes of text
    /// (a session with a client's certificate chain is kilobytes), oldest
    /// first: text for the process that takes over and nowhere else.
    pub fn export(&self, budget: usize) -> Exported {
        let entries = self.lock();
        let mut used = 0;
        let mut list: Vec<Value> = Vec::new();
        for key in entries.order.iter().rev() {
            let Some(value) = entries.values.get(key) else {
                continue;
            };
            // Two hex digits a byte, and the quotes, brackets and commas.
            used += 2 * (key.len() + value.len()) + 8;
            if used > budget {
                break;
            }
            list.push(json!([hex::encode(key), hex::encode(value.as_slice())]));
        }
        list.reverse();
        Exported::new(Value::Array(list).to_string())
    }

    /// Takes over the sessions `export` gave in another process, after any
    /// this one already has. On error nothing changes.
    pub fn import(&self, text: &str) -> Result<usize, SessionsMalformed> {
        let v: Value = serde_json::from_str(text).map_err(|_| SessionsMalformed("not JSON"))?;
        let list = v.as_array().ok_or(SessionsMalformed("not a list"))?;
        let mut taken = Vec::with_capacity(list.len());
        for item in list {
            let pair = item
                .as_array()
                .filter(|p| p.len() == 2)
                .ok_or(SessionsMalformed("not a pair of key and value"))?;
            let decode = |x: &Value| -> Result<Vec<u8>, SessionsMalformed> {
                hex::decode(x.as_str().ok_or(SessionsMalformed("not text"))?)
                    .map_err(|_| SessionsMalformed("not hex"))
            };
            taken.push((decode(&pair[0])?, Zeroizing::new(decode(&pair[1])?)));
        }
        let count = taken.len();
        for (key, value) in taken {
            self.insert(key, value);
        }
        Ok(count)
    }

    fn insert(&self, key: Vec<u8>, value: Zeroizing<Vec<u8>>) {
        let mut entries = self.lock();
        if entries.values.insert(key.clone(), value).is_none() {
            entries.order.push_back(key);
        }
        while entries.values.len() > self.capacity {
            let Some(oldest) = entries.order.pop_front() else {
                break;
            };
            entries.values.remove(&oldest);
        }
        // Keys taken out stay in `order` until they come up; keep it from
        // growing without bound when sessions are taken as fast as made.
        if entries.order.len() > 2 * self.capacity.max(1) {
            let Entries { values, order } = &mut *entries;
            order.retain(|k| values.contains_key(k));
        }
    }
}

impl StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.insert(key, Zeroizing::new(value));
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().values.get(key).map(|v| v.to_vec())
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().values.remove(key).map(|v| v.to_vec())
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_sessions_go_first() {
        let cache = SessionCache::new(2);
        assert!(cache.put(b"a".to_vec(), b"1".to_vec()));
        assert!(cache.put(b"b".to_vec(), b"2".to_vec()));
        assert!(cache.put(b"c".to_vec(), b"3".to_vec()));
        assert_eq!(cache.get(b"a"), None);
        assert_eq!(cache.get(b"b").as_deref(), Some(&b"2"[..]));
        assert_eq!(cache.take(b"c").as_deref(), Some(&b"3"[..]));
        assert_eq!(cache.take(b"c"), None);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn taking_as_fast_as_putting_keeps_the_order_bounded() {
        let cache = SessionCache::new(4);
        for i in 0u32..1000 {
            cache.put(i.to_be_bytes().to_vec(), b"v".to_vec());
            assert!(cache.take(&i.to_be_bytes()).is_some());
        }
        assert!(cache.lock().order.len() <= 8);
        assert!(cache.is_empty());
    }

    #[test]
    fn exported_sessions_are_found_in_the_importer_in_order() {
        let old = SessionCache::new(3);
        old.put(b"gone".to_vec(), b"0".to_vec());
        old.take(b"gone");
        old.put(b"x".to_vec(), b"1".to_vec());
        old.put(b"y".to_vec(), b"2".to_vec());
        let new = SessionCache::new(3);
        new.put(b"own".to_vec(), b"3".to_vec());
        assert_eq!(new.import(old.export(1 << 20).as_str()).expect("import"), 2);
        assert_eq!(new.get(b"x").as_deref(), Some(&b"1"[..]));
        assert_eq!(new.get(b"y").as_deref(), Some(&b"2"[..]));
        assert_eq!(new.get(b"gone"), None);
        // Over capacity, the oldest goes: the new process's own session.
        new.put(b"z".to_vec(), b"4".to_vec());
        assert_eq!(new.get(b"own"), None);
        assert_eq!(new.len(), 3);
    }

    #[test]
    fn an_export_keeps_the_newest_sessions_within_its_budget() {
        let cache = SessionCache::new(100);
        for i in 0u8..10 {
            cache.put(vec![i], vec![i; 45]);
        }
        // 100 bytes of hex and 8 of punctuation each: three fit in 330.
        let text = cache.export(330);
        assert!(text.as_str().len() <= 330, "{}", text.as_str().len());
        let new = SessionCache::new(100);
        assert_eq!(new.import(text.as_str()).expect("import"), 3);
        assert!(new.get(&[6]).is_none() && new.get(&[7]).is_some() && new.get(&[9]).is_some());
        assert_eq!(cache.export(0).as_str(), "[]");
    }

    #[test]
    fn malformed_hand_overs_change_nothing() {
        let cache = SessionCache::new(4);
        cache.put(b"k".to_vec(), b"v".to_vec());
        for bad in [
            "",
            "{}",
            "[[\"6b\"]]",
            "[[\"6b\", 7]]",
            "[[\"6b\", \"zz\"]]",
            "[[\"01\", \"02\"], 5]",
        ] {
            assert!(cache.import(bad).is_err(), "{bad}");
        }
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn debug_shows_no_session() {
        let cache = SessionCache::new(4);
        cache.put(b"key".to_vec(), b"master secret".to_vec());
        let shown = format!("{cache:?}");
        assert!(
            !shown.contains("master") && !shown.contains("6d6173"),
            "{shown}"
        );
        assert!(shown.contains("sessions: 1"), "{shown}");
    }
}
