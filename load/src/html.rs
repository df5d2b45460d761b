//! `--report FILE.html`: one self-contained page (inline SVG and CSS, no
//! script, no network) with throughput over time, latency over time (p50,
//! p99, max per second), the latency percentile distribution on a log scale
//! (HdrHistogram style: the x axis is 1/(1-q)), the status counts, the
//! checks' verdicts, the exact command and the server's version.
//!
//! Built from the recorded history: latency is complete − intended send
//! time in open loop (as the report's figures), complete − invoke otherwise.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use hdrhistogram::Histogram;

use crate::history::{Record, CLIENT_RESOLVE};
use crate::report::LoadReport;

/// Plot size in SVG user units.
const PLOT_W: f64 = 720.0;
const PLOT_H: f64 = 260.0;
const MARGIN_L: f64 = 70.0;
const MARGIN_B: f64 = 40.0;
/// Percentile points: q = 1 − 10^(−k/10) for k in 0..=this (up to 99.999%).
const PERCENTILE_STEPS: u32 = 50;

/// One line of a plot.
struct Series {
    name: &'static str,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

/// Writes the page.
pub(crate) fn write(path: &Path, report: &LoadReport, records: &[Record]) -> io::Result<()> {
    std::fs::write(path, render(report, records))
}

fn measured(records: &[Record]) -> impl Iterator<Item = (u64, u64)> + '_ {
    records
        .iter()
        .filter(|r| r.client < CLIENT_RESOLVE)
        .filter_map(|r| {
            let done = r.complete_ns?;
            let from = r.intended_ns.unwrap_or(r.invoke_ns);
            Some((done, done.saturating_sub(from) / 1_000))
        })
}

fn histogram() -> Histogram<u64> {
    // Constant, valid bounds: 1 µs to 10 min, 3 digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// One second of the run, as the report's "over time" plots show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Second {
    /// 1-based second of the run (by completion time).
    pub second: u64,
    pub replies: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// The per-second figures (for `--json`); empty when nothing was recorded.
pub(crate) fn timeline(records: &[Record]) -> Vec<Second> {
    per_second(records)
        .into_iter()
        .map(|(s, replies, p50_us, p99_us, max_us)| Second {
            second: s as u64,
            replies,
            p50_us,
            p99_us,
            max_us,
        })
        .collect()
}

/// Per second of the run: replies, p50, p99, max latency (µs).
fn per_second(records: &[Record]) -> Vec<(f64, u64, u64, u64, u64)> {
    let start = records
        .iter()
        .filter(|r| r.client < CLIENT_RESOLVE)
        .map(|r| r.invoke_ns)
        .min()
        .unwrap_or(0);
    let mut seconds: Vec<Histogram<u64>> = Vec::new();
    for (done, us) in measured(records) {
        let s = (done.saturating_sub(start) / 1_000_000_000) as usize;
        while seconds.len() <= s {
            seconds.push(histogram());
        }
        seconds[s].saturating_record(us.max(1));
    }
    // The last second is partial (the run ends inside it): leave it out
    // when there are whole ones, so the plot does not show a false drop.
    if seconds.len() > 1 {
        seconds.pop();
    }
    seconds
        .iter()
        .enumerate()
        .map(|(s, h)| {
            let q = |q| {
                if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(q)
                }
            };
            (s as f64 + 1.0, h.len(), q(0.5), q(0.99), h.max())
        })
        .collect()
}

