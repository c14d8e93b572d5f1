//! `history/` keeps every activated top-level file; `stayup history` lists
//! them; `stayup rollback` re-activates one through the same
//! validate-then-rename path, and refuses one that would not load today.

mod common;
#[path = "publish_support/mod.rs"]
mod support;

use std::time::{Duration, SystemTime};

use common::*;
use stayup::pki::LeafSpec;
use support::*;

fn history_lines(config: &std::path::Path) -> Vec<String> {
    let (code, out, err) = stayup(&["history", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    out.lines().skip(1).map(str::to_string).collect()
}

/// `store/<64 hex>.pem` as history shows it.
fn short(r: &str) -> String {
    format!("{}…{}", &r[..6 + 12], &r[6 + 64..])
}

fn id_of(line: &str) -> String {
    line[2..].split_whitespace().next().expect("id").to_string()
}

async fn run_async(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stayup_env(&args, &[])
    })
    .await
    .expect("task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_publishes_and_rollback_reactivates_them() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let a = site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let c = site.cert("c", &["localhost"]);
    let bind = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let original = simple_config(bind, backend.addr, "a");
    site.publish(&original);
    let mut d = Daemon::start(&site.config).await;
    let cfg = site.config.to_str().unwrap().to_string();

    for name in ["b", "c"] {
        let (code, out, err) = run_async(vec![
            "publish".into(),
            "--config".into(),
            cfg.clone(),
            "--listener".into(),
            "web".into(),
            "--cert".into(),
            site.path(&format!("certs/{name}.pem"))
                .to_string_lossy()
                .into(),
            "--key".into(),
            site.path(&format!("certs/{name}.key"))
                .to_string_lossy()
                .into(),
        ])
        .await;
        assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
        d.outcome().await;
    }
    let after_b_c = std::fs::read_to_string(&site.config).expect("config");

    let lines = history_lines(&site.config);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with("  ") && lines[0].contains("oldest recorded"),
        "{lines:#?}"
    );
    let b_ref = short(&store_ref(b.cert.as_bytes(), "pem"));
    let c_ref = short(&store_ref(c.cert.as_bytes(), "pem"));
    assert!(
        lines[1].contains(&format!("web certificate 1: certs/a.pem -> {b_ref}")),
        "{lines:#?}"
    );
    assert!(lines[2].starts_with("* "), "the newest is live: {lines:#?}");
    assert!(
        lines[2].contains(&format!("{b_ref} -> {c_ref}")),
        "{lines:#?}"
    );
    let ids: Vec<String> = lines.iter().map(|l| id_of(l)).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "IDs sort by time");
    let entry_b = std::fs::read(site.path(&format!("history/{}.yaml", ids[1]))).expect("entry");
    assert_eq!(
        &ids[1][ids[1].len() - 12..],
        &hex::encode(stayup::material::sha256(&entry_b))[..12],
        "the ID carries the content hash"
    );

    // Rollback without --to: the previous entry, through the daemon.
    let (code, out, err) = run_async(vec!["rollback".into(), "--config".into(), cfg.clone()]).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains(&format!("rolled back {} to {}", cfg, ids[1])),
        "{out}"
    );
    assert!(
        out.contains("daemon: committed generation 4 (was 3)"),
        "{out}"
    );
    assert!(d.outcome().await.contains("reload committed generation=4"));
    assert_eq!(std::fs::read(&site.config).expect("config"), entry_b);
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        b.fingerprint()
    );
    let lines = history_lines(&site.config);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines[3].starts_with("* "), "{lines:#?}");
    assert!(
        lines[1].starts_with("  "),
        "only the newest record is live: {lines:#?}"
    );
    assert!(
        lines[3].contains(&format!("same content as {} (rollback)", ids[1])),
        "{lines:#?}"
    );

    // --to by a hash prefix: back to the hand-written original.
    let original_hash = &ids[0][ids[0].len() - 12..];
    let (code, out, err) = run_async(vec![
        "rollback".into(),
        "--config".into(),
        cfg.clone(),
        "--to".into(),
        original_hash[..8].to_string(),
    ])
    .await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(
        std::fs::read_to_string(&site.config).expect("config"),
        original
    );
    assert!(d.outcome().await.contains("reload committed generation=5"));
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        a.fingerprint()
    );
    assert_ne!(after_b_c, original);
    assert!(d.stop().await.success());
}

#[test]
fn a_rollback_whose_certificate_has_expired_is_refused() {
    let site = Site::new();
    site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let bind = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    site.publish(&simple_config(bind, "127.0.0.1:9".parse().unwrap(), "a"));
    let (code, _, err) = publish(
        &site.config,
        "web",
        &site.path("certs/b.pem"),
        &site.path("certs/b.key"),
        &[],
    );
    assert_eq!(code, 0, "{err}");

    // An older entry that served a certificate which has expired since.
    let now = SystemTime::now();
    let mut spec = LeafSpec::server(&["localhost"]);
    spec.not_before = now - Duration::from_secs(90 * 86_400);
    spec.not_after = now - Duration::from_secs(86_400);
    site.cert_with("expired", &spec);
    let old = simple_config(bind, "127.0.0.1:9".parse().unwrap(), "expired");
    let hash = hex::encode(stayup::material::sha256(old.as_bytes()));
    let id = format!("20200101T000000.000000Z-{}", &hash[..12]);
    site.write(&format!("history/{id}.yaml"), &old);

    let lines = history_lines(&site.config);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[0].contains(&id), "{lines:#?}");

    let before = snapshot(site.dir.path());
    let (code, out, err) = stayup(&[
        "rollback",
        "--config",
        site.config.to_str().unwrap(),
        "--to",
        &id,
    ]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains(&id), "{err}");
    assert!(err.contains("certificate expired"), "{err}");
    assert_eq!(
        snapshot(site.dir.path()),
        before,
        "a refused rollback changes nothing"
    );
    let (_, out, _) = stayup(&["check", "--config", site.config.to_str().unwrap()]);
    assert!(out.contains(&b.fingerprint()), "{out}");

    // Unknown and ambiguous IDs are named.
    let (code, _, err) = stayup(&[
        "rollback",
        "--config",
        site.config.to_str().unwrap(),
        "--to",
        "ffffffffff",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no history entry matches"), "{err}");
}
