//! Session resumption that survives reloads without crossing an
//! authentication boundary.
//!
//! Every generation shares one session cache and one ticket key set, so a
//! client that resumes after a certificate rotation skips the full
//! handshake. But rustls resumes any session it can find or decrypt without
//! looking at client certificates again. Shared naively, a session from a
//! listener without `client_ca` would let a client into a listener that
//! requires a certificate, and a session from before a reload that replaced
//! the client CA would let the old CA's clients in. So each listener's view
//! of the cache and of the tickets is scoped: a session only resumes on the
//! listener that made it, under the same client CA bundle (by content).

use std::sync::Arc;

use rustls::server::{ProducesTickets, StoresServerSessions};
use sha2::{Digest, Sha256};

/// Identifies the authentication context sessions may resume in.
pub type Scope = [u8; 32];

/// The scope of a listener named `listener` whose client CA bundle has the
/// SHA-256 `client_ca` (`None`: no client authentication).
pub fn scope(listener: &str, client_ca: Option<&[u8; 32]>) -> Scope {
    let mut h = Sha256::new();
    h.update(b"stayup session scope v1\0");
    h.update(listener.as_bytes());
    h.update([0]);
    match client_ca {
        Some(digest) => {
            h.update([1]);
            h.update(digest);
        }
        None => h.update([0]),
    }
    h.finalize().into()
}

/// The shared session cache, seen through one scope: keys are prefixed, so
/// a session id from another scope is simply not found.
#[derive(Debug)]
pub struct ScopedSessions {
    inner: Arc<dyn StoresServerSessions>,
    scope: Scope,
}

impl ScopedSessions {
    pub fn new(inner: Arc<dyn StoresServerSessions>, scope: Scope) -> ScopedSessions {
        ScopedSessions { inner, scope }
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.scope.len() + key.len());
        k.extend_from_slice(&self.scope);
        k.extend_from_slice(key);
        k
    }
}

impl StoresServerSessions for ScopedSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(self.key(&key), value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.get(&self.key(key))
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.take(&self.key(key))
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

/// The shared ticket keys, seen through one scope: the scope is sealed
/// inside every ticket, and a ticket from another scope does not decrypt.
#[derive(Debug)]
pub struct ScopedTickets {
    inner: Arc<dyn ProducesTickets>,
    scope: Scope,
}

impl ScopedTickets {
    pub fn new(inner: Arc<dyn ProducesTickets>, scope: Scope) -> ScopedTickets {
        ScopedTickets { inner, scope }
    }
}

impl ProducesTickets for ScopedTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut scoped = Vec::with_capacity(self.scope.len() + plain.len());
        scoped.extend_from_slice(&self.scope);
        scoped.extend_from_slice(plain);
        self.inner.encrypt(&scoped)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.inner.decrypt(cipher)?;
        plain.strip_prefix(&self.scope[..]).map(<[u8]>::to_vec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ServerSessionMemoryCache;

    #[test]
    fn tickets_only_open_in_their_scope() {
        let keys: Arc<dyn ProducesTickets> =
            Arc::new(crate::tickets::TicketKeys::new().expect("ticket keys"));
        let a = ScopedTickets::new(keys.clone(), scope("web", None));
        let a_again = ScopedTickets::new(keys.clone(), scope("web", None));
        let b = ScopedTickets::new(keys.clone(), scope("web", Some(&[7; 32])));
        let c = ScopedTickets::new(keys, scope("api", None));
        let ticket = a.encrypt(b"session").expect("encrypt");
        assert_eq!(a_again.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        assert_eq!(b.decrypt(&ticket), None);
        assert_eq!(c.decrypt(&ticket), None);
    }

    #[test]
    fn sessions_only_found_in_their_scope() {
        let cache = ServerSessionMemoryCache::new(16);
        let a = ScopedSessions::new(cache.clone(), scope("web", Some(&[1; 32])));
        let b = ScopedSessions::new(cache.clone(), scope("web", Some(&[2; 32])));
        assert!(a.put(b"id".to_vec(), b"value".to_vec()));
        assert_eq!(b.get(b"id"), None);
        assert_eq!(b.take(b"id"), None);
        let a_again = ScopedSessions::new(cache, scope("web", Some(&[1; 32])));
        assert_eq!(a_again.take(b"id").as_deref(), Some(&b"value"[..]));
    }
}
