//! `countiq serve`: bind, recover, serve HTTP, shut down cleanly.
//!
//! The listener is bound before recovery so that `/healthz` answers at once
//! and `/readyz` tells when recovery is done. Shutdown (SIGTERM, Ctrl-C):
//! stop accepting, let in-flight requests finish (bounded), write the final
//! snapshot, make the log durable, exit 0. A log failure stops the node with
//! a non-zero exit; restart recovers from what is durable.
//!
//! Connections are served by our own accept loop on hyper-util, because
//! `axum::serve` has no header-read timeout (slowloris) and no connection
//! bound. Bounds: `CONNECTIONS_MAX` open connections (more are closed on
//! accept), `HEADER_READ_TIMEOUT` to send a request head, `IN_FLIGHT_MAX`
//! requests in handlers (more are shed with 503 `overloaded` at once, before
//! they take memory; `http::front`), `BODY_READ_TIMEOUT` to send a request
//! body once the head is in (408; `http::extract`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::actor::SystemClock;
use crate::auth::Verifier;
use crate::cluster::{self, Placement};
use crate::http::{app, AppState};
use crate::node::{Node, NodeConfig, NodeError};
use crate::telemetry;

/// How long graceful shutdown waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections at most; further ones are closed as they are accepted.
pub const CONNECTIONS_MAX: usize = 4096;
/// A client has this long to send a complete request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ServeConfig {
    pub addr: SocketAddr,
    pub node: NodeConfig,
    pub jwt_secret: Vec<u8>,
}

/// How the server stopped.
#[derive(Debug)]
pub enum Stopped {
    /// Signal: drained, snapshotted, log closed.
    Gracefully,
    /// The log failed (the writer's I/O error): nothing more was
    /// acknowledged.
    LogFailed(Arc<std::io::Error>),
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The data directory belongs to another cluster membership.
    #[error(transparent)]
    Cluster(#[from] cluster::GuardError),
}

/// Run until `shutdown` resolves (in the binary: SIGTERM or Ctrl-C) or the
/// log fails, accepting own HS256 tokens signed with `config.jwt_secret`.
pub async fn serve(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Stopped, ServeError> {
    let auth = Verifier::new(&config.jwt_secret);
    serve_with(config, auth, None, listener, shutdown).await
}

/// `serve` as one node of a cluster (`Some`): owners it does not hold are
/// answered 421, and it refuses to start over a data directory written
/// under another membership (`cluster::check_data_dir`).
pub async fn serve_in_cluster(
    config: ServeConfig,
    cluster: Option<Placement>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Stopped, ServeError> {
    let auth = Verifier::new(&config.jwt_secret);
    serve_with(config, auth, cluster, listener, shutdown).await
}

/// `serve` with any token verifier (own secrets with rotation, an identity
/// provider; `config.jwt_secret` is then not used) and, if `cluster` is
/// given, as one node of a cluster. The verifier's key refresh runs until
/// shutdown.
pub async fn serve_with(
    config: ServeConfig,
    auth: Verifier,
    cluster: Option<Placement>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Stopped, ServeError> {
    telemetry::install();
    crate::http::request_metrics::register();
    let state = AppState::new(auth.clone());
    if let Some(placement) = &cluster {
        state.set_cluster(placement.clone());
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    auth.spawn_refresh(stop_rx.clone());
    let http = tokio::spawn(accept_loop(listener, app(state.clone()), stop_rx.clone()));

    let data_dir = config.node.data_dir.clone();
    let node = Node::open(config.node, Box::new(SystemClock)).await?;
    // Before readiness: nothing has been served from this data yet. On a
    // refusal, close what was opened (the listener, the log and its lock;
    // the final snapshot holds the recovered state unchanged) and fail.
    if let Err(refused) =
        cluster::check_data_dir(&data_dir, cluster.as_ref(), &node.registry().owners())
    {
        let _ = stop_tx.send(true);
        let _ = http.await;
        node.shutdown().await?;
        return Err(refused.into());
    }
    state.set_ready(node.registry().clone());
    tokio::spawn(telemetry::sample_registry(node.registry().clone(), stop_rx));
    tracing::info!(addr = %config.addr, "ready");
    if let Some(why) = auth.not_ready_reason() {
        tracing::warn!(%why, "not serving tokens until the JWKS is loaded");
    }

    let mut fatal = node.fatal();
    let stopped = tokio::select! {
        _ = shutdown => Stopped::Gracefully,
        failed = fatal.wait_for(Option::is_some) => match failed.ok().and_then(|e| e.clone()) {
            Some(error) => Stopped::LogFailed(error),
            // The node (the sender) is gone without reporting: not here,
            // the node lives until this function returns.
            None => Stopped::LogFailed(Arc::new(std::io::Error::other("the log writer stopped"))),
        }
    };
    state.stop_accepting();
    let _ = stop_tx.send(true);
    if let Err(e) = http.await {
        tracing::warn!(error = %e, "HTTP accept loop failed");
    }
    if let Stopped::LogFailed(error) = &stopped {
        tracing::error!(%error, "stopping after a log failure");
        return Ok(stopped);
    }
    node.shutdown().await?;
    tracing::info!("stopped: final snapshot written, log closed");
    Ok(stopped)
}

/// Accept connections until `stop`, then drain them (bounded).
async fn accept_loop(listener: TcpListener, router: Router, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop_requested(&mut stop) => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("countiq_http_connections_refused_total").increment(1);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within {DRAIN_TIMEOUT:?}");
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
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
