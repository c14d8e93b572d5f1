//! The admin HTTP endpoint (`admin.listen`): `/metrics`, `/status`,
//! `/healthz`, `/readyz` and `/`, a small status page.
//!
//! It only reads snapshots. The address follows reloads: a committed
//! generation with another `admin.listen` (or none) moves (or closes) the
//! endpoint; if the new address cannot be bound, the old endpoint keeps
//! serving and a warning says why. Non-loopback addresses are refused by
//! the configuration unless `admin.allow_remote: true`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::proxy::ProxyContext;
use crate::reloader::{ReloadHandle, ReloadResult};

/// What every admin request reads.
pub struct AdminState {
    pub handle: ReloadHandle,
    pub ctx: Arc<ProxyContext>,
    pub metrics: Arc<Metrics>,
}

/// Binds `addr` for the admin endpoint.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the admin endpoint of the current generation, following
/// `admin.listen` through reloads, until `stop`. `first` is the listener
/// already bound for the current generation (bound by the caller so a
/// start-up failure can stop the daemon).
pub fn run(
    state: Arc<AdminState>,
    first: Option<TcpListener>,
    stop: CancellationToken,
) -> impl Future<Output = ()> {
    // Subscribed now, not when the task first runs: no commit is missed.
    let outcomes = state.handle.subscribe();
    follow_address(state, first, stop, outcomes)
}

async fn follow_address(
    state: Arc<AdminState>,
    first: Option<TcpListener>,
    stop: CancellationToken,
    mut outcomes: tokio::sync::broadcast::Receiver<crate::reloader::Outcome>,
) {
    let mut current: Option<(SocketAddr, CancellationToken)> = None;
    if let Some(l) = first {
        current = start_serving(&state, l, &stop);
    }
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            r = outcomes.recv() => match r {
                Ok(o) => Some(o),
                Err(RecvError::Lagged(_)) => None,
                Err(RecvError::Closed) => break,
            },
        };
        if outcome.is_some_and(|o| o.result != ReloadResult::Committed) {
            continue;
        }
        let wanted = state
            .handle
            .current()
            .config
            .admin
            .as_ref()
            .map(|a| a.listen);
        let have = current.as_ref().map(|(a, _)| *a);
        if wanted == have {
            continue;
        }
        match wanted {
            None => {
                state.ctx.upgrader.record_admin(None);
                if let Some((addr, token)) = current.take() {
                    tracing::info!(addr = %addr, "admin endpoint closed");
                    token.cancel();
                }
            }
            Some(addr) => match bind(addr).await {
                Ok(l) => {
                    if let Some((_, token)) = current.take() {
                        token.cancel();
                    }
                    current = start_serving(&state, l, &stop);
                }
                Err(e) => tracing::warn!(
                    addr = %addr,
                    error = %e,
                    "cannot bind the new admin.listen; the admin endpoint stays where it was"
                ),
            },
        }
    }
    if let Some((_, token)) = current {
        token.cancel();
    }
}

fn start_serving(
    state: &Arc<AdminState>,
    listener: TcpListener,
    stop: &CancellationToken,
) -> Option<(SocketAddr, CancellationToken)> {
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "admin endpoint has no local address");
            return None;
        }
    };
    let configured = state
        .handle
        .current()
        .config
        .admin
        .as_ref()
        .map(|a| a.listen)
        .unwrap_or(addr);
    tracing::info!(addr = %addr, "admin endpoint listening");
    state
        .ctx
        .upgrader
        .record_admin(Some((configured, std::os::fd::AsFd::as_fd(&listener))));
    let token = stop.child_token();
    tokio::spawn(accept_loop(state.clone(), listener, token.clone()));
    Some((configured, token))
}

async fn accept_loop(state: Arc<AdminState>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &req)) }
            });
            // A client that never finishes its headers does not hold a
            // task for ever.
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "admin connection ended");
                    }
                }
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(path, "/" | "/metrics" | "/status" | "/healthz" | "/readyz");
    state
        .metrics
        .admin_request(if known { path } else { "other" });
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match path {
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.render(&state.handle, &state.ctx),
        ),
        "/status" => respond(
            StatusCode::OK,
            "application/json",
            crate::status::status_json(&state.handle, &state.ctx).to_string() + "\n",
        ),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if state.ctx.stop_accepting.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
            } else {
                let g = state.handle.current();
                text(StatusCode::OK, &format!("ready: generation {}\n", g.id))
            }
        }
        "/" => respond(StatusCode::OK, "text/html; charset=utf-8", PAGE.to_string()),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body.to_string())
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The status page: static HTML whose script reads `/status` every two
/// seconds and redraws, so it needs nothing but this endpoint.
const PAGE: &str = include_str!("admin_page.html");
