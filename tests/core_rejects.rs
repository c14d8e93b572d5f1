//! Every bad input a reload can meet, delivered to a running daemon followed
//! by SIGHUP: the reload is rejected with its own class and a message naming
//! the file, the old certificate keeps being served, an open connection keeps
//! streaming, and `stayup check` on the same files exits 1 with the same
//! message.

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use stayup::pki::{LeafSpec, Pem};

/// A daemon serving `certs/good.*` with one connection streaming through it.
struct Live {
    site: Site,
    backend: EchoBackend,
    bind: SocketAddr,
    good: Pem,
    d: Daemon,
    streamer: Streamer,
}

async fn live() -> Live {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let good = site.cert("good", &["localhost"]);
    let bind = free_addr();
    site.publish(&simple_config(bind, backend.addr, "good"));
    let d = Daemon::start(&site.config).await;
    let streamer = streamer_at(bind, "localhost", site.client()).await;
    Live {
        site,
        backend,
        bind,
        good,
        d,
        streamer,
    }
}

impl Live {
    /// A configuration like the live one but serving `certs/<name>.*`.
    fn config_with(&self, name: &str) -> String {
        simple_config(self.bind, self.backend.addr, name)
    }

    /// A new certificate for `localhost` from the site's CA.
    fn leaf(&self) -> Pem {
        self.site
            .ca
            .leaf(&LeafSpec::server(&["localhost"]))
            .expect("leaf")
    }

    /// Writes `certs/<name>.pem` and `.key` with the given contents, and
    /// returns their paths and a configuration serving them.
    fn pair(
        &self,
        name: &str,
        cert: impl AsRef<[u8]>,
        key: impl AsRef<[u8]>,
    ) -> ([PathBuf; 2], String) {
        (
            write_pair(&self.site, name, cert, key),
            self.config_with(name),
        )
    }

    /// Publishes `yaml`, sends SIGHUP and checks everything a rejection
    /// promises. Returns the reason.
    async fn expect_rejected(&mut self, yaml: &str, class: &str, names: &[&Path]) -> String {
        self.site.publish(yaml);
        let line = self.d.reload().await;
        assert!(line.contains("reload rejected"), "{line}");
        assert!(line.contains("WARN") || line.contains("ERROR"), "{line}");
        assert!(
            line.contains(&format!("class={class} "))
                || line.contains(&format!("class=\"{class}\" ")),
            "expected class {class}: {line}"
        );
        assert!(line.contains("generation=1 "), "{line}");
        let reason = rejection_reason(&line).to_string();
        for file in names {
            let file = file.to_str().expect("utf-8 path");
            assert!(
                reason.contains(file),
                "reason does not name {file}: {reason}"
            );
        }
        assert_eq!(
            fingerprint_at(self.bind, "localhost", self.site.client()).await,
            self.good.fingerprint(),
            "the old certificate is no longer served"
        );
        self.streamer.advance(8 * 1024).await;

        let (code, out, err) = check(&self.site.config);
        assert_eq!(code, 1, "stayup check accepted it:\n{out}\n{err}");
        assert_eq!(err.trim(), reason, "stayup check gave another reason");
        assert!(out.contains("invalid"), "{out}");
        assert!(!err.contains("panicked"), "{err}");
        reason
    }

    async fn finish(self) {
        let Live { d, streamer, .. } = self;
        let verified = streamer.finish().await.expect("stream intact");
        assert!(verified > 0);
        assert!(d.stop().await.success());
    }
}

/// Writes a private key file the way a key must be written (mode 0600), so
/// the permission check does not hide the error under test.
fn write_key(site: &Site, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let p = site.path(rel);
    stayup::pki::write_private(&p, bytes.as_ref()).expect("write key");
    p
}

