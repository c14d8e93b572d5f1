//! Session-ticket keys that survive a binary upgrade.
//!
//! rustls's own ticketer keeps its keys where nothing can read them, so the
//! process a `stayup upgrade` starts issued tickets under keys of its own,
//! and every client's next connection after an upgrade was a full
//! handshake: for a busy server, a burst of them at once. These keys rotate
//! the way rustls's do (a key issues tickets for 6 hours, then only opens
//! them for 6 more; a ticket is announced as good for 12 hours), tickets
//! are AES-256-GCM under a random 16-byte key name, and the old process of
//! an upgrade hands its keys to the new one over the token-checked
//! hand-over connection. They are never written to disk, logged, or shown
//! by `Debug`.

use std::fmt;
use std::sync::{RwLock, RwLockReadGuard};

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use rustls::pki_types::UnixTime;
use rustls::server::ProducesTickets;
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// How long a key issues tickets; it opens them for as long again.
const ROTATION_SECS: u64 = 6 * 60 * 60;
const NAME_LEN: usize = 16;
const SECRET_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// The shared ticket keys of one process (see the module documentation).
pub struct TicketKeys {
    state: RwLock<State>,
}

struct State {
    current: Key,
    previous: Option<Key>,
    /// UNIX seconds after which `current` only opens tickets.
    next_switch: u64,
}

struct Key {
    name: [u8; NAME_LEN],
    secret: Zeroizing<[u8; SECRET_LEN]>,
    aead: RandomizedNonceKey,
}

/// Secrets as [`TicketKeys::export`] (and `SessionCache::export`) give
/// them: text that holds key material, for the process that takes over and
/// nowhere else. Erased when dropped; `Debug` does not show it.
pub struct Exported(Zeroizing<String>);

impl Exported {
    pub fn new(text: String) -> Exported {
        Exported(Zeroizing::new(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Exported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Exported(..)")
    }
}

/// Why keys could not be made or taken over.
#[derive(Debug, thiserror::Error)]
pub enum TicketKeysError {
    #[error("no random bytes for a new session-ticket key")]
    Random,
    #[error("the session-ticket keys handed over are malformed: {0}")]
    Malformed(&'static str),
}

impl Key {
    fn generate() -> Result<Key, TicketKeysError> {
        let mut name = [0u8; NAME_LEN];
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        aws_lc_rs::rand::fill(&mut name).map_err(|_| TicketKeysError::Random)?;
        aws_lc_rs::rand::fill(&mut secret[..]).map_err(|_| TicketKeysError::Random)?;
        Key::from_parts(name, secret)
    }

    fn from_parts(
        name: [u8; NAME_LEN],
        secret: Zeroizing<[u8; SECRET_LEN]>,
    ) -> Result<Key, TicketKeysError> {
        let aead = RandomizedNonceKey::new(&AES_256_GCM, &secret[..])
            .map_err(|_| TicketKeysError::Malformed("not an AES-256 key"))?;
        Ok(Key { name, secret, aead })
    }

    /// `name || nonce || ciphertext || tag`, the name authenticated too.
    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut sealed = Vec::with_capacity(plain.len() + TAG_LEN);
        sealed.extend_from_slice(plain);
        let nonce = self
            .aead
            .seal_in_place_append_tag(Aad::from(&self.name), &mut sealed)
            .ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&self.name);
        ticket.extend_from_slice(nonce.as_ref());
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let rest = ticket.strip_prefix(&self.name[..])?;
        if rest.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut in_out = sealed.to_vec();
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(&self.name), &mut in_out)
            .ok()?
            .len();
        in_out.truncate(plain);
        Some(in_out)
    }

    fn export(&self) -> Value {
        json!({ "name": hex::encode(self.name), "secret": hex::encode(&self.secret[..]) })
    }

