//! Background triggers besides SIGHUP (the control socket, the watcher, the
//! admin endpoint). Each reads snapshots and asks the reloader; none writes
//! the current generation.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::proxy::ProxyContext;
use crate::reloader::ReloadHandle;

/// Starts the background triggers for `handle`. Cancel the token to stop them.
pub async fn start(
    handle: &ReloadHandle,
    ctx: &Arc<ProxyContext>,
) -> Result<CancellationToken, String> {
    let stop = CancellationToken::new();
    let config = handle.current().config.clone();
    let socket = crate::control::socket_path(&config);
    match crate::control::bind(&socket).await {
        Ok(listener) => {
            tracing::info!(socket = %socket.display(), "control socket ready");
            tokio::spawn(crate::control::serve(
                listener,
                socket,
                handle.clone(),
                ctx.clone(),
                stop.clone(),
            ));
        }
        Err(e @ crate::control::ControlError::InUse(_)) => return Err(e.to_string()),
        Err(e) => {
            tracing::warn!("{e}; `stayup reload` and `stayup status` will not reach this daemon")
        }
    }
    crate::watch::start(handle, stop.clone());
    Ok(stop)
}
