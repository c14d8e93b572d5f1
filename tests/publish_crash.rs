//! Crash safety: publish is stopped after each of its steps, by an injected
//! failure and by SIGKILL. Every time, the top-level path names either the
//! complete old file or the complete new one, every file it references is
//! complete, and a later publish finishes the job.

mod common;
#[path = "publish_support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::*;
use stayup::pki::Pem;
use support::*;

/// publish's steps, in order, and whether the new file is live after each.
const STEPS: &[(&str, bool)] = &[
    ("store", false),
    ("candidate", false),
    ("validated", false),
    ("history", false),
    ("rename", true),
    ("sync", true),
];

struct Case {
    site: Site,
    old: String,
    new: String,
    a: Pem,
    b: Pem,
}

fn case() -> Case {
    let site = Site::new();
    let a = site.cert("a", &["localhost"]);
    let b = site.cert("b", &["localhost"]);
    let bind = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let old = commented_config(
        bind,
        "127.0.0.1:9".parse().unwrap(),
        "certs/a.pem",
        "certs/a.key",
    )
    .replace(
        "        - { cert: \"certs/other.pem\", key: 'certs/other.key' }   # second entry\n",
        "",
    );
    site.publish(&old);
    let new = old
        .replace("certs/a.pem", &store_ref(b.cert.as_bytes(), "pem"))
        .replace("certs/a.key", &store_ref(b.key.as_bytes(), "key"));
    Case {
        site,
        old,
        new,
        a,
        b,
    }
}

fn args(c: &Case) -> Vec<String> {
    vec![
        "publish".into(),
        "--config".into(),
        c.site.config.to_string_lossy().into(),
        "--listener".into(),
        "web".into(),
        "--cert".into(),
        c.site.path("certs/b.pem").to_string_lossy().into(),
        "--key".into(),
        c.site.path("certs/b.key").to_string_lossy().into(),
    ]
}

/// The invariant: the top-level file is exactly the old or exactly the new
/// one (as `new_live` says), it loads, and what it references is complete.
fn assert_consistent(c: &Case, step: &str, new_live: bool) {
    let text = std::fs::read_to_string(&c.site.config).expect("config");
    let (expected, pem) = if new_live {
        (&c.new, &c.b)
    } else {
        (&c.old, &c.a)
    };
    assert_eq!(&text, expected, "after step {step}: the top-level file");
    let (code, out, err) = stayup(&["check", "--config", c.site.config.to_str().unwrap()]);
    assert_eq!(code, 0, "after step {step}: {out}{err}");
    assert!(out.contains(&pem.fingerprint()), "after step {step}: {out}");
    if new_live {
        let cert =
            std::fs::read(c.site.path(&store_ref(c.b.cert.as_bytes(), "pem"))).expect("cert");
        let key = std::fs::read(c.site.path(&store_ref(c.b.key.as_bytes(), "key"))).expect("key");
        assert_eq!(cert, c.b.cert.as_bytes(), "after step {step}");
        assert_eq!(key, c.b.key.as_bytes(), "after step {step}");
    }
    // Every store file that exists is complete: its name is its hash.
    if let Ok(rd) = std::fs::read_dir(c.site.path("store")) {
        for e in rd {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let bytes = std::fs::read(e.path()).expect("store file");
            assert_eq!(
                &name[..64],
                hex::encode(stayup::material::sha256(&bytes)),
                "after step {step}: {name} is partial"
            );
        }
    }
}

/// A later publish completes the rotation, and gc clears any leftovers.
fn assert_recovers(c: &Case, step: &str) {
    let args = args(c);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = stayup(&args);
    assert_eq!(code, 0, "publish after step {step}: {out}{err}");
    assert_consistent(c, step, true);
    let (code, out, err) = stayup(&[
        "gc",
        "--config",
        c.site.config.to_str().unwrap(),
        "--keep",
        "10",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let leftovers: Vec<String> = std::fs::read_dir(c.site.dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "after step {step}: {leftovers:?}");
    let (code, out, _) = stayup(&["history", "--config", c.site.config.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.lines().any(|l| l.starts_with("* ")),
        "after step {step}: {out}"
    );
}

/// Runs publish with `args` until it announces that it paused after
/// `step`, then kills it with SIGKILL.
fn pause_then_kill(args: &[String], step: &str) {
    let mut child = Command::new(stayup_bin())
        .args(args)
        .env("STAYUP_PUBLISH_PAUSE_AFTER", step)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn publish");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let needle = format!("paused after step {step}");
    loop {
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("step {step}: publish never paused ({e})"));
        if line.contains(&needle) {
            break;
        }
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "step {step}: {status}");
}

#[test]
fn an_injected_failure_after_any_step_leaves_old_or_new() {
    for &(step, new_live) in STEPS {
        let c = case();
        let args = args(&c);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = stayup_env(&args, &[("STAYUP_PUBLISH_FAIL_AFTER", step)]);
        assert_eq!(code, 3, "step {step}: {out}{err}");
        assert!(
            err.contains(&format!("injected failure after step {step}")),
            "{err}"
        );
        assert_consistent(&c, step, new_live);
        assert_recovers(&c, step);
    }
}

#[test]
fn sigkill_after_any_step_leaves_old_or_new() {
    for &(step, new_live) in STEPS {
        let c = case();
        pause_then_kill(&args(&c), step);
        assert_consistent(&c, step, new_live);
        assert_recovers(&c, step);
    }
}

/// A dry run killed half-way leaves only its private leftovers, which gc
/// removes: the folder is then exactly as before.
#[test]
fn a_killed_dry_run_changes_nothing_gc_cannot_clear() {
    let c = case();
    let before = snapshot(c.site.dir.path());
    let mut args = args(&c);
    args.push("--dry-run".into());
    pause_then_kill(&args, "validated");
    assert_consistent(&c, "validated (dry run)", false);
    assert_ne!(
        snapshot(c.site.dir.path()),
        before,
        "the dry run left its files"
    );
    let (code, out, err) = stayup(&[
        "gc",
        "--config",
        c.site.config.to_str().unwrap(),
        "--keep",
        "1",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(snapshot(c.site.dir.path()), before, "{out}");
}
