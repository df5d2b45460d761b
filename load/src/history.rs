//! The recorded history (`--history FILE`): every request the run made, one
//! JSON object per line, with its invoke and complete times, the request and
//! the outcome. `check` decides from it alone whether the run was
//! linearizable, so `countiq check FILE` can judge a file written earlier.
//!
//! One line per HTTP attempt. Attempts that share an idempotency key are one
//! logical operation (a retry, or the replay that resolves an unknown
//! outcome at the end of a run); the checker merges them.

use std::io::{self, BufRead, Write};
use std::path::Path;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::client::{self, Client, Extra, Failure};

/// Most records one run keeps in memory (about 200 bytes each); the run
/// stops taking new requests once it has recorded this many.
pub const HISTORY_RECORDS_MAX: usize = 4_000_000;

/// The `client` of records made before the measured phase (item creation).
pub const CLIENT_SETUP: u32 = u32::MAX;
/// The `client` of the final reads after the measured phase.
pub const CLIENT_FINAL: u32 = u32::MAX - 1;
/// The `client` of the replays that resolve unknown outcomes.
pub const CLIENT_RESOLVE: u32 = u32::MAX - 2;

/// One HTTP attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Unique in the file, in the order the attempts were invoked per client.
    pub id: u64,
    /// The virtual client (one connection, one request at a time), or one of
    /// the `CLIENT_*` constants.
    pub client: u32,
    /// The owner (the token's subject).
    pub owner: String,
    /// Monotonic ns since the run started, just before the request was sent.
    pub invoke_ns: u64,
    /// Monotonic ns when the whole reply had arrived; `null` if none did.
    pub complete_ns: Option<u64>,
    /// The `Idempotency-Key` sent, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub request: Req,
    pub outcome: Outcome,
    /// For a replay sent to resolve an unknown outcome: that record's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolves: Option<u64>,
    /// Open loop: the intended send time (latency is counted from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intended_ns: Option<u64>,
}

/// The request of one attempt (ids are the server's item ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Req {
    /// `POST /items`.
    Create { name: String, qty: i64 },
    /// `GET /items/{item}`.
    Get { item: String },
    /// `PUT /items/{item}`, with `If-Match` when `if_match` is set.
    Put {
        item: String,
        name: String,
        qty: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_match: Option<u64>,
    },
    /// `PATCH /items/{item}/qty`, with `If-Match` when `if_match` is set.
    Patch {
        item: String,
        delta: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_match: Option<u64>,
    },
    /// `POST /transactions`.
    Txn { ops: Vec<TxnOp> },
}

/// One op of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnOp {
    pub item: String,
    pub delta: i64,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Outcome {
    /// An HTTP reply.
    Reply(Reply),
    /// No reply: `"timeout"` or `"io"` (the connection broke after sending).
    /// The request may or may not have been applied.
    Unknown { unknown: String },
}

/// The parts of a reply the checker reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub status: u16,
    /// The problem document's `error` code (non-2xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The item(s) in a 2xx body: one for item routes, each touched item for
    /// a transaction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ItemState>,
    /// `CountIQ-LSN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<u64>,
    /// `Idempotent-Replayed: true`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub replayed: bool,
    /// 412's `current_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// A failed transaction's `op_index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_index: Option<u32>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// An item as a reply showed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemState {
    pub id: String,
    pub qty: i64,
    pub version: u64,
}

impl Record {
    /// The reply, if there was one.
    pub fn reply(&self) -> Option<&Reply> {
        match &self.outcome {
            Outcome::Reply(r) => Some(r),
            Outcome::Unknown { .. } => None,
        }
    }
}

/// Parses the body of a reply into the fields the checker reads; a body
/// that is not the documented JSON leaves them empty.
pub(crate) fn reply_from(status: u16, body: &[u8], lsn: Option<u64>, replayed: bool) -> Reply {
    #[derive(Deserialize)]
    struct Body {
        error: Option<String>,
        current_version: Option<u64>,
        op_index: Option<u32>,
        items: Option<Vec<ItemState>>,
        id: Option<String>,
        qty: Option<i64>,
        version: Option<u64>,
    }
    let parsed: Option<Body> = serde_json::from_slice(body).ok();
    let mut reply = Reply {
        status,
        error: None,
        items: Vec::new(),
        lsn,
        replayed,
        current_version: None,
        op_index: None,
    };
    if let Some(b) = parsed {
        reply.error = b.error;
        reply.current_version = b.current_version;
        reply.op_index = b.op_index;
        if let (Some(id), Some(qty), Some(version)) = (b.id, b.qty, b.version) {
            reply.items.push(ItemState { id, qty, version });
        }
        reply.items.extend(b.items.unwrap_or_default());
    }
    reply
}

