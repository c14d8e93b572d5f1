//! Any bytes as a certificate chain and a private key (split at the first
//! NUL byte): `material::load` must return, never panic, name the file in
//! every error, and never echo key material.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;

struct Fixture {
    dir: PathBuf,
    config: stayup::config::Config,
    provider: rustls::crypto::CryptoProvider,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("stayup-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz folder");
        let yaml = "listeners:\n  - name: fuzz\n    bind: \"127.0.0.1:1\"\n    backend: \"127.0.0.1:2\"\n    tls:\n      certificates:\n        - cert: cert.pem\n          key: key.pem\n";
        let config = stayup::config::Config::parse(&dir.join("stayup.yaml"), yaml.as_bytes())
            .expect("fixture config");
        Fixture {
            dir,
            config,
            provider: rustls::crypto::aws_lc_rs::default_provider(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let (cert, key) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    std::fs::write(f.dir.join("cert.pem"), cert).expect("write cert");
    stayup::pki::write_private(&f.dir.join("key.pem"), key).expect("write key");
    if let Err(e) = stayup::material::load(&f.config, &f.provider, SystemTime::now()) {
        let msg = e.to_string();
        assert!(msg.contains(&*f.dir.to_string_lossy()), "{msg}");
        // No line of the key's body may appear in a message (unless the
        // same text is also in the certificate input, which a message may
        // legitimately quote, e.g. a subject name).
        let cert_text = String::from_utf8_lossy(cert);
        for line in String::from_utf8_lossy(key).lines() {
            let line = line.trim();
            let base64 = line
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
            if line.len() >= 16 && base64 && !cert_text.contains(line) {
                assert!(!msg.contains(line), "key material in: {msg}");
            }
        }
    }
});
