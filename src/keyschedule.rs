//! TLS 1.3's key schedule for SHA-384 suites, with each HMAC key prepared
//! once.
//!
//! A TLS 1.3 handshake derives a dozen secrets by HKDF, and every one of them
//! is an HMAC. rustls's aws-lc-rs provider maps HKDF onto aws-lc's one-shot
//! `HKDF` call (as FIPS 140 asks of it), which repeats the extraction and the
//! HMAC key set-up (two hash blocks for the inner and outer pads) for every
//! secret derived from the same key: three derivations from the handshake
//! secret extract it three times. With the suite's HKDF built instead on
//! HMAC keys that aws-lc prepares once ([`HkdfUsingHmac`], rustls's own
//! construction, the one its *ring* provider uses), each derivation costs two
//! hash blocks: about a third fewer per handshake. The outputs are the same
//! bytes; only the work to reach them differs.
//!
//! It pays where hash blocks are dear: SHA-384 has no instructions of its own
//! on x86, and aws-lc runs it without vector instructions on AMD CPUs, where
//! it was the largest single cost of a TLS_AES_256_GCM_SHA384 handshake
//! (ahead of the X25519 key exchange). An in-memory server handshake took
//! 5-6% less CPU with it on an AMD EPYC host. SHA-256 runs on the CPU's SHA
//! extensions, where the blocks saved are worth less than the copies of
//! prepared keys, allocations and indirections that save them (2-3% more
//! CPU in the same measurement), so SHA-256 suites keep the provider's HKDF.
//!
//! The AEAD, hash and everything else of each suite stay aws-lc-rs's; TLS 1.2
//! suites are not touched. The replaced suites do not claim FIPS approval:
//! aws-lc's FIPS indicator covers its one-shot HKDF, not this use of HMAC.

use std::sync::LazyLock;

use aws_lc_rs::hmac;
use rustls::crypto::CryptoProvider;
use rustls::crypto::hmac as rustls_hmac;
use rustls::crypto::tls13::HkdfUsingHmac;
use rustls::{CipherSuiteCommon, SupportedCipherSuite, Tls13CipherSuite};

/// aws-lc-rs's HMAC behind rustls's `Hmac` trait.
struct Hmac(&'static hmac::Algorithm);

/// An HMAC key whose padded inner and outer states aws-lc computed once, when
/// it was made; each tag starts from a copy of them.
struct Key(hmac::Key);

impl rustls_hmac::Hmac for Hmac {
    fn with_key(&self, key: &[u8]) -> Box<dyn rustls_hmac::Key> {
        Box::new(Key(hmac::Key::new(*self.0, key)))
    }

    fn hash_output_len(&self) -> usize {
        self.0.digest_algorithm().output_len()
    }
}

impl rustls_hmac::Key for Key {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> rustls_hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(first);
        for part in middle {
            ctx.update(part);
        }
        ctx.update(last);
        rustls_hmac::Tag::new(ctx.sign().as_ref())
    }

    fn tag_len(&self) -> usize {
        self.0.algorithm().digest_algorithm().output_len()
    }
}

static HMAC_SHA384: Hmac = Hmac(&hmac::HMAC_SHA384);
static HKDF_SHA384: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA384);

/// aws-lc-rs's TLS 1.3 SHA-384 suites, each with its HKDF replaced.
static PREPARED: LazyLock<Vec<Tls13CipherSuite>> = LazyLock::new(|| {
    rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
        .iter()
        .filter_map(|s| match s {
            SupportedCipherSuite::Tls13(s) => prepared_suite(s),
            SupportedCipherSuite::Tls12(_) => None,
        })
        .collect()
});

fn prepared_suite(s: &Tls13CipherSuite) -> Option<Tls13CipherSuite> {
    if s.common.hash_provider.algorithm() != rustls::crypto::hash::HashAlgorithm::SHA384 {
        return None;
    }
    Some(Tls13CipherSuite {
        common: CipherSuiteCommon {
            suite: s.common.suite,
            hash_provider: s.common.hash_provider,
            confidentiality_limit: s.common.confidentiality_limit,
        },
        hkdf_provider: &HKDF_SHA384,
        aead_alg: s.aead_alg,
        quic: s.quic,
    })
}

