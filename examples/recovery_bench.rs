//! Recovery speed: records replayed per second and time to ready.
//!
//! `cargo run --release --example recovery_bench [-- DIR]`
//!
//! Scenario A ("log only"): 1M items over 1000 owners, written as 1M
//! `Created` records followed by 4M `QtySet` records (5M records, 64 MiB
//! segments), no snapshot: recovery replays everything.
//! Scenario B ("snapshot + log"): a snapshot holding the same 1M items,
//! then 5M `QtySet` records after it: recovery loads the snapshot and
//! replays the 5M records.
//! The files are freshly written, so reads come from the page cache (warm).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use countiq::domain::idempotency::KeyTable;
use countiq::domain::{Event, Item, ItemName, OwnerId, Qty, QtyVersion};
use countiq::storage::codec::encode_record;
use countiq::storage::recovery::recover;
use countiq::storage::segment::{encode_header, segment_name, SEGMENT_BYTES_DEFAULT};
use countiq::storage::snapshot::{write_snapshot, OwnerSnapshot};
use uuid::Uuid;

const OWNERS: u64 = 1000;
const ITEMS_PER_OWNER: u64 = 1000;
const ITEMS: u64 = OWNERS * ITEMS_PER_OWNER;

fn owner(o: u64) -> OwnerId {
    OwnerId::new(&format!("owner-{o:04}")).expect("valid owner id")
}

fn item(o: u64, i: u64) -> Item {
    Item {
        id: Uuid::from_u128(((o as u128) << 64) | i as u128),
        name: ItemName::new(&format!("item {i}")).expect("valid name"),
        qty: Qty::ZERO,
        reserved: countiq::domain::Qty::ZERO,
        version: 1,
        created_at: 1,
        updated_at: 1,
    }
}

/// Writes records into 64 MiB segments.
struct SegmentWriter {
    dir: PathBuf,
    first_lsn: u64,
    next_lsn: u64,
    buf: Vec<u8>,
}

impl SegmentWriter {
    fn new(dir: &Path, first_lsn: u64) -> Self {
        SegmentWriter {
            dir: dir.to_owned(),
            first_lsn,
            next_lsn: first_lsn,
            buf: encode_header(first_lsn).to_vec(),
        }
    }

    fn push(&mut self, o: &OwnerId, e: &Event) {
        encode_record(self.next_lsn, o, Some(e), None, &mut self.buf);
        self.next_lsn += 1;
        if self.buf.len() as u64 >= SEGMENT_BYTES_DEFAULT {
            self.flush();
            self.first_lsn = self.next_lsn;
            self.buf = encode_header(self.first_lsn).to_vec();
        }
    }

    fn flush(&mut self) {
        fs::write(self.dir.join(segment_name(self.first_lsn)), &self.buf).expect("write segment");
    }
}

/// `rounds` QtySet records for every item, versions from `v0 + 1`.
fn qty_rounds(w: &mut SegmentWriter, rounds: u64, v0: u64) {
    for r in 1..=rounds {
        for o in 0..OWNERS {
            let ow = owner(o);
            for i in 0..ITEMS_PER_OWNER {
                let change = QtyVersion {
                    id: item(o, i).id,
                    qty: Qty::from_stored(r + i).expect("small qty"),
                    version: v0 + r,
                };
                w.push(
                    &ow,
                    &Event::QtySet {
                        change,
                        at: 2,
                        note: countiq::domain::Note::NONE,
                    },
                );
            }
        }
    }
}

fn measure(dir: &Path, label: &str) {
    let started = Instant::now();
    let rec = recover(dir, 0).expect("recover");
    let ready = started.elapsed();
    let items: usize = rec.owners.values().map(|o| o.state.len()).sum();
    let r = &rec.report;
    let replay_rate = r.records_replayed as f64 / ready.as_secs_f64();
    println!(
        "{label}: ready in {:.2} s; {} items, {} owners, {} records replayed ({} segments), snapshot {:?}; {:.2} M records/s over the whole recovery",
        ready.as_secs_f64(),
        items,
        rec.owners.len(),
        r.records_replayed,
        r.segments,
        r.snapshot.as_ref().map(|s| s.1),
        replay_rate / 1e6
    );
    assert_eq!(items as u64, ITEMS);
}

fn main() {
    let base = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("countiq-recovery-bench"));
    let _ = fs::remove_dir_all(&base);

    // A: log only.
    let a = base.join("log-only");
    fs::create_dir_all(&a).expect("mkdir");
    let t = Instant::now();
    let mut w = SegmentWriter::new(&a, 1);
    for o in 0..OWNERS {
        let ow = owner(o);
        for i in 0..ITEMS_PER_OWNER {
            w.push(
                &ow,
                &Event::Created(item(o, i), countiq::domain::Note::NONE),
            );
        }
    }
    qty_rounds(&mut w, 4, 1);
    w.flush();
    let bytes: u64 = fs::read_dir(&a)
        .expect("ls")
        .map(|e| e.expect("entry").metadata().expect("stat").len())
        .sum();
    println!(
        "A: wrote {} records, {:.0} MiB, in {:.1} s",
        w.next_lsn - 1,
        bytes as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    measure(&a, "A log only (1M creates + 4M qty sets)");

    // B: snapshot of 1M items + 5M records after it.
    let b = base.join("snapshot-plus-log");
    fs::create_dir_all(&b).expect("mkdir");
    let covers = ITEMS + 1;
    let owners: Vec<OwnerSnapshot> = (0..OWNERS)
        .map(|o| OwnerSnapshot {
            owner: owner(o),
            last_lsn: (o + 1) * ITEMS_PER_OWNER,
            items: (0..ITEMS_PER_OWNER).map(|i| item(o, i)).collect(),
            keys: KeyTable::default(),
            extra: Default::default(),
        })
        .collect();
    let info = write_snapshot(&b, covers, owners).expect("write snapshot");
    println!(
        "B: snapshot of {} items written in {:.2} s ({:.0} MiB)",
        info.items,
        info.duration.as_secs_f64(),
        info.bytes as f64 / (1 << 20) as f64
    );
    let mut w = SegmentWriter::new(&b, covers);
    qty_rounds(&mut w, 5, 1);
    w.flush();
    let t = Instant::now();
    let snap = countiq::storage::snapshot::load_newest(&b)
        .expect("load")
        .expect("a snapshot");
    println!(
        "B: snapshot alone loads in {:.2} s ({} items)",
        t.elapsed().as_secs_f64(),
        snap.items
    );
    drop(snap);
    measure(&b, "B snapshot (1M items) + 5M qty sets");

    // The actor's pause when a snapshot is taken: copying one 1M-item
    // owner's state (names are Arcs, so this copies pointers).
    let state = countiq::domain::OwnerState::from_items(
        (0..ITEMS).map(|i| item(0, i)),
        KeyTable::default(),
    )
    .expect("valid items");
    let t = Instant::now();
    let (items, _keys) = state.snapshot_view();
    println!(
        "snapshot_view of a 1M-item owner (the actor pause): {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let info = write_snapshot(
        &base,
        1,
        [OwnerSnapshot {
            owner: owner(0),
            last_lsn: 0,
            items,
            keys: KeyTable::default(),
            extra: Default::default(),
        }],
    )
    .expect("write");
    println!(
        "write_snapshot of that owner (off the actor): {:.2} s, {:.0} MiB",
        t.elapsed().as_secs_f64(),
        info.bytes as f64 / (1 << 20) as f64
    );

    let _ = fs::remove_dir_all(&base);
}
