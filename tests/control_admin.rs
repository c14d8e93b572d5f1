//! The admin HTTP endpoint of a live daemon: metrics before and after a
//! committed and a rejected reload, the health and status routes, and the
//! refusal of a non-loopback address.

mod common;
mod control_support;

use std::net::SocketAddr;

use common::*;
use control_support::*;
use tokio::io::AsyncWriteExt;

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

fn config(bind: SocketAddr, backend: SocketAddr, cert: &str, admin: SocketAddr) -> String {
    format!(
        "{}admin:\n  listen: \"{admin}\"\n",
        simple_config(bind, backend, cert)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_committed_and_rejected_reloads() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let a = site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let (bind, admin) = (addr(), addr());
    site.publish(&config(bind, backend.addr, "a", admin));
    // The admin endpoint is bound before "stayup ready".
    let mut d = Daemon::start(&site.config).await;

    let (status, head, m) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert_eq!(metric(&m, "stayup_generation"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "stayup_last_reload_successful"), Some(1.0));
    let first_success =
        metric(&m, "stayup_last_reload_success_timestamp_seconds").expect("success timestamp");
    assert!(first_success > 1.7e9, "{first_success}");
    let ctl =
        |result: &str| format!("stayup_reloads_total{{trigger=\"control\",result=\"{result}\"}}");
    assert_eq!(metric(&m, &ctl("committed")), Some(0.0), "{m}");
    assert_eq!(metric(&m, &ctl("rejected")), Some(0.0));
    assert_eq!(metric(&m, "stayup_generations_live"), Some(1.0));
    assert_eq!(metric(&m, "stayup_connections_active"), Some(0.0));
    assert_eq!(
        metric(&m, "stayup_oldest_draining_generation_age_seconds"),
        Some(0.0)
    );
    assert_eq!(metric(&m, "stayup_referenced_files_changed"), Some(0.0));
    let s = status_json(&site.config).await;
    let not_after = time::OffsetDateTime::parse(
        s["certificates"][0]["not_after"]
            .as_str()
            .expect("not_after"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339")
    .unix_timestamp();
    assert_eq!(
        metric(
            &m,
            &format!(
                "stayup_certificate_not_after_seconds{{listener=\"web\",fingerprint=\"{}\"}}",
                a.fingerprint()
            )
        ),
        Some(not_after as f64)
    );

    // One connection that sends and ends, one held open over the reload.
    let mut c = connect(bind, "localhost", site.client())
        .await
        .expect("connect");
    echo_round_trip(&mut c, b"0123456789").await;
    c.shutdown().await.expect("shutdown");
    read_to_close(&mut c).await.expect("a clean close");
    drop(c);
    let mut held = connect(bind, "localhost", site.client())
        .await
        .expect("connect");
    let m = wait_metric(
        admin,
        "stayup_handshakes_total{listener=\"web\",result=\"ok\"}",
        |v| v == 2.0,
    )
    .await;
    assert_eq!(
        metric(
            &m,
            "stayup_handshakes_total{listener=\"web\",result=\"failed\"}"
        ),
        Some(0.0)
    );
    // Each connection has a client of its own: nothing resumed.
    assert_eq!(
        metric(&m, "stayup_handshakes_resumed_total{listener=\"web\"}"),
        Some(0.0)
    );
    let m = wait_metric(
        admin,
        "stayup_bytes_total{listener=\"web\",direction=\"from_client\"}",
        |v| v == 10.0,
    )
    .await;
    assert_eq!(
        metric(
            &m,
            "stayup_bytes_total{listener=\"web\",direction=\"to_client\"}"
        ),
        Some(10.0)
    );
    wait_metric(admin, "stayup_connections_active", |v| v == 1.0).await;
    // The first connection ended cleanly; nothing else has ended.
    let ended =
        |end: &str| format!("stayup_connections_ended_total{{listener=\"web\",end=\"{end}\"}}");
    let m = wait_metric(admin, &ended("closed"), |v| v == 1.0).await;
    for end in ["error", "handshake-failed", "drained", "refused"] {
        assert_eq!(metric(&m, &ended(end)), Some(0.0), "{end}: {m}");
    }
    // Bytes are counted while a connection streams, not only once it ends.
    echo_round_trip(&mut held, b"still open, twenty-six b").await;
    wait_metric(
        admin,
        "stayup_bytes_total{listener=\"web\",direction=\"from_client\"}",
        |v| v == 34.0,
    )
    .await;
    wait_metric(
        admin,
        "stayup_bytes_total{listener=\"web\",direction=\"to_client\"}",
        |v| v == 34.0,
    )
    .await;

    // A committed reload.
    site.publish(&config(bind, backend.addr, "b", admin));
    let (code, v) = reload_json(&site.config).await;
    assert_eq!(code, 0, "{v}");
    let m = wait_metric(admin, &ctl("committed"), |v| v == 1.0).await;
    assert_eq!(metric(&m, "stayup_generation"), Some(2.0));
    assert_eq!(metric(&m, "stayup_last_reload_successful"), Some(1.0));
    let second_success =
        metric(&m, "stayup_last_reload_success_timestamp_seconds").expect("success timestamp");
    assert!(second_success >= first_success);
    assert_eq!(metric(&m, "stayup_generations_live"), Some(2.0));
    assert_eq!(
        metric(&m, "stayup_connections_by_generation{generation=\"1\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "stayup_connections_by_generation{generation=\"2\"}"),
        Some(0.0)
    );
    assert!(
        metric(
            &m,
            &format!(
                "stayup_certificate_not_after_seconds{{listener=\"web\",fingerprint=\"{}\"}}",
                b.fingerprint()
            )
        )
        .is_some(),
        "{m}"
    );
    assert!(metric(&m, "stayup_oldest_draining_generation_age_seconds").is_some());

    // A rejected reload: counted, the gauge drops, the generation stays,
    // the success timestamp does not move.
    site.publish(&config(bind, backend.addr, "missing", admin));
    let (code, v) = reload_json(&site.config).await;
    assert_eq!(code, 1, "{v}");
    let m = wait_metric(admin, &ctl("rejected"), |v| v == 1.0).await;
    assert_eq!(metric(&m, &ctl("committed")), Some(1.0));
    assert_eq!(metric(&m, "stayup_generation"), Some(2.0));
    assert_eq!(metric(&m, "stayup_last_reload_successful"), Some(0.0));
    assert_eq!(
        metric(&m, "stayup_last_reload_success_timestamp_seconds"),
        Some(second_success)
    );

    // A signal reload is counted under its own trigger.
    d.wait_for("reload committed generation=2").await;
    d.wait_for("reload rejected").await;
    site.publish(&config(bind, backend.addr, "b", admin));
    let line = d.reload().await;
    assert!(line.contains("reload unchanged"), "{line}");
    let m = wait_metric(
        admin,
        "stayup_reloads_total{trigger=\"signal\",result=\"unchanged\"}",
        |v| v == 1.0,
    )
    .await;
    assert_eq!(metric(&m, "stayup_last_reload_successful"), Some(1.0));

    // The held connection ends: generation 1 is freed.
    drop(held);
    wait_metric(admin, "stayup_generations_live", |v| v == 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_status_and_page_routes() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let (bind, admin) = (addr(), addr());
    site.publish(&config(bind, backend.addr, "a", admin));
    // The admin endpoint is bound before "stayup ready".
    let mut d = Daemon::start(&site.config).await;

    let (code, _, body) = http_get(admin, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, _, body) = http_get(admin, "/readyz").await;
    assert_eq!(code, 200);
    assert!(body.contains("generation 1"), "{body}");
    let (code, head, body) = http_get(admin, "/status").await;
    assert_eq!(code, 200);
    assert!(head.contains("application/json"), "{head}");
    let s: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(s["generation"], 1);
    assert_eq!(s["listeners"][0]["name"], "web");
    let (code, head, body) = http_get(admin, "/").await;
    assert_eq!(code, 200);
    assert!(head.contains("text/html"), "{head}");
    assert!(body.contains("<title>stayup</title>"));
    let (code, _, _) = http_get(admin, "/nope").await;
    assert_eq!(code, 404);

    // admin.listen follows a reload: the new address serves, the old closes.
    let moved = addr();
    site.publish(&config(bind, backend.addr, "a", moved));
    let (code, v) = reload_json(&site.config).await;
    assert_eq!(code, 0, "{v}");
    d.wait_for(&format!("admin endpoint listening addr={moved}"))
        .await;
    let (code, _, body) = http_get(moved, "/readyz").await;
    assert_eq!(code, 200);
    assert!(body.contains("generation 2"), "{body}");
    wait_refused(admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_admin_is_refused_unless_allowed() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let bind = addr();
    let port = free_port();
    let open = format!(
        "{}admin:\n  listen: \"0.0.0.0:{port}\"\n",
        simple_config(bind, backend.addr, "a")
    );
    site.publish(&open);
    let config = site.config.to_str().expect("utf-8");
    let (code, out, err) = cli(&["check", "--config", config]).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("stayup.yaml:"), "{err}");
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(err.contains("admin.allow_remote: true"), "{err}");

    let mut d = Daemon::spawn(&site.config, &[]);
    assert_eq!(d.wait_exit().await.code(), Some(1));
    let out = d.output();
    assert!(out.contains("not a loopback address"), "{out}");
    assert!(!out.contains("listening"), "{out}");

    // A running daemon rejects a reload to such an address and keeps its
    // loopback endpoint.
    let admin = addr();
    site.publish(&config_with_admin(bind, backend.addr, admin));
    // The admin endpoint is bound before "stayup ready".
    let _d = Daemon::start(&site.config).await;
    site.publish(&open);
    let (code, v) = reload_json(&site.config).await;
    assert_eq!(code, 1, "{v}");
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("allow_remote"))
    );
    let (code, _, _) = http_get(admin, "/healthz").await;
    assert_eq!(code, 200);

    // With allow_remote the same address is valid.
    site.publish(&format!("{open}  allow_remote: true\n"));
    let (code, out, _) = cli(&["check", "--config", config]).await;
    assert_eq!(code, 0, "{out}");
}

fn config_with_admin(bind: SocketAddr, backend: SocketAddr, admin: SocketAddr) -> String {
    config(bind, backend, "a", admin)
}
