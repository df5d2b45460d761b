//! `GET /items` cursors: opaque to clients, base64url of the last id of
//! the previous page.

use base64::Engine;
use uuid::Uuid;

use super::ApiError;

pub(super) fn encode(id: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes())
}

pub(super) fn decode(raw: &str) -> Result<Uuid, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|b| Uuid::from_slice(&b).ok())
        .ok_or_else(|| ApiError::BadParameter {
            code: "invalid_cursor",
            detail: "cursor is not one this server issued".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a cursor round-trips, and anything else is `invalid_cursor`.
    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef);
        assert_eq!(decode(&encode(id)).unwrap(), id);
        for bad in ["", "x", "not base64!", &encode(id)[..10]] {
            assert!(
                matches!(
                    decode(bad),
                    Err(ApiError::BadParameter {
                        code: "invalid_cursor",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }
}
