//! The admin status page in a real headless Chromium (Debian's `chromium`):
//! the rendered DOM shows the generation and certificate rows, and a page
//! left open shows the new generation after a reload without being
//! reloaded by anyone.

mod common;
mod control_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use control_support::*;

/// Starting a browser on a loaded machine is slow; each browser wait gets
/// this much.
const BROWSER_WAIT: Duration = Duration::from_secs(60);

fn chromium_args(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

/// The DOM of `url` after its scripts ran (virtual time lets the first
/// `/status` fetch finish before the dump).
async fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = Command::new("chromium");
    cmd.args(chromium_args(profile.path()))
        .arg("--virtual-time-budget=5000")
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null());
    let out = tokio::time::timeout(
        BROWSER_WAIT,
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .expect("chromium --dump-dom timed out")
    .expect("chromium thread")
    .expect("run chromium (install Debian's chromium package)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A headless Chromium keeping `url` open, with its DevTools HTTP endpoint.
struct Browser {
    child: Child,
    devtools: SocketAddr,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new("chromium")
            .args(chromium_args(profile.path()))
            .arg("--remote-debugging-address=127.0.0.1")
            .arg("--remote-debugging-port=0")
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium (install Debian's chromium package)");
        // Chromium writes the port it chose into the profile folder.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + BROWSER_WAIT;
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break p;
            }
            assert!(Instant::now() < deadline, "chromium did not start DevTools");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Browser {
            child,
            devtools: format!("127.0.0.1:{port}").parse().expect("addr"),
            _profile: profile,
        }
    }

    /// Waits until the open page's title is `title`; returns the titles seen.
    async fn wait_title(&self, title: &str) {
        let deadline = Instant::now() + BROWSER_WAIT;
        let mut seen = Vec::new();
        loop {
            let (code, _, body) = http_get(self.devtools, "/json/list").await;
            if code == 200 {
                let targets: serde_json::Value = serde_json::from_str(&body).expect("json");
                for t in targets.as_array().into_iter().flatten() {
                    if t["type"] == "page" {
                        let now = t["title"].as_str().unwrap_or("").to_string();
                        if now == title {
                            return;
                        }
                        if seen.last() != Some(&now) {
                            seen.push(now);
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "page title never became {title:?}; titles seen: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_generations_and_certificates_and_follows_reloads() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let a = site.cert("a", &["localhost", "page.example"]);
    let b = site.cert("b", &["localhost"]);
    let bind: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = |cert: &str| {
        format!(
            "{}admin:\n  listen: \"{admin}\"\n",
            simple_config(bind, backend.addr, cert)
        )
    };
    site.publish(&config("a"));
    let _d = Daemon::start(&site.config).await;
    let url = format!("http://{admin}/");

    // The rendered page: generation, certificate rows, listener, history.
    let dom = dump_dom(&url).await;
    assert!(dom.contains("<title>stayup: generation 1</title>"), "{dom}");
    assert!(dom.contains(r#"data-generation="1""#), "{dom}");
    assert!(
        dom.contains(&format!(r#"data-sha256="{}""#, a.fingerprint())),
        "certificate row missing:\n{dom}"
    );
    assert!(dom.contains("page.example"), "{dom}");
    assert!(dom.contains(r#"data-listener="web""#), "{dom}");
    assert!(dom.contains("startup"), "{dom}");
    assert!(dom.contains(r#"data-refreshes="#), "{dom}");

    // A page left open follows a reload by itself.
    let browser = Browser::open(&url).await;
    browser.wait_title("stayup: generation 1").await;
    site.publish(&config("b"));
    let (code, v) = reload_json(&site.config).await;
    assert_eq!(code, 0, "{v}");
    browser.wait_title("stayup: generation 2").await;

    // And its rows show the new certificate and the reload.
    let dom = dump_dom(&url).await;
    assert!(dom.contains(r#"data-generation="2""#), "{dom}");
    assert!(
        dom.contains(&format!(r#"data-sha256="{}""#, b.fingerprint())),
        "{dom}"
    );
    assert!(!dom.contains(&format!(r#"data-sha256="{}""#, a.fingerprint())));
    assert!(dom.contains("certificate-swapped web"), "{dom}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_marks_certificates_near_expiry() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let mut spec = stayup::pki::LeafSpec::server(&["localhost"]);
    spec.not_after = std::time::SystemTime::now() + Duration::from_secs(3 * 86_400);
    let soon = site.cert_with("soon", &spec);
    let bind: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    site.publish(&format!(
        "{}admin:\n  listen: \"{admin}\"\n",
        simple_config(bind, backend.addr, "soon")
    ));
    let _d = Daemon::start(&site.config).await;
    let dom = dump_dom(&format!("http://{admin}/")).await;
    assert!(
        dom.contains(&format!(
            r#"<tr class="certificate expiring" data-sha256="{}">"#,
            soon.fingerprint()
        )),
        "{dom}"
    );
    assert!(dom.contains(r#"class="warn""#), "{dom}");
}
