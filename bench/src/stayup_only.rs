//! Figures only stayup has: how soon a reload takes effect, and whether the
//! cost of a reload grows with live connections or with certificates.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::run::Settings;
use crate::systems::{DEBOUNCE, Env, Kind, Proxy, publish, stayup_yaml};
use crate::tls::{Ca, CertFiles};

#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(mut v: Vec<f64>) -> Spread {
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
        Spread {
            p50_ms: q(0.50),
            p99_ms: q(0.99),
            max_ms: v[v.len() - 1],
            n: v.len(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct StayupOnly {
    pub explicit: Option<Spread>,
    pub automatic: Option<Spread>,
    /// Why there is no automatic figure, when there is none.
    pub automatic_note: Option<String>,
    pub reload_idle: Option<Spread>,
    pub reload_live: Option<Spread>,
    pub live_connections: usize,
    pub reload_one_cert: Option<Spread>,
    pub reload_many_certs: Option<Spread>,
    pub many_certificates: usize,
    pub errors: Vec<String>,
}

pub async fn run(env: &Env, ca: &Ca, s: &Settings) -> StayupOnly {
    let mut r = StayupOnly {
        live_connections: s.live_connections,
        many_certificates: s.many_certificates,
        ..Default::default()
    };
    let dir = env.dir.join("rotations");
    let rotation: Result<Vec<CertFiles>> = std::fs::create_dir_all(&dir)
        .map_err(Into::into)
        .and_then(|_| {
            (0..=s.rotations)
                .map(|i| ca.leaf(&dir, &format!("r{i}"), &[crate::tls::NAME.to_string()]))
                .collect()
        });
    let rotation = match rotation {
        Ok(v) => v,
        Err(e) => {
            r.errors.push(format!("certificates: {e:#}"));
            return r;
        }
    };
    eprintln!(
        "stayup: reload-to-effect, explicit ({} rotations)",
        s.rotations
    );
    match to_effect(env, &rotation, false).await {
        Ok(v) => r.explicit = Some(Spread::of(v)),
        Err(e) => r.errors.push(format!("reload-to-effect (explicit): {e:#}")),
    }
    eprintln!("stayup: reload-to-effect, automatic");
    match to_effect(env, &rotation, true).await {
        Ok(v) => r.automatic = Some(Spread::of(v)),
        Err(e) => r.automatic_note = Some(format!("{e:#}")),
    }
    eprintln!(
        "stayup: reload time with 0 and {} live connections",
        s.live_connections
    );
    match with_live(env, s).await {
        Ok((idle, live)) => {
            r.reload_idle = Some(Spread::of(idle));
            r.reload_live = Some(Spread::of(live));
        }
        Err(e) => r
            .errors
            .push(format!("reload with live connections: {e:#}")),
    }
    eprintln!(
        "stayup: reload time with 1 and {} certificates",
        s.many_certificates
    );
    match with_certificates(env, ca, s).await {
        Ok((one, many)) => {
            r.reload_one_cert = Some(Spread::of(one));
            r.reload_many_certs = Some(Spread::of(many));
        }
        Err(e) => r
            .errors
            .push(format!("reload with many certificates: {e:#}")),
    }
    for e in &r.errors {
        eprintln!("stayup: FAILED {e}");
    }
    r
}

/// Milliseconds from each trigger to the end of the first handshake that
/// presents the new certificate. Explicit: the control socket, after the new
/// file is in place. Automatic: the rename into place itself.
async fn to_effect(env: &Env, rotation: &[CertFiles], watch: bool) -> Result<Vec<f64>> {
    let backend = env.backend_port;
    let name = if watch {
        "stayup-watch"
    } else {
        "stayup-explicit"
    };
    let p = Proxy::start_stayup(env, name, |port| {
        stayup_yaml(port, backend, &[&rotation[0]], watch)
    })
    .await?;
    let port = p.addr.port();
    let wait = if watch {
        DEBOUNCE + Duration::from_secs(3)
    } else {
        Duration::from_secs(10)
    };
    let mut out = Vec::new();
    let result = async {
        for cert in &rotation[1..] {
            publish(&p.config, &stayup_yaml(port, backend, &[cert], watch))?;
            let t0 = Instant::now();
            let answer = (!watch).then(|| {
                let socket = p.dir.join("stayup.sock");
                tokio::spawn(async move { crate::systems::control_reload(&socket).await })
            });
            loop {
                if crate::load::presented_leaf(p.addr, &env.client).await.as_deref() == Some(&cert.der[..]) {
                    out.push(t0.elapsed().as_secs_f64() * 1e3);
                    break;
                }
                if t0.elapsed() > wait {
                    if watch {
                        bail!(
                            "not measured: renaming a new configuration into place did not change the certificate within {} ms; this build of stayup has no file watcher",
                            wait.as_millis()
                        );
                    }
                    bail!("the new certificate was not served within {} s", wait.as_secs());
                }
            }
            if let Some(a) = answer {
                let a = a.await.context("control task")??;
                if a.result != "committed" {
                    bail!("reload answered {}", a.raw);
                }
            }
        }
        Ok(())
    }
    .await;
    p.stop().await;
    result.map(|_| out)
}

/// Control round-trip times of reloads that alternate between two certificates.
async fn timed_reloads(p: &mut Proxy, env: &Env, n: usize) -> Result<Vec<f64>> {
    // Warm-up: the first reloads of a process pay for first-time allocations.
    for _ in 0..2 {
        p.reload_timed(env).await?;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = p.reload_timed(env).await?;
        v.push(t);
    }
    Ok(v)
}

/// Reload times with no live connection and with `live_connections`. The
/// figure without is taken both before the connections open and after they
/// have all closed, and pooled, so that a drift of the machine in between
/// does not pass for an effect of the connections.
async fn with_live(env: &Env, s: &Settings) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut p = Proxy::start(Kind::Stayup, env).await?;
    let result = async {
        let fds = crate::procfs::open_fds(p.pid);
        let mut idle = timed_reloads(&mut p, env, s.reloads_per_point.div_ceil(2)).await?;
        let conns = crate::load::open_many(p.addr, &env.client, s.live_connections, 100)
            .await
            .context("live connections")?;
        let live = timed_reloads(&mut p, env, s.reloads_per_point).await;
        conns.into_iter().for_each(crate::load::abort);
        let live = live?;
        // The proxy has seen every connection end once it holds no more
        // descriptors than before they opened.
        let deadline = Instant::now() + Duration::from_secs(30);
        while crate::procfs::open_fds(p.pid) > fds {
            if Instant::now() > deadline {
                bail!(
                    "{} descriptors open 30 s after the connections closed, {fds} before",
                    crate::procfs::open_fds(p.pid)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        idle.extend(timed_reloads(&mut p, env, s.reloads_per_point.div_ceil(2)).await?);
        Ok((idle, live))
    }
    .await;
    p.stop().await;
    result
}

async fn with_certificates(env: &Env, ca: &Ca, s: &Settings) -> Result<(Vec<f64>, Vec<f64>)> {
    let dir = env.dir.join("many");
    std::fs::create_dir_all(&dir)?;
    let many: Vec<CertFiles> = (0..s.many_certificates.saturating_sub(1))
        .map(|i| {
            ca.leaf(
                &dir,
                &format!("m{i}"),
                &[format!("h{i}.{}", crate::tls::NAME)],
            )
        })
        .collect::<Result<_>>()?;
    let backend = env.backend_port;
    let mut one = Proxy::start(Kind::Stayup, env).await?;
    let first = timed_reloads(&mut one, env, s.reloads_per_point).await;
    one.stop().await;
    let first = first?;
    let yaml = |port: u16, which: usize| {
        let mut all: Vec<&CertFiles> = vec![&env.certs[which]];
        all.extend(many.iter());
        stayup_yaml(port, backend, &all, false)
    };
    let mut p = Proxy::start_stayup(env, "stayup-many", |port| yaml(port, 0)).await?;
    let port = p.addr.port();
    let result = async {
        let mut v = Vec::new();
        for i in 0..s.reloads_per_point + 2 {
            publish(&p.config, &yaml(port, (i + 1) % 2))?;
            let t = Instant::now();
            let a = crate::systems::control_reload(&p.dir.join("stayup.sock")).await?;
            if a.result != "committed" {
                bail!("reload answered {}", a.raw);
            }
            if i >= 2 {
                v.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(v)
    }
    .await;
    let _ = &mut p;
    p.stop().await;
    Ok((first, result?))
}