    fn import(v: &Value) -> Result<Key, TicketKeysError> {
        let field = |f: &'static str| -> Result<Vec<u8>, TicketKeysError> {
            let text = v
                .get(f)
                .and_then(Value::as_str)
                .ok_or(TicketKeysError::Malformed("a key lacks its name or secret"))?;
            hex::decode(text).map_err(|_| TicketKeysError::Malformed("a key is not hex"))
        };
        let name: [u8; NAME_LEN] = field("name")?
            .try_into()
            .map_err(|_| TicketKeysError::Malformed("a key name is not 16 bytes"))?;
        let secret = Zeroizing::new(field("secret")?);
        let secret: [u8; SECRET_LEN] = secret
            .as_slice()
            .try_into()
            .map_err(|_| TicketKeysError::Malformed("a key is not 32 bytes"))?;
        Key::from_parts(name, Zeroizing::new(secret))
    }
}

impl TicketKeys {
    pub fn new() -> Result<TicketKeys, TicketKeysError> {
        Ok(TicketKeys {
            state: RwLock::new(State {
                current: Key::generate()?,
                previous: None,
                next_switch: UnixTime::now().as_secs().saturating_add(ROTATION_SECS),
            }),
        })
    }

    /// The keys, for the process that takes over from this one.
    pub fn export(&self) -> Exported {
        let state = self.read();
        Exported(Zeroizing::new(
            json!({
                "next_switch": state.next_switch,
                "current": state.current.export(),
                "previous": state.previous.as_ref().map(Key::export),
            })
            .to_string(),
        ))
    }

