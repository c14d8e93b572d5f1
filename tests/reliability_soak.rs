//! Soak: many long-lived streams, a steady rate of new handshakes and a
//! reload every 100 ms alternating valid and invalid configurations, for
//! `STAYUP_SOAK_SECS` seconds (default 20). Asserts zero lost or corrupted
//! bytes, zero dropped connections, zero failed handshakes, every reload
//! answered as expected, no growth of descriptors or memory while reloads
//! go on, and a return to baseline (one live generation) once the
//! connections close.
//!
//! Ignored by default (it is long); CI runs the 20 s variant:
//!
//! ```text
//! cargo test --test reliability_soak -- --ignored --nocapture
//! STAYUP_SOAK_SECS=600 cargo test --release --test reliability_soak -- --ignored --nocapture
//! ```
//!
//! Sizes can be changed with `STAYUP_SOAK_STREAMS` (default 200),
//! `STAYUP_SOAK_HANDSHAKES` (new connections per second, default 50) and
//! `STAYUP_SOAK_RELOAD_MS` (time between reloads, default 100; 0 reloads
//! back to back, for a quick "10,000 reloads, no growth" run).

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Allowed growth of descriptors between the first quarter of the reload
/// phase and its end, and after everything closed.
const FD_MARGIN: usize = 16;
/// Allowed memory growth, in KiB, on top of a small proportion.
const RSS_MARGIN_KIB: u64 = 16 * 1024;

/// Opens new connections at `per_sec`, each doing one echo round trip and
/// checking it got one of the certificates being rotated.
fn handshaker(
    bind: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    fingerprints: Vec<String>,
    per_sec: u64,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_sec.max(1)));
        let mut inflight = tokio::task::JoinSet::new();
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let (client, fps, ok, failures) = (
                client.clone(),
                fingerprints.clone(),
                ok.clone(),
                failures.clone(),
            );
            inflight.spawn(async move {
                let result = async {
                    let mut s = tokio::time::timeout(WAIT, connect(bind, "localhost", client))
                        .await
                        .map_err(|_| "handshake timed out".to_string())?
                        .map_err(|e| format!("handshake failed: {e}"))?;
                    let fp = peer_fingerprint(&s);
                    if !fps.contains(&fp) {
                        return Err(format!("unexpected certificate {fp}"));
                    }
                    s.write_all(b"soak").await.map_err(|e| e.to_string())?;
                    let mut back = [0u8; 4];
                    tokio::time::timeout(
                        WAIT,
                        tokio::io::AsyncReadExt::read_exact(&mut s, &mut back),
                    )
                    .await
                    .map_err(|_| "echo timed out".to_string())?
                    .map_err(|e| format!("echo failed: {e}"))?;
                    if &back != b"soak" {
                        return Err("echo corrupted".into());
                    }
                    let _ = s.shutdown().await;
                    Ok::<(), String>(())
                }
                .await;
                match result {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().expect("failures").push(e),
                }
            });
            while inflight.try_join_next().is_some() {}
        }
        while inflight.join_next().await.is_some() {}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long-running soak; run with --ignored (CI runs the 20 s variant)"]
