//! Security properties: private key permissions, protocol versions and
//! cipher suites, the control socket's mode, the admin endpoint's default
//! reach, and what a TLS client learns when the backend fails.
//! (That nothing the daemon prints contains key material is checked over
//! the whole bad-input corpus in `reliability_corpus.rs`.)

mod common;
use common::*;

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

fn check(config: &std::path::Path) -> (i32, String) {
    let (code, out, err) = stayup(&["check", "--config", config.to_str().expect("utf8")]);
    (code, format!("{out}{err}"))
}

#[test]
fn key_readable_by_others_or_a_non_root_group_is_refused_unless_allowed() {
    let site = Site::new();
    let pem = site.cert("a", &["localhost"]);
    let key = site.path("certs/a.key");
    let (bind, backend) = (addr(), addr());
    site.publish(&simple_config(bind, backend, "a"));
    let (code, out) = check(&site.config);
    assert_eq!(code, 0, "a 0600 key must pass: {out}");

    let refused = |mode: u32| {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let (code, out) = check(&site.config);
        assert_eq!(code, 1, "mode {mode:o} accepted: {out}");
        assert!(out.contains(&key.display().to_string()), "{out}");
        assert!(out.contains("readable by group or others"), "{out}");
        for line in pem.key.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!out.contains(line), "key material in the message");
        }
    };
    // Others may never read a key, nor may the group write it.
    for mode in [0o604, 0o644, 0o660] {
        refused(mode);
    }
    if std::fs::metadata(&key).expect("stat").uid() == 0 {
        // Root's key that only its group may also read (Debian's ssl-cert
        // group, Kubernetes Secret volumes with defaultMode 0440 and an
        // fsGroup): accepted.
        for mode in [0o640, 0o440] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let (code, out) = check(&site.config);
            assert_eq!(code, 0, "root-owned mode {mode:o} refused: {out}");
        }
        // Give the key to another owner.
        std::os::unix::fs::chown(&key, Some(65534), None).expect("chown");
    }
    // A key root does not own may not be read by its group.
    refused(0o640);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    site.publish(&format!(
        "{}limits:\n  allow_insecure_key_permissions: true\n",
        simple_config(bind, backend, "a")
    ));
    let (code, out) = check(&site.config);
    assert_eq!(
        code, 0,
        "allow_insecure_key_permissions did not allow: {out}"
    );
}

/// Runs `openssl s_client` against `bind` with extra arguments; returns
/// whether a TLS connection was established, and the output.
fn s_client(bind: SocketAddr, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &bind.to_string(),
            "-servername",
            "localhost",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let established =
        out.status.success() && text.contains("Cipher is") && !text.contains("Cipher is (NONE)");
    (established, text)
}

