//! Listener and backend changes on SIGHUP: an added listener starts
//! accepting, a removed one stops accepting while its connections run on, a
//! backend change applies to new connections only, and an unchanged address
//! keeps its socket (no connection attempt is ever refused across reloads).

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

fn config(listeners: &[(&str, SocketAddr, SocketAddr, &str)]) -> String {
    let mut s = String::from("listeners:\n");
    for (name, bind, backend, cert) in listeners {
        s.push_str(&listener_yaml(name, *bind, *backend, &[cert]));
    }
    s.push_str("reload:\n  watch: false\n");
    s
}

async fn refused(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_listener_starts_accepting() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let a = site.cert("a", &["localhost"]);
    let (web, api) = (free_addr(), free_addr());
    site.publish(&config(&[("web", web, backend.addr, "a")]));
    let mut d = Daemon::start(&site.config).await;
    let streamer = streamer_at(web, "localhost", site.client()).await;
    assert!(refused(api).await, "{api} accepts before it is configured");

    site.publish(&config(&[
        ("web", web, backend.addr, "a"),
        ("api", api, backend.addr, "a"),
    ]));
    let line = d.reload().await;
    assert!(line.contains("reload committed"), "{line}");
    assert!(
        line.contains(&format!("listener-added api: {api}")),
        "{line}"
    );
    assert_eq!(
        fingerprint_at(api, "localhost", site.client()).await,
        a.fingerprint()
    );
    assert_eq!(
        fingerprint_at(web, "localhost", site.client()).await,
        a.fingerprint()
    );
    streamer.advance(16 * 1024).await;
    streamer.finish().await.expect("stream intact");
    assert!(d.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_listener_stops_accepting_and_its_connection_runs_on() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let a = site.cert("a", &["localhost"]);
    let (web, api) = (free_addr(), free_addr());
    site.publish(&config(&[
        ("web", web, backend.addr, "a"),
        ("api", api, backend.addr, "a"),
    ]));
    let mut d = Daemon::start(&site.config).await;
    let on_removed = streamer_at(api, "localhost", site.client()).await;

    site.publish(&config(&[("web", web, backend.addr, "a")]));
    let line = d.reload().await;
    assert!(line.contains("reload committed"), "{line}");
    assert!(line.contains("listener-removed api"), "{line}");
    wait_refused(api).await;
    // Still refused a moment later: nothing re-bound it.
    assert!(refused(api).await);
    on_removed.advance(32 * 1024).await;
    assert_eq!(
        fingerprint_at(web, "localhost", site.client()).await,
        a.fingerprint()
    );
    on_removed.advance(16 * 1024).await;
    on_removed.finish().await.expect("stream intact");
    assert!(d.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_listener_accepts_on_the_new_address_only() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let a = site.cert("a", &["localhost"]);
    let (old, new) = (free_addr(), free_addr());
    site.publish(&config(&[("web", old, backend.addr, "a")]));
    let mut d = Daemon::start(&site.config).await;
    let streamer = streamer_at(old, "localhost", site.client()).await;

    site.publish(&config(&[("web", new, backend.addr, "a")]));
    let line = d.reload().await;
    assert!(line.contains("reload committed"), "{line}");
    assert!(
        line.contains(&format!("bind-changed web: {old} -> {new}")),
        "{line}"
    );
    assert_eq!(
        fingerprint_at(new, "localhost", site.client()).await,
        a.fingerprint()
    );
    wait_refused(old).await;
    streamer.advance(16 * 1024).await;
    streamer.finish().await.expect("stream intact");
    assert!(d.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_change_applies_to_new_connections_only() {
    let site = Site::new();
    let one = EchoBackend::tagged("one").await;
    let two = EchoBackend::tagged("two").await;
    site.cert("a", &["localhost"]);
    let web = free_addr();
    site.publish(&config(&[("web", web, one.addr, "a")]));
    let mut d = Daemon::start(&site.config).await;

    let mut old = connected(web, "localhost", site.client()).await;
    assert_eq!(read_tag(&mut old).await, "one");
    let streamer = Streamer::start(old);
    streamer.advance(16 * 1024).await;

    site.publish(&config(&[("web", web, two.addr, "a")]));
    let line = d.reload().await;
    assert!(line.contains("reload committed"), "{line}");
    assert!(
        line.contains(&format!(
            "backend-changed web: {} -> {}",
            one.addr, two.addr
        )),
        "{line}"
    );
    for _ in 0..3 {
        let mut new = connected(web, "localhost", site.client()).await;
        assert_eq!(read_tag(&mut new).await, "two");
        echo_round_trip(&mut new, b"hello").await;
    }
    streamer.advance(16 * 1024).await;
    streamer.finish().await.expect("stream intact");
    assert_eq!(one.accepted.load(Ordering::Relaxed), 1);
    assert_eq!(two.accepted.load(Ordering::Relaxed), 3);
    assert!(d.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_address_keeps_its_socket_across_reloads() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let a = site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let web = free_addr();
    site.publish(&config(&[("web", web, backend.addr, "a")]));
    let mut d = Daemon::start(&site.config).await;

    // Connected before the reloads, handshaking only after them.
    let pending = TcpStream::connect(web).await.expect("connect");
    let churn = Churn::start(web, site.client());
    let mut last = &a;
    for i in 0..10 {
        let (name, pem) = if i % 2 == 0 { ("b", &b) } else { ("a", &a) };
        let before = churn.served.load(Ordering::Relaxed);
        site.publish(&config(&[("web", web, backend.addr, name)]));
        let line = d.reload().await;
        assert!(line.contains("reload committed"), "reload {i}: {line}");
        // Let a few connections through between reloads.
        churn.wait_served(before + 3).await;
        last = pem;
    }
    let (ok, failures) = churn.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} attempts failed: {failures:?}",
        failures.len(),
        ok as usize + failures.len()
    );
    assert!(ok >= 30, "only {ok} connections");
    assert_eq!(
        fingerprint_at(web, "localhost", site.client()).await,
        last.fingerprint()
    );

    // The connection accepted before the reloads handshakes with the
    // generation that accepted it.
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(site.client()).connect(name, pending),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake on the connection made before the reloads");
    assert_eq!(peer_fingerprint(&tls), a.fingerprint());
    echo_round_trip(&mut tls, b"still here").await;
    drop(tls);

    let port = format!("addr={web}");
    let listening = d
        .output()
        .lines()
        .filter(|l| l.contains("listening") && l.contains(&port))
        .count();
    assert_eq!(
        listening,
        1,
        "{web} was bound more than once:\n{}",
        d.output()
    );
    assert!(d.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_listener_can_come_back_at_once() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let a = site.cert("a", &["localhost"]);
    let (web, api) = (free_addr(), free_addr());
    let both = config(&[
        ("web", web, backend.addr, "a"),
        ("api", api, backend.addr, "a"),
    ]);
    let one = config(&[("web", web, backend.addr, "a")]);
    site.publish(&both);
    let mut d = Daemon::start(&site.config).await;
    for i in 0..10 {
        site.publish(&one);
        let line = d.reload().await;
        assert!(line.contains("listener-removed api"), "{i}: {line}");
        site.publish(&both);
        let line = d.reload().await;
        assert!(line.contains("listener-added api"), "{i}: {line}");
    }
    assert_eq!(
        fingerprint_at(api, "localhost", site.client()).await,
        a.fingerprint()
    );
    assert!(d.stop().await.success());
}

/// Sockets are kept across reloads by their configured address, so two
/// listeners may not share one, not even `127.0.0.1:0`.
#[test]
fn two_port_zero_listeners_are_one_address_used_twice() {
    let site = Site::new();
    site.cert("a", &["localhost"]);
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let backend = free_addr();
    site.publish(&config(&[
        ("one", any, backend, "a"),
        ("two", any, backend, "a"),
    ]));
    let (code, out, err) = check(&site.config);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("bind address 127.0.0.1:0 is used by another listener"),
        "{err}"
    );
    // One port-0 listener is fine.
    site.publish(&config(&[("one", any, backend, "a")]));
    let (code, out, err) = check(&site.config);
    assert_eq!(code, 0, "{out}\n{err}");
}
