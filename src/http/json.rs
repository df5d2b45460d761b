//! Response bodies and their headers: the item JSON (written by hand on
//! the hot path, equal to what serde makes of [`ItemJson`]), RFC 3339
//! timestamps, `ETag`, and the `CountIQ-LSN` header.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use uuid::Uuid;

use crate::domain::{Hold, Item, Outcome};

/// The owner-wide log position a response reflects (README "CountIQ-LSN").
pub const LSN: HeaderName = HeaderName::from_static("countiq-lsn");

/// Set `CountIQ-LSN: <lsn>` on `response`.
pub(super) fn set_lsn(response: &mut Response, lsn: u64) {
    let mut digits = itoa::Buffer::new();
    let value = HeaderValue::from_str(digits.format(lsn)).expect("digits");
    response.headers_mut().insert(LSN, value);
}

/// An item as JSON (API.md "Item").
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Item)]
pub(super) struct ItemJson<'a> {
    id: Uuid,
    name: &'a str,
    qty: u64,
    /// Units held by open reservations (≤ qty).
    reserved: u64,
    /// `qty - reserved`: what a reservation or a decrease may take.
    available: u64,
    /// Starts at 1, +1 on every change; `ETag` is `"<version>"`.
    #[schema(minimum = 1)]
    version: u64,
    /// RFC 3339, UTC.
    #[schema(value_type = String)]
    created_at: Rfc3339,
    #[schema(value_type = String)]
    updated_at: Rfc3339,
}

impl<'a> From<&'a Item> for ItemJson<'a> {
    fn from(i: &'a Item) -> Self {
        ItemJson {
            id: i.id,
            name: i.name.as_str(),
            qty: i.qty.get(),
            reserved: i.reserved.get(),
            available: i.available(),
            version: i.version,
            created_at: Rfc3339(i.created_at),
            updated_at: Rfc3339(i.updated_at),
        }
    }
}

/// Microseconds since the epoch, serialized as RFC 3339 (UTC, µs) straight
/// into the output: no intermediate `String` per timestamp.
struct Rfc3339(i64);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; RFC3339_MICROS_LEN];
        s.serialize_str(rfc3339_micros(self.0, &mut buf))
    }
}

/// `micros` as RFC 3339 text (UTC, µs), for JSON built off the hot path.
pub(super) fn rfc3339(micros: i64) -> String {
    let mut buf = [0u8; RFC3339_MICROS_LEN];
    rfc3339_micros(micros, &mut buf).to_owned()
}

/// Length of `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
const RFC3339_MICROS_LEN: usize = 27;

/// `micros` since the epoch (clamped to 0..=9999-12-31) as RFC 3339 in UTC
/// with microseconds, the same text as `humantime::format_rfc3339_micros`.
/// Written by hand into a stack buffer: it runs twice per item response,
/// and going through `fmt` cost more than the rest of the JSON.
fn rfc3339_micros(micros: i64, buf: &mut [u8; RFC3339_MICROS_LEN]) -> &str {
    const MAX: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999Z
    let micros = micros.clamp(0, MAX);
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let (days, sod) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut put = |at: usize, value: i64, width: usize| {
        let mut v = value;
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, sod / 3600, 2);
    put(14, sod / 60 % 60, 2);
    put(17, sod % 60, 2);
    put(20, frac, 6);
    for (at, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (26, b'Z'),
    ] {
        buf[at] = sep;
    }
    std::str::from_utf8(buf).expect("digits and separators are ASCII")
}

pub(super) fn item_response(status: StatusCode, item: &Item, created: bool) -> Response {
    let mut body = Vec::new();
    write_item_json(item, &mut body);
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag(item.version));
    if created {
        let location = format!("/items/{}", item.id);
        headers.insert(
            header::LOCATION,
            HeaderValue::from_str(&location).expect("uuid is ASCII"),
        );
    }
    response
}

