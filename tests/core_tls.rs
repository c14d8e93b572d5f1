//! TLS behaviour through the real daemon: certificate selection by SNI,
//! client-certificate authentication, and session resumption across a
//! reload for TLS 1.3 and TLS 1.2 (but never into a listener, or past a
//! client CA change, whose client authentication the session did not pass,
//! and not at all where `tls.session_resumption` is off).

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
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

    let mut first = connected(bind, "localhost", client.clone()).await;
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

    let mut second = connected(bind, "localhost", client.clone()).await;
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

/// Connects, reads the backend's tag (which also takes in any tickets sent
/// after the handshake) and says how the handshake went.
async fn handshake_kind(bind: SocketAddr, client: Arc<rustls::ClientConfig>) -> HandshakeKind {
    let mut s = connected(bind, "localhost", client).await;
    assert_eq!(read_tag(&mut s).await, "one");
    s.get_ref().1.handshake_kind().expect("handshake done")
}

async fn resumption_turned_off_and_on(version: &'static SupportedProtocolVersion) {
    let site = Site::new();
    let one = EchoBackend::tagged("one").await;
    site.cert("a", &["localhost"]);
    let bind = free_addr();
    let on = simple_config(bind, one.addr, "a");
    let off = on.replace("    tls:\n", "    tls:\n      session_resumption: false\n");
    assert_ne!(on, off);
    site.publish(&on);
    let mut d = Daemon::start(&site.config).await;
    let client = resuming_client(&site, version);
    assert_eq!(
        handshake_kind(bind, client.clone()).await,
        HandshakeKind::Full
    );

    // Turned off by a reload: the session the client holds is not honoured,
    // and no new one is handed out.
    site.publish(&off);
    let line = d.reload().await;
    assert!(line.contains("reload committed generation=2"), "{line}");
    assert!(line.contains("listener-settings-changed"), "{line}");
    for attempt in 0..3 {
        assert_eq!(
            handshake_kind(bind, client.clone()).await,
            HandshakeKind::Full,
            "{:?}: resumed with resumption off (attempt {attempt})",
            version.version
        );
    }

    // Turned on again: the next handshake hands out a session (or, for TLS
    // 1.2, may resume the one from before, still in the shared cache), and
    // the one after it resumes.
    site.publish(&on);
    let line = d.reload().await;
    assert!(line.contains("reload committed generation=3"), "{line}");
    handshake_kind(bind, client.clone()).await;
    assert_eq!(
        handshake_kind(bind, client.clone()).await,
        HandshakeKind::Resumed
    );
    assert!(d.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_resumption_can_be_turned_off_by_a_reload() {
    resumption_turned_off_and_on(&rustls::version::TLS13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_resumption_can_be_turned_off_by_a_reload() {
    resumption_turned_off_and_on(&rustls::version::TLS12).await;
}

/// A client with its own resumption store, presenting `auth`.
fn resuming_client_auth(
    site: &Site,
    version: &'static SupportedProtocolVersion,
    auth: &stayup::pki::Pem,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(site.ca.pem.cert.as_bytes()) {
        roots.add(c.expect("CA pem")).expect("add root");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(auth.cert.as_bytes())
        .collect::<Result<_, _>>()
        .expect("client chain");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(auth.key.as_bytes()).expect("key");
    let mut cfg = rustls::ClientConfig::builder_with_protocol_versions(&[version])
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth");
    cfg.resumption = Resumption::store(Arc::new(ClientSessionMemoryCache::new(64)));
    Arc::new(cfg)
}

/// A session from a listener without client authentication must not let a
/// client into a listener that requires it (the session store and ticket
/// keys are shared by every listener and generation).
async fn resumption_does_not_bypass_client_auth(version: &'static SupportedProtocolVersion) {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let clients = Ca::new("stayup test client CA").expect("CA");
    site.write("ca/clients.pem", &clients.pem.cert);
    let (public, private) = (free_addr(), free_addr());
    site.publish(&format!(
        "listeners:\n{}{}reload:\n  watch: false\n",
        listener_yaml("public", public, backend.addr, &["a"]),
        listener_yaml("private", private, backend.addr, &["a"]).replacen(
            "      certificates:\n",
            "      client_ca: ca/clients.pem\n      certificates:\n",
            1
        ),
    ));
    let d = Daemon::start(&site.config).await;
    let client = resuming_client(&site, version);
    let mut s = connected(public, "localhost", client.clone()).await;
    echo_round_trip(&mut s, b"public").await;
    let mut again = connected(public, "localhost", client.clone()).await;
    assert_eq!(
        again.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed)
    );
    echo_round_trip(&mut again, b"public").await;
    drop((s, again));
    assert_refused(private, client).await;
    assert_eq!(backend.accepted.load(Ordering::Relaxed), 2);
    assert!(d.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_resumption_does_not_bypass_client_auth() {
    resumption_does_not_bypass_client_auth(&rustls::version::TLS13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_resumption_does_not_bypass_client_auth() {
    resumption_does_not_bypass_client_auth(&rustls::version::TLS12).await;
}

/// After a reload replaces the client CA, a client of the old CA cannot get
/// in by resuming its session; a reload that keeps the client CA keeps
/// resumption working for authenticated clients.
async fn client_ca_change_ends_resumption(version: &'static SupportedProtocolVersion) {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    site.cert("b", &["localhost"]);
    let old_ca = Ca::new("old client CA").expect("CA");
    let new_ca = Ca::new("new client CA").expect("CA");
    site.write("ca/old.pem", &old_ca.pem.cert);
    site.write("ca/new.pem", &new_ca.pem.cert);
    let mut spec = LeafSpec::server(&["client.example.test"]);
    spec.client = true;
    let member = old_ca.leaf(&spec).expect("client cert");
    let bind = free_addr();
    let config = |cert: &str, ca: &str| {
        simple_config(bind, backend.addr, cert).replacen(
            "      certificates:\n",
            &format!("      client_ca: ca/{ca}.pem\n      certificates:\n"),
            1,
        )
    };
    site.publish(&config("a", "old"));
    let mut d = Daemon::start(&site.config).await;
    let client = resuming_client_auth(&site, version, &member);
    let mut s = connected(bind, "localhost", client.clone()).await;
    echo_round_trip(&mut s, b"member").await;

    // Only the server certificate changes: the session resumes.
    site.publish(&config("b", "old"));
    assert!(d.reload().await.contains("reload committed"));
    let mut resumed = connected(bind, "localhost", client.clone()).await;
    assert_eq!(
        resumed.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed)
    );
    echo_round_trip(&mut resumed, b"member").await;

    // The client CA changes: the old CA's client is refused, resumption or not.
    site.publish(&config("b", "new"));
    let line = d.reload().await;
    assert!(line.contains("client-ca-changed"), "{line}");
    assert_refused(bind, client).await;
    // The connections made before the change keep running.
    echo_round_trip(&mut s, b"still").await;
    echo_round_trip(&mut resumed, b"still").await;
    drop((s, resumed));
    assert_eq!(backend.accepted.load(Ordering::Relaxed), 2);
    assert!(d.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_client_ca_change_ends_resumption() {
    client_ca_change_ends_resumption(&rustls::version::TLS13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_client_ca_change_ends_resumption() {
    client_ca_change_ends_resumption(&rustls::version::TLS12).await;
}

/// `tls.min_version: "1.3"` turns TLS 1.2 clients away with a
/// protocol_version alert from the reload on, while a connection a TLS 1.2
/// client opened before it keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_clients_are_refused_once_min_version_is_1_3() {
    let (site, backend, bind, mut d) =
        serving(|bind, backend| simple_config(bind, backend, "a")).await;
    let tls12 = resuming_client(&site, &rustls::version::TLS12);
    let mut old = connected(bind, "localhost", tls12.clone()).await;
    echo_round_trip(&mut old, b"1.2").await;
    assert_eq!(
        old.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    site.publish(&simple_config(bind, backend.addr, "a").replacen(
        "      certificates:\n",
        "      min_version: \"1.3\"\n      certificates:\n",
        1,
    ));
    let line = d.reload().await;
    assert!(line.contains("reload committed"), "{line}");
    assert!(line.contains("listener-settings-changed"), "{line}");
    let refused = tokio::time::timeout(WAIT, connect(bind, "localhost", tls12))
        .await
        .expect("connect timed out");
    match refused {
        Ok(_) => panic!("a TLS 1.2 client was served by a TLS 1.3-only listener"),
        Err(e) => assert!(e.to_string().contains("ProtocolVersion"), "{e}"),
    }
    let tls13 = resuming_client(&site, &rustls::version::TLS13);
    let mut new = connected(bind, "localhost", tls13).await;
    echo_round_trip(&mut new, b"1.3").await;
    echo_round_trip(&mut old, b"still 1.2").await;

    let status = status_json(&site.config).await;
    assert_eq!(
        status["listeners"][0]["min_tls_version"], "TLSv1.3",
        "{status}"
    );
    let (code, out, err) = stayup(&["status", "--config", site.config.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(TLS 1.3 only)"), "{out}");
    drop((old, new));
    assert!(d.stop().await.success());
}