fn render(r: &LoadReport, records: &[Record]) -> String {
    let seconds = per_second(records);
    let throughput = vec![Series {
        name: "replies/s",
        color: "#1f77b4",
        points: seconds.iter().map(|s| (s.0, s.1 as f64)).collect(),
    }];
    let lat = |name, color, f: fn(&(f64, u64, u64, u64, u64)) -> u64| Series {
        name,
        color,
        points: seconds
            .iter()
            .filter(|s| s.1 > 0)
            .map(|s| (s.0, f(s) as f64))
            .collect(),
    };
    let latency = vec![
        lat("p50", "#2ca02c", |s| s.2),
        lat("p99", "#ff7f0e", |s| s.3),
        lat("max", "#d62728", |s| s.4),
    ];
    let mut all = histogram();
    for (_, us) in measured(records) {
        all.saturating_record(us.max(1));
    }
    let percentiles = vec![Series {
        name: "latency",
        color: "#9467bd",
        points: (0..=PERCENTILE_STEPS)
            .map(|k| 1.0 - 10f64.powf(-f64::from(k) / 10.0))
            .filter(|q| !all.is_empty() && (1.0 - q) * all.len() as f64 >= 1.0 || *q == 0.0)
            .map(|q| (1.0 / (1.0 - q), all.value_at_quantile(q).max(1) as f64))
            .collect(),
    }];
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>countiq load: {}</title>\n<style>{CSS}</style></head><body>\n",
        esc(&r.scenario)
    );
    let _ = writeln!(page, "<h1>countiq load — {}</h1>", esc(&r.scenario));
    summary(&mut page, r);
    page.push_str(&chart(
        "plot-throughput",
        "Throughput over time",
        "s",
        "replies/s",
        &throughput,
        false,
        false,
    ));
    page.push_str(&chart(
        "plot-latency",
        "Latency over time (per second)",
        "s",
        "µs",
        &latency,
        false,
        true,
    ));
    page.push_str(&chart(
        "plot-percentiles",
        "Latency by percentile (HdrHistogram style)",
        "percentile",
        "µs",
        &percentiles,
        true,
        true,
    ));
    counts(&mut page, r);
    page.push_str("</body></html>\n");
    page
}

fn summary(page: &mut String, r: &LoadReport) {
    let verdict = |ok: bool| {
        if ok {
            "<b class=\"ok\">PASSED</b>"
        } else {
            "<b class=\"bad\">FAILED</b>"
        }
    };
    let l = &r.latency_us;
    let _ = write!(
        page,
        "<table id=\"summary\"><tr><th>command</th><td><code>{}</code></td></tr>\
         <tr><th>server version</th><td>{}</td></tr>\
         <tr><th>target</th><td>{} · {} connections · {} loop{}</td></tr>\
         <tr><th>elapsed</th><td>{:.2} s · {} replies · {:.0} req/s</td></tr>\
         <tr><th>latency µs</th><td>p50 {} · p90 {} · p99 {} · p99.9 {} · max {}</td></tr>\
         <tr><th>final-quantity check</th><td id=\"verdict-tally\">{} ({}/{} items)</td></tr>",
        esc(&r.command),
        esc(r.server_version.as_deref().unwrap_or("unknown")),
        esc(&r.url),
        r.connections,
        r.mode,
        r.target_rate
            .map(|t| format!(" at {t:.0} req/s"))
            .unwrap_or_default(),
        r.elapsed_s,
        r.replies,
        r.requests_per_s,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        verdict(r.check.passed),
        r.check.items_checked - r.check.items_failed,
        r.check.items_checked,
    );
    match &r.history_check {
        Some(v) => {
            let _ = write!(
                page,
                "<tr><th>linearizability</th><td id=\"verdict-history\">{} — {} operations ({} unknown), {} items, {} writes with LSN, {} violations</td></tr>",
                verdict(v.linearizable),
                v.operations,
                v.unknown,
                v.items,
                v.writes_with_lsn,
                v.violations_total
            );
            for viol in &v.violations {
                let _ = write!(
                    page,
                    "<tr><th>{}</th><td>{}<br><code>{}</code><br>expected: {}</td></tr>",
                    esc(viol.kind),
                    esc(&viol.message),
                    viol.ops.iter().map(|o| esc(o)).collect::<Vec<_>>().join("<br>"),
                    esc(&viol.expected)
                );
            }
        }
        None => page.push_str("<tr><th>linearizability</th><td id=\"verdict-history\">not checked (run with --check)</td></tr>"),
    }
    page.push_str("</table>\n");
}

