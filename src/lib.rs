//! CountIQ: an inventory service modeled as a state machine.
//!
//! Every request is a transition `S' = f(S, input)` of one owner's namespace;
//! a rejected transition leaves the state exactly as it was. Dependencies
//! point inward: `http → actor → domain`, `actor → storage → domain`.
//!
//! # Layout
//! - `domain`: pure types and rules; `decide` and `evolve`; no tokio, no I/O.
//! - `actor`: one tokio task per owner, its handle, and the registry.
//! - `storage`: record codec, WAL segments, commit pipeline, writer, snapshots, recovery.
//! - `http`: `fn app(state) -> Router`, strict extractors, `ApiError`.
//! - `auth`: bearer tokens: own HS256 secrets (with rotation), an identity
//!   provider's JWKS, and the owner-claim mapping.
//! - `cluster`: the membership file, the owner ring (nginx's ketama), the proxy config, the data-dir guard.
//! - `node`: a running node without transport: recovery, log writer, registry, checkpointer.
//! - `server`: the accept loop, production layers, graceful shutdown.
//! - `telemetry`: the Prometheus recorder and request metrics.
//! - `sync`: std/loom shim for the primitives loom checks.

pub mod actor;
pub mod alloc_count;
pub mod auth;
pub mod cluster;
pub mod domain;
pub mod http;
pub mod node;
pub mod server;
pub mod storage;
pub mod sync;
pub mod telemetry;
