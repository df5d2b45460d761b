//! Snapshots: every owner's state in one file, so recovery replays only the
//! log after it and old segments can be deleted.
//!
//! `snap-<covers, 20 digits>.snap` "covers P": every record with LSN < P is
//! reflected in it. Owners are captured one at a time while writes go on, so
//! each owner section also carries that owner's own last applied LSN (≥ its
//! records below P, possibly beyond P); recovery replays, per owner, only the
//! records after it.
//!
//! **Caller contract** (the snapshot coordinator): every owner's `last_lsn`
//! and `covers − 1` must be durable in the log before `write_snapshot` is
//! called (wait on the pipeline's durable watermark), every owner with any
//! state must be included (segments below `covers` may be deleted), and
//! `prune` must not run while a snapshot is being written (it removes
//! `*.tmp`).
//!
//! The file is a 32-byte header, then frames with the WAL's framing: per
//! owner an `Owner` frame, `Items` and `Keys` chunks, then one `Trailer`
//! (byte layout: `snapshots/FORMAT.md`). It is written to `*.tmp`, fsync'd,
//! renamed, and the directory fsync'd: a snapshot file either exists
//! complete or not at all. The counts and the trailer still catch a file
//! damaged later.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::codec::{
    self, FrameParse, SnapChunk, SnapFrame, SnapOwner, SnapTrailer, FRAME_HEADER_BYTES,
    SNAP_CHUNK_ELEMS_MAX, SNAP_FRAME_BYTES_MAX,
};
use super::error::{io_at, Error};
use super::reader::list_segments;
use super::segment::sync_dir;
use crate::domain::idempotency::KeyTable;
use crate::domain::{Item, OwnerExtra, OwnerId};

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"CIQSNAP\0";
/// The version this build writes: version 1 plus holds and histories
/// (`codec::SNAP_V2`), with reasons and references on history entries
/// (`codec::SNAP_V3`).
pub const SNAPSHOT_VERSION: u32 = codec::SNAP_V3;
/// The oldest version this build reads.
pub const SNAPSHOT_VERSION_V1: u32 = 1;
pub const SNAPSHOT_HEADER_BYTES: usize = 32;
/// Snapshots kept by `prune`: the newest, and one to fall back to.
pub const SNAPSHOTS_KEPT: usize = 2;
/// Bytes of encoded elements after which a chunk frame is closed (well
/// under `SNAP_FRAME_BYTES_MAX`, which must also fit one large element).
const CHUNK_BODY_BYTES_TARGET: usize = 1 << 20;
const WRITE_BUFFER_BYTES: usize = 1 << 20;

pub fn snapshot_name(covers: u64) -> String {
    format!("snap-{covers:020}.snap")
}

/// The covers LSN in a snapshot file name, if it is one.
pub fn parse_snapshot_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())?
}

/// One owner's state as a snapshot holds it.
#[derive(Debug, Clone)]
pub struct OwnerSnapshot {
    pub owner: OwnerId,
    /// The owner's state reflects exactly its records with LSN ≤ this.
    pub last_lsn: u64,
    pub items: Vec<Item>,
    pub keys: KeyTable,
    /// Holds and item histories (empty from a version 1 file).
    pub extra: OwnerExtra,
}

/// What `write_snapshot` wrote.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    pub covers: u64,
    pub bytes: u64,
    pub owners: u64,
    pub items: u64,
    pub keys: u64,
    pub duration: Duration,
}

