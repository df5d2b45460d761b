//! Crash tests for the WAL: torn tails, bit flips, power cuts with an
//! in-memory disk that forgets what was not synced, and injected I/O errors.

mod storage_common;

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use countiq::domain::Event;
use countiq::storage::codec::{encode_record, Record};
use countiq::storage::pipeline::{Failed, Pipeline, Waiter};
use countiq::storage::reader::{list_prepared, read_all};
use countiq::storage::recovery::{recover, recover_readonly};
use countiq::storage::segment::{segment_name, DirDisk, SEGMENT_HEADER_BYTES, SEGMENT_VERSION};
use countiq::storage::testing::{ChanWaiter, Fault, FaultOp, FaultyDisk, MemDisk};
use countiq::storage::wal::{Appender, FsyncPolicy, Wal, WalConfig};
use countiq::storage::Error;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage_common::*;

#[test]
fn torn_tail_at_every_offset_keeps_exactly_the_complete_prefix() {
    // Goal: a crash mid-write loses only the records whose frames are
    // incomplete, and the cut is physical. Method: two segments (records
    // 1-4 and 5-8); truncate the last one at every byte offset, from empty
    // to whole; `recover` must keep exactly the complete prefix (state and
    // records), and after a writer appends one record at the recovered next
    // LSN, a second recovery must see prefix + that record, not garbage.
    let history = sample_history("alice");
    let (first, second) = history.split_at(4);
    let (seg2, ends) = segment_bytes(5, second);
    for cut in 0..=seg2.len() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), first);
        fs::write(dir.path().join(segment_name(5)), &seg2[..cut]).unwrap();
        let kept = 4 + ends.iter().filter(|&&e| e <= cut).count();

        let rec = recover(dir.path(), 0).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(rec.next_lsn, kept as u64 + 1, "cut at {cut}");
        assert_eq!(
            recovered_views(&rec.owners),
            views(&replay_in_memory(&history[..kept])),
            "cut at {cut}"
        );
        let (records, scan) = read_all(dir.path()).unwrap();
        let records: Vec<Record> = records.into_iter().map(|(r, _, _)| r).collect();
        assert_eq!(records, history[..kept], "cut at {cut}");
        assert!(
            scan.torn.is_none(),
            "cut at {cut}: the tail must be gone from disk"
        );
        drop(rec);

        // 4 KiB segments: every start zero-fills two of them, per offset.
        let wal = start_wal(
            DirDisk::new(dir.path()),
            kept as u64 + 1,
            1 << 12,
            FsyncPolicy::Always,
        );
        let extra = Event::Created(
            item(99, "after restart", 1, 1, 99),
            countiq::domain::Note::NONE,
        );
        append_durable(&wal, &owner("alice"), Some(&extra), None).unwrap();
        let mut wal = wal;
        stop_wal(&mut wal).unwrap();
        let again = recover(dir.path(), 0)
            .unwrap_or_else(|e| panic!("second recovery after cut at {cut}: {e}"));
        assert_eq!(again.next_lsn, kept as u64 + 2, "cut at {cut}");
        let (records, _) = read_all(dir.path()).unwrap();
        assert_eq!(records.len(), kept + 1, "cut at {cut}");
        assert_eq!(records[kept].0.event.as_ref(), Some(&extra));
    }
}

#[test]
fn every_single_bit_flip_is_cut_as_tail_or_refused_never_trusted() {
    // Goal: damaged bytes never come back as an altered record. Method: one
    // segment of 8 records (no preallocated zeros); flip every bit, one at a
    // time; recovery must refuse with Corrupt/Format when the damage is in
    // the header or before a valid record, and keep exactly the 7 records
    // before the damaged one, identical to the originals, when it is in the
    // last record (nothing valid after it). Only the 4 reserved header bytes
    // outside the header CRC may change without effect.
    let history = sample_history("alice");
    let (bytes, ends) = segment_bytes(1, &history);
    flip_every_bit(&history, &bytes, &ends, 0..bytes.len());
}

#[test]
fn every_single_bit_flip_in_a_preallocated_segment_is_cut_or_refused() {
    // Goal: the same for a preallocated segment, and damage in its zero tail
    // is a torn tail that loses nothing. Method: the 8 records in a 2 KiB
    // preallocated segment; flip every bit of the header, the records, the
    // first 64 zero bytes after them and the last 8 bytes of the file: as
    // above, and a flip in the zeros keeps all 8 records, reported torn.
    let history = sample_history("alice");
    let (bytes, ends) = preallocated_bytes(1, &history, 2048);
    let end = *ends.last().unwrap();
    flip_every_bit(
        &history,
        &bytes,
        &ends,
        (0..end + 64).chain(bytes.len() - 8..bytes.len()),
    );
}

