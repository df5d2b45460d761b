//! Goal: `countiq wal fsync-probe` measures in the directory it is given,
//! prints the figures it promises in both shapes, leaves nothing behind and
//! refuses its bounds before touching the disk.
//!
//! Method: the binary on a temp dir with a small `--count`; only the shape
//! and the order of the figures are asserted, never their values.

use std::path::Path;
use std::process::{Command, Output};

fn probe(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_countiq"))
        .args(["wal", "fsync-probe", "--dir"])
        .arg(dir)
        .args(extra)
        .output()
        .expect("run countiq")
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn json_has_the_figures_in_order_and_nothing_is_left_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A file that must stay untouched, named like a segment.
    let segment = dir.path().join("wal-00000000000000000001.log");
    std::fs::write(&segment, b"not mine").expect("write");
    let out = probe(dir.path(), &["--count", "20", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["count"], 20);
    assert_eq!(r["file_bytes"], 64 << 20);
    let bytes = r["bytes"].as_u64().expect("bytes");
    assert!(
        (40..200).contains(&bytes),
        "one framed PATCH record: {bytes}"
    );
    let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
    assert!(f("p50_us") > 0.0, "{r}");
    assert!(
        f("p50_us") <= f("p90_us") && f("p90_us") <= f("p99_us"),
        "{r}"
    );
    assert!(f("p99_us") <= f("max_us"), "{r}");
    assert_eq!(entries(dir.path()), vec!["wal-00000000000000000001.log"]);
    assert_eq!(std::fs::read(&segment).expect("read"), b"not mine");
}

#[test]
fn text_is_one_description_and_one_line_of_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = probe(dir.path(), &["--count", "10", "--bytes", "4096"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("10 × (4096-byte append + fdatasync)"),
        "{text}"
    );
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    let names: Vec<&str> = cells.iter().step_by(2).copied().collect();
    assert_eq!(
        names,
        ["count", "p50", "p90", "p99", "max", "mean", "(µs)"],
        "{text}"
    );
    let v = |i: usize| cells[i].parse::<f64>().unwrap_or_else(|_| panic!("{text}"));
    assert_eq!(v(1), 10.0);
    assert!(v(3) <= v(7) && v(7) <= v(9), "p50 <= p99 <= max: {text}");
    assert!(entries(dir.path()).is_empty(), "removed");
}

#[test]
fn bounds_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (extra, says) in [
        (&["--count", "0"][..], "--count must be in [1, 100000]"),
        (&["--count", "100001"][..], "--count must be in [1, 100000]"),
        (&["--bytes", "0"][..], "--bytes must be in [1, 1048576]"),
        (
            &["--bytes", "1048577"][..],
            "--bytes must be in [1, 1048576]",
        ),
        (
            &["--count", "64", "--bytes", "1048576"][..],
            "--count × --bytes",
        ),
    ] {
        let out = probe(dir.path(), extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} accepted");
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(entries(dir.path()).is_empty(), "{extra:?} wrote something");
    }
}
