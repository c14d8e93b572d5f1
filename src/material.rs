//! Referenced files -> cross-validated TLS material.
//!
//! Everything a certificate pair can get wrong is caught here, before a
//! generation is built: the file is missing, empty, truncated, DER instead of
//! PEM, encrypted, swapped with its partner, outside its validity window, a
//! CA certificate, a weak key, in the wrong order, or its key belongs to
//! another certificate. Each failure names the file. Messages describe key
//! files by their PEM labels only; key bytes never reach a message.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use x509_parser::prelude::*;

use crate::config::Config;

/// The largest certificate, key or CA bundle stayup will read. A public CA
/// bundle is about 250 KiB; 4 MiB leaves room and still bounds the damage a
/// wrong path (a log file, a disk image) can do.
pub const MAX_MATERIAL_BYTES: u64 = 4 * 1024 * 1024;

/// The smallest RSA key stayup will serve.
pub const MIN_RSA_BITS: usize = 2048;

/// Why reading a file failed, before its content is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    NotFound,
    PermissionDenied,
    NotAFile(&'static str),
    TooLarge(u64),
    Io(String),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::NotFound => write!(f, "no such file (or a dangling symlink)"),
            ReadError::PermissionDenied => write!(f, "permission denied"),
            ReadError::NotAFile(kind) => write!(f, "is {kind}, not a regular file"),
            ReadError::TooLarge(n) => write!(f, "is {n} bytes, too large"),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

fn io_error(e: std::io::Error) -> ReadError {
    match e.kind() {
        std::io::ErrorKind::NotFound => ReadError::NotFound,
        std::io::ErrorKind::PermissionDenied => ReadError::PermissionDenied,
        _ => ReadError::Io(e.to_string()),
    }
}

/// Reads a whole regular file, following symlinks, refusing anything larger
/// than `cap`. Non-regular files (FIFOs, devices, folders) are refused before
/// they are opened, so a FIFO in the wrong place cannot hang a reload.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let meta = std::fs::metadata(path).map_err(io_error)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            "a folder"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_block_device() || ft.is_char_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(ReadError::NotAFile(kind));
    }
    if meta.len() > cap {
        return Err(ReadError::TooLarge(meta.len()));
    }
    let file = std::fs::File::open(path).map_err(io_error)?;
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut buf).map_err(io_error)?;
    if buf.len() as u64 > cap {
        return Err(ReadError::TooLarge(buf.len() as u64));
    }
    Ok(buf)
}

/// SHA-256 of some bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// What was read for one referenced file: the identity of a generation is
/// made of these plus the top-level file's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// The path as the configuration names it (made absolute).
    pub path: PathBuf,
    pub sha256: [u8; 32],
}

/// Why the material of a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MaterialError {
    Read {
        file: PathBuf,
        what: &'static str,
        reason: ReadError,
    },
    Empty {
        file: PathBuf,
        what: &'static str,
    },
    /// Not PEM, truncated PEM, or PEM of the wrong kind.
    NotPem {
        file: PathBuf,
        what: &'static str,
        reason: String,
    },
    EncryptedKey {
        file: PathBuf,
    },
    UnsupportedKey {
        file: PathBuf,
        reason: String,
    },
    BadCertificate {
        file: PathBuf,
        index: usize,
        reason: String,
    },
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
    },
    ChainOrder {
        file: PathBuf,
        reason: String,
    },
    Expired {
        file: PathBuf,
        not_after: String,
    },
    NotYetValid {
        file: PathBuf,
        not_before: String,
    },
    CaAsLeaf {
        file: PathBuf,
    },
    WeakKey {
        file: PathBuf,
        bits: usize,
    },
    NameNotCovered {
        file: PathBuf,
        name: String,
    },
    /// `tls.cipher_suites` leaves TLS 1.2 clients no suite for this
    /// certificate's key.
    SuitesDoNotFit {
        file: PathBuf,
        reason: String,
    },
    ClientCa {
        file: PathBuf,
        reason: String,
    },
    InsecureKeyPermissions {
        file: PathBuf,
        mode: u32,
    },
}

