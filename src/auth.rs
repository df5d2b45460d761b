//! Bearer tokens: HS256 JWTs whose `sub` is the owner id.
//!
//! The algorithm is pinned to HS256 (a token announcing `none` or any other
//! algorithm is refused), `exp` is required, `nbf` is checked when present,
//! and there is no leeway: the node signs its own tokens with its own clock.
//!
//! The secret comes from `COUNTIQ_JWT_SECRET`, else `--jwt-secret-file`, else
//! `<data-dir>/jwt.secret`, which is created on first use with mode 0600 and
//! 32 random bytes written as 64 hex characters. The HMAC key is the
//! secret's text with surrounding whitespace trimmed, as bytes.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::OwnerId;

/// Shortest accepted secret: HS256 wants at least 256 bits of key.
pub const SECRET_BYTES_MIN: usize = 32;
pub const SECRET_FILE_NAME: &str = "jwt.secret";
/// Longest token we will look at; a real one is ~200 bytes.
pub const TOKEN_BYTES_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the JWT secret must be at least {SECRET_BYTES_MIN} bytes")]
    TooShort,
}

/// Where the secret comes from, in order of precedence.
pub fn load_secret(
    env_secret: Option<&str>,
    secret_file: Option<&Path>,
    data_dir: &Path,
) -> Result<Vec<u8>, SecretError> {
    let text = match (env_secret, secret_file) {
        (Some(s), _) => s.to_string(),
        (None, Some(path)) => read(path)?,
        (None, None) => read_or_create(&data_dir.join(SECRET_FILE_NAME))?,
    };
    let key = text.trim().as_bytes().to_vec();
    if key.len() < SECRET_BYTES_MIN {
        return Err(SecretError::TooShort);
    }
    Ok(key)
}

fn read(path: &Path) -> Result<String, SecretError> {
    std::fs::read_to_string(path).map_err(|source| SecretError::Io {
        path: path.into(),
        source,
    })
}

fn read_or_create(path: &Path) -> Result<String, SecretError> {
    let io_err = |source| SecretError::Io {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut f) => {
            f.write_all(format!("{secret}\n").as_bytes())
                .map_err(io_err)?;
            f.sync_all().map_err(io_err)?;
            Ok(secret)
        }
        // Someone (another `countiq token`) created it first: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read(path),
        Err(e) => Err(io_err(e)),
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
}

/// Why a token was refused. Deliberately coarse in responses (401 either
/// way); the variant is for logs and tests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing or malformed Authorization header")]
    Missing,
    #[error("invalid token")]
    Invalid,
    #[error("token subject is not a valid owner id")]
    BadSubject,
}

/// Verified tokens remembered at most; the cache is emptied when full
/// (simple, bounded, and a miss only costs one verification).
pub const TOKEN_CACHE_MAX: usize = 65_536;

/// What a verified token allows, kept so that the next request with the
/// same token skips the signature check. The key is the whole token string
/// (signature included), so a hit means this exact token verified before;
/// expiry and not-before are still checked on every hit.
#[derive(Clone)]
struct Verified {
    owner: OwnerId,
    exp: u64,
    nbf: u64,
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Hashed with foldhash, not SipHash: looked up with every request's
    /// token (~200 bytes), and only verified tokens are ever inserted, so a
    /// client cannot fill it with keys chosen to collide.
    cache: std::sync::Arc<dashmap::DashMap<Box<str>, Verified, foldhash::fast::RandomState>>,
}

