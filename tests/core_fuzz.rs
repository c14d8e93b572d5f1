//! Random bytes as the configuration file and as PEM files never panic:
//! thousands of deterministic cases through `Config::parse` and
//! `material::load` in process, and a few through the real binary
//! (`stayup check`, and SIGHUP to a running daemon).

mod common;
use common::*;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::SystemTime;

use stayup::config::Config;
use stayup::pki::Pem;

/// SplitMix64: small, fast, and the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// A few random edits: flip, delete, insert, duplicate, truncate.
    fn mutate(&mut self, input: &[u8], tokens: &[&str]) -> Vec<u8> {
        let mut v = input.to_vec();
        for _ in 0..1 + self.below(6) {
            let at = self.below(v.len() + 1);
            match self.below(6) {
                0 if at < v.len() => v[at] ^= 1 << self.below(8),
                1 if at < v.len() => {
                    let end = (at + 1 + self.below(16)).min(v.len());
                    v.drain(at..end);
                }
                2 => {
                    let t = self.pick(tokens).as_bytes().to_vec();
                    v.splice(at..at, t);
                }
                3 if at < v.len() => {
                    let end = (at + 1 + self.below(64)).min(v.len());
                    let copy = v[at..end].to_vec();
                    let to = self.below(v.len() + 1);
                    v.splice(to..to, copy);
                }
                4 => v.truncate(at),
                _ => {
                    let b = self.next() as u8;
                    v.insert(at.min(v.len()), b);
                }
            }
        }
        v
    }
}

const YAML_TOKENS: &[&str] = &[
    "\n",
    " ",
    "  ",
    "    ",
    "\t",
    ":",
    ": ",
    "- ",
    "-",
    "#",
    "\"",
    "'",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&a ",
    "*a",
    "!!str ",
    "!!binary ",
    "!tag ",
    "? ",
    "|",
    ">",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "<<: *a",
    "~",
    "null",
    "true",
    "0",
    "-1",
    "99999999999999999999",
    "1e400",
    "0x10",
    "200ms",
    "30s",
    "5m",
    "2h",
    "18446744073709551615ms",
    "listeners",
    "name",
    "bind",
    "backend",
    "backend_proxy_protocol",
    "v1",
    "v2",
    "tls",
    "certificates",
    "cert",
    "key",
    "client_ca",
    "alpn",
    "h2",
    "min_version",
    "cipher_suites",
    "TLS_AES_256_GCM_SHA384",
    "groups",
    "P-256",
    "MLKEM768",
    "1.3",
    "tcp_keepalive",
    "idle",
    "interval",
    "probes",
    "names",
    "control",
    "socket",
    "admin",
    "listen",
    "reload",
    "watch",
    "debounce",
    "poll",
    "drain",
    "timeout",
    "shutdown",
    "log",
    "level",
    "format",
    "limits",
    "max_connections",
    "idle_timeout",
    "127.0.0.1:8443",
    "[::1]:443",
    "host:0",
    "\u{feff}",
    "\u{0}",
    "é",
    "\r\n",
];

const PEM_TOKENS: &[&str] = &[
    "-----BEGIN CERTIFICATE-----\n",
    "-----END CERTIFICATE-----\n",
    "-----BEGIN PRIVATE KEY-----\n",
    "-----END PRIVATE KEY-----\n",
    "-----BEGIN EC PRIVATE KEY-----\n",
    "-----END EC PRIVATE KEY-----\n",
    "-----BEGIN RSA PRIVATE KEY-----\n",
    "-----BEGIN ENCRYPTED PRIVATE KEY-----\n",
    "-----BEGIN ",
    "-----END ",
    "-----",
    "Proc-Type: 4,ENCRYPTED\n",
    "=",
    "==\n",
    "\n",
    "\r\n",
    "MIIB",
    "AAAA",
    "////",
    "\u{0}",
];

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).expect("ascii"));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// The DER inside the first PEM block of `text`.
fn der_of(text: &str) -> Vec<u8> {
    use rustls::pki_types::pem::{PemObject, SectionKind};
    let (_, der) = <(SectionKind, Vec<u8>)>::from_pem_slice(text.as_bytes()).expect("pem");
    der
}

/// Runs `f`, turning a panic into a test failure that says which case it was.
fn no_panic<T>(what: &str, case: usize, input: &[u8], f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            let shown: String = input.iter().take(512).map(|b| format!("{b:02x}")).collect();
            panic!(
                "{what}: case {case} panicked; input ({} bytes) starts {shown}",
                input.len()
            );
        }
    }
}

fn valid_config(site: &Site) -> String {
    let yaml = simple_config(free_addr(), free_addr(), "good").replacen(
        "      certificates:\n",
        "      client_ca: ca/clients.pem\n      certificates:\n",
        1,
    );
    site.write("ca/clients.pem", &site.ca.pem.cert);
    format!(
        "{yaml}drain:\n  timeout: 30s\nshutdown:\n  timeout: 1s\nlog:\n  level: info\nlimits:\n  max_connections: 10\ncontrol:\n  socket: s.sock\n"
    )
}

