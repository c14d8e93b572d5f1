//! `stayup upgrade`: the running daemon hands its listening sockets to a
//! new process of the binary and retires, and no connection is lost: one
//! streaming through the old process runs to its end, new connections made
//! all through the hand-over are all served, the control socket and the
//! admin endpoint answer from the new process. A new process that cannot
//! start leaves the old one serving, with the reason.

mod common;
mod control_support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use control_support::*;
use rustls::HandshakeKind;

/// The process an upgrade started: not the test's child, so it is stopped
/// by pid, also when the test fails.
struct Upgraded(u32);

impl Upgraded {
    fn alive(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.0)).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.0))
                .unwrap_or_default()
                .contains(") Z ")
    }

    async fn stop(self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.0.to_string())
            .status();
        let deadline = Instant::now() + WAIT;
        while self.alive() {
            assert!(Instant::now() < deadline, "pid {} did not stop", self.0);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Upgraded {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .arg(self.0.to_string())
            .status();
    }
}

async fn upgrade(config: &std::path::Path) -> (i32, String, String) {
    let path = config.to_str().expect("utf-8 path").to_string();
    tokio::task::spawn_blocking(move || stayup(&["upgrade", "--config", &path]))
        .await
        .expect("upgrade thread")
}

/// The daemon's status once `done` holds for it.
async fn status_until(
    config: &std::path::Path,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = status_json(config).await;
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "status never got there: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pid in `upgraded: pid N serves ...`.
fn new_pid(out: &str) -> u32 {
    out.split_once("upgraded: pid ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {out:?}"))
}

