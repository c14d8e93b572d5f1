//! Referenced files reported as changed in place reach the status (JSON and
//! human form) and the metrics. Runs the daemon in process, the way an
//! embedding server would, with real files and a real listener.

mod common;

use common::*;
use stayup::daemon::Daemon;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_changed_in_place_are_reported() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let bind = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    site.publish(&simple_config(bind, backend.addr, "a"));
    let shared = stayup::Shared::new().expect("shared");
    let daemon = Daemon::start(&site.config, shared, Vec::new()).expect("start");
    let handle = daemon.handle();
    let ctx = daemon.context();
    let stop = CancellationToken::new();
    let metrics = stayup::metrics::Metrics::start(&handle, stop.clone());

    let s = stayup::status::status_json(&handle, &ctx);
    assert_eq!(s["modified_in_place"].as_array().map(Vec::len), Some(0));
    let m = metrics.render(&handle, &ctx);
    assert!(m.contains("\nstayup_referenced_files_changed 0\n"), "{m}");

    let key = site.path("certs/a.key");
    handle.set_modified_in_place(vec![key.clone()]);
    let s = stayup::status::status_json(&handle, &ctx);
    assert_eq!(s["modified_in_place"][0], key.display().to_string());
    let m = metrics.render(&handle, &ctx);
    assert!(m.contains("\nstayup_referenced_files_changed 1\n"), "{m}");
    assert!(m.ends_with("# EOF\n"), "{m}");

    stop.cancel();
    daemon.stop(std::future::pending()).await;
}
