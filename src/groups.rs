//! Which key exchange groups a listener accepts (`tls.groups`).
//!
//! rustls takes the group from the client's list: the first group the
//! client supports that the server accepts (asking the client once more,
//! with a HelloRetryRequest, when its key share was for another). So what
//! an operator sets is the set, not an order; the names are OpenSSL's
//! (`ssl_ecdh_curve` in nginx, `curves` in HAProxy), with the IANA names of
//! the elliptic curves (`secp256r1`, `secp384r1`) and `prime256v1` as
//! aliases, in any case.
//!
//! Without `tls.groups` stayup accepts rustls's default set: X25519MLKEM768
//! (the post-quantum hybrid that current browsers and OpenSSL 3.5 send
//! first), X25519, P-256 and P-384. A list is for a policy such as FIPS
//! (P-256 and P-384 only), or a post-quantum-only listener.

use rustls::NamedGroup;
use rustls::crypto::{CryptoProvider, SupportedKxGroup};

/// A group stayup can accept: its name, the other names it is known by,
/// and whether only TLS 1.3 can use it.
struct Group {
    name: &'static str,
    aliases: &'static [&'static str],
    group: NamedGroup,
    tls13_only: bool,
}

const GROUPS: &[Group] = &[
    Group {
        name: "X25519MLKEM768",
        aliases: &[],
        group: NamedGroup::X25519MLKEM768,
        tls13_only: true,
    },
    Group {
        name: "SecP256r1MLKEM768",
        aliases: &[],
        group: NamedGroup::secp256r1MLKEM768,
        tls13_only: true,
    },
    Group {
        name: "X25519",
        aliases: &[],
        group: NamedGroup::X25519,
        tls13_only: false,
    },
    Group {
        name: "P-256",
        aliases: &["secp256r1", "prime256v1"],
        group: NamedGroup::secp256r1,
        tls13_only: false,
    },
    Group {
        name: "P-384",
        aliases: &["secp384r1"],
        group: NamedGroup::secp384r1,
        tls13_only: false,
    },
    Group {
        name: "MLKEM768",
        aliases: &[],
        group: NamedGroup::MLKEM768,
        tls13_only: true,
    },
    Group {
        name: "MLKEM1024",
        aliases: &[],
        group: NamedGroup::MLKEM1024,
        tls13_only: true,
    },
];

/// The names `tls.groups` takes, for error messages.
pub fn known() -> String {
    GROUPS.iter().map(|g| g.name).collect::<Vec<_>>().join(", ")
}

/// The name stayup gives the group written as `written` (any case, or an
/// alias), if it is one stayup accepts.
pub fn canonical(written: &str) -> Option<&'static str> {
    GROUPS
        .iter()
        .find(|g| {
            g.name.eq_ignore_ascii_case(written)
                || g.aliases.iter().any(|a| a.eq_ignore_ascii_case(written))
        })
        .map(|g| g.name)
}

/// Whether only TLS 1.3 can use the group of this name (the post-quantum
/// ones): TLS 1.2 key exchange is elliptic-curve Diffie-Hellman alone.
pub fn tls13_only(name: &str) -> bool {
    GROUPS.iter().any(|g| g.name == name && g.tls13_only)
}

/// The name of a group, for the connection log.
pub fn name(group: NamedGroup) -> Option<&'static str> {
    GROUPS.iter().find(|g| g.group == group).map(|g| g.name)
}

/// `provider` accepting only the groups named (names from `canonical`).
/// A group the provider lacks is taken from every group aws-lc-rs offers
/// (rustls's default set leaves out the pure ML-KEM ones).
pub fn only(provider: &CryptoProvider, names: &[String]) -> CryptoProvider {
    let mut p = provider.clone();
    let available = || {
        provider
            .kx_groups
            .iter()
            .chain(rustls::crypto::aws_lc_rs::ALL_KX_GROUPS.iter())
    };
    p.kx_groups = names
        .iter()
        .filter_map(|n| GROUPS.iter().find(|g| g.name == n))
        .filter_map(|g| available().find(|k| k.name() == g.group))
        .copied()
        .collect::<Vec<&'static dyn SupportedKxGroup>>();
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::aws_lc_rs::{ALL_KX_GROUPS, default_provider};

    #[test]
    fn every_group_aws_lc_offers_has_a_name_and_back() {
        assert_eq!(GROUPS.len(), ALL_KX_GROUPS.len());
        for k in ALL_KX_GROUPS {
            let n = name(k.name()).expect("named");
            assert_eq!(canonical(n), Some(n));
            assert_eq!(
                tls13_only(n),
                !k.usable_for_version(rustls::ProtocolVersion::TLSv1_2),
                "{n}"
            );
        }
    }

    #[test]
    fn aliases_and_case_name_the_same_group() {
        for (written, want) in [
            ("p-256", "P-256"),
            ("secp256r1", "P-256"),
            ("PRIME256V1", "P-256"),
            ("secp384r1", "P-384"),
            ("x25519", "X25519"),
            ("x25519mlkem768", "X25519MLKEM768"),
        ] {
            assert_eq!(canonical(written), Some(want), "{written}");
        }
        assert_eq!(canonical("P-521"), None);
        assert_eq!(canonical("ffdhe2048"), None);
    }

    #[test]
    fn only_keeps_the_named_groups_even_outside_the_default_set() {
        let p = only(
            &default_provider(),
            &["P-384".to_string(), "MLKEM1024".to_string()],
        );
        let got: Vec<NamedGroup> = p.kx_groups.iter().map(|k| k.name()).collect();
        assert_eq!(got, [NamedGroup::secp384r1, NamedGroup::MLKEM1024]);
    }
}
