//! The results file: the table, stayup against the best peer for every
//! target, the stayup-only figures, the ceiling, and an SVG chart.

use std::fmt::Write;

use crate::run::{Latency, Results, Settings, SystemResult};
use crate::stayup_only::Spread;

/// ("YYYY-MM-DD", "YYYY-MM-DD HH:MM UTC") for now.
pub fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    let date = format!("{y:04}-{mo:02}-{d:02}");
    (date.clone(), format!("{date} {h:02}:{m:02} UTC"))
}

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "–".into(),
    }
}

fn lat(l: &Option<Latency>) -> String {
    match l {
        Some(l) => format!("{:.0} / {:.0} / {:.0}", l.p50_us, l.p99_us, l.p999_us),
        None => "–".into(),
    }
}

fn spread(s: &Option<Spread>) -> String {
    match s {
        Some(s) if s.n > 0 => format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n = {})",
            s.p50_ms, s.p99_ms, s.max_ms, s.n
        ),
        _ => "–".into(),
    }
}

/// The best peer's value for a figure, and its name.
fn best(
    peers: &[&SystemResult],
    f: impl Fn(&SystemResult) -> Option<f64>,
    higher_is_better: bool,
) -> Option<(f64, &'static str)> {
    peers
        .iter()
        .filter_map(|s| f(s).filter(|v| v.is_finite()).map(|v| (v, s.name)))
        .reduce(|a, b| {
            if (b.0 > a.0) == higher_is_better {
                b
            } else {
                a
            }
        })
}

