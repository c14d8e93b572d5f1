//! Certificates and the TLS configurations of the load generator and of the
//! in-memory ceiling.
//!
//! Every system serves the same ECDSA P-256 leaf. The client offers exactly
//! one cipher suite (TLS_AES_256_GCM_SHA384) and one group (X25519), TLS 1.3
//! only, so every system negotiates the same handshake, and it never resumes
//! (it counts the session tickets it is sent, and keeps none).
//! It skips certificate and signature verification: the load generator must
//! spend less CPU per handshake than the proxy it measures, and it is the same
//! client for every system.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::NamedGroup;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// The name every certificate covers and every client asks for.
pub const NAME: &str = "bench.example";

/// A certificate and key on disk, in the shapes the systems want.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate then key in one file (HAProxy, hitch).
    pub combined: PathBuf,
    /// The leaf, DER, to recognise which certificate a server presented.
    pub der: Vec<u8>,
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new() -> Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "stayup bench CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(86_400)).into();
        params.not_after = (now + Duration::from_secs(3650 * 86_400)).into();
        Ok(Ca {
            issuer: Issuer::new(params, key),
        })
    }

    /// Writes a fresh ECDSA P-256 leaf for `names` as `<dir>/<stem>.{pem,key,combined.pem}`.
    pub fn leaf(&self, dir: &Path, stem: &str, names: &[String]) -> Result<CertFiles> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = dn;
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(30 * 86_400)).into();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = CertFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
            combined: dir.join(format!("{stem}.combined.pem")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&files.cert, cert.pem())?;
        write_private(&files.key, key.serialize_pem().as_bytes())?;
        write_private(
            &files.combined,
            format!("{}{}", cert.pem(), key.serialize_pem()).as_bytes(),
        )?;
        Ok(files)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// aws-lc-rs restricted to the one suite and the one group every system gets.
pub fn client_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs as p;
    Arc::new(CryptoProvider {
        cipher_suites: vec![p::cipher_suite::TLS13_AES_256_GCM_SHA384],
        kx_groups: vec![p::kx_group::X25519],
        ..p::default_provider()
    })
}

/// The TLS 1.3 suites an OpenSSL 3 client (curl, Python, libpq, most
/// drivers) offers, in its order, and the same one group: each system then
/// picks the suite it would pick for most of its real clients.
pub fn openssl_order_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs as p;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            p::cipher_suite::TLS13_AES_256_GCM_SHA384,
            p::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            p::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ],
        kx_groups: vec![p::kx_group::X25519],
        ..p::default_provider()
    })
}

#[derive(Debug)]
struct AcceptAnything(Vec<SignatureScheme>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

/// The load generator's client: TLS 1.3, one suite, one group, no resumption.
pub fn client_config() -> Result<Arc<ClientConfig>> {
    client_config_with(client_provider())
}

/// The same client offering OpenSSL's suites (`openssl_order_provider`).
pub fn openssl_order_client_config() -> Result<Arc<ClientConfig>> {
    client_config_with(openssl_order_provider())
}

fn client_config_with(provider: Arc<CryptoProvider>) -> Result<Arc<ClientConfig>> {
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let mut c = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(schemes)))
        .with_no_client_auth();
    c.resumption = rustls::client::Resumption::store(Arc::new(TicketCounter));
    Ok(Arc::new(c))
}

/// TLS 1.3 session tickets the load generator has received, over all systems.
pub static TICKETS: AtomicU64 = AtomicU64::new(0);

/// A session store that keeps nothing, so the client never resumes, but
/// counts the tickets servers send: it proves which systems really have
/// tickets off.
#[derive(Debug)]
struct TicketCounter;

impl ClientSessionStore for TicketCounter {
    fn set_kx_hint(&self, _: ServerName<'static>, _: NamedGroup) {}
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        None
    }
    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(&self, _: ServerName<'static>, _: Tls13ClientSessionValue) {
        TICKETS.fetch_add(1, Ordering::Relaxed);
    }
    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        None
    }
}

pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(NAME)
        .map(|n| n.to_owned())
        .unwrap_or_else(|_| unreachable!())
}