/// An item as JSON, byte for byte what `serde_json` makes of [`ItemJson`]
/// (a test holds them equal), written straight into `out`. This is the
/// body of every write's reply: through serde, escaping-scanning the id and
/// the two timestamps, which need no escaping, cost about as much as the
/// rest of the handler. Only the name is escaped (by `serde_json`).
fn write_item_json(item: &Item, out: &mut Vec<u8>) {
    let name = item.name.as_str();
    out.reserve(150 + name.len());
    let mut numbers = itoa::Buffer::new();
    let mut uuid = Uuid::encode_buffer();
    let mut time = [0u8; RFC3339_MICROS_LEN];
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(item.id.hyphenated().encode_lower(&mut uuid).as_bytes());
    out.extend_from_slice(b"\",\"name\":");
    serde_json::to_writer(&mut *out, name).expect("writing to a Vec cannot fail");
    out.extend_from_slice(b",\"qty\":");
    out.extend_from_slice(numbers.format(item.qty.get()).as_bytes());
    out.extend_from_slice(b",\"reserved\":");
    out.extend_from_slice(numbers.format(item.reserved.get()).as_bytes());
    out.extend_from_slice(b",\"available\":");
    out.extend_from_slice(numbers.format(item.available()).as_bytes());
    out.extend_from_slice(b",\"version\":");
    out.extend_from_slice(numbers.format(item.version).as_bytes());
    out.extend_from_slice(b",\"created_at\":\"");
    out.extend_from_slice(rfc3339_micros(item.created_at, &mut time).as_bytes());
    out.extend_from_slice(b"\",\"updated_at\":\"");
    out.extend_from_slice(rfc3339_micros(item.updated_at, &mut time).as_bytes());
    out.extend_from_slice(b"\"}");
}

/// `"<version>"`, written without a format string.
fn etag(version: u64) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(version).as_bytes();
    let mut quoted = [b'"'; 22];
    quoted[1..=digits.len()].copy_from_slice(digits);
    HeaderValue::from_bytes(&quoted[..digits.len() + 2]).expect("digits and quotes")
}

pub(super) fn outcome_response(outcome: &Outcome) -> Response {
    match outcome {
        Outcome::Created(item) => item_response(StatusCode::CREATED, item, true),
        Outcome::Updated(item) => item_response(StatusCode::OK, item, false),
        Outcome::Deleted => StatusCode::NO_CONTENT.into_response(),
        Outcome::Transacted(items, holds) => {
            let body = serde_json::json!({
                "items": items.iter().map(ItemJson::from).collect::<Vec<_>>(),
                "reservations": holds.iter().map(HoldJson::from).collect::<Vec<_>>(),
            });
            axum::Json(body).into_response()
        }
        Outcome::Reserved(hold, item) => {
            let mut response = (
                StatusCode::CREATED,
                axum::Json(ReservationJson::new(hold, item)),
            )
                .into_response();
            let location = format!("/reservations/{}", hold.id);
            response.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_str(&location).expect("uuid is ASCII"),
            );
            response
        }
    }
}

/// A reservation as JSON (API.md "Reservation"), with its item after it.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Reservation)]
pub(super) struct ReservationJson<'a> {
    id: Uuid,
    item_id: Uuid,
    #[schema(minimum = 1)]
    qty: u64,
    #[schema(value_type = String)]
    created_at: Rfc3339,
    /// When the hold is released unless committed or released first.
    #[schema(value_type = String)]
    expires_at: Rfc3339,
    item: ItemJson<'a>,
}

impl<'a> ReservationJson<'a> {
    fn new(hold: &Hold, item: &'a Item) -> Self {
        ReservationJson {
            id: hold.id,
            item_id: hold.item,
            qty: hold.qty.get(),
            created_at: Rfc3339(hold.created_at),
            expires_at: Rfc3339(hold.expires_at),
            item: item.into(),
        }
    }
}

/// A hold a transaction placed (API.md "Transactions"): a reservation
/// without its item (the items are the answer's `items`).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = TxReservation)]
pub(super) struct HoldJson {
    id: Uuid,
    item_id: Uuid,
    #[schema(minimum = 1)]
    qty: u64,
    #[schema(value_type = String)]
    created_at: Rfc3339,
    #[schema(value_type = String)]
    expires_at: Rfc3339,
}

impl From<&Hold> for HoldJson {
    fn from(hold: &Hold) -> Self {
        HoldJson {
            id: hold.id,
            item_id: hold.item,
            qty: hold.qty.get(),
            created_at: Rfc3339(hold.created_at),
            expires_at: Rfc3339(hold.expires_at),
        }
    }
}

