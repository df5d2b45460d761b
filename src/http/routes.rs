//! The one table of route templates. The router, the request metrics'
//! `route` label and the idempotency fingerprints all name routes with
//! these constants; `tests/openapi.rs` holds the OpenAPI document to
//! [`TABLE`] (every path, every method, nothing else).

pub const ITEMS: &str = "/items";
pub const ITEM: &str = "/items/{id}";
pub const ITEM_QTY: &str = "/items/{id}/qty";
pub const TRANSACTIONS: &str = "/transactions";
pub const ITEM_HISTORY: &str = "/items/{id}/history";
pub const ITEM_RESERVATIONS: &str = "/items/{id}/reservations";
pub const RESERVATION: &str = "/reservations/{id}";
pub const RESERVATION_COMMIT: &str = "/reservations/{id}/commit";
pub const EVENTS: &str = "/events";
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const METRICS: &str = "/metrics";
pub const OPENAPI: &str = "/openapi.json";

/// Every route with the methods it serves and each method's success
/// status (the series the request histogram starts with at 0).
pub const TABLE: &[(&str, &[(&str, u16)])] = &[
    (ITEMS, &[("GET", 200), ("POST", 201)]),
    (ITEM, &[("GET", 200), ("PUT", 200), ("DELETE", 204)]),
    (ITEM_QTY, &[("PATCH", 200)]),
    (TRANSACTIONS, &[("POST", 200)]),
    (ITEM_HISTORY, &[("GET", 200)]),
    (ITEM_RESERVATIONS, &[("POST", 201)]),
    (RESERVATION, &[("DELETE", 204)]),
    (RESERVATION_COMMIT, &[("POST", 200)]),
    (EVENTS, &[("GET", 200)]),
    (HEALTHZ, &[("GET", 200)]),
    (READYZ, &[("GET", 200)]),
    (METRICS, &[("GET", 200)]),
    (OPENAPI, &[("GET", 200)]),
];

/// The route templates of [`TABLE`], in its order.
pub const ALL: [&str; TABLE.len()] = {
    let mut all = [""; TABLE.len()];
    let mut i = 0;
    while i < TABLE.len() {
        all[i] = TABLE[i].0;
        i += 1;
    }
    all
};
