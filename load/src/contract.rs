//! The parts of the HTTP contract (README, "API") this crate relies on.
//!
//! The load generator is a client of the contract, not of the server's code,
//! so it states these bounds itself. `tests/real_server.rs` pins each one to
//! the server's own constant, so the two cannot drift apart unnoticed.

/// An owner id (a token's `sub`) is 1 to this many characters of
/// `[A-Za-z0-9._-]`.
pub const OWNER_ID_BYTES_MAX: usize = 64;
/// Shortest HS256 secret the server accepts (256 bits).
pub const SECRET_BYTES_MIN: usize = 32;
/// The file in the server's data dir that holds its secret.
pub const SECRET_FILE_NAME: &str = "jwt.secret";
/// Ops in one `POST /transactions`: 1 to this many.
pub const TX_OPS_MAX: u32 = 1000;
/// The largest quantity or |delta| (2^53 − 1, exact in every JSON client).
pub const JSON_INT_MAX: i64 = (1 << 53) - 1;

/// Whether `raw` is a valid owner id: 1..=`OWNER_ID_BYTES_MAX` characters of
/// `[A-Za-z0-9._-]` (all ASCII, so characters are bytes).
pub fn is_owner_id(raw: &str) -> bool {
    (1..=OWNER_ID_BYTES_MAX).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    //! Goal: the owner-id rule accepts exactly the documented set; method:
    //! the edges of length and of the character set.
    use super::*;

    #[test]
    fn owner_ids_follow_the_contract() {
        for ok in ["a", "A-z_0.9", &"x".repeat(OWNER_ID_BYTES_MAX)] {
            assert!(is_owner_id(ok), "{ok:?} is valid");
        }
        let too_long = "x".repeat(OWNER_ID_BYTES_MAX + 1);
        for bad in ["", "a/b", "a b", "é", "a:b", too_long.as_str()] {
            assert!(!is_owner_id(bad), "{bad:?} is invalid");
        }
    }
}
