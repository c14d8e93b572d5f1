//! `stayup reload` and `stayup status` against a live daemon over its
//! control socket: exit codes, the JSON answers, the change lists, and the
//! socket's life (stale file replaced, live socket never stolen, removed on
//! a clean stop, moved by a reload).

mod common;
mod control_support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;

use common::*;
use control_support::*;
use serde_json::Value;

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_exit_codes_and_answers() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let bind = addr();
    site.publish(&simple_config(bind, backend.addr, "a"));
    let mut d = Daemon::start(&site.config).await;
    let config = site.config.to_str().expect("utf-8");
    let socket = site.path("stayup.sock");
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");

    // Same content: unchanged, exit 0.
    let (code, out, _) = cli(&["reload", "--config", config]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("unchanged: generation 1"), "{out}");

    // A certificate swap: committed, exit 0, the change names both fingerprints.
    site.publish(&simple_config(bind, backend.addr, "b"));
    let (code, v) = reload_json(&site.config).await;
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["result"], "committed");
    assert_eq!(v["generation"], 2);
    assert_eq!(v["previous"], 1);
    assert_eq!(v["trigger"], "control");
    assert!(v["reason"].is_null());
    let changes = v["changes"].as_array().expect("changes");
    let swap = changes
        .iter()
        .find(|c| c["kind"] == "certificate-swapped")
        .unwrap_or_else(|| panic!("no certificate-swapped in {v}"));
    assert_eq!(swap["subject"], "web");
    let to = swap["to"].as_str().expect("to");
    assert!(
        to.starts_with(&b.fingerprint()[..16]),
        "{to} vs {}",
        b.fingerprint()
    );
    assert!(to.contains("expires"), "{to}");
    assert!(swap["from"].as_str().is_some_and(|f| f.contains("expires")));
    d.wait_for("reload committed generation=2").await;
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        b.fingerprint()
    );

    // A referenced file that is missing: rejected, exit 1, with the reason;
    // generation 2 keeps serving.
    site.publish(&simple_config(bind, backend.addr, "missing"));
    let (code, out, _) = cli(&["reload", "--config", config]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("rejected: generation 2 keeps serving"),
        "{out}"
    );
    assert!(out.contains("certs/missing."), "{out}");
    d.wait_for("reload rejected").await;

    // A top-level file that no longer parses: the daemon (found at the
    // default socket) rejects it, exit 1, and says where the file is wrong.
    site.publish("listeners: [\n  this is: not yaml\n");
    let (code, v) = reload_json(&site.config).await;
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["result"], "rejected");
    assert_eq!(v["generation"], 2);
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("stayup.yaml")),
        "{v}"
    );
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        b.fingerprint()
    );

    // Good again: committed.
    site.publish(&simple_config(bind, backend.addr, "a"));
    let (code, v) = reload_json(&site.config).await;
    assert_eq!((code, v["generation"].as_u64()), (0, Some(3)), "{v}");

    // A clean stop removes the socket before the process exits; then
    // nobody answers: exit 2.
    assert!(d.stop().await.success());
    assert!(
        !socket.exists(),
        "control socket left behind after a clean stop"
    );
    let (code, _, err) = cli(&["reload", "--config", config]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no daemon answering"), "{err}");
    let (code, _, err) = cli(&["status", "--config", config]).await;
    assert_eq!(code, 2, "{err}");
}

