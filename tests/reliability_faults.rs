//! Faults: a backend that is down, a backend that closes mid-stream, a
//! SIGHUP that arrives while a reload runs. (A reload whose new listener's
//! port is taken by another process is a case of the bad-input corpus,
//! `fixtures/bad/config-port-taken-by-another-process`, checked with open
//! streams in `reliability_corpus.rs`.)

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

/// A daemon in front of a faulty backend, next to a healthy one: the
/// listener `web` forwards to the backend under test, `api` to an echo
/// backend with a connection already streaming through it. Each fault must
/// stay within `web`'s connections and leave that stream intact.
struct BesideHealthy {
    site: Site,
    web: SocketAddr,
    d: Daemon,
    streamer: Streamer,
    _healthy: EchoBackend,
}

impl BesideHealthy {
    async fn start(faulty: SocketAddr) -> BesideHealthy {
        let site = Site::new();
        let healthy = EchoBackend::start().await;
        site.cert("a", &["localhost"]);
        let (web, api) = (addr(), addr());
        site.publish(&format!(
            "listeners:\n{}{}reload:\n  watch: false\n",
            listener_yaml("web", web, faulty, &["a"]),
            listener_yaml("api", api, healthy.addr, &["a"]),
        ));
        let d = Daemon::start(&site.config).await;
        let streamer = streamer_at(api, "localhost", site.client()).await;
        BesideHealthy {
            site,
            web,
            d,
            streamer,
            _healthy: healthy,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_closes_clients_cleanly_and_is_counted() {
    // Nothing listens at the faulty backend's address.
    let f = BesideHealthy::start(addr()).await;

    for _ in 0..3 {
        let mut s = connected(f.web, "localhost", f.site.client()).await;
        let got = read_to_close(&mut s).await.expect("clean close");
        assert!(got.is_empty());
    }
    wait_counter(&f.site.config, "/connections/backend_failures", 3).await;
    f.streamer.advance(16 * 1024).await;
    f.streamer
        .finish()
        .await
        .expect("a connection to the healthy backend broke");
    assert!(f.d.stop().await.success());
}

/// A backend that echoes `limit` bytes and then closes the connection.
async fn closing_backend(limit: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; limit];
                if s.read_exact(&mut buf).await.is_ok() {
                    let _ = s.write_all(&buf).await;
                }
                // Dropped here: the backend goes away mid-conversation.
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_closing_mid_stream_ends_only_that_connection_cleanly() {
    let f = BesideHealthy::start(closing_backend(1000).await).await;

    for round in 0..3 {
        let mut s = connected(f.web, "localhost", f.site.client()).await;
        let msg: Vec<u8> = (0..1000u32).map(|i| (i * 7 + round) as u8).collect();
        s.write_all(&msg).await.expect("write");
        let got = read_to_close(&mut s)
            .await
            .expect("a clean close (close_notify) after the backend left");
        assert_eq!(got, msg, "round {round}: bytes lost or corrupted");
    }
    f.streamer.advance(16 * 1024).await;
    f.streamer.finish().await.expect("another connection broke");
    assert!(f.d.stop().await.success());
}

/// A backend that aborts: it sends `reply`, waits for the word to go, and
/// resets the connection (SO_LINGER 0), as a backend that crashes does.
async fn resetting_backend(reply: &'static [u8]) -> (SocketAddr, tokio::sync::mpsc::Sender<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (go, mut gone) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        if let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(reply).await;
            let _ = gone.recv().await;
            let _ = s.set_zero_linger();
        }
    });
    (addr, go)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_reset_reaches_the_client_as_a_truncation_not_a_clean_close() {
    let site = Site::new();
    let (backend, go) = resetting_backend(b"half a resp").await;
    site.cert("a", &["localhost"]);
    let bind = addr();
    site.publish(&format!(
        "listeners:\n{}reload:\n  watch: false\n",
        listener_yaml("web", bind, backend, &["a"]),
    ));
    let d = Daemon::start(&site.config).await;
    let mut s = connected(bind, "localhost", site.client()).await;
    let mut got = [0u8; 11];
    tokio::time::timeout(WAIT, s.read_exact(&mut got))
        .await
        .expect("the backend's bytes never came")
        .expect("read");
    assert_eq!(&got, b"half a resp");
    go.send(()).await.expect("backend gone");
    // A close_notify here would tell the client the response was complete.
    let end = read_to_close(&mut s).await;
    let e = end.expect_err("a reset backend was passed on as a clean close (close_notify)");
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    assert!(d.stop().await.success());
}

/// A client CA bundle of a few MB makes a reload take long enough for a
/// second SIGHUP to arrive while it runs.
fn big_ca_bundle(site: &Site) {
    let one = &site.ca.pem.cert;
    let n = (3 * 1024 * 1024) / one.len();
    site.write("certs/bundle.pem", one.repeat(n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_during_a_reload_is_coalesced_not_lost() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let a = site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let c = site.cert("c", &["localhost"]);
    big_ca_bundle(&site);
    let bind = addr();
    let slow = |cert: &str| {
        simple_config(bind, backend.addr, cert).replace(
            "    tls:\n",
            "    tls:\n      client_ca: certs/bundle.pem\n",
        )
    };
    site.publish(&simple_config(bind, backend.addr, "a"));
    let mut d = Daemon::start(&site.config).await;
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        a.fingerprint()
    );
    let streamer = Streamer::start(connected(bind, "localhost", site.client()).await);

    // Calibrate: how long does the slow reload take here?
    site.publish(&slow("b"));
    let line = d.reload().await;
    assert!(line.contains("reload committed"), "{line}");
    let ms: f64 = line
        .rsplit("ms=")
        .next()
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("ms= in the outcome line");
    assert!(
        ms > 20.0,
        "the slow reload took only {ms} ms; cannot overlap"
    );
    let _ = b;

    // The second signal lands while the first reload is reading files.
    site.publish(&slow("a"));
    d.signal("HUP");
    tokio::time::sleep(Duration::from_millis((ms / 4.0) as u64)).await;
    site.publish(&simple_config(bind, backend.addr, "c"));
    d.signal("HUP");

    // Every outcome until the daemon serves the last published file; it
    // must get there (the second signal was not lost) in at most two
    // reloads' worth of outcomes, and never reject.
    let deadline = Instant::now() + WAIT;
    let mut outcomes = Vec::new();
    loop {
        let line = d.outcome().await;
        assert!(!line.contains("reload rejected"), "{line}");
        outcomes.push(line);
        if fingerprint_at(bind, "localhost", site.client()).await == c.fingerprint() {
            break;
        }
        assert!(
            Instant::now() < deadline && outcomes.len() < 3,
            "the last published file is not served: {outcomes:#?}"
        );
    }
    eprintln!("slow reload {ms} ms; outcomes: {outcomes:#?}");
    // Nothing further is queued that would change the state again.
    let line = d.reload().await;
    assert!(line.contains("reload unchanged"), "{line}");
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        c.fingerprint()
    );
    streamer.advance(16 * 1024).await;
    streamer.finish().await.expect("stream intact");
    assert!(d.stop().await.success());
}
