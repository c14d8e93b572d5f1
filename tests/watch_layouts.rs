//! The layouts kubelet and certbot publish: a Kubernetes projected volume updated by
//! kubelet's AtomicWriter, certbot's `live/` symlinks into `archive/`, and
//! referenced files changed in place (against the contract); and a
//! configuration symlinked into a deployment tree elsewhere.

mod common;
mod watch_support;

use std::net::SocketAddr;

use common::*;
use stayup::pki::Pem;
use watch_support::*;

/// The configuration a projected volume holds: the watch on (poll 30 s),
/// the pair next to it as `tls.crt` and `tls.key`, and a comment with
/// `version` so that each publication's bytes differ.
fn volume_yaml(bind: SocketAddr, backend: SocketAddr, version: usize) -> String {
    watch_yaml(
        bind,
        backend,
        "tls.crt",
        "tls.key",
        &reload_block("30s"),
        &format!("# version {version}\n"),
    )
}

/// A pod's view: the projected volume `vol/` of `site`, first published
/// with `yaml` and `pem`, and a daemon started on its `config.yaml`.
async fn serve_volume(
    site: &Site,
    yaml: &str,
    pem: &Pem,
    bind: SocketAddr,
    backend: EchoBackend,
) -> (Projected, Served) {
    let vol = Projected::new(site.path("vol"));
    vol.publish(yaml, pem);
    let config = vol.dir.join("config.yaml");
    let served = Served::start(&config, bind, backend, site.client(), &pem.fingerprint()).await;
    (vol, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_atomic_writer_updates_are_each_picked_up() {
    let site = Site::new();
    let pems: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| site.cert(n, &["localhost"]))
        .collect();
    let (bind, backend) = endpoints().await;
    let backend_addr = backend.addr;
    let config = |version| volume_yaml(bind, backend_addr, version);
    let (vol, mut s) = serve_volume(&site, &config(1), &pems[0], bind, backend).await;

    // Three updates in a row, each changing the configuration and the pair.
    for (i, pem) in pems[1..].iter().enumerate() {
        let yaml = config(i + 2);
        vol.publish(&yaml, pem);
        let line = s
            .expect_watch_commit(i as u64 + 2, pem, site.client())
            .await;
        assert!(
            line.contains(&format!("source={}", sha_hex(yaml.as_bytes()))),
            "{line}"
        );
        s.streamer.advance(8 * 1024).await;
    }

    // A renewal: config.yaml byte-identical, only the certificate and key
    // changed behind the `..data` swap. A real change: committed.
    let same = config(4);
    vol.publish(&same, &pems[0]);
    let line = s.expect_watch_commit(5, &pems[0], site.client()).await;
    assert!(
        line.contains(&format!("source={}", sha_hex(same.as_bytes()))),
        "{line}"
    );
    assert!(line.contains("certificate-swapped"), "{line}");

    // And the same payload once more: the path names new files with the
    // same bytes, so nothing is made.
    vol.publish(&same, &pems[0]);
    let line = expect_outcome(&mut s.d, "unchanged", "watch").await;
    assert_eq!(generation_of(&line), 5, "{line}");
    s.finish().await;
}

/// certbot renews by writing `archive/<name>/cert2.pem` etc. and then
/// re-pointing each `live/<name>/*.pem` symlink in turn (unlink, symlink).
/// Between two flips the live pair is mismatched; an explicit reload there
/// must be refused, and the one after the last flip (what a deploy hook
/// runs) committed. The watcher must not reload on any flip (only
/// referenced files changed), but it reports them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certbot_symlink_flips_are_reported_not_reloaded() {
    let site = Site::new();
    let v1 = site.cert("v1", &["localhost"]);
    let v2 = site.cert("v2", &["localhost"]);
    for (pem, n) in [(&v1, 1), (&v2, 2)] {
        site.write(&format!("archive/example/fullchain{n}.pem"), &pem.cert);
        let key = site.path(&format!("archive/example/privkey{n}.pem"));
        stayup::pki::write_private(&key, pem.key.as_bytes()).expect("write key");
    }
    std::fs::create_dir_all(site.path("live/example")).expect("mkdir live");
    for kind in ["fullchain", "privkey"] {
        std::os::unix::fs::symlink(
            format!("../../archive/example/{kind}1.pem"),
            site.path(&format!("live/example/{kind}.pem")),
        )
        .expect("symlink");
    }
    let (bind, backend) = endpoints().await;
    site.publish(&watch_yaml(
        bind,
        backend.addr,
        "live/example/fullchain.pem",
        "live/example/privkey.pem",
        &reload_block("300ms"),
        "",
    ));
    let mut s = Served::start(
        &site.config,
        bind,
        backend,
        site.client(),
        &v1.fingerprint(),
    )
    .await;

    certbot_flip(
        &site.path("live/example/fullchain.pem"),
        "../../archive/example/fullchain2.pem",
    );
    // Reported as changed, or as unreadable if a poll fell between the
    // unlink and the symlink.
    let warning = s.d.wait_for("live/example/fullchain.pem: ").await;
    assert!(
        warning.contains("WARN")
            && warning.contains("since generation 1")
            && warning.contains("does not reload"),
        "{warning}"
    );

    // Intermediate state: new certificate, old key.
    let line = s.d.reload().await;
    assert!(
        line.contains("reload rejected") && line.contains("trigger=signal"),
        "{line}"
    );
    assert_eq!(generation_of(&line), 1, "{line}");
    assert_eq!(
        fingerprint_at(s.bind, "localhost", site.client()).await,
        v1.fingerprint()
    );

    certbot_flip(
        &site.path("live/example/privkey.pem"),
        "../../archive/example/privkey2.pem",
    );
    let warning = s.d.wait_for("live/example/privkey.pem: ").await;
    assert!(warning.contains("since generation 1"), "{warning}");
    // A poll after that, proving the watcher had time to act on the flips.
    s.d.wait_for("poll: top-level file unchanged").await;
    assert!(
        automatic_outcomes(&s.d).is_empty(),
        "the watcher reloaded on a referenced-file change:\n{}",
        automatic_outcomes(&s.d).join("\n")
    );

    // The deploy hook's reload.
    let line = s.d.reload().await;
    assert!(
        line.contains("reload committed") && line.contains("trigger=signal"),
        "{line}"
    );
    assert_eq!(generation_of(&line), 2, "{line}");
    assert_eq!(
        fingerprint_at(s.bind, "localhost", site.client()).await,
        v2.fingerprint()
    );

    // The new generation loaded the flipped files: nothing more to report.
    s.d.wait_for("poll: top-level file unchanged").await;
    s.d.wait_for("poll: top-level file unchanged").await;
    assert_eq!(
        s.d.output().matches("since generation 1 loaded it").count(),
        2,
        "{}",
        s.d.output()
    );
    assert!(
        !s.d.output().contains("since generation 2 loaded it"),
        "{}",
        s.d.output()
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referenced_file_changed_in_place_is_reported_not_reloaded() {
    let (site, mut s, [a, b, _]) = site_serving_a("300ms").await;

    // Overwrite a's certificate and key in place with b's.
    write_in_place(&site.path("certs/a.pem"), b.cert.as_bytes());
    write_in_place(&site.path("certs/a.key"), b.key.as_bytes());
    let warned = [
        s.d.wait_for("its content changed since generation 1").await,
        s.d.wait_for("its content changed since generation 1").await,
    ];
    for name in ["certs/a.pem:", "certs/a.key:"] {
        assert!(
            warned.iter().any(|w| w.contains(name)),
            "{name} not reported: {warned:?}"
        );
    }
    assert!(warned[0].contains("publish new files"), "{}", warned[0]);
    s.d.wait_for("poll: top-level file unchanged").await;
    assert!(
        automatic_outcomes(&s.d).is_empty(),
        "{}",
        automatic_outcomes(&s.d).join("\n")
    );
    // The live generation keeps serving what it loaded.
    assert_eq!(
        fingerprint_at(s.bind, "localhost", site.client()).await,
        a.fingerprint()
    );

    // Reported once, not on every poll.
    s.d.wait_for("poll: top-level file unchanged").await;
    assert_eq!(s.d.output().matches("its content changed").count(), 2);

    // An explicit reload loads the new content.
    let line = s.d.reload().await;
    assert!(
        line.contains("reload committed") && line.contains("trigger=signal"),
        "{line}"
    );
    assert_eq!(
        fingerprint_at(s.bind, "localhost", site.client()).await,
        b.fingerprint()
    );
    s.finish().await;
}

/// AtomicWriter updates in quick succession while explicit reloads keep
/// arriving: some reloads read while `..data` is swapped under them. None
/// may commit a configuration with another publication's certificate, and
/// none may be refused because it saw a mix (the stability gate reads
/// again instead); the watch then commits the last publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_reloads_racing_atomic_writer_updates_never_mix_publications() {
    let site = Site::new();
    let pems: Vec<_> = (0..4)
        .map(|i| site.cert(&format!("p{i}"), &["localhost"]))
        .collect();
    let (bind, backend) = endpoints().await;
    let versions: Vec<(String, usize)> = (0..40)
        .map(|v| (volume_yaml(bind, backend.addr, v), v % pems.len()))
        .collect();
    // Which certificate each configuration was published with.
    let expected: std::collections::HashMap<String, String> = versions
        .iter()
        .map(|(yaml, p)| {
            (
                sha_hex(yaml.as_bytes()),
                pems[*p].fingerprint()[..16].to_string(),
            )
        })
        .collect();
    let (vol, mut s) = serve_volume(&site, &versions[0].0, &pems[0], bind, backend).await;

    let last = versions[versions.len() - 1].clone();
    let writer = {
        let (pems, dir) = (pems.clone(), vol.dir.clone());
        let versions = versions.clone();
        std::thread::spawn(move || {
            let vol = Projected { dir };
            for (yaml, p) in &versions[1..] {
                vol.publish(yaml, &pems[*p]);
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
        })
    };
    while !writer.is_finished() {
        s.d.signal("HUP");
        tokio::time::sleep(std::time::Duration::from_millis(7)).await;
    }
    writer.join().expect("writer");

    s.d.wait_for(&format!("source={}", sha_hex(last.0.as_bytes())))
        .await;
    let output = s.d.output();
    assert!(!output.contains("reload rejected"), "{output}");
    let mut serving = pems[0].fingerprint()[..16].to_string();
    for line in output
        .lines()
        .filter(|l| l.contains("reload committed") && !l.contains("trigger=startup"))
    {
        if let Some(swap) = line.split("certificate-swapped web: ").nth(1) {
            let to = swap.split(" -> ").nth(1).expect("swap target");
            serving = to[..16].to_string();
        }
        let source = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("source="))
            .expect("source");
        assert_eq!(
            expected[source], serving,
            "mixed publication committed: {line}"
        );
    }
    assert_eq!(
        fingerprint_at(s.bind, "localhost", site.client()).await,
        pems[last.1].fingerprint()
    );
    s.finish().await;
}

/// `/etc/stayup/stayup.yaml -> /srv/deploy/current/stayup.yaml`, with
/// `current -> releases/N`: a new file renamed into the release folder, and
/// `current` re-pointed to the next release, are each seen by the watch
/// (the poll is off), though neither happens in the configuration's folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_symlinked_into_another_tree_is_watched_along_the_symlinks() {
    use std::os::unix::fs::symlink;
    let site = Site::new();
    let a = site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let (bind, backend) = endpoints().await;
    let backend_addr = backend.addr;
    let yaml = |cert: &str| {
        watch_yaml(
            bind,
            backend_addr,
            &site
                .path(&format!("certs/{cert}.pem"))
                .display()
                .to_string(),
            &site
                .path(&format!("certs/{cert}.key"))
                .display()
                .to_string(),
            &reload_block("0s"),
            "",
        )
    };
    let deploy = site.path("deploy");
    let release = |n: u32, text: &str| {
        let dir = deploy.join(format!("releases/{n}"));
        std::fs::create_dir_all(&dir).expect("mkdir release");
        let tmp = dir.join(".stayup.yaml.new");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, dir.join("stayup.yaml")).expect("rename");
    };
    let point_current_at = |n: u32| {
        let tmp = deploy.join(".current.new");
        symlink(format!("releases/{n}"), &tmp).expect("symlink");
        std::fs::rename(&tmp, deploy.join("current")).expect("rename symlink");
    };
    release(1, &yaml("a"));
    point_current_at(1);
    let etc = site.path("etc");
    std::fs::create_dir_all(&etc).expect("mkdir etc");
    let config = etc.join("stayup.yaml");
    symlink(deploy.join("current/stayup.yaml"), &config).expect("symlink config");
    let mut s = Served::start(&config, bind, backend, site.client(), &a.fingerprint()).await;

    // A new file renamed into the release folder.
    release(1, &yaml("b"));
    s.expect_watch_commit(2, &b, site.client()).await;

    // The next release, and `current` re-pointed at it.
    release(2, &yaml("a"));
    point_current_at(2);
    s.expect_watch_commit(3, &a, site.client()).await;

    // And a file renamed into that release's folder, now the one watched.
    release(2, &yaml("b"));
    let line = expect_outcome(&mut s.d, "committed", "watch").await;
    assert_eq!(generation_of(&line), 4, "{line}");
    assert!(
        automatic_outcomes(&s.d)
            .iter()
            .all(|l| !l.contains("trigger=poll"))
    );
    s.finish().await;
}
