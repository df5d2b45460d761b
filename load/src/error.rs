//! `LoadError`: why a run could not start or its setup could not finish.
//!
//! Only setup fails. Once the measured phase starts, a request without a
//! reply is an observation (counted in the report, widening the check's
//! range), never an error, and a failed check is a report with
//! `passed: false`. A bug in this tool is a panic.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::contract::{OWNER_ID_BYTES_MAX, SECRET_BYTES_MIN};
use crate::setup::NAME_ATTEMPTS_MAX;

/// A setup failure, with what the operator needs to fix it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A flag outside its documented bound.
    #[error("{flag} must be {expected}")]
    Flag {
        flag: &'static str,
        /// The bound, e.g. `in [1, 4096], got 0`.
        expected: String,
    },
    /// Two flags that cannot be used together.
    #[error("{flag} cannot be combined with {with}: {why}")]
    Conflict {
        flag: &'static str,
        with: &'static str,
        why: &'static str,
    },
    #[error("invalid --url {url:?}")]
    UrlSyntax {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("--url {url:?} needs a scheme, e.g. http://127.0.0.1:8080")]
    UrlNoScheme { url: String },
    #[error("--url scheme {scheme:?} is not supported (plain http only)")]
    UrlScheme { scheme: String },
    #[error("--url {url:?} has no host")]
    UrlNoHost { url: String },
    #[error("--url must not carry a query string")]
    UrlQuery,
    #[error("cannot resolve {host:?}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("--url host resolved to no address")]
    NoAddress,
    /// The target is not loopback and `--allow-remote` was not given.
    #[error(
        "refusing non-loopback target {addr}: only 127.0.0.0/8 and ::1 are allowed \
         (pass --allow-remote to override)"
    )]
    NotLoopback { addr: SocketAddr },
    /// No `--jwt-secret` and no secret file: the server has not run here.
    #[error(
        "no --jwt-secret given and {} does not exist (start the server first)",
        path.display()
    )]
    NoSecret { path: PathBuf },
    #[error("reading {}", path.display())]
    SecretRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the JWT secret must be at least {SECRET_BYTES_MIN} bytes")]
    SecretTooShort,
    #[error("owner id {owner:?} must be 1-{OWNER_ID_BYTES_MAX} characters of [A-Za-z0-9._-]")]
    OwnerId { owner: String },
    #[error("signing a token")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// Setup could not connect: the server is not running at `--url`.
    #[error("setup: cannot connect to {addr} (is the server running?)")]
    Unreachable { addr: SocketAddr },
    #[error("setup: POST /items answered {status}: {body}")]
    SetupStatus { status: u16, body: String },
    #[error("setup: 201 body is not an item: {body}")]
    SetupBody {
        body: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("setup: server returned an id unsafe for a URL path: {id:?}")]
    UnsafeId { id: String },
    #[error("setup: could not create item {name:?} in {NAME_ATTEMPTS_MAX} attempts")]
    NamesExhausted { name: String },
    /// Writing or reading a history or report file.
    #[error("{}", path.display())]
    History {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