async fn soak_streams_handshakes_and_reload_storm() {
    let secs = env_or("STAYUP_SOAK_SECS", 20);
    let streams = env_or("STAYUP_SOAK_STREAMS", 200) as usize;
    let per_sec = env_or("STAYUP_SOAK_HANDSHAKES", 50);
    let reload_every = Duration::from_millis(env_or("STAYUP_SOAK_RELOAD_MS", 100));

    let site = Site::new();
    let backend = EchoBackend::start().await;
    let a = site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    site.cert_with("expired", &expired_spec());
    let bind: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let valid = |cert: &str| simple_config(bind, backend.addr, cert);
    let invalid = [
        valid("a").replace("certs/a.pem", "certs/missing.pem"),
        valid("a").replace("    tls:\n", "    tls: [\n"),
        valid("expired"),
        format!("{}limits:\n  idle_timeout: 5 fortnights\n", valid("b")),
    ];
    site.publish(&valid("a"));
    let mut d = Daemon::start(&site.config).await;
    let pid = d.pid();
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        a.fingerprint()
    );
    let fd_start = fd_count(pid);
    let rss_start = rss_kib(pid);

    let mut streamers = Vec::with_capacity(streams);
    for _ in 0..streams {
        let s = connected(bind, "localhost", site.client()).await;
        streamers.push(Streamer::start_paced(s, 1024, Duration::from_millis(20)));
    }
    for s in &streamers {
        s.advance(1024).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let handshakes_ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hs = handshaker(
        bind,
        site.client(),
        vec![a.fingerprint(), b.fingerprint()],
        per_sec,
        stop.clone(),
        handshakes_ok.clone(),
        failures.clone(),
    );

    let started = Instant::now();
    let run_for = Duration::from_secs(secs);
    let (mut committed, mut rejected) = (0u64, 0u64);
    let mut quarter: Option<(usize, u64)> = None;
    let mut i = 0u64;
    while started.elapsed() < run_for {
        let tick = Instant::now();
        let good = i.is_multiple_of(2);
        if good {
            site.publish(&valid(if (i / 2).is_multiple_of(2) { "b" } else { "a" }));
        } else {
            site.publish(&invalid[((i / 2) % invalid.len() as u64) as usize]);
        }
        let line = d.reload().await;
        if good {
            assert!(line.contains("reload committed"), "reload {i}: {line}");
            committed += 1;
        } else {
            assert!(line.contains("reload rejected"), "reload {i}: {line}");
            rejected += 1;
        }
        if quarter.is_none() && started.elapsed() >= run_for / 4 {
            quarter = Some((fd_count(pid), rss_kib(pid)));
        }
        i += 1;
        if let Some(rest) = reload_every.checked_sub(tick.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    let (fd_end, rss_end) = (fd_count(pid), rss_kib(pid));
    stop.store(true, Ordering::Relaxed);
    hs.await.expect("handshaker");

    let mut verified = 0u64;
    for s in streamers {
        verified += s.finish().await.expect("an established stream broke");
    }
    let failures = failures.lock().expect("failures").clone();
    let hs_ok = handshakes_ok.load(Ordering::Relaxed);
    let (fd_q, rss_q) = quarter.expect("quarter sample");
    eprintln!(
        "soak {secs}s: {streams} streams verified {verified} bytes; {hs_ok} handshakes ok, {} failed; \
         {committed} reloads committed, {rejected} rejected; \
         fds {fd_start} start, {fd_q} at 1/4, {fd_end} at end; RSS {rss_start} KiB start, {rss_q} at 1/4, {rss_end} at end",
        failures.len()
    );
    assert!(failures.is_empty(), "failed handshakes: {failures:?}");
    assert!(
        hs_ok >= per_sec * secs / 2,
        "only {hs_ok} handshakes in {secs}s"
    );
    assert!(committed >= secs * 2, "only {committed} reloads committed");
    assert!(
        fd_end <= fd_q + FD_MARGIN,
        "descriptors grew during the reload storm: {fd_q} -> {fd_end}"
    );
    assert!(
        rss_end <= rss_q + rss_q / 10 + RSS_MARGIN_KIB,
        "memory grew during the reload storm: {rss_q} KiB -> {rss_end} KiB"
    );

    // Once every connection is closed, superseded generations are freed:
    // only the live one is left, and descriptors are back to baseline.
    let deadline = Instant::now() + WAIT;
    loop {
        let status = status_json(&site.config).await;
        let generations = status["generations"].as_array().map(Vec::len).unwrap_or(0);
        let fds = fd_count(pid);
        if generations == 1 && fds <= fd_start + FD_MARGIN {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not back to baseline: {generations} generations alive, fds {fd_start} -> {fds}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_after = rss_kib(pid);
    eprintln!("after close: fds {}, RSS {rss_after} KiB", fd_count(pid));
    assert!(
        rss_after <= rss_q + rss_q / 10 + RSS_MARGIN_KIB,
        "memory not released: {rss_q} KiB with the streams open, {rss_after} KiB after"
    );
    let output = d.output();
    assert!(!output.contains("panicked"), "the daemon panicked");
    assert!(d.stop().await.success());
}

/// A server certificate that expired yesterday.
fn expired_spec() -> stayup::pki::LeafSpec {
    let mut spec = stayup::pki::LeafSpec::server(&["localhost"]);
    let now = std::time::SystemTime::now();
    spec.not_before = now - Duration::from_secs(30 * 86_400);
    spec.not_after = now - Duration::from_secs(86_400);
    spec
}
