//! Which cipher suite a connection gets.
//!
//! rustls follows the client's order by default, and OpenSSL-based clients
//! (curl, Python, libpq, most MQTT and database drivers) list
//! AES-256-GCM-SHA384 first. AES-128-GCM-SHA256 is as safe for TLS and
//! cheaper on both ends: ten AES rounds instead of fourteen, and a key
//! schedule and transcript hashed with SHA-256, which x86 (SHA extensions)
//! and ARMv8 CPUs compute in hardware, where SHA-384 runs in software on
//! every AMD and most Intel server CPUs. On an AMD EPYC host a whole server
//! handshake in memory took 1.45-1.6x less CPU with it.
//!
//! So stayup picks by its own order, AES-128-GCM, then AES-256-GCM, then
//! ChaCha20-Poly1305, unless the client's first choice is ChaCha20: a client
//! that lists it first is saying it has no AES hardware, and then its own
//! order is followed. BoringSSL (Envoy) and Go's crypto/tls (Caddy) choose
//! the same way.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::ClientHello;
use rustls::{CipherSuite, ServerConfig};

/// `provider` with its cipher suites in stayup's order (see the module).
pub fn aes128_first(provider: &CryptoProvider) -> CryptoProvider {
    let mut p = provider.clone();
    p.cipher_suites.sort_by_key(|s| rank(s.suite()));
    p
}

fn rank(s: CipherSuite) -> u8 {
    use CipherSuite::*;
    match s {
        TLS13_AES_128_GCM_SHA256
        | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        TLS13_AES_256_GCM_SHA384
        | TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
        _ => 2,
    }
}

fn is_chacha(s: CipherSuite) -> bool {
    use CipherSuite::*;
    matches!(
        s,
        TLS13_CHACHA20_POLY1305_SHA256
            | TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    )
}

/// Whether the client's first choice among the suites `config` can serve
/// is ChaCha20 (GREASE and suites stayup does not offer are skipped).
pub fn client_prefers_chacha(offered: &[CipherSuite], config: &ServerConfig) -> bool {
    let ours = &config.crypto_provider().cipher_suites;
    offered
        .iter()
        .find(|o| ours.iter().any(|s| s.suite() == **o))
        .is_some_and(|s| is_chacha(*s))
}

/// A listener's two rustls configurations, alike but for the choice of
/// cipher suite.
#[derive(Debug)]
pub struct ListenerTls {
    /// stayup's order: AES-128-GCM first.
    pub ours: Arc<ServerConfig>,
    /// The client's order, for clients that put ChaCha20 first.
    pub clients: Arc<ServerConfig>,
}

impl ListenerTls {
    /// The configuration for the connection whose ClientHello this is.
    pub fn for_hello(&self, hello: &ClientHello<'_>) -> Arc<ServerConfig> {
        if client_prefers_chacha(hello.cipher_suites(), &self.ours) {
            self.clients.clone()
        } else {
            self.ours.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::aws_lc_rs::default_provider;

    #[test]
    fn aes128_comes_first_in_each_version_and_nothing_is_lost() {
        let base = default_provider();
        let ours = aes128_first(&base);
        let names: Vec<CipherSuite> = ours.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(names.len(), base.cipher_suites.len());
        for s in &base.cipher_suites {
            assert!(names.contains(&s.suite()), "{:?} lost", s.suite());
        }
        let pos = |s| names.iter().position(|n| *n == s).expect("present");
        use CipherSuite::*;
        assert!(pos(TLS13_AES_128_GCM_SHA256) < pos(TLS13_AES_256_GCM_SHA384));
        assert!(pos(TLS13_AES_256_GCM_SHA384) < pos(TLS13_CHACHA20_POLY1305_SHA256));
        assert!(
            pos(TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
                < pos(TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
        );
        assert!(
            pos(TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
                < pos(TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)
        );
    }
}
