//! The order of the run and what it records.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use rustls::ClientConfig;
use tokio::io::AsyncBufReadExt;

use crate::load::{self, HandshakeLoad, Upload};
use crate::systems::{Env, Kind, Proxy};

/// The parts a run is limited to (all but `All` are for profiling one part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    All,
    /// Memory per idle connection, printed.
    Memory,
    /// Full handshakes, and the ceiling and floor to compare them with.
    Handshakes,
    /// Echo round trips over 1 and 50 connections, and over 1 under the
    /// handshake load.
    Echo,
    /// The reload storm.
    Storm,
    /// A binary upgrade under load.
    Upgrade,
    /// Bulk throughput over one connection, and the ceiling to compare it
    /// with.
    Bulk,
}

/// How long and how big each part is.
#[derive(Debug, Clone)]
pub struct Settings {
    pub smoke: bool,
    /// Which parts run.
    pub part: Part,
    /// Keep the working folder (configurations, logs) for inspection.
    pub keep: bool,
    pub concurrency: usize,
    pub warmup: Duration,
    pub handshake_time: Duration,
    pub bulk_time: Duration,
    pub echo_time: Duration,
    /// Echo rounds per connection count; the round with the median p99 is
    /// reported, so one burst of other work on a shared machine does not
    /// decide a tail latency.
    pub echo_rounds: usize,
    pub idle_connections: usize,
    pub storm_baseline: Duration,
    pub storm_time: Duration,
    pub storm_interval: Duration,
    /// New-connection load before a binary upgrade, and after the new
    /// process serves.
    pub upgrade_before: Duration,
    pub upgrade_after: Duration,
    pub long_lived: usize,
    pub rotations: usize,
    pub live_connections: usize,
    pub reloads_per_point: usize,
    pub many_certificates: usize,
    pub ceiling_time: Duration,
}