/// `provider` with each of aws-lc-rs's TLS 1.3 SHA-384 suites replaced by
/// the same suite over prepared HMAC keys, in the same order. Other suites,
/// and those of any other provider, are kept as they are.
pub fn prepared(provider: &CryptoProvider) -> CryptoProvider {
    let mut p = provider.clone();
    for suite in &mut p.cipher_suites {
        if let SupportedCipherSuite::Tls13(s) = suite {
            let ours = PREPARED.iter().find(|ours| {
                ours.common.suite == s.common.suite && std::ptr::addr_eq(ours.aead_alg, s.aead_alg)
            });
            if let Some(ours) = ours {
                *suite = SupportedCipherSuite::Tls13(ours);
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::aws_lc_rs::default_provider;
    use rustls::crypto::tls13::{Hkdf, OkmBlock};

    fn tls13(p: &CryptoProvider) -> Vec<&'static Tls13CipherSuite> {
        p.cipher_suites
            .iter()
            .filter_map(|s| match s {
                SupportedCipherSuite::Tls13(s) => Some(*s),
                SupportedCipherSuite::Tls12(_) => None,
            })
            .collect()
    }

    /// Every derivation the key schedule makes gives the bytes aws-lc's
    /// one-shot HKDF gives; only the SHA-384 suite is replaced.
    #[test]
    fn derivations_match_the_providers_own() {
        let base = default_provider();
        let ours = prepared(&base);
        let (theirs, mine) = (tls13(&base), tls13(&ours));
        assert_eq!(theirs.len(), 3);
        assert_eq!(theirs.len(), mine.len());
        for (t, m) in theirs.iter().zip(&mine) {
            assert_eq!(t.common.suite, m.common.suite);
            let sha384 = t.common.suite == rustls::CipherSuite::TLS13_AES_256_GCM_SHA384;
            assert_eq!(!std::ptr::eq(*t, *m), sha384, "{:?}", t.common.suite);
            let (a, b): (&dyn Hkdf, &dyn Hkdf) = (t.hkdf_provider, m.hkdf_provider);
            let secret = [0x5au8; 48];
            let salt = [0xa5u8; 48];
            let len = t.common.hash_provider.output_len();
            let infos: [&[&[u8]]; 3] = [&[b"c hs traffic"], &[b"s ", b"hs traffic"], &[]];
            for salt in [None, Some(&salt[..len])] {
                let (x, y) = (
                    a.extract_from_secret(salt, &secret[..len]),
                    b.extract_from_secret(salt, &secret[..len]),
                );
                for info in infos {
                    assert_eq!(x.expand_block(info).as_ref(), y.expand_block(info).as_ref());
                    let (mut o1, mut o2) = ([0u8; 200], [0u8; 200]);
                    x.expand_slice(info, &mut o1).expect("expand");
                    y.expand_slice(info, &mut o2).expect("expand");
                    assert_eq!(o1, o2);
                }
                let (x, y) = (a.extract_from_zero_ikm(salt), b.extract_from_zero_ikm(salt));
                assert_eq!(
                    x.expand_block(&[b"derived"]).as_ref(),
                    y.expand_block(&[b"derived"]).as_ref()
                );
            }
            let okm = OkmBlock::new(&secret[..len]);
            assert_eq!(
                a.expander_for_okm(&okm).expand_block(&[b"key"]).as_ref(),
                b.expander_for_okm(&okm).expand_block(&[b"key"]).as_ref()
            );
            assert_eq!(
                a.hmac_sign(&okm, b"finished").as_ref(),
                b.hmac_sign(&okm, b"finished").as_ref()
            );
        }
    }

    /// The order and the TLS 1.2 suites are the provider's.
    #[test]
    fn order_and_tls12_suites_are_kept() {
        let base = crate::suites::aes128_first(&default_provider());
        let ours = prepared(&base);
        let names = |p: &CryptoProvider| {
            p.cipher_suites
                .iter()
                .map(|s| s.suite())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&base), names(&ours));
        for (t, m) in base.cipher_suites.iter().zip(&ours.cipher_suites) {
            if let (SupportedCipherSuite::Tls12(t), SupportedCipherSuite::Tls12(m)) = (t, m) {
                assert!(std::ptr::eq(*t, *m));
            }
        }
    }
}
