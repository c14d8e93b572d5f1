//! Every case of the bad-input corpus (`fixtures/bad/`) is delivered, one
//! after the other, to ONE running daemon that carries open streaming
//! connections, and reloaded with SIGHUP. Each must be rejected with its
//! expected class and a message naming the file, while the first
//! generation keeps serving and every connection keeps streaming. At the
//! end the daemon's file descriptors and memory are back where they were
//! and nothing it printed contains key material.
//!
//! Certificates and keys are generated here, at run time, so their
//! validity windows never go stale; see `fixtures/README.md`.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use stayup::pki::{Ca, LeafSpec, Pem};

/// How many streaming connections stay open through the whole corpus.
const STREAMS: usize = 4;
/// Allowed growth of open descriptors after the run.
const FD_MARGIN: usize = 2;
/// Allowed growth of resident memory after the run, in KiB.
const RSS_MARGIN_KIB: u64 = 8 * 1024;

/// One folder of `fixtures/bad/`.
struct Case {
    name: String,
    dir: PathBuf,
    class: String,
    file: String,
    message: String,
    recipe: Vec<Vec<String>>,
}

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bad")
}

fn load_corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(corpus_root())
        .expect("fixtures/bad")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let expect = std::fs::read_to_string(dir.join("expect"))
            .unwrap_or_else(|e| panic!("{name}/expect: {e}"));
        let mut fields = BTreeMap::new();
        for line in expect.lines().filter(|l| !l.trim().is_empty()) {
            let (k, v) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("{name}/expect: {line:?} is not key: value"));
            fields.insert(k.trim().to_string(), v.trim().to_string());
        }
        let field = |k: &str| {
            fields
                .get(k)
                .cloned()
                .unwrap_or_else(|| panic!("{name}/expect has no {k}"))
        };
        let recipe = std::fs::read_to_string(dir.join("recipe"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect();
        cases.push(Case {
            class: field("class"),
            file: field("file"),
            message: field("message"),
            name,
            dir,
            recipe,
        });
    }
    cases
}

/// Builds each case's files under the site folder and remembers every
/// private key it wrote, for the final scan of the daemon's output.
struct Builder<'a> {
    site: &'a Site,
    bind: SocketAddr,
    backend: SocketAddr,
    keys: Vec<String>,
    /// Sockets held open while a case needs a port to be taken.
    occupied: Vec<std::net::TcpListener>,
}