impl Settings {
    pub fn new(smoke: bool) -> Settings {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        if smoke {
            Settings {
                smoke,
                part: Part::All,
                keep: false,
                concurrency: 32,
                warmup: ms(200),
                handshake_time: ms(700),
                bulk_time: ms(500),
                echo_time: ms(300),
                echo_rounds: 1,
                idle_connections: 200,
                storm_baseline: ms(500),
                storm_time: ms(1000),
                storm_interval: ms(100),
                upgrade_before: ms(500),
                upgrade_after: ms(500),
                long_lived: 50,
                rotations: 10,
                live_connections: 300,
                reloads_per_point: 3,
                many_certificates: 50,
                ceiling_time: ms(300),
            }
        } else {
            Settings {
                smoke,
                part: Part::All,
                keep: false,
                concurrency: 200,
                warmup: s(1),
                handshake_time: s(10),
                bulk_time: s(5),
                echo_time: s(4),
                echo_rounds: 5,
                idle_connections: 3000,
                storm_baseline: s(10),
                storm_time: s(15),
                storm_interval: ms(100),
                upgrade_before: s(3),
                upgrade_after: s(3),
                long_lived: 500,
                rotations: 100,
                // Each connection costs the proxy two descriptors and the
                // hard RLIMIT_NOFILE may be 20,000.
                live_connections: 9_900,
                reloads_per_point: 40,
                many_certificates: 1000,
                ceiling_time: s(3),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub samples: u64,
    /// Proxy CPU time over wall time while the echoes ran.
    pub cpu_share: f64,
    /// Involuntary context switches of the proxy while the echoes ran.
    pub preemptions: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50_us: h.value_at_quantile(0.50) as f64 / 1e3,
            p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
            p999_us: h.value_at_quantile(0.999) as f64 / 1e3,
            samples: h.len(),
            cpu_share: 0.0,
            preemptions: 0,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Storm {
    /// Handshakes per second without reloads: one window before the storm
    /// and one after, together, so that a drift in what else the machine
    /// is doing does not pass for the cost of reloading.
    pub baseline_per_s: f64,
    pub storm_per_s: f64,
    /// The same per proxy CPU-second: what reloading costs the proxy, with
    /// time the machine gave to others left out.
    pub baseline_per_cpu_s: f64,
    pub storm_per_cpu_s: f64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub connect_errors: u64,
    pub handshake_errors: u64,
    pub data_errors: u64,
    pub long_lived: usize,
    pub alive: usize,
    pub peak_processes: usize,
    pub peak_rss_mib: f64,
}

/// One binary upgrade (or, for systems without one, a restart) while
/// new-connection load runs and long-lived connections stay open.
#[derive(Debug, Clone, Default)]
pub struct Upgrade {
    pub how: &'static str,
    /// From the trigger until the new process serves (and, for nginx, the
    /// old master was told to quit).
    pub took_ms: f64,
    pub connect_errors: u64,
    pub handshake_errors: u64,
    pub data_errors: u64,
    /// The longest stretch without a completed handshake, in the window
    /// before the trigger and from the trigger to the end.
    pub gap_before_ms: f64,
    pub gap_after_ms: f64,
    /// Handshakes per second from the trigger to the end, as a share of
    /// the rate before it.
    pub rate_share: f64,
    pub long_lived: usize,
    pub alive: usize,
}

#[derive(Debug, Clone, Default)]
pub struct SystemResult {
    pub name: &'static str,
    pub version: String,
    pub handshakes_per_s: Option<f64>,
    pub handshakes_per_cpu_s: Option<f64>,
    pub handshake_cpu_share: Option<f64>,
    pub handshake_errors: u64,
    /// Connect to the end of a connection under the handshake load, µs:
    /// p50 and p99.
    pub connection_time: Option<(f64, f64)>,
    /// TLS 1.3 session tickets received per handshake.
    pub tickets_per_handshake: Option<f64>,
    /// The handshake test again with a client offering OpenSSL's suites in
    /// OpenSSL's order: the suite the system chose, and its rate.
    pub openssl_order_suite: Option<String>,
    pub openssl_order_per_cpu_s: Option<f64>,
    pub bulk_mb_s: Option<f64>,
    pub bulk_cpu_s_per_gb: Option<f64>,
    pub echo1: Option<Latency>,
    pub echo50: Option<Latency>,
    /// Over one connection while the handshake test's load runs.
    pub echo1_loaded: Option<Latency>,
    pub idle_rss_kib: Option<f64>,
    pub idle_pss_kib: Option<f64>,
    pub storm: Option<Storm>,
    pub upgrade: Option<Upgrade>,
    pub errors: Vec<String>,
}

pub struct Results {
    pub date: String,
    pub proxy_cpu: usize,
    pub started: String,
    pub minutes: f64,
    pub load_before: String,
    pub load_after: String,
    pub kernel: String,
    /// `/proc/sys/net/ipv4/tcp_available_ulp`: whether kernel TLS (`tls`)
    /// could carry the bulk test's bytes on this host at all.
    pub tcp_ulps: String,
    pub cpu_model: String,
    pub systems: Vec<SystemResult>,
    pub skipped: Vec<&'static str>,
    pub stayup: crate::stayup_only::StayupOnly,
    pub ceiling: Option<crate::ceiling::Ceiling>,
    /// The handshake test without TLS (see `floor`).
    pub floor: Option<Rate>,
    /// The bulk test without TLS, proxy CPU-seconds per GB (see `bulk_floor`).
    pub bulk_floor: Option<f64>,
    pub errors: Vec<String>,
}

impl Results {
    /// Whether every part that ran produced its figures.
    pub fn complete(&self) -> bool {
        self.errors.is_empty()
            && self.stayup.errors.is_empty()
            && self.systems.iter().all(|s| s.errors.is_empty())
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn start_backend(dir: &Path) -> Result<(tokio::process::Child, u16)> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .arg("backend")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the backend")?;
    let stdout = child.stdout.take().context("backend stdout")?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .context("the backend did not start")??;
    let port = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("backend said {line:?}"))?;
    Ok((child, port))
}

pub async fn all(settings: &Settings, stayup: &Path, only: Option<&[String]>) -> Result<Results> {
    let started_at = Instant::now();
    let (date, started) = crate::report::utc_now();
    let load_before = loadavg();
    let dir = std::env::temp_dir().join(format!("stayup-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let certs_dir = dir.join("certs");
    std::fs::create_dir_all(&certs_dir)?;
    let ca = crate::tls::Ca::new()?;
    let names = vec![crate::tls::NAME.to_string()];
    let certs = [
        ca.leaf(&certs_dir, "a", &names)?,
        ca.leaf(&certs_dir, "b", &names)?,
    ];
    let openssl_conf = dir.join("openssl.cnf");
    Env::write_openssl_conf(&openssl_conf)?;
    let (mut backend, backend_port) = start_backend(&dir).await?;
    let env = Env {
        dir: dir.clone(),
        stayup: stayup.to_path_buf(),
        backend_port,
        certs,
        openssl_conf,
        client: crate::tls::client_config()?,
        openssl_order_client: crate::tls::openssl_order_client_config()?,
    };

    let mut errors = Vec::new();
    let ceiling = if matches!(
        settings.part,
        Part::Memory | Part::Storm | Part::Echo | Part::Upgrade
    ) {
        None
    } else {
        eprintln!(
            "ceiling: rustls in memory on CPU {}",
            crate::systems::proxy_cpu()
        );
        match crate::ceiling::measure(&env.certs[0], settings.ceiling_time) {
            Ok(c) => {
                eprintln!(
                    "ceiling: {:.0} server handshakes per CPU-second ({:.0} with two tickets), AES-256-GCM {:.0} MB/s through a connection, {:.0} MB/s alone",
                    c.handshakes_per_cpu_s,
                    c.handshakes_per_cpu_s_tickets,
                    c.decrypt_mb_s,
                    c.aead_mb_s
                );
                Some(c)
            }
            Err(e) => {
                errors.push(format!("ceiling: {e:#}"));
                None
            }
        }
    };

    let mut systems = Vec::new();
    let mut skipped = Vec::new();
    for kind in Kind::ALL {
        if let Some(only) = only
            && !only.iter().any(|o| o == kind.name())
        {
            continue;
        }
        if !kind.installed() {
            eprintln!("{}: not installed, skipped", kind.name());
            skipped.push(kind.name());
            continue;
        }
        systems.push(system(kind, &env, settings).await);
    }

    if matches!(settings.part, Part::All | Part::Echo) {
        echo_in_turns(&mut systems, &env, settings).await;
    }

    // The floors run only where nginx is installed, and with stayup.
    let floors = Kind::NginxPlain.installed()
        && only.is_none_or(|o| o.iter().any(|s| s == "stayup" || s == "floor"));
    let floor = optional(
        floors && matches!(settings.part, Part::All | Part::Handshakes),
        "floor",
        &mut errors,
        floor(&env, settings),
    )
    .await;
    let bulk_floor = optional(
        floors && matches!(settings.part, Part::All | Part::Bulk),
        "bulk floor",
        &mut errors,
        bulk_floor(&env, settings),
    )
    .await;

    let stayup_only = if settings.part == Part::All
        && only.is_none_or(|o| o.iter().any(|s| s == "stayup" || s == "reloads"))
    {
        crate::stayup_only::run(&env, &ca, settings).await
    } else {
        Default::default()
    };

    let _ = backend.kill().await;
    if settings.keep {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(Results {
        date,
        proxy_cpu: crate::systems::proxy_cpu(),
        started,
        minutes: started_at.elapsed().as_secs_f64() / 60.0,
        load_before,
        load_after: loadavg(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        tcp_ulps: std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
            .unwrap_or_default()
            .trim()
            .to_string(),
        cpu_model: std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("?")
            .trim()
            .to_string(),
        systems,
        skipped,
        stayup: stayup_only,
        ceiling,
        floor,
        bulk_floor,
        errors,
    })
}

async fn system(kind: Kind, env: &Env, s: &Settings) -> SystemResult {
    let mut r = SystemResult {
        name: kind.name(),
        version: kind.version(&env.stayup),
        ..Default::default()
    };
    eprintln!("{}: {}", kind.name(), r.version);
    if matches!(
        s.part,
        Part::All | Part::Memory | Part::Handshakes | Part::Bulk
    ) && let Err(e) = throughput_parts(kind, env, s, &mut r).await
    {
        r.errors.push(format!("{e:#}"));
    }
    if matches!(s.part, Part::All | Part::Storm) {
        match storm(kind, env, s).await {
            Ok(st) => r.storm = Some(st),
            Err(e) => r.errors.push(format!("reload storm: {e:#}")),
        }
    }
    if matches!(s.part, Part::All | Part::Upgrade) {
        match upgrade(kind, env, s).await {
            Ok(u) => r.upgrade = Some(u),
            Err(e) => r.errors.push(format!("upgrade: {e:#}")),
        }
    }
    for e in &r.errors {
        eprintln!("{}: FAILED {e}", kind.name());
    }
    r
}

async fn throughput_parts(kind: Kind, env: &Env, s: &Settings, r: &mut SystemResult) -> Result<()> {
    let p = Proxy::start(kind, env).await?;
    let outcome = measure_parts(&p, env, s, r).await;
    p.stop().await;
    outcome
}

async fn measure_parts(p: &Proxy, env: &Env, s: &Settings, r: &mut SystemResult) -> Result<()> {
    let name = p.kind.name();
    // 4. Memory per idle connection, on the fresh process.
    if matches!(s.part, Part::All | Part::Memory) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = p.memory();
        let conns = load::open_many(p.addr, &env.client, s.idle_connections, 50)
            .await
            .context("idle connections")?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = p.memory();
        let n = conns.len() as f64;
        r.idle_rss_kib = Some((after.rss_kib as f64 - before.rss_kib as f64) / n);
        r.idle_pss_kib = Some((after.pss_kib as f64 - before.pss_kib as f64) / n);
        eprintln!(
            "{name}: idle {} connections: {:.1} KiB RSS, {:.1} KiB PSS each",
            conns.len(),
            r.idle_rss_kib.unwrap_or(0.0),
            r.idle_pss_kib.unwrap_or(0.0)
        );
        conns.into_iter().for_each(load::abort);
        if s.part == Part::Memory {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 1. Full handshakes.
    if matches!(s.part, Part::All | Part::Handshakes) {
        let tickets0 = crate::tls::TICKETS.load(Ordering::Relaxed);
        let rate = new_connections(p, Some(&env.client), s).await;
        let tickets = crate::tls::TICKETS.load(Ordering::Relaxed) - tickets0;
        r.handshakes_per_s = Some(rate.per_s);
        r.handshakes_per_cpu_s = rate.per_cpu_s;
        r.handshake_cpu_share = Some(rate.cpu_share);
        r.handshake_errors = rate.errors;
        r.tickets_per_handshake = (rate.ok > 0).then(|| tickets as f64 / rate.ok as f64);
        r.connection_time = Some((rate.time_p50_us, rate.time_p99_us));
        eprintln!(
            "{name}: {:.0} handshakes/s, {:.0} per proxy CPU-second (proxy CPU {:.0}%), {} errors, {:.2} tickets per handshake, connection time p50 {:.1} ms p99 {:.1} ms",
            rate.per_s,
            rate.per_cpu_s.unwrap_or(0.0),
            100.0 * rate.cpu_share,
            rate.errors,
            r.tickets_per_handshake.unwrap_or(f64::NAN),
            rate.time_p50_us / 1e3,
            rate.time_p99_us / 1e3
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cfg = &env.openssl_order_client;
        r.openssl_order_suite = load::negotiated_suite(p.addr, cfg).await;
        let rate = new_connections(p, Some(cfg), s).await;
        r.openssl_order_per_cpu_s = rate.per_cpu_s;
        eprintln!(
            "{name}: offered OpenSSL's suites, chose {}: {:.0} handshakes per proxy CPU-second, {} errors",
            r.openssl_order_suite.as_deref().unwrap_or("?"),
            rate.per_cpu_s.unwrap_or(0.0),
            rate.errors
        );
        r.handshake_errors += rate.errors;
        if s.part == Part::Handshakes {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // 2. Bulk throughput over one connection.
    if matches!(s.part, Part::All | Part::Bulk) {
        let (mb_s, cpu_s_per_gb) = bulk(p, env, Some(&env.client), s).await?;
        r.bulk_mb_s = Some(mb_s);
        r.bulk_cpu_s_per_gb = cpu_s_per_gb;
        eprintln!(
            "{name}: bulk {mb_s:.0} MB/s, {:.3} proxy CPU-s per GB",
            cpu_s_per_gb.unwrap_or(0.0)
        );
    }

    // 3. Echo latency: `echo_in_turns`, with every system running.
    Ok(())
}

/// Figure 3 for every system in turns: every system's round 1 (over 1 and
/// over 50 connections), then every system's round 2, and so on, with all
/// the proxies running (an idle one costs the others nothing). A slow spell
/// of a shared machine then falls on one round of every system rather than
/// on all the rounds of whichever system was measured during it; each
/// round starts one system further along. Each system's figure is its round
/// with the median p99.
async fn echo_in_turns(systems: &mut [SystemResult], env: &Env, s: &Settings) {
    struct Turn {
        at: usize,
        proxy: Proxy,
        rounds: [Vec<Latency>; 3],
        failed: bool,
    }
    /// (connections, under the handshake load)
    const CASES: [(usize, bool); 3] = [(1, false), (50, false), (1, true)];
    let mut turns = Vec::new();
    for (at, r) in systems.iter_mut().enumerate() {
        let Some(kind) = Kind::ALL.into_iter().find(|k| k.name() == r.name) else {
            continue;
        };
        match Proxy::start(kind, env).await {
            Ok(proxy) => turns.push(Turn {
                at,
                proxy,
                rounds: Default::default(),
                failed: false,
            }),
            Err(e) => r.errors.push(format!("echo: {e:#}")),
        }
    }
    for round in 1..=s.echo_rounds.max(1) {
        // Each round starts with another system, so that none is always
        // measured right after the same neighbour.
        if round > 1 && !turns.is_empty() {
            turns.rotate_left(1);
        }
        for t in turns.iter_mut().filter(|t| !t.failed) {
            for (i, (conns, under_load)) in CASES.into_iter().enumerate() {
                let case = if under_load {
                    format!("over {conns} under the handshake load")
                } else {
                    format!("over {conns}")
                };
                match echo_round(&t.proxy, env, s, conns, under_load).await {
                    Ok(l) => {
                        eprintln!(
                            "{}: echo {case}, round {round}: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us ({} samples), proxy CPU {:.0}%, preempted {} times",
                            t.proxy.kind.name(),
                            l.p50_us,
                            l.p99_us,
                            l.p999_us,
                            l.samples,
                            l.cpu_share * 100.0,
                            l.preemptions
                        );
                        t.rounds[i].push(l);
                    }
                    Err(e) => {
                        let msg = format!("echo {case}: {e:#}");
                        eprintln!("{}: FAILED {msg}", t.proxy.kind.name());
                        systems[t.at].errors.push(msg);
                        t.failed = true;
                        break;
                    }
                }
            }
        }
    }
    for t in turns {
        if !t.failed {
            let r = &mut systems[t.at];
            let [one, fifty, loaded] = t.rounds;
            r.echo1 = median_p99(one);
            r.echo50 = median_p99(fifty);
            r.echo1_loaded = median_p99(loaded);
        }
        t.proxy.stop().await;
    }
}

/// The round with the median p99.
fn median_p99(mut rounds: Vec<Latency>) -> Option<Latency> {
    if rounds.is_empty() {
        return None;
    }
    rounds.sort_by(|a, b| a.p99_us.total_cmp(&b.p99_us));
    Some(rounds.swap_remove(rounds.len() / 2))
}

/// One round of 64-byte echoes over `conns` connections through `p`;
/// `under_load`: while the handshake test's new-connection load runs, which
/// measures how long a burst of new connections keeps the proxy from the
/// connections it already has. The echoes then run on a thread of their
/// own (on the same CPU), so that they do not queue behind the load
/// generator's own handshakes.
async fn echo_round(
    p: &Proxy,
    env: &Env,
    s: &Settings,
    conns: usize,
    under_load: bool,
) -> Result<Latency> {
    let (cpu0, t0) = (p.cpu_seconds(), Instant::now());
    let pre0 = crate::procfs::preemptions(p.pid);
    let warmup = s.warmup.min(Duration::from_millis(500));
    let h = if under_load {
        let hs = HandshakeLoad::start(p.addr, Some(&env.client), s.concurrency);
        let (addr, client, time) = (p.addr, env.client.clone(), s.echo_time);
        let probe = tokio::task::spawn_blocking(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("echo thread runtime")?
                .block_on(load::echo_latency(addr, &client, conns, warmup, time))
        });
        let h = probe.await.context("echo thread");
        let counts = hs.counts.snapshot();
        hs.stop().await;
        if counts.ok == 0 {
            bail!("no handshake completed alongside the echoes");
        }
        h??
    } else {
        load::echo_latency(p.addr, &env.client, conns, warmup, s.echo_time).await?
    };
    let mut l = Latency::of(&h);
    l.cpu_share = (p.cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
    l.preemptions = crate::procfs::preemptions(p.pid).saturating_sub(pre0);
    Ok(l)
}

/// New connections through `p` under the handshake test's load (with TLS
/// when `tls` is given), counted after the warm-up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rate {
    /// Connect to the end of the connection (handshake and echo), under
    /// the load, in microseconds: p50 and p99.
    pub time_p50_us: f64,
    pub time_p99_us: f64,
    pub ok: u64,
    pub errors: u64,
    pub per_s: f64,
    pub per_cpu_s: Option<f64>,
    /// Proxy CPU time over wall time.
    pub cpu_share: f64,
}

async fn new_connections(p: &Proxy, tls: Option<&Arc<ClientConfig>>, s: &Settings) -> Rate {
    let load = HandshakeLoad::start(p.addr, tls, s.concurrency);
    tokio::time::sleep(s.warmup).await;
    load.record_times(true);
    let (c0, cpu0, t0) = (load.counts.snapshot(), p.cpu_seconds(), Instant::now());
    tokio::time::sleep(s.handshake_time).await;
    let (c1, cpu1, wall) = (load.counts.snapshot(), p.cpu_seconds(), t0.elapsed());
    load.record_times(false);
    let (time_p50_us, time_p99_us) = load
        .times
        .lock()
        .map(|h| {
            (
                h.value_at_quantile(0.5) as f64 / 1e3,
                h.value_at_quantile(0.99) as f64 / 1e3,
            )
        })
        .unwrap_or_default();
    load.stop().await;
    let d = c1 - c0;
    let cpu = cpu1 - cpu0;
    Rate {
        time_p50_us,
        time_p99_us,
        ok: d.ok,
        errors: d.connect_errors + d.handshake_errors + d.data_errors,
        per_s: d.ok as f64 / wall.as_secs_f64(),
        per_cpu_s: (cpu > 0.0).then(|| d.ok as f64 / cpu),
        cpu_share: cpu / wall.as_secs_f64(),
    }
}

/// Runs `part` if `run`; its failure is one of the run's errors.
async fn optional<T>(
    run: bool,
    what: &str,
    errors: &mut Vec<String>,
    part: impl std::future::Future<Output = Result<T>>,
) -> Option<T> {
    if !run {
        return None;
    }
    match part.await {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(format!("{what}: {e:#}"));
            None
        }
    }
}

/// The floor of the handshake test: nginx forwarding the same connections
/// (connect, one 64-byte echo through a backend connection, close) as plain
/// TCP. What a connection costs a proxy without TLS is the part of the
/// handshake test no TLS library can make cheaper.
async fn floor(env: &Env, s: &Settings) -> Result<Rate> {
    let p = Proxy::start(Kind::NginxPlain, env).await?;
    let rate = new_connections(&p, None, s).await;
    p.stop().await;
    eprintln!(
        "floor (nginx, plain TCP): {:.0} connections/s, {:.0} per proxy CPU-second (proxy CPU {:.0}%), {} errors",
        rate.per_s,
        rate.per_cpu_s.unwrap_or(0.0),
        100.0 * rate.cpu_share,
        rate.errors
    );
    if rate.errors > 0 {
        bail!("{} failed connections without TLS", rate.errors);
    }
    Ok(rate)
}

/// One connection uploading through `p` for `bulk_time`, over TLS with
/// `tls` or as plain TCP: MB/s counted at the backend, and proxy CPU-seconds
/// per GB.
async fn bulk(
    p: &Proxy,
    env: &Env,
    tls: Option<&Arc<ClientConfig>>,
    s: &Settings,
) -> Result<(f64, Option<f64>)> {
    let up = Upload::start(p.addr, tls).await.context("bulk")?;
    tokio::time::sleep(s.warmup).await;
    let (b0, cpu0, t0) = (
        crate::backend::sunk(env.backend_port).await?,
        p.cpu_seconds(),
        Instant::now(),
    );
    tokio::time::sleep(s.bulk_time).await;
    let (b1, cpu1, wall) = (
        crate::backend::sunk(env.backend_port).await?,
        p.cpu_seconds(),
        t0.elapsed(),
    );
    up.stop().await.context("bulk upload")?;
    let bytes = (b1 - b0) as f64;
    Ok((
        bytes / 1e6 / wall.as_secs_f64(),
        (bytes > 0.0).then(|| (cpu1 - cpu0) / (bytes / 1e9)),
    ))
}

/// The floor of the bulk test: nginx forwarding the same upload as plain
/// TCP, proxy CPU-seconds per GB. The kernel's receive and send on both
/// sockets are in every proxy's bulk figure; no TLS library can make them
/// cheaper.
async fn bulk_floor(env: &Env, s: &Settings) -> Result<f64> {
    let p = Proxy::start(Kind::NginxPlain, env).await?;
    let outcome = bulk(&p, env, None, s).await;
    p.stop().await;
    let (mb_s, cpu_s_per_gb) = outcome?;
    eprintln!(
        "bulk floor (nginx, plain TCP): {mb_s:.0} MB/s, {:.3} proxy CPU-s per GB",
        cpu_s_per_gb.unwrap_or(0.0)
    );
    cpu_s_per_gb.context("no bytes reached the backend without TLS")
}

/// Figure 5: a reload every `storm_interval` for `storm_time` under
/// new-connection load, with long-lived connections open.
async fn storm(kind: Kind, env: &Env, s: &Settings) -> Result<Storm> {
    let mut p = Proxy::start(kind, env).await?;
    let outcome = storm_on(&mut p, env, s).await;
    p.stop().await;
    outcome
}

async fn storm_on(p: &mut Proxy, env: &Env, s: &Settings) -> Result<Storm> {
    let name = p.kind.name();
    let mut long = load::open_many(p.addr, &env.client, s.long_lived, 50)
        .await
        .context("long-lived connections")?;
    let hs = HandshakeLoad::start(p.addr, Some(&env.client), s.concurrency);
    tokio::time::sleep(s.warmup).await;
    let (c0, cpu0, t0) = (hs.counts.snapshot(), p.cpu_seconds(), Instant::now());
    tokio::time::sleep(s.storm_baseline / 2).await;
    let (c1, cpu1, t1) = (hs.counts.snapshot(), p.cpu_seconds(), Instant::now());
    let mut st = Storm {
        long_lived: long.len(),
        ..Default::default()
    };
    let mut next_reload = Instant::now();
    let mut first_failure = None;
    while t1.elapsed() < s.storm_time {
        let now = Instant::now();
        if now >= next_reload {
            next_reload += s.storm_interval;
            st.reloads += 1;
            if let Err(e) = p.reload(env).await {
                st.reload_failures += 1;
                first_failure.get_or_insert(format!("{e:#}"));
            }
        }
        // Every tick, not only at each reload: hitch's new worker would
        // otherwise spend up to a reload interval on the load generator's
        // CPU (tried: its storm rate fell from about 3,300 to 2,100/s).
        p.keep_pinned();
        let m = p.memory();
        st.peak_processes = st.peak_processes.max(m.processes);
        st.peak_rss_mib = st.peak_rss_mib.max(m.rss_kib as f64 / 1024.0);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (c2, cpu2, t2) = (hs.counts.snapshot(), p.cpu_seconds(), Instant::now());
    // The second half of the baseline, after the last reload's effects.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (c3, cpu3, t3) = (hs.counts.snapshot(), p.cpu_seconds(), Instant::now());
    tokio::time::sleep(s.storm_baseline / 2).await;
    let (c4, cpu4, t4) = (hs.counts.snapshot(), p.cpu_seconds(), Instant::now());
    hs.stop().await;
    let d = c2 - c1;
    let base_ok = ((c1.ok - c0.ok) + (c4.ok - c3.ok)) as f64;
    let base_cpu = (cpu1 - cpu0) + (cpu4 - cpu3);
    st.baseline_per_s = base_ok / ((t1 - t0) + (t4 - t3)).as_secs_f64();
    st.baseline_per_cpu_s = base_ok / base_cpu.max(1e-9);
    st.storm_per_s = d.ok as f64 / (t2 - t1).as_secs_f64();
    st.storm_per_cpu_s = d.ok as f64 / (cpu2 - cpu1).max(1e-9);
    st.connect_errors = d.connect_errors;
    st.handshake_errors = d.handshake_errors;
    st.data_errors = d.data_errors;
    tokio::time::sleep(Duration::from_millis(500)).await;
    st.alive = load::still_answering(&mut long, Duration::from_secs(5)).await;
    long.into_iter().for_each(load::abort);
    eprintln!(
        "{name}: storm: {} reloads ({} failed), {:.0}/s vs {:.0}/s baseline ({:.0} vs {:.0} per proxy CPU-second), errors connect {} handshake {} data {}, {}/{} long-lived answering, peak {} processes {:.0} MiB",
        st.reloads,
        st.reload_failures,
        st.storm_per_s,
        st.baseline_per_s,
        st.storm_per_cpu_s,
        st.baseline_per_cpu_s,
        st.connect_errors,
        st.handshake_errors,
        st.data_errors,
        st.alive,
        st.long_lived,
        st.peak_processes,
        st.peak_rss_mib
    );
    if let Some(f) = first_failure {
        eprintln!("{name}: first reload failure: {f}");
    }
    if st.reloads == 0 {
        bail!("no reload was sent");
    }
    Ok(st)
}

/// Watches the count of completed handshakes every millisecond and keeps
/// the longest stretch in which it did not move.
struct GapWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    longest: Arc<std::sync::Mutex<Duration>>,
    task: tokio::task::JoinHandle<()>,
}

impl GapWatch {
    fn start(counts: Arc<load::Counts>) -> GapWatch {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let longest = Arc::new(std::sync::Mutex::new(Duration::ZERO));
        let (st, lg) = (stop.clone(), longest.clone());
        let task = tokio::spawn(async move {
            let (mut seen, mut since) = (counts.ok.load(Ordering::Relaxed), Instant::now());
            while !st.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let now = counts.ok.load(Ordering::Relaxed);
                if now != seen {
                    (seen, since) = (now, Instant::now());
                }
                if let Ok(mut l) = lg.lock() {
                    *l = (*l).max(since.elapsed());
                }
            }
        });
        GapWatch {
            stop,
            longest,
            task,
        }
    }

    /// The longest gap so far, in milliseconds, and starts over.
    fn take_ms(&self) -> f64 {
        self.longest
            .lock()
            .map(|mut l| std::mem::take(&mut *l).as_secs_f64() * 1e3)
            .unwrap_or(0.0)
    }

    async fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.task.await;
    }
}

async fn upgrade(kind: Kind, env: &Env, s: &Settings) -> Result<Upgrade> {
    let mut p = Proxy::start_upgradable(kind, env).await?;
    let name = kind.name();
    let mut long = match load::open_many(p.addr, &env.client, s.long_lived, 50).await {
        Ok(l) => l,
        Err(e) => {
            p.stop().await;
            return Err(e.context("long-lived connections"));
        }
    };
    let hs = HandshakeLoad::start(p.addr, Some(&env.client), s.concurrency);
    tokio::time::sleep(s.warmup).await;
    let gaps = GapWatch::start(hs.counts.clone());
    let (c0, t0) = (hs.counts.snapshot(), Instant::now());
    tokio::time::sleep(s.upgrade_before).await;
    let gap_before_ms = gaps.take_ms();
    let (c1, t1) = (hs.counts.snapshot(), Instant::now());
    let upgraded = p.upgrade(env).await;
    let took_ms = t1.elapsed().as_secs_f64() * 1e3;
    tokio::time::sleep(s.upgrade_after).await;
    let (c2, t2) = (hs.counts.snapshot(), Instant::now());
    let gap_after_ms = gaps.take_ms();
    gaps.stop().await;
    hs.stop().await;
    let alive = match &upgraded {
        Ok(_) => load::still_answering(&mut long, Duration::from_secs(5)).await,
        Err(_) => 0,
    };
    let long_lived = long.len();
    long.into_iter().for_each(load::abort);
    p.stop().await;
    let how = upgraded?;
    let (before, after) = (c1 - c0, c2 - c1);
    let rate = |ok: u64, d: Duration| ok as f64 / d.as_secs_f64().max(1e-9);
    let u = Upgrade {
        how,
        took_ms,
        connect_errors: after.connect_errors,
        handshake_errors: after.handshake_errors,
        data_errors: after.data_errors,
        gap_before_ms,
        gap_after_ms,
        rate_share: rate(after.ok, t2 - t1) / rate(before.ok, t1 - t0).max(1e-9),
        long_lived,
        alive,
    };
    eprintln!(
        "{name}: upgrade ({how}): {:.0} ms, errors connect {} handshake {} data {}, longest gap {:.0} ms (before {:.0} ms), {:.0}% of the rate before, {}/{} long-lived answering",
        u.took_ms,
        u.connect_errors,
        u.handshake_errors,
        u.data_errors,
        u.gap_after_ms,
        u.gap_before_ms,
        100.0 * u.rate_share,
        u.alive,
        u.long_lived
    );
    Ok(u)
}