pub fn render(r: &Results, s: &Settings) -> (String, String) {
    let mut md = String::new();
    let w = &mut md;
    let mode = if s.smoke {
        "smoke (seconds-long; figures are not meaningful)"
    } else {
        "full"
    };
    let _ = writeln!(w, "# stayup benchmark, {}\n", r.date);
    let _ = writeln!(
        w,
        "Run {} ({mode}), {:.1} minutes. Kernel {} ({}), {}; load average {} before, {} after.\n",
        r.started,
        r.minutes,
        r.kernel,
        ulps(&r.tcp_ulps),
        r.cpu_model,
        r.load_before,
        r.load_after
    );
    if r.proxy_cpu == 0 {
        let _ = writeln!(
            w,
            "Only one CPU was available: the proxies shared it with the load generator and the backend.\n"
        );
    }
    let _ = writeln!(
        w,
        "Reproduce: `cargo run --release --manifest-path bench/Cargo.toml -- {}`\n",
        if s.smoke { "smoke" } else { "full" }
    );
    let _ = writeln!(w, "| system | version |\n| --- | --- |");
    for sys in &r.systems {
        let _ = writeln!(w, "| {} | {} |", sys.name, sys.version);
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(w, "\nNot installed, skipped: {}.", r.skipped.join(", "));
    }

    let _ = writeln!(w, "\n## Side by side\n");
    let _ = write!(w, "| figure |");
    for sys in &r.systems {
        let _ = write!(w, " {} |", sys.name);
    }
    let _ = write!(w, "\n| --- |");
    for _ in &r.systems {
        let _ = write!(w, " ---: |");
    }
    let _ = writeln!(w);
    let row = |w: &mut String, label: &str, f: &dyn Fn(&SystemResult) -> String| {
        let _ = write!(w, "| {label} |");
        for sys in &r.systems {
            let _ = write!(w, " {} |", f(sys));
        }
        let _ = writeln!(w);
    };
    row(w, "full handshakes / s", &|x| num(x.handshakes_per_s, 0));
    row(w, "handshakes per proxy CPU-second", &|x| {
        num(x.handshakes_per_cpu_s, 0)
    });
    row(w, "proxy CPU busy during handshakes", &|x| {
        x.handshake_cpu_share
            .map(|c| format!("{:.0}%", c * 100.0))
            .unwrap_or("–".into())
    });
    row(w, "connection time under that load, ms (p50 / p99)", &|x| {
        x.connection_time
            .map(|(a, b)| format!("{:.1} / {:.1}", a / 1e3, b / 1e3))
            .unwrap_or("–".into())
    });
    row(w, "handshake-load errors", &|x| {
        x.handshake_errors.to_string()
    });
    row(w, "TLS 1.3 session tickets sent per handshake", &|x| {
        num(x.tickets_per_handshake, 2)
    });
    row(w, "client offering OpenSSL's suites: suite chosen", &|x| {
        x.openssl_order_suite.clone().unwrap_or("–".into())
    });
    row(
        w,
        "client offering OpenSSL's suites: handshakes per proxy CPU-second",
        &|x| num(x.openssl_order_per_cpu_s, 0),
    );
    row(w, "bulk MB/s, one connection", &|x| num(x.bulk_mb_s, 0));
    row(w, "proxy CPU-seconds per GB", &|x| {
        num(x.bulk_cpu_s_per_gb, 3)
    });
    row(w, "echo RTT µs, 1 conn (p50 / p99 / p99.9)", &|x| {
        lat(&x.echo1)
    });
    row(w, "echo RTT µs, 50 conns (p50 / p99 / p99.9)", &|x| {
        lat(&x.echo50)
    });
    row(
        w,
        "echo RTT µs, 1 conn under the handshake load (p50 / p99 / p99.9)",
        &|x| lat(&x.echo1_loaded),
    );
    row(
        w,
        "proxy CPU busy during echo, 1 / 50 conns",
        &|x| match (&x.echo1, &x.echo50) {
            (Some(a), Some(b)) => {
                format!("{:.0}% / {:.0}%", a.cpu_share * 100.0, b.cpu_share * 100.0)
            }
            _ => "–".into(),
        },
    );
    row(
        w,
        "proxy involuntary context switches during echo, 1 / 50 conns",
        &|x| match (&x.echo1, &x.echo50) {
            (Some(a), Some(b)) => format!("{} / {}", a.preemptions, b.preemptions),
            _ => "–".into(),
        },
    );
    row(
        w,
        &format!("ΔRSS per idle connection, KiB (N = {})", s.idle_connections),
        &|x| num(x.idle_rss_kib, 1),
    );
    row(w, "ΔPSS per idle connection, KiB", &|x| {
        num(x.idle_pss_kib, 1)
    });
    let st = |x: &SystemResult, f: &dyn Fn(&crate::run::Storm) -> String| {
        x.storm.as_ref().map(f).unwrap_or("–".into())
    };
    row(w, "storm: reloads sent (failed)", &|x| {
        st(x, &|s| format!("{} ({})", s.reloads, s.reload_failures))
    });
    row(w, "storm: connect errors", &|x| {
        st(x, &|s| s.connect_errors.to_string())
    });
    row(w, "storm: handshake failures", &|x| {
        st(x, &|s| s.handshake_errors.to_string())
    });
    row(w, "storm: failures after the handshake", &|x| {
        st(x, &|s| s.data_errors.to_string())
    });
    row(w, "storm: long-lived connections answering", &|x| {
        st(x, &|s| format!("{}/{}", s.alive, s.long_lived))
    });
    row(w, "storm: handshakes/s vs own baseline", &|x| {
        st(x, &|s| {
            format!("{:.0}%", 100.0 * s.storm_per_s / s.baseline_per_s.max(1e-9))
        })
    });
    row(
        w,
        "storm: handshakes per proxy CPU-second vs own baseline",
        &|x| {
            st(x, &|s| {
                format!(
                    "{:.0}%",
                    100.0 * s.storm_per_cpu_s / s.baseline_per_cpu_s.max(1e-9)
                )
            })
        },
    );
    row(w, "storm: peak processes / peak RSS MiB", &|x| {
        st(x, &|s| {
            format!("{} / {:.0}", s.peak_processes, s.peak_rss_mib)
        })
    });
    let up = |x: &SystemResult, f: &dyn Fn(&crate::run::Upgrade) -> String| {
        x.upgrade.as_ref().map(f).unwrap_or("–".into())
    };
    row(w, "binary upgrade: how", &|x| up(x, &|u| u.how.to_string()));
    row(
        w,
        "binary upgrade: connect errors / handshake failures / after the handshake",
        &|x| {
            up(x, &|u| {
                format!(
                    "{} / {} / {}",
                    u.connect_errors, u.handshake_errors, u.data_errors
                )
            })
        },
    );
    row(
        w,
        "binary upgrade: long-lived connections answering",
        &|x| up(x, &|u| format!("{}/{}", u.alive, u.long_lived)),
    );
    row(
        w,
        "binary upgrade: longest stretch without a handshake, ms (before / during)",
        &|x| {
            up(x, &|u| {
                format!("{:.0} / {:.0}", u.gap_before_ms, u.gap_after_ms)
            })
        },
    );
    row(
        w,
        "binary upgrade: trigger to new process serving, ms",
        &|x| up(x, &|u| format!("{:.0}", u.took_ms)),
    );
    row(w, "binary upgrade: handshakes/s vs before", &|x| {
        up(x, &|u| format!("{:.0}%", 100.0 * u.rate_share))
    });

    // Targets.
    let stayup = r.systems.iter().find(|x| x.name == "stayup");
    let peers: Vec<&SystemResult> = r.systems.iter().filter(|x| x.name != "stayup").collect();
    let _ = writeln!(w, "\n## Targets: stayup against the best peer\n");
    let _ = writeln!(
        w,
        "| target | stayup | best peer | ratio | wanted | met |\n| --- | ---: | ---: | ---: | ---: | :---: |"
    );
    let target = |w: &mut String,
                  label: &str,
                  f: &dyn Fn(&SystemResult) -> Option<f64>,
                  higher: bool,
                  limit: f64,
                  decimals: usize| {
        let mine = stayup.and_then(f);
        let b = best(&peers, f, higher);
        let ratio = match (mine, b) {
            (Some(m), Some((v, _))) if v != 0.0 => Some(m / v),
            _ => None,
        };
        let met = ratio.map(|x| if higher { x >= limit } else { x <= limit });
        let _ = writeln!(
            w,
            "| {label} | {} | {} | {} | {} {limit}× | {} |",
            num(mine, decimals),
            b.map(|(v, n)| format!("{v:.decimals$} ({n})"))
                .unwrap_or("–".into()),
            ratio.map(|x| format!("{x:.2}×")).unwrap_or("–".into()),
            if higher { "≥" } else { "≤" },
            match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        );
    };
    target(
        w,
        "handshakes per proxy CPU-second",
        &|x| x.handshakes_per_cpu_s,
        true,
        2.5,
        0,
    );
    target(
        w,
        "proxy CPU-seconds per GB",
        &|x| x.bulk_cpu_s_per_gb,
        false,
        0.7,
        3,
    );
    target(
        w,
        "echo p99 µs, 1 connection",
        &|x| x.echo1.map(|l| l.p99_us),
        false,
        1.0,
        0,
    );
    target(
        w,
        "echo p99 µs, 50 connections",
        &|x| x.echo50.map(|l| l.p99_us),
        false,
        1.0,
        0,
    );
    target(
        w,
        "ΔRSS per idle connection, KiB",
        &|x| x.idle_rss_kib,
        false,
        0.6,
        1,
    );
    target(
        w,
        "ΔPSS per idle connection, KiB",
        &|x| x.idle_pss_kib,
        false,
        0.6,
        1,
    );
    let _ = writeln!(w);
    let loaded = |x: &SystemResult| x.echo1_loaded.map(|l| l.p99_us);
    if let (Some(mine), Some((peer, name))) = (stayup.and_then(loaded), best(&peers, loaded, false))
    {
        let _ = writeln!(
            w,
            "- Echo p99 over one connection while the handshake load runs (what a burst of new connections costs the open ones; no target): stayup {mine:.0} µs, the best peer {peer:.0} µs ({name}): {:.2}×.",
            mine / peer.max(1e-9)
        );
    }
    let typical = |x: &SystemResult| x.openssl_order_per_cpu_s;
    if let (Some(me), Some(mine), Some((peer, name))) = (
        stayup,
        stayup.and_then(typical),
        best(&peers, typical, true),
    ) {
        let suite = |n: &str| {
            r.systems
                .iter()
                .find(|x| x.name == n)
                .and_then(|x| x.openssl_order_suite.clone())
                .unwrap_or("?".into())
        };
        let _ = writeln!(
            w,
            "- Handshakes per proxy CPU-second with a client offering OpenSSL's TLS 1.3 suites in OpenSSL's order, each system choosing its own (no target): stayup {mine:.0} ({}), the best peer {peer:.0} ({name}, {}): {:.2}×.",
            suite(me.name),
            suite(name),
            mine / peer.max(1e-9)
        );
    }
    if let (Some(c), Some(me)) = (&r.ceiling, stayup) {
        let share = me.handshakes_per_cpu_s.map(|h| h / c.handshakes_per_cpu_s);
        let share_tickets = me
            .handshakes_per_cpu_s
            .map(|h| h / c.handshakes_per_cpu_s_tickets);
        let pct = |v: Option<f64>| {
            v.map(|x| format!("{:.0}%", x * 100.0))
                .unwrap_or("–".into())
        };
        let _ = writeln!(
            w,
            "- Handshakes per proxy CPU-second as a share of the in-memory ceiling: {} ({} of the ceiling with rustls's default two tickets; wanted ≥ 70%): {}.",
            pct(share),
            pct(share_tickets),
            share
                .map(|x| if x >= 0.7 { "met" } else { "**missed**" })
                .unwrap_or("–")
        );
        if let (Some(f), Some(me_hs)) = (
            r.floor.as_ref().and_then(|f| f.per_cpu_s),
            me.handshakes_per_cpu_s,
        ) {
            let us = |per_cpu_s: f64| 1e6 / per_cpu_s;
            let (floor_us, hs_us) = (us(f), us(c.handshakes_per_cpu_s));
            let floor_and_handshake = floor_us + hs_us;
            let bound = 1e6 / floor_and_handshake;
            let best_peer = best(&peers, |x| x.handshakes_per_cpu_s, true).map_or(0.0, |(v, _)| v);
            let (need_ceiling, need_peer) = (us(0.7 * c.handshakes_per_cpu_s), us(2.5 * best_peer));
            let verdict = match (
                need_ceiling < floor_and_handshake,
                best_peer > 0.0 && need_peer < floor_and_handshake,
            ) {
                (true, true) => "both less than the floor plus the handshake alone",
                (true, false) => "the first is less than the floor plus the handshake alone",
                (false, true) => "the second is less than the floor plus the handshake alone",
                (false, false) => "both within the floor plus the handshake",
            };
            if let Some(peer) = best_peer_cost_above_floor(&peers, f) {
                let mine = us(me_hs) - floor_us;
                let _ = writeln!(
                    w,
                    "- The TLS work alone, proxy CPU per connection above the plain-TCP floor: stayup {mine:.0} µs, the best peer {:.0} µs ({}): {:.2}× less; the in-memory server handshake ({hs_us:.0} µs) is {:.0}% of stayup's.",
                    peer.0,
                    peer.1,
                    peer.0 / mine.max(1e-9),
                    100.0 * hs_us / mine.max(1e-9)
                );
            }
            let _ = writeln!(
                w,
                "- The floor under both: nginx forwarding the same connections as plain TCP (no TLS) spends {floor_us:.0} µs of proxy CPU on each ({f:.0} per CPU-second): the kernel's TCP work on both sockets and an event loop. With the ceiling's {hs_us:.0} µs for the server's handshake on top, no proxy can do this test faster than {bound:.0} per CPU-second ({floor_and_handshake:.0} µs each); stayup does {me_hs:.0} ({:.0}% of that bound, {:.0} µs per connection more than it). 70% of the ceiling needs at most {need_ceiling:.0} µs per connection and 2.5× the best peer at most {need_peer:.0} µs: {verdict}.",
                100.0 * me_hs / bound,
                (us(me_hs) - floor_and_handshake).max(0.0),
            );
        }
        // Bytes per proxy CPU-second against bytes per CPU-second of bare decryption.
        let bulk = me.bulk_cpu_s_per_gb.map(|s| 1000.0 / s / c.decrypt_mb_s);
        let _ = writeln!(
            w,
            "- Bulk MB per proxy CPU-second as a share of rustls's in-memory AES-256-GCM decryption through a connection (MB per CPU-second): {}.",
            pct(bulk)
        );
        if let (Some(f), Some(mine)) = (r.bulk_floor, me.bulk_cpu_s_per_gb) {
            let decrypt = 1000.0 / c.aead_mb_s.max(1e-9);
            let bound = f + decrypt;
            let _ = writeln!(
                w,
                "- The floor under bulk: nginx forwarding the same upload as plain TCP (no TLS) spends {f:.3} proxy CPU-seconds per GB: the kernel's receive and send on both sockets and an event loop. With AES-256-GCM alone on top ({decrypt:.3} per GB, from the ceiling), a proxy doing nginx's socket work and decrypting in user space spends at least {bound:.3} per GB; stayup spends {mine:.3} ({:+.3}). (stayup's socket work can be less than nginx's: it reads and writes up to 64 KiB per system call.)",
                mine - bound
            );
            if let Some((peer, name)) = best(&peers, |x| x.bulk_cpu_s_per_gb, false) {
                let need = 0.7 * peer;
                let verdict = if need < f {
                    "less than the floor alone"
                } else if need < bound {
                    "less than the floor and AES-256-GCM alone"
                } else {
                    "more than the floor and AES-256-GCM alone"
                };
                let versus = if mine > f {
                    format!("{:.2}× less", (peer - f) / (mine - f))
                } else {
                    "stayup at or under the floor itself".into()
                };
                let _ = writeln!(
                    w,
                    "- The TLS work alone in bulk, proxy CPU-seconds per GB above the plain-TCP floor: stayup {:.3}, the best peer {:.3} ({name}): {versus}. 0.7× the best peer needs at most {need:.3} per GB: {verdict}.",
                    mine - f,
                    peer - f,
                );
            }
        }
    }
    if let Some(st) = stayup.and_then(|x| x.storm.as_ref()) {
        let errors = st.connect_errors + st.handshake_errors + st.data_errors + st.reload_failures;
        let share = st.storm_per_s / st.baseline_per_s.max(1e-9);
        let per_cpu = st.storm_per_cpu_s / st.baseline_per_cpu_s.max(1e-9);
        let ok = errors == 0 && st.alive == st.long_lived && share >= 0.95;
        let _ = writeln!(
            w,
            "- Reload storm: {errors} errors, {}/{} long-lived connections answering, {:.1}% of baseline handshakes/s ({:.1}% per proxy CPU-second) (wanted: 0, all, ≥ 95%): {}.",
            st.alive,
            st.long_lived,
            share * 100.0,
            per_cpu * 100.0,
            if ok { "met" } else { "**missed**" }
        );
    }
    let o = &r.stayup;
    if let (Some(a), Some(b)) = (&o.reload_idle, &o.reload_live) {
        let ratio = b.p50_ms / a.p50_ms.max(1e-9);
        let _ = writeln!(
            w,
            "- Reload with {} live connections vs none (median): {:.2}× (wanted ≤ 1.2×): {}.",
            o.live_connections,
            ratio,
            if ratio <= 1.2 { "met" } else { "**missed**" }
        );
    }
    if let Some(e) = &o.explicit {
        let _ = writeln!(
            w,
            "- Reload-to-effect p99, explicit: {:.1} ms (wanted ≤ 10 ms): {}.",
            e.p99_ms,
            if e.p99_ms <= 10.0 {
                "met"
            } else {
                "**missed**"
            }
        );
    }
    let limit = crate::systems::DEBOUNCE.as_secs_f64() * 1e3 + 20.0;
    match (&o.automatic, &o.automatic_note) {
        (Some(a), _) => {
            let _ = writeln!(
                w,
                "- Reload-to-effect p99, automatic: {:.1} ms (wanted ≤ debounce {} ms + 20 ms): {}.",
                a.p99_ms,
                crate::systems::DEBOUNCE.as_millis(),
                if a.p99_ms <= limit {
                    "met"
                } else {
                    "**missed**"
                }
            );
        }
        (None, Some(n)) => {
            let _ = writeln!(w, "- Reload-to-effect, automatic: {n}.");
        }
        _ => {}
    }

    let _ = writeln!(w, "\n## stayup only\n");
    let _ = writeln!(w, "| figure | value |\n| --- | --- |");
    let _ = writeln!(
        w,
        "| reload-to-effect, explicit (control socket) | {} |",
        spread(&o.explicit)
    );
    let _ = writeln!(
        w,
        "| reload-to-effect, automatic (rename into place, debounce {} ms) | {} |",
        crate::systems::DEBOUNCE.as_millis(),
        match (&o.automatic, &o.automatic_note) {
            (Some(_), _) => spread(&o.automatic),
            (None, Some(n)) => n.clone(),
            _ => "–".into(),
        }
    );
    let _ = writeln!(
        w,
        "| reload time, no live connection | {} |",
        spread(&o.reload_idle)
    );
    let _ = writeln!(
        w,
        "| reload time, {} live connections | {} |",
        o.live_connections,
        spread(&o.reload_live)
    );
    let _ = writeln!(
        w,
        "| reload time, 1 certificate | {} |",
        spread(&o.reload_one_cert)
    );
    let _ = writeln!(
        w,
        "| reload time, {} certificates | {} |",
        o.many_certificates,
        spread(&o.reload_many_certs)
    );
    for e in &o.errors {
        let _ = writeln!(w, "\nFailed: {e}");
    }

    if let Some(c) = &r.ceiling {
        let _ = writeln!(w, "\n## Ceiling: rustls in memory, one core\n");
        let _ = writeln!(w, "| figure | value |\n| --- | ---: |");
        let _ = writeln!(
            w,
            "| server handshakes per CPU-second, no tickets | {:.0} |",
            c.handshakes_per_cpu_s
        );
        let _ = writeln!(
            w,
            "| server handshakes per CPU-second, 2 TLS 1.3 tickets (rustls's default) | {:.0} |",
            c.handshakes_per_cpu_s_tickets
        );
        let _ = writeln!(
            w,
            "| AES-256-GCM decryption through a rustls connection, 16 KiB records, MB/s | {:.0} |",
            c.decrypt_mb_s
        );
        let _ = writeln!(
            w,
            "| AES-256-GCM alone: rustls's record decrypter opening 16 KiB records in place, MB/s | {:.0} |",
            c.aead_mb_s
        );
    }
    for sys in &r.systems {
        for e in &sys.errors {
            let _ = writeln!(w, "\nFailed ({}): {e}", sys.name);
        }
    }
    for e in &r.errors {
        let _ = writeln!(w, "\nFailed: {e}");
    }

    let _ = writeln!(w, "\n## Chart\n\n![chart](CHART_FILE)\n");
    let _ = writeln!(w, "{}", method(s));
    (md, svg(r))
}

