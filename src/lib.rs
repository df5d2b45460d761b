//! CountIQ: an inventory service modeled as a state machine.
//!
//! # Layout
//! - `domain`: pure types and rules; `decide` and `evolve`; no tokio, no I/O.
//! - `storage`: record codec, WAL segments, commit pipeline, writer, snapshots, recovery.
//! - `sync`: std/loom shim for the primitives loom checks.

pub mod domain;
pub mod storage;
pub mod sync;
