//! What one durable flush costs on this machine, apart from CountIQ: one
//! thread overwrites 2 KiB in a preallocated file and `fdatasync`s it, in a
//! loop, as the WAL writer does per group commit. Prints the flush rate and
//! latency, and how much of the box's CPU time went to the host ("steal",
//! from /proc/stat) and to idle while it ran. A control phase runs the same
//! loop without the sync (writes into the page cache only).
//!
//! On a VM whose disk is emulated by the host, the host's work per flush can
//! show up as steal: CPU time the guest's vCPUs lose. BENCHMARKS.md uses this
//! to explain why a durable server's ratio to a stateless one depends on the
//! machine, not only on the server.
//!
//! Usage: `cargo run --release --example flush_cost -- [DIR] [SECONDS]`
//! (defaults: the current directory, 5 s per phase). Linux only (reads
//! /proc/stat); the test file is removed at the end.
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Jiffies from /proc/stat's `cpu` line: (all but guest, idle + iowait, steal).
fn cpu_mark() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    if v.len() < 8 {
        return None;
    }
    Some((v.iter().sum(), v[3] + v[4], v[7]))
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn phase(file: &std::fs::File, sync: bool, secs: u64) -> std::io::Result<()> {
    const AREA: u64 = 1 << 20;
    const CHUNK: usize = 2048;
    let buf = [0x5au8; CHUNK];
    let mut lat = Vec::new();
    let before = cpu_mark();
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        file.write_all_at(&buf, (n * CHUNK as u64) % AREA)?;
        if sync {
            let t = Instant::now();
            file.sync_data()?;
            lat.push(t.elapsed());
        }
        n += 1;
    }
    let wall = start.elapsed().as_secs_f64();
    let after = cpu_mark();
    lat.sort();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    let (steal, idle) = match (before, after) {
        (Some(b), Some(a)) => (percent(a.2 - b.2, a.0 - b.0), percent(a.1 - b.1, a.0 - b.0)),
        _ => (f64::NAN, f64::NAN),
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // Host time taken from the vCPUs per loop iteration (per flush).
    let steal_us = steal / 100.0 * cpus * wall / n.max(1) as f64 * 1e6;
    if sync {
        println!(
            "write+fdatasync: {:.0} flushes/s; fdatasync p50 {:.0} µs, p99 {:.0} µs; \
             host steal {steal:.1}% and idle {idle:.1}% of all CPU time ({steal_us:.1} µs of steal per flush)",
            n as f64 / wall,
            q(0.5),
            q(0.99),
        );
    } else {
        println!(
            "write only (control): {:.0} writes/s; host steal {steal:.1}% and idle {idle:.1}% of all CPU time",
            n as f64 / wall,
        );
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    let secs: u64 = args
        .next()
        .map_or(5, |s| s.parse().expect("SECONDS: a number"));
    let path = dir.join(format!("flush-cost-{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        // Preallocated and synced, like a WAL segment: an overwrite then
        // changes no metadata, and fdatasync flushes data only.
        file.write_all(&vec![0u8; 1 << 20])?;
        file.sync_all()?;
        phase(&file, true, secs)?;
        phase(&file, false, secs)
    })();
    let _ = std::fs::remove_file(&path);
    result
}
