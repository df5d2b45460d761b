//! Helpers shared by the storage integration tests: building records and
//! segments by hand, running the real pipeline + WAL writer, and comparing
//! recovered states.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{mpsc, Arc};

use countiq::domain::idempotency::{IdemKey, KeyRecord, StoredResponse};
use countiq::domain::{Event, Item, ItemName, Outcome, OwnerId, OwnerState, Qty, QtyVersion};
use countiq::storage::codec::{encode_record, encode_record_version, Record};
use countiq::storage::pipeline::{Failed, Pipeline};
use countiq::storage::recovery::RecoveredOwner;
use countiq::storage::segment::{encode_header_version, segment_name, LogDisk, SEGMENT_VERSION};
use countiq::storage::testing::ChanWaiter;
use countiq::storage::wal::{FsyncPolicy, Wal, WalConfig};
use uuid::Uuid;

pub fn owner(s: &str) -> OwnerId {
    OwnerId::new(s).expect("valid owner id")
}

pub fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

pub fn item(n: u128, name: &str, qty: u64, version: u64, at: i64) -> Item {
    Item {
        id: id(n),
        name: ItemName::new(name).expect("valid name"),
        qty: Qty::from_stored(qty).expect("valid qty"),
        reserved: countiq::domain::Qty::ZERO,
        version,
        created_at: at,
        updated_at: at,
    }
}

pub fn change(n: u128, qty: u64, version: u64) -> QtyVersion {
    QtyVersion {
        id: id(n),
        qty: Qty::from_stored(qty).expect("valid qty"),
        version,
    }
}

pub fn key(k: &str, fp: u8, response: StoredResponse, expires_at: i64) -> KeyRecord {
    KeyRecord {
        key: IdemKey::parse(k).expect("valid key"),
        fingerprint: [fp; 32],
        response,
        expires_at,
    }
}

/// A short valid history of one owner using every event kind, keys with and
/// without events: (event, key) pairs in LSN order.
pub fn sample_history(o: &str) -> Vec<Record> {
    let far = i64::MAX / 2;
    let created = item(1, "milk", 3, 1, 10);
    let rows: Vec<(Option<Event>, Option<KeyRecord>)> = vec![
        (
            Some(Event::Created(created.clone(), countiq::domain::Note::NONE)),
            Some(key("k-1", 1, Ok(Outcome::Created(created)), far)),
        ),
        (
            Some(Event::Created(
                item(2, "eggs", 12, 1, 11),
                countiq::domain::Note::NONE,
            )),
            None,
        ),
        (
            Some(Event::QtySet {
                change: change(1, 5, 2),
                at: 12,
                note: countiq::domain::Note::NONE,
            }),
            None,
        ),
        (
            Some(Event::Replaced(
                Item {
                    updated_at: 13,
                    ..item(2, "Eggs (dozen)", 10, 2, 11)
                },
                countiq::domain::Note::NONE,
            )),
            None,
        ),
        (
            None,
            Some(key(
                "k-2",
                2,
                Err(countiq::domain::Rejection::QtyBelowZero { op_index: Some(0) }),
                far,
            )),
        ),
        (
            Some(Event::Transacted {
                changes: vec![change(1, 4, 3).into(), change(2, 15, 3).into()],
                placed: vec![],
                committed: vec![],
                released: vec![],
                at: 14,
            }),
            None,
        ),
        (
            Some(Event::Deleted { id: id(1) }),
            Some(key("k-3", 3, Ok(Outcome::Deleted), far)),
        ),
        (
            Some(Event::Created(
                item(3, "flour", 1, 1, 15),
                countiq::domain::Note::NONE,
            )),
            None,
        ),
    ];
    rows.into_iter()
        .enumerate()
        .map(|(i, (event, key))| Record {
            lsn: i as u64 + 1,
            owner: owner(o),
            event,
            key,
        })
        .collect()
}

/// A segment file's bytes holding `records` (which must be contiguous from
/// `first_lsn`), and the end offset of each record's frame. Current format
/// version, without the preallocated zeros (see `preallocated_bytes`).
pub fn segment_bytes(first_lsn: u64, records: &[Record]) -> (Vec<u8>, Vec<usize>) {
    segment_bytes_version(SEGMENT_VERSION, first_lsn, records)
}

