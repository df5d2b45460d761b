//! Idempotency keys: the per-owner table that makes retries exactly-once.
//!
//! A key record (key, request fingerprint, the response the state machine
//! gave, expiry) is part of the owner's state. The actor writes it in the same
//! WAL record as the transition it guards, so the two are durable together or
//! not at all, and snapshots carry the table, so a replay after a restart
//! still answers with the first response.
//!
//! Pure like the rest of `domain`: the caller passes the time.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::{Micros, Outcome, Rejection};

/// Keys are 1..=255 visible ASCII characters (API.md).
pub const KEY_BYTES_MAX: usize = 255;
/// Stored keys per owner. When the table is full (after dropping expired
/// keys), a request with a *new* key is refused with 429 and a Retry-After of
/// the time until the oldest key expires; requests without a key and replays
/// of stored keys are unaffected. A guarantee is never dropped silently.
pub const KEYS_PER_OWNER_MAX: usize = 100_000;
/// Expired keys dropped per write. More than the one key a write can add,
/// so the table of expired keys shrinks under any write rate; small, so a
/// sweep never stalls the owner (a full sweep happens only when the table is
/// full, bounded by `KEYS_PER_OWNER_MAX`).
pub const KEY_SWEEP_PER_WRITE: usize = 4;
/// Default retention: 24 h.
pub const KEY_TTL_DEFAULT_SECS: u64 = 24 * 60 * 60;

/// An idempotency key: 1..=255 characters in `!`..=`~`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdemKey(Arc<str>);

impl IdemKey {
    /// Accepts the raw header value, or the IETF draft's sf-string form
    /// (`"..."` with `\"` and `\\` escapes). `None` when invalid.
    pub fn parse(raw: &str) -> Option<IdemKey> {
        let raw = raw.trim_matches(|c| c == ' ' || c == '\t');
        let key = match raw.strip_prefix('"') {
            Some(rest) => unquote(rest.strip_suffix('"')?)?,
            None => raw.to_string(),
        };
        let visible = key.bytes().all(|b| (0x21..=0x7e).contains(&b));
        ((1..=KEY_BYTES_MAX).contains(&key.len()) && visible).then(|| IdemKey(Arc::from(key)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The inside of an sf-string: `\"` and `\\` are the only escapes; a bare `"`
/// or a lone `\` is invalid.
fn unquote(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                e @ ('"' | '\\') => out.push(e),
                _ => return None,
            },
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// SHA-256 of the request's method, route, item id and canonical body.
pub type Fingerprint = [u8; 32];

/// What the state machine answered; replayed verbatim.
pub type StoredResponse = Result<Outcome, Rejection>;

/// One stored key, as written to the WAL and to snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key: IdemKey,
    pub fingerprint: Fingerprint,
    pub response: StoredResponse,
    pub expires_at: Micros,
}

/// The answer of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Unknown (or expired) key: run the command and store its answer.
    Miss,
    /// Same key, same request: answer with the stored response again.
    Replay(&'a StoredResponse),
    /// Same key, different request: 422, nothing changes.
    Reused,
}

#[derive(Debug, Clone)]
struct Entry {
    fingerprint: Fingerprint,
    response: StoredResponse,
    expires_at: Micros,
}

/// The per-owner key table, with an expiry index so sweeping is
/// proportional to what expires, not to the table.
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    entries: HashMap<IdemKey, Entry>,
    by_expiry: BTreeSet<(Micros, IdemKey)>,
}

impl KeyTable {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.entries.len() >= KEYS_PER_OWNER_MAX
    }

    pub fn lookup(&self, key: &IdemKey, fingerprint: &Fingerprint, now: Micros) -> Lookup<'_> {
        match self.entries.get(key) {
            Some(e) if e.expires_at > now => {
                if e.fingerprint == *fingerprint {
                    Lookup::Replay(&e.response)
                } else {
                    Lookup::Reused
                }
            }
            _ => Lookup::Miss,
        }
    }

    /// Store a key (live or replayed). Replaces an expired entry of the same key.
    pub fn insert(&mut self, record: KeyRecord) {
        let entry = Entry {
            fingerprint: record.fingerprint,
            response: record.response,
            expires_at: record.expires_at,
        };
        if let Some(old) = self.entries.insert(record.key.clone(), entry) {
            self.by_expiry.remove(&(old.expires_at, record.key.clone()));
        }
        self.by_expiry.insert((record.expires_at, record.key));
    }

