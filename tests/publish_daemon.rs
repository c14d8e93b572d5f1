//! `stayup publish` into a running daemon: open streams survive, new
//! connections get the new certificate, and the daemon's verdict decides
//! the exit status.

mod common;
#[path = "publish_support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;

use common::*;
use support::*;

async fn publish_async(
    config: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || publish(&config, "web", &cert, &key, &[]))
        .await
        .expect("publish task")
}

async fn publish_from_async(
    config: std::path::PathBuf,
    new: std::path::PathBuf,
) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        stayup_env(
            &[
                "publish",
                "--config",
                config.to_str().unwrap(),
                "--from",
                new.to_str().unwrap(),
            ],
            &[],
        )
    })
    .await
    .expect("publish task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rotates_a_running_daemon_without_breaking_streams() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let a = site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let bind = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    site.publish(&simple_config(bind, backend.addr, "a"));
    let mut d = Daemon::start(&site.config).await;

    let mut streams = Vec::new();
    for _ in 0..2 {
        let s = connected(bind, "localhost", site.client()).await;
        assert_eq!(peer_fingerprint(&s), a.fingerprint());
        let st = Streamer::start(s);
        st.advance(8 * 1024).await;
        streams.push(st);
    }

    let (code, out, err) = publish_async(
        site.config.clone(),
        site.path("certs/b.pem"),
        site.path("certs/b.key"),
    )
    .await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("daemon: committed generation 2 (was 1)"),
        "{out}"
    );
    let line = d.outcome().await;
    assert!(line.contains("reload committed generation=2"), "{line}");
    assert!(line.contains("trigger=control"), "{line}");
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        b.fingerprint()
    );

    // The configuration now names immutable copies in the store; the key
    // copy is private.
    let text = std::fs::read_to_string(&site.config).expect("config");
    let key_ref = store_ref(b.key.as_bytes(), "key");
    assert!(
        text.contains(&store_ref(b.cert.as_bytes(), "pem")),
        "{text}"
    );
    assert!(text.contains(&key_ref), "{text}");
    let mode = std::fs::metadata(site.path(&key_ref))
        .expect("stored key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    for st in &streams {
        st.advance(8 * 1024).await;
    }

    // And back again: a second publish is a second generation.
    let (code, out, err) = publish_async(
        site.config.clone(),
        site.path("certs/a.pem"),
        site.path("certs/a.key"),
    )
    .await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("committed generation 3 (was 2)"), "{out}");
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        a.fingerprint()
    );
    for st in streams {
        st.advance(8 * 1024).await;
        let verified = st
            .finish()
            .await
            .expect("stream intact through both publishes");
        assert!(verified >= 24 * 1024, "{verified}");
    }
    assert!(d.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_without_a_daemon_says_so_and_succeeds() {
    let site = Site::new();
    site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let bind = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    site.publish(&simple_config(bind, "127.0.0.1:9".parse().unwrap(), "a"));
    let (code, out, err) = publish_async(
        site.config.clone(),
        site.path("certs/b.pem"),
        site.path("certs/b.key"),
    )
    .await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("no daemon answering"), "{out}");
    assert!(out.contains(&b.fingerprint()), "{out}");
    let (code, out, _) = stayup(&["check", "--config", site.config.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains(&b.fingerprint()), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_file_the_daemon_rejects_exits_1_and_the_old_file_and_generation_stay() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let a = site.cert("a", &["localhost"]);
    site.cert("b", &["localhost"]);
    let bind = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    site.publish(&simple_config(bind, backend.addr, "a"));
    let mut d = Daemon::start(&site.config).await;

    // A valid file whose new listener cannot bind: only the daemon can
    // find that out, so publish must report its verdict.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let new = format!(
        "listeners:\n{}{}reload:\n  watch: false\n",
        listener_yaml("web", bind, backend.addr, &["b"]),
        listener_yaml("api", taken_addr, backend.addr, &["b"]),
    )
    .replace("certs/", "../certs/");
    let new_path = site.write("next/new.yaml", new);
    let publish_new = || publish_from_async(site.config.clone(), new_path.clone());
    let (code, out, err) = publish_new().await;
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("daemon: rejected; generation 1 keeps serving"),
        "{out}"
    );
    assert!(out.contains("reason:"), "{out}");
    let line = d.outcome().await;
    assert!(line.contains("reload rejected"), "{line}");
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        a.fingerprint()
    );
    // The file the daemon rejected is not left for the next start to read:
    // the previous one is back, byte for byte.
    assert!(out.contains("put the previous"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&site.config).expect("config"),
        simple_config(bind, backend.addr, "a")
    );
    assert_eq!(check(&site.config).0, 0);
    // It stays in history, not live: its paths were resolved beside it and
    // rewritten to store copies.
    let (code, history, _) = stayup(&["history", "--config", site.config.to_str().unwrap()]);
    assert_eq!(code, 0);
    let rows: Vec<&str> = history.lines().filter(|l| l.contains(" UTC ")).collect();
    assert_eq!(rows.len(), 2, "{history}");
    assert!(
        rows[0].starts_with('*') && !rows[1].starts_with('*'),
        "{history}"
    );
    let rejected = std::fs::read_dir(site.path("history"))
        .expect("history folder")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .find(|t| t.contains("api"))
        .expect("the rejected file in history");
    assert!(
        !rejected.contains("../certs/") && rejected.contains("store/"),
        "{rejected}"
    );

    // The rejected file renamed into place by hand (watch is off: nothing
    // reloads), then published again: already the content on disk, yet not
    // what is served. The daemon is asked, rejects it again, and publish
    // says so and how to get back, instead of "nothing to change".
    site.publish(&rejected);
    let (code, out, err) = publish_new().await;
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("daemon: rejected; generation 1 keeps serving"),
        "{out}"
    );
    assert!(
        out.contains("was already this content and is not what is served")
            && out.contains("`stayup rollback`"),
        "{out}"
    );
    let line = d.outcome().await;
    assert!(line.contains("reload rejected"), "{line}");
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        a.fingerprint()
    );
    drop(taken);
    assert!(d.stop().await.success());
}