impl MaterialError {
    /// The file the error is about (for a mismatch, the certificate).
    pub fn file(&self) -> &Path {
        use MaterialError::*;
        match self {
            Read { file, .. }
            | Empty { file, .. }
            | NotPem { file, .. }
            | EncryptedKey { file }
            | UnsupportedKey { file, .. }
            | BadCertificate { file, .. }
            | ChainOrder { file, .. }
            | Expired { file, .. }
            | NotYetValid { file, .. }
            | CaAsLeaf { file }
            | WeakKey { file, .. }
            | NameNotCovered { file, .. }
            | SuitesDoNotFit { file, .. }
            | ClientCa { file, .. }
            | InsecureKeyPermissions { file, .. } => file,
            KeyMismatch { cert, .. } => cert,
        }
    }

    /// A short stable name for the kind of error, for metrics and tests.
    pub fn class(&self) -> &'static str {
        use MaterialError::*;
        match self {
            Read {
                reason: ReadError::TooLarge(_),
                ..
            } => "file-too-large",
            Read { .. } => "file-read",
            Empty { .. } => "file-empty",
            NotPem { .. } => "not-pem",
            EncryptedKey { .. } => "encrypted-key",
            UnsupportedKey { .. } => "unsupported-key",
            BadCertificate { .. } => "bad-certificate",
            KeyMismatch { .. } => "key-mismatch",
            ChainOrder { .. } => "chain-order",
            Expired { .. } => "expired",
            NotYetValid { .. } => "not-yet-valid",
            CaAsLeaf { .. } => "ca-as-leaf",
            WeakKey { .. } => "weak-key",
            NameNotCovered { .. } => "name-not-covered",
            SuitesDoNotFit { .. } => "cipher-suites",
            ClientCa { .. } => "client-ca",
            InsecureKeyPermissions { .. } => "key-permissions",
        }
    }
}

impl fmt::Display for MaterialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MaterialError::*;
        match self {
            Read { file, what, reason } => {
                write!(f, "{}: cannot read {what}: {reason}", file.display())
            }
            Empty { file, what } => write!(f, "{}: {what} file is empty", file.display()),
            NotPem { file, what, reason } => {
                write!(f, "{}: not a valid PEM {what}: {reason}", file.display())
            }
            EncryptedKey { file } => write!(
                f,
                "{}: private key is encrypted; stayup needs an unencrypted key (PKCS#8, PKCS#1 or SEC1) readable only by its user",
                file.display()
            ),
            UnsupportedKey { file, reason } => {
                write!(
                    f,
                    "{}: private key cannot be used: {reason}",
                    file.display()
                )
            }
            BadCertificate {
                file,
                index,
                reason,
            } => write!(
                f,
                "{}: certificate #{} does not parse: {reason}",
                file.display(),
                index + 1
            ),
            KeyMismatch { cert, key } => write!(
                f,
                "{}: private key does not match the certificate {} (the leaf, first in the chain)",
                key.display(),
                cert.display()
            ),
            ChainOrder { file, reason } => {
                write!(
                    f,
                    "{}: certificate chain out of order: {reason}",
                    file.display()
                )
            }
            Expired { file, not_after } => write!(
                f,
                "{}: certificate expired (not after {not_after})",
                file.display()
            ),
            NotYetValid { file, not_before } => write!(
                f,
                "{}: certificate is not valid yet (not before {not_before})",
                file.display()
            ),
            CaAsLeaf { file } => write!(
                f,
                "{}: the first certificate is a CA certificate; the chain must start with the server's own (leaf) certificate",
                file.display()
            ),
            WeakKey { file, bits } => write!(
                f,
                "{}: {bits}-bit RSA key is too weak (at least {MIN_RSA_BITS} bits)",
                file.display()
            ),
            NameNotCovered { file, name } => write!(
                f,
                "{}: certificate does not cover the declared name {name:?}",
                file.display()
            ),
            ClientCa { file, reason } => {
                write!(f, "{}: client CA bundle unusable: {reason}", file.display())
            }
            SuitesDoNotFit { file, reason } => write!(f, "{}: {reason}", file.display()),
            InsecureKeyPermissions { file, mode } => write!(
                f,
                "{}: private key is readable by group or others (mode {:04o}); make it 0600, or 0640 owned by root with a group of its readers, or set limits.allow_insecure_key_permissions: true",
                file.display(),
                mode & 0o7777
            ),
        }
    }
}

