//! Request bodies: the exact shapes the API accepts.
//!
//! Every body and every object inside one is read through [`Obj`], which
//! accepts a JSON object and nothing else: serde's derived `Deserialize`
//! would also take a struct's sequence form (`["milk", 3]` for
//! `{"name":"milk","qty":3}`), which is not JSON the contract allows. The
//! types deny unknown fields, serde refuses duplicate fields, and integer
//! fields refuse `true`, `1.0`, `1e3`, `"1"`, `null` and anything outside
//! `i64`. Optional fields (`reason`, `reference`) may be left out but not
//! sent as `null`, and are left out of the re-serialised body (the
//! idempotency fingerprint) when absent, so a body without them has the
//! fingerprint it had before they existed. Schema bounds that come from
//! constants (lengths, quantities, op counts) are set on the OpenAPI
//! document by `openapi::Bounds`.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserializer, Error as _, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

/// A `T` that was a JSON object on the wire. Serializes as `T`.
#[derive(Debug)]
pub(super) struct Obj<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectOnly<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOnly<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }

        d.deserialize_map(ObjectOnly(PhantomData)).map(Obj)
    }
}

impl<T: Serialize> Serialize for Obj<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Defines a body type that changes qty, with its optional `reason` and
/// `reference` (the write's note; API.md "Reasons and references") as its
/// last two fields: the two fields are written once here for every such
/// body (`serde(flatten)` cannot be combined with `deny_unknown_fields`).
/// They stay last, so a body's serialised form, and with it the fingerprint
/// of a stored key, is what it was.
macro_rules! noted_body {
    ($(#[$meta:meta])* $vis:vis struct $name:ident {
        $($(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty,)*
    }) => {
        $(#[$meta])* $vis struct $name {
            $($(#[$fmeta])* $fvis $field: $ty,)*
            /// Why qty changed: a short code, e.g. `sale`, `restock`, `correction`.
            #[serde(
                default,
                deserialize_with = "present",
                skip_serializing_if = "Option::is_none"
            )]
            #[schema(value_type = String, pattern = "^[a-z][a-z0-9_.-]*$", example = "sale")]
            pub reason: Option<String>,
            /// What the change refers to, e.g. an order id: printable text, at most
            /// 128 bytes of UTF-8 (no control characters), kept as sent.
            #[serde(
                default,
                deserialize_with = "present",
                skip_serializing_if = "Option::is_none"
            )]
            #[schema(value_type = String, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]+$", example = "order-1042")]
            pub reference: Option<String>,
        }
    };
}

noted_body! {
/// A new item. `name` is trimmed; unique per owner, case-insensitively.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    #[schema(
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$",
        example = "milk"
    )]
    pub name: String,
    #[serde(default)]
    #[schema(default = 0)]
    pub qty: i64,
}
}

noted_body! {
/// A full replacement: both fields are required.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplaceBody {
    #[schema(
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub name: String,
    pub qty: i64,
}
}

noted_body! {
/// A quantity change, applied atomically.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AdjustBody {
    pub delta: i64,
}
}

noted_body! {
/// The optional body of `POST /reservations/{id}/commit`.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CommitBody {
}
}

impl CommitBody {
    /// Whether the body says anything (an absent body and `{}` are the
    /// same request, with the same fingerprint).
    pub fn is_empty(&self) -> bool {
        self.reason.is_none() && self.reference.is_none()
    }
}

/// An optional field that, when present, must be a `T` (never `null`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// 1-1000 ops of one owner, applied in order, all or nothing.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TxBody {
    #[schema(value_type = Vec<TxOpBody>)]
    pub ops: Vec<Obj<TxOpBody>>,
}

/// One transaction op, a JSON object of one of four shapes: a delta
/// `{"item", "delta", "reason"?, "reference"?}` (the original op), or one
/// key naming a hold op: `{"reserve": {"item", "qty", "ttl"}}`,
/// `{"commit": {"reservation", "reason"?, "reference"?}}`,
/// `{"release": {"reservation"}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(super) enum TxOpBody {
    Adjust(TxAdjustBody),
    Reserve {
        #[schema(value_type = TxReserveBody)]
        reserve: Obj<TxReserveBody>,
    },
    Commit {
        #[schema(value_type = TxCommitBody)]
        commit: Obj<TxCommitBody>,
    },
    Release {
        #[schema(value_type = TxReleaseBody)]
        release: Obj<TxReleaseBody>,
    },
}

noted_body! {
/// Add `delta` to the item's qty.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TxAdjustBody {
    pub item: Uuid,
    pub delta: i64,
}
}

