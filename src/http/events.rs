//! `GET /events`: the owner's change feed as Server-Sent Events.
//!
//! The handler authenticates, parses `Last-Event-ID`, opens a subscription
//! through the registry (bounded per owner and per node: `actor::feed`) and
//! returns the stream. The body pulls an `actor::feed::Follower`, which
//! replays the log from `Last-Event-ID` up to the subscription's LSN and
//! then goes live; this module only renders what it yields. Every event is
//! `id: <LSN>`, `event: <kind>`, `data: <json>`, rendered by [`event_json`]
//! (one match arm per domain event).
//!
//! The stream leaves the in-flight bound (`front`) as soon as its head is
//! sent: the handler returns then, and the stream is counted by the
//! subscriber bounds instead. Shutdown and a log failure end every stream
//! (`AppState::closing`), so the server's drain never waits for one.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::extract::Owner;
use super::json::{rfc3339, set_lsn, ItemJson};
use super::{openapi, ApiError, AppState};
use crate::actor::feed::{self, FeedItem, Follower, SubscribeError};
use crate::domain::{Event, Note, QtyVersion};

/// A comment line (`:`) this often keeps idle streams (and proxies) alive.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// The `Last-Event-ID` request header (SSE).
const LAST_EVENT_ID: &str = "last-event-id";

/// The kind (`event:` line) and the JSON (`data:` line) of one domain
/// event. New event types are one arm here.
pub(super) fn event_json(event: &Event) -> (&'static str, Value) {
    let qty = |c: &QtyVersion| json!({"id": c.id, "qty": c.qty.get(), "version": c.version});
    // `reason` and `reference` on every event that changes qty, null when
    // the write had none.
    let noted = |mut data: Value, note: &Note| {
        data["reason"] = json!(note.reason().map(|r| r.as_str()));
        data["reference"] = json!(note.reference().map(|r| r.as_str()));
        data
    };
    match event {
        Event::Created(item, note) => (
            "item.created",
            noted(json!({"item": ItemJson::from(item)}), note),
        ),
        Event::Replaced(item, note) => (
            "item.replaced",
            noted(json!({"item": ItemJson::from(item)}), note),
        ),
        Event::QtySet { change, at, note } => {
            let mut data = noted(qty(change), note);
            data["at"] = Value::String(rfc3339(*at));
            ("item.qty", data)
        }
        Event::Deleted { id } => ("item.deleted", json!({"id": id})),
        Event::Transacted {
            changes,
            placed,
            committed,
            released,
            at,
        } => {
            let items: Vec<Value> = changes
                .iter()
                .map(|c| noted(qty(&c.change), &c.note))
                .collect();
            let placed: Vec<Value> = placed
                .iter()
                .map(|h| {
                    json!({"reservation": h.id, "item": h.item, "qty": h.qty.get(),
                        "expires_at": rfc3339(h.expires_at)})
                })
                .collect();
            (
                "transaction",
                json!({"items": items, "reserved": placed, "committed": committed,
                    "released": released, "at": rfc3339(*at)}),
            )
        }
        Event::Reserved { hold, version } => (
            "reservation.created",
            json!({
                "reservation": hold.id, "item": hold.item, "qty": hold.qty.get(),
                "version": version, "at": rfc3339(hold.created_at),
                "expires_at": rfc3339(hold.expires_at),
            }),
        ),
        Event::HoldCommitted {
            hold,
            change,
            at,
            note,
        } => {
            let mut data = noted(qty(change), note);
            data["reservation"] = json!(hold);
            data["at"] = Value::String(rfc3339(*at));
            ("reservation.committed", data)
        }
        Event::HoldReleased { hold, version, at } => (
            "reservation.released",
            json!({"reservation": hold, "version": version, "at": rfc3339(*at)}),
        ),
        Event::HoldsExpired { holds, at } => (
            "reservation.expired",
            json!({"reservations": holds, "at": rfc3339(*at)}),
        ),
    }
}

/// One item of the feed as an SSE event. A change: `id` and the data's
/// `lsn` are its LSN. `reset` (the point asked for is not in this log): the
/// stream goes on live after `lsn`, also its `id` so a reconnect does not
/// ask again. `lagged` (the stream ends): no `id`, so the client's
/// Last-Event-ID stays the last event it got.
fn render(item: &FeedItem) -> SseEvent {
    match item {
        FeedItem::Change(change) => {
            let (kind, mut data) = event_json(&change.event);
            data["lsn"] = change.lsn.into();
            SseEvent::default()
                .id(change.lsn.to_string())
                .event(kind)
                .data(data.to_string())
        }
        FeedItem::Reset { lsn, oldest_lsn } => {
            let data = json!({"lsn": lsn, "oldest_lsn": oldest_lsn});
            (SseEvent::default().id(lsn.to_string()).event("reset")).data(data.to_string())
        }
        FeedItem::Lagged { lsn } => {
            let data = json!({"lsn": lsn, "buffer_events": feed::FEED_BUFFER_EVENTS});
            (SseEvent::default().event("lagged")).data(data.to_string())
        }
    }
}