impl std::error::Error for MaterialError {}

/// What an operator wants to know about a served certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub listener: String,
    pub cert_path: PathBuf,
    pub subject: String,
    /// DNS names and IP addresses from subjectAltName.
    pub sans: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// SHA-256 of the leaf's DER, lower-case hex.
    pub fingerprint: String,
}

/// One validated certificate with its signing key, ready for rustls.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub certified: Arc<CertifiedKey>,
    pub info: CertInfo,
    /// DNS names for SNI selection, lower case, wildcards as `*.example.com`.
    pub dns_names: Vec<String>,
}

/// The validated material for one listener, in configuration order.
#[derive(Debug, Clone)]
pub struct ListenerMaterial {
    pub certs: Vec<LoadedCert>,
    pub client_ca: Option<Arc<RootCertStore>>,
}

/// Everything a configuration references, read once and validated.
#[derive(Debug, Clone)]
pub struct Material {
    /// Parallel to `Config::listeners`.
    pub listeners: Vec<ListenerMaterial>,
    /// Every referenced file with its digest, as read.
    pub files: Vec<FileDigest>,
}

/// Certificate pairs already validated, by the SHA-256 of their two files.
/// A reload reads every file again, but parses and loads again only the
/// pairs whose bytes changed: with thousands of certificates, parsing and
/// loading each key was most of a reload. What depends on more than the
/// bytes (the key file's permissions, the validity period against the
/// clock, the names a configuration asks for) is checked on every load.
/// Holds the pairs of the last load that completed.
#[derive(Default)]
pub struct PairCache(Mutex<HashMap<PairDigest, Arc<Parsed>>>);

type PairDigest = ([u8; 32], [u8; 32]);

impl fmt::Debug for PairCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "PairCache({n} pairs)")
    }
}

/// A pair as its bytes make it, before the checks against the clock.
struct Parsed {
    cert: LoadedCert,
    /// As the errors show them.
    not_before: String,
    not_after: String,
}

