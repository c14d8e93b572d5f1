//! What the watch tests share: configurations with the watch on, a served
//! connection streaming checksummed data, outcome lines, and the publishers
//! kubelet and certbot use (Kubernetes' AtomicWriter, certbot's symlink flips).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use stayup::pki::Pem;

use crate::common::*;

/// A configuration with one listener and the watch on, logging at debug so
/// that tests can wait for the poll's lines. `cert` and `key` are written as
/// given (relative to the configuration's folder, or absolute); `extra` is
/// appended (for example a `control:` block).
pub fn watch_yaml(
    bind: SocketAddr,
    backend: SocketAddr,
    cert: &str,
    key: &str,
    reload: &str,
    extra: &str,
) -> String {
    format!(
        "listeners:\n  - name: web\n    bind: \"{bind}\"\n    backend: \"{backend}\"\n    tls:\n      certificates:\n        - cert: {cert}\n          key: {key}\nreload:\n{reload}log:\n  level: debug\n{extra}"
    )
}

/// `reload:` settings: watch on, 200 ms debounce, the given poll.
pub fn reload_block(poll: &str) -> String {
    format!("  watch: true\n  debounce: 200ms\n  poll: {poll}\n")
}

/// [`watch_yaml`] serving the site's `certs/<cert>.pem` and `.key` with the
/// given `reload:` settings: the configuration most watch tests publish.
pub fn cert_yaml(bind: SocketAddr, backend: SocketAddr, cert: &str, reload: &str) -> String {
    watch_yaml(
        bind,
        backend,
        &format!("certs/{cert}.pem"),
        &format!("certs/{cert}.key"),
        reload,
        "",
    )
}

/// Lower-case hex SHA-256, as the `source=` field of a committed line.
pub fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(stayup::material::sha256(bytes))
}