    /// Drop at most `max` keys whose expiry is at or before `now`; returns how
    /// many were dropped. The actor calls this with a small `max` on every
    /// message, so sweeping never stalls an owner.
    pub fn sweep(&mut self, now: Micros, max: usize) -> usize {
        let mut dropped = 0;
        while dropped < max {
            match self.by_expiry.first() {
                Some((at, _)) if *at <= now => {}
                _ => break,
            }
            let (_, key) = self.by_expiry.pop_first().expect("checked above");
            self.entries.remove(&key);
            dropped += 1;
        }
        dropped
    }

    /// When the oldest key expires (for Retry-After when the table is full).
    pub fn next_expiry(&self) -> Option<Micros> {
        self.by_expiry.first().map(|(at, _)| *at)
    }

    /// Every stored key (snapshots).
    pub fn records(&self) -> impl Iterator<Item = KeyRecord> + '_ {
        self.entries.iter().map(|(key, e)| KeyRecord {
            key: key.clone(),
            fingerprint: e.fingerprint,
            response: e.response.clone(),
            expires_at: e.expires_at,
        })
    }

    pub fn shrink(&mut self) {
        self.entries.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, fp: u8, expires_at: Micros) -> KeyRecord {
        KeyRecord {
            key: IdemKey::parse(key).unwrap(),
            fingerprint: [fp; 32],
            response: Ok(Outcome::Deleted),
            expires_at,
        }
    }

    #[test]
    fn key_syntax_is_visible_ascii_or_sf_string() {
        assert_eq!(IdemKey::parse("abc-123").unwrap().as_str(), "abc-123");
        assert_eq!(IdemKey::parse("\"abc\"").unwrap().as_str(), "abc");
        assert_eq!(IdemKey::parse(r#""a\"b""#).unwrap().as_str(), "a\"b");
        assert_eq!(
            IdemKey::parse(&"k".repeat(255)).unwrap().as_str().len(),
            255
        );
        for bad in [
            "", "\"\"", "a b", "ключ", "a\u{7f}", "\"abc", r#""a\x""#, r#""a"b""#,
        ] {
            assert!(IdemKey::parse(bad).is_none(), "{bad:?} must be refused");
        }
        assert!(IdemKey::parse(&"k".repeat(256)).is_none());
    }

    #[test]
    fn lookup_distinguishes_replay_reuse_and_expiry() {
        let mut t = KeyTable::default();
        let k = IdemKey::parse("k").unwrap();
        assert_eq!(t.lookup(&k, &[1; 32], 0), Lookup::Miss);
        t.insert(rec("k", 1, 100));
        assert_eq!(
            t.lookup(&k, &[1; 32], 99),
            Lookup::Replay(&Ok(Outcome::Deleted))
        );
        assert_eq!(t.lookup(&k, &[2; 32], 99), Lookup::Reused);
        assert_eq!(
            t.lookup(&k, &[1; 32], 100),
            Lookup::Miss,
            "expired at its expiry time"
        );
    }

    #[test]
    fn sweep_is_bounded_and_ordered_by_expiry() {
        let mut t = KeyTable::default();
        for i in 0..10 {
            t.insert(rec(&format!("k{i}"), 0, 10 - i));
        }
        assert_eq!(t.next_expiry(), Some(1));
        assert_eq!(t.sweep(5, 3), 3, "bounded by max");
        assert_eq!(t.len(), 7);
        assert_eq!(t.sweep(5, 100), 2, "only the expired ones");
        assert_eq!(t.len(), 5);
        assert_eq!(t.next_expiry(), Some(6));
    }

    #[test]
    fn sweeping_per_write_keeps_up_with_any_write_rate() {
        // Goal: with one keyed write per tick and KEY_SWEEP_PER_WRITE
        // expired keys dropped per write (what the actor does), the table
        // never holds more than the live keys plus the one being added.
        // Method: 10,000 ticks with a TTL of 100 ticks; check after each.
        let ttl = 100;
        let mut t = KeyTable::default();
        for now in 0..10_000 {
            t.sweep(now, KEY_SWEEP_PER_WRITE);
            t.insert(rec(&format!("k{now}"), 0, now + ttl));
            let live = (now + 1).min(ttl) as usize;
            assert!(
                t.len() <= live + 1,
                "at tick {now}: {} stored, {live} live",
                t.len()
            );
        }
    }

    #[test]
    fn reinserting_a_key_replaces_its_expiry_entry() {
        let mut t = KeyTable::default();
        t.insert(rec("k", 1, 10));
        t.insert(rec("k", 2, 20));
        assert_eq!(t.len(), 1);
        assert_eq!(t.sweep(15, 100), 0, "the old expiry must be gone");
        assert_eq!(t.sweep(20, 100), 1);
        assert!(t.is_empty());
    }
}
