//! Bearer tokens for the load generator. The tool mints its own tokens, one
//! per owner, from the server's secret and by the contract's rules (HS256,
//! `sub` = owner, `exp` required), so a run needs no help from the server and
//! no code of it. `tests/real_server.rs` checks them with the server's own
//! verifier.

use std::io;
use std::path::Path;
use std::time::Duration;

use http::HeaderValue;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::contract::{is_owner_id, SECRET_BYTES_MIN, SECRET_FILE_NAME};
use crate::error::LoadError;

/// Token lifetime: far longer than any run (`DURATION_MAX` is one hour).
pub const TOKEN_TTL: Duration = Duration::from_secs(2 * 3600);

/// The claims the contract names; the server also accepts `iat`.
#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
}

/// The HMAC key, read by the server's rules: `--jwt-secret` /
/// `COUNTIQ_JWT_SECRET`, else `<data_dir>/jwt.secret`; surrounding
/// whitespace trimmed; at least `SECRET_BYTES_MIN` bytes. Unlike the server,
/// this never creates the file: a secret the server does not know would only
/// produce 401s.
pub fn load_secret(explicit: Option<&str>, data_dir: &Path) -> Result<Vec<u8>, LoadError> {
    let text = match explicit {
        Some(text) => text.to_string(),
        None => read_secret_file(&data_dir.join(SECRET_FILE_NAME))?,
    };
    let key = text.trim().as_bytes().to_vec();
    if key.len() < SECRET_BYTES_MIN {
        return Err(LoadError::SecretTooShort);
    }
    Ok(key)
}

fn read_secret_file(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => LoadError::NoSecret { path: path.into() },
        _ => LoadError::SecretRead {
            path: path.into(),
            source,
        },
    })
}

/// The `Authorization` header value (`Bearer <jwt>`) for `owner`, signed
/// HS256 with `secret` and valid for `TOKEN_TTL` from now.
pub fn mint(secret: &[u8], owner: &str) -> Result<HeaderValue, LoadError> {
    if !is_owner_id(owner) {
        return Err(LoadError::OwnerId {
            owner: owner.into(),
        });
    }
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        sub: owner,
        exp: now + TOKEN_TTL.as_secs(),
        iat: now,
    };
    let key = EncodingKey::from_secret(secret);
    let jwt = encode(&Header::new(Algorithm::HS256), &claims, &key).map_err(LoadError::Sign)?;
    // A JWT is base64url and dots, always a valid header value.
    Ok(HeaderValue::from_str(&format!("Bearer {jwt}")).expect("a JWT is visible ASCII"))
}

#[cfg(test)]
mod tests {
    //! Goal: tokens carry the contract's claims under HS256 and the secret
    //! follows the server's rules; method: decode with jsonwebtoken's own
    //! validator, and load secrets from a temp dir. (That the server accepts
    //! them is `tests/real_server.rs`.)
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, Validation};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[derive(serde::Deserialize)]
    struct Decoded {
        sub: String,
        exp: u64,
    }

    fn decode_with(secret: &[u8], header: &HeaderValue) -> jsonwebtoken::errors::Result<Decoded> {
        let text = header.to_str().expect("ascii");
        let jwt = text.strip_prefix("Bearer ").expect("bearer scheme");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let key = DecodingKey::from_secret(secret);
        decode::<Decoded>(jwt, &key, &validation).map(|data| data.claims)
    }

    #[test]
    fn minted_token_names_the_owner_and_expires_after_the_ttl() {
        let before = jsonwebtoken::get_current_timestamp();
        let claims = decode_with(SECRET, &mint(SECRET, "owner-1").expect("mint")).expect("valid");
        assert_eq!(claims.sub, "owner-1");
        assert!(claims.exp >= before + TOKEN_TTL.as_secs());
        let other = b"another-secret-another-secret-xx";
        assert!(decode_with(other, &mint(SECRET, "owner-1").expect("mint")).is_err());
    }

    #[test]
    fn invalid_owner_ids_are_refused_before_signing() {
        for owner in ["", "a/b", &"x".repeat(65)] {
            assert!(
                matches!(mint(SECRET, owner), Err(LoadError::OwnerId { .. })),
                "{owner:?}"
            );
        }
    }

    #[test]
    fn secret_comes_from_the_flag_or_an_existing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            matches!(
                load_secret(None, dir.path()),
                Err(LoadError::NoSecret { .. })
            ),
            "no file, no flag"
        );
        let text = "ab".repeat(32);
        let file = dir.path().join(SECRET_FILE_NAME);
        std::fs::write(&file, format!("  {text}\n")).expect("write");
        assert_eq!(
            load_secret(None, dir.path()).expect("load"),
            text.as_bytes()
        );
        let flag = "f".repeat(40);
        assert_eq!(
            load_secret(Some(&flag), dir.path()).expect("load"),
            flag.as_bytes()
        );
    }

    #[test]
    fn short_secrets_are_refused_after_trimming() {
        let dir = tempfile::tempdir().expect("tempdir");
        let short = format!("  {}  ", "s".repeat(SECRET_BYTES_MIN - 1));
        assert!(matches!(
            load_secret(Some(&short), dir.path()),
            Err(LoadError::SecretTooShort)
        ));
        let file = dir.path().join(SECRET_FILE_NAME);
        std::fs::write(&file, &short).expect("write");
        assert!(matches!(
            load_secret(None, dir.path()),
            Err(LoadError::SecretTooShort)
        ));
        let exact = "s".repeat(SECRET_BYTES_MIN);
        assert!(load_secret(Some(&exact), dir.path()).is_ok());
    }
}