/// The `generation=N` of an outcome line.
pub fn generation_of(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("generation="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no generation in {line:?}"))
}

/// Waits for the next outcome line, asserts its result and trigger, and
/// returns it.
pub async fn expect_outcome(d: &mut Daemon, result: &str, trigger: &str) -> String {
    let line = d.outcome().await;
    assert!(
        line.contains(&format!("reload {result}")) && line.contains(&format!("trigger={trigger}")),
        "expected `reload {result}` by {trigger}, got: {line}\noutput:\n{}",
        d.output()
    );
    line
}

/// Every outcome line printed so far that a watch or poll caused.
pub fn automatic_outcomes(d: &Daemon) -> Vec<String> {
    d.output()
        .lines()
        .filter(|l| {
            l.contains("reload ") && (l.contains("trigger=watch") || l.contains("trigger=poll"))
        })
        .map(str::to_string)
        .collect()
}

/// A daemon serving one listener, with a connection opened before any
/// change streaming checksummed data through it.
pub struct Served {
    pub bind: SocketAddr,
    pub backend: EchoBackend,
    pub d: Daemon,
    pub streamer: Streamer,
}

impl Served {
    /// Starts the daemon on `config` (already written) and opens the
    /// streaming connection, checking it presents `first`.
    pub async fn start(
        config: &Path,
        bind: SocketAddr,
        backend: EchoBackend,
        client: std::sync::Arc<rustls::ClientConfig>,
        first: &str,
    ) -> Served {
        let d = Daemon::start(config).await;
        Self::attach(d, bind, backend, client, first).await
    }

    pub async fn attach(
        d: Daemon,
        bind: SocketAddr,
        backend: EchoBackend,
        client: std::sync::Arc<rustls::ClientConfig>,
        first: &str,
    ) -> Served {
        let conn = connected(bind, "localhost", client).await;
        assert_eq!(peer_fingerprint(&conn), first, "first certificate");
        let streamer = Streamer::start(conn);
        streamer.advance(8 * 1024).await;
        Served {
            bind,
            backend,
            d,
            streamer,
        }
    }

    /// This daemon's configuration serving `certs/<cert>`, with the watch on
    /// and the given poll, ready to publish as a change.
    pub fn config_for(&self, cert: &str, poll: &str) -> String {
        cert_yaml(self.bind, self.backend.addr, cert, &reload_block(poll))
    }

    /// Waits for the next outcome line and checks what a change led to:
    /// `reload <result>` by `trigger`, the live generation now `generation`,
    /// and a new connection served `serving`'s certificate. Returns the line
    /// for further checks. `client` is a fresh configuration each time
    /// ([`Site::client`]), so that no resumed session reports a certificate
    /// from before the change.
    pub async fn expect_reload(
        &mut self,
        result: &str,
        trigger: &str,
        generation: u64,
        serving: &Pem,
        client: std::sync::Arc<rustls::ClientConfig>,
    ) -> String {
        let line = expect_outcome(&mut self.d, result, trigger).await;
        assert_eq!(generation_of(&line), generation, "{line}");
        assert_eq!(
            fingerprint_at(self.bind, "localhost", client).await,
            serving.fingerprint(),
            "certificate served after: {line}"
        );
        line
    }

    /// [`Served::expect_reload`] for the usual case: the watch committed
    /// `generation`, which serves `serving`.
    pub async fn expect_watch_commit(
        &mut self,
        generation: u64,
        serving: &Pem,
        client: std::sync::Arc<rustls::ClientConfig>,
    ) -> String {
        self.expect_reload("committed", "watch", generation, serving, client)
            .await
    }

    /// Streams 8 KiB more, so that the connection opened before any change
    /// is shown to outlive them all, then stops the stream (asserting every
    /// byte came back intact) and the daemon.
    pub async fn finish(self) {
        self.streamer.advance(8 * 1024).await;
        let verified = self.streamer.finish().await.expect("stream intact");
        assert!(verified > 16 * 1024, "only {verified} bytes verified");
        assert!(self.d.stop().await.success(), "clean stop");
    }
}

/// A listener address and an echo backend for a new test.
pub async fn endpoints() -> (SocketAddr, EchoBackend) {
    let bind = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    (bind, EchoBackend::start().await)
}

/// Starts a daemon on a new site whose configuration serves certificate
/// `a` with the watch on and the given poll; certificates `b` and `c` are
/// ready to publish.
pub async fn site_serving_a(poll: &str) -> (Site, Served, [Pem; 3]) {
    let site = Site::new();
    let a = site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let c = site.cert("c", &["localhost"]);
    let (bind, backend) = endpoints().await;
    site.publish(&cert_yaml(bind, backend.addr, "a", &reload_block(poll)));
    let served = Served::start(&site.config, bind, backend, site.client(), &a.fingerprint()).await;
    (site, served, [a, b, c])
}

/// Writes `bytes` to `path` in place: the same inode, truncated and
/// rewritten, as `echo > file` or most editors' "save" without a backup.
pub fn write_in_place(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("open in place");
    f.write_all(bytes).expect("write in place");
    f.sync_all().expect("sync");
}

/// A Kubernetes projected volume written exactly as kubelet's AtomicWriter
/// does: the payload goes into a new timestamped folder, a `..data_tmp`
/// symlink to it is renamed onto `..data`, user-visible symlinks
/// `<name> -> ..data/<name>` are created if missing, and the previous
/// timestamped folder is removed.
pub struct Projected {
    pub dir: PathBuf,
}

static TS_SEQ: AtomicU64 = AtomicU64::new(0);

impl Projected {
    pub fn new(dir: PathBuf) -> Projected {
        std::fs::create_dir_all(&dir).expect("mkdir volume");
        Projected { dir }
    }

    /// One update publishing `yaml` as `config.yaml` with `pem` as the
    /// `tls.crt` and `tls.key` it names, modes as a Secret volume has them.
    pub fn publish(&self, yaml: &str, pem: &Pem) {
        self.update(&[
            ("config.yaml", yaml.as_bytes(), 0o644),
            ("tls.crt", pem.cert.as_bytes(), 0o644),
            ("tls.key", pem.key.as_bytes(), 0o600),
        ]);
    }

    /// One update. Each entry is (name, bytes, mode).
    pub fn update(&self, payload: &[(&str, &[u8], u32)]) {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let data = self.dir.join("..data");
        let old = std::fs::read_link(&data).ok();

        // os.MkdirTemp(dir, "..2006_01_02_15_04_05.")
        let t = time::OffsetDateTime::now_utc();
        let ts = format!(
            "..{:04}_{:02}_{:02}_{:02}_{:02}_{:02}.{}{}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond(),
            TS_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let ts_dir = self.dir.join(&ts);
        std::fs::create_dir(&ts_dir).expect("mkdir timestamped");
        for (name, bytes, mode) in payload {
            let p = ts_dir.join(name);
            std::fs::write(&p, bytes).expect("write payload");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).expect("chmod");
        }
        let tmp = self.dir.join("..data_tmp");
        symlink(&ts, &tmp).expect("symlink ..data_tmp");
        std::fs::rename(&tmp, &data).expect("rename ..data_tmp onto ..data");
        for (name, _, _) in payload {
            let visible = self.dir.join(name);
            if std::fs::symlink_metadata(&visible).is_err() {
                symlink(Path::new("..data").join(name), &visible).expect("user-visible symlink");
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).expect("remove old timestamped folder");
        }
    }
}

/// Points the symlink `link` at `target` the way certbot does it: unlink,
/// then symlink (not atomic).
pub fn certbot_flip(link: &Path, target: &str) {
    std::fs::remove_file(link).expect("unlink");
    std::os::unix::fs::symlink(target, link).expect("symlink");
}