/// `segment_bytes` followed by zeros up to `size` bytes, as the writer
/// leaves a preallocated segment it has not filled.
pub fn preallocated_bytes(
    first_lsn: u64,
    records: &[Record],
    size: usize,
) -> (Vec<u8>, Vec<usize>) {
    let (mut bytes, ends) = segment_bytes(first_lsn, records);
    assert!(bytes.len() <= size, "records exceed the preallocated size");
    bytes.resize(size, 0);
    (bytes, ends)
}

/// `segment_bytes` with a header of any format version.
pub fn segment_bytes_version(
    version: u32,
    first_lsn: u64,
    records: &[Record],
) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = encode_header_version(version, first_lsn).to_vec();
    let mut ends = Vec::new();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.lsn, first_lsn + i as u64);
        encode_record_version(
            version,
            r.lsn,
            &r.owner,
            r.event.as_ref(),
            r.key.as_ref(),
            &mut bytes,
        );
        ends.push(bytes.len());
    }
    (bytes, ends)
}

/// Write `records` to `dir` as one segment.
pub fn write_segment(dir: &Path, records: &[Record]) -> std::path::PathBuf {
    let first = records.first().map_or(1, |r| r.lsn);
    let path = dir.join(segment_name(first));
    std::fs::write(&path, segment_bytes(first, records).0).expect("write segment");
    path
}

/// The state the records produce, replayed in memory (no storage).
pub fn replay_in_memory(records: &[Record]) -> HashMap<OwnerId, OwnerState> {
    let mut owners: HashMap<OwnerId, OwnerState> = HashMap::new();
    for r in records {
        let s = owners.entry(r.owner.clone()).or_default();
        if let Some(e) = &r.event {
            s.evolve_keyed(e, r.key.as_ref().map(|k| &k.key));
        }
        if let Some(k) = &r.key {
            s.keys.insert(k.clone());
        }
    }
    owners
}

/// A comparable view of one owner's state: items by id, keys by name.
pub type View = (BTreeMap<Uuid, Item>, BTreeMap<String, KeyRecord>);

pub fn view(state: &OwnerState) -> View {
    let items = state.items().map(|i| (i.id, i.clone())).collect();
    let keys = state
        .keys
        .records()
        .map(|k| (k.key.as_str().to_owned(), k))
        .collect();
    (items, keys)
}

/// Views of every owner, leaving out owners with nothing in them.
pub fn views<'a>(
    owners: impl IntoIterator<Item = (&'a OwnerId, &'a OwnerState)>,
) -> BTreeMap<OwnerId, View> {
    owners
        .into_iter()
        .map(|(o, s)| (o.clone(), view(s)))
        .filter(|(_, (items, keys))| !(items.is_empty() && keys.is_empty()))
        .collect()
}

pub fn recovered_views(owners: &HashMap<OwnerId, RecoveredOwner>) -> BTreeMap<OwnerId, View> {
    views(owners.iter().map(|(o, r)| (o, &r.state)))
}

pub const FAR: i64 = i64::MAX / 2;

/// The real writer on `disk`, fsync always, with small segments.
pub fn start_wal<D: LogDisk>(
    disk: D,
    next_lsn: u64,
    segment_bytes: u64,
    fsync: FsyncPolicy,
) -> Wal<ChanWaiter> {
    let pipeline = Arc::new(Pipeline::new(next_lsn));
    Wal::start(
        disk,
        pipeline,
        WalConfig {
            fsync,
            segment_bytes,
        },
        |_| {},
    )
    .expect("start the WAL writer")
}

/// Stop a writer. Takes `&mut` so callers compile whether `Wal::shutdown`
/// takes `&mut self` or `&self`.
pub fn stop_wal<W: countiq::storage::pipeline::Waiter + Send + 'static>(
    wal: &mut Wal<W>,
) -> std::io::Result<()> {
    wal.shutdown()
}