/// Flip each bit of `bytes` (one segment holding `history`, frames ending at
/// `ends`) at the byte offsets `at`, one at a time, and check what recovery
/// makes of each: refused before the last record, the last record cut, a
/// flip after the records cut as a torn tail with every record kept.
fn flip_every_bit(
    history: &[Record],
    bytes: &[u8],
    ends: &[usize],
    at: impl Iterator<Item = usize>,
) {
    let last_start = ends[ends.len() - 2];
    let end = *ends.last().unwrap();
    let reserved = 28..SEGMENT_HEADER_BYTES;
    let dir = scratch_dir();
    let path = dir.path().join(segment_name(1));
    let (mut refused, mut cut, mut tail) = (0, 0, 0);
    for at in at {
        for bit in 0..8 {
            let mut damaged = bytes.to_vec();
            damaged[at] ^= 1 << bit;
            fs::write(&path, &damaged).unwrap();
            let want = match at {
                _ if reserved.contains(&at) => Some(history.len()),
                _ if at < last_start => None,
                _ if at < end => Some(history.len() - 1),
                _ => Some(history.len()),
            };
            match (recover_readonly(dir.path(), 0), want) {
                (Err(Error::Corrupt { .. } | Error::Format { .. }), None) => refused += 1,
                (Ok(rec), Some(n)) => {
                    let (records, scan) = read_all(dir.path()).unwrap();
                    let got: Vec<Record> = records.into_iter().map(|(r, _, _)| r).collect();
                    assert_eq!(got, history[..n], "byte {at}: an unaltered prefix");
                    assert_eq!(rec.next_lsn, n as u64 + 1);
                    assert_eq!(
                        recovered_views(&rec.owners),
                        views(&replay_in_memory(&history[..n]))
                    );
                    if !reserved.contains(&at) {
                        let torn = scan.torn.unwrap_or_else(|| panic!("byte {at}: not torn"));
                        assert_eq!(torn.offset as usize, ends[n - 1], "byte {at}");
                        if n < history.len() {
                            cut += 1;
                        } else {
                            tail += 1;
                        }
                    }
                }
                (got, want) => {
                    let got = got.map(|r| format!("next LSN {}", r.next_lsn));
                    panic!("byte {at} bit {bit}: expected {want:?} records, got {got:?}")
                }
            }
        }
    }
    assert!(refused > 0, "some flips must be refused");
    assert!(cut > 0, "some flips must be cut as a torn tail");
    if bytes.len() > end {
        assert!(tail > 0, "flips in the zeros must be cut as a torn tail");
    }
}

/// One power-cut run: appenders on the real pipeline + writer over a
/// `MemDisk`; `cuts` images taken at random moments, each with the LSNs
/// acknowledged before it. Returns (cut dirs with acks, who wrote each LSN).
/// Who writes the appenders' records: the writer thread (every append hands
/// off), or the appenders themselves whenever they find the log idle (the
/// owner actors' path: `Appender::append`, then `Leading::persist`), with
/// the writer thread taking over when batches queue up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Writer,
    Leaders,
}

/// Append by `path`; `led` counts the appends that led the log.
fn append_via<W: Waiter>(
    log: &Appender<W>,
    path: Path,
    led: &AtomicU64,
    encode: impl FnOnce(u64, &mut Vec<u8>),
    waiter: W,
) -> Result<u64, Failed> {
    match path {
        Path::Writer => log.pipeline.append(encode, Some(waiter)),
        Path::Leaders => log.append(encode, Some(waiter)).map(|(lsn, lead)| {
            if let Some(lead) = lead {
                led.fetch_add(1, Ordering::Relaxed);
                lead.persist();
            }
            lsn
        }),
    }
}

struct CutImage {
    dir: tempfile::TempDir,
    acked: Vec<u64>,
}

fn power_cut_run(
    seed: u64,
    fsync: FsyncPolicy,
    path: Path,
    cuts: usize,
) -> (Vec<CutImage>, HashMap<u64, countiq::domain::OwnerId>) {
    const APPENDERS: usize = 4;
    let mut rng = StdRng::seed_from_u64(seed);
    let disk = MemDisk::new();
    let mut wal = start_wal(disk.clone(), 1, 2048, fsync);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let led = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..APPENDERS)
        .map(|t| {
            let log = wal.appender();
            let (acked, stop, led) = (acked.clone(), stop.clone(), led.clone());
            std::thread::spawn(move || {
                let o = owner(&format!("o{t}"));
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let (tx, rx) = mpsc::channel();
                    let appended = append_via(
                        &log,
                        path,
                        &led,
                        |lsn, buf| {
                            let (e, k) = lsn_record(lsn);
                            encode_record(lsn, &o, Some(&e), k.as_ref(), buf);
                        },
                        ChanWaiter(tx),
                    );
                    let Ok(lsn) = appended else { break };
                    mine.push(lsn);
                    match rx.recv() {
                        Ok(Ok(())) => acked.lock().unwrap().push(lsn),
                        _ => break,
                    }
                }
                (o, mine)
            })
        })
        .collect();
    let mut images = Vec::new();
    for _ in 0..cuts {
        std::thread::sleep(Duration::from_micros(rng.random_range(0..300)));
        // Acks seen before the cut: their sync returned before it.
        let acked_before = acked.lock().unwrap().clone();
        let dir = scratch_dir();
        disk.cut(dir.path(), &mut rng).unwrap();
        images.push(CutImage {
            dir,
            acked: acked_before,
        });
    }
    stop.store(true, Ordering::Relaxed);
    stop_wal(&mut wal).unwrap();
    let (led, batches) = (
        led.load(Ordering::Relaxed),
        wal.stats.batches.load(Ordering::Relaxed),
    );
    if path == Path::Leaders {
        // Both ways of writing happened: leaders wrote at most `led`
        // batches, so the writer thread wrote the rest.
        assert!(
            led > 0 && batches > led,
            "seed {seed}: {led} leads, {batches} batches"
        );
    }
    let mut owner_of = HashMap::new();
    for t in threads {
        let (o, lsns) = t.join().unwrap();
        for lsn in lsns {
            owner_of.insert(lsn, o.clone());
        }
    }
    (images, owner_of)
}

/// What recovering the images of power-cut runs found.
#[derive(Debug, Default)]
struct Checked {
    /// Images that lost an acknowledged record.
    lost: usize,
    /// Images whose last segment had a torn tail cut.
    torn: usize,
    /// Images whose last segment ended in preallocated zeros (trimmed).
    zero_tail: usize,
    /// Images with a prepared file (removed by recovery).
    prepared: usize,
}