/// The run's clock and record ids, shared by every client.
pub(crate) struct Recorder {
    /// Time 0 of `invoke_ns` / `complete_ns`.
    pub origin: Instant,
    /// Whether records are kept at all (`--history`, `--check`, `--report`).
    pub on: bool,
    next_id: AtomicU64,
}

/// One request to send and record.
pub(crate) struct Attempt<'a> {
    pub client: u32,
    pub owner: &'a str,
    pub token: &'a HeaderValue,
    pub req: &'a Req,
    pub key: Option<String>,
    pub timeout: Duration,
    pub resolves: Option<u64>,
    pub intended: Option<Instant>,
}

impl Recorder {
    pub fn new(on: bool) -> Self {
        Recorder {
            origin: Instant::now(),
            on,
            next_id: AtomicU64::new(0),
        }
    }

    /// Monotonic ns since the origin.
    pub fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Sends `a` on `client`; returns the reply (or failure), when it was
    /// sent and answered, and its record when recording. A failed connect
    /// sent nothing and is not recorded.
    pub async fn send(
        &self,
        client: &mut Client,
        a: Attempt<'_>,
    ) -> (
        Result<client::Reply, Failure>,
        Instant,
        Instant,
        Option<Record>,
    ) {
        let (method, path, body, if_match) = crate::plan::encode_req(a.req);
        let extra = Extra {
            key: a.key.clone(),
            if_match,
        };
        let sent = Instant::now();
        let result = client
            .request_with(method, &path, a.token, body, &extra, a.timeout)
            .await;
        let done = Instant::now();
        let record = (self.on && !matches!(result, Err(Failure::Connect))).then(|| Record {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            client: a.client,
            owner: a.owner.to_string(),
            invoke_ns: self.ns(sent),
            complete_ns: result.is_ok().then(|| self.ns(done)),
            key: a.key,
            request: a.req.clone(),
            outcome: match &result {
                Ok(r) => Outcome::Reply(reply_from(r.status, &r.body, r.lsn, r.replayed)),
                Err(f) => Outcome::Unknown {
                    unknown: f.name().to_string(),
                },
            },
            resolves: a.resolves,
            intended_ns: a.intended.map(|t| self.ns(t)),
        });
        (result, sent, done, record)
    }
}

/// Writes records as JSON lines.
pub fn write(path: &Path, records: &[Record]) -> io::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut out = io::BufWriter::new(file);
    for r in records {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Reads a history file; an unparseable line is an error naming its number.
pub fn read(path: &Path) -> io::Result<Vec<Record>> {
    let file = std::fs::File::open(path)?;
    let mut records = Vec::new();
    for (n, line) in io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}:{}: {e}", path.display(), n + 1),
            )
        })?;
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    //! Goal: the documented line format round-trips and replies are parsed
    //! from the API's bodies; method: literal lines and bodies.
    use super::*;

    #[test]
    fn a_line_round_trips_in_the_documented_shape() {
        let line = r#"{"id":7,"client":3,"owner":"o","invoke_ns":100,"complete_ns":250,"key":"k7","request":{"op":"patch","item":"i","delta":-1},"outcome":{"status":200,"items":[{"id":"i","qty":4,"version":9}],"lsn":31}}"#;
        let r: Record = serde_json::from_str(line).expect("parses");
        assert_eq!(r.reply().map(|r| r.items[0].version), Some(9));
        assert_eq!(serde_json::to_string(&r).expect("json"), line);
        let unknown = r#"{"id":8,"client":3,"owner":"o","invoke_ns":300,"complete_ns":null,"request":{"op":"get","item":"i"},"outcome":{"unknown":"timeout"}}"#;
        let u: Record = serde_json::from_str(unknown).expect("parses");
        assert!(u.reply().is_none());
        assert_eq!(serde_json::to_string(&u).expect("json"), unknown);
    }

    #[test]
    fn replies_are_parsed_from_api_bodies() {
        let item = br#"{"id":"a","name":"n","qty":3,"version":2}"#;
        let r = reply_from(200, item, Some(5), true);
        assert_eq!(
            r.items,
            vec![ItemState {
                id: "a".into(),
                qty: 3,
                version: 2
            }]
        );
        assert_eq!((r.lsn, r.replayed), (Some(5), true));
        let txn = br#"{"items":[{"id":"a","qty":1,"version":3},{"id":"b","qty":2,"version":4}]}"#;
        assert_eq!(reply_from(200, txn, None, false).items.len(), 2);
        let e412 = br#"{"status":412,"error":"version_mismatch","current_version":6}"#;
        let r = reply_from(412, e412, None, false);
        assert_eq!(
            (r.error.as_deref(), r.current_version),
            (Some("version_mismatch"), Some(6))
        );
        assert!(reply_from(200, b"not json", None, false).items.is_empty());
    }
}
