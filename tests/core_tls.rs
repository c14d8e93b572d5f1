//! TLS behaviour through the real daemon: certificate selection by SNI,
//! client-certificate authentication, and session resumption across a
//! reload for TLS 1.3 and TLS 1.2.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, HandshakeKind, SignatureScheme, SupportedProtocolVersion};
use stayup::pki::{Ca, LeafSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Accepts any server certificate (the signature over the handshake is
/// still checked), so a test can see which certificate the server chose
/// even when it does not cover the name asked for.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn any_certificate_client(sni: bool) -> Arc<rustls::ClientConfig> {
    install_provider();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    cfg.enable_sni = sni;
    Arc::new(cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_chosen_by_sni_with_the_first_as_default() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let default = site.cert("default", &["default.example.test"]);
    let alpha = site.cert("alpha", &["alpha.example.test"]);
    let wild = site.cert("wild", &["*.example.test"]);
    let bind = free_addr();
    site.publish(&format!(
        "listeners:\n{}reload:\n  watch: false\n",
        listener_yaml("web", bind, backend.addr, &["default", "alpha", "wild"])
    ));
    let d = Daemon::start(&site.config).await;

    // Names the certificates cover, checked by a verifying client.
    for (sni, want, what) in [
        ("default.example.test", &default, "default"),
        ("alpha.example.test", &alpha, "exact"),
        ("Alpha.Example.Test", &alpha, "exact, other case"),
        ("beta.example.test", &wild, "wildcard"),
        ("gamma.example.test", &wild, "wildcard"),
    ] {
        assert_eq!(
            fingerprint_at(bind, sni, site.client()).await,
            want.fingerprint(),
            "{what}: {sni}"
        );
    }

    // Names nothing covers, and no SNI at all, get the first certificate.
    let any = any_certificate_client(true);
    for sni in ["unknown.test", "deep.beta.example.test", "example.test"] {
        assert_eq!(
            fingerprint_at(bind, sni, any.clone()).await,
            default.fingerprint(),
            "unknown name {sni}"
        );
    }
    assert_eq!(
        fingerprint_at(bind, "alpha.example.test", any_certificate_client(false)).await,
        default.fingerprint(),
        "no SNI"
    );
    // An IP address as the server name sends no SNI either.
    assert_eq!(
        fingerprint_at(bind, "127.0.0.1", any.clone()).await,
        default.fingerprint(),
        "IP address"
    );
    assert!(d.stop().await.success());
}

/// Expects the server to refuse the client: either the handshake fails, or
/// (TLS 1.3, where the client finishes first) the first read does.
async fn assert_refused(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) {
    let Ok(mut s) = tokio::time::timeout(WAIT, connect(addr, "localhost", cfg))
        .await
        .expect("connect timed out")
    else {
        return;
    };
    let _ = s.write_all(b"let me in").await;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("read timed out")
    {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("the server answered {n} bytes to an unauthenticated client"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ca_accepts_its_clients_and_refuses_others() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let clients = Ca::new("stayup test client CA").expect("CA");
    let strangers = Ca::new("another CA").expect("CA");
    site.write("ca/clients.pem", &clients.pem.cert);
    let mut spec = LeafSpec::server(&["client.example.test"]);
    spec.client = true;
    let member = clients.leaf(&spec).expect("client cert");
    let stranger = strangers.leaf(&spec).expect("client cert");
    let bind = free_addr();
    site.publish(&simple_config(bind, backend.addr, "a").replacen(
        "      certificates:\n",
        "      client_ca: ca/clients.pem\n      certificates:\n",
        1,
    ));
    let d = Daemon::start(&site.config).await;
    let ca = &site.ca.pem.cert;

    for _ in 0..2 {
        let mut s = tokio::time::timeout(
            WAIT,
            connect(bind, "localhost", client_config(ca, Some(&member))),
        )
        .await
        .expect("connect timed out")
        .expect("a client of the CA connects");
        echo_round_trip(&mut s, b"member").await;
    }
    assert_refused(bind, client_config(ca, None)).await;
    assert_refused(bind, client_config(ca, Some(&stranger))).await;
    // A client presenting the CA's own certificate is not a client either.
    assert_refused(bind, client_config(ca, Some(&site.ca.pem))).await;
    assert_eq!(
        backend.accepted.load(Ordering::Relaxed),
        2,
        "a refused client reached the backend"
    );
    assert!(d.stop().await.success());
}

fn resuming_client(
    site: &Site,
    version: &'static SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    install_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(site.ca.pem.cert.as_bytes()) {
        roots.add(c.expect("CA pem")).expect("add root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_protocol_versions(&[version])
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = Resumption::store(Arc::new(ClientSessionMemoryCache::new(64)));
    Arc::new(cfg)
}

use rustls::pki_types::pem::PemObject;

async fn resumes_across_a_reload(version: &'static SupportedProtocolVersion) {
    let site = Site::new();
    let one = EchoBackend::tagged("one").await;
    let two = EchoBackend::tagged("two").await;
    site.cert("a", &["localhost"]);
    site.cert("b", &["localhost"]);
    let bind = free_addr();
    site.publish(&simple_config(bind, one.addr, "a"));
    let mut d = Daemon::start(&site.config).await;
    let client = resuming_client(&site, version);

    let mut first = tokio::time::timeout(WAIT, connect(bind, "localhost", client.clone()))
        .await
        .expect("connect timed out")
        .expect("connect");
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Full)
    );
    assert_eq!(first.get_ref().1.protocol_version(), Some(version.version));
    // Reading lets the client take in the session tickets sent after the handshake.
    assert_eq!(read_tag(&mut first).await, "one");
    echo_round_trip(&mut first, b"first").await;

    // A new generation with another certificate and another backend.
    site.publish(&simple_config(bind, two.addr, "b"));
    let line = d.reload().await;
    assert!(line.contains("reload committed generation=2"), "{line}");

    let mut second = tokio::time::timeout(WAIT, connect(bind, "localhost", client.clone()))
        .await
        .expect("connect timed out")
        .expect("connect");
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed),
        "{:?}: no resumption across the reload",
        version.version
    );
    assert_eq!(second.get_ref().1.protocol_version(), Some(version.version));
    // The new generation served it.
    assert_eq!(read_tag(&mut second).await, "two");
    echo_round_trip(&mut second, b"second").await;
    echo_round_trip(&mut first, b"first again").await;
    drop((first, second));
    assert!(d.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_session_resumes_across_a_reload() {
    resumes_across_a_reload(&rustls::version::TLS13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_session_resumes_across_a_reload() {
    resumes_across_a_reload(&rustls::version::TLS12).await;
}
