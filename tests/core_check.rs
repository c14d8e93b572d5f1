//! `stayup check` on a valid configuration: exit 0 and a description of
//! what would be served (listeners, certificates with subject, names and
//! expiry), without binding anything.

mod common;
use common::*;

use std::time::{Duration, UNIX_EPOCH};

use stayup::pki::LeafSpec;

#[test]
fn check_describes_a_valid_configuration() {
    let site = Site::new();
    // 2030-01-02T03:04:05Z
    let not_after = UNIX_EPOCH + Duration::from_secs(1_893_553_445);
    let mut spec = LeafSpec::server(&["alpha.example.test", "www.alpha.example.test"]);
    spec.not_after = not_after;
    let alpha = site.cert_with("alpha", &spec);
    let mut spec = LeafSpec::server(&["*.example.test", "127.0.0.1"]);
    spec.common_name = "wildcard certificate".into();
    let wild = site.cert_with("wild", &spec);
    site.write("ca/clients.pem", &site.ca.pem.cert);
    let web = free_addr();
    let api = free_addr();
    // Held by the test: check must not try to bind it.
    let held = std::net::TcpListener::bind(api).expect("bind");
    let yaml = format!(
        "listeners:\n{}{}reload:\n  watch: false\n",
        listener_yaml(
            "web",
            web,
            "127.0.0.1:8080".parse().unwrap(),
            &["alpha", "wild"]
        ),
        listener_yaml("api", api, "127.0.0.1:9090".parse().unwrap(), &["wild"]).replacen(
            "      certificates:\n",
            "      client_ca: ca/clients.pem\n      min_version: \"1.3\"\n      certificates:\n",
            1
        ),
    );
    site.publish(&yaml);

    let (code, out, err) = check(&site.config);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.is_empty(), "{err}");
    let config = site.config.display().to_string();
    for want in [
        format!("{config}: valid"),
        format!("listener web: {web} -> 127.0.0.1:8080\n"),
        format!(
            "listener api: {api} -> 127.0.0.1:9090, client certificates required, TLS 1.3 only\n"
        ),
        format!("{} (default)", site.path("certs/alpha.pem").display()),
        "CN=alpha.example.test".to_string(),
        "alpha.example.test, www.alpha.example.test".to_string(),
        "2030-01-02T03:04:05Z".to_string(),
        "CN=wildcard certificate".to_string(),
        "*.example.test, 127.0.0.1".to_string(),
        alpha.fingerprint(),
        wild.fingerprint(),
    ] {
        assert!(out.contains(&want), "missing {want:?} in:\n{out}");
    }
    // The wildcard certificate is listed once per listener that serves it.
    assert_eq!(out.matches(&wild.fingerprint()).count(), 2, "{out}");
    assert!(
        !out.contains("BEGIN"),
        "key or certificate material printed:\n{out}"
    );
    drop(held);
}

#[test]
fn check_exits_one_for_a_missing_file() {
    let site = Site::new();
    let pem = site.cert("absent", &["localhost"]);
    std::fs::remove_file(site.path("certs/absent.pem")).expect("remove");
    let yaml = simple_config(free_addr(), free_addr(), "absent");
    site.publish(&yaml);
    let (code, out, err) = check(&site.config);
    assert_eq!(code, 1, "{out}\n{err}");
    let cert = site.path("certs/absent.pem");
    assert!(err.contains(cert.to_str().unwrap()), "{err}");
    assert!(err.contains("no such file"), "{err}");
    assert!(!err.contains(pem.key.trim()), "key material printed");

    let (code, _, err) = check(&site.path("nowhere.yaml"));
    assert_eq!(code, 1);
    assert!(err.contains("nowhere.yaml"), "{err}");
}
