//! Property-based fuzzing of the two parsers that take hostile input: the
//! configuration parser and material validation. (`cargo fuzz` needs a
//! nightly toolchain and the cargo-fuzz subcommand; these run on stable,
//! in the normal test suite.)
//!
//! Each test generates inputs for a time budget, `STAYUP_FUZZ_SECS`
//! seconds (default 60), and asserts that nothing panics and that every
//! refusal names its file and class without quoting key material. A
//! failure is shrunk to a minimal input by proptest; set
//! `PROPTEST_RNG_SEED` to replay a run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::Value;
use stayup::config::Config;
use stayup::pki::{Ca, LeafSpec};

fn budget() -> Duration {
    let secs = std::env::var("STAYUP_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// Runs `test` on values of `strategy` until the time budget is spent.
fn run_for<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let deadline = Instant::now() + budget();
    let cases = std::sync::atomic::AtomicU64::new(0);
    let counted = |v: S::Value| {
        cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        test(v)
    };
    while Instant::now() < deadline {
        // A runner stops after `cases` successes, so each batch gets a
        // fresh one (with a fresh random seed).
        let mut runner = TestRunner::new(RunnerConfig {
            cases: 64,
            failure_persistence: None,
            ..RunnerConfig::default()
        });
        if let Err(e) = runner.run(&strategy, counted) {
            panic!("{name}: {e}");
        }
    }
    let cases = cases.into_inner();
    assert!(cases > 0, "{name}: no case ran");
    eprintln!("{name}: {cases} cases in {:?}", budget());
}

const CONFIG_PATH: &str = "/etc/stayup/stayup.yaml";

fn check_config(bytes: &[u8]) -> Result<(), TestCaseError> {
    match Config::parse(Path::new(CONFIG_PATH), bytes) {
        Ok(c) => {
            prop_assert!(!c.listeners.is_empty());
            for f in c.referenced_files() {
                prop_assert!(f.is_absolute(), "{} is not absolute", f.display());
            }
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(
                msg.starts_with(CONFIG_PATH),
                "does not name the file: {msg}"
            );
            prop_assert!(e.class().starts_with("config-"), "{}", e.class());
        }
    }
    Ok(())
}

const VALID: &str = r#"listeners:
  - name: web
    bind: "127.0.0.1:8443"
    backend: "127.0.0.1:8080"
    max_connections: 100
    tls:
      certificates:
        - cert: certs/web.pem
          key: certs/web.key
          names: [localhost, "*.example.com"]
      client_ca: ca.pem
      handshake_timeout: 10s
control:
  socket: stayup.sock
admin:
  listen: "127.0.0.1:9900"
reload:
  watch: true
  debounce: 200ms
drain:
  timeout: 0s
limits:
  max_connections: 1000
  idle_timeout: 5m
tcp_keepalive:
  idle: 2m
  interval: 30s
  probes: 4
"#;

/// One edit of a byte string: position and length are taken modulo the
/// input's length when applied.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Flip(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    let yamlish = proptest::string::string_regex("[-:\\[\\]{}&*!|>'\"#%@`,? \n\ta-z0-9.]{0,12}")
        .expect("regex")
        .prop_map(String::into_bytes);
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(p, l)| Edit::Delete(p, l)),
        (any::<usize>(), yamlish).prop_map(|(p, s)| Edit::Insert(p, s)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..4))
            .prop_map(|(p, s)| Edit::Insert(p, s)),
        any::<usize>().prop_map(Edit::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Flip(p, b)),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len().max(1);
        match e {
            Edit::Delete(p, l) => {
                let start = p % n;
                let end = (start + l).min(bytes.len());
                if start < end {
                    bytes.drain(start..end);
                }
            }
            Edit::Insert(p, s) => {
                let at = (p % (bytes.len() + 1)).min(bytes.len());
                bytes.splice(at..at, s.iter().copied());
            }
            Edit::DuplicateLine(i) | Edit::SwapLines(i, _) => {
                let mut lines: Vec<Vec<u8>> =
                    bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
                let k = lines.len();
                match e {
                    Edit::DuplicateLine(_) => {
                        let line = lines[i % k].clone();
                        lines.insert(i % k, line);
                    }
                    Edit::SwapLines(_, j) => lines.swap(i % k, j % k),
                    _ => {}
                }
                bytes = lines.join(&b'\n');
            }
            Edit::Flip(p, b) => {
                if !bytes.is_empty() {
                    let i = p % bytes.len();
                    bytes[i] ^= b | 1;
                }
            }
        }
    }
    bytes
}

const KEYS: &[&str] = &[
    "listeners",
    "name",
    "bind",
    "backend",
    "tls",
    "certificates",
    "cert",
    "key",
    "names",
    "client_ca",
    "handshake_timeout",
    "max_connections",
    "control",
    "socket",
    "admin",
    "listen",
    "allow_remote",
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
    "idle_timeout",
    "backend_connect_timeout",
    "allow_insecure_key_permissions",
    "tcp_keepalive",
    "idle",
    "interval",
    "probes",
    "min_version",
    "cipher_suites",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "groups",
    "X25519MLKEM768",
    "prime256v1",
    "bogus",
];