    /// Takes over the keys `export` gave in another process, so that the
    /// tickets it issued open here. On error nothing changes.
    pub fn import(&self, text: &str) -> Result<(), TicketKeysError> {
        let v: Value =
            serde_json::from_str(text).map_err(|_| TicketKeysError::Malformed("not JSON"))?;
        let next_switch = v
            .get("next_switch")
            .and_then(Value::as_u64)
            .ok_or(TicketKeysError::Malformed("no rotation time"))?;
        let current = Key::import(
            v.get("current")
                .ok_or(TicketKeysError::Malformed("no current key"))?,
        )?;
        let previous = match v.get("previous") {
            None | Some(Value::Null) => None,
            Some(p) => Some(Key::import(p)?),
        };
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = State {
            current,
            previous,
            next_switch,
        };
        Ok(())
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The keys as of `now` (UNIX seconds): once the current key has issued
    /// tickets for its time, it only opens them, and the one before is erased.
    fn rolled(&self, now: u64) -> Option<RwLockReadGuard<'_, State>> {
        {
            let state = self.read();
            if now <= state.next_switch {
                return Some(state);
            }
        }
        // Made before taking the lock, as rustls does: a failure leaves the
        // keys as they were, and tickets are simply not issued.
        let next = Key::generate().ok()?;
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            if now > state.next_switch {
                state.previous = Some(std::mem::replace(&mut state.current, next));
                state.next_switch = now.saturating_add(ROTATION_SECS);
            }
        }
        Some(self.read())
    }

    fn encrypt_at(&self, plain: &[u8], now: u64) -> Option<Vec<u8>> {
        self.rolled(now)?.current.seal(plain)
    }

    fn decrypt_at(&self, ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        let state = self.rolled(now)?;
        state
            .current
            .open(ticket)
            .or_else(|| state.previous.as_ref()?.open(ticket))
    }
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    /// A ticket opens for up to two rotations after it was issued.
    fn lifetime(&self) -> u32 {
        (2 * ROTATION_SECS) as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.encrypt_at(plain, UnixTime::now().as_secs())
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.decrypt_at(ticket, UnixTime::now().as_secs())
    }
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKeys").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        UnixTime::now().as_secs()
    }

    #[test]
    fn a_ticket_opens_with_its_keys_only() {
        let keys = TicketKeys::new().expect("keys");
        let other = TicketKeys::new().expect("keys");
        let ticket = keys.encrypt(b"session state").expect("ticket");
        assert_eq!(
            keys.decrypt(&ticket).as_deref(),
            Some(&b"session state"[..])
        );
        assert_eq!(other.decrypt(&ticket), None);
        // Two tickets for the same state differ (a fresh nonce each).
        assert_ne!(keys.encrypt(b"session state"), Some(ticket.clone()));
        // Any changed byte, the key name's included, and it does not open.
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(keys.decrypt(&bad), None, "byte {i} changed");
        }
        for len in 0..ticket.len() {
            assert_eq!(keys.decrypt(&ticket[..len]), None, "cut to {len}");
        }
    }

    #[test]
    fn a_key_opens_tickets_for_one_more_rotation_then_is_erased() {
        let keys = TicketKeys::new().expect("keys");
        let start = now();
        let old = keys.encrypt_at(b"old", start).expect("ticket");
        // Past the switch: new tickets come from a new key, the old still open.
        let later = start + ROTATION_SECS + 1;
        let newer = keys.encrypt_at(b"newer", later).expect("ticket");
        assert_ne!(newer[..NAME_LEN], old[..NAME_LEN]);
        assert_eq!(keys.decrypt_at(&old, later).as_deref(), Some(&b"old"[..]));
        // One more switch and the first key is gone.
        let much_later = later + ROTATION_SECS + 1;
        assert_eq!(keys.decrypt_at(&old, much_later), None);
        assert_eq!(
            keys.decrypt_at(&newer, much_later).as_deref(),
            Some(&b"newer"[..])
        );
    }

    #[test]
    fn imported_keys_open_the_exporters_tickets_and_rotate_on_its_schedule() {
        let old = TicketKeys::new().expect("keys");
        let start = now();
        let before = old.encrypt_at(b"before", start).expect("ticket");
        let _ = old.encrypt_at(b"rolled", start + ROTATION_SECS + 1);
        let newest = old
            .encrypt_at(b"newest", start + ROTATION_SECS + 1)
            .expect("t");

        let new = TicketKeys::new().expect("keys");
        new.import(old.export().as_str()).expect("import");
        let at = start + ROTATION_SECS + 2;
        // Both of the old process's keys came over.
        assert_eq!(new.decrypt_at(&before, at).as_deref(), Some(&b"before"[..]));
        assert_eq!(new.decrypt_at(&newest, at).as_deref(), Some(&b"newest"[..]));
        // The new process issues under the same current key...
        let issued = new.encrypt_at(b"issued", at).expect("ticket");
        assert_eq!(issued[..NAME_LEN], newest[..NAME_LEN]);
        assert_eq!(old.decrypt_at(&issued, at).as_deref(), Some(&b"issued"[..]));
        // ...and rotates when the old process would have.
        let switch = start + 2 * ROTATION_SECS + 2;
        assert_eq!(new.decrypt_at(&before, switch), None);
        assert_eq!(
            new.decrypt_at(&newest, switch).as_deref(),
            Some(&b"newest"[..])
        );
    }

    #[test]
    fn malformed_keys_are_refused_and_change_nothing() {
        let keys = TicketKeys::new().expect("keys");
        let ticket = keys.encrypt(b"kept").expect("ticket");
        let good: Value = serde_json::from_str(keys.export().as_str()).expect("JSON");
        let with = |pointer: &str, v: Value| {
            let mut bad = good.clone();
            *bad.pointer_mut(pointer).expect("field") = v;
            bad.to_string()
        };
        let cases = [
            ("not json".to_string(), "not JSON"),
            (json!({}).to_string(), "no rotation time"),
            (with("/next_switch", json!("soon")), "no rotation time"),
            (with("/current", Value::Null), "lacks its name or secret"),
            (with("/current/secret", json!("zz")), "not hex"),
            (with("/current/secret", json!("00")), "not 32 bytes"),
            (with("/current/name", json!("0011")), "not 16 bytes"),
            (with("/previous", json!({"name": 1})), "lacks its name"),
        ];
        for (text, reason) in cases {
            let e = keys.import(&text).expect_err(&text).to_string();
            assert!(e.contains(reason), "{text}: {e}");
            assert!(e.starts_with("the session-ticket keys handed over"), "{e}");
        }
        assert_eq!(keys.decrypt(&ticket).as_deref(), Some(&b"kept"[..]));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let keys = TicketKeys::new().expect("keys");
        let exported: Value = serde_json::from_str(keys.export().as_str()).expect("JSON");
        let secret = exported["current"]["secret"].as_str().expect("secret");
        assert_eq!(secret.len(), 2 * SECRET_LEN);
        assert_eq!(format!("{keys:?}"), "TicketKeys { .. }");
        assert_eq!(format!("{:?}", keys.export()), "Exported(..)");
    }
}
