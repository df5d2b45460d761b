//! Operator tools behind `countiq wal verify|dump --data-dir D`: read a data
//! directory and say what is in it, without changing a byte (no lock, no
//! truncation; a torn tail is reported, not cut).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::codec::Record;
use super::error::Error;
use super::reader::{self, ScanReport, TornTail};
use super::snapshot;
use crate::domain::Event;

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub scan: ScanReport,
    /// Every snapshot file, with its covers LSN and whether it loads.
    pub snapshots: Vec<SnapshotCheck>,
}

#[derive(Debug, Clone)]
pub struct SnapshotCheck {
    pub path: PathBuf,
    pub covers: u64,
    /// `Ok((owners, items))`, or why it does not load.
    pub result: Result<(u64, u64), String>,
}

impl VerifyReport {
    /// Whether recovery would start without cutting or refusing anything.
    pub fn is_clean(&self) -> bool {
        self.scan.torn.is_none() && self.snapshots.iter().all(|s| s.result.is_ok())
    }
}

/// Read every segment and snapshot of `dir` and describe them on `out`.
/// A hard corruption in the log is returned as the error (after the lines
/// written so far); a torn tail or an invalid snapshot is reported.
pub fn verify(dir: &Path, out: &mut impl Write) -> Result<VerifyReport, Error> {
    let mut report = VerifyReport {
        snapshots: check_snapshots(dir, out)?,
        ..VerifyReport::default()
    };
    report.scan = reader::scan_dir(dir, |_, _, _| Ok(()))?;
    describe_log(dir, &report.scan, out)?;
    let verdict = if report.is_clean() {
        "clean"
    } else {
        "NOT clean (see above)"
    };
    writeln!(out, "{verdict}").map_err(out_err())?;
    Ok(report)
}

/// Load every snapshot of `dir`, one line each on `out`.
fn check_snapshots(dir: &Path, out: &mut impl Write) -> Result<Vec<SnapshotCheck>, Error> {
    let mut checks = Vec::new();
    for (covers, path) in snapshot::list_snapshots(dir)? {
        let result = snapshot::load(&path)
            .map(|s| (s.owners.len() as u64, s.items))
            .map_err(|e| e.to_string());
        match &result {
            Ok((owners, items)) => writeln!(
                out,
                "snapshot {} covers <{covers}: {owners} owners, {items} items: ok",
                path.display()
            ),
            Err(e) => writeln!(out, "snapshot {} INVALID: {e}", path.display()),
        }
        .map_err(out_err())?;
        checks.push(SnapshotCheck {
            path,
            covers,
            result,
        });
    }
    Ok(checks)
}

/// The scanned segments, prepared files, LSN range and torn tail on `out`.
fn describe_log(dir: &Path, scan: &ScanReport, out: &mut impl Write) -> Result<(), Error> {
    for s in &scan.segments {
        let zeros = match s.zero_tail_bytes {
            0 => String::new(),
            n => format!(", then {n} preallocated zero bytes (clean end)"),
        };
        writeln!(
            out,
            "segment {} first LSN {}: {} records, {} of {} bytes valid{zeros}",
            s.path.display(),
            s.first_lsn,
            s.records,
            s.valid_bytes,
            s.file_bytes
        )
        .map_err(out_err())?;
    }
    for path in reader::list_prepared(dir)? {
        writeln!(
            out,
            "prepared file {}: zeros, not part of the log (start-up removes it)",
            path.display()
        )
        .map_err(out_err())?;
    }
    let range = match (scan.first_lsn, scan.last_lsn) {
        (Some(a), Some(b)) => format!("LSN {a}..={b}"),
        _ => "no records".to_string(),
    };
    let (segments, records) = (scan.segments.len(), scan.records);
    writeln!(out, "log: {segments} segments, {records} records, {range}").map_err(out_err())?;
    if let Some(t) = &scan.torn {
        writeln!(out, "{}", describe_torn(t)).map_err(out_err())?;
    }
    Ok(())
}

fn out_err() -> impl FnOnce(std::io::Error) -> Error {
    |e| Error::io(Path::new("<output>"), e)
}

fn describe_torn(t: &TornTail) -> String {
    format!(
        "torn tail: {} from offset {} ({} bytes): {}; recovery will cut it",
        t.file.display(),
        t.offset,
        t.bytes,
        t.reason
    )
}

