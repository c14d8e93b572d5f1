//! TCP keepalive (`tcp_keepalive`) on both of a connection's sockets, read
//! back from the kernel's own table of sockets (`/proc/net/tcp`): on by
//! default, set as configured, changed by a reload for new connections
//! while open ones keep theirs, and harmless to a live connection that is
//! merely quiet.

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

/// One IPv4 socket as the kernel lists it in `/proc/net/tcp`.
#[derive(Debug, Clone, Copy)]
struct KernelSocket {
    local_port: u16,
    remote_port: u16,
    /// 1 = ESTABLISHED.
    state: u8,
    /// The timer the kernel has armed: 0 none, 1 retransmission, 2 keepalive,
    /// 4 zero-window probe.
    timer: u8,
    /// When that timer fires, from now.
    expires_in: Duration,
}

fn kernel_sockets() -> Vec<KernelSocket> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port = |addr: &str| {
        let hex = addr.rsplit(':').next().expect("address:port");
        u16::from_str_radix(hex, 16).expect("hex port")
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (timer, when) = f.get(5)?.split_once(':')?;
            Some(KernelSocket {
                local_port: port(f.get(1)?),
                remote_port: port(f.get(2)?),
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                timer: u8::from_str_radix(timer, 16).ok()?,
                // In clock ticks: USER_HZ, which Linux fixes at 100 for
                // everything it reports to user space.
                expires_in: Duration::from_millis(u64::from_str_radix(when, 16).ok()? * 10),
            })
        })
        .collect()
}