/// One history entry as JSON (API.md "History").
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = HistoryEntry)]
pub(super) struct HistoryJson<'a> {
    /// The item version this transition produced.
    #[schema(minimum = 1)]
    version: u64,
    #[schema(value_type = String)]
    at: Rfc3339,
    /// `created`, `replaced`, `adjusted`, `transacted`, `reserved`,
    /// `committed`, `released` or `expired`.
    change: &'static str,
    /// The reservation, for the four hold changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    reservation_id: Option<Uuid>,
    qty: u64,
    reserved: u64,
    /// qty after minus qty before.
    delta: i64,
    /// The Idempotency-Key of the request, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
    /// The write's `reason`, `null` when it had none (holds placed or
    /// released and expiries never have one).
    reason: Option<&'a str>,
    /// The write's `reference`, `null` when it had none.
    reference: Option<&'a str>,
}

impl<'a> From<&'a crate::domain::HistoryEntry> for HistoryJson<'a> {
    fn from(e: &'a crate::domain::HistoryEntry) -> Self {
        use crate::domain::Change;
        let (change, reservation_id) = match e.change {
            Change::Created => ("created", None),
            Change::Replaced => ("replaced", None),
            Change::Adjusted => ("adjusted", None),
            Change::Transacted => ("transacted", None),
            Change::Reserved { hold } => ("reserved", Some(hold)),
            Change::Committed { hold } => ("committed", Some(hold)),
            Change::Released { hold } => ("released", Some(hold)),
            Change::Expired { hold } => ("expired", Some(hold)),
        };
        HistoryJson {
            version: e.version,
            at: Rfc3339(e.at),
            change,
            reservation_id,
            qty: e.qty.get(),
            reserved: e.reserved.get(),
            delta: e.delta,
            idempotency_key: e.key.as_ref().map(|k| k.as_str()),
            reason: e.note.reason().map(|r| r.as_str()),
            reference: e.note.reference().map(|r| r.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn humantime_text(micros: i64) -> String {
        let t = UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64);
        humantime::format_rfc3339_micros(t).to_string()
    }

    #[test]
    fn rfc3339_edges_match_humantime() {
        let mut buf = [0u8; RFC3339_MICROS_LEN];
        for micros in [
            0,
            1,
            999_999,
            1_000_000,
            86_399_999_999,
            86_400_000_000,
            951_782_400_000_000,   // 2000-02-29
            1_709_164_800_123_456, // 2024-02-29
            4_107_542_399_999_999, // 2100-02-28T23:59:59.999999
            4_107_542_400_000_000, // 2100-03-01 (no leap day in 2100)
            253_402_300_799_999_999,
        ] {
            assert_eq!(
                rfc3339_micros(micros, &mut buf),
                humantime_text(micros),
                "{micros}"
            );
        }
        assert_eq!(rfc3339_micros(-5, &mut buf), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(i64::MAX, &mut buf),
            "9999-12-31T23:59:59.999999Z"
        );
    }

    proptest! {
        #[test]
        fn rfc3339_matches_humantime(micros in 0i64..253_402_300_800_000_000) {
            let mut buf = [0u8; RFC3339_MICROS_LEN];
            prop_assert_eq!(rfc3339_micros(micros, &mut buf), humantime_text(micros));
        }

        #[test]
        fn item_json_is_what_serde_makes(
            name in "\\PC{1,40}|[a-z\"\\\\/\u{e9}\u{1F600} ]{1,20}",
            qty in 0u64..=crate::domain::QTY_MAX,
            version in 1u64..,
            created in 0i64..253_402_300_800_000_000,
            updated in 0i64..253_402_300_800_000_000,
            id in any::<u128>(),
        ) {
            let Ok(name) = crate::domain::ItemName::new(&name) else { return Ok(()) };
            let item = Item {
                id: Uuid::from_u128(id),
                name,
                qty: crate::domain::Qty::new(qty as i64).unwrap(),
                reserved: crate::domain::Qty::ZERO,
                version,
                created_at: created,
                updated_at: updated,
            };
            let mut ours = Vec::new();
            write_item_json(&item, &mut ours);
            prop_assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&ItemJson::from(&item)).unwrap()
            );
        }

        #[test]
        fn etag_is_the_quoted_version(version in any::<u64>()) {
            let value = etag(version);
            prop_assert_eq!(value.to_str().unwrap(), format!("\"{version}\""));
        }
    }
}
