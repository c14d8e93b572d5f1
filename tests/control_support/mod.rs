//! Shared by the control-plane tests: a minimal HTTP/1.1 client
//! for the admin endpoint, metric lookup, and the CLI run off the runtime.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{WAIT, stayup};

/// `GET path` on `addr`; returns the status code, the headers and the body.
/// Reads `Content-Length` bytes when the server says how many (some keep
/// the connection open regardless of `Connection: close`), else to the end.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("send request");
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = s.read(&mut buf).await.expect("read response");
            raw.extend_from_slice(&buf[..n]);
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]);
                let body_len = raw.len() - end - 4;
                let length = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                });
                if length.is_some_and(|len| body_len >= len) {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        String::from_utf8(raw).expect("utf-8 response")
    };
    let text = tokio::time::timeout(WAIT, fut)
        .await
        .expect("HTTP answer timed out");
    let (head, body) = text.split_once("\r\n\r\n").expect("header/body split");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, head.to_string(), body.to_string())
}

/// The value of the sample `series` (name with labels, exactly as printed)
/// in a metrics text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Scrapes `/metrics` until `series` has a value satisfying `ok`.
pub async fn wait_metric(addr: SocketAddr, series: &str, ok: impl Fn(f64) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, _, body) = http_get(addr, "/metrics").await;
        if metric(&body, series).is_some_and(&ok) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {series}; last scrape:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `stayup <args>` on a blocking thread, so a test's runtime keeps
/// collecting the daemon's output meanwhile.
pub async fn cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        stayup(&refs)
    })
    .await
    .expect("cli thread")
}

/// `stayup reload --config <config> --json`: the exit code and the answer.
pub async fn reload_json(config: &Path) -> (i32, serde_json::Value) {
    let c = config.to_str().expect("utf-8 path");
    let (code, out, err) = cli(&["reload", "--config", c, "--json"]).await;
    let v = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("reload --json printed no JSON ({e}): {out:?} {err:?}"));
    (code, v)
}

/// Waits until `path` exists (or, with `exists` false, is gone).
pub async fn wait_path(path: &Path, exists: bool) {
    let deadline = Instant::now() + WAIT;
    while path.exists() != exists {
        assert!(
            Instant::now() < deadline,
            "{} still {}",
            path.display(),
            if exists { "missing" } else { "present" }
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
