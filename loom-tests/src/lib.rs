//! loom models of CountIQ's own synchronisation primitives.
//!
//! This crate does not depend on `countiq`: loom cannot see inside tokio or
//! DashMap, and tokio itself does not compile as a dependency under
//! `--cfg loom`. Instead the primitive source files are compiled here by
//! `#[path]`, next to a crate-root module named `sync` that maps the names of
//! `countiq::sync` to loom's types. So `crate::sync` inside those files
//! resolves to loom here and to std in the service: loom checks the real
//! code, not a copy. The models are in `tests/`; run them with
//! `cargo test -p loom-tests --release` (no RUSTFLAGS, no cfg).

/// The loom side of `src/sync.rs`: the same names, loom's types.
pub mod sync {
    pub use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    pub use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
}

/// The group-commit core, compiled from the service's own source.
#[path = "../../src/storage/pipeline.rs"]
pub mod pipeline;

/// The owner activation/parking protocol, compiled from the service's own
/// source.
#[path = "../../src/actor/slot.rs"]
pub mod slot;