/// A site with certificate "a" for localhost, an echo backend and a free
/// address, for a test that connects with `openssl s_client`.
async fn openssl_site() -> (Site, EchoBackend, SocketAddr) {
    assert!(
        have_program("openssl"),
        "this test needs the openssl command (Debian package openssl)"
    );
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    (site, backend, addr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_minimum_and_no_weak_cipher_suites() {
    let (site, backend, bind) = openssl_site().await;
    site.publish(&simple_config(bind, backend.addr, "a"));
    let d = Daemon::start(&site.config).await;

    // Controls: what must work does.
    let (ok, out) = tokio::task::spawn_blocking(move || s_client(bind, &["-tls1_3"]))
        .await
        .expect("join");
    assert!(ok, "TLS 1.3 refused:\n{out}");
    let (ok, out) = tokio::task::spawn_blocking(move || {
        s_client(
            bind,
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
        )
    })
    .await
    .expect("join");
    assert!(ok, "TLS 1.2 with an AEAD suite refused:\n{out}");

    // Old protocols, offered with everything the client can do.
    for version in ["-tls1_1", "-tls1"] {
        let (ok, out) = tokio::task::spawn_blocking(move || {
            s_client(bind, &[version, "-cipher", "ALL:@SECLEVEL=0"])
        })
        .await
        .expect("join");
        assert!(!ok, "{version} was accepted:\n{out}");
    }
    // Weak TLS 1.2 suites: RSA key exchange, CBC, SHA-1 MACs, 3DES, RC4.
    for suite in [
        "AES128-SHA",
        "AES256-SHA256",
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
        "DES-CBC3-SHA",
        "RC4-SHA",
    ] {
        let (ok, out) = tokio::task::spawn_blocking(move || {
            s_client(
                bind,
                &["-tls1_2", "-cipher", &format!("{suite}:@SECLEVEL=0")],
            )
        })
        .await
        .expect("join");
        assert!(!ok, "weak suite {suite} was accepted:\n{out}");
    }
    assert!(d.stop().await.success());
}

/// The suite a connection gets: AES-128-GCM first whatever the client's
/// order (OpenSSL's clients list AES-256-GCM-SHA384 first), but a client
/// whose first choice is ChaCha20 gets its own order; the connection log
/// names the suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cipher_suite_is_aes128_first_unless_the_client_puts_chacha20_first() {
    let (site, backend, bind) = openssl_site().await;
    site.publish(&format!(
        "{}log:\n  connections: true\n",
        simple_config(bind, backend.addr, "a")
    ));
    let d = Daemon::start(&site.config).await;

    let cases: [(&[&str], &str); 7] = [
        // OpenSSL's own order: TLS_AES_256_GCM_SHA384 first.
        (&["-tls1_3"], "TLS_AES_128_GCM_SHA256"),
        (
            &["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"],
            "TLS_AES_256_GCM_SHA384",
        ),
        (
            &[
                "-tls1_3",
                "-ciphersuites",
                "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
            ],
            "TLS_AES_256_GCM_SHA384",
        ),
        (
            &[
                "-tls1_3",
                "-ciphersuites",
                "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
            ],
            "TLS_CHACHA20_POLY1305_SHA256",
        ),
        (
            &[
                "-tls1_2",
                "-cipher",
                "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256",
            ],
            "ECDHE-ECDSA-AES128-GCM-SHA256",
        ),
        (
            &[
                "-tls1_2",
                "-cipher",
                "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256",
            ],
            "ECDHE-ECDSA-CHACHA20-POLY1305",
        ),
        // A suite stayup does not serve (CBC) is passed over: the client's
        // first choice among stayup's is ChaCha20.
        (
            &[
                "-tls1_2",
                "-cipher",
                "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256:@SECLEVEL=0",
            ],
            "ECDHE-ECDSA-CHACHA20-POLY1305",
        ),
    ];
    for (args, wanted) in cases {
        let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (ok, out) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = owned.iter().map(String::as_str).collect();
            s_client(bind, &args)
        })
        .await
        .expect("join");
        assert!(ok, "{args:?} refused:\n{out}");
        assert!(
            out.contains(&format!("Cipher is {wanted}")),
            "{args:?}: wanted {wanted}:\n{out}"
        );
    }
    let line = d
        .wait_printed(|l| l.contains("stayup::connection") && l.contains("CHACHA20"))
        .await;
    assert!(
        line.contains("tls=TLSv1.3 cipher=TLS_CHACHA20_POLY1305_SHA256")
            || line.contains("tls=TLSv1.2 cipher=TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
        "{line}"
    );
    assert!(d.stop().await.success());
}

