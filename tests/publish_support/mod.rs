//! What the `publish_*` tests share: running `stayup` with an
//! environment, snapshots of a folder to prove nothing changed, and the
//! configuration text publish is expected to produce.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `stayup <args>` with extra environment variables; returns
/// (exit code, stdout, stderr).
pub fn stayup_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stayup"));
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run stayup");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `stayup publish --config C --listener L --cert X --key Y [extra]`.
pub fn publish(
    config: &Path,
    listener: &str,
    cert: &Path,
    key: &Path,
    extra: &[&str],
) -> (i32, String, String) {
    let mut args = vec![
        "publish",
        "--config",
        config.to_str().expect("utf8 path"),
        "--listener",
        listener,
        "--cert",
        cert.to_str().expect("utf8 path"),
        "--key",
        key.to_str().expect("utf8 path"),
    ];
    args.extend_from_slice(extra);
    stayup_env(&args, &[])
}

/// Every file and symlink under `dir` with its bytes (or link target) and
/// mode; sockets are left out (a running daemon's control socket).
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).expect("metadata");
            let mode = meta.permissions().mode();
            let ft = meta.file_type();
            if ft.is_dir() {
                out.insert(p.clone(), (Vec::new(), mode));
                todo.push(p);
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&p).expect("readlink");
                out.insert(p, (target.as_os_str().as_encoded_bytes().to_vec(), mode));
            } else if ft.is_file() {
                out.insert(p.clone(), (std::fs::read(&p).expect("read"), mode));
            }
        }
    }
    out
}

/// The path publish stores `bytes` under, relative to the configuration.
pub fn store_ref(bytes: &[u8], ext: &str) -> String {
    format!(
        "store/{}.{ext}",
        hex::encode(stayup::material::sha256(bytes))
    )
}

/// A configuration written the way people write them: comments, odd
/// spacing, every quoting style, a flow mapping. `cert_a`/`key_a` are the
/// first listener's first entry (as written, quotes included).
pub fn commented_config(
    bind: SocketAddr,
    backend: SocketAddr,
    cert_a: &str,
    key_a: &str,
) -> String {
    format!(
        "# stayup configuration  (hand-written; keep these comments)\n\
         \n\
         listeners:\n\
         \x20 # the public site\n\
         \x20 - name: web        # primary\n\
         \x20   bind: \"{bind}\"\n\
         \x20   backend:   '{backend}'\n\
         \x20   tls:\n\
         \x20     certificates:\n\
         \x20       - cert: {cert_a}      # rotated by certbot\n\
         \x20         key:  {key_a}\n\
         \x20         names: [localhost]\n\
         \x20       - {{ cert: \"certs/other.pem\", key: 'certs/other.key' }}   # second entry\n\
         \n\
         reload:\n\
         \x20 watch: false   # explicit reloads only\n\
         # trailing comment, no newline at the end"
    )
}

pub fn rel(site_dir: &Path, p: &Path) -> String {
    p.strip_prefix(site_dir)
        .expect("inside the site")
        .to_string_lossy()
        .into_owned()
}
