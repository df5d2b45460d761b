//! A minimal Server-Sent Events reader for the change-feed tests: parses
//! `id:` / `event:` / `data:` fields of `GET /events` frames, skipping
//! comments (keep-alives). Every wait has a deadline, so a missing event
//! fails the test instead of hanging it.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;

/// How long any one event may take to arrive before the test fails.
pub const EVENT_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// Parse one frame (the text between blank lines); `None` for a frame with
/// only comments.
pub fn parse_frame(frame: &str) -> Option<Sse> {
    let (mut id, mut event, mut data) = (None, String::new(), String::new());
    for line in frame.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().parse().expect("id is an LSN"));
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim());
        }
    }
    if event.is_empty() && data.is_empty() {
        return None;
    }
    let data = serde_json::from_str(&data).expect("data is JSON");
    Some(Sse { id, event, data })
}

/// Frames out of a byte stream.
#[derive(Default)]
pub struct Frames {
    buf: String,
}

impl Frames {
    /// Add bytes; return the complete events they finish.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Sse> {
        self.buf
            .push_str(std::str::from_utf8(bytes).expect("UTF-8"));
        let mut out = Vec::new();
        while let Some(end) = self.buf.find("\n\n") {
            let frame: String = self.buf.drain(..end + 2).collect();
            out.extend(parse_frame(&frame));
        }
        out
    }
}

/// An open `GET /events` over reqwest.
pub struct Stream {
    pub response: reqwest::Response,
    frames: Frames,
    ready: std::collections::VecDeque<Sse>,
}

impl Stream {
    pub fn new(response: reqwest::Response) -> Self {
        Stream {
            response,
            frames: Frames::default(),
            ready: Default::default(),
        }
    }

    /// The next event, `None` when the server ended the stream cleanly.
    /// Panics after [`EVENT_DEADLINE`] or on a broken connection.
    pub async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            let chunk = tokio::time::timeout(EVENT_DEADLINE, self.response.chunk())
                .await
                .expect("an event within the deadline")
                .expect("the stream is not broken")?;
            self.ready.extend(self.frames.push(&chunk));
        }
    }

    /// The next `n` events.
    pub async fn take(&mut self, n: usize) -> Vec<Sse> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.next().await.expect("the stream goes on"));
        }
        out
    }
}

/// Open `GET {base}/events` with a bearer token and an optional
/// Last-Event-ID.
pub async fn open(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    last_event_id: Option<u64>,
) -> reqwest::Response {
    let mut req = http.get(format!("{base}/events")).bearer_auth(token);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id.to_string());
    }
    req.send().await.expect("request")
}