/// `tls.cipher_suites` limits and orders the suites, and a reload changes
/// them for new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cipher_suites_configured_are_the_only_ones_served_and_reload() {
    let (site, backend, bind) = openssl_site().await;
    let limited = simple_config(bind, backend.addr, "a").replace(
        "    tls:\n",
        "    tls:\n      cipher_suites: [TLS_AES_256_GCM_SHA384, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n",
    );
    // TLS 1.2 suites for RSA keys only, and an ECDSA certificate: TLS 1.2
    // clients could not connect, so the file is refused, naming the file.
    site.publish(&limited.replace("ECDHE_ECDSA", "ECDHE_RSA"));
    let (code, out) = check(&site.config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("certs/a.pem")
            && out.contains("no TLS 1.2 suite for this certificate's ECDSA key"),
        "{out}"
    );
    site.publish(&limited);
    let (code, out) = check(&site.config);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "cipher suites TLS_AES_256_GCM_SHA384 TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
        ),
        "{out}"
    );
    let mut d = Daemon::start(&site.config).await;
    let run =
        |args: &'static [&'static str]| tokio::task::spawn_blocking(move || s_client(bind, args));
    let (ok, out) = run(&["-tls1_3"]).await.expect("join");
    assert!(
        ok && out.contains("Cipher is TLS_AES_256_GCM_SHA384"),
        "{out}"
    );
    let (ok, out) = run(&["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"])
        .await
        .expect("join");
    assert!(!ok, "a suite not configured was served:\n{out}");
    let (ok, out) = run(&["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"])
        .await
        .expect("join");
    assert!(!ok, "a TLS 1.2 suite not configured was served:\n{out}");
    let (ok, out) = run(&["-tls1_2"]).await.expect("join");
    assert!(
        ok && out.contains("Cipher is ECDHE-ECDSA-AES256-GCM-SHA384"),
        "{out}"
    );

    // A name stayup does not know is rejected whole; the old list serves on.
    site.publish(&limited.replace("TLS_AES_256_GCM_SHA384,", "TLS_AES_256_CBC_SHA,"));
    let line = d.reload().await;
    assert!(line.contains("reload rejected"), "{line}");
    assert!(line.contains("TLS_AES_256_CBC_SHA"), "{line}");
    let (ok, out) = run(&["-tls1_3"]).await.expect("join");
    assert!(
        ok && out.contains("Cipher is TLS_AES_256_GCM_SHA384"),
        "{out}"
    );

    // Without the list: stayup's choice again, for the next connection.
    site.publish(&simple_config(bind, backend.addr, "a"));
    let line = d.reload().await;
    assert!(line.contains("reload committed"), "{line}");
    let (ok, out) = run(&["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"])
        .await
        .expect("join");
    assert!(ok, "{out}");
    assert!(d.stop().await.success());
}

