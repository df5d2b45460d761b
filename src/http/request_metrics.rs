//! The request histogram `countiq_http_request_duration_seconds{route,
//! method,status}`: labels as indices into static tables, one cached
//! histogram handle per label combination.
//!
//! `metrics::histogram!` with labels builds a label vector and looks the
//! key up in the recorder's registry on every call; at tens of thousands of
//! requests per second that was a measurable share of the hot path. Here
//! recording allocates nothing and looks nothing up.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::{Method, StatusCode};

use super::routes;

const REQUEST_SECONDS: &str = "countiq_http_request_duration_seconds";

/// Route labels: the templates, then `unmatched` (no route: 404/405) and
/// `other` (a template missing from the table, which the OpenAPI test
/// would catch).
const ROUTE_COUNT: usize = routes::ALL.len() + 2;
const UNMATCHED: usize = ROUTE_COUNT - 2;
const OTHER_ROUTE: usize = ROUTE_COUNT - 1;
const ROUTE_LABELS: [&str; ROUTE_COUNT] = {
    let mut labels = ["unmatched"; ROUTE_COUNT];
    let mut i = 0;
    while i < routes::ALL.len() {
        labels[i] = routes::ALL[i];
        i += 1;
    }
    labels[OTHER_ROUTE] = "other";
    labels
};

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
];
const METHOD_COUNT: usize = METHODS.len();

const STATUSES: [(u16, &str); 18] = [
    (200, "200"),
    (201, "201"),
    (204, "204"),
    (400, "400"),
    (401, "401"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (409, "409"),
    (412, "412"),
    (413, "413"),
    (415, "415"),
    (421, "421"),
    (422, "422"),
    (429, "429"),
    (500, "500"),
    (503, "503"),
    (0, "other"),
];
const STATUS_COUNT: usize = STATUSES.len();

fn route_index(path: Option<&MatchedPath>) -> usize {
    let Some(path) = path else {
        return UNMATCHED;
    };
    routes::ALL
        .iter()
        .position(|r| *r == path.as_str())
        .unwrap_or(OTHER_ROUTE)
}

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::PATCH => 3,
        Method::DELETE => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

fn status_index(status: u16) -> usize {
    STATUSES[..STATUS_COUNT - 1]
        .iter()
        .position(|(c, _)| *c == status)
        .unwrap_or(STATUS_COUNT - 1)
}

static HISTOGRAMS: [OnceLock<metrics::Histogram>; ROUTE_COUNT * METHOD_COUNT * STATUS_COUNT] =
    [const { OnceLock::new() }; ROUTE_COUNT * METHOD_COUNT * STATUS_COUNT];

fn histogram(route: usize, method: usize, status: usize) -> &'static metrics::Histogram {
    HISTOGRAMS[(route * METHOD_COUNT + method) * STATUS_COUNT + status].get_or_init(|| {
        let labels = [
            ("route", ROUTE_LABELS[route]),
            ("method", METHODS[method]),
            ("status", STATUSES[status].1),
        ];
        metrics::histogram!(REQUEST_SECONDS, &labels)
    })
}

/// Create the success series of every route in the table (count 0), so a
/// fresh node already exports them. Call after the recorder is installed.
pub fn register() {
    for (route, (_, methods)) in routes::TABLE.iter().enumerate() {
        for (method, status) in methods.iter() {
            let method = METHODS.iter().position(|m| m == method).unwrap_or(7);
            histogram(route, method, status_index(*status));
        }
    }
}

/// A request's metric labels, computed once before the handler runs and
/// recorded once after.
#[derive(Clone, Copy)]
pub struct RequestLabels {
    route: usize,
    method: usize,
}

impl RequestLabels {
    pub fn of(path: Option<&MatchedPath>, method: &Method) -> Self {
        RequestLabels {
            route: route_index(path),
            method: method_index(method),
        }
    }

    /// The route template, `unmatched` or `other`.
    pub fn route(&self) -> &'static str {
        ROUTE_LABELS[self.route]
    }

    /// One histogram: its `_count` series is the request counter.
    pub fn record(&self, status: StatusCode, elapsed: Duration) {
        histogram(self.route, self.method, status_index(status.as_u16()))
            .record(elapsed.as_secs_f64());
    }
}