/// `--socket` reaches the daemon without the configuration, the way a
/// sidecar that shares only the socket's folder asks; a socket nobody
/// answers on is "no daemon answering" (exit 2), named, for every command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_flag_reaches_the_daemon_without_the_configuration() {
    let (site, backend, bind, d) = serving(|bind, backend| simple_config(bind, backend, "a")).await;
    site.cert("b", &["localhost"]);
    let socket = site.path("stayup.sock");
    let socket = socket.to_str().expect("utf-8");

    let (code, out, err) = cli(&["status", "--socket", socket, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).expect("status JSON");
    assert_eq!(v["generation"], 1, "{v}");

    site.publish(&simple_config(bind, backend.addr, "b"));
    let (code, out, err) = cli(&["reload", "--socket", socket]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("committed: generation 2 (was 1)"), "{out}");
    let (code, out, _) = cli(&["status", "--socket", socket, "--json"]).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(out.trim()).expect("status JSON");
    assert_eq!(v["generation"], 2, "{v}");

    // One or the other, not both: a usage error names the conflict.
    let config = site.config.to_str().expect("utf-8");
    let (code, _, err) = cli(&["status", "--socket", socket, "--config", config]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");

    let nobody = site.path("nobody.sock");
    let nobody = nobody.to_str().expect("utf-8");
    for command in ["status", "reload", "upgrade"] {
        let (code, _, err) = cli(&[command, "--socket", nobody]).await;
        assert_eq!(code, 2, "{command}: {err}");
        assert!(
            err.contains(&format!(
                "stayup {command}: no daemon answering on {nobody}"
            )),
            "{command}: {err}"
        );
    }
    assert!(d.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_config_with_custom_socket_is_rejected_without_a_daemon_answer() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let bind = addr();
    std::fs::create_dir_all(site.path("run")).expect("mkdir");
    let yaml = format!(
        "{}control:\n  socket: run/ctl.sock\n",
        simple_config(bind, backend.addr, "a")
    );
    site.publish(&yaml);
    let d = Daemon::start(&site.config).await;
    let config = site.config.to_str().expect("utf-8");
    let (code, out, _) = cli(&["status", "--config", config]).await;
    assert_eq!(code, 0, "{out}");

    // The socket path cannot be read from a broken file: the content is
    // certainly rejected, so the answer is 1 with the parse error.
    site.publish("listeners: {{{\n");
    let (code, _, err) = cli(&["reload", "--config", config]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("stayup.yaml"), "{err}");
    assert!(err.contains("does not parse"), "{err}");
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_shape() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let a = site.cert("a", &["localhost", "alt.example"]);
    let bind = addr();
    site.publish(&simple_config(bind, backend.addr, "a"));
    let d = Daemon::start(&site.config).await;
    let held = connect(bind, "localhost", site.client())
        .await
        .expect("connect");

    let s = status_json(&site.config).await;
    assert_eq!(s["generation"], 1);
    assert_eq!(s["trigger"], "startup");
    assert_eq!(s["pid"].as_u64(), Some(u64::from(d.child.id())));
    let source = s["source_sha256"].as_str().expect("source_sha256");
    assert_eq!(source.len(), 64);
    let bytes = std::fs::read(&site.config).expect("read config");
    assert_eq!(source, hex::encode(stayup::material::sha256(&bytes)));
    assert!(s["loaded_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(s["listeners"][0]["name"], "web");
    assert_eq!(s["listeners"][0]["bind"], bind.to_string());
    assert_eq!(s["listeners"][0]["bound"], bind.to_string());
    assert_eq!(s["listeners"][0]["backend"], backend.addr.to_string());
    let cert = &s["certificates"][0];
    assert_eq!(cert["listener"], "web");
    assert_eq!(cert["sha256"], a.fingerprint());
    assert!(
        cert["subject"]
            .as_str()
            .is_some_and(|x| x.contains("localhost"))
    );
    let sans: Vec<&str> = cert["sans"]
        .as_array()
        .expect("sans")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(sans.iter().any(|n| n.contains("alt.example")), "{sans:?}");
    assert!(cert["not_before"].as_str().is_some());
    assert!(cert["not_after"].as_str().is_some());
    let days = cert["days_left"].as_i64().expect("days_left");
    assert!((28..=30).contains(&days), "{days}");
    assert_eq!(cert["expiring"], false);
    assert_eq!(s["expiry_warnings"].as_array().map(Vec::len), Some(0));
    assert_eq!(s["warn_expiry_days"].as_f64(), Some(14.0));
    let gens = s["generations"].as_array().expect("generations");
    assert_eq!(gens.len(), 1);
    assert_eq!(gens[0]["live"], true);
    assert!(s["oldest_draining"].is_null());
    assert_eq!(s["modified_in_place"].as_array().map(Vec::len), Some(0));
    let last = s["last_reloads"].as_array().expect("last_reloads");
    assert_eq!(last[0]["trigger"], "startup");
    assert_eq!(last[0]["result"], "committed");
    // The held connection shows on generation 1 (its count may lag the
    // handshake by a moment).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = status_json(&site.config).await;
        if s["generations"][0]["connections"] == 1 && s["connections"]["active"] == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Let generation 1 age a little, so its draining time (since it was
    // superseded) can be told apart from its age (since it was loaded).
    let deadline = std::time::Instant::now() + WAIT;
    while status_json(&site.config).await["generations"][0]["age_seconds"]
        .as_u64()
        .is_none_or(|a| a < 2)
    {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // After a swap the old generation drains while the held connection lives.
    site.cert("b", &["localhost"]);
    site.publish(&simple_config(bind, backend.addr, "b"));
    let (code, _) = reload_json(&site.config).await;
    assert_eq!(code, 0);
    let s = status_json(&site.config).await;
    assert_eq!(s["generation"], 2);
    assert_eq!(s["trigger"], "control");
    assert_eq!(s["generations_live"], 2);
    assert_eq!(s["oldest_draining"]["generation"], 1);
    let draining = s["oldest_draining"]["draining_seconds"]
        .as_u64()
        .expect("draining_seconds");
    let age = s["generations"][0]["age_seconds"].as_u64().expect("age");
    assert_eq!(s["generations"][0]["generation"], 1);
    assert!(draining < age, "draining {draining}s, age {age}s");
    assert_eq!(s["last_reloads"][0]["trigger"], "control");
    assert_eq!(s["last_reloads"][1]["trigger"], "startup");

    // Human form: one screen with the generation and the certificate.
    let config = site.config.to_str().expect("utf-8");
    let (code, out, _) = cli(&["status", "--config", config]).await;
    assert_eq!(code, 0);
    assert!(out.contains("generation 2"), "{out}");
    assert!(out.contains("(draining)"), "{out}");
    assert!(
        out.contains("committed via control (generation 2)"),
        "{out}"
    );
    assert!(
        out.contains("committed via startup (generation 1)"),
        "{out}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_addition_is_listed_and_served() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let web = addr();
    let api = addr();
    site.publish(&simple_config(web, backend.addr, "a"));
    let _d = Daemon::start(&site.config).await;
    site.publish(&format!(
        "listeners:\n{}{}reload:\n  watch: false\n",
        listener_yaml("web", web, backend.addr, &["a"]),
        listener_yaml("api", api, backend.addr, &["a"])
    ));
    let (code, v) = reload_json(&site.config).await;
    assert_eq!(code, 0, "{v}");
    let changes = v["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{v}");
    assert_eq!(changes[0]["kind"], "listener-added");
    assert_eq!(changes[0]["subject"], "api");
    assert_eq!(changes[0]["to"], api.to_string());
    let mut s = connect(api, "localhost", site.client())
        .await
        .expect("new listener serves");
    echo_round_trip(&mut s, b"hello api").await;
    let (code, out, _) = cli(&["reload", "--config", site.config.to_str().expect("utf-8")]).await;
    assert_eq!(code, 0);
    assert!(out.contains("unchanged"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_refuses_before_binding_and_the_first_keeps_serving() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let a = site.cert("a", &["localhost"]);
    let first = addr();
    site.publish(&simple_config(first, backend.addr, "a"));
    let mut d1 = Daemon::start(&site.config).await;

    // Another configuration in the same folder: same default socket, a
    // different port. The second daemon must refuse without listening.
    let second = addr();
    let other = site.write(
        "other.yaml",
        simple_config(second, backend.addr, "a").as_bytes(),
    );
    let mut d2 = Daemon::spawn(&other, &[]);
    let status = d2.wait_exit().await;
    assert_eq!(status.code(), Some(1), "{}", d2.output());
    let out = d2.output();
    assert!(
        out.contains("another stayup daemon is answering on this control socket"),
        "{out}"
    );
    assert!(!out.contains("listening"), "bound a listener first:\n{out}");
    assert!(tokio::net::TcpStream::connect(second).await.is_err());

    // The first daemon still owns its socket and serves.
    let s = status_json(&site.config).await;
    assert_eq!(s["pid"].as_u64(), Some(u64::from(d1.child.id())));
    assert_eq!(
        fingerprint_at(first, "localhost", site.client()).await,
        a.fingerprint()
    );
    let (code, _) = reload_json(&site.config).await;
    assert_eq!(code, 0);
    d1.wait_for("reload unchanged").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_file_is_replaced() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let bind = addr();
    site.publish(&simple_config(bind, backend.addr, "a"));
    let socket = site.path("stayup.sock");
    // A socket file nobody listens on, as a killed daemon leaves it.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind stale"));
    assert!(socket.exists());
    let d = Daemon::start(&site.config).await;
    let s = status_json(&site.config).await;
    assert_eq!(s["pid"].as_u64(), Some(u64::from(d.child.id())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_follows_a_reload() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let bind = addr();
    site.publish(&simple_config(bind, backend.addr, "a"));
    let mut d = Daemon::start(&site.config).await;
    let old = site.path("stayup.sock");
    let new = site.path("moved.sock");
    site.publish(&format!(
        "{}control:\n  socket: moved.sock\n",
        simple_config(bind, backend.addr, "a")
    ));
    let line = d.reload().await;
    assert!(line.contains("reload committed"), "{line}");
    wait_path(&new, true).await;
    wait_path(&old, false).await;
    // The CLI finds the daemon at the socket the file now names.
    let s = status_json(&site.config).await;
    assert_eq!(s["generation"], 2);
    let mode = std::fs::metadata(&new)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(d.stop().await.success());
    assert!(!new.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_warnings_in_check_status_and_log() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let mut spec = stayup::pki::LeafSpec::server(&["localhost"]);
    spec.not_after = std::time::SystemTime::now() + std::time::Duration::from_secs(5 * 86_400);
    site.cert_with("soon", &spec);
    let bind = addr();
    site.publish(&simple_config(bind, backend.addr, "soon"));
    let config = site.config.to_str().expect("utf-8");

    let (code, out, _) = cli(&["check", "--config", config]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning:"), "{out}");
    assert!(out.contains("soon.pem"), "{out}");
    assert!(out.contains("warn_expiry 14d"), "{out}");

    // Warned at start, before "stayup ready".
    let d = Daemon::start(&site.config).await;
    let out = d.output();
    let line = out
        .lines()
        .find(|l| l.contains("certificate near expiry"))
        .unwrap_or_else(|| panic!("no expiry warning:\n{out}"));
    assert!(line.contains("soon.pem") && line.contains("WARN"), "{line}");
    let s = status_json(&site.config).await;
    assert_eq!(s["certificates"][0]["expiring"], true);
    let w = s["expiry_warnings"][0].as_str().expect("a warning");
    assert!(w.contains("soon.pem") && w.contains("days left"), "{w}");

    // A narrower window silences it everywhere.
    site.publish(&format!(
        "{}warn_expiry: 2d\n",
        simple_config(bind, backend.addr, "soon")
    ));
    let (code, out, _) = cli(&["check", "--config", config]).await;
    assert_eq!(code, 0);
    assert!(!out.contains("warning:"), "{out}");
    let (code, _) = reload_json(&site.config).await;
    assert_eq!(code, 0);
    let s = status_json(&site.config).await;
    assert_eq!(s["certificates"][0]["expiring"], false);
    assert_eq!(s["expiry_warnings"].as_array().map(Vec::len), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newly_named_socket_is_reached_through_the_old_default_one() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let bind = addr();
    site.publish(&simple_config(bind, backend.addr, "a"));
    let _d = Daemon::start(&site.config).await;
    // The file now names a socket the daemon does not serve yet: the
    // reload is still delivered (through the default socket, whose daemon
    // serves this very file) and moves the socket.
    site.publish(&format!(
        "{}control:\n  socket: next.sock\n",
        simple_config(bind, backend.addr, "a")
    ));
    let (code, v) = reload_json(&site.config).await;
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["generation"], 2);
    wait_path(&site.path("next.sock"), true).await;
    wait_path(&site.path("stayup.sock"), false).await;
    let s = status_json(&site.config).await;
    assert_eq!(s["generation"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_serving_another_file_in_the_folder_is_never_reloaded() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    // The daemon serves other.yaml on the folder's default socket.
    let other = site.write(
        "other.yaml",
        simple_config(addr(), backend.addr, "a").as_bytes(),
    );
    let mut d = Daemon::start(&other).await;
    // stayup.yaml names its own socket, where nobody answers.
    site.publish(&format!(
        "{}control:\n  socket: mine.sock\n",
        simple_config(addr(), backend.addr, "a")
    ));
    let config = site.config.to_str().expect("utf-8");
    let (code, _, err) = cli(&["reload", "--config", config]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("mine.sock"), "{err}");
    let (code, _, err) = cli(&["status", "--config", config]).await;
    assert_eq!(code, 2, "{err}");
    // Broken: certainly rejected (1), still without touching the other daemon.
    site.publish("listeners: [\n");
    let (code, _, err) = cli(&["reload", "--config", config]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("serves"), "{err}");
    // The other daemon saw no reload at all: its next outcome is the one
    // this SIGHUP causes.
    let line = d.reload().await;
    assert!(
        line.contains("reload unchanged generation=1 trigger=signal"),
        "{line}"
    );
}