#[test]
fn random_configuration_bytes_never_panic() {
    let site = Site::new();
    site.cert("good", &["localhost"]);
    let valid = valid_config(&site);
    let path = site.config.clone();
    assert!(Config::parse(&path, valid.as_bytes()).is_ok(), "{valid}");
    let mut rng = Rng(0x5eed_c0f1);
    let mut parsed = 0;
    let mut classes = std::collections::BTreeMap::new();
    for case in 0..10_000 {
        let input = match case % 4 {
            0 => rng.bytes(512),
            1 => {
                let mut s = String::new();
                for _ in 0..rng.below(80) {
                    s.push_str(rng.pick(YAML_TOKENS));
                }
                s.into_bytes()
            }
            2 => rng.mutate(valid.as_bytes(), YAML_TOKENS),
            // Well-formed YAML with odd values: exercises validation.
            _ => {
                let mut lines: Vec<String> = valid.lines().map(str::to_string).collect();
                for _ in 0..1 + rng.below(3) {
                    let i = rng.below(lines.len());
                    if let Some((k, _)) = lines[i].clone().split_once(": ") {
                        let mut v = String::new();
                        for _ in 0..1 + rng.below(3) {
                            v.push_str(rng.pick(YAML_TOKENS).trim_end_matches('\n'));
                        }
                        lines[i] = format!("{k}: {v:?}");
                    }
                }
                lines.join("\n").into_bytes()
            }
        };
        let r = no_panic("Config::parse", case, &input, || {
            Config::parse(&path, &input)
        });
        match r {
            Ok(_) => parsed += 1,
            Err(e) => {
                *classes.entry(e.class()).or_insert(0) += 1;
                let msg = e.to_string();
                assert!(
                    msg.starts_with(path.to_str().unwrap()),
                    "case {case}: the error does not name the file: {msg}"
                );
            }
        }
    }
    println!("parsed {parsed}, refused {classes:?}");
    // Some mutations keep the file valid; most do not.
    assert!(parsed > 0 && parsed < 5000, "{parsed} parsed");
}

#[test]
fn deeply_nested_and_aliased_yaml_is_refused_not_fatal() {
    let path = Path::new("/etc/stayup/stayup.yaml");
    let deep = format!("listeners: {}{}", "[".repeat(10_000), "]".repeat(10_000));
    let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        laughs.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
            p = i - 1
        ));
    }
    laughs.push_str("listeners: *a11\n");
    for input in [deep, laughs, "\u{0}".repeat(100), "- ".repeat(50_000)] {
        let r = no_panic("Config::parse", 0, input.as_bytes(), || {
            Config::parse(path, input.as_bytes())
        });
        assert!(r.is_err());
    }
}

/// The files `material::load` reads, in the order a case may replace them.
const FILES: [&str; 3] = ["certs/good.pem", "certs/good.key", "ca/clients.pem"];

fn random_pem(rng: &mut Rng, originals: &[String; 3], ders: &[Vec<u8>; 3]) -> Vec<u8> {
    let i = rng.below(3);
    match rng.below(5) {
        0 => rng.bytes(2048),
        1 => rng.mutate(originals[i].as_bytes(), PEM_TOKENS),
        // Damage inside a well-formed PEM block: the parsers see bad DER.
        2 | 3 => {
            let label = [
                "CERTIFICATE",
                "PRIVATE KEY",
                "EC PRIVATE KEY",
                "RSA PRIVATE KEY",
            ];
            let mut der = ders[i].clone();
            for _ in 0..1 + rng.below(4) {
                if der.is_empty() {
                    break;
                }
                let at = rng.below(der.len());
                match rng.below(3) {
                    0 => der[at] ^= 1 << rng.below(8),
                    1 => der.truncate(at),
                    _ => der[at] = rng.next() as u8,
                }
            }
            pem(rng.pick(&label[..]), &der).into_bytes()
        }
        _ => {
            let mut s = String::new();
            for _ in 0..rng.below(40) {
                s.push_str(rng.pick(PEM_TOKENS));
            }
            s.into_bytes()
        }
    }
}

