//! Throwaway certificates for the demo and the tests: a CA, leaves it signs,
//! and client certificates. Nothing here is meant for production material.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A PEM certificate (or chain) and its PEM private key.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
    /// The leaf alone, DER.
    pub der: Vec<u8>,
}

impl Pem {
    /// Writes `cert` and `key` (the key with mode 0600).
    pub fn write(&self, cert: &Path, key: &Path) -> std::io::Result<()> {
        std::fs::write(cert, &self.cert)?;
        write_private(key, self.key.as_bytes())
    }

    /// SHA-256 fingerprint of the leaf, lower-case hex (what `stayup status` shows).
    pub fn fingerprint(&self) -> String {
        hex::encode(crate::material::sha256(&self.der))
    }
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// A certificate authority that signs leaves.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: Pem,
}

/// Options for a leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub names: Vec<String>,
    pub common_name: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub client: bool,
}

impl LeafSpec {
    /// A server certificate for `names`, valid from an hour ago for 30 days.
    pub fn server(names: &[&str]) -> LeafSpec {
        let now = SystemTime::now();
        LeafSpec {
            names: names.iter().map(|s| s.to_string()).collect(),
            common_name: names.first().copied().unwrap_or("stayup").to_string(),
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(30 * 86_400),
            client: false,
        }
    }
}

fn rc(e: rcgen::Error) -> String {
    e.to_string()
}

impl Ca {
    /// A new ECDSA P-256 CA named `name`.
    pub fn new(name: &str) -> Result<Ca, String> {
        let key = KeyPair::generate().map_err(rc)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(86_400)).into();
        params.not_after = (now + Duration::from_secs(3650 * 86_400)).into();
        let cert = params.self_signed(&key).map_err(rc)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        };
        Ok(Ca {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// A leaf signed by this CA, with a fresh ECDSA P-256 key. The `cert`
    /// field holds the leaf alone (the CA is the trust anchor).
    pub fn leaf(&self, spec: &LeafSpec) -> Result<Pem, String> {
        let key = KeyPair::generate().map_err(rc)?;
        self.leaf_with_key(spec, &key)
    }

    /// A leaf for an existing key (any algorithm rcgen supports).
    pub fn leaf_with_key(&self, spec: &LeafSpec, key: &KeyPair) -> Result<Pem, String> {
        let mut params = CertificateParams::new(spec.names.clone()).map_err(rc)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.common_name.clone());
        params.distinguished_name = dn;
        params.not_before = spec.not_before.into();
        params.not_after = spec.not_after.into();
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if spec.client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(key, &self.issuer).map_err(rc)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        })
    }
}