#[utoipa::path(
    get,
    path = "/events",
    tag = "items",
    summary = "The owner's changes as they become durable (Server-Sent Events)",
    security(("bearer" = [])),
    params(("Last-Event-ID" = Option<u64>, Header, description = "Resume after this LSN (the id of the last event received)")),
    responses(
        (status = 200, description = "text/event-stream: `id: <LSN>`, `event: item.created | item.replaced | item.qty | item.deleted | transaction | reservation.created | reservation.committed | reservation.released | reservation.expired | reset | lagged`, `data: <json>`", content_type = "text/event-stream", body = String, headers(("CountIQ-LSN" = u64, description = "live events follow this LSN"))),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 429, response = openapi::TooManySubscribers),
        (status = 503, response = openapi::Unavailable)
    )
)]
pub(super) async fn events(
    State(s): State<AppState>,
    Owner(owner): Owner,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let after = last_event_id(&headers)?;
    let registry = s.registry()?;
    let sub = registry.subscribe(&owner).await.map_err(|e| match e {
        SubscribeError::OwnerFull => ApiError::TooManySubscribers,
        SubscribeError::NodeFull => ApiError::FeedOverloaded,
        SubscribeError::Call(e) => e.into(),
    })?;
    let follower = Follower::new(
        sub,
        owner,
        registry.log_dir().to_owned(),
        registry.durable_lsn(),
        after,
    );
    let start = follower.lsn();
    // The body pulls the follower; the node's close ends the stream.
    let stream = futures_util::stream::unfold(
        (follower, s.closing()),
        |(mut follower, mut close)| async move {
            let item = tokio::select! {
                biased;
                _ = closing(&mut close) => None,
                item = follower.next() => item,
            }?;
            Some((Ok::<_, Infallible>(render(&item)), (follower, close)))
        },
    );
    let keep_alive = KeepAlive::new().interval(KEEPALIVE_INTERVAL);
    let mut response = Sse::new(stream).keep_alive(keep_alive).into_response();
    set_lsn(&mut response, start);
    Ok(response)
}

/// `Last-Event-ID`: absent, or one header holding an LSN (decimal u64).
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let mut values = headers.get_all(LAST_EVENT_ID).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = || ApiError::BadParameter {
        code: "invalid_last_event_id",
        detail: "Last-Event-ID must be one LSN (a decimal integer), sent once".into(),
    };
    if values.next().is_some() {
        return Err(bad());
    }
    let text = value.to_str().map_err(|_| bad())?.trim();
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let lsn = digits.then(|| text.parse::<u64>().ok()).flatten();
    lsn.map(Some).ok_or_else(bad)
}

/// Resolves when the node starts closing. If the state that would signal
/// it is gone (an in-process router dropped by a test), never.
async fn closing(closing: &mut watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Item, ItemName, Qty};

    /// Goal: every domain event renders to its documented kind and JSON.
    /// Method: one event of each variant, compared field by field.
    #[test]
    fn each_event_has_its_kind_and_json() {
        let id = uuid::Uuid::from_u128(7);
        let item = Item {
            id,
            name: ItemName::new("milk").unwrap(),
            qty: Qty::new(3).unwrap(),
            reserved: Qty::ZERO,
            version: 1,
            created_at: 0,
            updated_at: 0,
        };
        let change = QtyVersion {
            id,
            qty: Qty::new(5).unwrap(),
            version: 2,
        };
        let (kind, data) = event_json(&Event::Created(item.clone(), crate::domain::Note::NONE));
        assert_eq!(kind, "item.created");
        assert_eq!(data["item"]["name"], "milk");
        assert_eq!(
            event_json(&Event::Replaced(item, crate::domain::Note::NONE)).0,
            "item.replaced"
        );
        let (kind, data) = event_json(&Event::QtySet {
            change,
            at: 0,
            note: crate::domain::Note::NONE,
        });
        assert_eq!(kind, "item.qty");
        assert_eq!(data["qty"], 5);
        assert_eq!(data["version"], 2);
        assert_eq!(data["at"], "1970-01-01T00:00:00.000000Z");
        let (kind, data) = event_json(&Event::Deleted { id });
        assert_eq!(kind, "item.deleted");
        assert_eq!(data["id"], id.to_string());
        let changes = vec![change.into(), change.into()];
        let (kind, data) = event_json(&Event::Transacted {
            changes,
            placed: vec![],
            committed: vec![],
            released: vec![],
            at: 0,
        });
        assert_eq!(kind, "transaction");
        assert_eq!(data["items"].as_array().unwrap().len(), 2);
        let hold = crate::domain::Hold {
            id: uuid::Uuid::from_u128(9),
            item: id,
            qty: Qty::new(2).unwrap(),
            created_at: 0,
            expires_at: 1_000_000,
        };
        let (kind, data) = event_json(&Event::Reserved { hold, version: 3 });
        assert_eq!(kind, "reservation.created");
        assert_eq!(
            (data["qty"].as_u64(), data["version"].as_u64()),
            (Some(2), Some(3))
        );
        assert_eq!(data["expires_at"], "1970-01-01T00:00:01.000000Z");
        let committed = Event::HoldCommitted {
            hold: hold.id,
            change,
            at: 0,
            note: crate::domain::Note::NONE,
        };
        let (kind, data) = event_json(&committed);
        assert_eq!(kind, "reservation.committed");
        assert_eq!(
            (data["qty"].as_u64(), data["reservation"].as_str()),
            (Some(5), Some(&*hold.id.to_string()))
        );
        let released = Event::HoldReleased {
            hold: hold.id,
            version: 4,
            at: 0,
        };
        assert_eq!(event_json(&released).0, "reservation.released");
        let expired = Event::HoldsExpired {
            holds: vec![hold.id],
            at: 0,
        };
        let (kind, data) = event_json(&expired);
        assert_eq!(kind, "reservation.expired");
        assert_eq!(data["reservations"][0], hold.id.to_string());
    }

    /// Goal: Last-Event-ID is one decimal LSN or a 400. Method: each form.
    #[test]
    fn last_event_id_is_one_decimal_lsn() {
        let parse = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(LAST_EVENT_ID, v.parse().unwrap());
            }
            last_event_id(&h)
        };
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(&["42"]), Ok(Some(42)));
        for bad in [
            &["-1"][..],
            &["x"],
            &["1.5"],
            &["+3"],
            &["99999999999999999999"],
            &["1", "2"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
