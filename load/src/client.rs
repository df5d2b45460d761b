//! One virtual client's HTTP/1.1 keep-alive connection (hyper 1, no pool).
//!
//! Each virtual client owns exactly one connection, so what one connection
//! observes (e.g. versions strictly increasing) is meaningful. After any
//! transport failure the connection is dropped and re-dialled lazily on the
//! next request: an HTTP/1.1 connection whose reply was lost cannot be reused.

use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::target::Target;

/// Item, problem and transaction bodies are small; anything larger is a bug.
const RESPONSE_BYTES_MAX: usize = 1 << 20;

/// Why a request got no HTTP reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Could not (re)connect: the request was never sent, so it did not apply.
    Connect,
    /// No complete reply within the timeout: the outcome is unknown.
    Timeout,
    /// The connection broke after sending: the outcome is unknown.
    Io,
}

impl Failure {
    /// Stable name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Io => "io",
        }
    }

    /// Whether the server may have applied the request.
    pub fn outcome_unknown(self) -> bool {
        !matches!(self, Failure::Connect)
    }
}

/// A complete HTTP reply.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Bytes,
    /// `CountIQ-LSN`: the owner-wide log sequence number of the record that
    /// made a write durable (absent on reads, errors and older servers).
    pub lsn: Option<u64>,
    /// `Idempotent-Replayed: true`: this is a stored response replayed.
    pub replayed: bool,
}

/// Optional request headers of the contract.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extra {
    /// `Idempotency-Key`.
    pub key: Option<String>,
    /// `If-Match: "<version>"`.
    pub if_match: Option<u64>,
}

/// Response header carrying the owner-wide LSN (docs/API.md).
pub(crate) const LSN_HEADER: &str = "countiq-lsn";
/// Response header marking a replayed idempotent response.
const REPLAYED_HEADER: &str = "idempotent-replayed";

/// A live connection; its driver task is aborted when dropped.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One virtual client: a target, a timeout and at most one connection.
pub(crate) struct Client {
    target: Target,
    timeout: Duration,
    conn: Option<Conn>,
}

impl Client {
    pub fn new(target: Target, timeout: Duration) -> Self {
        Client {
            target,
            timeout,
            conn: None,
        }
    }

    /// This client's default timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The socket address this client dials.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.target.addr
    }

    /// Sends one request and reads the whole reply, within the timeout.
    pub async fn request(
        &mut self,
        method: Method,
        api_path: &str,
        token: &HeaderValue,
        body: Option<Bytes>,
    ) -> Result<Reply, Failure> {
        let timeout = self.timeout;
        self.request_with(method, api_path, token, body, &Extra::default(), timeout)
            .await
    }

    /// As `request`, with optional headers and this request's own timeout
    /// (the scenarios inject short client timeouts).
    pub async fn request_with(
        &mut self,
        method: Method,
        api_path: &str,
        token: &HeaderValue,
        body: Option<Bytes>,
        extra: &Extra,
        timeout: Duration,
    ) -> Result<Reply, Failure> {
        let req = self.build(method, api_path, token, body, extra);
        let sender = self.ready_sender().await?;
        let exchange = async {
            let resp = sender.send_request(req).await.map_err(|_| Failure::Io)?;
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let lsn = header(LSN_HEADER).and_then(|v| v.trim().parse().ok());
            let replayed = header(REPLAYED_HEADER).is_some_and(|v| v.trim() == "true");
            let limited = Limited::new(resp.into_body(), RESPONSE_BYTES_MAX);
            let body = limited.collect().await.map_err(|_| Failure::Io)?.to_bytes();
            Ok(Reply {
                status,
                body,
                lsn,
                replayed,
            })
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout),
        };
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// A sender ready for the next request, dialling if there is none or the
    /// server closed the previous connection (e.g. `Connection: close`).
    async fn ready_sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, Failure> {
        let reusable = match self.conn.as_mut() {
            Some(conn) => conn.sender.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            self.conn = None;
            let mut fresh = self.dial().await?;
            fresh.sender.ready().await.map_err(|_| Failure::Connect)?;
            self.conn = Some(fresh);
        }
        self.conn
            .as_mut()
            .map(|conn| &mut conn.sender)
            .ok_or(Failure::Connect)
    }

    async fn dial(&self) -> Result<Conn, Failure> {
        let connect = async {
            let stream = TcpStream::connect(self.target.addr)
                .await
                .map_err(|_| Failure::Connect)?;
            // Requests are small and latency-bound: do not wait to coalesce.
            stream.set_nodelay(true).map_err(|_| Failure::Connect)?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|_| Failure::Connect)?;
            let driver = tokio::spawn(async move {
                // A broken connection surfaces as an error on the sender.
                let _ = connection.await;
            });
            Ok(Conn { sender, driver })
        };
        tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| Failure::Connect)?
    }

    fn build(
        &self,
        method: Method,
        api_path: &str,
        token: &HeaderValue,
        body: Option<Bytes>,
        extra: &Extra,
    ) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(self.target.path(api_path))
            .header(HOST, self.target.authority.as_str())
            .header(AUTHORIZATION, token.clone());
        if let Some(key) = &extra.key {
            builder = builder.header("idempotency-key", key.as_str());
        }
        if let Some(version) = extra.if_match {
            builder = builder.header(http::header::IF_MATCH, format!("\"{version}\""));
        }
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let req = builder.body(Full::new(body.unwrap_or_default()));
        // Every part is built from validated values (URL, ids from the
        // server, a token header), so this cannot fail.
        req.expect("request parts are valid")
    }
}