/// Append one record through the pipeline and wait until it is durable.
pub fn append_durable(
    wal: &Wal<ChanWaiter>,
    o: &OwnerId,
    event: Option<&Event>,
    key: Option<&KeyRecord>,
) -> Result<u64, Failed> {
    let (tx, rx) = mpsc::channel();
    let lsn = wal.pipeline.append(
        |lsn, buf| encode_record(lsn, o, event, key, buf),
        Some(ChanWaiter(tx)),
    )?;
    rx.recv().expect("the waiter is always completed")?;
    Ok(lsn)
}

/// The record a crash-test appender writes at `lsn`: an item whose id is the
/// LSN (so a recovered state names the LSNs it holds), with a key on every
/// third record.
pub fn lsn_record(lsn: u64) -> (Event, Option<KeyRecord>) {
    let it = item(lsn as u128, &format!("n{lsn}"), lsn % 1000, 1, lsn as i64);
    let k =
        (lsn % 3 == 0).then(|| key(&format!("k{lsn}"), 7, Ok(Outcome::Created(it.clone())), FAR));
    (Event::Created(it, countiq::domain::Note::NONE), k)
}

/// Check a recovered state written by `lsn_record` appenders: it holds
/// exactly LSNs 1..next_lsn (a prefix of the log), each on the owner that
/// wrote it and byte-for-byte the record written. Returns the prefix length.
pub fn check_lsn_prefix(
    rec: &countiq::storage::recovery::Recovered,
    owner_of: &HashMap<u64, OwnerId>,
) -> Result<u64, String> {
    let n = rec.next_lsn - 1;
    let mut seen = 0u64;
    for (o, r) in &rec.owners {
        for it in r.state.items() {
            let lsn = it.id.as_u128() as u64;
            let (Event::Created(want, countiq::domain::Note::NONE), k) = lsn_record(lsn) else {
                unreachable!()
            };
            if owner_of.get(&lsn) != Some(o) {
                return Err(format!(
                    "LSN {lsn} recovered on owner {o}, written by {:?}",
                    owner_of.get(&lsn)
                ));
            }
            if *it != want {
                return Err(format!("LSN {lsn} altered: {it:?} != {want:?}"));
            }
            if lsn > n {
                return Err(format!(
                    "LSN {lsn} recovered beyond next_lsn {}",
                    rec.next_lsn
                ));
            }
            if let Some(k) = k {
                let fp = k.fingerprint;
                match r.state.keys.lookup(&k.key, &fp, 0) {
                    countiq::domain::idempotency::Lookup::Replay(resp) if *resp == k.response => {}
                    other => return Err(format!("key of LSN {lsn}: {other:?}")),
                }
            }
            seen += 1;
        }
        if r.state.keys.len() as u64
            != r.state.items().filter(|i| i.id.as_u128() % 3 == 0).count() as u64
        {
            return Err(format!("owner {o} has keys of records it does not hold"));
        }
    }
    if seen != n {
        return Err(format!(
            "recovered {seen} records but next_lsn says {n}: not a prefix"
        ));
    }
    Ok(n)
}

/// A scratch directory for test images, on tmpfs when there is one: the
/// durability under test is the `MemDisk` model's, and thousands of
/// recoveries would otherwise spend their time in the host's fsync.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("create a temp dir")
}

#[allow(unused_imports)]
pub use harness::*;

mod harness {
    use super::*;
    use countiq::domain::idempotency::{Fingerprint, Lookup};
    use countiq::domain::{Applied, Command, Ctx, KeyStamp, Micros};
    use countiq::storage::recovery::{recover, DirLock, Recovered};
    use countiq::storage::segment::DirDisk;
    use countiq::storage::snapshot::{prune, write_snapshot, OwnerSnapshot, PruneInfo};
    use std::path::PathBuf;

    /// How long a key lives in the harness, in the harness's microseconds.
    pub const KEY_TTL: Micros = 5_000;

    /// A stand-in for the owner actors: decides commands against in-memory
    /// states, writes each transition through the real pipeline and writer
    /// (DirDisk), waits until it is durable, and keeps every record written.
    pub struct Harness {
        pub dir: PathBuf,
        pub wal: Option<Wal<ChanWaiter>>,
        pub lock: Option<DirLock>,
        pub owners: HashMap<OwnerId, (OwnerState, u64)>,
        /// Every record acknowledged, in LSN order.
        pub records: Vec<Record>,
        pub segment_bytes: u64,
    }

