//! Bearer tokens for the load generator: the HS256 secret and the JWTs it
//! signs. The tool mints its own tokens, one per owner, so a run needs no
//! server-side help. The lead may swap `load_secret` for `countiq::auth`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// Token lifetime: far longer than any run (`DURATION_MAX` is one hour).
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(2 * 3600);
/// File under the data dir that holds the node's secret.
const SECRET_FILE: &str = "jwt.secret";
/// A secret file larger than this is not a secret file.
const SECRET_FILE_BYTES_MAX: u64 = 4096;

/// The claims CountIQ reads: owner, expiry, issue time.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Claims {
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
}

/// The HMAC key: `--jwt-secret` / `COUNTIQ_JWT_SECRET` as raw bytes, else the
/// content of `<data_dir>/jwt.secret` with ASCII whitespace trimmed, used as
/// bytes (it is hex text, and is deliberately NOT hex-decoded).
pub(crate) fn load_secret(explicit: Option<&str>, data_dir: &Path) -> Result<Vec<u8>> {
    if let Some(secret) = explicit {
        if secret.is_empty() {
            bail!("--jwt-secret / COUNTIQ_JWT_SECRET is empty");
        }
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join(SECRET_FILE);
    let len = std::fs::metadata(&path)
        .with_context(|| format!("no --jwt-secret given and cannot read {}", path.display()))?
        .len();
    if len > SECRET_FILE_BYTES_MAX {
        bail!(
            "{} is {len} bytes, more than {SECRET_FILE_BYTES_MAX}",
            path.display()
        );
    }
    let raw = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let secret = raw.trim_ascii();
    if secret.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(secret.to_vec())
}

/// Signs an HS256 token for `owner`, valid from `now` for `TOKEN_TTL`.
pub(crate) fn mint(secret: &[u8], owner: &str, now: SystemTime) -> Result<String> {
    let iat = now
        .duration_since(UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs();
    let claims = Claims {
        sub: owner.to_string(),
        exp: iat + TOKEN_TTL.as_secs(),
        iat,
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .context("signing token")
}

#[cfg(test)]
mod tests {
    //! Goal: the tokens are what the server verifies; method: round-trip
    //! through jsonwebtoken's own HS256 decode, and secret loading from a
    //! temp dir.
    use super::*;
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};

    #[test]
    fn minted_token_round_trips() {
        let token = mint(b"s3cret", "owner-1", SystemTime::now()).expect("mint");
        let data = decode::<Claims>(
            &token,
            &DecodingKey::from_secret(b"s3cret"),
            &Validation::new(Algorithm::HS256),
        )
        .expect("decode");
        assert_eq!(data.claims.sub, "owner-1");
        assert_eq!(data.claims.exp, data.claims.iat + TOKEN_TTL.as_secs());
        assert_eq!(data.header.alg, Algorithm::HS256);
    }

    #[test]
    fn wrong_secret_is_rejected() {
        let token = mint(b"s3cret", "o", SystemTime::now()).expect("mint");
        let bad = decode::<Claims>(
            &token,
            &DecodingKey::from_secret(b"other"),
            &Validation::new(Algorithm::HS256),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn secret_file_is_trimmed_not_hex_decoded() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(SECRET_FILE), "  abcd01\n").expect("write");
        assert_eq!(
            load_secret(None, dir.path()).expect("load"),
            b"abcd01".to_vec()
        );
        assert_eq!(
            load_secret(Some("xyz"), dir.path()).expect("load"),
            b"xyz".to_vec()
        );
    }

    #[test]
    fn missing_or_empty_secret_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load_secret(None, dir.path()).is_err());
        std::fs::write(dir.path().join(SECRET_FILE), " \n").expect("write");
        assert!(load_secret(None, dir.path()).is_err());
        assert!(load_secret(Some(""), dir.path()).is_err());
    }
}