fn with_admin(bind: SocketAddr, backend: SocketAddr, admin: SocketAddr) -> String {
    format!(
        "{}admin:\n  listen: \"{admin}\"\n",
        simple_config(bind, backend, "a")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_hands_over_the_sockets_and_loses_no_connection() {
    let admin: SocketAddr = free_addr();
    let (site, backend, bind, mut old) = serving(|b, be| with_admin(b, be, admin)).await;
    let old_pid = old.pid() as u32;
    let streamer = streamer_at(bind, "localhost", site.client()).await;
    let churn = Churn::start(bind, site.client());
    churn.wait_served(20).await;
    // The old process has committed generation 2 when it hands over.
    site.publish(&format!(
        "{}# second revision\n",
        with_admin(bind, backend.addr, admin)
    ));
    let reloaded = old.reload().await;
    assert!(reloaded.contains("committed"), "{reloaded}");

    let (code, out, err) = upgrade(&site.config).await;
    assert_eq!(code, 0, "upgrade failed: {out}{err}\n{}", old.output());
    let upgraded = Upgraded(new_pid(&out));
    // Generation numbers go on from the old process's: a monitor sees
    // one more commit, not a start from 1.
    assert!(
        out.contains("serves generation 3 "),
        "unexpected answer: {out}"
    );
    assert_ne!(upgraded.0, old_pid);
    assert!(
        out.contains(&format!("(was pid {old_pid}")),
        "unexpected answer: {out}"
    );
    old.wait_for("upgrade: committed").await;

    // The control socket and the admin endpoint now answer from the new process.
    let status = status_json(&site.config).await;
    assert_eq!(status["pid"].as_u64(), Some(u64::from(upgraded.0)));
    assert_eq!(status["generation"].as_u64(), Some(3));
    assert_eq!(status["trigger"], "upgrade", "{status}");
    let (code, _, body) = http_get(admin, "/status").await;
    assert_eq!(code, 200);
    let admin_status: serde_json::Value = serde_json::from_str(&body).expect("admin JSON");
    assert_eq!(admin_status["pid"].as_u64(), Some(u64::from(upgraded.0)));
    // The new process shows the old one draining: the streaming connection.
    let previous = status_until(&site.config, |s| {
        s["previous_process"]["connections"].as_u64() == Some(1)
    })
    .await["previous_process"]
        .clone();
    assert_eq!(
        previous["pid"].as_u64(),
        Some(u64::from(old_pid)),
        "{previous}"
    );
    let (code, _, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(
        metric(&metrics, "stayup_previous_process_connections"),
        Some(1.0)
    );
    let path = site.config.to_str().expect("utf-8 path").to_string();
    let (_, printed, _) =
        tokio::task::spawn_blocking(move || stayup(&["status", "--config", &path]))
            .await
            .expect("status thread");
    assert!(
        printed.contains(&format!(
            "previous   pid {old_pid} (upgraded from) keeps 1 open connection(s)"
        )),
        "{printed}"
    );

    // New connections keep being served, now by the new process only.
    let before = churn.served.load(Ordering::Relaxed);
    churn.wait_served(before + 20).await;
    let (served, failures) = churn.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} connections made during the upgrade failed: {failures:?}",
        failures.len(),
        served + failures.len() as u64
    );

    // The connection the old process accepted streams on, through it.
    assert!(
        old.child.try_wait().expect("try_wait").is_none(),
        "the old process exited while it still had a connection"
    );
    streamer.advance(256 * 1024).await;
    let bytes = streamer.finish().await.expect("the old connection broke");
    assert!(bytes >= 256 * 1024);

    // Its last connection ended: the old process exits, cleanly.
    let exit = old.wait_exit().await;
    assert!(exit.success(), "the old process exited with {exit}");
    assert!(upgraded.alive(), "the new process ended with the old one");
    // ...and the new process no longer shows it.
    status_until(&site.config, |s| s["previous_process"].is_null()).await;
    let (_, _, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(
        metric(&metrics, "stayup_previous_process_connections"),
        Some(0.0)
    );
    let _ = fingerprint_at(bind, "localhost", site.client()).await;
    upgraded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_leaves_the_old_process_serving_and_says_why() {
    let (site, backend, bind, mut old) = serving(|b, be| simple_config(b, be, "a")).await;
    let old_pid = old.pid() as u32;
    let mut open = connected(bind, "localhost", site.client()).await;
    echo_round_trip(&mut open, b"before").await;

    // The new process reads the file as it is now (the old one does not
    // watch it): a certificate that does not exist.
    let good = simple_config(bind, backend.addr, "a");
    site.publish(&good.replace("certs/a.pem", "certs/missing.pem"));
    let (code, out, err) = upgrade(&site.config).await;
    assert_eq!(code, 1, "a broken upgrade was not rejected: {out}{err}");
    if std::env::var_os("STAYUP_TEST_ECHO").is_some() {
        eprintln!("{out}");
    }
    assert!(
        out.contains(&format!("rejected: pid {old_pid} keeps serving")),
        "{out}"
    );
    assert!(
        out.contains("certs/missing.pem"),
        "the reason does not name the file: {out}"
    );
    old.wait_for("upgrade: rejected").await;

    // Nothing changed: the same process answers and serves, old and new
    // connections alike.
    let status = status_json(&site.config).await;
    assert_eq!(status["pid"].as_u64(), Some(u64::from(old_pid)));
    echo_round_trip(&mut open, b"after").await;
    let _ = fingerprint_at(bind, "localhost", site.client()).await;

    // And a later upgrade, with the file repaired, goes through.
    site.publish(&good);
    let (code, out, err) = upgrade(&site.config).await;
    assert_eq!(code, 0, "upgrade failed: {out}{err}\n{}", old.output());
    let upgraded = Upgraded(new_pid(&out));
    assert_eq!(
        status_json(&site.config).await["pid"].as_u64(),
        Some(u64::from(upgraded.0))
    );
    echo_round_trip(&mut open, b"still").await;
    drop(open);
    assert!(old.wait_exit().await.success());
    upgraded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_runs_the_binary_now_installed_at_the_path() {
    use std::os::unix::fs::MetadataExt;
    let (site, _backend, bind) = site_for(|b, be| simple_config(b, be, "a")).await;
    // stayup installed at a path of its own, as a package would.
    let installed = site.path("bin/stayup");
    std::fs::create_dir_all(site.path("bin")).expect("mkdir bin");
    std::fs::copy(stayup_bin(), &installed).expect("install stayup");
    let mut cmd = std::process::Command::new(&installed);
    cmd.arg("run")
        .arg("--config")
        .arg(&site.config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .env_remove("RUST_LOG");
    let mut old = Daemon::spawn_command(cmd);
    old.wait_for("stayup ready").await;
    let mut open = connected(bind, "localhost", site.client()).await;

    // A new release replaces the file the way package managers do: a new
    // file renamed over the old path. The running binary is now "deleted".
    let staged = site.path("bin/.stayup.new");
    std::fs::copy(stayup_bin(), &staged).expect("stage the new binary");
    std::fs::rename(&staged, &installed).expect("install the new binary");
    let new_inode = std::fs::metadata(&installed).expect("stat").ino();
    let old_exe = std::fs::read_link(format!("/proc/{}/exe", old.pid())).expect("old exe");
    assert!(
        old_exe.to_string_lossy().ends_with("(deleted)"),
        "{old_exe:?}"
    );

    let (code, out, err) = upgrade(&site.config).await;
    assert_eq!(code, 0, "upgrade failed: {out}{err}\n{}", old.output());
    let upgraded = Upgraded(new_pid(&out));
    let exe = format!("/proc/{}/exe", upgraded.0);
    assert_eq!(std::fs::read_link(&exe).expect("new exe"), installed);
    assert_eq!(
        std::fs::metadata(&exe).expect("stat new exe").ino(),
        new_inode
    );

    echo_round_trip(&mut open, b"old binary").await;
    let _ = fingerprint_at(bind, "localhost", site.client()).await;
    drop(open);
    assert!(old.wait_exit().await.success());
    upgraded.stop().await;
}

/// Under systemd the new process becomes the service's main process
/// (`MAINPID=`), and the old one, retiring, sends nothing that would make
/// systemd think the service stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_new_process_becomes_the_main_pid() {
    let (site, _backend, bind) = site_for(|b, be| simple_config(b, be, "a")).await;
    let path = site.path("notify.sock");
    let rx = notify_receiver(&path);
    let recv = || rx.recv_timeout(WAIT).expect("no notification in time");
    let notify = path.to_str().expect("utf-8");
    let mut old = Daemon::spawn(&site.config, &[("NOTIFY_SOCKET", notify)]);
    old.wait_for("stayup ready").await;
    assert_eq!(recv(), "READY=1\nSTATUS=serving generation 1\n");
    let mut open = connected(bind, "localhost", site.client()).await;

    let (code, out, err) = upgrade(&site.config).await;
    assert_eq!(code, 0, "upgrade failed: {out}{err}\n{}", old.output());
    let upgraded = Upgraded(new_pid(&out));
    assert_eq!(
        recv(),
        format!(
            "MAINPID={}\nREADY=1\nSTATUS=serving generation 2 (upgraded)\n",
            upgraded.0
        )
    );

    echo_round_trip(&mut open, b"draining").await;
    drop(open);
    assert!(old.wait_exit().await.success());
    // The first word after the old process's exit is the new one's stop.
    upgraded.stop().await;
    assert_eq!(recv(), "STOPPING=1\n");
}

/// The old process keeps its connections for `drain.timeout` at most, as
/// for any superseded generation, then closes them and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_upgrade_the_old_process_drains_within_drain_timeout() {
    let (site, _backend, bind, mut old) =
        serving(|b, be| format!("{}drain:\n  timeout: 1s\n", simple_config(b, be, "a"))).await;
    let mut open = connected(bind, "localhost", site.client()).await;
    echo_round_trip(&mut open, b"before").await;
    let (code, out, err) = upgrade(&site.config).await;
    assert_eq!(code, 0, "upgrade failed: {out}{err}\n{}", old.output());
    let upgraded = Upgraded(new_pid(&out));
    assert!(out.contains("keeps its 1 open connection(s)"), "{out}");
    // Closed by the old process once drain.timeout has passed.
    let started = Instant::now();
    let _ = read_to_close(&mut open).await;
    assert!(started.elapsed() >= Duration::from_millis(500));
    old.wait_for("drain.timeout reached").await;
    assert!(old.wait_exit().await.success());
    let _ = fingerprint_at(bind, "localhost", site.client()).await;
    upgraded.stop().await;
}

/// A client that resumed with the old process resumes with the new one:
/// its session ticket opens there, no full handshake.
/// A client resumes with the new process what it began with the old one:
/// by ticket (`session_id_only` false), or, TLS 1.2 only, by session ID (a
/// client that takes no tickets, like Java 8's).
async fn resumes_across_an_upgrade(
    version: &'static rustls::SupportedProtocolVersion,
    session_id_only: bool,
) {
    let (site, _backend, bind, mut old) = serving(|b, be| simple_config(b, be, "a")).await;
    let mut client = resuming_client(&site, version);
    if session_id_only {
        let mut cfg = (*client).clone();
        cfg.resumption = cfg
            .resumption
            .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
        client = std::sync::Arc::new(cfg);
    }
    let mut first = connected(bind, "localhost", client.clone()).await;
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Full)
    );
    // Reading takes in the tickets sent after the handshake.
    echo_round_trip(&mut first, b"first").await;
    drop(first);

    let (code, out, err) = upgrade(&site.config).await;
    assert_eq!(code, 0, "upgrade failed: {out}{err}\n{}", old.output());
    let upgraded = Upgraded(new_pid(&out));
    // The new process shares the old one's log.
    old.wait_for("upgrade: took over the session-ticket keys")
        .await;
    let cache = old
        .wait_for("upgrade: took over the TLS session cache")
        .await;
    // A TLS 1.3 session lives in its ticket alone; a TLS 1.2 one is also
    // kept in the cache, for a client that resumes by its ID.
    let kept = if version == &rustls::version::TLS12 {
        1
    } else {
        0
    };
    assert!(cache.contains(&format!("sessions={kept}")), "{cache}");
    // Its last connection gone, the old process exits: the next
    // connection can only reach the new one.
    assert!(old.wait_exit().await.success());

    let mut second = connected(bind, "localhost", client).await;
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed),
        "{:?}: a full handshake after the upgrade",
        version.version
    );
    echo_round_trip(&mut second, b"second").await;
    drop(second);
    // The new process counts it as resumed: its first and only handshake.
    let status = status_json(&site.config).await;
    assert_eq!(status["connections"]["handshakes_ok"], 1, "{status}");
    assert_eq!(status["connections"]["handshakes_resumed"], 1, "{status}");
    let (code, human, _) = stayup(&["status", "--config", site.config.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        human.contains("handshakes 1 ok (1 resumed), 0 failed"),
        "{human}"
    );
    upgraded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls13_session_resumes_across_an_upgrade() {
    resumes_across_an_upgrade(&rustls::version::TLS13, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls12_session_resumes_across_an_upgrade() {
    resumes_across_an_upgrade(&rustls::version::TLS12, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls12_session_id_resumes_across_an_upgrade() {
    resumes_across_an_upgrade(&rustls::version::TLS12, true).await;
}

#[tokio::test]
async fn upgrade_without_a_daemon_exits_2() {
    let (site, _backend, _bind, old) = serving(|b, be| simple_config(b, be, "a")).await;
    drop(old);
    let (code, out, err) = upgrade(&site.config).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("no daemon answering"), "{err}");
}
