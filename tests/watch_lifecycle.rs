//! The watch survives what happens to the folder and the file around it,
//! follows its own settings from each committed generation, falls back to
//! polling when it cannot be set up, and never gets in the way of an
//! explicit reload.

mod common;
mod watch_support;

use std::time::Duration;

use common::*;
use watch_support::*;

/// Enough streamed chunks (each followed by a 5 ms pause) to prove that more
/// than a 200 ms debounce has passed.
const PAST_DEBOUNCE: u64 = 64 * 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_folder_removed_and_recreated_is_watched_again() {
    let site = Site::new();
    let a = site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let (bind, backend) = endpoints().await;
    let conf = site.path("conf");
    let config = conf.join("stayup.yaml");
    let socket = site.path("ctl.sock");
    let yaml = |cert: &str| {
        watch_yaml(
            bind,
            backend.addr,
            &format!("../certs/{cert}.pem"),
            &format!("../certs/{cert}.key"),
            &reload_block("30s"),
            &format!("control:\n  socket: {}\n", socket.display()),
        )
    };
    let publish = |text: &str| {
        let tmp = conf.join(".new");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &config).expect("rename");
    };
    std::fs::create_dir(&conf).expect("mkdir conf");
    publish(&yaml("a"));
    let (to_b, to_a) = (yaml("b"), yaml("a"));
    let mut s = Served::start(&config, bind, backend, site.client(), &a.fingerprint()).await;

    std::fs::remove_dir_all(&conf).expect("rm -rf conf");
    s.d.wait_for("was removed or replaced").await;
    assert_eq!(
        fingerprint_at(s.bind, "localhost", site.client()).await,
        a.fingerprint()
    );
    s.streamer.advance(8 * 1024).await;

    std::fs::create_dir(&conf).expect("mkdir conf again");
    publish(&to_b);
    s.d.wait_for("watching the configuration folder again")
        .await;
    // The reload that follows the new watch: it commits b, unless the
    // reload scheduled by the removal already found b and committed it.
    let line = s.d.outcome().await;
    assert!(line.contains("trigger=watch"), "{line}");
    assert!(
        line.contains("reload unchanged") || line.contains("reload committed"),
        "{line}"
    );
    assert_eq!(generation_of(&line), 2, "{line}");
    assert_eq!(
        fingerprint_at(s.bind, "localhost", site.client()).await,
        b.fingerprint()
    );

    // The new folder is watched: only the watch can pick this up in time
    // (the poll is 30 s away, longer than any wait).
    publish(&to_a);
    s.expect_watch_commit(3, &a, site.client()).await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_config_keeps_serving_and_is_loaded_when_it_returns() {
    let (site, mut s, [a, b, _]) = site_serving_a("30s").await;

    std::fs::remove_file(&site.config).expect("rm config");
    let warning = s.d.wait_for("is absent").await;
    assert!(
        warning.contains("WARN") && warning.contains("keeps serving"),
        "{warning}"
    );
    assert!(
        automatic_outcomes(&s.d).is_empty(),
        "{}",
        automatic_outcomes(&s.d).join("\n")
    );

    // An explicit reload meanwhile says why it cannot load.
    let line = s.d.reload().await;
    assert!(
        line.contains("reload rejected") && line.contains("trigger=signal"),
        "{line}"
    );
    assert_eq!(
        fingerprint_at(s.bind, "localhost", site.client()).await,
        a.fingerprint()
    );
    s.streamer.advance(8 * 1024).await;

    site.publish(&s.config_for("b", "30s"));
    s.expect_watch_commit(2, &b, site.client()).await;
    assert!(s.d.output().contains("is back"), "{}", s.d.output());
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_settings_of_a_committed_generation_take_effect() {
    let (site, mut s, [a, b, _]) = site_serving_a("0").await;
    let (bind, backend_addr) = (s.bind, s.backend.addr);
    let yaml = |cert: &str, reload: &str| cert_yaml(bind, backend_addr, cert, reload);
    let off = "  watch: false\n";
    let faster = "  watch: true\n  debounce: 100ms\n  poll: 300ms\n";

    // The watch turns itself off.
    site.publish(&yaml("a", off));
    let line = expect_outcome(&mut s.d, "committed", "watch").await;
    assert!(
        line.contains("setting-changed reload.watch: true -> false"),
        "{line}"
    );
    s.d.wait_for("automatic reload is off").await;

    // Off: a new file is not picked up...
    site.publish(&yaml("b", off));
    s.streamer.advance(PAST_DEBOUNCE).await;
    assert_eq!(
        automatic_outcomes(&s.d).len(),
        1,
        "{}",
        automatic_outcomes(&s.d).join("\n")
    );
    assert_eq!(
        fingerprint_at(s.bind, "localhost", site.client()).await,
        a.fingerprint()
    );
    // ...but SIGHUP works.
    let line = s.d.reload().await;
    assert!(
        line.contains("reload committed") && line.contains("trigger=signal"),
        "{line}"
    );
    assert_eq!(generation_of(&line), 3, "{line}");
    assert_eq!(
        fingerprint_at(s.bind, "localhost", site.client()).await,
        b.fingerprint()
    );

    // Turned back on by an explicit reload, with new debounce and poll.
    site.publish(&yaml("c", faster));
    s.streamer.advance(PAST_DEBOUNCE).await;
    assert_eq!(automatic_outcomes(&s.d).len(), 1);
    let line = s.d.reload().await;
    assert!(
        line.contains("reload committed") && line.contains("trigger=signal"),
        "{line}"
    );
    assert_eq!(generation_of(&line), 4, "{line}");
    let announced = s.d.wait_for("for changes").await;
    assert!(
        announced.contains("debounce=100ms") && announced.contains("poll=300ms"),
        "{announced}"
    );
    // The poll now runs (it did not with `poll: 0`).
    s.d.wait_for("poll: top-level file unchanged").await;

    site.publish(&yaml("a", faster));
    s.expect_watch_commit(5, &a, site.client()).await;
    s.finish().await;
}

/// The folder is not readable by the daemon (mode 0311, and the daemon runs
/// without the capabilities that let root ignore that), so inotify refuses
/// the watch: the daemon warns and polls instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwatchable_folder_falls_back_to_polling() {
    use std::os::unix::fs::PermissionsExt;
    let site = Site::new();
    let a = site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let (bind, backend) = endpoints().await;
    site.publish(&cert_yaml(bind, backend.addr, "a", &reload_block("30s")));
    let dir = site.path("");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o311)).expect("chmod 0311");

    let caps = "-dac_override,-dac_read_search";
    let mut d = Daemon::spawn_wrapped(
        &[
            "setpriv",
            &format!("--bounding-set={caps}"),
            &format!("--inh-caps={caps}"),
        ],
        &site.config,
    );
    let warning = d.wait_for_any(&["cannot watch", "stayup ready"]).await;
    assert!(
        warning.contains("falling back to polling") && warning.contains("every 1s"),
        "{warning}\n{}",
        d.output()
    );
    d.wait_for("stayup ready").await;
    let mut s = Served::attach(d, bind, backend, site.client(), &a.fingerprint()).await;

    site.publish(&s.config_for("b", "30s"));
    s.expect_reload("committed", "poll", 2, &b, site.client())
        .await;
    s.finish().await;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod back");
}

