//! Read-only views of the running daemon, shared by `stayup status`, the
//! control socket and the admin endpoint.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::proxy::ProxyContext;
use crate::reloader::ReloadHandle;
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

/// The daemon's status as JSON: the live generation, its listeners and
/// certificates, every generation still alive with its connections, and the
/// last reload outcomes.
pub fn status_json(handle: &ReloadHandle, ctx: &ProxyContext) -> Value {
    let g = handle.current();
    let now = SystemTime::now();
    let listeners: Vec<Value> = g
        .listeners
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "bind": l.bind.to_string(),
                "backend": l.backend.to_string(),
                "client_auth": g.config.listeners.iter().any(|c| c.name == l.name && c.tls.client_ca.is_some()),
            })
        })
        .collect();
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
                "sha256": c.fingerprint,
            })
        })
        .collect();
    let generations: Vec<Value> = handle
        .shared
        .live_generations()
        .iter()
        .map(|x| {
            json!({
                "generation": x.id,
                "live": x.id == g.id,
                "connections": x.connections(),
                "accepted": x.accepted(),
                "loaded_at": format_system_time(x.loaded_at),
                "age_seconds": now.duration_since(x.loaded_at).map(|d| d.as_secs()).unwrap_or(0),
            })
        })
        .collect();
    let history: Vec<Value> = handle
        .history()
        .iter()
        .rev()
        .map(crate::control::outcome_json)
        .collect();
    let c = &ctx.counters;
    json!({
        "generation": g.id,
        "config": g.identity.config_path.display().to_string(),
        "source_sha256": g.identity.config_hash(),
        "content_sha256": g.identity.digest(),
        "loaded_at": format_system_time(g.loaded_at),
        "trigger": g.trigger.as_str(),
        "listeners": listeners,
        "certificates": certificates,
        "generations": generations,
        "connections": {
            "active": ctx.total_open.load(Ordering::Relaxed),
            "handshakes_ok": c.handshakes_ok.load(Ordering::Relaxed),
            "handshakes_failed": c.handshakes_failed.load(Ordering::Relaxed),
            "handshake_timeouts": c.handshake_timeouts.load(Ordering::Relaxed),
            "backend_failures": c.backend_failures.load(Ordering::Relaxed),
            "refused_over_limit": c.refused_over_limit.load(Ordering::Relaxed),
        },
        "last_reloads": history,
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
    for l in s
        .get("listeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!(
            "listener   {}: {} -> {}",
            str_of(l, "name"),
            str_of(l, "bind"),
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
            "cert       {}: {} expires {} ({} days) sha256 {}",
            str_of(c, "listener"),
            str_of(c, "subject"),
            str_of(c, "not_after"),
            c.get("days_left").and_then(Value::as_i64).unwrap_or(0),
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
    if let Some(last) = s
        .get("last_reloads")
        .and_then(Value::as_array)
        .and_then(|h| h.first())
    {
        println!(
            "last       {} via {} at {}{}",
            str_of(last, "result"),
            str_of(last, "trigger"),
            str_of(last, "at"),
            last.get("reason")
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
}
