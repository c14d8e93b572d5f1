//! systemd readiness and reload notifications (`Type=notify-reload`).
//!
//! `READY=1` once the first generation serves. Then, for every reload an
//! operator or systemd asked for, `RELOADING=1` with the `MONOTONIC_USEC`
//! at which the reload started, followed by `READY=1` with `STATUS=` the
//! outcome line, a rejected reload included: the old generation keeps
//! serving, so the service is ready again, and `systemctl status` shows why
//! the reload did not take. Unchanged outcomes of the watcher and the poll
//! are not reported: nothing happened that systemd needs to know about.
//!
//! Without `NOTIFY_SOCKET` every call is a no-op, so this runs everywhere.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::generation::Trigger;
use crate::reloader::{Outcome, ReloadHandle, ReloadResult};

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Tells systemd the daemon serves (after the first commit). A process
/// started by an upgrade (`upgraded`) also says it is the service's main
/// process now (needs `NotifyAccess=all`: systemd did not start it).
pub fn ready(handle: &ReloadHandle, upgraded: bool) {
    let g = handle.current();
    let status = if upgraded {
        format!("serving generation {} (upgraded)", g.id)
    } else {
        format!("serving generation {}", g.id)
    };
    let main = upgraded.then(|| NotifyState::MainPid(std::process::id()));
    let states: Vec<NotifyState> = main
        .into_iter()
        .chain([NotifyState::Ready, NotifyState::Status(&status)])
        .collect();
    send(&states);
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Reports every reload outcome of `handle` until `stop`. Subscribes
/// before returning, so no outcome after this call is missed (systemd waits
/// for an answer to every SIGHUP it sends).
pub fn follow(handle: &ReloadHandle, stop: CancellationToken) -> impl Future<Output = ()> + use<> {
    let mut rx = handle.subscribe();
    async move {
        loop {
            let o = tokio::select! {
                _ = stop.cancelled() => break,
                r = rx.recv() => match r {
                    Ok(o) => o,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                },
            };
            if o.result == ReloadResult::Unchanged
                && matches!(o.trigger, Trigger::Watch | Trigger::Poll)
            {
                continue;
            }
            report(&o);
        }
    }
}

fn report(o: &Outcome) {
    // The reload began `duration` ago; systemd compares this timestamp with
    // the time it sent SIGHUP to know the reload answers its request.
    let started = match NotifyState::monotonic_usec_now() {
        Ok(NotifyState::MonotonicUsec(now)) => {
            let took =
                i128::try_from(o.duration.min(Duration::from_secs(3600)).as_micros()).unwrap_or(0);
            NotifyState::MonotonicUsec(now - took)
        }
        Ok(other) => other,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the monotonic clock for systemd");
            return;
        }
    };
    send(&[NotifyState::Reloading, started]);
    let summary = o.summary();
    // STATUS= is one line; a rejection reason may not be.
    let line = summary.replace('\n', " ");
    send(&[NotifyState::Ready, NotifyState::Status(&line)]);
}