fn counts(page: &mut String, r: &LoadReport) {
    page.push_str("<h2>Status counts</h2><table id=\"status-counts\"><tr><th>status / outcome</th><th>count</th></tr>");
    for (status, n) in &r.by_status {
        let _ = write!(page, "<tr><td>{status}</td><td>{n}</td></tr>");
    }
    for (code, n) in &r.by_error_code {
        let _ = write!(page, "<tr><td>error {}</td><td>{n}</td></tr>", esc(code));
    }
    for (kind, n) in &r.no_reply {
        let _ = write!(
            page,
            "<tr><td>no reply: {}</td><td>{n}</td></tr>",
            esc(kind)
        );
    }
    page.push_str("</table>\n");
}

/// One line chart as inline SVG; log axes in base 10.
fn chart(
    id: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    x_log: bool,
    y_log: bool,
) -> String {
    let tf = |v: f64, log: bool| if log { v.max(1.0).log10() } else { v };
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(tf(x, x_log));
        x1 = x1.max(tf(x, x_log));
        y0 = y0.min(tf(y, y_log));
        y1 = y1.max(tf(y, y_log));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if !y_log {
        y0 = 0.0;
    }
    if (x1 - x0).abs() < f64::EPSILON {
        x1 = x0 + 1.0;
    }
    if (y1 - y0).abs() < f64::EPSILON {
        y1 = y0 + 1.0;
    }
    let sx = |x: f64| MARGIN_L + (tf(x, x_log) - x0) / (x1 - x0) * (PLOT_W - MARGIN_L - 10.0);
    let sy =
        |y: f64| PLOT_H - MARGIN_B - (tf(y, y_log) - y0) / (y1 - y0) * (PLOT_H - MARGIN_B - 10.0);
    let mut svg = format!(
        "<h2>{}</h2><svg id=\"{id}\" width=\"{PLOT_W}\" height=\"{PLOT_H}\" viewBox=\"0 0 {PLOT_W} {PLOT_H}\">",
        esc(title)
    );
    let _ = write!(
        svg,
        "<rect x=\"{MARGIN_L}\" y=\"10\" width=\"{}\" height=\"{}\" class=\"frame\"/>",
        PLOT_W - MARGIN_L - 10.0,
        PLOT_H - MARGIN_B - 10.0
    );
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let anchor = if i == 4 { "end" } else { "middle" };
        let (xv, yv) = (x0 + f * (x1 - x0), y0 + f * (y1 - y0));
        let (xt, yt) = (
            if x_log { 10f64.powf(xv) } else { xv },
            if y_log { 10f64.powf(yv) } else { yv },
        );
        let x_text = if x_log {
            format!("{:.3}%", 100.0 * (1.0 - 1.0 / xt))
        } else {
            format!("{xt:.0}")
        };
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"{anchor}\">{x_text}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{:.0}</text>",
            sx(xt),
            PLOT_H - MARGIN_B + 16.0,
            MARGIN_L - 4.0,
            sy(yt) + 4.0,
            yt
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" class=\"label\" text-anchor=\"middle\">{}</text>\
         <text x=\"14\" y=\"{:.1}\" class=\"label\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">{}{}</text>",
        (MARGIN_L + PLOT_W) / 2.0,
        PLOT_H - 6.0,
        esc(x_label),
        PLOT_H / 2.0,
        PLOT_H / 2.0,
        esc(y_label),
        if y_log { " (log)" } else { "" }
    );
    for (n, s) in series.iter().enumerate() {
        let mut d = String::new();
        for (i, &(x, y)) in s.points.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { " L" },
                sx(x),
                sy(y)
            );
        }
        let _ = write!(
            svg,
            "<path id=\"{id}-{}\" class=\"series\" d=\"{d}\" stroke=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{}\" class=\"legend\" fill=\"{}\">{}</text>",
            s.name.replace(['/', ' '], "-"),
            s.color,
            MARGIN_L + 10.0 + 90.0 * n as f64,
            24,
            s.color,
            esc(s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const CSS: &str = "body{font:14px system-ui,sans-serif;margin:24px;color:#222}\
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}\
.frame{fill:none;stroke:#999}.series{fill:none;stroke-width:2}.tick{font-size:11px;fill:#555}\
.label{font-size:12px;fill:#333}.legend{font-size:12px}.ok{color:#2a2}.bad{color:#c22}code{font-size:12px}";
