//! A pair a reload would reject is refused by publish, and nothing on disk
//! changes: no store folder, no history, the same top-level bytes.

mod common;
#[path = "publish_support/mod.rs"]
mod support;

use std::time::{Duration, SystemTime};

use common::*;
use stayup::pki::LeafSpec;
use support::*;

fn site_with_a() -> Site {
    let site = Site::new();
    site.cert("a", &["localhost"]);
    let bind = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    site.publish(&commented_config(
        bind,
        "127.0.0.1:9".parse().unwrap(),
        "certs/a.pem",
        "certs/a.key",
    ));
    site.cert("other", &["localhost"]);
    site
}

fn refused(site: &Site, cert: &str, key: &str, extra: &[&str]) -> String {
    let before = snapshot(site.dir.path());
    let (code, out, err) = publish(
        &site.config,
        "web",
        &site.path(cert),
        &site.path(key),
        extra,
    );
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("refused, nothing changed"), "{err}");
    assert_eq!(
        snapshot(site.dir.path()),
        before,
        "publish changed files: {err}"
    );
    err
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let site = site_with_a();
    site.cert("b", &["localhost"]);
    site.cert("c", &["localhost"]);
    let err = refused(&site, "certs/b.pem", "certs/c.key", &[]);
    assert!(err.contains("does not match"), "{err}");
    // The message names the input the store copy came from.
    assert!(
        err.contains(&format!(
            "is the copy of {}",
            site.path("certs/c.key").display()
        )),
        "{err}"
    );
    assert!(
        !err.contains("PRIVATE KEY-----\n"),
        "key material in a message: {err}"
    );
}

#[test]
fn an_expired_certificate_is_refused() {
    let site = site_with_a();
    let now = SystemTime::now();
    let mut spec = LeafSpec::server(&["localhost"]);
    spec.not_before = now - Duration::from_secs(10 * 86_400);
    spec.not_after = now - Duration::from_secs(86_400);
    site.cert_with("old", &spec);
    let err = refused(&site, "certs/old.pem", "certs/old.key", &[]);
    assert!(err.contains("expired"), "{err}");
}

#[test]
fn a_certificate_missing_a_declared_name_is_refused() {
    let site = site_with_a();
    site.cert("elsewhere", &["elsewhere.example"]);
    let err = refused(&site, "certs/elsewhere.pem", "certs/elsewhere.key", &[]);
    assert!(
        err.contains("does not cover the declared name \"localhost\""),
        "{err}"
    );
}

#[test]
fn a_dry_run_validates_and_changes_nothing() {
    let site = site_with_a();
    let b = site.cert("b", &["localhost"]);
    let before = snapshot(site.dir.path());
    let (code, out, err) = publish(
        &site.config,
        "web",
        &site.path("certs/b.pem"),
        &site.path("certs/b.key"),
        &["--dry-run"],
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("would publish"), "{out}");
    assert!(out.contains(&b.fingerprint()), "{out}");
    assert!(out.contains("dry run: valid; nothing was changed"), "{out}");
    assert_eq!(snapshot(site.dir.path()), before);
    // A dry run of a broken pair fails the same way a real one does.
    site.cert("c", &["localhost"]);
    let err = refused(&site, "certs/b.pem", "certs/c.key", &["--dry-run"]);
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn unknown_listener_index_and_symlinked_config_are_refused() {
    let site = site_with_a();
    site.cert("b", &["localhost"]);
    let before = snapshot(site.dir.path());
    let (code, _, err) = publish(
        &site.config,
        "api",
        &site.path("certs/b.pem"),
        &site.path("certs/b.key"),
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("no listener named \"api\" (listeners: web)"),
        "{err}"
    );
    let (code, _, err) = publish(
        &site.config,
        "web",
        &site.path("certs/b.pem"),
        &site.path("certs/b.key"),
        &["--index", "3"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("--index must be 1..2"), "{err}");
    let (code, _, err) = publish(
        &site.config,
        "web",
        &site.path("certs/missing.pem"),
        &site.path("certs/b.key"),
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("certs/missing.pem: cannot resolve"), "{err}");
    assert_eq!(snapshot(site.dir.path()), before);

    let link = site.path("link.yaml");
    std::os::unix::fs::symlink("stayup.yaml", &link).expect("symlink");
    let before = snapshot(site.dir.path());
    let (code, _, err) = publish(
        &link,
        "web",
        &site.path("certs/b.pem"),
        &site.path("certs/b.key"),
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("is a symlink"), "{err}");
    assert_eq!(snapshot(site.dir.path()), before);
}

#[test]
fn publishing_the_live_pair_again_changes_nothing() {
    let site = site_with_a();
    site.cert("b", &["localhost"]);
    let (b_pem, b_key) = (site.path("certs/b.pem"), site.path("certs/b.key"));
    let (code, _, err) = publish(&site.config, "web", &b_pem, &b_key, &[]);
    assert_eq!(code, 0, "{err}");
    let before = snapshot(site.dir.path());
    for extra in [&["--dry-run"][..], &[]] {
        let (code, out, err) = publish(&site.config, "web", &b_pem, &b_key, extra);
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("already is this certificate and key; nothing to change"),
            "{out}"
        );
        assert_eq!(snapshot(site.dir.path()), before, "{extra:?}");
    }
}