    impl Harness {
        pub fn open(dir: &Path, segment_bytes: u64) -> Self {
            let mut h = Harness {
                dir: dir.to_owned(),
                wal: None,
                lock: None,
                owners: HashMap::new(),
                records: Vec::new(),
                segment_bytes,
            };
            h.restart(0);
            h
        }

        /// Stop the writer, recover from the directory, adopt the recovered
        /// states, start a new writer. Returns the recovery result's views.
        pub fn restart(&mut self, now: Micros) -> (BTreeMap<OwnerId, View>, u64) {
            if let Some(mut wal) = self.wal.take() {
                stop_wal(&mut wal).expect("clean shutdown");
            }
            self.lock = None;
            let Recovered {
                owners,
                next_lsn,
                lock,
                ..
            } = recover(&self.dir, now).unwrap_or_else(|e| panic!("recovery: {e}"));
            let recovered = recovered_views(&owners);
            self.owners = owners
                .into_iter()
                .map(|(o, r)| (o, (r.state, r.last_lsn)))
                .collect();
            self.lock = Some(lock);
            self.wal = Some(start_wal(
                DirDisk::new(&self.dir),
                next_lsn,
                self.segment_bytes,
                FsyncPolicy::Always,
            ));
            (recovered, next_lsn)
        }

        /// Run one command the way the actor does; `None` when nothing is
        /// answered from the state machine (a reused key).
        pub fn apply(
            &mut self,
            o: &OwnerId,
            cmd: &Command,
            key: Option<(IdemKey, Fingerprint)>,
            ctx: Ctx,
        ) -> Option<(StoredResponse, bool)> {
            let (state, last_lsn) = self.owners.entry(o.clone()).or_default();
            if let Some((k, fp)) = &key {
                match state.keys.lookup(k, fp, ctx.now) {
                    Lookup::Replay(r) => return Some((r.clone(), true)),
                    Lookup::Reused => return None,
                    Lookup::Miss => {}
                }
            }
            let stamp = key.map(|(key, fingerprint)| KeyStamp {
                key,
                fingerprint,
                expires_at: ctx.now + KEY_TTL,
            });
            let applied = state.apply(cmd, ctx, stamp);
            let response = applied.result.clone();
            if applied.is_logged() {
                let Applied { event, key, .. } = applied;
                let wal = self.wal.as_ref().expect("writer running");
                let lsn = append_durable(wal, o, event.as_ref(), key.as_ref()).expect("durable");
                *last_lsn = lsn;
                self.records.push(Record {
                    lsn,
                    owner: o.clone(),
                    event,
                    key,
                });
            }
            Some((response, false))
        }

        /// Snapshot every owner (all records are durable: each append
        /// waited), then prune.
        pub fn snapshot(&mut self) -> PruneInfo {
            let covers = self
                .wal
                .as_ref()
                .expect("writer running")
                .pipeline
                .next_lsn();
            let owners: Vec<OwnerSnapshot> = self
                .owners
                .iter()
                .map(|(o, (s, last))| {
                    let (items, keys) = s.snapshot_view();
                    OwnerSnapshot {
                        owner: o.clone(),
                        last_lsn: *last,
                        items,
                        keys,
                        extra: s.snapshot_extra(),
                    }
                })
                .collect();
            write_snapshot(&self.dir, covers, owners).expect("write snapshot");
            prune(&self.dir).expect("prune")
        }

        /// The live states as views, after dropping keys expired at `now`
        /// (recovery sweeps them too).
        pub fn live_views(&mut self, now: Micros) -> BTreeMap<OwnerId, View> {
            for (s, _) in self.owners.values_mut() {
                s.keys.sweep(now, usize::MAX);
            }
            views(self.owners.iter().map(|(o, (s, _))| (o, s)))
        }

        pub fn shutdown(&mut self) {
            if let Some(mut wal) = self.wal.take() {
                stop_wal(&mut wal).expect("clean shutdown");
            }
            self.lock = None;
        }
    }
}