/// `stayup reload` during a storm of renames gets its own answer at once:
/// the watcher waits for quiet and does not queue reloads in front of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_reloads_are_answered_during_a_storm() {
    let (site, mut s, [_, b, _]) = site_serving_a("30s").await;
    let configs: Vec<String> = (1..=149)
        .map(|i| {
            let cert = if i % 2 == 0 { "a" } else { "b" };
            format!("# {i}\n{}", s.config_for(cert, "30s"))
        })
        .collect();
    let last = configs[configs.len() - 1].clone();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (dir, target, halt) = (site.path(""), site.config.clone(), stop.clone());
    let storm = std::thread::spawn(move || {
        for (i, text) in configs.iter().enumerate() {
            if halt.load(std::sync::atomic::Ordering::Relaxed) && i % 2 == 0 {
                // Stop on a config naming b, once asked.
                let tmp = dir.join(".storm.tmp");
                std::fs::write(&tmp, &configs[configs.len() - 1]).expect("write");
                std::fs::rename(&tmp, &target).expect("rename");
                return;
            }
            let tmp = dir.join(".storm.tmp");
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, &target).expect("rename");
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let config = site.config.to_string_lossy().into_owned();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || stayup(&["reload", "--config", &config]))
            .await
            .expect("join");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Its own answer: the new content, or (if every attempt found the
    // files changing under it) a refusal that says so.
    match code {
        0 => assert!(
            out.contains("committed") || out.contains("unchanged"),
            "{out}"
        ),
        1 => assert!(
            format!("{out}{err}").contains("kept changing"),
            "{out}{err}"
        ),
        _ => panic!("stayup reload: {code} {out}{err}"),
    }
    tokio::task::spawn_blocking(move || storm.join().expect("storm"))
        .await
        .expect("join");

    // After the storm the watch commits the last publication.
    s.d.wait_for(&format!("source={}", sha_hex(last.as_bytes())))
        .await;
    assert_eq!(
        fingerprint_at(s.bind, "localhost", site.client()).await,
        b.fingerprint()
    );
    s.finish().await;
}
