//! Background tasks besides SIGHUP: the control socket, the watcher, the
//! admin endpoint, metrics, expiry warnings and systemd notifications. Each
//! reads snapshots and asks the reloader; none writes the current
//! generation.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::ProxyContext;
use crate::reloader::{ReloadHandle, ReloadResult};

/// The running background tasks.
pub struct Background {
    /// Cancelled to stop every task.
    pub stop: CancellationToken,
    tasks: TaskTracker,
}

impl Background {
    /// Starts serving the control socket. Fails when a live daemon owns
    /// it. A process started by an upgrade (`take_over`) replaces the old
    /// process's socket, once the old one has stopped accepting.
    pub async fn start_control(
        &self,
        handle: &ReloadHandle,
        ctx: &Arc<ProxyContext>,
        take_over: bool,
    ) -> Result<(), String> {
        let socket = crate::control::socket_path(&handle.current().config);
        let bound = if take_over {
            crate::control::bind_over(&socket).await
        } else {
            crate::control::bind(&socket).await
        };
        let first = match bound {
            Ok(listener) => {
                tracing::info!(socket = %socket.display(), "control socket ready");
                Some((socket, listener))
            }
            Err(e @ crate::control::ControlError::InUse(_)) => return Err(e.to_string()),
            Err(e) => {
                tracing::warn!(
                    "{e}; `stayup reload` and `stayup status` will not reach this daemon"
                );
                None
            }
        };
        self.tasks.spawn(crate::control::run(
            first,
            handle.clone(),
            ctx.clone(),
            self.stop.clone(),
        ));
        Ok(())
    }

    /// Stops every task and waits until they are done (the control socket
    /// file is removed by then).
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.tasks.wait()).await;
    }
}

/// Starts the background tasks for `handle` but the control socket (see
/// [`Background::start_control`]). Fails when the admin address cannot be
/// bound. A process started by an upgrade uses the admin socket it was
/// handed.
pub async fn start(handle: &ReloadHandle, ctx: &Arc<ProxyContext>) -> Result<Background, String> {
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let config = handle.current().config.clone();

    // The admin address first: if it cannot be bound, nothing is left behind.
    let inherited_admin = config
        .admin
        .as_ref()
        .and_then(|a| ctx.upgrader.take_admin(a.listen));
    let admin_first = match &config.admin {
        Some(_) if inherited_admin.is_some() => inherited_admin,
        Some(a) => Some(crate::admin::bind(a.listen).await.map_err(|e| {
            format!(
                "{}: admin.listen {}: cannot bind: {e}",
                config.path.display(),
                a.listen
            )
        })?),
        None => None,
    };
    let metrics = crate::metrics::Metrics::start(handle, stop.clone());
    let state = Arc::new(crate::admin::AdminState {
        handle: handle.clone(),
        ctx: ctx.clone(),
        metrics,
    });
    tasks.spawn(crate::admin::run(state, admin_first, stop.clone()));
    tasks.spawn(crate::systemd::follow(handle, stop.clone()));
    crate::status::log_expiry_warnings(&handle.current());
    tasks.spawn(expiry_warnings(
        handle.subscribe(),
        handle.clone(),
        stop.clone(),
    ));
    crate::watch::start(handle, stop.clone());
    Ok(Background { stop, tasks })
}

/// Warns about certificates near their end after every commit and twice a
/// day in between (the first warning is logged by [`start`], before ready).
async fn expiry_warnings(
    mut outcomes: tokio::sync::broadcast::Receiver<crate::reloader::Outcome>,
    handle: ReloadHandle,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(12 * 3600)) => {}
            r = outcomes.recv() => match r {
                Ok(o) if o.result == ReloadResult::Committed => {}
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
        }
        crate::status::log_expiry_warnings(&handle.current());
    }
}