/// Recover each image; every record present must be intact and form a
/// prefix, and a recovered image must read back clean.
fn check_images(
    images: &[CutImage],
    owner_of: &HashMap<u64, countiq::domain::OwnerId>,
    checked: &mut Checked,
) {
    for img in images {
        let rec = recover(img.dir.path(), 0)
            .unwrap_or_else(|e| panic!("recovery after a power cut: {e}"));
        let n = check_lsn_prefix(&rec, owner_of).unwrap_or_else(|e| panic!("{e}"));
        checked.lost += usize::from(img.acked.iter().any(|&lsn| lsn > n));
        checked.torn += usize::from(rec.report.torn.is_some());
        checked.zero_tail += usize::from(rec.report.zero_tail_bytes_trimmed > 0);
        checked.prepared += usize::from(!rec.report.prepared_removed.is_empty());
        drop(rec);
        let (_, scan) = read_all(img.dir.path()).unwrap();
        assert!(scan.torn.is_none(), "recovery left a torn tail");
        let prepared = list_prepared(img.dir.path()).unwrap();
        assert!(prepared.is_empty(), "recovery left {prepared:?}");
    }
}

#[test]
fn power_cut_never_loses_an_acknowledged_record() {
    // Goal: with fsync always, an acknowledged record survives a power cut
    // at any moment. Method: 4 threads append through the real pipeline and
    // writer onto an in-memory disk (2 KiB segments, so cuts also land
    // around segment rolls); 100 runs × 20 cuts at random moments, each cut
    // keeping only synced bytes plus a random prefix of the unsynced tail;
    // `recover` each image and check that it is an intact prefix of the log
    // holding every record acknowledged before the cut.
    // The segments are preallocated, so the cuts also land in the zeros, on
    // a prepared file, and between rolls: each case must occur.
    power_cuts_lose_nothing_acknowledged(Path::Writer);
}

#[test]
fn power_cut_never_loses_an_acknowledged_record_written_by_leaders() {
    // Goal: the same promise on the leaders' path (an appender that finds
    // the log idle writes and syncs on its own thread, the writer thread
    // takes over when batches queue up, and only it rolls segments).
    // Method: the same runs and checks, the appenders leading.
    power_cuts_lose_nothing_acknowledged(Path::Leaders);
}

fn power_cuts_lose_nothing_acknowledged(path: Path) {
    const RUNS: u64 = 100;
    const CUTS: usize = 20;
    let mut records_checked = 0u64;
    let mut checked = Checked::default();
    for seed in 0..RUNS {
        let (images, owner_of) = power_cut_run(seed, FsyncPolicy::Always, path, CUTS);
        check_images(&images, &owner_of, &mut checked);
        assert_eq!(
            checked.lost, 0,
            "{path:?}, seed {seed}: an acknowledged record was lost"
        );
        records_checked += images.iter().map(|i| i.acked.len() as u64).sum::<u64>();
    }
    assert!(
        records_checked > 10_000,
        "the runs must acknowledge enough records to mean something: {records_checked}"
    );
    assert!(
        checked.torn > 0 && checked.zero_tail > 0 && checked.prepared > 0,
        "{path:?}: every kind of cut must occur: {checked:?}"
    );
}

#[test]
fn power_cut_with_fsync_never_loses_acknowledged_records() {
    // Goal: prove the power-cut test can fail, on both paths. Method: the
    // same runs with `FsyncPolicy::Never`, which acknowledges after `write`
    // without sync: some cut must lose an acknowledged record (recovery
    // still yields an intact prefix).
    for path in [Path::Writer, Path::Leaders] {
        let mut checked = Checked::default();
        for seed in 0..20 {
            let (images, owner_of) = power_cut_run(1000 + seed, FsyncPolicy::Never, path, 20);
            check_images(&images, &owner_of, &mut checked);
            if checked.lost > 0 {
                break;
            }
        }
        assert!(
            checked.lost > 0,
            "{path:?}: fsync never must lose acknowledged records in a power cut"
        );
    }
}

/// A waiter that records the order in which waiters complete.
struct SeqWaiter {
    seq: Arc<AtomicU64>,
    tx: mpsc::Sender<(u64, Result<(), Failed>)>,
}

impl Waiter for SeqWaiter {
    fn complete(self, result: Result<(), Failed>) {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let _ = self.tx.send((n, result));
    }
}

fn fault_case(op: FaultOp, nth: u64, errno: i32) {
    fault_case_via(op, nth, errno, Path::Writer);
    fault_case_via(op, nth, errno, Path::Leaders);
}

