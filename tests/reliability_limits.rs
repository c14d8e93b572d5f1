//! Resource limits: connection caps (total and per listener), the TLS
//! handshake timeout, the backend connect timeout and the idle timeout.
//! Each limit closes only the connection it is about, cleanly, counts it in
//! status, and leaves established connections streaming.

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

/// `listener_yaml` with extra lines for the listener (indented 4) and its
/// `tls:` block (indented 6).
fn listener_with(
    name: &str,
    bind: SocketAddr,
    backend: SocketAddr,
    cert: &str,
    listener_extra: &str,
    tls_extra: &str,
) -> String {
    let base = listener_yaml(name, bind, backend, &[cert]);
    base.replacen(
        "    tls:\n",
        &format!("{listener_extra}    tls:\n{tls_extra}"),
        1,
    )
}

async fn open_streamer(bind: SocketAddr, site: &Site) -> Streamer {
    let s = connected(bind, "localhost", site.client()).await;
    let st = Streamer::start(s);
    st.advance(4096).await;
    st
}

/// A refused connection fails its handshake on a clean close (EOF), not on
/// a reset.
async fn assert_refused(bind: SocketAddr, site: &Site) {
    let r = tokio::time::timeout(WAIT, connect(bind, "localhost", site.client()))
        .await
        .expect("refused connect timed out");
    match r {
        Ok(_) => panic!("a connection over the limit was served"),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof,
            "refusal was not a clean close: {e}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_total_and_per_listener() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let (web, api) = (addr(), addr());
    site.publish(&format!(
        "listeners:\n{}{}reload:\n  watch: false\nlimits:\n  max_connections: 3\n",
        listener_with(
            "web",
            web,
            backend.addr,
            "a",
            "    max_connections: 1\n",
            ""
        ),
        listener_yaml("api", api, backend.addr, &["a"]),
    ));
    let d = Daemon::start(&site.config).await;

    // The listener's own cap: one connection on web.
    let w1 = open_streamer(web, &site).await;
    assert_refused(web, &site).await;
    assert_eq!(
        wait_counter(&site.config, "/connections/refused_over_limit", 1).await,
        1
    );

    // A client whose first bytes are already waiting when it is refused
    // still gets a clean close (a FIN), not a reset.
    let mut eager = TcpStream::connect(web).await.expect("tcp connect");
    eager.write_all(&[0x16; 512]).await.expect("write");
    let got = read_to_close(&mut eager)
        .await
        .expect("a refusal with unread input was a reset, not a clean close");
    assert!(got.is_empty());
    drop(eager);
    assert_eq!(
        wait_counter(&site.config, "/connections/refused_over_limit", 2).await,
        2
    );

    // The total cap: web's one plus two on api make three.
    let a1 = open_streamer(api, &site).await;
    let a2 = open_streamer(api, &site).await;
    assert_refused(api, &site).await;
    assert_eq!(
        wait_counter(&site.config, "/connections/refused_over_limit", 3).await,
        3
    );
    for s in [&w1, &a1, &a2] {
        s.advance(16 * 1024).await;
    }

    // Closing one frees its slot: api serves a new connection again.
    a2.finish().await.expect("stream intact");
    let deadline = Instant::now() + WAIT;
    let a3 = loop {
        match connect(api, "localhost", site.client()).await {
            Ok(s) => break Streamer::start(s),
            Err(_) => {
                assert!(Instant::now() < deadline, "the freed slot was never reused");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    a3.advance(4096).await;
    for s in [w1, a1, a3] {
        s.finish().await.expect("an established connection broke");
    }
    assert!(d.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_after_handshake_timeout() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let bind = addr();
    site.publish(&format!(
        "listeners:\n{}reload:\n  watch: false\n",
        listener_with(
            "web",
            bind,
            backend.addr,
            "a",
            "",
            "      handshake_timeout: 1s\n"
        ),
    ));
    let d = Daemon::start(&site.config).await;
    let streamer = open_streamer(bind, &site).await;

    let started = Instant::now();
    let mut silent = TcpStream::connect(bind).await.expect("tcp connect");
    let got = read_to_close(&mut silent).await.expect("clean close");
    let waited = started.elapsed();
    assert!(got.is_empty(), "the server sent {} bytes", got.len());
    assert!(
        waited >= Duration::from_millis(900),
        "dropped after {waited:?}, before the 1s timeout"
    );
    wait_counter(&site.config, "/connections/handshake_timeouts", 1).await;

    streamer.advance(16 * 1024).await;
    streamer
        .finish()
        .await
        .expect("established connection broke");
    assert!(d.stop().await.success());
}

/// A loopback listening socket whose accept queue is full: the kernel drops
/// further SYNs, so a connect to it hangs without leaving the machine.
async fn blackhole() -> (SocketAddr, Vec<TcpStream>, tokio::net::TcpListener) {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = sock.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut held = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(e)) => panic!("connect to the blackhole failed: {e}"),
            Err(_) => break,
        }
        assert!(held.len() < 64, "the accept queue never filled");
    }
    (addr, held, listener)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connect_timeout_closes_cleanly() {
    let site = Site::new();
    let (hole, _held, _listener) = blackhole().await;
    site.cert("a", &["localhost"]);
    let bind = addr();
    site.publish(&format!(
        "listeners:\n{}reload:\n  watch: false\nlimits:\n  backend_connect_timeout: 1s\n",
        listener_yaml("web", bind, hole, &["a"]),
    ));
    let mut d = Daemon::start(&site.config).await;

    let started = Instant::now();
    let mut s = connected(bind, "localhost", site.client()).await;
    let got = read_to_close(&mut s)
        .await
        .expect("clean close (close_notify)");
    let waited = started.elapsed();
    assert!(got.is_empty(), "the client was sent {got:?}");
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    d.wait_for("backend connect timed out").await;
    wait_counter(&site.config, "/connections/backend_failures", 1).await;
    assert!(d.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed_busy_one_is_not() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let bind = addr();
    site.publish(&format!(
        "listeners:\n{}reload:\n  watch: false\nlimits:\n  idle_timeout: 1s\n",
        listener_yaml("web", bind, backend.addr, &["a"]),
    ));
    let d = Daemon::start(&site.config).await;
    let busy = open_streamer(bind, &site).await;

    let mut idle = connected(bind, "localhost", site.client()).await;
    echo_round_trip(&mut idle, b"hello").await;
    let last = Instant::now();
    let got = read_to_close(&mut idle).await.expect("clean close");
    let waited = last.elapsed();
    assert!(got.is_empty());
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );

    // The busy connection has now lived longer than the idle timeout.
    let _ = idle.shutdown().await;
    busy.advance(16 * 1024).await;
    busy.finish().await.expect("a busy connection was closed");
    assert!(d.stop().await.success());
}