/// Waits until the kernel lists a socket matching `which` and `settled`
/// (right after traffic a socket may still show its retransmission timer
/// until the peer's acknowledgement arrives).
async fn kernel_socket(
    which: impl Fn(&KernelSocket) -> bool,
    settled: impl Fn(&KernelSocket) -> bool,
    what: &str,
) -> KernelSocket {
    let deadline = Instant::now() + WAIT;
    loop {
        let found: Vec<KernelSocket> = kernel_sockets().into_iter().filter(&which).collect();
        if let Some(s) = found.iter().find(|s| settled(s)) {
            return *s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the kernel lists {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The keepalive timer is armed to fire `idle` after the connection's last
/// traffic, `quiet_since`.
fn keepalive_due(idle: Duration, quiet_since: Instant) -> impl Fn(&KernelSocket) -> bool {
    move |s| {
        let slack = Duration::from_secs(1);
        s.timer == 2 && s.expires_in <= idle && s.expires_in + quiet_since.elapsed() + slack >= idle
    }
}

fn no_timer(s: &KernelSocket) -> bool {
    s.timer == 0
}

/// stayup's two sockets of the connection `client` opened: the one it
/// accepted (local port = the listener's, remote = the client's), and the one
/// it opened to the backend (found by the port the backend saw it from).
struct Sides {
    client_port: u16,
    backend_port: u16,
    backend: SocketAddr,
    /// When the connection's last traffic went through.
    quiet_since: Instant,
}

async fn open(
    site: &Site,
    bind: SocketAddr,
    backend: &EchoBackend,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Sides,
) {
    let before: Vec<u16> = stayup_to_backend(backend.addr);
    let mut s = connected(bind, "localhost", site.client()).await;
    echo_round_trip(&mut s, b"hello").await;
    let client_port = s.get_ref().0.local_addr().expect("local addr").port();
    let quiet_since = Instant::now();
    let backend_port = stayup_to_backend(backend.addr)
        .into_iter()
        .find(|p| !before.contains(p))
        .expect("stayup's socket to the backend");
    (
        s,
        Sides {
            client_port,
            backend_port,
            backend: backend.addr,
            quiet_since,
        },
    )
}

/// Local ports of the sockets connected to the backend (only stayup connects
/// to this test's backend).
fn stayup_to_backend(backend: SocketAddr) -> Vec<u16> {
    kernel_sockets()
        .into_iter()
        .filter(|s| s.remote_port == backend.port() && s.state == 1)
        .map(|s| s.local_port)
        .collect()
}

/// Both of stayup's sockets of the connection, as the kernel lists them
/// (each by its four-tuple, established), must satisfy `settled`.
async fn assert_sides(bind: SocketAddr, sides: &Sides, settled: impl Fn(&KernelSocket) -> bool) {
    let (client_port, backend_port) = (sides.client_port, sides.backend_port);
    let backend = sides.backend.port();
    kernel_socket(
        |s| s.local_port == bind.port() && s.remote_port == client_port && s.state == 1,
        &settled,
        "stayup's socket to the client",
    )
    .await;
    kernel_socket(
        |s| s.local_port == backend_port && s.remote_port == backend && s.state == 1,
        &settled,
        "stayup's socket to the backend",
    )
    .await;
}

/// Keepalive probes this network namespace's TCP has sent (`TCPKeepAlive`).
fn keepalive_probes_sent() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").expect("read /proc/net/netstat");
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next(), tcp_ext.next());
    let (names, values) = (names.expect("TcpExt names"), values.expect("TcpExt values"));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "TCPKeepAlive")
        .and_then(|(_, v)| v.parse().ok())
        .expect("TCPKeepAlive counter")
}

fn config(bind: SocketAddr, backend: SocketAddr, keepalive: &str) -> String {
    format!("{}{keepalive}", simple_config(bind, backend, "a"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_is_set_on_both_sockets_and_a_reload_changes_it_for_new_connections() {
    let (site, backend, bind, mut d) = serving(|bind, backend| {
        config(
            bind,
            backend,
            "tcp_keepalive:\n  idle: 45s\n  interval: 5s\n  probes: 3\n",
        )
    })
    .await;

    let (mut first, first_sides) = open(&site, bind, &backend).await;
    assert_sides(
        bind,
        &first_sides,
        keepalive_due(Duration::from_secs(45), first_sides.quiet_since),
    )
    .await;
    let status = status_json(&site.config).await;
    assert_eq!(
        status["tcp_keepalive"],
        serde_json::json!({"idle_seconds": 45, "interval_seconds": 5, "probes": 3}),
        "{status}"
    );
    let config_path = site.config.to_str().expect("utf-8 path");
    let (code, out, err) = stayup(&["status", "--config", config_path]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("keepalive  idle 45s, interval 5s, 3 probes; user timeout 60s"),
        "{out}"
    );
    // The user timeout defaults to what keepalive takes: 45 + 5 × 3 s.
    assert_eq!(status["tcp_user_timeout_ms"], 60_000, "{status}");

    // Off: new connections have no keepalive timer; the open one keeps its own.
    site.publish(&config(bind, backend.addr, "tcp_keepalive:\n  idle: 0\n"));
    let line = d.reload().await;
    assert!(line.contains("reload committed"), "{line}");
    assert!(line.contains("tcp_keepalive"), "{line}");
    let (_second, second_sides) = open(&site, bind, &backend).await;
    assert_sides(bind, &second_sides, no_timer).await;
    assert_sides(
        bind,
        &first_sides,
        keepalive_due(Duration::from_secs(45), first_sides.quiet_since),
    )
    .await;
    assert!(status_json(&site.config).await["tcp_keepalive"].is_null());

    // Without the section: the default, two minutes.
    site.publish(&config(bind, backend.addr, ""));
    let line = d.reload().await;
    assert!(line.contains("reload committed"), "{line}");
    let (_third, third_sides) = open(&site, bind, &backend).await;
    assert_sides(
        bind,
        &third_sides,
        keepalive_due(Duration::from_secs(120), third_sides.quiet_since),
    )
    .await;

    echo_round_trip(&mut first, b"still here").await;
    drop((first, _second, _third));
    assert!(d.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_connection_answers_probes_and_stays_open() {
    let (site, backend, bind, d) = serving(|bind, backend| {
        config(
            bind,
            backend,
            "tcp_keepalive:\n  idle: 1s\n  interval: 1s\n  probes: 1\n",
        )
    })
    .await;
    let (mut s, sides) = open(&site, bind, &backend).await;
    let probes_before = keepalive_probes_sent();
    // Silence for several rounds of idle time plus the one probe allowed to
    // go unanswered: the probes go out (about one a second from each of
    // stayup's two sockets), every one is answered by the peer's kernel, so
    // the connection must still be there. The waiting is the behaviour
    // tested.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let probes = keepalive_probes_sent() - probes_before;
    assert!(
        probes >= 4,
        "{probes} keepalive probes sent in 4 s of silence"
    );
    assert_sides(bind, &sides, |s| {
        s.timer == 2 && s.expires_in <= Duration::from_secs(1)
    })
    .await;
    echo_round_trip(&mut s, b"after the silence").await;
    drop(s);
    assert!(d.stop().await.success());
}

#[tokio::test]
async fn check_refuses_keepalive_settings_the_kernel_cannot_take() {
    let site = Site::new();
    site.cert("a", &["localhost"]);
    for (keepalive, reason) in [
        (
            "idle: 500ms",
            "tcp_keepalive.idle \"500ms\" must be whole seconds",
        ),
        (
            "interval: 0",
            "tcp_keepalive.interval \"0\" must be at least 1s",
        ),
        (
            "probes: 200",
            "tcp_keepalive.probes 200 must be between 1 and 127",
        ),
    ] {
        site.publish(&config(
            free_addr(),
            free_addr(),
            &format!("tcp_keepalive:\n  {keepalive}\n"),
        ));
        let (code, _out, err) = check(&site.config);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("stayup.yaml:12:") && err.contains(reason),
            "{err}"
        );
    }
}

/// A packet filter rule that drops every packet sent to one loopback port:
/// the peer on it is still there, but nothing reaches it and nothing it
/// would acknowledge arrives, as when a host vanishes. Removed when dropped.
struct Blackhole {
    table: String,
}

impl Blackhole {
    /// Needs root and `nft`. Where they are missing the test says so and
    /// is skipped, unless `STAYUP_TEST_NETFILTER=require` (CI) makes that
    /// a failure.
    fn to_port(port: u16) -> Option<Blackhole> {
        let why_not = if euid() != 0 {
            Some("not root")
        } else if !have_program("nft") {
            Some("no nft (Debian: nftables)")
        } else {
            None
        };
        let table = format!("stayup_test_{}_{port}", std::process::id());
        let nft = |args: &str| {
            std::process::Command::new("nft")
                .args(args.split_whitespace())
                .output()
        };
        let made = why_not.is_none()
            && [
                format!("add table inet {table}"),
                format!(
                    "add chain inet {table} out {{ type filter hook output priority 0 ; policy accept ; }}"
                ),
                format!("add rule inet {table} out ip daddr 127.0.0.1 tcp dport {port} drop"),
            ]
            .iter()
            .all(|a| nft(a).is_ok_and(|o| o.status.success()));
        if made {
            return Some(Blackhole { table });
        }
        let _ = nft(&format!("delete table inet {table}"));
        let why = why_not.unwrap_or("nft could not add a rule");
        assert!(
            std::env::var("STAYUP_TEST_NETFILTER").as_deref() != Ok("require"),
            "a packet filter is required here, and {why}"
        );
        eprintln!("{why}: cannot make a peer vanish; skipping");
        None
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

/// The kernel is trying to get data through: retransmitting it, or, when
/// the packet filter refused even the first transmission, probing (the
/// timer the kernel arms for a send queue with nothing in flight).
fn sending(s: &KernelSocket) -> bool {
    s.timer == 1 || s.timer == 4
}

/// A backend that vanishes while data to it is unacknowledged is not
/// probed by keepalive; `tcp_keepalive.user_timeout` gives up on it, and
/// the client's connection is closed with it. The same connection through
/// a daemon with `user_timeout: 0` is still retransmitting then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_vanishes_with_data_in_flight_is_given_up_after_the_user_timeout() {
    let (site, backend, bind, d) =
        serving(|bind, backend| config(bind, backend, "tcp_keepalive:\n  user_timeout: 2s\n"))
            .await;
    // A second daemon, to the same backend, that leaves it to the kernel.
    let other = Site::new();
    other.cert("a", &["localhost"]);
    let other_bind = free_addr();
    other.publish(&config(
        other_bind,
        backend.addr,
        "tcp_keepalive:\n  user_timeout: 0\n",
    ));
    let other_d = Daemon::start(&other.config).await;
    let status = status_json(&site.config).await;
    assert_eq!(status["tcp_user_timeout_ms"], 2000, "{status}");
    assert!(status_json(&other.config).await["tcp_user_timeout_ms"].is_null());

    let (mut timed, timed_sides) = open(&site, bind, &backend).await;
    let (mut kept, kept_sides) = open(&other, other_bind, &backend).await;
    let Some(hole) = Blackhole::to_port(backend.addr.port()) else {
        return;
    };
    for s in [&mut timed, &mut kept] {
        s.write_all(b"into the void").await.expect("write");
        s.flush().await.expect("flush");
    }
    let sent = Instant::now();
    // Both daemons pass the bytes on and keep trying to send them.
    for sides in [&timed_sides, &kept_sides] {
        kernel_socket(
            |s| s.local_port == sides.backend_port && s.remote_port == backend.addr.port(),
            sending,
            "stayup's socket to the vanished backend, trying to send",
        )
        .await;
    }

    // stayup closes the client's connection (how exactly does not matter
    // here: a reset is as good as a close).
    let ended = read_to_close(&mut timed).await;
    let after = sent.elapsed();
    assert!(
        !matches!(&ended, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "still open {after:?} after the write"
    );
    assert!(
        after >= Duration::from_millis(1500),
        "closed after {after:?}, before the 2 s user timeout"
    );
    // Given up by the kernel: stayup's socket to the backend is gone.
    assert!(
        !stayup_to_backend(backend.addr).contains(&timed_sides.backend_port),
        "stayup's socket to the backend is still established"
    );
    // Without a user timeout, the same connection is still being tried.
    kernel_socket(
        |s| {
            s.local_port == kept_sides.backend_port
                && s.remote_port == backend.addr.port()
                && s.state == 1
        },
        sending,
        "the kernel-default connection, still trying to send",
    )
    .await;
    drop(hole);
    drop((timed, kept));
    assert!(d.stop().await.success());
    assert!(other_d.stop().await.success());
}
