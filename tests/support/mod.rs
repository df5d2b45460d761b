//! Helpers shared by the contract tests (on top of `tests/common`): raw
//! requests with any headers, problem-document checks, and whole-state
//! reads used to prove that a refused request changed nothing.
#![allow(dead_code)]

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::common::{read, Resp, TestServer};

/// A request built field by field. `owner: None` sends no Authorization.
pub struct Req<'a> {
    pub method: Method,
    pub path: String,
    pub owner: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub body: Option<Vec<u8>>,
    pub headers: Vec<(&'a str, String)>,
}

impl<'a> Req<'a> {
    pub fn new(method: Method, path: impl Into<String>, owner: &'a str) -> Self {
        Req {
            method,
            path: path.into(),
            owner: Some(owner),
            content_type: None,
            body: None,
            headers: Vec::new(),
        }
    }

    /// A JSON body given as raw text (so malformed JSON can be sent).
    pub fn json(mut self, raw: &str) -> Self {
        self.content_type = Some("application/json");
        self.body = Some(raw.as_bytes().to_vec());
        self
    }

    pub fn header(mut self, name: &'a str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub async fn send(self, s: &TestServer) -> Resp {
        let mut req = s
            .http
            .request(self.method, format!("{}{}", s.base, self.path));
        if let Some(o) = self.owner {
            req = req.bearer_auth(s.token(o));
        }
        if let Some(ct) = self.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(b) = self.body {
            req = req.body(b);
        }
        for (k, v) in self.headers {
            req = req.header(k, v);
        }
        read(req.send().await.expect("request")).await
    }
}

/// Assert `r` is an RFC 9457 problem document with `status` and `code`.
#[track_caller]
pub fn assert_problem(r: &Resp, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "status; body: {}", r.raw);
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/problem+json"),
        "content-type {ct:?} for {}",
        r.raw
    );
    assert_eq!(r.body["error"], code, "error code; body: {}", r.raw);
    assert_eq!(
        r.body["status"],
        status.as_u16(),
        "status member: {}",
        r.raw
    );
    assert!(r.body["type"].is_string(), "type member: {}", r.raw);
    assert!(r.body["title"].is_string(), "title member: {}", r.raw);
    assert!(r.body["detail"].is_string(), "detail member: {}", r.raw);
}

/// Every item of `owner`, by id, read by paging through `GET /items`.
pub async fn all_items(s: &TestServer, owner: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/items?limit=1000&cursor={c}"),
            None => "/items?limit=1000".to_string(),
        };
        let r = s.send(Method::GET, &path, Some(owner), None, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
        for item in r.body["items"].as_array().expect("items") {
            let id = item["id"].as_str().expect("id").to_string();
            assert!(out.insert(id, item.clone()).is_none(), "id listed twice");
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// `(qty, version)` of one item, asserting it exists.
pub async fn qty_version(s: &TestServer, owner: &str, id: &str) -> (u64, u64) {
    let r = s.get(owner, id).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    (
        r.body["qty"].as_u64().expect("qty"),
        r.body["version"].as_u64().expect("version"),
    )
}

/// The id of a created item.
pub fn id_of(item: &Value) -> String {
    item["id"].as_str().expect("id").to_string()
}

/// Send `body` with `Transfer-Encoding: chunked` (no Content-Length) over a
/// raw connection; returns the status and the raw response head and body.
pub async fn chunked(
    s: &TestServer,
    method: &str,
    path: &str,
    owner: &str,
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = s.base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        s.token(owner)
    );
    conn.write_all(head.as_bytes()).await.expect("write head");
    // The server may answer and close before reading everything: ignore
    // write errors after the head and read whatever answer came.
    for chunk in body.chunks(8192) {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(chunk);
        frame.extend_from_slice(b"\r\n");
        if conn.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}
