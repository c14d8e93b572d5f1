//! Logs: `log.format: json` gives one JSON object per line, every reload
//! outcome is exactly one line with generation, trigger, result and reason,
//! and `log.level` follows reloads.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::Value;

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_one_object_per_outcome() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    site.cert("b", &["localhost"]);
    let bind = addr();
    let json = |cert: &str| {
        format!(
            "{}log:\n  format: json\n",
            simple_config(bind, backend.addr, cert)
        )
    };
    site.publish(&json("a"));
    let mut d = Daemon::start(&site.config).await;
    site.publish(&json("b"));
    let committed = d.reload().await;
    site.publish(&json("missing"));
    let rejected = d.reload().await;
    d.signal("TERM");
    assert!(d.wait_exit().await.success());

    for line in d.output().lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
    }
    let c: Value = serde_json::from_str(&committed).expect("json");
    assert_eq!(c["message"], "reload committed");
    assert_eq!(c["generation"], 2);
    assert_eq!(c["previous"], 1);
    assert_eq!(c["trigger"], "signal");
    assert!(
        c["changes"]
            .as_str()
            .is_some_and(|s| s.contains("certificate-swapped"))
    );
    let r: Value = serde_json::from_str(&rejected).expect("json");
    assert_eq!(r["message"], "reload rejected");
    assert_eq!(r["level"], "WARN");
    assert_eq!(r["generation"], 2);
    assert_eq!(r["trigger"], "signal");
    assert!(r["reason"].as_str().is_some_and(|s| s.contains("missing.")));
    assert!(r["class"].is_string());
    // Exactly one line per outcome: startup, committed, rejected.
    let outcomes = d
        .output()
        .lines()
        .filter(|l| l.contains("\"message\":\"reload "))
        .count();
    assert_eq!(outcomes, 3, "{}", d.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_follows_reloads() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    site.cert("a", &["localhost"]);
    let bind = addr();
    let with_level = |level: &str| {
        format!(
            "{}log:\n  level: {level}\n",
            simple_config(bind, backend.addr, "a")
        )
    };
    site.publish(&with_level("info"));
    let mut d = Daemon::start(&site.config).await;

    // At info, a SIGHUP leaves no debug line.
    let line = d.reload().await;
    assert!(line.contains("reload unchanged"), "{line}");
    assert!(!d.output().contains("SIGHUP received"));

    // At debug, it does.
    site.publish(&with_level("debug"));
    let line = d.reload().await;
    assert!(line.contains("reload committed generation=2"), "{line}");
    let line = d.reload().await;
    assert!(line.contains("reload unchanged"), "{line}");
    assert!(d.output().contains("SIGHUP received"), "{}", d.output());

    // At warn, committed reloads are silent (the level applies from the
    // reload that sets it: its own line is already filtered); the status
    // shows them. A rejected reload is still logged.
    site.publish(&with_level("warn"));
    d.signal("HUP");
    wait_generation(&site, 3).await;
    site.publish(&format!(
        "{}log:\n  level: warn\n",
        simple_config(bind, backend.addr, "missing")
    ));
    d.signal("HUP");
    let line = d.outcome().await;
    assert!(line.contains("reload rejected generation=3"), "{line}");
    site.publish(&format!(
        "{}log:\n  level: warn\n  format: text\n",
        simple_config(bind, backend.addr, "a")
    ));
    d.signal("HUP");
    wait_generation(&site, 4).await;
    let out = d.output();
    assert!(!out.contains("reload committed generation=3"), "{out}");
    assert!(!out.contains("reload committed generation=4"), "{out}");
}

async fn wait_generation(site: &Site, generation: u64) {
    let config = site.config.to_str().expect("utf-8").to_string();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let c = config.clone();
        let (_, out, _) =
            tokio::task::spawn_blocking(move || stayup(&["status", "--config", &c, "--json"]))
                .await
                .expect("cli");
        let s: Value = serde_json::from_str(out.trim()).expect("status");
        if s["generation"] == generation {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