fn method(s: &Settings) -> String {
    format!(
        "## Method\n\n\
- One machine, one run. Every proxy runs one worker pinned to CPU 1 (`taskset -c 1`, masters included; \
hitch pins its worker to CPU 0 itself, so the harness moves every thread of every proxy back to CPU 1 once it serves \
and after every reload); \
the load generator (Rust, tokio + rustls, single-threaded) and the plaintext backend (a separate process) run on CPU 0.\n\
- Equal configuration: TLS 1.3 only, one ECDSA P-256 certificate (the same file), TLS_AES_256_GCM_SHA384 and X25519 \
(the only suite and group the client offers), session cache and tickets off (stayup: `tls.session_resumption: false` and `tls.min_version: \"1.3\"`; \
nginx, HAProxy, hitch and stunnel: their own settings and an `OPENSSL_CONF` setting `NumTickets = 0` and \
`MinProtocol = TLSv1.3`), TCP keepalive off (the peers' default; stayup, which has it on by default, with `tcp_keepalive.idle: 0`); the tickets row of the table counts what each really sent. The client never resumes and \
does not verify certificates or signatures (so that it spends less CPU per handshake than the proxies).\n\
- Handshakes: {c} concurrent loops of connect, full handshake, one 64-byte echo through the backend, close \
(the backend closes first; the client resets, so no TIME_WAIT piles up), {hs:?} after a {wu:?} warm-up; the \
connection time is from the connect to the end of the echo, HdrHistogram. \
Proxy CPU is utime + stime (+ reaped children) of every process in the proxy's tree, from /proc. \
Then the same again with the client offering the TLS 1.3 suites of an OpenSSL 3 client (curl, Python, most drivers), \
in its order (TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256, TLS_AES_128_GCM_SHA256), and each system \
choosing among them as it would for such clients: the peers serve OpenSSL's default suites in their default \
preference.\n\
- Bulk: one connection uploading 64 KiB writes into a sink for {bulk:?}; MB/s counted at the backend.\n\
- Echo: 64-byte round trips, closed loop, over 1 and over 50 persistent connections, HdrHistogram; {rounds} round(s) \
of {echo:?} each, taken in turns with every proxy running (every system's first round, then every system's second, \
and so on), and each system's round with the median p99 is the one reported (its p50, p99 and p99.9): a slow spell of \
a shared machine falls on one round of every system, not on whichever system was measured during it. \
Under the handshake load: the same over 1 connection while the handshake test's {c} loops run, the echoes on a thread and runtime of their own (on CPU 0), so that they \
do not queue behind the load generator's own handshakes: what a burst of new connections costs the connections \
already open.\n\
- Memory: a fresh proxy process, {idle} connections opened (handshake plus one echo each), then idle for 1 s; \
ΔRSS and ΔPSS summed over the proxy's processes from /proc/PID/smaps_rollup, divided by {idle}.\n\
- Reload storm: a fresh proxy, {ll} long-lived connections, new-connection load as above; a reload every {iv:?} \
for {storm:?}, alternating between two certificates, with the baseline (no reloads) measured for {base:?} in two \
halves, one before the storm and one after it (so that a drift in the machine's other work cancels out), and the \
rate compared both per second and per proxy CPU-second. stayup reloads over \
its control socket and waits for the outcome; nginx and hitch and stunnel get SIGHUP, HAProxy (master-worker) SIGUSR2. \
Afterwards every long-lived connection must still echo.\n\
- Binary upgrade: a fresh proxy, {ll} long-lived connections, new-connection load as above for {ub:?}, then one \
binary upgrade the way the system documents it, and {ua:?} more of the load: stayup `stayup upgrade` (its control \
socket); nginx (run as a daemon for this part: a master in the foreground ignores the signal) USR2 and, once the new \
master has a worker, QUIT to the old master; HAProxy (master-worker) SIGUSR2, with which the master executes its \
binary again; hitch and stunnel, which have no binary upgrade, a restart (SIGTERM, start). Errors are counted from \
the trigger to the end; the longest stretch without a completed handshake is taken with a 1 ms sampler, before \
the trigger and from it to the end. Afterwards every long-lived connection must still echo.\n\
- stayup only: reload-to-effect is the time from the trigger to the end of the first handshake that presents the \
new certificate (a new certificate each rotation); reload time is the round trip of a control-socket reload, which \
answers when the reload has ended; the figure with no live connection pools the reloads before the live connections \
open and after the proxy has seen them all close.\n\
- Ceiling: rustls client and server in memory on CPU 1, the server with stayup's crypto provider (aws-lc-rs, and for SHA-384 suites stayup's key schedule over prepared HMAC keys), only the server's calls timed (thread CPU time); AES-256-GCM both through a connection (records read, decrypted and \
copied out by rustls's buffered API) and alone (rustls's record decrypter opening a record in place).\n\
- Floor: nginx's stream proxy without TLS (one worker on CPU 1) under the handshake test's load with plain TCP \
clients: connect, one 64-byte echo through the backend, close, {c} concurrent loops, {hs:?}; and under the bulk \
test's upload as plain TCP (the bulk floor).\n",
        c = s.concurrency,
        hs = s.handshake_time,
        wu = s.warmup,
        bulk = s.bulk_time,
        echo = s.echo_time,
        rounds = s.echo_rounds,
        idle = s.idle_connections,
        ll = s.long_lived,
        base = s.storm_baseline,
        iv = s.storm_interval,
        storm = s.storm_time,
        ub = s.upgrade_before,
        ua = s.upgrade_after,
    )
}

