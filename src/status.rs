//! Read-only views of the running daemon, shared by `stayup status`, the
//! control socket and the admin endpoint.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::generation::Generation;
use crate::material::CertInfo;
use crate::proxy::ProxyContext;
use crate::reloader::{Outcome, ReloadHandle, ReloadResult};
use time::format_description::well_known::Rfc3339;

/// Formats Unix seconds as RFC 3339 UTC (`2026-11-24T19:02:44Z`).
pub fn format_unix(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// Formats a `SystemTime` as RFC 3339 UTC.
pub fn format_system_time(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format_unix(secs)
}

/// Whole days from `now` until `not_after` (negative once expired).
pub fn days_left(not_after: i64, now: std::time::SystemTime) -> i64 {
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    (not_after - now).div_euclid(86_400)
}

/// The certificates of `g` that end within its `warn_expiry` of `now`
/// (expired ones included).
pub fn expiring(g: &Generation, now: SystemTime) -> Vec<&CertInfo> {
    expiring_in(&g.certificates, g.config.warn_expiry, now)
}

/// The certificates among `certs` that end within `window` of `now`.
pub fn expiring_in(certs: &[CertInfo], window: Duration, now: SystemTime) -> Vec<&CertInfo> {
    let now = unix(now);
    let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
    certs
        .iter()
        .filter(|c| c.not_after.saturating_sub(now) <= window)
        .collect()
}

/// The warning line for a certificate near its end, as the log, status and
/// `stayup check` say it.
pub fn expiry_warning(c: &CertInfo, now: SystemTime) -> String {
    let days = days_left(c.not_after, now);
    let when = if c.not_after <= unix(now) {
        format!("expired on {}", format_unix(c.not_after))
    } else {
        format!("expires on {} ({days} days left)", format_unix(c.not_after))
    };
    format!(
        "listener {:?}: certificate {} ({}) {when}",
        c.listener,
        c.cert_path.display(),
        c.subject
    )
}

/// Logs a warning for every certificate of `g` within `warn_expiry`.
pub fn log_expiry_warnings(g: &Generation) {
    let now = SystemTime::now();
    for c in expiring(g, now) {
        tracing::warn!(
            generation = g.id,
            listener = %c.listener,
            sha256 = %c.fingerprint,
            "certificate near expiry: {}",
            expiry_warning(c, now)
        );
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The oldest superseded generation still alive, and how long it has been
/// draining (since the generation after it was committed, not since it was
/// loaded: a certificate served for a month has not been draining for a
/// month). What an operator watches to see a drain that never ends.
pub fn oldest_draining(
    live: &[Arc<Generation>],
    current: u64,
    history: &[Outcome],
    now: SystemTime,
) -> Option<(u64, Duration)> {
    let oldest = live
        .iter()
        .filter(|g| g.id != current)
        .min_by_key(|g| g.id)?;
    // When its successor was committed: from the history, else the load
    // time of the next generation still alive (never earlier than that).
    let superseded = history
        .iter()
        .find(|o| o.result == ReloadResult::Committed && o.generation == oldest.id + 1)
        .map(|o| o.at)
        .or_else(|| {
            live.iter()
                .filter(|g| g.id > oldest.id)
                .min_by_key(|g| g.id)
                .map(|g| g.loaded_at)
        })
        .unwrap_or(oldest.loaded_at);
    Some((
        oldest.id,
        now.duration_since(superseded).unwrap_or_default(),
    ))
}

/// The daemon's status as JSON: the live generation, its listeners and
/// certificates, every generation still alive with its connections, the
/// last reload outcomes, expiry warnings and files changed in place.
pub fn status_json(handle: &ReloadHandle, ctx: &ProxyContext) -> Value {
    let g = handle.current();
    let now = SystemTime::now();
    let bound = ctx.local_addrs();
    let listeners: Vec<Value> = g
        .listeners
        .iter()
        .map(|l| {
            let configured = g.config.listeners.iter().find(|c| c.name == l.name);
            json!({
                "name": l.name,
                "bind": l.bind.to_string(),
                // The address clients reach: differs from `bind` for port 0.
                "bound": bound.get(&l.bind).unwrap_or(&l.bind).to_string(),
                "backend": l.backend.to_string(),
                "backend_proxy_protocol": l.backend_proxy_protocol.to_string(),
                "client_auth": configured.is_some_and(|c| c.tls.client_ca.is_some()),
                "alpn": configured.map(|c| c.tls.alpn.clone()).unwrap_or_default(),
                "min_tls_version": configured.map(|c| c.tls.min_version.to_string()),
                // Empty: stayup's choice.
                "cipher_suites": configured.map(|c| c.tls.cipher_suites.clone()).unwrap_or_default(),
                // Empty: the default set.
                "groups": configured.map(|c| c.tls.groups.clone()).unwrap_or_default(),
                "connections": l.stats.open.load(Ordering::Relaxed),
            })
        })
        .collect();
    let warn_secs = i64::try_from(g.config.warn_expiry.as_secs()).unwrap_or(i64::MAX);
    let certificates: Vec<Value> = g
        .certificates
        .iter()
        .map(|c| {
            json!({
                "listener": c.listener,
                "path": c.cert_path.display().to_string(),
                "subject": c.subject,
                "sans": c.sans,
                "not_before": format_unix(c.not_before),
                "not_after": format_unix(c.not_after),
                "days_left": days_left(c.not_after, now),
                "expiring": c.not_after.saturating_sub(unix(now)) <= warn_secs,
                "sha256": c.fingerprint,
            })
        })
        .collect();
    let live = handle.shared.live_generations();
    let generations: Vec<Value> = live
        .iter()
        .map(|x| {
            json!({
                "generation": x.id,
                "live": x.id == g.id,
                "connections": x.connections(),
                "accepted": x.accepted(),
                "loaded_at": format_system_time(x.loaded_at),
                "trigger": x.trigger.as_str(),
                "age_seconds": now.duration_since(x.loaded_at).map(|d| d.as_secs()).unwrap_or(0),
            })
        })
        .collect();
    let outcomes = handle.history();
    let oldest = oldest_draining(&live, g.id, &outcomes, now);
    let history: Vec<Value> = outcomes
        .iter()
        .rev()
        .map(crate::control::outcome_json)
        .collect();
    let warnings: Vec<String> = expiring(&g, now)
        .into_iter()
        .map(|c| expiry_warning(c, now))
        .collect();
    let c = &ctx.counters;
    json!({
        "generation": g.id,
        "pid": std::process::id(),
        // Absolute, so `stayup reload` can tell whether a daemon found at a
        // fallback socket serves the file it was given.
        "config": std::path::absolute(&g.identity.config_path)
            .unwrap_or_else(|_| g.identity.config_path.clone())
            .display()
            .to_string(),
        "source_sha256": g.identity.config_hash(),
        "content_sha256": g.identity.digest(),
        "loaded_at": format_system_time(g.loaded_at),
        "trigger": g.trigger.as_str(),
        // The process an upgrade replaced, while it keeps its connections.
        "previous_process": ctx.upgrader.previous().map(|p| json!({
            "pid": p.pid,
            "connections": p.connections,
        })),
        "listeners": listeners,
        "certificates": certificates,
        "warn_expiry_days": g.config.warn_expiry.as_secs() as f64 / 86_400.0,
        "tcp_keepalive": tcp_keepalive_json(&g.config.tcp_keepalive),
        "tcp_user_timeout_ms": match g.config.tcp_keepalive.user_timeout.as_millis() {
            0 => Value::Null,
            ms => json!(ms as u64),
        },
        "expiry_warnings": warnings,
        "generations": generations,
        "generations_live": live.len(),
        "oldest_draining": oldest.map(|(id, age)| json!({
            "generation": id,
            "draining_seconds": age.as_secs(),
        })),
        "connections": {
            "active": ctx.total_open.load(Ordering::Relaxed),
            "handshakes_ok": c.handshakes_ok.load(Ordering::Relaxed),
            "handshakes_resumed": c.handshakes_resumed.load(Ordering::Relaxed),
            "handshakes_failed": c.handshakes_failed.load(Ordering::Relaxed),
            "handshake_timeouts": c.handshake_timeouts.load(Ordering::Relaxed),
            "backend_failures": c.backend_failures.load(Ordering::Relaxed),
            "refused_over_limit": c.refused_over_limit.load(Ordering::Relaxed),
            "drained": c.drained.load(Ordering::Relaxed),
        },
        "modified_in_place": handle
            .modified_in_place()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
        "last_reloads": history,
    })
}

fn tcp_keepalive_json(k: &crate::config::KeepaliveConfig) -> Value {
    if !k.enabled() {
        return Value::Null;
    }
    json!({
        "idle_seconds": k.idle.as_secs(),
        "interval_seconds": k.interval.as_secs(),
        "probes": k.probes,
    })
}

/// Prints a status answer for people.
pub fn print_status(s: &Value) {
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    println!(
        "generation {} (trigger {}, loaded {})",
        s.get("generation").and_then(Value::as_u64).unwrap_or(0),
        str_of(s, "trigger"),
        str_of(s, "loaded_at")
    );
    println!(
        "config     {} (sha256 {})",
        str_of(s, "config"),
        str_of(s, "source_sha256")
    );
    if let Some(pid) = s.get("pid").and_then(Value::as_u64) {
        println!("pid        {pid}");
    }
    if let Some(p) = s.get("previous_process").filter(|p| p.is_object()) {
        let pid = p.get("pid").and_then(Value::as_u64).unwrap_or(0);
        match p.get("connections").and_then(Value::as_u64) {
            Some(n) => {
                println!("previous   pid {pid} (upgraded from) keeps {n} open connection(s)")
            }
            None => println!("previous   pid {pid} (upgraded from) is draining"),
        }
    }
    let user_timeout = match s.get("tcp_user_timeout_ms").and_then(Value::as_u64) {
        Some(ms) => format!(
            "; user timeout {}",
            crate::config::format_duration(std::time::Duration::from_millis(ms))
        ),
        None => String::new(),
    };
    match s.get("tcp_keepalive") {
        Some(k) if k.is_object() => {
            let n = |key: &str| k.get(key).and_then(Value::as_u64).unwrap_or(0);
            println!(
                "keepalive  idle {}s, interval {}s, {} probes{user_timeout}",
                n("idle_seconds"),
                n("interval_seconds"),
                n("probes")
            );
        }
        Some(_) => println!("keepalive  off{user_timeout}"),
        None => {}
    }
    if let Some(c) = s.get("connections").filter(|c| c.is_object()) {
        let n = |key: &str| c.get(key).and_then(Value::as_u64).unwrap_or(0);
        println!(
            "handshakes {} ok ({} resumed), {} failed, {} timed out; connections {} open, {} backend failures, {} refused over a limit",
            n("handshakes_ok"),
            n("handshakes_resumed"),
            n("handshakes_failed"),
            n("handshake_timeouts"),
            n("active"),
            n("backend_failures"),
            n("refused_over_limit")
        );
    }
    for l in s
        .get("listeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let proxy_protocol = match str_of(l, "backend_proxy_protocol").as_str() {
            version @ ("v1" | "v2") => format!(" (PROXY protocol {version})"),
            _ => String::new(),
        };
        let tls13_only = if str_of(l, "min_tls_version") == "TLSv1.3" {
            " (TLS 1.3 only)"
        } else {
            ""
        };
        let (bind, bound) = (str_of(l, "bind"), str_of(l, "bound"));
        let address = if bound.is_empty() || bound == bind {
            bind
        } else {
            format!("{bind} (bound {bound})")
        };
        println!(
            "listener   {}: {address} -> {}{proxy_protocol}{tls13_only}",
            str_of(l, "name"),
            str_of(l, "backend")
        );
    }
    for c in s
        .get("certificates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!(
            "cert       {}: {} expires {} ({} days{}) sha256 {}",
            str_of(c, "listener"),
            str_of(c, "subject"),
            str_of(c, "not_after"),
            c.get("days_left").and_then(Value::as_i64).unwrap_or(0),
            if c.get("expiring").and_then(Value::as_bool).unwrap_or(false) {
                ", EXPIRING"
            } else {
                ""
            },
            str_of(c, "sha256")
        );
    }
    for g in s
        .get("generations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!(
            "gen        {}{}: {} connection(s)",
            g.get("generation").and_then(Value::as_u64).unwrap_or(0),
            if g.get("live").and_then(Value::as_bool).unwrap_or(false) {
                " (live)"
            } else {
                " (draining)"
            },
            g.get("connections").and_then(Value::as_u64).unwrap_or(0)
        );
    }
    if let Some(o) = s.get("oldest_draining").filter(|o| !o.is_null()) {
        println!(
            "draining   oldest generation {} for {}s",
            o.get("generation").and_then(Value::as_u64).unwrap_or(0),
            o.get("draining_seconds")
                .and_then(Value::as_u64)
                .unwrap_or(0)
        );
    }
    for w in s
        .get("expiry_warnings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        println!("WARNING    {w}");
    }
    for f in s
        .get("modified_in_place")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        println!(
            "WARNING    {f} changed in place since it was loaded; publish new files and rename the configuration into place instead"
        );
    }
    // The last few outcomes, newest first; the JSON has up to 32.
    for o in s
        .get("last_reloads")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .take(5)
    {
        let generation = o.get("generation").and_then(Value::as_u64).unwrap_or(0);
        println!(
            "reload     {} {} via {} (generation {generation}){}",
            str_of(o, "at"),
            str_of(o, "result"),
            str_of(o, "trigger"),
            o.get("reason")
                .and_then(Value::as_str)
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(1_795_000_000), "2026-11-18T11:06:40Z");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_400 * 10);
        assert_eq!(days_left(86_400 * 13 + 5, t), 3);
        assert_eq!(days_left(86_400 * 9, t), -1);
    }

    fn cert(not_after: i64) -> CertInfo {
        CertInfo {
            listener: "web".into(),
            cert_path: "/etc/stayup/web.pem".into(),
            subject: "CN=web".into(),
            sans: vec!["web.example".into()],
            not_before: 0,
            not_after,
            fingerprint: "ab".repeat(32),
        }
    }

    #[test]
    fn expiry_window() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000 * 86_400);
        let day = 86_400;
        let certs = [
            cert(1_000 * day + 13 * day),
            cert(1_000 * day + 14 * day),
            cert(1_000 * day + 15 * day),
            cert(999 * day),
        ];
        let window = Duration::from_secs(14 * 86_400);
        let hit: Vec<i64> = expiring_in(&certs, window, now)
            .iter()
            .map(|c| c.not_after)
            .collect();
        assert_eq!(hit, vec![1_013 * day, 1_014 * day, 999 * day]);
        let w = expiry_warning(&certs[0], now);
        assert!(w.contains("13 days left") && w.contains("web.pem"), "{w}");
        assert!(expiry_warning(&certs[3], now).contains("expired on"));
        assert!(expiring_in(&certs, Duration::ZERO, now).len() == 1);
    }
}