impl Auth {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            cache: Default::default(),
        }
    }

    /// A token for `owner`, valid for `ttl` from now.
    pub fn mint(&self, owner: &OwnerId, ttl: Duration) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: owner.to_string(),
            exp: now + ttl.as_secs(),
            iat: Some(now),
            nbf: None,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// The owner named by a valid token.
    pub fn verify(&self, token: &str) -> Result<OwnerId, AuthError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(AuthError::Invalid);
        }
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(hit) = self.cache.get(token) {
            if hit.nbf <= now && now < hit.exp {
                return Ok(hit.owner.clone());
            }
        }
        let data = decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| AuthError::Invalid)?;
        let owner = OwnerId::new(&data.claims.sub).map_err(|_| AuthError::BadSubject)?;
        if self.cache.len() >= TOKEN_CACHE_MAX {
            self.cache.clear();
        }
        let verified = Verified {
            owner: owner.clone(),
            exp: data.claims.exp,
            nbf: data.claims.nbf.unwrap_or(0),
        };
        self.cache.insert(token.into(), verified);
        Ok(owner)
    }

    /// The owner named by an `Authorization: Bearer <token>` header value.
    pub fn verify_header(&self, value: Option<&str>) -> Result<OwnerId, AuthError> {
        let value = value.ok_or(AuthError::Missing)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Missing);
        }
        self.verify(token.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn sign(header: serde_json::Value, claims: serde_json::Value, secret: &[u8]) -> String {
        use hmac_sign as h;
        let signing_input = format!("{}.{}", b64(&header), b64(&claims));
        format!("{signing_input}.{}", h(secret, &signing_input))
    }

    /// HS256 computed with jsonwebtoken's own signer, so tests can craft
    /// tokens with arbitrary headers and claims.
    fn hmac_sign(secret: &[u8], input: &str) -> String {
        jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
        )
        .unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn minted_tokens_verify_to_their_owner() {
        let auth = Auth::new(SECRET);
        let alice = OwnerId::new("alice").unwrap();
        let token = auth.mint(&alice, Duration::from_secs(60));
        assert_eq!(auth.verify(&token), Ok(alice.clone()));
        assert_eq!(
            auth.verify_header(Some(&format!("Bearer {token}"))),
            Ok(alice.clone())
        );
        assert_eq!(
            auth.verify_header(Some(&format!("bearer {token}"))),
            Ok(alice)
        );
    }

    #[test]
    fn cached_tokens_still_expire() {
        // Goal: the verification cache never extends a token's life.
        // Method: verify a token (cached), then look it up after its exp by
        // planting the cached entry with an exp in the past.
        let auth = Auth::new(SECRET);
        let alice = OwnerId::new("alice").unwrap();
        let token = auth.mint(&alice, Duration::from_secs(60));
        assert_eq!(auth.verify(&token), Ok(alice.clone()));
        assert_eq!(auth.cache.len(), 1, "cached after the first verification");
        auth.cache.get_mut(token.as_str()).unwrap().exp = now() - 1;
        assert_eq!(
            auth.verify(&token),
            Ok(alice),
            "falls back to a full check, which passes"
        );
        let hs = serde_json::json!({"alg": "HS256", "typ": "JWT"});
        let expired = sign(
            hs,
            serde_json::json!({"sub": "alice", "exp": now() - 1}),
            SECRET,
        );
        auth.cache.insert(
            expired.as_str().into(),
            Verified {
                owner: OwnerId::new("alice").unwrap(),
                exp: now() - 1,
                nbf: 0,
            },
        );
        assert_eq!(
            auth.verify(&expired),
            Err(AuthError::Invalid),
            "an expired cached entry is not trusted"
        );
    }

    #[test]
    fn every_bad_token_is_refused() {
        let auth = Auth::new(SECRET);
        let hs = serde_json::json!({"alg": "HS256", "typ": "JWT"});
        let ok_claims = serde_json::json!({"sub": "alice", "exp": now() + 60});
        assert!(
            auth.verify(&sign(hs.clone(), ok_claims.clone(), SECRET))
                .is_ok(),
            "control"
        );
        let cases = [
            (
                "wrong secret",
                sign(
                    hs.clone(),
                    ok_claims.clone(),
                    b"another-secret-another-secret-xx",
                ),
            ),
            (
                "expired",
                sign(
                    hs.clone(),
                    serde_json::json!({"sub": "alice", "exp": now() - 1}),
                    SECRET,
                ),
            ),
            (
                "no exp",
                sign(hs.clone(), serde_json::json!({"sub": "alice"}), SECRET),
            ),
            (
                "not yet valid",
                sign(
                    hs.clone(),
                    serde_json::json!({"sub": "alice", "exp": now() + 60, "nbf": now() + 30}),
                    SECRET,
                ),
            ),
            (
                "alg none",
                format!(
                    "{}.{}.",
                    b64(&serde_json::json!({"alg": "none"})),
                    b64(&ok_claims)
                ),
            ),
            (
                "alg HS512",
                sign(
                    serde_json::json!({"alg": "HS512"}),
                    ok_claims.clone(),
                    SECRET,
                ),
            ),
            ("garbage", "not.a.token".to_string()),
        ];
        for (what, token) in cases {
            assert_eq!(auth.verify(&token), Err(AuthError::Invalid), "{what}");
        }
        let bad_sub = sign(
            hs,
            serde_json::json!({"sub": "a/b", "exp": now() + 60}),
            SECRET,
        );
        assert_eq!(auth.verify(&bad_sub), Err(AuthError::BadSubject));
        for header in [None, Some("Basic abc"), Some("Bearer"), Some("")] {
            assert_eq!(
                auth.verify_header(header),
                Err(AuthError::Missing),
                "{header:?}"
            );
        }
    }

    #[test]
    fn secret_file_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_secret(None, None, dir.path()).unwrap();
        let second = load_secret(None, None, dir.path()).unwrap();
        assert_eq!(first, second, "the file is reused, not rewritten");
        assert_eq!(first.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            load_secret(Some("  short "), None, dir.path())
                .unwrap_err()
                .to_string(),
            SecretError::TooShort.to_string()
        );
        let env = "e".repeat(40);
        assert_eq!(
            load_secret(Some(&env), None, dir.path()).unwrap(),
            env.as_bytes()
        );
    }
}
