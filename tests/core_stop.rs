//! Stopping and draining: SIGTERM stops accepting and lets open connections
//! finish, a short `shutdown.timeout` (or a second stop signal) closes the
//! ones that linger, and `drain.timeout` closes a superseded generation's
//! connections while the new generation's stay.

mod common;
use common::*;

use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_lets_open_connections_finish() {
    let (site, _backend, bind, mut d) =
        serving(|bind, backend| simple_config(bind, backend, "a")).await;
    let streamer = streamer_at(bind, "localhost", site.client()).await;

    d.signal("TERM");
    d.wait_for("stopped accepting").await;
    wait_refused(bind).await;
    // Well after the stop began, the open connection still streams.
    streamer.advance(64 * 1024).await;
    assert!(
        d.child.try_wait().expect("try_wait").is_none(),
        "stayup exited with a connection still open"
    );
    let closed = Instant::now();
    streamer.finish().await.expect("stream intact");
    let status = d.wait_exit().await;
    assert!(status.success(), "{status}");
    // It exited because the connection ended, not at the 30 s deadline.
    assert!(closed.elapsed() < Duration::from_secs(20));
    d.wait_stopped_line().await;
    assert!(
        !d.output().contains("stop deadline reached"),
        "{}",
        d.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_too() {
    let (site, _backend, bind, mut d) =
        serving(|bind, backend| simple_config(bind, backend, "a")).await;
    fingerprint_at(bind, "localhost", site.client()).await;
    d.signal("INT");
    let status = d.wait_exit().await;
    assert!(status.success(), "{status}");
    wait_refused(bind).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_closes_lingering_connections_and_exits_zero() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let bind = free_addr();
    site.publish(&format!(
        "{}shutdown:\n  timeout: 1s\n",
        simple_config(bind, backend.addr, "a")
    ));
    let mut d = Daemon::start(&site.config).await;
    let streamer = streamer_at(bind, "localhost", site.client()).await;

    let stopped = Instant::now();
    d.signal("TERM");
    d.wait_for("stopped accepting").await;
    wait_refused(bind).await;
    let why = streamer.wait_broken().await;
    assert!(
        stopped.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the 1 s deadline ({why})",
        stopped.elapsed()
    );
    let status = d.wait_exit().await;
    assert!(status.success(), "{status}");
    d.wait_printed(|l| l.contains("stop deadline reached"))
        .await;
    d.wait_stopped_line().await;
}

/// An operator who will not wait for `shutdown.timeout` (30 s by default)
/// stops again: the open connections are closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_closes_open_connections_at_once() {
    let (site, _backend, bind, mut d) =
        serving(|bind, backend| simple_config(bind, backend, "a")).await;
    let streamer = streamer_at(bind, "localhost", site.client()).await;

    d.signal("TERM");
    let waiting = d.wait_for("stopped accepting").await;
    assert!(
        waiting.contains("stop again to close them now"),
        "{waiting}"
    );
    streamer.advance(16 * 1024).await;
    let again = Instant::now();
    d.signal("INT");
    streamer.wait_broken().await;
    let status = d.wait_exit().await;
    assert!(status.success(), "{status}");
    assert!(
        again.elapsed() < Duration::from_secs(20),
        "exited {:?} after the second signal: at the 30 s deadline, not at once",
        again.elapsed()
    );
    d.wait_printed(|l| l.contains("asked again to stop; closing the remaining connections"))
        .await;
    assert!(
        !d.output().contains("stop deadline reached"),
        "{}",
        d.output()
    );
    d.wait_stopped_line().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_closes_the_old_generation_only() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let bind = free_addr();
    let with_drain = |cert: &str| {
        format!(
            "{}drain:\n  timeout: 1s\n",
            simple_config(bind, backend.addr, cert)
        )
    };
    site.publish(&with_drain("a"));
    let mut d = Daemon::start(&site.config).await;
    let old = streamer_at(bind, "localhost", site.client()).await;

    site.publish(&with_drain("b"));
    let reloaded = Instant::now();
    let line = d.reload().await;
    assert!(line.contains("reload committed generation=2"), "{line}");
    let s = connected(bind, "localhost", site.client()).await;
    assert_eq!(peer_fingerprint(&s), b.fingerprint());
    let new = Streamer::start(s);
    new.advance(4096).await;

    d.wait_for("drain timeout reached").await;
    let why = old.wait_broken().await;
    assert!(
        reloaded.elapsed() >= Duration::from_millis(900),
        "the old connection closed before the drain timeout: {why}"
    );
    // The new generation's connection outlives the old one's deadline.
    new.advance(64 * 1024).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    new.advance(16 * 1024).await;
    new.finish().await.expect("new-generation stream intact");
    assert!(d.stop().await.success());
}

/// The generations `stayup status --json` reports: (id, connections).
fn live_generations(config: &std::path::Path) -> Vec<(u64, u64)> {
    let (code, out, err) = stayup(&["status", "--config", config.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    v["generations"]
        .as_array()
        .expect("generations")
        .iter()
        .map(|g| {
            (
                g["generation"].as_u64().expect("id"),
                g["connections"].as_u64().expect("connections"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_generation_is_freed_when_its_last_connection_ends() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    site.cert("b", &["localhost"]);
    let bind = free_addr();
    site.publish(&simple_config(bind, backend.addr, "a"));
    let mut d = Daemon::start(&site.config).await;
    let old = streamer_at(bind, "localhost", site.client()).await;
    site.publish(&simple_config(bind, backend.addr, "b"));
    assert!(d.reload().await.contains("reload committed generation=2"));
    // A connection that ended long ago does not keep its generation either.
    fingerprint_at(bind, "localhost", site.client()).await;

    let mut gens = live_generations(&site.config);
    gens.sort();
    assert_eq!(gens.first(), Some(&(1, 1)), "{gens:?}");
    assert_eq!(gens.last().map(|g| g.0), Some(2), "{gens:?}");

    old.finish().await.expect("stream intact");
    let deadline = Instant::now() + WAIT;
    loop {
        let gens = live_generations(&site.config);
        if gens.iter().all(|g| g.0 == 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "generation 1 still live: {gens:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(d.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_closes_when_the_stop_begins() {
    let admin = free_addr();
    let (site, _backend, bind, mut d) = serving(|bind, backend| {
        format!(
            "{}admin:\n  listen: \"{admin}\"\n",
            simple_config(bind, backend, "a")
        )
    })
    .await;
    let streamer = streamer_at(bind, "localhost", site.client()).await;
    d.signal("TERM");
    d.wait_for("stopped accepting").await;
    // Refused while the open connection drains, not queued for nobody.
    wait_refused(admin).await;
    wait_refused(bind).await;
    streamer.advance(16 * 1024).await;
    streamer.finish().await.expect("stream intact");
    assert!(d.wait_exit().await.success());
}