const SCALARS: &[&str] = &[
    "127.0.0.1:8443",
    "[::1]:443",
    "127.0.0.1:0",
    "0.0.0.0:9900",
    "db.internal:5432",
    "host:99999",
    "localhost",
    "10s",
    "200ms",
    "0",
    "5m",
    "1h",
    "-1s",
    "18446744073709551615h",
    "",
    " ",
    "certs/web.pem",
    "/dev/null",
    "debug",
    "json",
    "web",
    "*.example.com",
];

/// JSON is YAML: trees built from the configuration's own keys and
/// plausible values reach the validation layer, not just the parser.
fn yaml_tree() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        proptest::sample::select(SCALARS).prop_map(|s| Value::String(s.to_string())),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..6).prop_map(
                |kv| { Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),) }
            ),
        ]
    })
}

#[test]
fn config_parser_never_panics_and_always_names_the_file() {
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        proptest::collection::vec(edit(), 1..8)
            .prop_map(|edits| apply(VALID.as_bytes().to_vec(), &edits)),
        yaml_tree().prop_map(|v| {
            // Sometimes a whole configuration, sometimes a listener in it.
            let v = match v {
                Value::Object(_) => v,
                other => serde_json::json!({ "listeners": [other] }),
            };
            serde_json::to_vec(&v).expect("json")
        }),
    ];
    run_for("config", strategy, |bytes| check_config(&bytes));
}

/// The files material validation reads, as generated content.
#[derive(Debug, Clone)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    names: bool,
}

struct Pool {
    cert: String,
    key: String,
    ca_cert: String,
    ca_key: String,
    other_cert: String,
    der: Vec<u8>,
}

fn pool() -> Pool {
    let ca = Ca::new("fuzz CA").expect("CA");
    let leaf = ca.leaf(&LeafSpec::server(&["localhost"])).expect("leaf");
    let other = ca.leaf(&LeafSpec::server(&["other"])).expect("leaf");
    Pool {
        cert: leaf.cert,
        key: leaf.key,
        ca_cert: ca.pem.cert.clone(),
        ca_key: ca.pem.key.clone(),
        other_cert: other.cert,
        der: leaf.der,
    }
}

fn piece(pool: &Pool, i: u8) -> Vec<u8> {
    match i % 7 {
        0 => pool.cert.clone().into_bytes(),
        1 => pool.key.clone().into_bytes(),
        2 => pool.ca_cert.clone().into_bytes(),
        3 => pool.ca_key.clone().into_bytes(),
        4 => pool.other_cert.clone().into_bytes(),
        5 => pool.der.clone(),
        _ => Vec::new(),
    }
}

fn material_files(pool: &'static Pool) -> impl Strategy<Value = Files> {
    let file = |first: u8| {
        (
            prop_oneof![3 => Just(first), 1 => any::<u8>()],
            proptest::option::of(any::<u8>()),
            proptest::collection::vec(edit(), 0..4),
        )
            .prop_map(move |(a, b, edits)| {
                let mut bytes = piece(pool, a);
                if let Some(b) = b {
                    bytes.extend(piece(pool, b));
                }
                apply(bytes, &edits)
            })
    };
    (
        file(0),
        file(1),
        proptest::option::of(file(2)),
        any::<bool>(),
    )
        .prop_map(|(cert, key, client_ca, names)| Files {
            cert,
            key,
            client_ca,
            names,
        })
}

fn key_lines(pool: &Pool) -> Vec<String> {
    [&pool.key, &pool.ca_key]
        .iter()
        .flat_map(|k| k.lines())
        .filter(|l| l.len() >= 40 && !l.starts_with("-----"))
        .map(str::to_string)
        .collect()
}

#[test]
fn material_validation_never_panics_and_names_the_file() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let pool: &'static Pool = Box::leak(Box::new(pool()));
    let secrets = key_lines(pool);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |n: &str| -> PathBuf { dir.path().join(n) };
    let config_path = path("stayup.yaml");
    run_for("material", material_files(pool), |f| {
        std::fs::write(path("cert.pem"), &f.cert).expect("write");
        let _ = std::fs::remove_file(path("key.pem"));
        stayup::pki::write_private(&path("key.pem"), &f.key).expect("write");
        let mut yaml = String::from(
            "listeners:\n  - name: web\n    bind: \"127.0.0.1:8443\"\n    backend: \"127.0.0.1:8080\"\n    tls:\n      certificates:\n        - cert: cert.pem\n          key: key.pem\n",
        );
        if f.names {
            yaml.push_str("          names: [localhost]\n");
        }
        if let Some(ca) = &f.client_ca {
            std::fs::write(path("ca.pem"), ca).expect("write");
            yaml.push_str("      client_ca: ca.pem\n");
        }
        let config = Config::parse(&config_path, yaml.as_bytes()).expect("config");
        match stayup::material::load(&config, &provider, SystemTime::now()) {
            Ok(m) => prop_assert_eq!(m.listeners.len(), 1),
            Err(e) => {
                let msg = e.to_string();
                let named = ["cert.pem", "key.pem", "ca.pem"]
                    .iter()
                    .any(|n| e.file() == path(n) && msg.contains(&path(n).display().to_string()));
                prop_assert!(named, "does not name its file: {}", msg);
                prop_assert!(!e.class().is_empty());
                for s in &secrets {
                    prop_assert!(!msg.contains(s.as_str()), "key material in: {}", msg);
                }
            }
        }
        Ok(())
    });
}