/// Reads and cross-validates every file `config` references, at time `now`.
pub fn load(
    config: &Config,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<Material, MaterialError> {
    load_with(config, provider, now, &PairCache::default())
}

/// [`load`], reusing the pairs `cache` holds whose files have not changed.
pub fn load_with(
    config: &Config,
    provider: &CryptoProvider,
    now: SystemTime,
    cache: &PairCache,
) -> Result<Material, MaterialError> {
    let known = std::mem::take(&mut *cache.0.lock().unwrap_or_else(|p| p.into_inner()));
    let mut used = HashMap::new();
    let result = load_pairs(config, provider, now, &known, &mut used);
    // Only the pairs this load used are kept, once it completes: the cache
    // never outgrows the configuration.
    if result.is_err() {
        used.extend(known);
    }
    *cache.0.lock().unwrap_or_else(|p| p.into_inner()) = used;
    result
}

fn load_pairs(
    config: &Config,
    provider: &CryptoProvider,
    now: SystemTime,
    known: &HashMap<PairDigest, Arc<Parsed>>,
    used: &mut HashMap<PairDigest, Arc<Parsed>>,
) -> Result<Material, MaterialError> {
    let mut files: Vec<FileDigest> = Vec::new();
    // Each file once, in the order first referenced; looked up by hash, not
    // by scanning `files` (with thousands of certificates that scan was
    // half of a reload).
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut read =
        |path: &Path, what: &'static str| -> Result<(Vec<u8>, [u8; 32]), MaterialError> {
            let bytes =
                read_capped(path, MAX_MATERIAL_BYTES).map_err(|reason| MaterialError::Read {
                    file: path.to_path_buf(),
                    what,
                    reason,
                })?;
            let digest = sha256(&bytes);
            if seen.insert(path.to_path_buf()) {
                files.push(FileDigest {
                    path: path.to_path_buf(),
                    sha256: digest,
                });
            }
            Ok((bytes, digest))
        };
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut listeners = Vec::new();
    for l in &config.listeners {
        let mut certs = Vec::new();
        for c in &l.tls.certificates {
            if !config.limits.allow_insecure_key_permissions {
                check_key_permissions(&c.key)?;
            }
            let (cert_bytes, cert_digest) = read(&c.cert, "certificate")?;
            let (key_bytes, key_digest) = read(&c.key, "private key")?;
            let digest = (cert_digest, key_digest);
            let parsed = match used.get(&digest).or_else(|| known.get(&digest)) {
                Some(p) => p.clone(),
                None => Arc::new(load_pair(
                    &c.cert,
                    &cert_bytes,
                    &c.key,
                    &key_bytes,
                    provider,
                )?),
            };
            used.insert(digest, parsed.clone());
            let validity = &parsed.cert.info;
            if validity.not_after < now_secs {
                return Err(MaterialError::Expired {
                    file: c.cert.clone(),
                    not_after: parsed.not_after.clone(),
                });
            }
            if validity.not_before > now_secs {
                return Err(MaterialError::NotYetValid {
                    file: c.cert.clone(),
                    not_before: parsed.not_before.clone(),
                });
            }
            let mut loaded = parsed.cert.clone();
            loaded.info.listener = l.name.clone();
            loaded.info.cert_path = c.cert.clone();
            for name in &c.names {
                if !covers(&loaded.dns_names, &loaded.info.sans, name) {
                    return Err(MaterialError::NameNotCovered {
                        file: c.cert.clone(),
                        name: name.clone(),
                    });
                }
            }
            if l.tls.min_version == crate::config::TlsVersion::Tls12
                && let Some(reason) =
                    crate::suites::tls12_gap(&l.tls.cipher_suites, loaded.certified.key.algorithm())
            {
                return Err(MaterialError::SuitesDoNotFit {
                    file: c.cert.clone(),
                    reason: format!("listener {:?}: {reason}", l.name),
                });
            }
            certs.push(loaded);
        }
        let client_ca = match &l.tls.client_ca {
            None => None,
            Some(path) => {
                let (bytes, _) = read(path, "client CA bundle")?;
                Some(Arc::new(load_client_ca(path, &bytes)?))
            }
        };
        listeners.push(ListenerMaterial { certs, client_ca });
    }
    Ok(Material { listeners, files })
}

/// A key is private when nobody but its owner may read it, or when root owns
/// it and only its group may also read it (PostgreSQL's rule). The second
/// form is how keys are commonly shared with a service without giving it
/// the file: Debian's `ssl-cert` group (0640 root:ssl-cert), and Kubernetes
/// Secret volumes, whose files root owns and whose `defaultMode: 0440` with
/// the pod's `fsGroup` is the only way a non-root container can read them.
fn key_mode_is_private(mode: u32, owner: u32) -> bool {
    mode & 0o077 == 0 || (owner == 0 && mode & 0o037 == 0)
}

