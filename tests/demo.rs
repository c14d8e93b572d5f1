//! `stayup demo` really rotates certificates under an open session, and
//! cleans up after itself.

mod common;
use common::*;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn field<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.trim().strip_prefix(prefix).map(str::trim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_rotates_under_an_open_session_and_cleans_up() {
    install_provider();
    let mut child = Command::new(stayup_bin())
        .args(["demo", "--interval", "1", "--port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn demo");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (log_tx, log_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if log_tx.send(line).is_err() {
                break;
            }
        }
    });
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> String {
        rx.recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("demo printed no {what}"))
    };

    let (mut folder, mut proxy, mut ca, mut status) = (None, None, None, None);
    while proxy.is_none() || ca.is_none() || folder.is_none() || status.is_none() {
        let line = next("address");
        if let Some(f) = field(&line, "folder:") {
            folder = Some(std::path::PathBuf::from(f));
        }
        if let Some(p) = field(&line, "proxy:") {
            proxy = p.split_whitespace().next().map(str::to_string);
        }
        if line.contains("openssl s_client") {
            ca = line
                .split_whitespace()
                .skip_while(|w| *w != "-CAfile")
                .nth(1)
                .map(str::to_string);
        }
        if line.contains(" status --config ") {
            status = Some(
                line.split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            );
        }
    }
    let folder = folder.expect("folder");
    let addr: std::net::SocketAddr = proxy.expect("proxy").parse().expect("proxy address");
    let ca_pem = std::fs::read_to_string(ca.expect("CA path")).expect("read CA");
    let cfg = client_config(&ca_pem, None);

    let mut session = connect(addr, "localhost", cfg.clone())
        .await
        .expect("connect");
    let first_fp = peer_fingerprint(&session);
    let session_port = session.get_ref().0.local_addr().expect("local addr").port();
    let greeting = read_tag(&mut session).await;
    assert!(greeting.contains("echo backend"), "{greeting}");
    let streamer = Streamer::start(session);
    streamer.advance(8 * 1024).await;

    // The status command as printed runs as it is (not only where `stayup`
    // is on the PATH) and reaches the demo's daemon.
    let status = status.expect("status command");
    let out = Command::new(&status[0])
        .args(&status[1..])
        .output()
        .expect("run the printed status command");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{status:?}: {printed}");
    assert!(printed.contains("generation"), "{printed}");
    // The demo listens on port 0: status names the port clients really reach.
    assert!(
        printed.contains(&format!(":0 (bound {addr})")),
        "status does not show the bound address {addr}: {printed}"
    );

    // Two rotations, each a committed generation with a new certificate.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = next("rotation");
        if line.starts_with("generation ") && line.contains("committed") {
            seen.push(line);
        }
    }
    // A fresh client: a resumed session would report the first certificate.
    let now_fp = fingerprint_at_tagged(addr, client_config(&ca_pem, None)).await;
    assert_ne!(
        now_fp, first_fp,
        "a new connection still gets the first certificate"
    );
    // The certificate served must be one the demo announced (a rotation may
    // have happened since the last line was read, so include later lines).
    seen.extend(rx.try_iter());
    let announced: Vec<&str> = seen
        .iter()
        .filter_map(|l| l.split("sha256 ").nth(1))
        .filter_map(|s| s.split_whitespace().next())
        .collect();
    assert!(
        announced.iter().any(|p| now_fp.starts_with(p)),
        "served {now_fp}, demo announced {announced:?}"
    );
    streamer.advance(8 * 1024).await;
    streamer
        .finish()
        .await
        .expect("the open session survived the rotations");
    // Its connection log line names the generation that accepted it, two
    // rotations ago.
    let logged = loop {
        let line = log_rx
            .recv_timeout(WAIT)
            .expect("the demo logged no line for the session");
        if line.contains(&format!(" client=127.0.0.1:{session_port} ")) {
            break line;
        }
    };
    assert!(logged.contains(" generation=1 "), "{logged}");
    assert!(logged.contains(" sni=localhost "), "{logged}");

    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "demo did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "demo exited with {status}");
    assert!(!folder.exists(), "demo left {} behind", folder.display());
}

/// Like `fingerprint_at`, for a backend that greets first.
async fn fingerprint_at_tagged(
    addr: std::net::SocketAddr,
    cfg: std::sync::Arc<rustls::ClientConfig>,
) -> String {
    let mut s = connect(addr, "localhost", cfg).await.expect("connect");
    let fp = peer_fingerprint(&s);
    read_tag(&mut s).await;
    echo_round_trip(&mut s, b"ping").await;
    fp
}
