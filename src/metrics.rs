//! Prometheus metrics, in the OpenMetrics text format.
//!
//! Almost everything is read from the live state at scrape time (the current
//! generation, the live generations, the proxy counters), so a metric can
//! never disagree with `stayup status`. Only what would otherwise be lost
//! is accumulated here: the count of reload outcomes by trigger and result
//! (the history keeps the last 32 only) and the time of the last success.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::generation::Trigger;
use crate::proxy::ProxyContext;
use crate::reloader::{Outcome, ReloadHandle, ReloadResult};

type Labels = Vec<(String, String)>;

/// What metrics accumulate between scrapes.
#[derive(Debug)]
pub struct Metrics {
    reloads: Family<Labels, Counter>,
    last_successful: Gauge,
    last_success: Gauge<f64, AtomicU64>,
    admin_requests: Family<Labels, Counter>,
}

impl Metrics {
    /// Counts every outcome of `handle`, the ones already in its history
    /// included, until `stop`.
    pub fn start(handle: &ReloadHandle, stop: CancellationToken) -> Arc<Metrics> {
        let metrics = Arc::new(Metrics {
            reloads: Family::default(),
            last_successful: Gauge::default(),
            last_success: Gauge::default(),
            admin_requests: Family::default(),
        });
        // Every combination exists from the start, so `rate()` and alerts
        // on `increase()` see the first rejection.
        for t in [
            Trigger::Signal,
            Trigger::Control,
            Trigger::Watch,
            Trigger::Poll,
        ] {
            for r in [
                ReloadResult::Committed,
                ReloadResult::Unchanged,
                ReloadResult::Rejected,
            ] {
                let _ = metrics.reloads.get_or_create(&labels(t, r));
            }
        }
        // Subscribe before reading the history so nothing falls in between;
        // outcomes already in the history are skipped by their time.
        let mut rx = handle.subscribe();
        let seen = handle.history();
        let last_seen = seen.last().map(|o| o.at);
        for o in &seen {
            metrics.count(o);
        }
        let m = metrics.clone();
        tokio::spawn(async move {
            loop {
                let o = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = rx.recv() => match r {
                        Ok(o) => o,
                        Err(RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "metrics fell behind the reload outcomes");
                            continue;
                        }
                        Err(RecvError::Closed) => break,
                    },
                };
                if last_seen.is_some_and(|t| o.at <= t) {
                    continue;
                }
                m.count(&o);
            }
        });
        metrics
    }

    fn count(&self, o: &Outcome) {
        self.reloads
            .get_or_create(&labels(o.trigger, o.result))
            .inc();
        match o.result {
            ReloadResult::Rejected => {
                self.last_successful.set(0);
            }
            ReloadResult::Committed | ReloadResult::Unchanged => {
                self.last_successful.set(1);
                self.last_success.set(unix_f64(o.at));
            }
        }
    }

    /// Counts one admin HTTP request by path (unknown paths as `other`).
    pub fn admin_request(&self, path: &str) {
        self.admin_requests
            .get_or_create(&vec![("path".to_string(), path.to_string())])
            .inc();
    }

    /// The metrics text for one scrape.
    pub fn render(&self, handle: &ReloadHandle, ctx: &ProxyContext) -> String {
        let mut r = Registry::default();
        let g = handle.current();
        let now = SystemTime::now();

        let gauge = |v: i64| {
            let x: Gauge = Gauge::default();
            x.set(v);
            x
        };
        r.register(
            "stayup_generation",
            "The generation serving new connections",
            gauge(g.id as i64),
        );
        r.register(
            "stayup_reloads",
            "Reload outcomes by trigger and result",
            self.reloads.clone(),
        );
        r.register(
            "stayup_last_reload_successful",
            "1 if the last reload committed or found nothing to change, 0 if it was rejected",
            self.last_successful.clone(),
        );
        r.register(
            "stayup_last_reload_success_timestamp_seconds",
            "When a reload last committed or found nothing to change (Unix time)",
            self.last_success.clone(),
        );
        r.register(
            "stayup_connections_active",
            "Open client connections over every generation",
            gauge(ctx.total_open.load(Ordering::Relaxed) as i64),
        );
        let live = handle.shared.live_generations();
        let by_gen: Family<Labels, Gauge> = Family::default();
        for x in &live {
            by_gen
                .get_or_create(&vec![("generation".to_string(), x.id.to_string())])
                .set(x.connections() as i64);
        }
        r.register(
            "stayup_connections_by_generation",
            "Open client connections per generation",
            by_gen,
        );
        r.register(
            "stayup_generations_live",
            "Generations alive: the serving one and those still draining",
            gauge(live.len() as i64),
        );
        let oldest: Gauge<f64, AtomicU64> = Gauge::default();
        if let Some((_, age)) = crate::status::oldest_draining(&live, g.id, &handle.history(), now)
        {
            oldest.set(age.as_secs_f64());
        }
        r.register(
            "stayup_oldest_draining_generation_age_seconds",
            "How long the oldest superseded generation still alive has been draining (0 when none)",
            oldest,
        );
        r.register(
            "stayup_previous_process_connections",
            "Open connections of the process an upgrade replaced, while it drains (0 when none)",
            gauge(
                ctx.upgrader
                    .previous()
                    .and_then(|p| p.connections)
                    .map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            ),
        );
        let not_after: Family<Labels, Gauge> = Family::default();
        for c in &g.certificates {
            not_after
                .get_or_create(&vec![
                    ("listener".to_string(), c.listener.clone()),
                    ("fingerprint".to_string(), c.fingerprint.clone()),
                ])
                .set(c.not_after);
        }
        r.register(
            "stayup_certificate_not_after_seconds",
            "End of validity of each served certificate (Unix time)",
            not_after,
        );
        let handshakes: Family<Labels, Counter> = Family::default();
        let resumed: Family<Labels, Counter> = Family::default();
        let bytes: Family<Labels, Counter> = Family::default();
        let ended: Family<Labels, Counter> = Family::default();
        for (name, c) in handle.shared.all_listener_stats() {
            for (end, v) in crate::proxy::END_KINDS.iter().zip(&c.ended) {
                ended
                    .get_or_create(&vec![
                        ("listener".to_string(), name.clone()),
                        ("end".to_string(), end.to_string()),
                    ])
                    .inc_by(v.load(Ordering::Relaxed));
            }
            resumed
                .get_or_create(&vec![("listener".to_string(), name.clone())])
                .inc_by(c.handshakes_resumed.load(Ordering::Relaxed));
            for (result, v) in [
                ("ok", &c.handshakes_ok),
                ("failed", &c.handshakes_failed),
                ("timeout", &c.handshake_timeouts),
            ] {
                handshakes
                    .get_or_create(&vec![
                        ("listener".to_string(), name.clone()),
                        ("result".to_string(), result.to_string()),
                    ])
                    .inc_by(v.load(Ordering::Relaxed));
            }
            for (direction, v) in [
                ("from_client", &c.bytes_from_clients),
                ("to_client", &c.bytes_to_clients),
            ] {
                bytes
                    .get_or_create(&vec![
                        ("listener".to_string(), name.clone()),
                        ("direction".to_string(), direction.to_string()),
                    ])
                    .inc_by(v.load(Ordering::Relaxed));
            }
        }
        r.register(
            "stayup_handshakes",
            "TLS handshakes by listener and result",
            handshakes,
        );
        r.register(
            "stayup_handshakes_resumed",
            "Of the successful TLS handshakes, those that resumed a session (by ticket or session ID)",
            resumed,
        );
        r.register(
            "stayup_bytes",
            "Bytes proxied by listener and direction, counted when a connection ends",
            bytes,
        );
        r.register(
            "stayup_connections_ended",
            "Connections that ended, by listener and how they ended (as the connection log names it)",
            ended,
        );
        r.register(
            "stayup_backend_failures",
            "Backend connections that failed or timed out",
            counter(ctx.counters.backend_failures.load(Ordering::Relaxed)),
        );
        r.register(
            "stayup_connections_refused",
            "Connections refused because a connection limit was reached",
            counter(ctx.counters.refused_over_limit.load(Ordering::Relaxed)),
        );
        r.register(
            "stayup_referenced_files_changed",
            "Referenced files of the serving generation changed in place since they were loaded",
            gauge(handle.modified_in_place().len() as i64),
        );
        r.register(
            "stayup_certificates_expiring",
            "Served certificates within warn_expiry of their end",
            gauge(crate::status::expiring(&g, now).len() as i64),
        );
        r.register(
            "stayup_admin_requests",
            "Admin HTTP requests by path",
            self.admin_requests.clone(),
        );
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &r) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

fn counter(v: u64) -> Counter {
    let c: Counter = Counter::default();
    c.inc_by(v);
    c
}

fn labels(t: Trigger, r: ReloadResult) -> Labels {
    vec![
        ("trigger".to_string(), t.as_str().to_string()),
        ("result".to_string(), r.as_str().to_string()),
    ]
}

fn unix_f64(t: SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