/// One line per record: LSN, owner, event summary, key.
pub fn dump(dir: &Path, out: &mut impl Write) -> Result<ScanReport, Error> {
    let report = reader::scan_dir(dir, |rec, _, _| {
        writeln!(out, "{}", describe_record(&rec)).map_err(out_err())
    })?;
    if let Some(t) = &report.torn {
        writeln!(out, "{}", describe_torn(t)).map_err(out_err())?;
    }
    Ok(report)
}

fn describe_item(kind: &str, i: &crate::domain::Item, at: i64) -> String {
    format!(
        "{kind} id={} name={:?} qty={} v={} at={at}",
        i.id,
        i.name.as_str(),
        i.qty.get(),
        i.version
    )
}

/// ` reason=… reference=…` (Debug-quoted), or nothing for an empty note.
fn describe_note(note: &crate::domain::Note) -> String {
    let mut out = String::new();
    if let Some(r) = note.reason() {
        out += &format!(" reason={:?}", r.as_str());
    }
    if let Some(r) = note.reference() {
        out += &format!(" reference={:?}", r.as_str());
    }
    out
}

/// A record in one line, e.g.
/// `lsn=7 owner=alice QtySet id=… qty=5 v=3 at=… key=k-1`.
pub fn describe_record(rec: &Record) -> String {
    let event = match &rec.event {
        None => "-".to_string(),
        Some(Event::Created(i, note)) => {
            describe_item("Created", i, i.created_at) + &describe_note(note)
        }
        Some(Event::Replaced(i, note)) => {
            describe_item("Replaced", i, i.updated_at) + &describe_note(note)
        }
        Some(Event::QtySet { change, at, note }) => format!(
            "QtySet id={} qty={} v={} at={at}{}",
            change.id,
            change.qty.get(),
            change.version,
            describe_note(note)
        ),
        Some(Event::Deleted { id }) => format!("Deleted id={id}"),
        Some(Event::Transacted {
            changes,
            placed,
            committed,
            released,
            at,
        }) => {
            let parts: Vec<String> = changes
                .iter()
                .map(|c| {
                    let q = &c.change;
                    let note = describe_note(&c.note);
                    format!("{}:{}@v{}{note}", q.id, q.qty.get(), q.version)
                })
                .collect();
            let mut line = format!("Transacted at={at} [{}]", parts.join(", "));
            let ids = |v: &[uuid::Uuid]| {
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !placed.is_empty() {
                let holds: Vec<String> = placed
                    .iter()
                    .map(|h| {
                        format!(
                            "{}:{}x{} expires={}",
                            h.id,
                            h.item,
                            h.qty.get(),
                            h.expires_at
                        )
                    })
                    .collect();
                line += &format!(" reserved=[{}]", holds.join(", "));
            }
            if !committed.is_empty() {
                line += &format!(" committed=[{}]", ids(committed));
            }
            if !released.is_empty() {
                line += &format!(" released=[{}]", ids(released));
            }
            line
        }
        Some(Event::Reserved { hold, version }) => format!(
            "Reserved hold={} id={} qty={} v={version} at={} expires={}",
            hold.id,
            hold.item,
            hold.qty.get(),
            hold.created_at,
            hold.expires_at
        ),
        Some(Event::HoldCommitted {
            hold,
            change,
            at,
            note,
        }) => format!(
            "HoldCommitted hold={hold} id={} qty={} v={} at={at}{}",
            change.id,
            change.qty.get(),
            change.version,
            describe_note(note)
        ),
        Some(Event::HoldReleased { hold, version, at }) => {
            format!("HoldReleased hold={hold} v={version} at={at}")
        }
        Some(Event::HoldsExpired { holds, at }) => {
            let ids: Vec<String> = holds.iter().map(ToString::to_string).collect();
            format!("HoldsExpired at={at} [{}]", ids.join(", "))
        }
    };
    let key = match &rec.key {
        None => String::new(),
        Some(k) => {
            let outcome = match &k.response {
                Ok(_) => "ok".to_string(),
                Err(rej) => format!("rejected: {rej}"),
            };
            format!(
                " key={} ({outcome}, expires {})",
                k.key.as_str(),
                k.expires_at
            )
        }
    };
    format!("lsn={} owner={} {event}{key}", rec.lsn, rec.owner)
}
