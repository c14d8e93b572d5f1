//! A certbot-like `live/` -> `archive/` layout: the deploy hook publishes
//! through the symlinks, the content is copied, and the half-updated links
//! of a renewal in progress are refused without touching anything.

mod common;
#[path = "publish_support/mod.rs"]
mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::*;
use stayup::pki::Pem;
use support::*;

/// certbot's layout for lineage `example.com` under `letsencrypt/`.
struct Lineage {
    live: PathBuf,
    archive: PathBuf,
}

impl Lineage {
    fn new(site: &Site) -> Lineage {
        let live = site.path("letsencrypt/live/example.com");
        let archive = site.path("letsencrypt/archive/example.com");
        std::fs::create_dir_all(&live).expect("mkdir live");
        std::fs::create_dir_all(&archive).expect("mkdir archive");
        Lineage { live, archive }
    }

    /// Writes version `n` into `archive/`, as certbot does before linking.
    fn write_version(&self, n: u32, pem: &Pem) {
        std::fs::write(self.archive.join(format!("fullchain{n}.pem")), &pem.cert).expect("write");
        stayup::pki::write_private(
            &self.archive.join(format!("privkey{n}.pem")),
            pem.key.as_bytes(),
        )
        .expect("write key");
    }

    /// Re-points one `live/` link the way certbot does: unlink, then symlink.
    fn relink(&self, file: &str, n: u32) {
        let link = self.live.join(format!("{file}.pem"));
        let _ = std::fs::remove_file(&link);
        symlink(format!("../../archive/example.com/{file}{n}.pem"), &link).expect("symlink");
    }
}

fn hook() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/certbot/stayup-deploy-hook")
}

async fn run_hook(site: &Site, lineage: &Lineage, env: &[(&str, String)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg(hook())
        .env("RENEWED_LINEAGE", &lineage.live)
        .env("STAYUP", stayup_bin())
        .env("STAYUP_CONFIG", &site.config)
        .env("STAYUP_CERTBOT_DEFAULTS", site.path("no-such-defaults"))
        .env("STAYUP_LINEAGE_MAP", site.path("no-such-map"))
        .env_remove("STAYUP_LISTENERS")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run hook"))
        .await
        .expect("hook task");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_hook_rotates_through_live_symlinks() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let a = site.cert("a", &["localhost"]);
    let bind = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    site.publish(&simple_config(bind, backend.addr, "a"));
    let mut d = Daemon::start(&site.config).await;
    let stream = connected(bind, "localhost", site.client()).await;
    let streamer = Streamer::start(stream);
    streamer.advance(8 * 1024).await;

    // First issuance: version 1, linked.
    let lineage = Lineage::new(&site);
    let v1 = site
        .ca
        .leaf(&stayup::pki::LeafSpec::server(&["localhost"]))
        .expect("leaf");
    lineage.write_version(1, &v1);
    lineage.relink("fullchain", 1);
    lineage.relink("privkey", 1);
    let (code, out, err) = run_hook(&site, &lineage, &[("STAYUP_LISTENERS", "web".into())]).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("resolves to"), "{out}");
    assert!(out.contains("daemon: committed generation 2"), "{out}");
    d.outcome().await;
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        v1.fingerprint()
    );
    // The store holds copies, not links.
    for (bytes, ext) in [(v1.cert.as_bytes(), "pem"), (v1.key.as_bytes(), "key")] {
        let p = site.path(&store_ref(bytes, ext));
        let meta = std::fs::symlink_metadata(&p).expect("stored");
        assert!(
            meta.file_type().is_file(),
            "{} is not a regular file",
            p.display()
        );
        assert_eq!(std::fs::read(&p).expect("read"), bytes);
    }

    // Renewal in progress: fullchain already names version 2, privkey still
    // version 1. Publishing in this window is refused and changes nothing.
    let v2 = site
        .ca
        .leaf(&stayup::pki::LeafSpec::server(&["localhost"]))
        .expect("leaf");
    lineage.write_version(2, &v2);
    lineage.relink("fullchain", 2);
    let before = snapshot(site.dir.path());
    let (code, out, err) = tokio::task::spawn_blocking({
        let (config, live) = (site.config.clone(), lineage.live.clone());
        move || {
            publish(
                &config,
                "web",
                &live.join("fullchain.pem"),
                &live.join("privkey.pem"),
                &[],
            )
        }
    })
    .await
    .expect("publish task");
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("does not match"), "{err}");
    assert!(err.contains("archive/example.com/privkey1.pem"), "{err}");
    assert_eq!(snapshot(site.dir.path()), before);
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        v1.fingerprint()
    );

    // certbot finishes its links and runs the hook: this time the listener
    // comes from the map file.
    lineage.relink("privkey", 2);
    let map = site.write(
        "certbot.map",
        "# lineage listeners\nother.example api\nexample.com web:1\n",
    );
    let (code, out, err) = run_hook(
        &site,
        &lineage,
        &[("STAYUP_LINEAGE_MAP", map.to_string_lossy().into())],
    )
    .await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("daemon: committed generation 3"), "{out}");
    d.outcome().await;
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        v2.fingerprint()
    );

    // The archive can go: stayup serves its own copies.
    std::fs::remove_dir_all(site.path("letsencrypt")).expect("rm letsencrypt");
    let (code, out, err) = stayup(&["check", "--config", site.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&v2.fingerprint()), "{out}");
    assert_ne!(a.fingerprint(), v2.fingerprint());

    // A lineage without a listener: the hook fails and says so.
    let (code, _, err) = run_hook(&site, &lineage, &[]).await;
    assert_ne!(code, 0);
    assert!(err.contains("no listener named \"example.com\""), "{err}");

    streamer.advance(8 * 1024).await;
    streamer
        .finish()
        .await
        .expect("stream intact through the rotations");
    assert!(d.stop().await.success());
}
