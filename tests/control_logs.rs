//! Logs: `log.format: json` gives one JSON object per line, every reload
//! outcome is exactly one line with generation, trigger, result and reason,
//! `log.level` and `log.format` follow reloads, and `log.connections` gives
//! one line per connection.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::Value;

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_one_object_per_outcome() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    site.cert("b", &["localhost"]);
    let bind = addr();
    let json = |cert: &str| {
        format!(
            "{}log:\n  format: json\n",
            simple_config(bind, backend.addr, cert)
        )
    };
    site.publish(&json("a"));
    let mut d = Daemon::start(&site.config).await;
    site.publish(&json("b"));
    let committed = d.reload().await;
    site.publish(&json("missing"));
    let rejected = d.reload().await;
    d.signal("TERM");
    assert!(d.wait_exit().await.success());

    for line in d.output().lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
    }
    let c: Value = serde_json::from_str(&committed).expect("json");
    assert_eq!(c["message"], "reload committed");
    assert_eq!(c["generation"], 2);
    assert_eq!(c["previous"], 1);
    assert_eq!(c["trigger"], "signal");
    assert!(
        c["changes"]
            .as_str()
            .is_some_and(|s| s.contains("certificate-swapped"))
    );
    let r: Value = serde_json::from_str(&rejected).expect("json");
    assert_eq!(r["message"], "reload rejected");
    assert_eq!(r["level"], "WARN");
    assert_eq!(r["generation"], 2);
    assert_eq!(r["trigger"], "signal");
    assert!(r["reason"].as_str().is_some_and(|s| s.contains("missing.")));
    assert!(r["class"].is_string());
    // Exactly one line per outcome: startup, committed, rejected.
    let outcomes = d
        .output()
        .lines()
        .filter(|l| l.contains("\"message\":\"reload "))
        .count();
    assert_eq!(outcomes, 3, "{}", d.output());
}

/// `log.format` follows reloads like every other setting: the reload that
/// changes it already writes its own outcome line the new way, and a
/// rejected one changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_follows_reloads() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let bind = addr();
    let with = |format: &str, cert: &str| {
        format!(
            "{}log:\n  format: {format}\n",
            simple_config(bind, backend.addr, cert)
        )
    };
    let is_json = |line: &str| serde_json::from_str::<Value>(line).is_ok();
    site.publish(&with("text", "a"));
    let mut d = Daemon::start(&site.config).await;
    let first = d.output();
    assert!(!first.is_empty() && !first.lines().any(is_json), "{first}");

    site.publish(&with("json", "a"));
    let line = d.reload().await;
    let v: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the switching reload's line is not JSON ({e}): {line}"));
    assert_eq!(v["message"], "reload committed", "{line}");
    assert_eq!(v["generation"], 2, "{line}");
    assert!(
        v["changes"]
            .as_str()
            .is_some_and(|c| c.contains("log.format")),
        "{line}"
    );

    // Rejected: JSON stays.
    site.publish(&with("text", "missing"));
    let line = d.reload().await;
    let v: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("a rejected reload changed the format ({e}): {line}"));
    assert_eq!(v["message"], "reload rejected", "{line}");

    site.publish(&with("text", "a"));
    let line = d.reload().await;
    assert!(
        !is_json(&line) && line.contains("reload committed generation=3"),
        "{line}"
    );
    d.signal("TERM");
    assert!(d.wait_exit().await.success());
    let last = d.output();
    let tail = last
        .rsplit_once("reload committed generation=3")
        .map(|(_, t)| t);
    assert!(
        tail.is_some_and(|t| !t.lines().any(is_json)),
        "JSON after the switch back to text: {last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_follows_reloads() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let bind = addr();
    let with_level = |level: &str| {
        format!(
            "{}log:\n  level: {level}\n",
            simple_config(bind, backend.addr, "a")
        )
    };
    site.publish(&with_level("info"));
    let mut d = Daemon::start(&site.config).await;

    // At info, a SIGHUP leaves no debug line.
    let line = d.reload().await;
    assert!(line.contains("reload unchanged"), "{line}");
    assert!(!d.output().contains("SIGHUP received"));

    // At debug, it does.
    site.publish(&with_level("debug"));
    let line = d.reload().await;
    assert!(line.contains("reload committed generation=2"), "{line}");
    let line = d.reload().await;
    assert!(line.contains("reload unchanged"), "{line}");
    assert!(d.output().contains("SIGHUP received"), "{}", d.output());

    // At warn, committed reloads are silent (the level applies from the
    // reload that sets it: its own line is already filtered); the status
    // shows them. A rejected reload is still logged.
    site.publish(&with_level("warn"));
    d.signal("HUP");
    wait_generation(&site, 3).await;
    site.publish(&format!(
        "{}log:\n  level: warn\n",
        simple_config(bind, backend.addr, "missing")
    ));
    d.signal("HUP");
    let line = d.outcome().await;
    assert!(line.contains("reload rejected generation=3"), "{line}");
    site.publish(&format!(
        "{}log:\n  level: warn\n  format: text\n",
        simple_config(bind, backend.addr, "a")
    ));
    d.signal("HUP");
    wait_generation(&site, 4).await;
    let out = d.output();
    assert!(!out.contains("reload committed generation=3"), "{out}");
    assert!(!out.contains("reload committed generation=4"), "{out}");
}

