//! Publish rewrites only the path values it changes: comments, spacing,
//! quoting, flow mappings and a missing final newline survive byte for byte.

mod common;
#[path = "publish_support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;

use common::*;
use support::*;

#[test]
fn only_the_changed_paths_differ() {
    let site = Site::new();
    site.cert("a", &["localhost"]);
    site.cert("other", &["localhost"]);
    let bind = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let original = commented_config(
        bind,
        "127.0.0.1:9".parse().unwrap(),
        "certs/a.pem",
        "\"certs/a.key\"",
    );
    site.publish(&original);
    std::fs::set_permissions(&site.config, std::fs::Permissions::from_mode(0o640)).expect("chmod");

    // The first entry: a plain and a double-quoted scalar.
    let b = site.cert("b", &["localhost"]);
    let (code, out, err) = publish(
        &site.config,
        "web",
        &site.path("certs/b.pem"),
        &site.path("certs/b.key"),
        &[],
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let (cert_b, key_b) = (
        store_ref(b.cert.as_bytes(), "pem"),
        store_ref(b.key.as_bytes(), "key"),
    );
    let expected = original
        .replace(
            "cert: certs/a.pem      #",
            &format!("cert: {cert_b}      #"),
        )
        .replace("key:  \"certs/a.key\"", &format!("key:  \"{key_b}\""));
    assert_ne!(expected, original);
    assert_eq!(
        std::fs::read_to_string(&site.config).expect("config"),
        expected
    );
    let mode = std::fs::metadata(&site.config)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640, "the file's mode is kept");

    // The second entry, inside a flow mapping: double and single quotes.
    let c = site.cert("c", &["localhost"]);
    let (code, out, err) = publish(
        &site.config,
        "web",
        &site.path("certs/c.pem"),
        &site.path("certs/c.key"),
        &["--index", "2"],
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("listener web certificate 2"), "{out}");
    let expected = expected
        .replace(
            "cert: \"certs/other.pem\"",
            &format!("cert: \"{}\"", store_ref(c.cert.as_bytes(), "pem")),
        )
        .replace(
            "key: 'certs/other.key'",
            &format!("key: '{}'", store_ref(c.key.as_bytes(), "key")),
        );
    assert_eq!(
        std::fs::read_to_string(&site.config).expect("config"),
        expected
    );
    let (code, _, _) = stayup(&["check", "--config", site.config.to_str().unwrap()]);
    assert_eq!(code, 0);
}

#[test]
fn a_whole_file_is_published_with_its_paths_rewritten_and_nothing_else() {
    let site = Site::new();
    site.cert("a", &["localhost"]);
    let bind = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    site.publish(&simple_config(bind, "127.0.0.1:9".parse().unwrap(), "a"));

    // A new file prepared elsewhere, with paths relative to itself and a
    // client CA bundle.
    let b = site.cert("b", &["localhost"]);
    std::fs::create_dir_all(site.path("staging/tls")).expect("mkdir");
    b.write(
        &site.path("staging/tls/b.pem"),
        &site.path("staging/tls/b.key"),
    )
    .expect("write pair");
    site.write("staging/tls/clients.pem", &site.ca.pem.cert);
    let new = format!(
        "# next release\nlisteners:\n  - name: web  # renamed backend below\n    bind: \"{bind}\"\n    backend: \"127.0.0.1:10\"\n    tls:\n      certificates:\n        - cert: tls/b.pem   # relative to this file\n          key: 'tls/b.key'\n      client_ca: \"tls/clients.pem\"\nreload:\n  watch: false\n"
    );
    let new_path = site.write("staging/next.yaml", &new);
    let (code, out, err) = stayup(&[
        "publish",
        "--config",
        site.config.to_str().unwrap(),
        "--from",
        new_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("3 files copied into store/"), "{out}");
    assert!(out.contains("web client_ca changed"), "{out}");
    let expected = new
        .replace("tls/b.pem", &store_ref(b.cert.as_bytes(), "pem"))
        .replace(
            "'tls/b.key'",
            &format!("'{}'", store_ref(b.key.as_bytes(), "key")),
        )
        .replace(
            "\"tls/clients.pem\"",
            &format!("\"{}\"", store_ref(site.ca.pem.cert.as_bytes(), "pem")),
        );
    assert_eq!(
        std::fs::read_to_string(&site.config).expect("config"),
        expected
    );
    // The staging folder can go; the configuration only needs the store.
    std::fs::remove_dir_all(site.path("staging")).expect("rm staging");
    let (code, out, err) = stayup(&["check", "--config", site.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("client certificates required"), "{out}");
}

/// Run as root (a certbot hook), publish gives the files it creates to the
/// configuration's owner, so a daemon running as that user can read the
/// 0600 key. Needs root to change owners; elsewhere there is nothing to see.
#[test]
fn new_files_belong_to_the_configuration_owner() {
    use std::os::unix::fs::MetadataExt;
    let site = Site::new();
    let probe = site.write("probe", "x");
    if std::fs::metadata(&probe).expect("probe").uid() != 0 {
        eprintln!("not root: owners cannot be changed here; skipping");
        return;
    }
    site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let bind = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    site.publish(&simple_config(bind, "127.0.0.1:9".parse().unwrap(), "a"));
    let (uid, gid) = (65534, 65534);
    std::os::unix::fs::chown(&site.config, Some(uid), Some(gid)).expect("chown config");
    let (code, out, err) = publish(
        &site.config,
        "web",
        &site.path("certs/b.pem"),
        &site.path("certs/b.key"),
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let key = site.path(&store_ref(b.key.as_bytes(), "key"));
    for p in [
        site.config.clone(),
        key.clone(),
        site.path("store"),
        site.path("history"),
    ] {
        let m = std::fs::metadata(&p).expect("metadata");
        assert_eq!((m.uid(), m.gid()), (uid, gid), "{}", p.display());
    }
    let mode = std::fs::metadata(&key).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}