#[test]
fn random_pem_bytes_never_panic() {
    let site = Site::new();
    let good: Pem = site.cert("good", &["localhost"]);
    let yaml = valid_config(&site);
    site.publish(&yaml);
    let config = Config::parse(&site.config, yaml.as_bytes()).expect("valid");
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let now = SystemTime::now();
    assert!(stayup::material::load(&config, &provider, now).is_ok());

    let originals = [
        good.cert.clone(),
        good.key.clone(),
        site.ca.pem.cert.clone(),
    ];
    let ders = [
        der_of(&good.cert),
        der_of(&good.key),
        der_of(&site.ca.pem.cert),
    ];
    let mut rng = Rng(0x9e3_5eed);
    let mut loaded = 0;
    let mut classes = std::collections::BTreeMap::new();
    for case in 0..2500 {
        // Replace one or two of the files; restore the others.
        let mut inputs = originals.clone().map(String::into_bytes);
        for _ in 0..1 + rng.below(2) {
            let slot = rng.below(3);
            inputs[slot] = random_pem(&mut rng, &originals, &ders);
        }
        for (rel, bytes) in FILES.iter().zip(&inputs) {
            stayup::pki::write_private(&site.path(rel), bytes).expect("write");
        }
        let all = inputs.concat();
        let r = no_panic("material::load", case, &all, || {
            stayup::material::load(&config, &provider, now)
        });
        match r {
            Ok(_) => loaded += 1,
            Err(e) => {
                *classes.entry(e.class()).or_insert(0) += 1;
                let msg = e.to_string();
                assert!(
                    FILES
                        .iter()
                        .any(|f| msg.contains(site.path(f).to_str().unwrap())),
                    "case {case}: the error names none of the files: {msg}"
                );
                assert!(!msg.contains("PRIVATE KEY-----"), "case {case}: {msg}");
            }
        }
    }
    println!("loaded {loaded}, refused {classes:?}");
    assert!(loaded < 2500, "every case loaded");
}

#[test]
fn check_on_random_files_exits_one_without_panicking() {
    let site = Site::new();
    site.cert("good", &["localhost"]);
    let yaml = valid_config(&site);
    let mut rng = Rng(0xc4ec_c0de);
    for case in 0..4 {
        let bytes = if case % 2 == 0 {
            rng.bytes(4096)
        } else {
            rng.mutate(yaml.as_bytes(), YAML_TOKENS)
        };
        std::fs::write(&site.config, &bytes).expect("write");
        let (code, out, err) = check(&site.config);
        assert!(!err.contains("panicked"), "case {case}: {err}");
        if code == 0 {
            continue; // a mutation that kept the file valid
        }
        assert_eq!(code, 1, "case {case}: {out}\n{err}");
        assert!(out.contains("invalid"), "{out}");
    }
    site.publish(&yaml);
    let good = site
        .ca
        .leaf(&stayup::pki::LeafSpec::server(&["localhost"]))
        .expect("leaf");
    let originals = [
        good.cert.clone(),
        good.key.clone(),
        site.ca.pem.cert.clone(),
    ];
    for case in 0..6 {
        let slot = case % 3;
        for (i, rel) in FILES.iter().enumerate() {
            let bytes = if i == slot {
                // Random bytes ending in an unfinished PEM block: never valid.
                let mut b = rng.bytes(2048);
                b.extend_from_slice(b"\n-----BEGIN CERTIFICATE-----\n");
                b
            } else {
                originals[i].clone().into_bytes()
            };
            stayup::pki::write_private(&site.path(rel), &bytes).expect("write");
        }
        let (code, out, err) = check(&site.config);
        assert!(!err.contains("panicked"), "case {case}: {err}");
        assert_eq!(code, 1, "case {case}: {out}\n{err}");
        assert!(
            err.contains(site.path(FILES[slot]).to_str().unwrap()),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_random_configuration_keeps_serving() {
    let site = Site::new();
    let backend = EchoBackend::start().await;
    let good = site.cert("good", &["localhost"]);
    let bind = free_addr();
    let yaml = simple_config(bind, backend.addr, "good");
    site.publish(&yaml);
    let mut d = Daemon::start(&site.config).await;
    let streamer = streamer_at(bind, "localhost", site.client()).await;
    let mut rng = Rng(0x51_6b_0b);
    for case in 0..4 {
        let bytes = match case {
            0 => rng.bytes(4096),
            1 => vec![0xff; 300],
            _ => {
                let mut s = String::from("listeners:\n  - ");
                for _ in 0..rng.below(60) {
                    s.push_str(rng.pick(YAML_TOKENS));
                }
                s.into_bytes()
            }
        };
        let tmp = site.path(".random.tmp");
        std::fs::write(&tmp, &bytes).expect("write");
        std::fs::rename(&tmp, &site.config).expect("rename");
        let line = d.reload().await;
        assert!(line.contains("reload rejected"), "case {case}: {line}");
        assert!(line.contains("class="), "{line}");
        assert_eq!(
            fingerprint_at(bind, "localhost", site.client()).await,
            good.fingerprint()
        );
        streamer.advance(8 * 1024).await;
    }
    // Random bytes as the certificate and key of a new configuration.
    for case in 0..3 {
        let name = format!("random{case}");
        site.write(&format!("certs/{name}.pem"), rng.bytes(3000));
        stayup::pki::write_private(&site.path(&format!("certs/{name}.key")), &rng.bytes(3000))
            .expect("write key");
        site.publish(&simple_config(bind, backend.addr, &name));
        let line = d.reload().await;
        assert!(line.contains("reload rejected"), "case {case}: {line}");
        assert!(line.contains(&name), "{line}");
        assert_eq!(
            fingerprint_at(bind, "localhost", site.client()).await,
            good.fingerprint()
        );
        streamer.advance(8 * 1024).await;
    }
    assert!(!d.output().contains("panicked"), "{}", d.output());
    streamer.finish().await.expect("stream intact");
    assert!(d.stop().await.success());
}
