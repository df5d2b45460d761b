//! Goal: `--report FILE.html` is one self-contained page that a browser
//! renders with its three plots drawn: throughput over time, latency over
//! time, latency by percentile, plus the status counts and both verdicts.
//!
//! Method: a 3 s closed-loop run with `--check --report` against the
//! honest stub of `common`; the page must reference nothing outside itself
//! (no `http`/`src=`/`href=`); then Debian's `chromium` (installed by
//! `scripts/ensure-chromium.sh`, which `scripts/test.sh` runs) renders it
//! headless: `--dump-dom` must contain each plot's `<svg>` with a drawn
//! path of at least two points, and `--screenshot` must produce a PNG. If
//! chromium is missing the test fails and says how to install it.
//! `COUNTIQ_REPORT_OUT=DIR` keeps the page and the screenshot in DIR.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Bound on one chromium invocation.
const CHROMIUM_SECS_MAX: &str = "90";

fn chromium(args: &[&str], page: &Path) -> std::process::Output {
    let url = format!("file://{}", page.display());
    let out = Command::new("timeout")
        .arg(CHROMIUM_SECS_MAX)
        .arg("chromium")
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
        ])
        .args(args)
        .arg(&url)
        .output();
    match out {
        Ok(out) if out.status.code() != Some(127) => out,
        _ => panic!(
            "chromium is not installed: run scripts/ensure-chromium.sh \
             (apt-get install chromium); this test renders the HTML report in it"
        ),
    }
}

/// The `d` attribute of the path with this id in the dumped DOM.
fn path_d<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element {id}"));
    let rest = &dom[at..];
    let d = rest
        .find(" d=\"")
        .unwrap_or_else(|| panic!("{id} has no d"))
        + 4;
    let end = rest[d..].find('"').expect("closing quote");
    &rest[d..d + end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_renders_in_headless_chromium() {
    let url = common::start(common::Mode::Honest, Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("report.html");
    let page_arg = page.to_str().expect("utf-8 path").to_string();
    let argv = [
        "--scenario",
        "read-your-writes",
        "--connections",
        "4",
        "--duration",
        "3s",
        "--check",
        "--report",
        &page_arg,
    ];
    let report = countiq_load::run(common::args(&url, &argv))
        .await
        .expect("run");
    assert!(report.ok(), "{report:#?}");
    let html = std::fs::read_to_string(&page).expect("report written");
    for outside in ["http://", "https://", "src=", "href=", "<script"] {
        let hits: Vec<_> = html
            .match_indices(outside)
            .map(|(i, _)| &html[i.saturating_sub(20)..(i + 40).min(html.len())])
            .collect();
        // The only URL on the page is the target's, inside the summary text.
        assert!(
            hits.iter().all(|h| h.contains("127.0.0.1")),
            "{outside}: {hits:?}"
        );
    }
    assert!(
        html.contains("LINEARIZABLE") || html.contains("PASSED"),
        "verdicts shown"
    );
    assert!(html.contains("stub-1"), "server version shown");

    let dump = chromium(&["--dump-dom"], &page);
    let dom = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.status.success() && dom.contains("<svg"),
        "chromium failed: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    for (svg, path) in [
        ("plot-throughput", "plot-throughput-replies-s"),
        ("plot-latency", "plot-latency-p99"),
        ("plot-percentiles", "plot-percentiles-latency"),
    ] {
        assert!(dom.contains(&format!("<svg id=\"{svg}\"")), "{svg} missing");
        let d = path_d(&dom, path);
        assert!(
            d.starts_with('M') && d.contains(" L"),
            "{path} is not drawn: {d:?}"
        );
    }
    assert!(dom.contains("id=\"status-counts\"") && dom.contains("id=\"verdict-history\""));

    let png = dir.path().join("report.png");
    let shot = format!("--screenshot={}", png.display());
    let out = chromium(&[&shot, "--window-size=800,1400"], &page);
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "{} bytes",
        bytes.len()
    );
    if let Ok(keep) = std::env::var("COUNTIQ_REPORT_OUT") {
        std::fs::copy(&page, Path::new(&keep).join("report.html")).expect("copy page");
        std::fs::copy(&png, Path::new(&keep).join("report.png")).expect("copy png");
    }
}
