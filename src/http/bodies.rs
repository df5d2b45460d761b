//! Request bodies: the exact shapes the API accepts.
//!
//! Every body and every object inside one is read through [`Obj`], which
//! accepts a JSON object and nothing else: serde's derived `Deserialize`
//! would also take a struct's sequence form (`["milk", 3]` for
//! `{"name":"milk","qty":3}`), which is not JSON the contract allows. The
//! types deny unknown fields, serde refuses duplicate fields, and integer
//! fields refuse `true`, `1.0`, `1e3`, `"1"`, `null` and anything outside
//! `i64`. Schema bounds that come from constants (lengths, quantities,
//! op counts) are set on the OpenAPI document by `openapi::Bounds`.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserializer, MapAccess, Visitor};
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

/// A quantity change, applied atomically.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AdjustBody {
    pub delta: i64,
}

/// 1-1000 ops of one owner, applied in order, all or nothing.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TxBody {
    #[schema(value_type = Vec<TxOpBody>)]
    pub ops: Vec<Obj<TxOpBody>>,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TxOpBody {
    pub item: Uuid,
    pub delta: i64,
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
        assert_eq!((tx.ops[0].0.item, tx.ops[0].0.delta), (id, -1));
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
    }
}
