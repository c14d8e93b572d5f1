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
//! the same way. `tls.cipher_suites` replaces stayup's order (and set) with
//! the operator's; the ChaCha20 exception still applies within it.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::ClientHello;
use rustls::{CipherSuite, ServerConfig, SignatureAlgorithm};

/// The suites stayup can serve, by their IANA names (what `tls.cipher_suites`
/// takes and the connection log prints), in stayup's order.
pub const NAMES: &[(&str, CipherSuite)] = &[
    (
        "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_128_GCM_SHA256,
    ),
    (
        "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_AES_256_GCM_SHA384,
    ),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// The IANA name of a suite stayup serves.
pub fn name(suite: CipherSuite) -> Option<&'static str> {
    NAMES.iter().find(|(_, s)| *s == suite).map(|(n, _)| *n)
}

/// Whether the suite of this IANA name is a TLS 1.3 one (their names do not
/// say how keys are exchanged).
pub fn is_tls13_name(name: &str) -> bool {
    !name.starts_with("TLS_ECDHE_")
}

/// Why TLS 1.2 clients could not use a certificate with a key of this
/// algorithm under `tls.cipher_suites` (`names`; empty is stayup's choice,
/// which serves every key), or `None` if they can. A TLS 1.2 suite names
/// the kind of key it signs with; TLS 1.3 ones fit every key.
pub fn tls12_gap(names: &[String], key: SignatureAlgorithm) -> Option<String> {
    let (prefix, kind) = match key {
        SignatureAlgorithm::RSA => ("TLS_ECDHE_RSA_WITH_", "RSA"),
        SignatureAlgorithm::ECDSA => ("TLS_ECDHE_ECDSA_WITH_", "ECDSA"),
        SignatureAlgorithm::ED25519 => ("TLS_ECDHE_ECDSA_WITH_", "Ed25519"),
        _ => return None,
    };
    let fits = names.is_empty() || names.iter().any(|n| n.starts_with(prefix));
    (!fits).then(|| {
        format!(
            "tls.cipher_suites names no TLS 1.2 suite for this certificate's {kind} key ({prefix}...), so TLS 1.2 clients could not connect; name one, or set min_version \"1.3\""
        )
    })
}

/// `provider` with its cipher suites in stayup's order (see the module).
pub fn aes128_first(provider: &CryptoProvider) -> CryptoProvider {
    let mut p = provider.clone();
    p.cipher_suites.sort_by_key(|s| {
        NAMES
            .iter()
            .position(|(_, n)| *n == s.suite())
            .unwrap_or(NAMES.len())
    });
    p
}

/// `provider` with only the suites named (IANA names, validated by the
/// configuration), in that order.
pub fn only(provider: &CryptoProvider, names: &[String]) -> CryptoProvider {
    let mut p = provider.clone();
    p.cipher_suites = names
        .iter()
        .filter_map(|n| NAMES.iter().find(|(name, _)| name == n))
        .filter_map(|(_, suite)| {
            provider
                .cipher_suites
                .iter()
                .find(|s| s.suite() == *suite)
                .copied()
        })
        .collect();
    p
}

fn is_chacha(s: CipherSuite) -> bool {
    name(s).is_some_and(|n| n.contains("_CHACHA20_"))
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
    fn a_tls12_list_must_fit_the_certificate_key() {
        let list = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let ecdsa_only = list(&[
            "TLS_AES_128_GCM_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ]);
        assert_eq!(tls12_gap(&ecdsa_only, SignatureAlgorithm::ECDSA), None);
        assert_eq!(tls12_gap(&ecdsa_only, SignatureAlgorithm::ED25519), None);
        let gap = tls12_gap(&ecdsa_only, SignatureAlgorithm::RSA).expect("a gap");
        assert!(gap.contains("RSA key (TLS_ECDHE_RSA_WITH_...)"), "{gap}");
        assert_eq!(tls12_gap(&[], SignatureAlgorithm::RSA), None);
    }

    #[test]
    fn every_named_suite_is_one_the_provider_serves_and_back() {
        let base = default_provider();
        assert_eq!(NAMES.len(), base.cipher_suites.len());
        for s in &base.cipher_suites {
            let n = name(s.suite()).expect("named");
            assert_eq!(is_tls13_name(n), s.tls13().is_some(), "{n}");
        }
        let picked = only(
            &base,
            &[
                "TLS_CHACHA20_POLY1305_SHA256".to_string(),
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".to_string(),
            ],
        );
        let got: Vec<CipherSuite> = picked.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            got,
            [
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            ]
        );
    }

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