fn fault_case_via(op: FaultOp, nth: u64, errno: i32, path: Path) {
    const APPENDERS: usize = 3;
    const APPENDS_MAX: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let fault = Fault::new(op, nth, errno);
    let fatal = Arc::new(AtomicUsize::new(0));
    let pipeline = Arc::new(Pipeline::new(1));
    let fatal_c = fatal.clone();
    let mut wal = Wal::start(
        FaultyDisk {
            inner: DirDisk::new(dir.path()),
            fault: fault.clone(),
        },
        pipeline.clone(),
        WalConfig {
            fsync: FsyncPolicy::Always,
            segment_bytes: 4096,
        },
        move |_| {
            fatal_c.fetch_add(1, Ordering::SeqCst);
        },
    )
    .unwrap();
    let seq = Arc::new(AtomicU64::new(0));
    let led = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..APPENDERS)
        .map(|t| {
            let (appender, pipeline, seq) = (wal.appender(), pipeline.clone(), seq.clone());
            let led = led.clone();
            std::thread::spawn(move || {
                let o = owner(&format!("o{t}"));
                let mut log = Vec::new();
                for _ in 0..APPENDS_MAX {
                    let (tx, rx) = mpsc::channel();
                    let waiter = SeqWaiter {
                        seq: seq.clone(),
                        tx,
                    };
                    let appended = append_via(
                        &appender,
                        path,
                        &led,
                        |lsn, buf| {
                            let (e, k) = lsn_record(lsn);
                            encode_record(lsn, &o, Some(&e), k.as_ref(), buf);
                        },
                        waiter,
                    );
                    let (n, result) = rx.recv().expect("every waiter is completed");
                    log.push((n, appended.ok(), result, o.clone()));
                    if result.is_err() {
                        assert!(appended.is_err() || pipeline.has_failed());
                        break;
                    }
                }
                log
            })
        })
        .collect();
    let log: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let shutdown = stop_wal(&mut wal);

    let what = format!("{path:?}: {op:?} #{nth} errno {errno}");
    assert!(
        shutdown.is_err(),
        "{what}: the writer must report the failure"
    );
    assert_eq!(fault.fired.load(Ordering::SeqCst), 1, "{what}");
    assert_eq!(
        fault.calls(op),
        nth,
        "{what}: nothing of its kind was tried after the failure"
    );
    assert_eq!(
        fatal.load(Ordering::SeqCst),
        1,
        "{what}: on_fatal runs exactly once"
    );
    let last_ok = log.iter().filter(|e| e.2.is_ok()).map(|e| e.0).max();
    let first_err = log.iter().filter(|e| e.2.is_err()).map(|e| e.0).min();
    let first_err = first_err.unwrap_or_else(|| panic!("{what}: no waiter failed: {log:?}"));
    match last_ok {
        Some(last_ok) => assert!(
            last_ok < first_err,
            "{what}: an ack completed after a failure"
        ),
        None => assert_eq!(
            nth, 1,
            "{what}: earlier batches must have been acknowledged"
        ),
    }
    // Nothing is acknowledged once the log has failed.
    let (tx, rx) = mpsc::channel();
    let late = pipeline.append(
        |_, _| unreachable!("no encode after failure"),
        Some(SeqWaiter { seq, tx }),
    );
    assert_eq!(late, Err(Failed));
    assert_eq!(rx.recv().unwrap().1, Err(Failed));

    let owner_of: HashMap<u64, _> = log
        .iter()
        .filter_map(|(_, lsn, _, o)| lsn.map(|l| (l, o.clone())))
        .collect();
    let rec = recover(dir.path(), 0).unwrap_or_else(|e| panic!("{what}: recovery: {e}"));
    let n = check_lsn_prefix(&rec, &owner_of).unwrap_or_else(|e| panic!("{what}: {e}"));
    for (_, lsn, result, _) in &log {
        if let (Some(lsn), Ok(())) = (lsn, result) {
            assert!(
                *lsn <= n,
                "{what}: acknowledged LSN {lsn} lost (recovered {n})"
            );
        }
    }
}

#[test]
fn failed_write_or_sync_fails_the_batch_and_everything_after_it() {
    // Goal: fsyncgate handling. Method: a disk whose 5th write (EIO), 5th
    // sync (EIO) or 5th write (ENOSPC, after writing half) fails, under 3
    // concurrent appenders; the failed batch's waiters and all later ones
    // get Err(Failed), no ack completes after a failure, later appends fail
    // at once, on_fatal runs exactly once, the failed call is the last of
    // its kind (never retried), and recovering the directory gives an
    // intact prefix holding every acknowledged record.
    fault_case(FaultOp::Write, 5, libc::EIO);
    fault_case(FaultOp::Sync, 5, libc::EIO);
    fault_case(FaultOp::Write, 5, libc::ENOSPC);
    fault_case(FaultOp::Sync, 1, libc::EIO);
}

#[test]
fn failed_segment_preparation_fails_the_log_like_a_failed_write() {
    // Goal: a preparation error is a WAL I/O error like the others. Method:
    // the same run with the 1st preparation failing (the first segment:
    // nothing is ever acknowledged) and the 2nd failing with ENOSPC (the
    // segment after the first: acknowledgements until the first roll, then
    // the failure); same checks, including that no preparation is tried
    // after the failed one.
    fault_case(FaultOp::Prepare, 1, libc::EIO);
    fault_case(FaultOp::Prepare, 2, libc::ENOSPC);
}

// ---- the reader's and recovery's rules, one case each -----------------------

fn two_segments(dir: &std::path::Path) -> (Vec<Record>, std::path::PathBuf, std::path::PathBuf) {
    let history = sample_history("alice");
    let a = write_segment(dir, &history[..4]);
    let b = write_segment(dir, &history[4..]);
    (history, a, b)
}

fn expect_corrupt(dir: &std::path::Path, file: &std::path::Path, lsn: Option<u64>) -> u64 {
    match recover_readonly(dir, 0) {
        Err(Error::Corrupt {
            file: f,
            lsn: l,
            offset,
            ..
        }) => {
            assert_eq!(f, file);
            assert_eq!(l, lsn);
            offset
        }
        other => panic!("expected Corrupt in {}, got {other:?}", file.display()),
    }
}

#[test]
fn damage_in_a_segment_that_is_not_the_last_is_corruption() {
    // Goal: only the LAST segment may have a torn tail. Method: cut 3 bytes
    // off the end of the first of two segments: Corrupt naming that file,
    // the offset of the damaged record and its LSN (4).
    let dir = scratch_dir();
    let (history, a, _) = two_segments(dir.path());
    let (bytes, ends) = segment_bytes(1, &history[..4]);
    fs::write(&a, &bytes[..bytes.len() - 3]).unwrap();
    assert_eq!(expect_corrupt(dir.path(), &a, Some(4)), ends[2] as u64);
}

#[test]
fn an_lsn_gap_between_segments_is_corruption() {
    // Goal: a missing segment is never papered over. Method: segments with
    // LSNs 1-4 and 6-8: Corrupt naming the second file and the missing LSN.
    let dir = scratch_dir();
    let history = sample_history("alice");
    write_segment(dir.path(), &history[..4]);
    let b = write_segment(dir.path(), &history[5..]);
    expect_corrupt(dir.path(), &b, Some(5));
}