/// A snapshot read back.
#[derive(Debug, Clone)]
pub struct LoadedSnapshot {
    pub path: PathBuf,
    pub covers: u64,
    pub owners: Vec<OwnerSnapshot>,
    pub items: u64,
    pub keys: u64,
    /// Newer snapshots that were invalid and skipped, with why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// What `prune` removed.
#[derive(Debug, Clone, Default)]
pub struct PruneInfo {
    pub snapshots_deleted: Vec<PathBuf>,
    pub segments_deleted: Vec<PathBuf>,
    pub tmp_deleted: Vec<PathBuf>,
}

fn encode_header(covers: u64) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut h = [0u8; SNAPSHOT_HEADER_BYTES];
    h[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    h[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&covers.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The covers LSN and the format version.
fn decode_header(path: &Path, h: &[u8; SNAPSHOT_HEADER_BYTES]) -> Result<(u64, u32), Error> {
    if h[0..8] != SNAPSHOT_MAGIC {
        return Err(Error::Format {
            file: path.to_owned(),
            reason: "bad snapshot magic".into(),
        });
    }
    let crc = u32::from_le_bytes(h[24..28].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&h[0..24]) {
        return Err(Error::corrupt(
            path,
            0,
            None,
            "snapshot header checksum mismatch",
        ));
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if !(SNAPSHOT_VERSION_V1..=SNAPSHOT_VERSION).contains(&version) {
        return Err(Error::Version {
            file: path.to_owned(),
            found: version,
            supported: SNAPSHOT_VERSION,
        });
    }
    let covers = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    Ok((covers, version))
}

/// Counts the bytes written through it (for `SnapshotInfo::bytes`).
struct FrameWriter<W> {
    out: W,
    path: PathBuf,
    bytes: u64,
    frame: Vec<u8>,
}

impl<W: Write> FrameWriter<W> {
    fn raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.out.write_all(bytes).map_err(io_at(&self.path))?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    fn frame(&mut self, payload: &[u8]) -> Result<(), Error> {
        assert!(
            payload.len() <= SNAP_FRAME_BYTES_MAX,
            "snapshot frame too big"
        );
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        codec::encode_frame(payload, &mut frame);
        let result = self.raw(&frame);
        self.frame = frame;
        result
    }

    /// Write `elems` as chunk frames of ≤ SNAP_CHUNK_ELEMS_MAX elements and
    /// about CHUNK_BODY_BYTES_TARGET bytes.
    fn chunks<T>(
        &mut self,
        kind: SnapChunk,
        elems: impl Iterator<Item = T>,
        encode: impl Fn(&T, &mut Vec<u8>),
    ) -> Result<(), Error> {
        let mut body = Vec::new();
        let mut payload = Vec::new();
        let mut count = 0u32;
        for elem in elems {
            encode(&elem, &mut body);
            count += 1;
            if count == SNAP_CHUNK_ELEMS_MAX || body.len() >= CHUNK_BODY_BYTES_TARGET {
                payload.clear();
                codec::encode_snap_chunk(kind, count, &body, &mut payload);
                self.frame(&payload)?;
                body.clear();
                count = 0;
            }
        }
        if count > 0 {
            payload.clear();
            codec::encode_snap_chunk(kind, count, &body, &mut payload);
            self.frame(&payload)?;
        }
        Ok(())
    }
}

/// Write a snapshot covering `covers` (see the module docs for the caller
/// contract). Atomic: tmp file, fsync, rename, directory fsync.
pub fn write_snapshot(
    dir: &Path,
    covers: u64,
    owners: impl IntoIterator<Item = OwnerSnapshot>,
) -> Result<SnapshotInfo, Error> {
    let started = Instant::now();
    let path = dir.join(snapshot_name(covers));
    let tmp = dir.join(format!("{}.tmp", snapshot_name(covers)));
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_at(&tmp))?;
    let mut w = FrameWriter {
        out: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
        path: tmp.clone(),
        bytes: 0,
        frame: Vec::new(),
    };
    w.raw(&encode_header(covers))?;
    let mut totals = SnapTrailer {
        owners: 0,
        items: 0,
        keys: 0,
    };
    let mut payload = Vec::new();
    for o in owners {
        let head = SnapOwner {
            owner: o.owner.clone(),
            last_lsn: o.last_lsn,
            items: o.items.len() as u64,
            keys: o.keys.len() as u64,
            holds: o.extra.holds.len() as u64,
            histories: o.extra.history.len() as u64,
        };
        payload.clear();
        codec::encode_snap_owner(&head, &mut payload);
        w.frame(&payload)?;
        w.chunks(SnapChunk::Items, o.items.iter(), |i, out| {
            codec::encode_snap_item(i, out)
        })?;
        w.chunks(SnapChunk::Keys, o.keys.records(), codec::encode_snap_key)?;
        w.chunks(SnapChunk::Holds, o.extra.holds.iter(), |h, out| {
            codec::encode_snap_hold(h, out)
        })?;
        w.chunks(
            SnapChunk::History,
            o.extra.history.iter(),
            |(id, e), out| codec::encode_snap_history(id, e.iter(), out),
        )?;
        totals.owners += 1;
        totals.items += head.items;
        totals.keys += head.keys;
    }
    payload.clear();
    codec::encode_snap_trailer(&totals, &mut payload);
    w.frame(&payload)?;
    let bytes = w.bytes;
    let file = w
        .out
        .into_inner()
        .map_err(|e| Error::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(io_at(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_at(&path))?;
    sync_dir(dir).map_err(io_at(dir))?;
    Ok(SnapshotInfo {
        path,
        covers,
        bytes,
        owners: totals.owners,
        items: totals.items,
        keys: totals.keys,
        duration: started.elapsed(),
    })
}

/// Snapshot files in `dir` as (covers, path), oldest first.
pub fn list_snapshots(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    super::reader::numbered_files(dir, parse_snapshot_name)
}

/// The newest snapshot that reads back completely. An invalid newer one is
/// logged and skipped (safe because `prune` keeps the segments the previous
/// snapshot needs); if snapshots exist and none is valid, the newest one's
/// error is returned: replaying without a snapshot could silently miss
/// pruned history.
pub fn load_newest(dir: &Path) -> Result<Option<LoadedSnapshot>, Error> {
    let mut skipped = Vec::new();
    let mut first_error = None;
    for (_, path) in list_snapshots(dir)?.into_iter().rev() {
        match load(&path) {
            Ok(mut snap) => {
                snap.skipped = skipped;
                return Ok(Some(snap));
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "invalid snapshot; falling back to an older one");
                skipped.push((path, e.to_string()));
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// Read and check one snapshot file.
pub fn load(path: &Path) -> Result<LoadedSnapshot, Error> {
    let file = File::open(path).map_err(io_at(path))?;
    let mut r = FrameReader {
        input: BufReader::with_capacity(WRITE_BUFFER_BYTES, file),
        path,
        offset: 0,
        payload: Vec::new(),
        version: SNAPSHOT_VERSION,
    };
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    r.read_exact(&mut header, "snapshot header")?;
    let (covers, version) = decode_header(path, &header)?;
    r.version = version;
    let mut owners: Vec<OwnerSnapshot> = Vec::new();
    let mut seen = HashSet::new();
    loop {
        let at = r.offset;
        match r.next_frame()? {
            SnapFrame::Owner(head) => {
                if !seen.insert(head.owner.clone()) {
                    return Err(r.corrupt(at, format!("owner {} appears twice", head.owner)));
                }
                owners.push(r.owner_section(head)?);
            }
            SnapFrame::Trailer(t) => {
                let items: u64 = owners.iter().map(|o| o.items.len() as u64).sum();
                let keys: u64 = owners.iter().map(|o| o.keys.len() as u64).sum();
                let want = SnapTrailer {
                    owners: owners.len() as u64,
                    items,
                    keys,
                };
                if t != want {
                    return Err(r.corrupt(at, format!("trailer says {t:?}, file holds {want:?}")));
                }
                r.expect_eof()?;
                return Ok(LoadedSnapshot {
                    path: path.to_owned(),
                    covers,
                    owners,
                    items,
                    keys,
                    skipped: Vec::new(),
                });
            }
            _ => return Err(r.corrupt(at, "expected an owner header or the trailer")),
        }
    }
}

struct FrameReader<'a, R> {
    input: R,
    path: &'a Path,
    offset: u64,
    payload: Vec<u8>,
    /// The file's format version (selects the frame shapes).
    version: u32,
}

impl<R: Read> FrameReader<'_, R> {
    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::corrupt(self.path, offset, None, reason)
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), Error> {
        match self.input.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(self.corrupt(
                self.offset,
                format!("file ends inside the {what} (truncated snapshot)"),
            )),
            Err(e) => Err(Error::io(self.path, e)),
        }
    }

    fn next_frame(&mut self) -> Result<SnapFrame, Error> {
        let at = self.offset;
        let mut head = [0u8; FRAME_HEADER_BYTES];
        self.read_exact(&mut head, "frame header")?;
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
        if len == 0 || len > SNAP_FRAME_BYTES_MAX {
            return Err(self.corrupt(at, format!("impossible frame length {len}")));
        }
        let mut frame = std::mem::take(&mut self.payload);
        frame.clear();
        frame.extend_from_slice(&head);
        frame.resize(FRAME_HEADER_BYTES + len, 0);
        let read = self.read_exact(&mut frame[FRAME_HEADER_BYTES..], "frame payload");
        let parsed = read.and_then(
            |()| match codec::parse_frame(&frame, SNAP_FRAME_BYTES_MAX) {
                FrameParse::Complete { payload, .. } => {
                    codec::decode_snap_frame(payload, self.version).map_err(|e| {
                        self.corrupt(at, format!("snapshot frame does not decode: {e}"))
                    })
                }
                _ => Err(self.corrupt(at, "snapshot frame checksum mismatch")),
            },
        );
        self.payload = frame;
        parsed
    }

    /// The items and keys announced by `head`.
    fn owner_section(&mut self, head: SnapOwner) -> Result<OwnerSnapshot, Error> {
        let mut items = Vec::with_capacity(head.items.min(1 << 20) as usize);
        let mut keys = KeyTable::default();
        let mut key_count = 0u64;
        let mut extra = OwnerExtra::default();
        let keys_done = |items: &Vec<Item>, key_count| {
            items.len() as u64 == head.items && key_count == head.keys
        };
        while (items.len() as u64) < head.items
            || key_count < head.keys
            || (extra.holds.len() as u64) < head.holds
            || (extra.history.len() as u64) < head.histories
        {
            let at = self.offset;
            match self.next_frame()? {
                SnapFrame::Items(chunk) if (items.len() as u64) < head.items => {
                    items.extend(chunk);
                    if items.len() as u64 > head.items {
                        return Err(self.corrupt(at, "more items than the owner header says"));
                    }
                }
                SnapFrame::Keys(chunk) if items.len() as u64 == head.items => {
                    key_count += chunk.len() as u64;
                    if key_count > head.keys {
                        return Err(self.corrupt(at, "more keys than the owner header says"));
                    }
                    chunk.into_iter().for_each(|k| keys.insert(k));
                }
                SnapFrame::Holds(chunk) if keys_done(&items, key_count) => {
                    extra.holds.extend(chunk);
                    if extra.holds.len() as u64 > head.holds {
                        return Err(self.corrupt(at, "more holds than the owner header says"));
                    }
                }
                SnapFrame::History(chunk)
                    if keys_done(&items, key_count) && extra.holds.len() as u64 == head.holds =>
                {
                    extra.history.extend(chunk);
                    if extra.history.len() as u64 > head.histories {
                        return Err(self.corrupt(at, "more histories than the owner header says"));
                    }
                }
                _ => {
                    return Err(self.corrupt(
                        at,
                        format!("owner {} section ends early or out of order", head.owner),
                    ))
                }
            }
        }
        if keys.len() as u64 != head.keys {
            return Err(self.corrupt(self.offset, format!("owner {}: duplicate keys", head.owner)));
        }
        Ok(OwnerSnapshot {
            owner: head.owner,
            last_lsn: head.last_lsn,
            items,
            keys,
            extra,
        })
    }

    fn expect_eof(&mut self) -> Result<(), Error> {
        let mut byte = [0u8; 1];
        match self.input.read(&mut byte) {
            Ok(0) => Ok(()),
            Ok(_) => Err(self.corrupt(self.offset, "bytes after the trailer")),
            Err(e) => Err(Error::io(self.path, e)),
        }
    }
}

/// Keep the newest `SNAPSHOTS_KEPT` snapshots; delete older snapshots, the
/// segments wholly below the OLDER kept snapshot's covers LSN (so falling
/// back to it stays possible), and stale `*.tmp` files. Never deletes the
/// newest segment. Must not run concurrently with `write_snapshot`.
pub fn prune(dir: &Path) -> Result<PruneInfo, Error> {
    let mut info = PruneInfo::default();
    let snapshots = list_snapshots(dir)?;
    let keep_from = snapshots.len().saturating_sub(SNAPSHOTS_KEPT);
    for (_, path) in &snapshots[..keep_from] {
        remove(path)?;
        info.snapshots_deleted.push(path.clone());
    }
    if let Some(&(floor, _)) = snapshots.get(keep_from) {
        let segments = list_segments(dir)?;
        // Segment i is wholly below `floor` when the next one starts at or
        // before it: every record of i has an LSN < next.first ≤ floor.
        for pair in segments.windows(2) {
            if pair[1].first_lsn > floor {
                break;
            }
            remove(&pair[0].path)?;
            info.segments_deleted.push(pair[0].path.clone());
        }
    }
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".tmp"))
        {
            remove(&entry.path())?;
            info.tmp_deleted.push(entry.path());
        }
    }
    let deleted =
        info.snapshots_deleted.len() + info.segments_deleted.len() + info.tmp_deleted.len();
    if deleted > 0 {
        sync_dir(dir).map_err(io_at(dir))?;
    }
    Ok(info)
}

fn remove(path: &Path) -> Result<(), Error> {
    fs::remove_file(path).map_err(io_at(path))
}
