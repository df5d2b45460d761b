//! Goal: a fresh node exports every metric family it documents, from the
//! start, at 0 (so `rate()` and `absent()` work on a new node), and the
//! README's metrics table lists exactly those families.
//! Method: one test per process (the recorder is process-wide): start a
//! node, scrape `/metrics` before any other request, and look for each
//! family's `# TYPE` line and a sample; the key-table counters, untouched
//! by start-up, must read exactly 0.
mod common;

use std::collections::BTreeSet;

use common::TestServer;
use countiq::telemetry::{Kind, FAMILIES};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_exports_every_family_at_zero() {
    let s = TestServer::start().await;
    let text = s.text("/metrics").await;
    for f in FAMILIES {
        let name = f.name;
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} has no TYPE line:\n{text}"
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP line"
        );
        let sample = match kind {
            "histogram" => format!("{name}_count"),
            _ => name.to_string(),
        };
        assert!(
            text.lines().any(|l| l.starts_with(&sample)),
            "{name} has no sample:\n{text}"
        );
    }
    for name in [
        "countiq_idempotency_hits_total",
        "countiq_idempotency_misses_total",
        "countiq_idempotency_reuse_conflicts_total",
        "countiq_idempotency_expired_total",
        "countiq_http_requests_shed_total",
    ] {
        assert!(
            text.lines().any(|l| l == format!("{name} 0")),
            "{name} is not 0 on a fresh node:\n{text}"
        );
    }
    assert!(
        text.contains(
            "countiq_http_request_duration_seconds_count{route=\"/items/{id}/qty\",method=\"PATCH\",status=\"200\"} 0"
        ),
        "the request histogram's success series start at 0:\n{text}"
    );
}

/// Goal: README "Metrics" documents exactly the families the node exports.
#[test]
fn the_readme_lists_every_family() {
    let readme = include_str!("../README.md");
    let start = readme
        .find("\n## Metrics")
        .expect("README has a Metrics section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let listed: BTreeSet<&str> = section
        .lines()
        .filter(|l| l.starts_with("| `countiq_"))
        .flat_map(|l| l.split('`').skip(1).step_by(2))
        .map(|name| name.split('{').next().unwrap())
        .filter(|name| name.starts_with("countiq_"))
        .collect();
    let exported: BTreeSet<&str> = FAMILIES.iter().map(|f| f.name).collect();
    assert_eq!(
        listed, exported,
        "README Metrics table vs telemetry::FAMILIES"
    );
}
