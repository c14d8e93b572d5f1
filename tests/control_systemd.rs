//! The systemd notification sequence, read from a real unix datagram
//! socket given to the daemon in `NOTIFY_SOCKET`.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;

async fn next(rx: &mpsc::Receiver<String>) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match rx.try_recv() {
            Ok(m) => return m,
            Err(mpsc::TryRecvError::Empty) => {}
            Err(e) => panic!("notify socket: {e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no notification within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn monotonic_usec(msg: &str) -> u64 {
    msg.lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {msg:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_then_reloading_and_ready_for_every_reload() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    site.cert("b", &["localhost"]);
    let bind = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    site.publish(&simple_config(bind, backend.addr, "a"));
    let path = site.path("notify.sock");
    let rx = notify_receiver(&path);
    let notify = path.to_str().expect("utf-8");
    let mut d = Daemon::spawn(&site.config, &[("NOTIFY_SOCKET", notify)]);
    d.wait_for("stayup ready").await;

    assert_eq!(next(&rx).await, "READY=1\nSTATUS=serving generation 1\n");

    // A committed reload (SIGHUP, as Type=notify-reload sends it).
    site.publish(&simple_config(bind, backend.addr, "b"));
    let line = d.reload().await;
    assert!(line.contains("reload committed"), "{line}");
    let reloading = next(&rx).await;
    assert!(reloading.starts_with("RELOADING=1\n"), "{reloading:?}");
    let first = monotonic_usec(&reloading);
    assert!(first > 0);
    let ready = next(&rx).await;
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(
        ready.contains("STATUS=reload committed: generation 2 (was 1), trigger signal"),
        "{ready:?}"
    );

    // A rejected reload is reported the same way: the service is ready
    // (generation 2 serves) and STATUS says why the reload did not take.
    site.publish(&simple_config(bind, backend.addr, "missing"));
    let line = d.reload().await;
    assert!(line.contains("reload rejected"), "{line}");
    let reloading = next(&rx).await;
    assert!(reloading.starts_with("RELOADING=1\n"), "{reloading:?}");
    assert!(monotonic_usec(&reloading) >= first);
    let ready = next(&rx).await;
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(
        ready.contains("STATUS=reload rejected: generation 2 keeps serving, trigger signal"),
        "{ready:?}"
    );
    assert!(ready.contains("missing."), "{ready:?}");
    assert_eq!(
        ready.matches('\n').count(),
        2,
        "one line per field: {ready:?}"
    );

    // A clean stop says so.
    assert!(d.stop().await.success());
    assert_eq!(next(&rx).await, "STOPPING=1\n");
    assert!(rx.try_recv().is_err(), "unexpected extra notification");
}
