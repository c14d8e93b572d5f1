//! `stayup gc --keep N` deletes only what neither the live file nor the
//! last N history entries reference.

mod common;
#[path = "publish_support/mod.rs"]
mod support;

use common::*;
use support::*;

fn gc(config: &std::path::Path, keep: &str) -> (i32, String, String) {
    stayup(&["gc", "--config", config.to_str().unwrap(), "--keep", keep])
}

fn history_ids(site: &Site) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(site.path("history"))
        .expect("history")
        .map(|e| {
            e.expect("entry")
                .file_name()
                .to_string_lossy()
                .replace(".yaml", "")
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn gc_keeps_everything_referenced() {
    let site = Site::new();
    site.cert("a", &["localhost"]);
    let bind = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    site.publish(&simple_config(bind, "127.0.0.1:9".parse().unwrap(), "a"));
    let mut pems = Vec::new();
    for name in ["b", "c", "d"] {
        pems.push(site.cert(name, &["localhost"]));
        let (code, _, err) = publish(
            &site.config,
            "web",
            &site.path(&format!("certs/{name}.pem")),
            &site.path(&format!("certs/{name}.key")),
            &[],
        );
        assert_eq!(code, 0, "{err}");
    }
    let stored = |i: usize| {
        (
            site.path(&store_ref(pems[i].cert.as_bytes(), "pem")),
            site.path(&store_ref(pems[i].key.as_bytes(), "key")),
        )
    };
    site.write("store/README", "not a store file; gc leaves it alone");
    assert_eq!(history_ids(&site).len(), 4);
    for i in 0..3 {
        assert!(stored(i).0.exists() && stored(i).1.exists());
    }

    // A garbled recent entry: what it references is unknown, so nothing goes.
    let bad = site.write(
        "history/29991231T000000.000000Z-000000000000.yaml",
        "listeners: [",
    );
    let before = snapshot(site.dir.path());
    let (code, _, err) = gc(&site.config, "2");
    assert_eq!(code, 1);
    assert!(
        err.contains("29991231T000000.000000Z-000000000000"),
        "{err}"
    );
    assert!(err.contains("nothing deleted"), "{err}");
    assert_eq!(snapshot(site.dir.path()), before);
    std::fs::remove_file(bad).expect("rm");

    // Keep the last two entries (c, d): b's copies and the two oldest
    // entries go.
    let ids = history_ids(&site);
    let (code, out, err) = gc(&site.config, "2");
    assert_eq!(code, 0, "{out}{err}");
    assert!(!stored(0).0.exists() && !stored(0).1.exists(), "{out}");
    for i in 1..3 {
        assert!(stored(i).0.exists() && stored(i).1.exists(), "{out}");
    }
    assert!(site.path("store/README").exists());
    assert_eq!(history_ids(&site), ids[2..].to_vec());
    // Everything kept still loads: the live file and each kept entry.
    let cfg = site.config.to_str().unwrap();
    assert_eq!(stayup(&["check", "--config", cfg]).0, 0);
    for id in &ids[2..3] {
        let (code, out, err) = stayup(&["rollback", "--config", cfg, "--to", id, "--dry-run"]);
        assert_eq!(code, 0, "{out}{err}");
    }

    // --keep 0 still keeps the live file's entry and its material.
    let (code, out, err) = gc(&site.config, "0");
    assert_eq!(code, 0, "{out}{err}");
    assert!(!stored(1).0.exists(), "{out}");
    assert!(stored(2).0.exists() && stored(2).1.exists(), "{out}");
    assert_eq!(history_ids(&site), ids[3..].to_vec());
    assert_eq!(stayup(&["check", "--config", cfg]).0, 0);
    // The hand-written originals outside the store are never touched.
    assert!(site.path("certs/a.pem").exists() && site.path("certs/b.key").exists());
}

/// The daemon rejected the newest file and still serves the one before:
/// gc keeps what it serves, whatever --keep says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_what_a_running_daemon_serves() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let bind = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    site.publish(&simple_config(bind, backend.addr, "a"));
    let mut d = Daemon::start(&site.config).await;
    let cfg = site.config.to_str().unwrap().to_string();
    let run = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            stayup(&args)
        })
        .await
        .expect("task")
    };
    let (code, out, err) = run(vec![
        "publish".into(),
        "--config".into(),
        cfg.clone(),
        "--listener".into(),
        "web".into(),
        "--cert".into(),
        site.path("certs/b.pem").to_string_lossy().into(),
        "--key".into(),
        site.path("certs/b.key").to_string_lossy().into(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    d.outcome().await;

    // A new file the daemon cannot bind, renamed into place by hand (publish
    // would put the previous one back): live on disk, rejected in memory.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    site.cert("c", &["localhost"]);
    let new = format!(
        "listeners:\n{}{}reload:\n  watch: false\n",
        listener_yaml("web", bind, backend.addr, &["c"]),
        listener_yaml(
            "api",
            taken.local_addr().expect("addr"),
            backend.addr,
            &["c"]
        ),
    );
    site.publish(&new);
    assert!(d.reload().await.contains("reload rejected"));

    let (code, out, err) = run(vec![
        "gc".into(),
        "--config".into(),
        cfg.clone(),
        "--keep".into(),
        "0".into(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    for (bytes, ext) in [(b.cert.as_bytes(), "pem"), (b.key.as_bytes(), "key")] {
        assert!(
            site.path(&store_ref(bytes, ext)).exists(),
            "gc deleted what the daemon serves: {out}"
        );
    }
    // And the served file is still restorable.
    let (code, out, err) = run(vec!["rollback".into(), "--config".into(), cfg.clone()]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("daemon: unchanged"), "{out}");
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        b.fingerprint()
    );
    drop(taken);
    assert!(d.stop().await.success());
}
