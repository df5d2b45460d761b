//! `countiq serve`: bind, recover, serve HTTP, shut down cleanly.
//!
//! The listener is bound before recovery so that `/healthz` answers at once
//! and `/readyz` tells when recovery is done. Shutdown (SIGTERM, Ctrl-C):
//! stop accepting, let in-flight requests finish (bounded), write the final
//! snapshot, make the log durable, exit 0. A log failure stops the node with
//! a non-zero exit; restart recovers from what is durable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, Request, StatusCode};
use axum::Router;
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::actor::SystemClock;
use crate::auth::Auth;
use crate::http::{app, AppState, REQUEST_TIMEOUT};
use crate::node::{Node, NodeConfig};

/// How long graceful shutdown waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ServeConfig {
    pub addr: SocketAddr,
    pub node: NodeConfig,
    pub jwt_secret: Vec<u8>,
}

/// How the server stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Signal: drained, snapshotted, log closed.
    Gracefully,
    /// The log failed: nothing more was acknowledged.
    LogFailed(String),
}

/// The router with the production layers: request id (taken from
/// `x-request-id` or generated, and echoed), a span per request, a
/// whole-request timeout.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    app(state)
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
                let route = req
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "unmatched".into());
                tracing::info_span!("request", request_id = %id, method = %req.method(), route = %route,
                    owner = tracing::field::Empty)
            }),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// Run until `shutdown` resolves (in the binary: SIGTERM or Ctrl-C) or the
/// log fails.
pub async fn serve(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Stopped> {
    let state = AppState::new(Auth::new(&config.jwt_secret));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop_http = stop_rx.clone();
    let http = axum::serve(listener, router(state.clone())).with_graceful_shutdown(async move {
        let _ = stop_http.wait_for(|stop| *stop).await;
    });
    let http = tokio::spawn(async move { http.await });

    let node = Node::open(config.node, Box::new(SystemClock)).await?;
    state.set_ready(node.registry().clone());
    tracing::info!(addr = %config.addr, "ready");

    let mut fatal = node.fatal();
    let stopped = tokio::select! {
        _ = shutdown => Stopped::Gracefully,
        reason = fatal.wait_for(Option::is_some) => {
            Stopped::LogFailed(reason.map(|r| r.clone().unwrap_or_default()).unwrap_or_default())
        }
    };
    state.stop_accepting();
    let _ = stop_tx.send(true);
    match tokio::time::timeout(DRAIN_TIMEOUT, http).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server error while draining"),
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!("in-flight requests did not finish within {DRAIN_TIMEOUT:?}"),
    }
    if let Stopped::LogFailed(reason) = &stopped {
        tracing::error!(%reason, "stopping after a log failure");
        return Ok(stopped);
    }
    shutdown_node(node).await?;
    Ok(stopped)
}

async fn shutdown_node(node: Arc<Node>) -> anyhow::Result<()> {
    node.shutdown().await?;
    tracing::info!("stopped: final snapshot written, log closed");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Default data directory (API.md): `./data`.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
