//! The stayup benchmark: stayup, nginx, HAProxy, hitch and stunnel side by
//! side in one run, on one machine, with the same certificate, the same
//! client and the same backend.
//!
//! ```text
//! cargo run --release --manifest-path bench/Cargo.toml -- full    # about 8 minutes
//! cargo run --release --manifest-path bench/Cargo.toml -- smoke   # seconds, for CI
//! ```

mod backend;
mod ceiling;
mod load;
mod procfs;
mod report;
mod run;
mod stayup_only;
mod systems;
mod tls;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::run::Part;

const USAGE: &str = "usage: stayup-bench full|smoke|memory|handshakes|echo|storm|upgrade|bulk [--out FILE] [--only SYSTEM,...] [--stayup BINARY] [--keep]\n\
  full   installs the peers from Debian if missing, runs everything (about 8 minutes),\n\
         writes bench/results/<date>.md and .svg\n\
  smoke  seconds-long version against stayup and whichever peers are installed,\n\
         writes bench/target/smoke.md\n\
  memory only the memory-per-idle-connection part (3,000 connections), printed\n\
  handshakes  only the full-handshake part, the ceiling and the floor (full settings), printed\n\
  echo   only the echo latencies (full settings), printed\n\
  storm  only the reload storm (full settings), printed\n\
  upgrade  only the binary upgrade under load (full settings), printed\n\
  bulk   only the bulk upload over one connection, the ceiling and the bulk floor (full settings), printed\n\
  --only takes system names, `reloads` for stayup's reload figures alone, `floor` for the floors\n";

/// Pins the calling thread (and the threads it starts later) to one CPU.
pub fn pin(cpu: usize) -> Result<()> {
    use nix::sched::{CpuSet, sched_setaffinity};
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("cannot pin to CPU {cpu}"))
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("stayup-bench: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first() else {
        bail!("{USAGE}");
    };
    if mode == "backend" {
        pin(0)?;
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(backend::run());
    }
    let (smoke, part) = match mode.as_str() {
        "full" => (false, Part::All),
        "smoke" => (true, Part::All),
        "memory" => (false, Part::Memory),
        "handshakes" => (false, Part::Handshakes),
        "echo" => (false, Part::Echo),
        "storm" => (false, Part::Storm),
        "upgrade" => (false, Part::Upgrade),
        "bulk" => (false, Part::Bulk),
        _ => bail!("{USAGE}"),
    };
    let mut out: Option<PathBuf> = None;
    let mut only: Option<Vec<String>> = None;
    let mut stayup_bin: Option<PathBuf> = None;
    let mut settings_keep = false;
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = it.next().map(PathBuf::from),
            "--keep" => settings_keep = true,
            "--stayup" => stayup_bin = it.next().map(PathBuf::from),
            "--only" => {
                only = it
                    .next()
                    .map(|s| s.split(',').map(str::to_string).collect())
            }
            _ => bail!("unknown argument {a:?}\n{USAGE}"),
        }
    }
    let bench_dir = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    let root = bench_dir
        .parent()
        .context("the benchmark lives in bench/ of the stayup repository")?
        .to_path_buf();
    if !smoke {
        install_peers()?;
    }
    let stayup = match stayup_bin {
        Some(b) => b,
        None => build_stayup(&root)?,
    };
    raise_fd_limit();
    if systems::choose_proxy_cpu() == 0 {
        eprintln!("only one CPU available: proxies share CPU 0 with the load generator");
    }
    // Everything from here on (driver, load generator, backend) runs on CPU 0;
    // the proxies are started with `taskset -c 1`.
    pin(0)?;
    let mut settings = run::Settings::new(smoke);
    settings.part = part;
    settings.keep = settings_keep;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = rt.block_on(run::all(&settings, &stayup, only.as_deref()))?;
    if part != Part::All {
        return Ok(());
    }
    let (md, svg) = report::render(&results, &settings);
    let md_path = match out {
        Some(p) => p,
        None if smoke => bench_dir.join("target").join("smoke.md"),
        None => bench_dir
            .join("results")
            .join(format!("{}.md", results.date)),
    };
    if let Some(dir) = md_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let svg_path = md_path.with_extension("svg");
    let mut md = md.replace(
        "CHART_FILE",
        &svg_path.file_name().unwrap_or_default().to_string_lossy(),
    );
    let notes = kept_notes(&md_path);
    if !notes.is_empty() {
        md.truncate(md.trim_end().len());
        md.push('\n');
        md.push_str(&notes);
    }
    std::fs::write(&md_path, md).with_context(|| format!("{}: cannot write", md_path.display()))?;
    std::fs::write(&svg_path, svg)
        .with_context(|| format!("{}: cannot write", svg_path.display()))?;
    eprintln!("wrote {} and {}", md_path.display(), svg_path.display());
    if smoke && !results.complete() {
        bail!("smoke run: some parts failed (see {})", md_path.display());
    }
    Ok(())
}

/// Where the hand-written part of a results file begins.
const NOTES: &str = "\n## Observations\n";

/// The hand-written notes (from `## Observations` on) of a results file
/// this run is about to replace, so that a second run on the same day
/// rewrites the figures but not what was written about them.
fn kept_notes(path: &Path) -> String {
    let Ok(old) = std::fs::read_to_string(path) else {
        return String::new();
    };
    match old.find(NOTES) {
        Some(at) => old[at..].to_string(),
        None => String::new(),
    }
}

/// Each connection through a proxy costs it two descriptors.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn install_peers() -> Result<()> {
    if systems::Kind::ALL.iter().all(|k| k.installed()) {
        return Ok(());
    }
    eprintln!("installing the peers from Debian: nginx libnginx-mod-stream haproxy hitch stunnel4");
    let apt = |args: &[&str]| -> Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("apt-get")?;
        if !status.success() {
            bail!(
                "apt-get {} failed ({status}); run the benchmark as root on Debian",
                args.join(" ")
            );
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    apt(&[
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "nginx",
        "libnginx-mod-stream",
        "haproxy",
        "hitch",
        "stunnel4",
    ])
}

fn build_stayup(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building stayup (release)");
    let status = Command::new(&cargo)
        .args(["build", "--release", "--bin", "stayup"])
        .current_dir(root)
        .status()
        .context("cargo build")?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|t| root.join(t))
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release").join("stayup");
    if !bin.is_file() {
        bail!("{}: not found after the build", bin.display());
    }
    Ok(bin)
}