/// The peer whose proxy CPU per connection above the floor (handshakes per
/// CPU-second `floor`) is least: (µs, name).
fn best_peer_cost_above_floor(peers: &[&SystemResult], floor: f64) -> Option<(f64, &'static str)> {
    peers
        .iter()
        .filter_map(|x| Some((1e6 / x.handshakes_per_cpu_s? - 1e6 / floor, x.name)))
        .min_by(|a, b| a.0.total_cmp(&b.0))
}

/// Four panels of bars, one bar per system.
fn svg(r: &Results) -> String {
    type Getter = fn(&SystemResult) -> Option<f64>;
    let panels: [(&str, Getter, usize); 4] = [
        (
            "handshakes per proxy CPU-second (higher is better)",
            |x| x.handshakes_per_cpu_s,
            0,
        ),
        (
            "proxy CPU-seconds per GB (lower is better)",
            |x| x.bulk_cpu_s_per_gb,
            3,
        ),
        (
            "echo p99 µs, 50 connections (lower is better)",
            |x| x.echo50.map(|l| l.p99_us),
            0,
        ),
        (
            "KiB RSS per idle connection (lower is better)",
            |x| x.idle_rss_kib,
            1,
        ),
    ];
    let (pw, ph) = (420.0, 260.0);
    let width = pw * 2.0 + 30.0;
    let height = ph * 2.0 + 60.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="15" y="24" font-size="15" font-weight="bold">stayup benchmark, {} (one proxy core)</text>"#,
        r.date
    );
    for (i, (title, get, decimals)) in panels.iter().enumerate() {
        let ox = 15.0 + (i % 2) as f64 * (pw + 10.0);
        let oy = 45.0 + (i / 2) as f64 * (ph + 10.0);
        let _ = writeln!(
            s,
            r##"<rect x="{ox}" y="{oy}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-weight="bold">{}</text>"#,
            ox + 10.0,
            oy + 20.0,
            esc(title)
        );
        let vals: Vec<(&str, Option<f64>)> = r.systems.iter().map(|x| (x.name, get(x))).collect();
        let max = vals
            .iter()
            .filter_map(|v| v.1)
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let n = vals.len().max(1) as f64;
        let area_top = oy + 45.0;
        let area_h = ph - 80.0;
        let slot = (pw - 20.0) / n;
        for (j, (name, v)) in vals.iter().enumerate() {
            let x = ox + 10.0 + slot * j as f64 + slot * 0.15;
            let bw = slot * 0.7;
            let base = area_top + area_h;
            let colour = if *name == "stayup" {
                "#1f77b4"
            } else {
                "#999999"
            };
            if let Some(v) = v {
                let h = area_h * v / max;
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{bw:.1}" height="{h:.1}" fill="{colour}"/>"#,
                    base - h
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{v:.decimals$}</text>"#,
                    x + bw / 2.0,
                    base - h - 4.0
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x + bw / 2.0,
                base + 16.0,
                esc(name)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// What the kernel's TCP upper-layer protocols say about kernel TLS, the
/// one design that takes the copies out of the bulk test's path.
fn ulps(available: &str) -> String {
    let list = if available.is_empty() {
        "none"
    } else {
        available
    };
    let tls = if available.split_whitespace().any(|u| u == "tls") {
        "kernel TLS available"
    } else {
        "kernel TLS not loaded"
    };
    format!("TCP upper-layer protocols: {list}; {tls}")
}