impl Builder<'_> {
    fn leaf(&mut self, spec: &LeafSpec) -> Pem {
        let pem = self.site.ca.leaf(spec).expect("leaf");
        self.keys.push(pem.key.clone());
        pem
    }

    fn write_pair(&self, dir: &Path, name: &str, cert: impl AsRef<[u8]>, key: impl AsRef<[u8]>) {
        std::fs::write(dir.join(format!("{name}.pem")), cert).expect("write cert");
        stayup::pki::write_private(&dir.join(format!("{name}.key")), key.as_ref())
            .expect("write key");
    }

    fn openssl(&self, args: &[&str]) {
        assert!(
            have_program("openssl"),
            "the corpus needs the openssl command (Debian package openssl)"
        );
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Applies one recipe line in the case folder `dir`.
    fn apply(&mut self, dir: &Path, op: &[String]) {
        let arg = |i: usize| -> &str { op.get(i).map(String::as_str).expect("recipe argument") };
        let at = |i: usize| dir.join(arg(i));
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        match op[0].as_str() {
            "pair" => {
                let names: Vec<&str> = if op.len() > 2 {
                    op[2..].iter().map(String::as_str).collect()
                } else {
                    vec!["localhost"]
                };
                let p = self.leaf(&LeafSpec::server(&names));
                self.write_pair(dir, arg(1), &p.cert, &p.key);
            }
            "expired" | "not-yet-valid" => {
                let mut spec = LeafSpec::server(&["localhost"]);
                if op[0] == "expired" {
                    spec.not_before = now - 30 * day;
                    spec.not_after = now - day;
                } else {
                    spec.not_before = now + day;
                    spec.not_after = now + 30 * day;
                }
                let p = self.leaf(&spec);
                self.write_pair(dir, arg(1), &p.cert, &p.key);
            }
            "mismatch" => {
                let a = self.leaf(&LeafSpec::server(&["localhost"]));
                let b = self.leaf(&LeafSpec::server(&["localhost"]));
                self.write_pair(dir, arg(1), &a.cert, &b.key);
            }
            "chain-reversed" => {
                let p = self.leaf(&LeafSpec::server(&["localhost"]));
                let chain = format!("{}{}", self.site.ca.pem.cert, p.cert);
                self.write_pair(dir, arg(1), chain, &p.key);
            }
            "chain-foreign" => {
                let p = self.leaf(&LeafSpec::server(&["localhost"]));
                let other = Ca::new("some other CA").expect("CA");
                let chain = format!("{}{}", p.cert, other.pem.cert);
                self.write_pair(dir, arg(1), chain, &p.key);
            }
            "ca-as-leaf" => {
                let rogue = Ca::new("localhost").expect("CA");
                self.keys.push(rogue.pem.key.clone());
                self.write_pair(dir, arg(1), &rogue.pem.cert, &rogue.pem.key);
            }
            "swapped" => {
                let p = self.leaf(&LeafSpec::server(&["localhost"]));
                self.write_pair(dir, arg(1), &p.key, &p.cert);
            }
            "key-is-cert" => {
                let p = self.leaf(&LeafSpec::server(&["localhost"]));
                self.write_pair(dir, arg(1), &p.cert, &p.cert);
            }
            "der-cert" => {
                let p = self.leaf(&LeafSpec::server(&["localhost"]));
                self.write_pair(dir, arg(1), &p.der, &p.key);
            }
            "der-key" => {
                let p = self.leaf(&LeafSpec::server(&["localhost"]));
                let der = PrivateKeyDer::from_pem_slice(p.key.as_bytes()).expect("key");
                self.write_pair(dir, arg(1), &p.cert, der.secret_der());
            }
            "truncated-cert" | "truncated-key" => {
                let p = self.leaf(&LeafSpec::server(&["localhost"]));
                let cut = |s: &str| {
                    let lines: Vec<&str> = s.lines().collect();
                    lines[..lines.len() / 2].join("\n") + "\n"
                };
                if op[0] == "truncated-cert" {
                    self.write_pair(dir, arg(1), cut(&p.cert), &p.key);
                } else {
                    self.write_pair(dir, arg(1), &p.cert, cut(&p.key));
                }
            }
            "damaged-base64" => {
                let p = self.leaf(&LeafSpec::server(&["localhost"]));
                let mut lines: Vec<String> = p.cert.lines().map(str::to_string).collect();
                lines[2].replace_range(10..14, "@#$%");
                self.write_pair(dir, arg(1), lines.join("\n") + "\n", &p.key);
            }
            "public-key" => {
                let key = rcgen::KeyPair::generate().expect("key");
                self.keys.push(key.serialize_pem());
                let p = self
                    .site
                    .ca
                    .leaf_with_key(&LeafSpec::server(&["localhost"]), &key)
                    .expect("leaf");
                self.write_pair(dir, arg(1), &p.cert, key.public_key_pem());
            }
            "rsa1024" => {
                let key = at(1).with_extension("key");
                let cert = at(1).with_extension("pem");
                self.openssl(&[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:1024",
                    "-nodes",
                    "-days",
                    "30",
                    "-subj",
                    "/CN=localhost",
                    "-keyout",
                    key.to_str().expect("utf8"),
                    "-out",
                    cert.to_str().expect("utf8"),
                ]);
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
                self.keys
                    .push(std::fs::read_to_string(&key).expect("read rsa key"));
            }
            "encrypted-key" | "legacy-encrypted-key" => {
                let p = self.leaf(&LeafSpec::server(&["localhost"]));
                self.write_pair(dir, arg(1), &p.cert, &p.key);
                let key = at(1).with_extension("key");
                let plain = dir.join("plain.key.tmp");
                std::fs::rename(&key, &plain).expect("rename");
                let (i, o) = (plain.to_str().expect("utf8"), key.to_str().expect("utf8"));
                if op[0] == "encrypted-key" {
                    self.openssl(&[
                        "pkcs8",
                        "-topk8",
                        "-v2",
                        "aes-256-cbc",
                        "-passout",
                        "pass:stayup",
                        "-in",
                        i,
                        "-out",
                        o,
                    ]);
                } else {
                    self.openssl(&[
                        "ec",
                        "-aes256",
                        "-passout",
                        "pass:stayup",
                        "-in",
                        i,
                        "-out",
                        o,
                    ]);
                }
                std::fs::remove_file(&plain).expect("rm");
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
            }
            "big-pem" => {
                let p = self.leaf(&LeafSpec::server(&["localhost"]));
                let size: usize = arg(2).parse().expect("size");
                let mut big = String::with_capacity(size + p.cert.len());
                while big.len() < size {
                    big.push_str(&p.cert);
                }
                self.write_pair(dir, arg(1), big, &p.key);
            }
            "empty" => std::fs::write(at(1), b"").expect("write"),
            "remove" => std::fs::remove_file(at(1)).expect("remove"),
            "copy" => {
                std::fs::copy(at(1), at(2)).expect("copy");
            }
            "chmod" => {
                let mode = u32::from_str_radix(arg(2), 8).expect("octal mode");
                std::fs::set_permissions(at(1), std::fs::Permissions::from_mode(mode))
                    .expect("chmod");
            }
            "dir" => std::fs::create_dir(at(1)).expect("mkdir"),
            "fifo" => mkfifo(&at(1)),
            "loop" => {
                let other = at(1).with_extension("loop");
                std::os::unix::fs::symlink(&other, at(1)).expect("symlink");
                std::os::unix::fs::symlink(at(1), &other).expect("symlink");
            }
            "dangling" => std::os::unix::fs::symlink(dir.join("nowhere"), at(1)).expect("symlink"),
            other => panic!("unknown recipe operation {other:?}"),
        }
    }

    fn render(&mut self, case: &Case, rel: &str, template: &str) -> String {
        let mut out = template
            .replace("{dir}", rel)
            .replace("{bind}", &self.bind.to_string())
            .replace("{backend}", &self.backend.to_string())
            .replace("{port2}", &free_port().to_string());
        if out.contains("{occupied}") {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("occupy");
            out = out.replace("{occupied}", &l.local_addr().expect("addr").to_string());
            self.occupied.push(l);
        }
        assert!(!out.contains("{port"), "{}: unknown placeholder", case.name);
        out
    }

    /// Builds the case's files and puts its top-level file (or whatever
    /// stands in for it) at the configuration path.
    fn build(&mut self, case: &Case) {
        let rel = format!("cases/{}", case.name);
        let dir = self.site.path(&rel);
        std::fs::create_dir_all(&dir).expect("mkdir case");
        let good = self.leaf(&LeafSpec::server(&["localhost"]));
        self.write_pair(&dir, "good", &good.cert, &good.key);

        // Generated files first; a static file of the case then wins over
        // a generated one of the same name.
        for op in &case.recipe {
            if !op[0].starts_with("config-")
                && !["big-config", "deep-config"].contains(&op[0].as_str())
            {
                self.apply(&dir, op);
            }
        }
        for e in std::fs::read_dir(&case.dir).expect("case dir") {
            let p = e.expect("entry").path();
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            if !["expect", "recipe", "stayup.yaml"].contains(&name.as_str()) {
                std::fs::copy(&p, dir.join(&name)).expect("copy case file");
            }
        }

        let baseline = simple_config(self.bind, self.backend, "base");
        let mut yaml: Option<Vec<u8>> =
            std::fs::read(case.dir.join("stayup.yaml"))
                .ok()
                .map(|b| match String::from_utf8(b) {
                    Ok(t) => self.render(case, &rel, &t).into_bytes(),
                    // Non-UTF-8 cases carry placeholders in ASCII; substitute bytewise.
                    Err(e) => replace_bytes(
                        e.as_bytes(),
                        &[
                            ("{dir}", rel.as_str()),
                            ("{bind}", &self.bind.to_string()),
                            ("{backend}", &self.backend.to_string()),
                        ],
                    ),
                });
        clear_config(&self.site.config);
        let config = self.site.config.clone();
        for op in &case.recipe {
            match op[0].as_str() {
                "big-config" => {
                    let size: usize = op[1].parse().expect("size");
                    let mut y = baseline.clone().into_bytes();
                    let pad = b"# padding padding padding padding padding padding padding\n";
                    while y.len() < size {
                        y.extend_from_slice(pad);
                    }
                    yaml = Some(y);
                }
                "deep-config" => {
                    let depth: usize = op[1].parse().expect("depth");
                    yaml = Some(
                        format!("listeners: {}{}\n", "[".repeat(depth), "]".repeat(depth))
                            .into_bytes(),
                    );
                }
                _ => {}
            }
        }
        if let Some(y) = yaml {
            let tmp = self.site.path(".stayup.yaml.tmp");
            std::fs::write(&tmp, y).expect("write tmp config");
            std::fs::rename(&tmp, &config).expect("rename config");
        }
        for op in &case.recipe {
            match op[0].as_str() {
                "config-dir" => std::fs::create_dir(&config).expect("mkdir"),
                "config-fifo" => mkfifo(&config),
                "config-loop" => {
                    let other = self.site.path("stayup.yaml.loop");
                    let _ = std::fs::remove_file(&other);
                    std::os::unix::fs::symlink(&other, &config).expect("symlink");
                    std::os::unix::fs::symlink(&config, &other).expect("symlink");
                }
                "config-dangling" => {
                    std::os::unix::fs::symlink(self.site.path("nowhere.yaml"), &config)
                        .expect("symlink")
                }
                "config-chmod" => {
                    let mode = u32::from_str_radix(&op[1], 8).expect("octal");
                    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode))
                        .expect("chmod");
                }
                _ => {}
            }
        }
    }
}