fn check_key_permissions(path: &Path) -> Result<(), MaterialError> {
    let meta = std::fs::metadata(path).map_err(|e| MaterialError::Read {
        file: path.to_path_buf(),
        what: "private key",
        reason: io_error(e),
    })?;
    let mode = meta.permissions().mode();
    if meta.is_file() && !key_mode_is_private(mode, meta.uid()) {
        return Err(MaterialError::InsecureKeyPermissions {
            file: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// The PEM labels in `bytes`, in order; never their contents.
fn pem_labels(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("-----BEGIN ")
                .and_then(|r| r.strip_suffix("-----"))
                .map(str::to_string)
        })
        .collect()
}

fn describe_non_pem(bytes: &[u8], want: &str) -> String {
    let labels = pem_labels(bytes);
    if bytes.first() == Some(&0x30) {
        return format!(
            "no PEM {want} found; the file looks like binary DER (convert it with `openssl x509 -inform der` or `openssl pkey -inform der`)"
        );
    }
    if labels.is_empty() {
        return format!("no PEM {want} found (no -----BEGIN line)");
    }
    let found = labels.join(", ");
    if want == "certificate" && labels.iter().any(|l| l.contains("PRIVATE KEY")) {
        return format!("no CERTIFICATE block, found {found} (are cert and key swapped?)");
    }
    if want == "private key" && labels.iter().any(|l| l.contains("CERTIFICATE")) {
        return format!("no PRIVATE KEY block, found {found} (are cert and key swapped?)");
    }
    format!("no PEM {want} found, only {found}")
}

fn pem_error(e: rustls_pki_types::pem::Error, bytes: &[u8], want: &str) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::NoItemsFound => describe_non_pem(bytes, want),
        E::MissingSectionEnd { .. } => {
            "truncated: a -----BEGIN line has no matching -----END line".into()
        }
        E::IllegalSectionStart { .. } => "malformed -----BEGIN line".into(),
        E::Base64Decode(_) => "the base64 body does not decode (damaged or truncated)".into(),
        other => format!("{other}"),
    }
}

fn parse_certs(
    path: &Path,
    bytes: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(MaterialError::Empty {
            file: path.to_path_buf(),
            what,
        });
    }
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(bytes) {
        let cert = item.map_err(|e| MaterialError::NotPem {
            file: path.to_path_buf(),
            what,
            reason: pem_error(e, bytes, "certificate"),
        })?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(MaterialError::NotPem {
            file: path.to_path_buf(),
            what,
            reason: describe_non_pem(bytes, "certificate"),
        });
    }
    reject_unbalanced(path, bytes, what)?;
    Ok(certs)
}

/// The PEM parsers stop at the first item they want and skip sections they
/// do not know; a file that also has a cut-off section was cut short (or
/// half written) and must still be refused, so count BEGIN/END lines.
fn reject_unbalanced(path: &Path, bytes: &[u8], what: &'static str) -> Result<(), MaterialError> {
    let text = String::from_utf8_lossy(bytes);
    let begins = text.matches("-----BEGIN ").count();
    let ends = text.matches("-----END ").count();
    if begins != ends {
        return Err(MaterialError::NotPem {
            file: path.to_path_buf(),
            what,
            reason: "truncated: a -----BEGIN line has no matching -----END line".into(),
        });
    }
    Ok(())
}

fn format_time(t: &ASN1Time) -> String {
    t.to_rfc2822().unwrap_or_else(|_| t.timestamp().to_string())
}

