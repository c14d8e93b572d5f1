//! A connection established before a reload keeps streaming through many
//! SIGHUP reloads; new connections present the new certificate each time.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_through_twenty_reloads_alternating_certificates() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let a = site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let bind = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    site.publish(&simple_config(bind, backend.addr, "a"));
    let mut d = Daemon::start(&site.config).await;

    let first = connected(bind, "localhost", site.client()).await;
    assert_eq!(peer_fingerprint(&first), a.fingerprint());
    let streamer = Streamer::start(first);
    streamer.advance(16 * 1024).await;

    for i in 0..20 {
        let (cert, pem) = if i % 2 == 0 { ("b", &b) } else { ("a", &a) };
        site.publish(&simple_config(bind, backend.addr, cert));
        let line = d.reload().await;
        assert!(line.contains("reload committed"), "reload {i}: {line}");
        assert!(line.contains(&format!("generation={}", i + 2)), "{line}");
        assert_eq!(
            fingerprint_at(bind, "localhost", site.client()).await,
            pem.fingerprint(),
            "after reload {i}"
        );
        streamer.advance(8 * 1024).await;
    }
    let verified = streamer.finish().await.expect("stream intact");
    assert!(verified > 100_000, "only {verified} bytes verified");
    assert!(d.stop().await.success());
}