fn replace_bytes(input: &[u8], pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = input.to_vec();
    for (from, to) in pairs {
        let (from, to) = (from.as_bytes(), to.as_bytes());
        let mut next = Vec::with_capacity(out.len());
        let mut i = 0;
        while i < out.len() {
            if out[i..].starts_with(from) {
                next.extend_from_slice(to);
                i += from.len();
            } else {
                next.push(out[i]);
                i += 1;
            }
        }
        out = next;
    }
    out
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo")
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

/// Removes whatever stands at the configuration path (file, symlink,
/// FIFO or folder) so the next case can put its own thing there.
fn clear_config(config: &Path) {
    if let Ok(meta) = std::fs::symlink_metadata(config) {
        if meta.is_dir() {
            std::fs::remove_dir_all(config).expect("rm config dir");
        } else {
            std::fs::remove_file(config).expect("rm config");
        }
    }
}

/// The strings that would betray a private key: every line of its PEM
/// body, and its DER bytes in hex, in 24-byte windows.
fn key_fingerprints(pem: &str) -> Vec<String> {
    let mut out: Vec<String> = pem
        .lines()
        .map(str::trim)
        .filter(|l| l.len() >= 40 && !l.starts_with("-----") && !l.contains(':'))
        .map(str::to_string)
        .collect();
    if let Ok(der) = PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
        for chunk in der.secret_der().chunks(24).filter(|c| c.len() == 24) {
            out.push(hex::encode(chunk));
            out.push(hex::encode_upper(chunk));
        }
    }
    out
}