/// Everything about a pair that its bytes decide (see [`PairCache`]).
fn load_pair(
    cert_path: &Path,
    cert_bytes: &[u8],
    key_path: &Path,
    key_bytes: &[u8],
    provider: &CryptoProvider,
) -> Result<Parsed, MaterialError> {
    let chain = parse_certs(cert_path, cert_bytes, "certificate")?;

    // Parse every certificate of the chain; the leaf gets the full checks.
    let mut parsed = Vec::new();
    for (index, der) in chain.iter().enumerate() {
        let (_, cert) =
            X509Certificate::from_der(der.as_ref()).map_err(|e| MaterialError::BadCertificate {
                file: cert_path.to_path_buf(),
                index,
                reason: e.to_string(),
            })?;
        parsed.push(cert);
    }
    let leaf = &parsed[0];
    // Before the key is loaded: the crypto provider refuses short RSA keys
    // with an opaque parse error, so name the real problem first.
    check_rsa_strength(cert_path, leaf)?;

    if key_bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(MaterialError::Empty {
            file: key_path.to_path_buf(),
            what: "private key",
        });
    }
    let labels = pem_labels(key_bytes);
    let key_text = String::from_utf8_lossy(key_bytes);
    if labels.iter().any(|l| l == "ENCRYPTED PRIVATE KEY")
        || key_text.contains("Proc-Type: 4,ENCRYPTED")
    {
        return Err(MaterialError::EncryptedKey {
            file: key_path.to_path_buf(),
        });
    }
    reject_unbalanced(key_path, key_bytes, "private key")?;
    let key = PrivateKeyDer::from_pem_slice(key_bytes).map_err(|e| MaterialError::NotPem {
        file: key_path.to_path_buf(),
        what: "private key",
        reason: pem_error(e, key_bytes, "private key"),
    })?;
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| MaterialError::UnsupportedKey {
                file: key_path.to_path_buf(),
                reason: e.to_string(),
            })?;

    let certified = CertifiedKey::new(chain.clone(), signing_key.clone());
    if certified.keys_match().is_err() {
        // "Unknown" is a mismatch too: we cannot prove the pair belongs together.
        for (i, der) in chain.iter().enumerate().skip(1) {
            let alt = CertifiedKey::new(vec![der.clone()], signing_key.clone());
            if alt.keys_match().is_ok() {
                return Err(MaterialError::ChainOrder {
                    file: cert_path.to_path_buf(),
                    reason: format!(
                        "the private key belongs to certificate #{} of the file; the leaf must come first",
                        i + 1
                    ),
                });
            }
        }
        return Err(MaterialError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        });
    }
    for i in 0..parsed.len().saturating_sub(1) {
        if parsed[i].issuer().as_raw() != parsed[i + 1].subject().as_raw() {
            return Err(MaterialError::ChainOrder {
                file: cert_path.to_path_buf(),
                reason: format!(
                    "certificate #{} was issued by {:?} but certificate #{} is {:?}; each certificate must be followed by its issuer",
                    i + 1,
                    parsed[i].issuer().to_string(),
                    i + 2,
                    parsed[i + 1].subject().to_string()
                ),
            });
        }
    }

    if let Ok(Some(bc)) = leaf.basic_constraints()
        && bc.value.ca
    {
        return Err(MaterialError::CaAsLeaf {
            file: cert_path.to_path_buf(),
        });
    }
    let validity = leaf.validity();

    let mut sans = Vec::new();
    let mut dns_names = Vec::new();
    if let Ok(Some(ext)) = leaf.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => {
                    sans.push(d.to_string());
                    dns_names.push(d.to_ascii_lowercase());
                }
                GeneralName::IPAddress(ip) => {
                    let s = match ip.len() {
                        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap_or([0; 4]))
                            .to_string(),
                        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap_or([0; 16]))
                            .to_string(),
                        _ => continue,
                    };
                    sans.push(s);
                }
                _ => {}
            }
        }
    }

    let info = CertInfo {
        // Set by `load_pairs`: the same pair may serve several listeners.
        listener: String::new(),
        cert_path: cert_path.to_path_buf(),
        subject: leaf.subject().to_string(),
        sans,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        fingerprint: hex::encode(sha256(chain[0].as_ref())),
    };
    Ok(Parsed {
        cert: LoadedCert {
            certified: Arc::new(certified),
            info,
            dns_names,
        },
        not_before: format_time(&validity.not_before),
        not_after: format_time(&validity.not_after),
    })
}

fn check_rsa_strength(cert_path: &Path, leaf: &X509Certificate<'_>) -> Result<(), MaterialError> {
    if let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = leaf.public_key().parsed() {
        let bits = rsa.key_size();
        if bits < MIN_RSA_BITS {
            return Err(MaterialError::WeakKey {
                file: cert_path.to_path_buf(),
                bits,
            });
        }
    }
    Ok(())
}

/// Whether a certificate with these names serves `name` (exact, or a
/// single-label wildcard; IP literals match IP SANs).
pub fn covers(dns_names: &[String], sans: &[String], name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if sans.iter().any(|s| s.eq_ignore_ascii_case(&name)) {
        return true;
    }
    dns_names.iter().any(|d| {
        d == &name
            || d.strip_prefix("*.").is_some_and(|suffix| {
                name.split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
            })
    })
}