/// A connection through the daemon: TLS with a client certificate, one
/// echo, a clean close by the client; returns the client's port, by which
/// its log line is found.
async fn one_connection(bind: SocketAddr, client: std::sync::Arc<rustls::ClientConfig>) -> u16 {
    use tokio::io::AsyncWriteExt;
    let mut s = connected(bind, "localhost", client).await;
    let port = s.get_ref().0.local_addr().expect("local addr").port();
    echo_round_trip(&mut s, b"hello").await;
    s.shutdown().await.expect("close_notify");
    let rest = read_to_close(&mut s).await.expect("a clean close");
    assert!(rest.is_empty());
    port
}

/// Waits until the daemon has no connection open.
async fn wait_no_connections(site: &Site) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = status_json(&site.config).await;
        if s["connections"]["active"] == 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn client_line(port: u16) -> String {
    format!("\"client\":\"127.0.0.1:{port}\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_log_has_one_line_per_connection_and_follows_reloads() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let clients = stayup::pki::Ca::new("stayup test client CA").expect("CA");
    site.write("ca/clients.pem", &clients.pem.cert);
    let mut spec = stayup::pki::LeafSpec::server(&["alice.example.test"]);
    spec.client = true;
    spec.common_name = "alice".into();
    let alice = client_config(&site.ca.pem.cert, Some(&clients.leaf(&spec).expect("leaf")));
    let bind = addr();
    let config = |connections: bool, level: &str| {
        format!(
            "{}log:\n  format: json\n  level: {level}\n  connections: {connections}\n",
            simple_config(bind, backend.addr, "a").replacen(
                "      certificates:\n",
                "      client_ca: ca/clients.pem\n      certificates:\n",
                1
            )
        )
    };
    site.publish(&config(true, "info"));
    let mut d = Daemon::start(&site.config).await;

    let port = one_connection(bind, alice.clone()).await;
    let line = d.wait_for(&client_line(port)).await;
    let v: Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(v["target"], "stayup::connection", "{line}");
    assert_eq!(v["level"], "INFO", "{line}");
    assert_eq!(v["message"], "connection", "{line}");
    assert_eq!(v["listener"], "web", "{line}");
    assert_eq!(v["generation"], 1, "{line}");
    assert_eq!(v["sni"], "localhost", "{line}");
    assert_eq!(v["tls"], "TLSv1.3", "{line}");
    assert_eq!(v["alpn"], "-", "{line}");
    assert_eq!(v["cipher"], "TLS_AES_128_GCM_SHA256", "{line}");
    // rustls's client, like current browsers, sends the post-quantum
    // hybrid's key share first.
    assert_eq!(v["group"], "X25519MLKEM768", "{line}");
    assert_eq!(v["client_cn"], "alice", "{line}");
    assert_eq!(v["backend"], backend.addr.to_string(), "{line}");
    assert_eq!(v["bytes_in"], 5, "{line}");
    assert_eq!(v["bytes_out"], 5, "{line}");
    assert_eq!(v["end"], "closed", "{line}");
    assert!(v["duration_ms"].is_u64(), "{line}");
    assert!(v["handshake_ms"].is_u64(), "{line}");
    assert!(v["connect_ms"].is_u64(), "{line}");
    let from: SocketAddr = v["backend_from"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no backend_from address: {line}"));
    assert!(from.ip().is_loopback() && from.port() != 0, "{line}");
    assert!(v.get("reason").is_none(), "{line}");

    // A TCP health check (connect, close, not a byte sent) leaves no line.
    // Had it one, it would have been written before the probe stopped
    // counting as open, so before the next connection's line.
    let probe = tokio::net::TcpStream::connect(bind).await.expect("connect");
    let probe_port = probe.local_addr().expect("local addr").port();
    drop(probe);
    wait_counter(&site.config, "/connections/handshakes_failed", 1).await;
    wait_no_connections(&site).await;
    let port = one_connection(bind, alice.clone()).await;
    d.wait_for(&client_line(port)).await;
    assert!(
        !d.output().contains(&client_line(probe_port)),
        "{}",
        d.output()
    );

    // A client that leaves without a close_notify: an error, said plainly.
    let mut s = connected(bind, "localhost", alice.clone()).await;
    let port = s.get_ref().0.local_addr().expect("local addr").port();
    echo_round_trip(&mut s, b"bye").await;
    drop(s);
    let line = d.wait_for(&client_line(port)).await;
    let v: Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(v["end"], "error", "{line}");
    assert_eq!(
        v["reason"], "the client closed the connection without a TLS close_notify",
        "{line}"
    );
    assert_eq!(v["bytes_in"], 3, "{line}");

    // A client that does not trust the certificate: the handshake's failure
    // and the client's alert, and no backend connection.
    let stranger = stayup::pki::Ca::new("a CA nobody here knows").expect("CA");
    let tcp = tokio::net::TcpStream::connect(bind).await.expect("connect");
    let port = tcp.local_addr().expect("local addr").port();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let refused = tokio_rustls::TlsConnector::from(client_config(&stranger.pem.cert, None))
        .connect(name, tcp)
        .await;
    assert!(
        refused.is_err(),
        "a client that trusts another CA was served"
    );
    let line = d.wait_for(&client_line(port)).await;
    let v: Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(v["end"], "handshake-failed", "{line}");
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("received fatal alert")),
        "{line}"
    );
    // The name it asked for, from its hello, though the handshake failed.
    assert_eq!(v["sni"], "localhost", "{line}");
    assert_eq!(v["tls"], "-", "{line}");
    assert!(v.get("handshake_ms").is_none(), "{line}");
    assert_eq!(v["bytes_in"], 0, "{line}");
    assert!(v.get("backend_from").is_none(), "{line}");

    // Off by a reload: a connection of the new generation leaves no line.
    // Its line would have been written before it stopped counting as open,
    // and so before the next generation's marker connection's line.
    site.publish(&config(false, "warn"));
    d.signal("HUP");
    wait_generation(&site, 2).await;
    let unlogged = one_connection(bind, alice.clone()).await;
    wait_no_connections(&site).await;
    // On again at `warn`, which hides stayup's own info lines but not the
    // connection log that was asked for.
    site.publish(&config(true, "warn"));
    d.signal("HUP");
    wait_generation(&site, 3).await;
    let marker = one_connection(bind, alice).await;
    let line = d.wait_for(&client_line(marker)).await;
    assert!(line.contains("\"generation\":3"), "{line}");
    assert!(
        !d.output().contains(&client_line(unlogged)),
        "{}",
        d.output()
    );
    d.signal("TERM");
    assert!(d.wait_exit().await.success());
}

async fn wait_generation(site: &Site, generation: u64) {
    let config = site.config.to_str().expect("utf-8").to_string();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let c = config.clone();
        let (_, out, _) =
            tokio::task::spawn_blocking(move || stayup(&["status", "--config", &c, "--json"]))
                .await
                .expect("cli");
        let s: Value = serde_json::from_str(out.trim()).expect("status");
        if s["generation"] == generation {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