/// Hold `qty` (≥ 1) units of `item` for `ttl` seconds, as `POST
/// /items/{id}/reservations` does; the hold's id is in the answer's
/// `reservations`, in op order.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TxReserveBody {
    pub item: Uuid,
    pub qty: i64,
    pub ttl: i64,
}

noted_body! {
/// Commit an open hold, as `POST /reservations/{id}/commit` does.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TxCommitBody {
    pub reservation: Uuid,
}
}

/// Release an open hold (one that is not open refuses the transaction).
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TxReleaseBody {
    pub reservation: Uuid,
}

/// Every field any op shape has; `TxOpBody` is built from it, so the op
/// stays strict: unknown fields are refused, `null` is never a value, and
/// exactly one shape must be present.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxOpFields {
    #[serde(default, deserialize_with = "present")]
    item: Option<Uuid>,
    #[serde(default, deserialize_with = "present")]
    delta: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    reason: Option<String>,
    #[serde(default, deserialize_with = "present")]
    reference: Option<String>,
    #[serde(default, deserialize_with = "present")]
    reserve: Option<Obj<TxReserveBody>>,
    #[serde(default, deserialize_with = "present")]
    commit: Option<Obj<TxCommitBody>>,
    #[serde(default, deserialize_with = "present")]
    release: Option<Obj<TxReleaseBody>>,
}

const TX_OP_SHAPES: &str = r#"an op is {"item", "delta"} (with optional "reason", "reference") or exactly one of {"reserve": {...}}, {"commit": {...}}, {"release": {...}}"#;

impl<'de> Deserialize<'de> for TxOpBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = TxOpFields::deserialize(d)?;
        let delta_fields =
            f.item.is_some() || f.delta.is_some() || f.reason.is_some() || f.reference.is_some();
        let op = match (delta_fields, f.reserve, f.commit, f.release) {
            (true, None, None, None) => match (f.item, f.delta) {
                (Some(item), Some(delta)) => TxOpBody::Adjust(TxAdjustBody {
                    item,
                    delta,
                    reason: f.reason,
                    reference: f.reference,
                }),
                (None, _) => return Err(D::Error::missing_field("item")),
                (_, None) => return Err(D::Error::missing_field("delta")),
            },
            (false, Some(reserve), None, None) => TxOpBody::Reserve { reserve },
            (false, None, Some(commit), None) => TxOpBody::Commit { commit },
            (false, None, None, Some(release)) => TxOpBody::Release { release },
            _ => return Err(D::Error::custom(TX_OP_SHAPES)),
        };
        Ok(op)
    }
}