async fn wait_resources_settle(pid: i32, fd_base: usize, rss_base: u64) -> (usize, u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (fds, rss) = (fd_count(pid), rss_kib(pid));
        if fds <= fd_base + FD_MARGIN && rss <= rss_base + RSS_MARGIN_KIB {
            return (fds, rss);
        }
        assert!(
            Instant::now() < deadline,
            "resources did not return to baseline: fds {fd_base} -> {fds} (margin {FD_MARGIN}), \
             RSS {rss_base} KiB -> {rss} KiB (margin {RSS_MARGIN_KIB} KiB)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_rejected_while_connections_stream() {
    let cases = load_corpus();
    assert!(cases.len() >= 60, "only {} corpus cases", cases.len());

    let site = Site::new();
    let backend = EchoBackend::start().await;
    let base = site.cert("base", &["localhost"]);
    let bind: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let baseline = simple_config(bind, backend.addr, "base");
    site.publish(&baseline);
    let (cmd, denies_reads) = run_command_unprivileged(&site.config);
    let mut d = Daemon::spawn_command(cmd);
    d.wait_for("stayup ready").await;
    let pid = d.pid();

    let mut streamers = Vec::new();
    for _ in 0..STREAMS {
        let s = connected(bind, "localhost", site.client()).await;
        streamers.push(Streamer::start(s));
    }
    for s in &streamers {
        s.advance(8 * 1024).await;
    }
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        base.fingerprint()
    );
    let fd_base = fd_count(pid);
    let rss_base = rss_kib(pid);

    let mut b = Builder {
        site: &site,
        bind,
        backend: backend.addr,
        keys: vec![base.key.clone()],
        occupied: Vec::new(),
    };
    let mut skipped = Vec::new();
    let started = Instant::now();
    for case in &cases {
        let needs_denial = case
            .recipe
            .iter()
            .any(|op| op[0].ends_with("chmod") && op.last().map(String::as_str) == Some("0"));
        if needs_denial && !denies_reads {
            skipped.push(case.name.clone());
            continue;
        }
        b.build(case);
        let line = d.reload().await;
        b.occupied.clear();
        let file = if case.file == "@config" {
            site.config.display().to_string()
        } else if case.file.starts_with('/') {
            case.file.clone()
        } else {
            site.path(&format!("cases/{}/{}", case.name, case.file))
                .display()
                .to_string()
        };
        assert!(
            line.contains("reload rejected") && line.contains("generation=1 "),
            "{}: not rejected with generation 1 serving: {line}",
            case.name
        );
        assert!(
            line.contains(&format!("class=\"{}\"", case.class)),
            "{}: expected class={}: {line}",
            case.name,
            case.class
        );
        assert!(
            line.contains(&file),
            "{}: message does not name {file}: {line}",
            case.name
        );
        assert!(
            line.contains(&case.message),
            "{}: message lacks {:?}: {line}",
            case.name,
            case.message
        );
        assert_eq!(
            fingerprint_at(bind, "localhost", site.client()).await,
            base.fingerprint(),
            "{}: the first generation no longer serves",
            case.name
        );
        for s in &streamers {
            s.advance(1024).await;
        }
    }
    eprintln!(
        "{} cases applied in {:.1}s; skipped (no way to deny reads to root): {skipped:?}",
        cases.len() - skipped.len(),
        started.elapsed().as_secs_f64()
    );

    // The good file again: byte-identical to generation 1, so unchanged.
    clear_config(&site.config);
    site.publish(&baseline);
    let line = d.reload().await;
    assert!(line.contains("reload unchanged"), "{line}");
    assert_eq!(
        fingerprint_at(bind, "localhost", site.client()).await,
        base.fingerprint()
    );

    let (fds, rss) = wait_resources_settle(pid, fd_base, rss_base).await;
    eprintln!("fds {fd_base} -> {fds}, RSS {rss_base} KiB -> {rss} KiB");

    for s in streamers {
        let verified = s.finish().await.expect("a streaming connection broke");
        assert!(verified > 0);
    }
    let output = d.output();
    assert!(
        !output.contains("panicked"),
        "the daemon panicked:\n{output}"
    );
    for key in &b.keys {
        for needle in key_fingerprints(key) {
            assert!(
                !output.contains(&needle),
                "key material ({needle}) appears in the daemon's output"
            );
        }
    }
    assert!(d.stop().await.success());
}