fn load_client_ca(path: &Path, bytes: &[u8]) -> Result<RootCertStore, MaterialError> {
    let certs = parse_certs(path, bytes, "client CA bundle").map_err(|e| match e {
        MaterialError::NotPem { file, reason, .. } => MaterialError::ClientCa { file, reason },
        other => other,
    })?;
    let mut store = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        store.add(cert).map_err(|e| MaterialError::ClientCa {
            file: path.to_path_buf(),
            reason: format!("certificate #{} is not a usable CA: {e}", i + 1),
        })?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration of listeners `web` and `api` serving `a.pem` from
    /// `dir`, and the provider.
    fn site(dir: &Path) -> (Config, CryptoProvider) {
        let yaml = r#"listeners:
  - name: web
    bind: "127.0.0.1:1"
    backend: "127.0.0.1:2"
    tls:
      certificates:
        - cert: a.pem
          key: a.key
  - name: api
    bind: "127.0.0.1:3"
    backend: "127.0.0.1:2"
    tls:
      certificates:
        - cert: a.pem
          key: a.key
          names: [a.example]
"#;
        let path = dir.join("stayup.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let config = Config::parse(&path, yaml.as_bytes()).expect("config");
        (config, rustls::crypto::aws_lc_rs::default_provider())
    }

    fn issue(dir: &Path, ca: &crate::pki::Ca, name: &str) {
        ca.leaf(&crate::pki::LeafSpec::server(&[name]))
            .expect("leaf")
            .write(&dir.join("a.pem"), &dir.join("a.key"))
            .expect("write pair");
    }

    #[test]
    fn a_reload_reuses_unchanged_pairs_and_still_checks_the_clock_and_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = crate::pki::Ca::new("cache test CA").expect("CA");
        issue(dir.path(), &ca, "a.example");
        let (config, provider) = site(dir.path());
        let cache = PairCache::default();
        let now = SystemTime::now();
        let first = load_with(&config, &provider, now, &cache).expect("first load");
        let cert = |m: &Material, l: usize| m.listeners[l].certs[0].clone();
        // One pair in two listeners: parsed once, each with its own listener.
        assert!(Arc::ptr_eq(
            &cert(&first, 0).certified,
            &cert(&first, 1).certified
        ));
        assert_eq!(cert(&first, 1).info.listener, "api");

        let again = load_with(&config, &provider, now, &cache).expect("second load");
        assert!(Arc::ptr_eq(
            &cert(&first, 0).certified,
            &cert(&again, 0).certified
        ));
        assert_eq!(cert(&again, 0).info.listener, "web");

        // The same bytes, later than they are valid: expired all the same.
        let later = now + std::time::Duration::from_secs(10 * 365 * 86400);
        let err = load_with(&config, &provider, later, &cache).expect_err("expired");
        assert!(matches!(err, MaterialError::Expired { .. }), "{err}");

        // New bytes under the same names: parsed again, and the names the
        // configuration asks for are checked against them.
        issue(dir.path(), &ca, "b.example");
        let err = load_with(&config, &provider, now, &cache).expect_err("names");
        assert!(matches!(err, MaterialError::NameNotCovered { .. }), "{err}");
        issue(dir.path(), &ca, "a.example");
        let fresh = load_with(&config, &provider, now, &cache).expect("third load");
        assert!(!Arc::ptr_eq(
            &cert(&first, 0).certified,
            &cert(&fresh, 0).certified
        ));
        // Only the pairs of the last load are kept.
        assert_eq!(cache.0.lock().expect("cache").len(), 1);
    }

    #[test]
    fn a_key_is_private_to_its_owner_or_to_root_and_its_group() {
        for (mode, owner, private) in [
            (0o600, 1000, true),
            (0o400, 1000, true),
            (0o640, 1000, false),
            (0o604, 1000, false),
            (0o600, 0, true),
            (0o640, 0, true),
            (0o440, 0, true),
            (0o660, 0, false),
            (0o650, 0, false),
            (0o644, 0, false),
            (0o604, 0, false),
        ] {
            assert_eq!(
                key_mode_is_private(0o100000 | mode, owner),
                private,
                "mode {mode:o}, owner {owner}"
            );
        }
    }
}