/// Writes `certs/<name>.pem` and `certs/<name>.key` with the given contents.
fn write_pair(
    site: &Site,
    name: &str,
    cert: impl AsRef<[u8]>,
    key: impl AsRef<[u8]>,
) -> [PathBuf; 2] {
    let c = site.write(&format!("certs/{name}.pem"), cert);
    let k = write_key(site, &format!("certs/{name}.key"), key);
    [c, k]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_not_matching_its_certificate() {
    let mut l = live().await;
    let a = l.leaf();
    let b = l.leaf();
    let ([cert, key], yaml) = l.pair("mismatch", &a.cert, &b.key);
    let reason = l
        .expect_rejected(&yaml, "key-mismatch", &[&key, &cert])
        .await;
    assert!(reason.contains("does not match"), "{reason}");
    l.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_files() {
    let mut l = live().await;
    let p = l.leaf();

    let ([cert, _], yaml) = l.pair("empty-cert", "", &p.key);
    let reason = l.expect_rejected(&yaml, "file-empty", &[&cert]).await;
    assert!(reason.contains("empty"), "{reason}");

    let ([_, key], yaml) = l.pair("empty-key", &p.cert, "\n  \n");
    l.expect_rejected(&yaml, "file-empty", &[&key]).await;
    l.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_pem() {
    let mut l = live().await;
    let p = l.leaf();

    let half = &p.cert[..p.cert.len() / 2];
    let ([cert, _], yaml) = l.pair("short-cert", half, &p.key);
    let reason = l.expect_rejected(&yaml, "not-pem", &[&cert]).await;
    assert!(reason.contains("truncated"), "{reason}");

    // A complete leaf followed by half of the next certificate.
    let chain = format!(
        "{}{}",
        p.cert,
        &l.site.ca.pem.cert[..l.site.ca.pem.cert.len() / 2]
    );
    let ([cert, _], yaml) = l.pair("short-chain", chain, &p.key);
    let reason = l.expect_rejected(&yaml, "not-pem", &[&cert]).await;
    assert!(reason.contains("truncated"), "{reason}");

    let half = &p.key[..p.key.len() / 2];
    let ([_, key], yaml) = l.pair("short-key", &p.cert, half);
    l.expect_rejected(&yaml, "not-pem", &[&key]).await;

    // A complete key followed by a cut-off block: the file was cut short.
    let cut = format!("{}{}", p.key, half);
    let ([_, key], yaml) = l.pair("cut-key", &p.cert, cut);
    let reason = l.expect_rejected(&yaml, "not-pem", &[&key]).await;
    assert!(reason.contains("truncated"), "{reason}");
    l.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_pem() {
    let mut l = live().await;
    let p = l.leaf();

    // The certificate as binary DER.
    let ([cert, _], yaml) = l.pair("der-cert", &p.der, &p.key);
    let reason = l.expect_rejected(&yaml, "not-pem", &[&cert]).await;
    assert!(reason.contains("DER"), "{reason}");

    // Plain text.
    let ([cert, _], yaml) = l.pair("text-cert", "this is not a certificate\n", &p.key);
    l.expect_rejected(&yaml, "not-pem", &[&cert]).await;

    // Certificate and key swapped.
    let ([cert, _], yaml) = l.pair("swapped", &p.key, &p.cert);
    let reason = l.expect_rejected(&yaml, "not-pem", &[&cert]).await;
    assert!(reason.contains("swapped"), "{reason}");

    let ([_, key], yaml) = l.pair("text-key", &p.cert, "hello\n");
    l.expect_rejected(&yaml, "not-pem", &[&key]).await;
    l.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_key() {
    let mut l = live().await;
    let p = l.leaf();

    // What `openssl pkcs8 -topk8 -v2 aes-256-cbc` writes.
    let plain = write_key(&l.site, "certs/plain.key", &p.key);
    let out = std::process::Command::new("openssl")
        .args([
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:x",
            "-in",
        ])
        .arg(&plain)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let encrypted = String::from_utf8(out.stdout).expect("PEM");
    assert!(
        encrypted.contains("BEGIN ENCRYPTED PRIVATE KEY"),
        "{encrypted}"
    );
    let ([_, key], yaml) = l.pair("encrypted", &p.cert, &encrypted);
    let reason = l.expect_rejected(&yaml, "encrypted-key", &[&key]).await;
    assert!(reason.contains("encrypted"), "{reason}");

    // The traditional OpenSSL form, with Proc-Type and DEK-Info headers.
    let legacy = format!(
        "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00112233445566778899AABBCCDDEEFF\n\n{}-----END EC PRIVATE KEY-----\n",
        "MHcCAQEEIB3zZ3tJ2m7vE1bq8n1QYQm3x6W5E2mG7Q0b9kD7v9uYoAoGCCqGSM49\n"
    );
    let ([_, key], yaml) = l.pair("legacy", &p.cert, legacy);
    l.expect_rejected(&yaml, "encrypted-key", &[&key]).await;
    l.finish().await;
}

fn spec_between(not_before: SystemTime, not_after: SystemTime) -> LeafSpec {
    let mut spec = LeafSpec::server(&["localhost"]);
    spec.not_before = not_before;
    spec.not_after = not_after;
    spec
}

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expired() {
    let mut l = live().await;
    let now = SystemTime::now();
    l.site
        .cert_with("expired", &spec_between(now - 30 * DAY, now - DAY));
    let yaml = l.config_with("expired");
    let cert = l.site.path("certs/expired.pem");
    let reason = l.expect_rejected(&yaml, "expired", &[&cert]).await;
    assert!(reason.contains("expired"), "{reason}");
    l.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_not_yet_valid() {
    let mut l = live().await;
    let now = SystemTime::now();
    l.site
        .cert_with("future", &spec_between(now + DAY, now + 30 * DAY));
    let yaml = l.config_with("future");
    let cert = l.site.path("certs/future.pem");
    let reason = l.expect_rejected(&yaml, "not-yet-valid", &[&cert]).await;
    assert!(reason.contains("not valid yet"), "{reason}");
    l.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_with_the_issuer_first() {
    let mut l = live().await;
    let p = l.leaf();
    let chain = format!("{}{}", l.site.ca.pem.cert, p.cert);
    let ([cert, _], yaml) = l.pair("reversed", chain, &p.key);
    let reason = l.expect_rejected(&yaml, "chain-order", &[&cert]).await;
    assert!(reason.contains("leaf must come first"), "{reason}");
    l.finish().await;
}

fn with_client_ca(yaml: &str, rel: &str) -> String {
    yaml.replacen(
        "      certificates:\n",
        &format!("      client_ca: {rel}\n      certificates:\n"),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_client_ca_bundle() {
    let mut l = live().await;
    let base = l.config_with("good");

    let ca = l.site.write("ca/garbage.pem", "clients: everybody\n");
    let yaml = with_client_ca(&base, "ca/garbage.pem");
    let reason = l.expect_rejected(&yaml, "client-ca", &[&ca]).await;
    assert!(reason.contains("client CA"), "{reason}");

    let pem = &l.site.ca.pem.cert;
    let ca = l.site.write("ca/short.pem", &pem[..pem.len() - 40]);
    let yaml = with_client_ca(&base, "ca/short.pem");
    l.expect_rejected(&yaml, "client-ca", &[&ca]).await;

    // Well-formed PEM whose body is not a certificate.
    let ca = l.site.write(
        "ca/not-a-cert.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    );
    let yaml = with_client_ca(&base, "ca/not-a-cert.pem");
    l.expect_rejected(&yaml, "client-ca", &[&ca]).await;
    l.finish().await;
}

fn two_listeners(a: (&str, SocketAddr), b: (&str, SocketAddr), backend: &str) -> String {
    format!(
        "listeners:\n{}{}reload:\n  watch: false\n",
        listener_yaml(a.0, a.1, "127.0.0.1:9".parse().unwrap(), &["good"])
            .replace("127.0.0.1:9", backend),
        listener_yaml(b.0, b.1, "127.0.0.1:9".parse().unwrap(), &["good"])
            .replace("127.0.0.1:9", backend),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_listeners_with_one_name() {
    let mut l = live().await;
    let backend = l.backend.addr.to_string();
    let yaml = two_listeners(("web", l.bind), ("web", free_addr()), &backend);
    let config = l.site.config.clone();
    let reason = l.expect_rejected(&yaml, "config-invalid", &[&config]).await;
    assert!(reason.contains("used twice"), "{reason}");
    // The place: the second listener's name, line 9.
    assert!(
        reason.contains(&format!("{}:9:", config.display())),
        "{reason}"
    );
    l.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_listeners_with_one_bind_address() {
    let mut l = live().await;
    let backend = l.backend.addr.to_string();
    let yaml = two_listeners(("web", l.bind), ("other", l.bind), &backend);
    let config = l.site.config.clone();
    let reason = l.expect_rejected(&yaml, "config-invalid", &[&config]).await;
    assert!(reason.contains("used by another listener"), "{reason}");
    assert!(
        reason.contains(&format!("{}:10:", config.display())),
        "{reason}"
    );
    l.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_backend_address() {
    let mut l = live().await;
    let config = l.site.config.clone();
    for bad in [
        "not an address",
        "127.0.0.1:99999",
        "127.0.0.1",
        "[::1:80",
        ":80",
    ] {
        let yaml = l
            .config_with("good")
            .replace(&l.backend.addr.to_string(), bad);
        let reason = l.expect_rejected(&yaml, "config-invalid", &[&config]).await;
        assert!(reason.contains("backend"), "{bad}: {reason}");
        assert!(
            reason.contains(&format!("{}:4:", config.display())),
            "{reason}"
        );
    }
    l.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_bind_address_that_cannot_be_bound() {
    let mut l = live().await;
    let next = l.site.cert("next", &["localhost"]);
    // Another socket holds this address for the whole rejection.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = held.local_addr().expect("addr");
    let fine = free_addr();
    let yaml = format!(
        "listeners:\n{}{}{}reload:\n  watch: false\n",
        listener_yaml("web", l.bind, l.backend.addr, &["next"]),
        listener_yaml("fine", fine, l.backend.addr, &["next"]),
        listener_yaml("extra", taken, l.backend.addr, &["next"]),
    );
    let config = l.site.config.clone();
    l.site.publish(&yaml);
    let line = l.d.reload().await;
    assert!(line.contains("reload rejected"), "{line}");
    assert!(
        line.contains("class=bind ") || line.contains("class=\"bind\" "),
        "{line}"
    );
    let reason = rejection_reason(&line).to_string();
    assert!(reason.contains(&taken.to_string()), "{reason}");
    assert!(reason.contains("\"extra\""), "{reason}");
    assert!(
        reason.contains(config.to_str().unwrap()),
        "the reason does not name the configuration file: {reason}"
    );
    // Rejected whole: the new certificate is not served, and the address
    // that could be bound was released again.
    assert_eq!(
        fingerprint_at(l.bind, "localhost", l.site.client()).await,
        l.good.fingerprint()
    );
    wait_refused(fine).await;
    assert!(
        !l.d.output().contains(&format!("addr={fine}")),
        "{fine} started listening for a rejected generation:\n{}",
        l.d.output()
    );
    l.streamer.advance(8 * 1024).await;
    // `stayup check` does not bind, so for it this configuration is valid.
    let (code, out, err) = check(&config);
    assert_eq!(code, 0, "{out}\n{err}");

    // Once the address is free, the same files commit.
    drop(held);
    let line = l.d.reload().await;
    assert!(line.contains("reload committed"), "{line}");
    assert_eq!(
        fingerprint_at(taken, "localhost", l.site.client()).await,
        next.fingerprint()
    );
    assert_eq!(
        fingerprint_at(fine, "localhost", l.site.client()).await,
        next.fingerprint()
    );
    assert_eq!(
        fingerprint_at(l.bind, "localhost", l.site.client()).await,
        next.fingerprint()
    );
    l.streamer.advance(8 * 1024).await;
    l.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_truncated_and_binary_configuration() {
    let mut l = live().await;
    let config = l.site.config.clone();

    let reason = l.expect_rejected("", "config-empty", &[&config]).await;
    assert!(reason.contains("empty"), "{reason}");
    l.expect_rejected("# nothing here\n\n", "config-empty", &[&config])
        .await;

    // Cut off in the middle of the listener.
    let full = l.config_with("good");
    let cut = &full[..full.find("tls:").expect("tls")];
    let reason = l.expect_rejected(cut, "config-syntax", &[&config]).await;
    assert!(reason.contains("tls"), "{reason}");

    // A certificate where the configuration should be.
    let pem = l.good.cert.clone();
    l.expect_rejected(&pem, "config-syntax", &[&config]).await;
    l.finish().await;
}