/// A whole new file prepared in another folder: the certificates it names
/// are read beside it, but its relative control socket is not rewritten and
/// means what it says beside the live file, where the new file lands. So
/// publish reaches the running daemon there, and the socket stays put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_file_from_elsewhere_keeps_its_relative_control_socket_beside_the_live_file() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let bind = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let with_socket =
        |yaml: String| yaml.replace("reload:\n", "control:\n  socket: run/ctl.sock\nreload:\n");
    std::fs::create_dir_all(site.path("run")).expect("mkdir run");
    site.publish(&with_socket(simple_config(bind, backend.addr, "a")));
    let mut d = Daemon::start(&site.config).await;
    assert!(site.path("run/ctl.sock").exists());

    // Beside the new file there is a folder of that name too, so resolving
    // the socket there would not fail for want of a folder.
    std::fs::create_dir_all(site.path("next/run")).expect("mkdir next/run");
    let new_path = site.write(
        "next/new.yaml",
        with_socket(simple_config(bind, backend.addr, "b")).replace("certs/", "../certs/"),
    );
    let (code, out, err) = publish_from_async(site.config.clone(), new_path).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("daemon: committed generation 2 (was 1)"),
        "{out}"
    );
    let line = d.outcome().await;
    assert!(line.contains("reload committed generation=2"), "{line}");
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        b.fingerprint()
    );
    let text = std::fs::read_to_string(&site.config).expect("config");
    assert!(text.contains("socket: run/ctl.sock"), "{text}");
    assert!(!text.contains("../certs/"), "{text}");
    assert!(site.path("run/ctl.sock").exists());
    assert!(!site.path("next/run/ctl.sock").exists());
    assert_eq!(status_json(&site.config).await["generation"], 2);
    assert!(d.stop().await.success());
}
