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
use countiq::storage::reader::read_all;
use countiq::storage::recovery::{recover, recover_readonly};
use countiq::storage::segment::{segment_name, DirDisk, SEGMENT_HEADER_BYTES, SEGMENT_VERSION};
use countiq::storage::testing::{ChanWaiter, Fault, FaultOp, FaultyDisk, MemDisk};
use countiq::storage::wal::{FsyncPolicy, Wal, WalConfig};
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

        let wal = start_wal(
            DirDisk::new(dir.path()),
            kept as u64 + 1,
            1 << 20,
            FsyncPolicy::Always,
        );
        let extra = Event::Created(item(99, "after restart", 1, 1, 99));
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
    // segment of 8 records; flip every bit, one at a time; recovery must
    // either refuse with Corrupt/Format (damage in the header or before a
    // valid record) or keep exactly the records before the damaged one
    // (damage in the last record, nothing valid after it), identical to the
    // originals. Only the 4 reserved header bytes outside the header CRC may
    // change without effect.
    let history = sample_history("alice");
    let (bytes, ends) = segment_bytes(1, &history);
    let last_start = ends[ends.len() - 2];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(segment_name(1));
    let (mut refused, mut cut) = (0, 0);
    for bit in 0..bytes.len() * 8 {
        let mut damaged = bytes.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        fs::write(&path, &damaged).unwrap();
        let at = bit / 8;
        match recover_readonly(dir.path(), 0) {
            Err(Error::Corrupt { .. } | Error::Format { .. }) => {
                assert!(
                    at < last_start,
                    "byte {at}: damage in the last record must be a torn tail"
                );
                assert!(
                    !(28..SEGMENT_HEADER_BYTES).contains(&at),
                    "byte {at}: reserved bytes are not checked"
                );
                refused += 1;
            }
            Err(e) => panic!("byte {at}: unexpected error {e}"),
            Ok(rec) => {
                let (records, _) = read_all(dir.path()).unwrap();
                let n = records.len();
                let got: Vec<Record> = records.into_iter().map(|(r, _, _)| r).collect();
                assert_eq!(
                    got,
                    history[..n],
                    "byte {at}: records must be an unaltered prefix"
                );
                assert_eq!(rec.next_lsn, n as u64 + 1);
                assert_eq!(
                    recovered_views(&rec.owners),
                    views(&replay_in_memory(&history[..n]))
                );
                if (28..SEGMENT_HEADER_BYTES).contains(&at) {
                    assert_eq!(n, history.len(), "byte {at}");
                } else {
                    assert!(
                        at >= last_start,
                        "byte {at}: damage before the last record must be refused"
                    );
                    assert_eq!(n, history.len() - 1, "byte {at}");
                    cut += 1;
                }
            }
        }
    }
    assert!(refused > 0, "some flips must be refused");
    assert!(cut > 0, "some flips must be cut as a torn tail");
}

/// One power-cut run: appenders on the real pipeline + writer over a
/// `MemDisk`; `cuts` images taken at random moments, each with the LSNs
/// acknowledged before it. Returns (cut dirs with acks, who wrote each LSN).
struct CutImage {
    dir: tempfile::TempDir,
    acked: Vec<u64>,
}

fn power_cut_run(
    seed: u64,
    fsync: FsyncPolicy,
    cuts: usize,
) -> (Vec<CutImage>, HashMap<u64, countiq::domain::OwnerId>) {
    const APPENDERS: usize = 4;
    let mut rng = StdRng::seed_from_u64(seed);
    let disk = MemDisk::new();
    let mut wal = start_wal(disk.clone(), 1, 2048, fsync);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..APPENDERS)
        .map(|t| {
            let pipeline = wal.pipeline.clone();
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let o = owner(&format!("o{t}"));
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let (tx, rx) = mpsc::channel();
                    let appended = pipeline.append(
                        |lsn, buf| {
                            let (e, k) = lsn_record(lsn);
                            encode_record(lsn, &o, Some(&e), k.as_ref(), buf);
                        },
                        Some(ChanWaiter(tx)),
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
    let mut owner_of = HashMap::new();
    for t in threads {
        let (o, lsns) = t.join().unwrap();
        for lsn in lsns {
            owner_of.insert(lsn, o.clone());
        }
    }
    (images, owner_of)
}

/// Recover each image; every record present must be intact and form a
/// prefix. Returns how many images lost an acknowledged record.
fn check_images(images: &[CutImage], owner_of: &HashMap<u64, countiq::domain::OwnerId>) -> usize {
    let mut lost = 0;
    for img in images {
        let rec = recover(img.dir.path(), 0)
            .unwrap_or_else(|e| panic!("recovery after a power cut: {e}"));
        let n = check_lsn_prefix(&rec, owner_of).unwrap_or_else(|e| panic!("{e}"));
        if img.acked.iter().any(|&lsn| lsn > n) {
            lost += 1;
        }
    }
    lost
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
    const RUNS: u64 = 100;
    const CUTS: usize = 20;
    let mut records_checked = 0u64;
    for seed in 0..RUNS {
        let (images, owner_of) = power_cut_run(seed, FsyncPolicy::Always, CUTS);
        assert_eq!(
            check_images(&images, &owner_of),
            0,
            "seed {seed}: an acknowledged record was lost"
        );
        records_checked += images.iter().map(|i| i.acked.len() as u64).sum::<u64>();
    }
    assert!(
        records_checked > 10_000,
        "the runs must acknowledge enough records to mean something: {records_checked}"
    );
}

#[test]
fn power_cut_with_fsync_never_loses_acknowledged_records() {
    // Goal: prove the power-cut test can fail. Method: the same runs with
    // `FsyncPolicy::Never`, which acknowledges after `write` without sync:
    // some cut must lose an acknowledged record (recovery still yields an
    // intact prefix).
    let mut lost = 0;
    for seed in 0..20 {
        let (images, owner_of) = power_cut_run(1000 + seed, FsyncPolicy::Never, 20);
        lost += check_images(&images, &owner_of);
        if lost > 0 {
            break;
        }
    }
    assert!(
        lost > 0,
        "fsync never must lose acknowledged records in a power cut"
    );
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
    let threads: Vec<_> = (0..APPENDERS)
        .map(|t| {
            let (pipeline, seq) = (pipeline.clone(), seq.clone());
            std::thread::spawn(move || {
                let o = owner(&format!("o{t}"));
                let mut log = Vec::new();
                for _ in 0..APPENDS_MAX {
                    let (tx, rx) = mpsc::channel();
                    let waiter = SeqWaiter {
                        seq: seq.clone(),
                        tx,
                    };
                    let appended = pipeline.append(
                        |lsn, buf| {
                            let (e, k) = lsn_record(lsn);
                            encode_record(lsn, &o, Some(&e), k.as_ref(), buf);
                        },
                        Some(waiter),
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

    let what = format!("{op:?} #{nth} errno {errno}");
    assert!(
        shutdown.is_err(),
        "{what}: the writer must report the failure"
    );
    assert_eq!(fault.fired.load(Ordering::SeqCst), 1, "{what}");
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
    // at once, on_fatal runs exactly once, and recovering the directory
    // gives an intact prefix holding every acknowledged record.
    fault_case(FaultOp::Write, 5, libc::EIO);
    fault_case(FaultOp::Sync, 5, libc::EIO);
    fault_case(FaultOp::Write, 5, libc::ENOSPC);
    fault_case(FaultOp::Sync, 1, libc::EIO);
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