#[test]
fn a_torn_header_is_a_tail_only_in_the_last_segment() {
    // Goal: a crash right after creating a segment is recoverable, the same
    // bytes elsewhere are not. Method: (1) the last segment is 10 bytes of a
    // header: recovery removes it and resumes at LSN 5; (2) the same file
    // followed by another segment: Corrupt.
    let dir = scratch_dir();
    let (_, _, b) = two_segments(dir.path());
    let header = countiq::storage::segment::encode_header(5);
    fs::write(&b, &header[..10]).unwrap();
    let rec = recover(dir.path(), 0).unwrap();
    assert_eq!(rec.next_lsn, 5);
    assert_eq!(rec.report.segments_removed, vec![b.clone()]);
    assert!(!b.exists());
    drop(rec);

    fs::write(&b, &header[..10]).unwrap();
    // wal-1 (records 1-4), wal-5 (torn header), then a later segment.
    let history = sample_history("alice");
    fs::write(
        dir.path().join(segment_name(6)),
        segment_bytes(6, &history[5..]).0,
    )
    .unwrap();
    expect_corrupt(dir.path(), &b, Some(5));
}

#[test]
fn a_newer_format_version_is_refused_by_name() {
    // Goal: an old build never misreads a newer format. Method: a segment
    // header with the version after this build's (valid CRC):
    // Error::Version naming the file and both versions.
    let newer = SEGMENT_VERSION + 1;
    let dir = scratch_dir();
    let (_, _, b) = two_segments(dir.path());
    let mut bytes = fs::read(&b).unwrap();
    bytes[8..12].copy_from_slice(&newer.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..24]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    fs::write(&b, &bytes).unwrap();
    match recover_readonly(dir.path(), 0) {
        Err(Error::Version {
            found,
            supported,
            file,
        }) => {
            assert_eq!((file, found, supported), (b, newer, SEGMENT_VERSION));
        }
        other => panic!("expected Version, got {other:?}"),
    }
}

#[test]
fn the_log_must_reach_from_the_snapshot_or_lsn_1() {
    // Goal: missing durable records are refused, never guessed. Method:
    // (1) no snapshot, log starts at 5; (2) a snapshot covering <10 but a
    // log ending at 4; (3) a snapshot covering <3 but a log starting at 5.
    use countiq::storage::snapshot::write_snapshot;
    let history = sample_history("alice");

    let dir = scratch_dir();
    let b = write_segment(dir.path(), &history[4..]);
    expect_corrupt(dir.path(), &b, Some(5));

    let dir = scratch_dir();
    write_segment(dir.path(), &history[..4]);
    let snap = write_snapshot(dir.path(), 10, Vec::new()).unwrap();
    expect_corrupt(dir.path(), &snap.path, Some(5));

    let dir = scratch_dir();
    let b = write_segment(dir.path(), &history[4..]);
    write_snapshot(dir.path(), 3, Vec::new()).unwrap();
    expect_corrupt(dir.path(), &b, Some(5));
}

#[test]
fn prune_keeps_two_snapshots_the_segments_they_need_and_the_newest_segment() {
    // Goal: prune deletes only what no kept snapshot needs. Method: segments
    // wal-1 (1-4), wal-5 (5-8); snapshots covering 3, 6, 9 and a stale tmp:
    // prune removes snap-3, the tmp and wal-1 (wholly below 6, the older
    // kept snapshot); with snapshots at 9 and 100 the newest segment stays.
    use countiq::storage::snapshot::{prune, write_snapshot};
    let dir = scratch_dir();
    let (_, a, b) = two_segments(dir.path());
    for covers in [3, 6, 9] {
        write_snapshot(dir.path(), covers, Vec::new()).unwrap();
    }
    let tmp = dir.path().join("snap-00000000000000000042.snap.tmp");
    fs::write(&tmp, b"half").unwrap();
    let info = prune(dir.path()).unwrap();
    assert_eq!(info.segments_deleted, vec![a]);
    assert_eq!(info.snapshots_deleted.len(), 1);
    assert_eq!(info.tmp_deleted, vec![tmp]);
    write_snapshot(dir.path(), 100, Vec::new()).unwrap();
    let info = prune(dir.path()).unwrap();
    assert!(
        info.segments_deleted.is_empty(),
        "the newest segment is never deleted"
    );
    assert!(b.exists());
}

