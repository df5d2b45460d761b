//! What handlers share: the token verifier, the registry once recovery is
//! done, and whether the node still takes requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::watch;

use super::ApiError;
use crate::actor::registry::Registry;
use crate::auth::Verifier;

/// Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

struct StateInner {
    auth: Verifier,
    /// Set once recovery has finished; until then every `/items` route
    /// answers 503 `not_ready`.
    registry: OnceLock<Registry>,
    /// Cleared when the node stops taking writes (log failure, shutdown).
    accepting: AtomicBool,
    /// Set when the node is one of a cluster: owners it does not hold are
    /// answered 421 right after authentication.
    cluster: OnceLock<crate::cluster::Placement>,
    /// Turns true with `accepting` cleared: ends every change-feed stream.
    closing: watch::Sender<bool>,
}

impl AppState {
    pub fn new(auth: Verifier) -> Self {
        AppState {
            inner: Arc::new(StateInner {
                auth,
                registry: OnceLock::new(),
                accepting: AtomicBool::new(true),
                cluster: OnceLock::new(),
                closing: watch::Sender::new(false),
            }),
        }
    }

    /// Recovery finished: start serving `/items`.
    pub fn set_ready(&self, registry: Registry) {
        let _ = self.inner.registry.set(registry);
    }

    /// This node is one of a cluster (set before serving).
    pub fn set_cluster(&self, placement: crate::cluster::Placement) {
        let _ = self.inner.cluster.set(placement);
    }

    /// The cluster hook: Ok unless another node holds `owner` (421).
    pub(crate) fn check_owner(&self, owner: &crate::domain::OwnerId) -> Result<(), ApiError> {
        match self.inner.cluster.get() {
            Some(placement) => Ok(placement.check_owner(owner)?),
            None => Ok(()),
        }
    }

    /// Stop serving `/items` (503 `not_ready`): log failure or shutdown.
    pub fn stop_accepting(&self) {
        self.inner.accepting.store(false, Ordering::Release);
        self.inner.closing.send_replace(true);
    }

    /// Turns true when the node stops: open event streams end.
    pub(super) fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// `/readyz`: serving, and the token verifier has what it needs (a
    /// configured identity provider's keys were loaded at least once).
    pub fn is_ready(&self) -> bool {
        self.is_serving() && self.inner.auth.is_ready()
    }

    /// Recovered, the log alive, and not shutting down: the owner routes
    /// answer. Own tokens work before a provider's keys are loaded; a
    /// provider token then gets 503 `not_ready` from the verifier.
    pub(super) fn is_serving(&self) -> bool {
        let failed = self.inner.registry.get().is_none_or(Registry::log_failed);
        !failed && self.inner.accepting.load(Ordering::Acquire)
    }

    pub(super) fn registry(&self) -> Result<&Registry, ApiError> {
        self.inner.registry.get().ok_or(ApiError::NotReady)
    }

    pub(crate) fn auth(&self) -> &Verifier {
        &self.inner.auth
    }
}