/// `tls.groups` limits the key exchange groups a listener accepts, over
/// TLS 1.3 and 1.2; the connection log names the group; a reload changes
/// the set for the next connection, and a bad name keeps the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_configured_are_the_only_ones_accepted_and_reload() {
    let (site, backend, bind) = openssl_site().await;
    let base = format!(
        "{}log:\n  connections: true\n",
        simple_config(bind, backend.addr, "a")
    );
    let with =
        |groups: &str| base.replace("    tls:\n", &format!("    tls:\n      groups: {groups}\n"));
    // Post-quantum groups only, and TLS 1.2 clients let in: refused.
    site.publish(&with("[X25519MLKEM768]"));
    let (code, out) = check(&site.config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("stayup.yaml:") && out.contains("tls.groups: names only post-quantum groups"),
        "{out}"
    );
    site.publish(&with("[secp384r1, P-256]"));
    let (code, out) = check(&site.config);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(", groups P-384 P-256"), "{out}");

    let mut d = Daemon::start(&site.config).await;
    let status = status_json(&site.config).await;
    assert_eq!(
        status["listeners"][0]["groups"],
        serde_json::json!(["P-384", "P-256"])
    );
    let run =
        |args: &'static [&'static str]| tokio::task::spawn_blocking(move || s_client(bind, args));
    let (ok, out) = run(&["-tls1_3", "-groups", "X25519"]).await.expect("join");
    assert!(!ok, "a group not configured was accepted:\n{out}");
    // The client's key share is for X25519, which is not accepted: stayup
    // asks for P-384 (a HelloRetryRequest) and the handshake completes.
    let (ok, out) = run(&["-tls1_3", "-groups", "X25519:P-384"])
        .await
        .expect("join");
    assert!(
        ok && out.contains("Server Temp Key: ECDH, secp384r1"),
        "{out}"
    );
    let line = d
        .wait_printed(|l| l.contains("stayup::connection") && l.contains("group=P-384"))
        .await;
    assert!(line.contains("tls=TLSv1.3"), "{line}");
    let (ok, out) = run(&["-tls1_2", "-groups", "X25519"]).await.expect("join");
    assert!(
        !ok,
        "a TLS 1.2 key exchange not configured was accepted:\n{out}"
    );
    let (ok, out) = run(&["-tls1_2", "-groups", "P-256"]).await.expect("join");
    assert!(
        ok && out.contains("Server Temp Key: ECDH, prime256v1"),
        "{out}"
    );

    // A name stayup does not know is rejected whole; the old set serves on.
    site.publish(&with("[X25519, P-521]"));
    let line = d.reload().await;
    assert!(
        line.contains("reload rejected") && line.contains("P-521"),
        "{line}"
    );
    let (ok, out) = run(&["-tls1_3", "-groups", "X25519"]).await.expect("join");
    assert!(!ok, "{out}");

    // Another set, for the next connection, with a post-quantum group
    // outside rustls's default set.
    site.publish(&with("[x25519, MLKEM1024]"));
    let line = d.reload().await;
    assert!(line.contains("reload committed"), "{line}");
    let (ok, out) = run(&["-tls1_3", "-groups", "X25519"]).await.expect("join");
    assert!(ok && out.contains("Server Temp Key: X25519"), "{out}");
    let (ok, out) = run(&["-tls1_3", "-groups", "P-256"]).await.expect("join");
    assert!(!ok, "a group taken out by the reload was accepted:\n{out}");
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(
        rustls::pki_types::CertificateDer::pem_slice_iter(site.ca.pem.cert.as_bytes()).flatten(),
    );
    assert_eq!(added, 1);
    use rustls::crypto::aws_lc_rs as aws;
    let mlkem_only =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::CryptoProvider {
            kx_groups: vec![aws::kx_group::MLKEM1024],
            ..aws::default_provider()
        }))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let s = connected(bind, "localhost", Arc::new(mlkem_only)).await;
    let group = s
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .map(|g| g.name());
    assert_eq!(group, Some(rustls::NamedGroup::MLKEM1024));
    drop(s);
    d.wait_printed(|l| l.contains("stayup::connection") && l.contains("group=MLKEM1024"))
        .await;
    assert!(d.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_is_private() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    site.publish(&simple_config(addr(), backend.addr, "a"));
    let mut d = Daemon::spawn(&site.config, &[]);
    d.wait_for("control socket ready").await;
    let meta = std::fs::metadata(site.path("stayup.sock")).expect("control socket");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "control socket mode {:o}",
        meta.permissions().mode() & 0o777
    );
    assert!(d.stop().await.success());
}

#[test]
fn admin_endpoint_is_loopback_only_unless_allowed() {
    let site = Site::new();
    site.cert("a", &["localhost"]);
    let base = simple_config(addr(), addr(), "a");
    site.publish(&format!("{base}admin:\n  listen: \"0.0.0.0:9900\"\n"));
    let (code, out) = check(&site.config);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not a loopback address"), "{out}");
    site.publish(&format!("{base}admin:\n  listen: \"127.0.0.1:9900\"\n"));
    assert_eq!(check(&site.config).0, 0);
    site.publish(&format!(
        "{base}admin:\n  listen: \"0.0.0.0:9900\"\n  allow_remote: true\n"
    ));
    assert_eq!(check(&site.config).0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_errors_reach_the_log_not_the_client() {
    let site = Site::new();
    site.cert("a", &["localhost"]);
    let (bind, down) = (addr(), addr());
    site.publish(&simple_config(bind, down, "a"));
    let mut d = Daemon::start(&site.config).await;

    let mut s = connected(bind, "localhost", site.client()).await;
    let got = read_to_close(&mut s)
        .await
        .expect("a clean close (close_notify), not an error");
    assert!(
        got.is_empty(),
        "the client was told {:?}",
        String::from_utf8_lossy(&got)
    );
    let line = d.wait_for("backend connect failed").await;
    assert!(line.contains(&down.to_string()), "{line}");
    assert!(d.stop().await.success());
}
