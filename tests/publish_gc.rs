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