#[test]
fn verify_reports_a_torn_tail_without_touching_anything() {
    // Goal: `wal verify` is read-only. Method: a two-segment log whose last
    // record is cut short; verify must report the torn tail and the LSN
    // range, and every file (names and bytes) must be unchanged afterwards;
    // dump must print one line per valid record.
    use countiq::storage::tools::{dump, verify};
    let dir = scratch_dir();
    let (history, _, b) = two_segments(dir.path());
    let bytes = fs::read(&b).unwrap();
    fs::write(&b, &bytes[..bytes.len() - 5]).unwrap();
    let before = snapshot_files(dir.path());

    let mut out = Vec::new();
    let report = verify(dir.path(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.scan.torn.as_ref().map(|t| &t.file), Some(&b));
    assert_eq!(
        (report.scan.first_lsn, report.scan.last_lsn),
        (Some(1), Some(7))
    );
    assert!(text.contains("torn tail"), "{text}");
    assert!(text.contains("LSN 1..=7"), "{text}");

    let mut out = Vec::new();
    dump(dir.path(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let lsn_lines = text.lines().filter(|l| l.starts_with("lsn=")).count();
    assert_eq!(lsn_lines, history.len() - 1, "{text}");
    assert_eq!(
        snapshot_files(dir.path()),
        before,
        "verify and dump must not change the directory"
    );
}

fn snapshot_files(dir: &std::path::Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

// ---- preallocated segments (format v2) ---------------------------------------

/// Append `n` `lsn_record`s for `o` through `wal`, each waited for until
/// durable; returns their LSNs.
fn append_lsn_records(wal: &Wal<ChanWaiter>, o: &countiq::domain::OwnerId, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let (tx, rx) = mpsc::channel();
            let lsn = wal
                .pipeline
                .append(
                    |lsn, buf| {
                        let (e, k) = lsn_record(lsn);
                        encode_record(lsn, o, Some(&e), k.as_ref(), buf);
                    },
                    Some(ChanWaiter(tx)),
                )
                .unwrap();
            rx.recv().unwrap().unwrap();
            lsn
        })
        .collect()
}

fn file_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn with_fsync_never_segments_are_appended_not_preallocated() {
    // Goal: `--fsync never` does not zero-fill (nothing waits for a sync
    // there, and zero-filling would write every byte twice). Method: the
    // real writer on DirDisk with 1 KiB segments and `FsyncPolicy::Never`
    // appends 50 records across at least one roll; every segment is exactly
    // its records (no zero tail), the log reads back whole and verifies
    // clean.
    use countiq::storage::tools::verify;
    const SEGMENT: u64 = 1 << 10;
    let dir = tempfile::tempdir().unwrap();
    let o = owner("alice");
    let mut wal = start_wal(DirDisk::new(dir.path()), 1, SEGMENT, FsyncPolicy::Never);
    let lsns = append_lsn_records(&wal, &o, 50);
    stop_wal(&mut wal).unwrap();
    assert_eq!(lsns, (1..=50).collect::<Vec<u64>>());
    let (records, scan) = read_all(dir.path()).unwrap();
    assert!(records.iter().map(|r| r.0.lsn).eq(1..=50));
    assert_eq!(scan.torn, None);
    assert!(
        scan.segments.len() >= 2,
        "rolled: {:?}",
        file_names(dir.path())
    );
    for s in &scan.segments {
        assert_eq!(s.zero_tail_bytes, 0, "{s:?}");
        assert_eq!(s.file_bytes, s.valid_bytes, "{s:?}");
    }
    let mut out = Vec::new();
    assert!(verify(dir.path(), &mut out).unwrap().is_clean());
}

#[test]
fn a_preallocated_segment_reads_back_every_record_and_verifies_clean() {
    // Goal (a): what the real writer leaves is a clean log. Method: the
    // writer on DirDisk with 64 KiB segments (its first segment exists when
    // `Wal::start` returns) appends 50 records and stops;
    // the segment file is 64 KiB (records, then zeros) and a prepared file
    // sits beside it; the scan returns the 50 records with no torn tail and
    // the zeros as the clean end; `wal verify` says clean and names both
    // files; `wal dump` prints exactly the 50 records; recovery removes the
    // prepared file, trims the zeros, and keeps all 50.
    use countiq::storage::tools::{dump, verify};
    const SEGMENT: u64 = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let o = owner("alice");
    let mut wal = start_wal(DirDisk::new(dir.path()), 1, SEGMENT, FsyncPolicy::Always);
    let seg = dir.path().join(segment_name(1));
    assert!(seg.exists(), "start returns once the first segment exists");
    let lsns = append_lsn_records(&wal, &o, 50);
    stop_wal(&mut wal).unwrap();
    assert_eq!(lsns, (1..=50).collect::<Vec<u64>>());
    assert_eq!(fs::metadata(&seg).unwrap().len(), SEGMENT);
    let prepared = list_prepared(dir.path()).unwrap();
    assert_eq!(prepared.len(), 1, "{:?}", file_names(dir.path()));
    assert_eq!(fs::read(&prepared[0]).unwrap(), vec![0u8; SEGMENT as usize]);

    let (records, scan) = read_all(dir.path()).unwrap();
    assert_eq!(records.len(), 50);
    assert!(records.iter().map(|r| r.0.lsn).eq(1..=50));
    assert_eq!(scan.torn, None);
    let s = &scan.segments[0];
    assert_eq!(s.valid_bytes + s.zero_tail_bytes, SEGMENT);
    assert!(s.zero_tail_bytes > 0);

    let mut out = Vec::new();
    let report = verify(dir.path(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(report.is_clean(), "{text}");
    assert!(text.contains("50 records"), "{text}");
    assert!(
        text.contains("preallocated zero bytes (clean end)"),
        "{text}"
    );
    assert!(text.contains("prepared file"), "{text}");
    assert!(!text.contains("torn"), "{text}");
    let mut out = Vec::new();
    dump(dir.path(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 50, "{text}");
    assert!(text.lines().all(|l| l.starts_with("lsn=")), "{text}");

    let rec = recover(dir.path(), 0).unwrap();
    assert_eq!(rec.next_lsn, 51);
    assert_eq!(rec.report.prepared_removed, prepared);
    assert_eq!(rec.report.torn, None);
    assert_eq!(rec.report.zero_tail_bytes_trimmed, s.zero_tail_bytes);
    assert_eq!(fs::metadata(&seg).unwrap().len(), s.valid_bytes);
    assert_eq!(
        file_names(dir.path()),
        vec!["LOCK".to_string(), segment_name(1)]
    );
    let owner_of = lsns.iter().map(|&l| (l, o.clone())).collect();
    assert_eq!(check_lsn_prefix(&rec, &owner_of), Ok(50));
}

#[test]
fn a_torn_write_in_the_zeros_keeps_exactly_the_complete_prefix() {
    // Goal (b): a crash mid-write in a preallocated segment loses only the
    // records whose frames are incomplete. Method: wal-1 (records 1-4) and
    // wal-5 (records 5-8), both preallocated to 2 KiB; for every offset of
    // wal-5's records, keep the bytes before it and zeros after it (the
    // torn write); recovery keeps exactly the complete prefix (a frame whose
    // lost bytes were zeros anyway is complete), and the file then ends
    // where that prefix does. Before recovery the scan reports a torn tail
    // exactly when the kept part of the torn frame is not all zeros (a torn
    // write that left only zeros is the clean end).
    const SIZE: usize = 2048;
    let history = sample_history("alice");
    let (first, second) = history.split_at(4);
    let (seg1, ends1) = preallocated_bytes(1, first, SIZE);
    let (seg2, ends) = preallocated_bytes(5, second, SIZE);
    let records_end = *ends.last().unwrap();
    let dir = scratch_dir();
    let path = dir.path().join(segment_name(5));
    for cut in SEGMENT_HEADER_BYTES..=records_end {
        fs::write(dir.path().join(segment_name(1)), &seg1).unwrap();
        let mut torn = seg2[..cut].to_vec();
        torn.resize(SIZE, 0);
        fs::write(&path, &torn).unwrap();
        // A frame is complete when the bytes the tear lost were zeros
        // anyway (a payload may end in 0s): the image then holds it exactly.
        let complete = ends
            .iter()
            .filter(|&&e| e <= cut || seg2[cut..e].iter().all(|&b| b == 0))
            .count();
        let kept_end = ends[..complete]
            .last()
            .copied()
            .unwrap_or(SEGMENT_HEADER_BYTES);
        let kept = 4 + complete;

        let (_, scan) = read_all(dir.path()).unwrap();
        let partial_nonzero = seg2
            .get(kept_end..cut)
            .is_some_and(|p| p.iter().any(|&b| b != 0));
        assert_eq!(scan.torn.is_some(), partial_nonzero, "cut at {cut}");
        if let Some(t) = &scan.torn {
            assert_eq!(
                (t.offset, t.bytes),
                (kept_end as u64, (SIZE - kept_end) as u64)
            );
        }

        let rec = recover(dir.path(), 0).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(rec.next_lsn, kept as u64 + 1, "cut at {cut}");
        assert_eq!(
            recovered_views(&rec.owners),
            views(&replay_in_memory(&history[..kept])),
            "cut at {cut}"
        );
        drop(rec);
        let (records, scan) = read_all(dir.path()).unwrap();
        let records: Vec<Record> = records.into_iter().map(|(r, _, _)| r).collect();
        assert_eq!(records, history[..kept], "cut at {cut}");
        assert!(scan.torn.is_none(), "cut at {cut}");
        if complete > 0 {
            assert_eq!(
                fs::metadata(&path).unwrap().len(),
                kept_end as u64,
                "cut at {cut}"
            );
        } else {
            assert!(
                !path.exists(),
                "cut at {cut}: an empty last segment is removed"
            );
        }
        // wal-1 is not the last segment: its zeros stay, and are clean.
        assert_eq!(scan.segments[0].zero_tail_bytes as usize, SIZE - ends1[3]);
    }
}

#[test]
fn a_zero_tail_is_a_clean_end_in_any_v2_segment_and_a_bad_frame_in_v1() {
    // Goal: the zero-tail rule holds in every segment of the preallocated
    // format and only there. Method: wal-1 (records 1-4) and wal-5 (5-8),
    // each followed by 512 zeros: with v2 headers all 8 records read back
    // with no torn tail and both zero tails reported; with v1 headers the
    // same bytes are corruption in wal-1 (not the last segment) and, once
    // wal-1 has no zeros, a torn tail in wal-5.
    use countiq::storage::segment::SEGMENT_VERSION_V1;
    let history = sample_history("alice");
    let (first, second) = history.split_at(4);
    let dir = scratch_dir();
    let write = |version: u32, first_lsn: u64, records: &[Record], zeros: usize| {
        let (mut bytes, ends) = segment_bytes_version(version, first_lsn, records);
        bytes.resize(bytes.len() + zeros, 0);
        let path = dir.path().join(segment_name(first_lsn));
        fs::write(&path, &bytes).unwrap();
        (path, ends)
    };

    write(SEGMENT_VERSION, 1, first, 512);
    write(SEGMENT_VERSION, 5, second, 512);
    let (records, scan) = read_all(dir.path()).unwrap();
    assert_eq!(records.len(), 8);
    assert_eq!(scan.torn, None);
    assert!(scan.segments.iter().all(|s| s.zero_tail_bytes == 512));

    let (a, ends) = write(SEGMENT_VERSION_V1, 1, first, 512);
    write(SEGMENT_VERSION_V1, 5, second, 512);
    assert_eq!(expect_corrupt(dir.path(), &a, Some(5)), ends[3] as u64);
    write(SEGMENT_VERSION_V1, 1, first, 0);
    let (b, ends) = write(SEGMENT_VERSION_V1, 5, second, 512);
    let (records, scan) = read_all(dir.path()).unwrap();
    assert_eq!(records.len(), 8);
    let torn = scan.torn.expect("v1 zeros are a torn tail");
    assert_eq!((torn.file, torn.offset), (b, ends[3] as u64));
}

#[test]
fn a_bit_flip_before_valid_records_in_a_preallocated_segment_is_corruption() {
    // Goal (c): preallocation does not turn damage into a torn tail.
    // Method: records 1-8 preallocated to 2 KiB; flip one bit in record 3's
    // payload: Corrupt naming the file, record 3's offset and LSN 3, as the
    // last segment and as a segment followed by another.
    let history = sample_history("alice");
    let dir = scratch_dir();
    let (mut bytes, ends) = preallocated_bytes(1, &history, 2048);
    bytes[ends[1] + 12] ^= 0x10;
    let path = dir.path().join(segment_name(1));
    fs::write(&path, &bytes).unwrap();
    assert_eq!(expect_corrupt(dir.path(), &path, Some(3)), ends[1] as u64);
    let next = sample_history("bob")
        .into_iter()
        .map(|r| Record {
            lsn: r.lsn + 8,
            ..r
        })
        .collect::<Vec<_>>();
    fs::write(
        dir.path().join(segment_name(9)),
        preallocated_bytes(9, &next, 2048).0,
    )
    .unwrap();
    assert_eq!(expect_corrupt(dir.path(), &path, Some(3)), ends[1] as u64);
}

#[test]
fn zeros_in_the_middle_followed_by_a_valid_record_are_corruption() {
    // Goal (d): only zeros up to the end of the file are the clean end.
    // Method: records 1-8 preallocated to 2 KiB, record 3's frame zeroed
    // (a zero length at a frame boundary, but valid records follow):
    // Corrupt at record 3's offset, LSN 3, naming "valid record follows".
    let history = sample_history("alice");
    let dir = scratch_dir();
    let (mut bytes, ends) = preallocated_bytes(1, &history, 2048);
    bytes[ends[1]..ends[2]].fill(0);
    let path = dir.path().join(segment_name(1));
    fs::write(&path, &bytes).unwrap();
    assert_eq!(expect_corrupt(dir.path(), &path, Some(3)), ends[1] as u64);
    match recover_readonly(dir.path(), 0) {
        Err(e) => assert!(e.to_string().contains("valid record follows"), "{e}"),
        Ok(_) => unreachable!(),
    }
}

#[test]
fn a_stray_prepared_file_is_removed_at_start_up_and_changes_nothing() {
    // Goal (e): a prepared file is never part of the log. Method: wal-1
    // with records 1-4 and two prepared files a crash can leave: one all
    // zeros, one holding a valid header and records 5-8 (a crash after its
    // header was written, before the rename). Read-only recovery and
    // `wal verify` see records 1-4 only (verify clean, naming both files);
    // `recover` deletes both and changes nothing else; a writer then starts
    // at LSN 5 and its records are read back after 1-4.
    use countiq::storage::segment::prepared_name;
    use countiq::storage::tools::verify;
    let history = sample_history("alice");
    let dir = tempfile::tempdir().unwrap();
    let seg = write_segment(dir.path(), &history[..4]);
    let zeros = dir.path().join(prepared_name(0));
    let headed = dir.path().join(prepared_name(1));
    fs::write(&zeros, vec![0u8; 4096]).unwrap();
    fs::write(&headed, preallocated_bytes(5, &history[4..], 4096).0).unwrap();
    let seg_bytes = fs::read(&seg).unwrap();

    let ro = recover_readonly(dir.path(), 0).unwrap();
    assert_eq!(ro.next_lsn, 5);
    assert_eq!(
        recovered_views(&ro.owners),
        views(&replay_in_memory(&history[..4]))
    );
    let mut out = Vec::new();
    let report = verify(dir.path(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(report.is_clean(), "{text}");
    assert_eq!(report.scan.records, 4);
    assert_eq!(text.matches("prepared file").count(), 2, "{text}");

    let rec = recover(dir.path(), 0).unwrap();
    assert_eq!(rec.next_lsn, 5);
    assert_eq!(
        rec.report.prepared_removed,
        vec![zeros.clone(), headed.clone()]
    );
    assert!(!zeros.exists() && !headed.exists());
    assert_eq!(
        fs::read(&seg).unwrap(),
        seg_bytes,
        "the segment is untouched"
    );
    drop(rec);

    let mut wal = start_wal(DirDisk::new(dir.path()), 5, 4096, FsyncPolicy::Always);
    let extra = Event::Created(
        item(99, "after restart", 1, 1, 99),
        countiq::domain::Note::NONE,
    );
    assert_eq!(
        append_durable(&wal, &owner("alice"), Some(&extra), None),
        Ok(5)
    );
    stop_wal(&mut wal).unwrap();
    let (records, scan) = read_all(dir.path()).unwrap();
    assert_eq!(records.len(), 5);
    assert_eq!(records[4].0.event.as_ref(), Some(&extra));
    assert_eq!(scan.torn, None);
}

#[test]
fn rolling_across_preallocated_segments_recovers_every_record_in_order() {
    // Goal (f): rolls between preallocated segments lose and reorder
    // nothing. Method: the writer on DirDisk with 1 KiB segments appends
    // 300 records one by one (each durable), restarts through `recover`,
    // appends 100 more; every segment was preallocated to at least 1 KiB,
    // the log reads back LSNs 1-400 in order with no torn tail, spread over
    // many segments, and recovery holds exactly those 400 records.
    const SEGMENT: u64 = 1024;
    let dir = tempfile::tempdir().unwrap();
    let o = owner("alice");
    let mut wal = start_wal(DirDisk::new(dir.path()), 1, SEGMENT, FsyncPolicy::Always);
    let mut lsns = append_lsn_records(&wal, &o, 300);
    stop_wal(&mut wal).unwrap();
    let rec = recover(dir.path(), 0).unwrap();
    assert_eq!(rec.next_lsn, 301);
    assert_eq!(rec.report.prepared_removed.len(), 1);
    drop(rec);
    let mut wal = start_wal(DirDisk::new(dir.path()), 301, SEGMENT, FsyncPolicy::Always);
    lsns.extend(append_lsn_records(&wal, &o, 100));
    stop_wal(&mut wal).unwrap();
    assert_eq!(lsns, (1..=400).collect::<Vec<u64>>());

    let (records, scan) = read_all(dir.path()).unwrap();
    assert!(records.iter().map(|r| r.0.lsn).eq(1..=400));
    assert_eq!(scan.torn, None);
    assert!(scan.segments.len() > 20, "{} segments", scan.segments.len());
    for s in &scan.segments {
        assert_eq!(s.valid_bytes + s.zero_tail_bytes, s.file_bytes, "{s:?}");
    }
    // Only the segment the restart's recovery trimmed is below full size.
    let small = scan.segments.iter().filter(|s| s.file_bytes < SEGMENT);
    assert_eq!(small.count(), 1);
    let rec = recover(dir.path(), 0).unwrap();
    assert_eq!(rec.next_lsn, 401);
    let owner_of = lsns.iter().map(|&l| (l, o.clone())).collect();
    assert_eq!(check_lsn_prefix(&rec, &owner_of), Ok(400));
}