/// A reservation: hold `qty` (≥ 1) units for `ttl` seconds
/// (1..=`HOLD_TTL_SECS_MAX`).
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReserveBody {
    pub qty: i64,
    pub ttl: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, String> {
        serde_json::from_str::<Obj<T>>(json)
            .map(|Obj(t)| t)
            .map_err(|e| e.to_string())
    }

    /// Goal: only objects are bodies. Method: the sequence form of every
    /// body (and of a transaction op inside an object) is refused, with a
    /// message that says an object was expected; the object form of the
    /// same values is accepted.
    #[test]
    fn sequence_forms_are_refused_and_objects_accepted() {
        let id = Uuid::from_u128(7);
        for err in [
            parse::<CreateBody>(r#"["milk", 3]"#).unwrap_err(),
            parse::<ReplaceBody>(r#"["oat", 5]"#).unwrap_err(),
            parse::<AdjustBody>("[1]").unwrap_err(),
            parse::<TxBody>(&format!(r#"[[["{id}", 1]]]"#)).unwrap_err(),
            parse::<TxBody>(&format!(r#"{{"ops": [["{id}", 1]]}}"#)).unwrap_err(),
            parse::<AdjustBody>("1").unwrap_err(),
            parse::<AdjustBody>("null").unwrap_err(),
            parse::<AdjustBody>(r#""delta""#).unwrap_err(),
        ] {
            assert!(err.contains("expected a JSON object"), "{err}");
        }
        let body = parse::<CreateBody>(r#"{"name": "milk", "qty": 3}"#).unwrap();
        assert_eq!((body.name.as_str(), body.qty), ("milk", 3));
        let tx =
            parse::<TxBody>(&format!(r#"{{"ops": [{{"item": "{id}", "delta": -1}}]}}"#)).unwrap();
        let TxOpBody::Adjust(op) = &tx.ops[0].0 else {
            panic!("{tx:?}")
        };
        assert_eq!((op.item, op.delta), (id, -1));
        // The hold ops' inner values are objects too.
        for bad in [
            format!(r#"{{"ops": [{{"reserve": ["{id}", 1, 30]}}]}}"#),
            format!(r#"{{"ops": [{{"commit": ["{id}"]}}]}}"#),
            format!(r#"{{"ops": [{{"release": "{id}"}}]}}"#),
        ] {
            let err = parse::<TxBody>(&bad).unwrap_err();
            assert!(err.contains("expected a JSON object"), "{bad}: {err}");
        }
    }

    /// Goal: each op is exactly one shape, strictly. Method: every shape
    /// parses; mixing shapes, two hold ops in one object, an empty op,
    /// unknown fields (inside the hold objects too), and `null` for an
    /// optional field are refused.
    #[test]
    fn tx_ops_are_exactly_one_shape() {
        let id = Uuid::from_u128(7);
        let op = |json: String| parse::<TxBody>(&format!(r#"{{"ops": [{json}]}}"#));
        let ok = [
            format!(r#"{{"item": "{id}", "delta": 1}}"#),
            format!(r#"{{"item": "{id}", "delta": 1, "reason": "sale", "reference": "o-1"}}"#),
            format!(r#"{{"reserve": {{"item": "{id}", "qty": 2, "ttl": 30}}}}"#),
            format!(r#"{{"commit": {{"reservation": "{id}"}}}}"#),
            format!(r#"{{"commit": {{"reservation": "{id}", "reason": "sale"}}}}"#),
            format!(r#"{{"release": {{"reservation": "{id}"}}}}"#),
        ];
        for json in ok {
            assert!(op(json.clone()).is_ok(), "{json}: {:?}", op(json.clone()));
        }
        let bad = [
            "{}".to_string(),
            format!(r#"{{"item": "{id}"}}"#),
            r#"{"delta": 1}"#.to_string(),
            r#"{"reason": "sale"}"#.to_string(),
            format!(r#"{{"item": "{id}", "delta": 1, "reason": null}}"#),
            format!(r#"{{"item": "{id}", "delta": null}}"#),
            format!(
                r#"{{"item": "{id}", "delta": 1, "reserve": {{"item": "{id}", "qty": 1, "ttl": 1}}}}"#
            ),
            format!(
                r#"{{"commit": {{"reservation": "{id}"}}, "release": {{"reservation": "{id}"}}}}"#
            ),
            format!(r#"{{"reserve": {{"item": "{id}", "qty": 1}}}}"#),
            format!(r#"{{"reserve": {{"item": "{id}", "qty": 1, "ttl": 1, "x": 1}}}}"#),
            format!(r#"{{"release": {{"reservation": "{id}", "reason": "sale"}}}}"#),
            r#"{"reserve": null}"#.to_string(),
            format!(r#"{{"item": "{id}", "delta": 1, "op": "x"}}"#),
        ];
        for json in bad {
            assert!(op(json.clone()).is_err(), "{json} was accepted");
        }
    }

    /// Goal: the wrapper keeps the strictness of the derived types.
    #[test]
    fn unknown_and_duplicate_fields_are_still_refused() {
        assert!(parse::<AdjustBody>(r#"{"delta": 1, "x": 2}"#).is_err());
        assert!(parse::<AdjustBody>(r#"{"delta": 1, "delta": 2}"#).is_err());
        assert!(parse::<AdjustBody>(r#"{"delta": 1.0}"#).is_err());
        assert!(parse::<AdjustBody>(r#"{"delta": "1"}"#).is_err());
    }

    /// Goal: the fingerprint's canonical form is the object form.
    #[test]
    fn obj_serializes_as_its_value() {
        let tx = parse::<TxBody>(&format!(
            r#"{{"ops":[{{"delta":2,"item":"{}"}}]}}"#,
            Uuid::nil()
        ))
        .unwrap();
        assert_eq!(
            serde_json::to_string(&tx).unwrap(),
            format!(r#"{{"ops":[{{"item":"{}","delta":2}}]}}"#, Uuid::nil())
        );
        // Absent optional fields stay absent: the fingerprint of a body
        // without them is what it was before they existed.
        let adjust = parse::<AdjustBody>(r#"{"delta": 2}"#).unwrap();
        assert_eq!(serde_json::to_string(&adjust).unwrap(), r#"{"delta":2}"#);
        let noted = parse::<AdjustBody>(r#"{"reference": "o-1", "delta": 2}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&noted).unwrap(),
            r#"{"delta":2,"reference":"o-1"}"#
        );
        let reserve = parse::<TxBody>(&format!(
            r#"{{"ops":[{{"reserve":{{"ttl":5,"qty":1,"item":"{}"}}}}]}}"#,
            Uuid::nil()
        ))
        .unwrap();
        assert_eq!(
            serde_json::to_string(&reserve).unwrap(),
            format!(
                r#"{{"ops":[{{"reserve":{{"item":"{}","qty":1,"ttl":5}}}}]}}"#,
                Uuid::nil()
            )
        );
    }
}
