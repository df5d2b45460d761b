//! Bearer tokens: who is asking, as an owner id.
//!
//! `Verifier` is the one facade the transport calls
//! (`verify_header(Option<&str>) -> Result<OwnerId, AuthError>`). Behind it:
//! - `own`: HS256 tokens the node signs itself (`countiq token`), with one
//!   kid-less secret or several secrets with key ids (rotation);
//! - `jwks`: tokens from an identity provider, verified with the keys of its
//!   JWK set (RS256, PS256, ES256, EdDSA), which we load, bound and refresh;
//! - `claims`: how a provider's owner claim becomes an owner id.
//!
//! Which path a token takes is chosen by its header: HS256 goes to the own
//! secrets, the four public-key algorithms to the provider's keys, anything
//! else (`none` included) is refused. On the provider path the key is found
//! by `kid` and the key fixes the algorithm: a header whose `alg` differs
//! from its key's is refused, so an HS256 token "signed" with an RSA public
//! key never meets that key, and an RS256 key never verifies a PS256 token.
//!
//! Verified tokens are cached (by the whole token string) up to
//! `TOKEN_CACHE_MAX` entries and `TOKEN_CACHE_BYTES_MAX` bytes of tokens; a
//! hit still checks the token's time window, and every
//! change of the provider's key set invalidates the whole cache, so a key
//! rotated out stops verifying at once. Nothing about a token or a key is
//! ever logged.

pub mod claims;
pub mod jwks;
pub mod own;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Algorithm;

pub use claims::{owner_for, OwnerMapping};
pub use jwks::{JwksSource, Provider, ProviderConfig};
pub use own::{
    load_secret, load_secrets_file, OwnKeys, SecretError, SECRET_BYTES_MIN, SECRET_FILE_NAME,
};

use crate::domain::OwnerId;

/// Longest token we will look at; an own token is ~200 bytes, a provider's
/// with a few roles 1–2 KB.
pub const TOKEN_BYTES_MAX: usize = 4096;
/// Verified tokens remembered at most; the cache is emptied when full
/// (simple, bounded, and a miss only costs one verification).
pub const TOKEN_CACHE_MAX: usize = 65_536;
/// Token bytes the cache holds at most (tokens may be 4 KiB: the entry
/// bound alone would allow 256 MiB).
pub const TOKEN_CACHE_BYTES_MAX: usize = 16 << 20;

/// Why a token was refused: always 401. The text is the
/// `error_description` of `WWW-Authenticate` and the problem's `detail`, so
/// it says what is wrong with the token without naming keys or claims'
/// values. Quote- and backslash-free ASCII (it goes in a quoted-string).
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing or malformed Authorization header")]
    Missing,
    #[error("the token is larger than 4096 bytes")]
    TooLarge,
    #[error("the token is not a well-formed JWT with an accepted algorithm")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("the token's algorithm does not match its key")]
    AlgorithmMismatch,
    #[error("the token has no kid")]
    NoKeyId,
    #[error("the token's kid names no current key")]
    UnknownKey,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("the token lacks a required claim (exp, iss, aud or the owner claim)")]
    MissingClaim,
    #[error("a claim of the token has the wrong type")]
    BadClaim,
    #[error("the token's sub is not a valid owner id")]
    BadSubject,
    #[error("the token's owner claim is not a string of 1 to 1024 bytes")]
    BadOwnerClaim,
    #[error("the identity provider's keys are not loaded yet")]
    KeysNotLoaded,
}

impl AuthError {
    fn from_jwt(e: jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::MissingRequiredClaim(_) => AuthError::MissingClaim,
            ErrorKind::InvalidClaimFormat(_) => AuthError::BadClaim,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => AuthError::Algorithm,
            _ => AuthError::Malformed,
        }
    }

    /// The `WWW-Authenticate` value: RFC 6750 §3.1 gives a request without
    /// credentials a bare challenge, and every refused token
    /// `error="invalid_token"` with the reason.
    pub fn www_authenticate(&self) -> String {
        match self {
            AuthError::Missing => "Bearer".to_string(),
            e => format!("Bearer error=\"invalid_token\", error_description=\"{e}\""),
        }
    }
}

/// Which tokens a node accepts.
pub struct AuthConfig {
    /// Own HS256 secrets; `None` refuses every HS256 token.
    pub own: Option<OwnKeys>,
    /// An identity provider's JWKS; `None` refuses every public-key token.
    pub provider: Option<ProviderConfig>,
}

/// A verified token, kept so that the next request with the same token skips
/// the signature check. The key is the whole token string (signature
/// included), so a hit means this exact token verified before.
#[derive(Clone)]
struct Verified {
    owner: OwnerId,
    /// The token's window with the leeway applied: `from <= now < until`.
    from: u64,
    until: u64,
    /// The key-set generation it verified under; a hit from an older one
    /// is not trusted.
    generation: u64,
}

struct Inner {
    own: Option<OwnKeys>,
    provider: Option<Arc<Provider>>,
    /// Hashed with foldhash, not SipHash: looked up with every request's
    /// token, and only verified tokens are ever inserted, so a client cannot
    /// fill it with keys chosen to collide.
    cache: dashmap::DashMap<Box<str>, Verified, foldhash::fast::RandomState>,
    /// Bytes of the tokens in `cache` (bounded by `TOKEN_CACHE_BYTES_MAX`).
    cache_bytes: AtomicUsize,
    /// Bumped by the provider on every key-set change.
    generation: Arc<AtomicU64>,
}

/// Verifies bearer tokens (and signs own ones). Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl Verifier {
    /// Own tokens with one kid-less secret, no provider.
    pub fn new(secret: &[u8]) -> Self {
        Self::from_parts(Some(OwnKeys::single(secret)), None)
    }

    /// Own secrets and/or a provider. A `--jwks-file` is read here, so a bad
    /// file stops the start; a `--jwks-url` is fetched by `spawn_refresh`.
    pub fn from_config(config: AuthConfig) -> Result<Self, jwks::JwksError> {
        let generation = Arc::new(AtomicU64::new(0));
        let provider = match config.provider {
            Some(p) => Some(Arc::new(Provider::new(p, generation.clone())?)),
            None => None,
        };
        Ok(Self::from_inner(config.own, provider, generation))
    }

    fn from_parts(own: Option<OwnKeys>, provider: Option<Arc<Provider>>) -> Self {
        Self::from_inner(own, provider, Arc::new(AtomicU64::new(0)))
    }

    fn from_inner(
        own: Option<OwnKeys>,
        provider: Option<Arc<Provider>>,
        generation: Arc<AtomicU64>,
    ) -> Self {
        Verifier {
            inner: Arc::new(Inner {
                own,
                provider,
                cache: Default::default(),
                cache_bytes: AtomicUsize::new(0),
                generation,
            }),
        }
    }

    /// An own token for `owner`, valid for `ttl`, signed with the newest
    /// secret. Panics without own secrets (a configuration bug).
    pub fn mint(&self, owner: &OwnerId, ttl: Duration) -> String {
        self.inner
            .own
            .as_ref()
            .expect("minting needs own secrets")
            .mint(owner, ttl)
    }

    /// Start refreshing the provider's keys in the background (a tokio
    /// task), until `stop` turns true. Nothing to do without a provider.
    pub fn spawn_refresh(&self, stop: tokio::sync::watch::Receiver<bool>) {
        if let Some(p) = &self.inner.provider {
            tokio::spawn(p.clone().refresh_loop(stop));
        }
    }

    /// False while a configured JWKS was never loaded (cheap: per request).
    pub fn is_ready(&self) -> bool {
        self.inner.provider.as_ref().is_none_or(|p| p.is_loaded())
    }

    /// `None` when ready; otherwise why not (a configured JWKS was never
    /// loaded). For `/readyz`.
    pub fn not_ready_reason(&self) -> Option<String> {
        self.inner.provider.as_ref()?.not_ready_reason()
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

    /// The owner named by a valid token.
    pub fn verify(&self, token: &str) -> Result<OwnerId, AuthError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(AuthError::TooLarge);
        }
        let now = jsonwebtoken::get_current_timestamp();
        // Read before verifying: a set swapped meanwhile makes this entry
        // stale at once, rather than trusted until the token expires.
        let generation = self.inner.generation.load(Ordering::Acquire);
        if let Some(hit) = self.inner.cache.get(token) {
            if hit.generation == generation && hit.from <= now && now < hit.until {
                return Ok(hit.owner.clone());
            }
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let verified = match header.alg {
            Algorithm::HS256 => {
                let own = self.inner.own.as_ref().ok_or(AuthError::Algorithm)?;
                let c = own.verify(header.kid.as_deref(), token)?;
                Verified {
                    owner: c.owner,
                    from: c.nbf,
                    until: c.exp,
                    generation,
                }
            }
            Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256 | Algorithm::EdDSA => {
                let provider = self.inner.provider.as_ref().ok_or(AuthError::Algorithm)?;
                let c = provider.verify(&header, token)?;
                Verified {
                    owner: c.owner,
                    from: c.nbf.saturating_sub(c.leeway),
                    until: c.exp.saturating_add(c.leeway),
                    generation,
                }
            }
            _ => return Err(AuthError::Algorithm),
        };
        // Approximate under races (a clear and an add may interleave), which
        // only moves the bound by a few tokens.
        let bytes = self
            .inner
            .cache_bytes
            .fetch_add(token.len(), Ordering::Relaxed)
            + token.len();
        if self.inner.cache.len() >= TOKEN_CACHE_MAX || bytes > TOKEN_CACHE_BYTES_MAX {
            self.inner.cache.clear();
            self.inner.cache_bytes.store(token.len(), Ordering::Relaxed);
        }
        let owner = verified.owner.clone();
        self.inner.cache.insert(token.into(), verified);
        Ok(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::EncodingKey;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn sign(header: serde_json::Value, claims: serde_json::Value, secret: &[u8]) -> String {
        let signing_input = format!("{}.{}", b64(&header), b64(&claims));
        let sig = jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{signing_input}.{sig}")
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn minted_tokens_verify_to_their_owner() {
        let auth = Verifier::new(SECRET);
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

    /// Goal: the cache holds at most `TOKEN_CACHE_BYTES_MAX` bytes of
    /// tokens, whatever their size. Method: verify distinct ~3 KiB tokens
    /// until twice the bound went through; the byte count stays within one
    /// token of the bound and fewer tokens than were verified are cached.
    #[test]
    fn the_cache_is_bounded_by_bytes() {
        let auth = Verifier::new(SECRET);
        let hs = serde_json::json!({"alg": "HS256"});
        let pad = "x".repeat(2000);
        let mut verified = 0usize;
        let mut i = 0u64;
        while verified < 2 * TOKEN_CACHE_BYTES_MAX {
            let claims =
                serde_json::json!({"sub": "alice", "exp": now() + 60, "jti": i, "pad": pad});
            let token = sign(hs.clone(), claims, SECRET);
            assert!(auth.verify(&token).is_ok());
            verified += token.len();
            i += 1;
            let bytes = auth.inner.cache_bytes.load(Ordering::Relaxed);
            assert!(bytes <= TOKEN_CACHE_BYTES_MAX + TOKEN_BYTES_MAX, "{bytes}");
        }
        assert!(
            (auth.inner.cache.len() as u64) < i / 2,
            "{} of {i}",
            auth.inner.cache.len()
        );
    }

    #[test]
    fn cached_tokens_still_expire_and_die_with_their_generation() {
        // Goal: the cache never extends a token's life, nor outlives a key
        // set. Method: plant cache entries that are expired or of an older
        // generation and look them up.
        let auth = Verifier::new(SECRET);
        let alice = OwnerId::new("alice").unwrap();
        let token = auth.mint(&alice, Duration::from_secs(60));
        assert_eq!(auth.verify(&token), Ok(alice.clone()));
        assert_eq!(auth.inner.cache.len(), 1, "cached after the first check");
        let hs = serde_json::json!({"alg": "HS256", "typ": "JWT"});
        let expired = sign(
            hs.clone(),
            serde_json::json!({"sub": "alice", "exp": now() - 1}),
            SECRET,
        );
        let wrong = sign(
            hs,
            serde_json::json!({"sub": "alice", "exp": now() + 60}),
            b"another-secret-another-secret-xx",
        );
        let plant = |token: &str, until: u64, generation: u64| {
            auth.inner.cache.insert(
                token.into(),
                Verified {
                    owner: alice.clone(),
                    from: 0,
                    until,
                    generation,
                },
            );
        };
        plant(&expired, now() - 1, 0);
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
        plant(&wrong, now() + 60, 0);
        assert_eq!(auth.verify(&wrong), Ok(alice.clone()), "control: a hit");
        auth.inner.generation.fetch_add(1, Ordering::AcqRel);
        assert_eq!(
            auth.verify(&wrong),
            Err(AuthError::BadSignature),
            "an entry of an older key set is checked again"
        );
    }

    #[test]
    fn every_bad_token_is_refused_with_its_reason() {
        let auth = Verifier::new(SECRET);
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
                AuthError::BadSignature,
            ),
            (
                "expired",
                sign(
                    hs.clone(),
                    serde_json::json!({"sub": "alice", "exp": now() - 1}),
                    SECRET,
                ),
                AuthError::Expired,
            ),
            (
                "no exp",
                sign(hs.clone(), serde_json::json!({"sub": "alice"}), SECRET),
                AuthError::MissingClaim,
            ),
            (
                "not yet valid",
                sign(
                    hs.clone(),
                    serde_json::json!({"sub": "alice", "exp": now() + 60, "nbf": now() + 30}),
                    SECRET,
                ),
                AuthError::NotYetValid,
            ),
            (
                "alg none",
                format!(
                    "{}.{}.",
                    b64(&serde_json::json!({"alg": "none"})),
                    b64(&ok_claims)
                ),
                AuthError::Malformed,
            ),
            (
                "alg HS512",
                sign(
                    serde_json::json!({"alg": "HS512"}),
                    ok_claims.clone(),
                    SECRET,
                ),
                AuthError::Algorithm,
            ),
            (
                "RS256 without a provider",
                sign(
                    serde_json::json!({"alg": "RS256"}),
                    ok_claims.clone(),
                    SECRET,
                ),
                AuthError::Algorithm,
            ),
            (
                "a kid no secret has",
                sign(
                    serde_json::json!({"alg": "HS256", "kid": "k9"}),
                    ok_claims.clone(),
                    SECRET,
                ),
                AuthError::UnknownKey,
            ),
            ("garbage", "not.a.token".to_string(), AuthError::Malformed),
            (
                "too large",
                "a".repeat(TOKEN_BYTES_MAX + 1),
                AuthError::TooLarge,
            ),
            (
                "bad sub",
                sign(
                    hs,
                    serde_json::json!({"sub": "a/b", "exp": now() + 60}),
                    SECRET,
                ),
                AuthError::BadSubject,
            ),
        ];
        for (what, token, expected) in cases {
            assert_eq!(auth.verify(&token), Err(expected), "{what}");
        }
        for header in [None, Some("Basic abc"), Some("Bearer"), Some("")] {
            assert_eq!(
                auth.verify_header(header),
                Err(AuthError::Missing),
                "{header:?}"
            );
        }
    }

    /// Goal: with a rotation file the newest secret signs with its kid, an
    /// older one still verifies its tokens, the kid-less secret kept beside
    /// them verifies kid-less tokens, and a removed secret's tokens fail.
    #[test]
    fn rotation_signs_with_the_newest_and_verifies_the_rest() {
        let old = b"old-secret-old-secret-old-secret".to_vec();
        let new = b"new-secret-new-secret-new-secret".to_vec();
        let legacy = b"legacy-secret-legacy-secret-lega".to_vec();
        let alice = OwnerId::new("alice").unwrap();
        let ttl = Duration::from_secs(60);
        let before = OwnKeys::with_kids(vec![("k1".into(), old.clone())], None);
        let old_token = before.mint(&alice, ttl);
        let legacy_token = OwnKeys::single(&legacy).mint(&alice, ttl);
        let keys = OwnKeys::with_kids(
            vec![("k1".into(), old), ("k2".into(), new.clone())],
            Some(legacy),
        );
        assert_eq!(keys.signing_kid(), Some("k2"));
        let auth = Verifier::from_parts(Some(keys), None);
        let new_token = auth.mint(&alice, ttl);
        let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid;
        assert_eq!(kid(&new_token).as_deref(), Some("k2"));
        for t in [&new_token, &old_token, &legacy_token] {
            assert_eq!(auth.verify(t), Ok(alice.clone()));
        }
        let after = Verifier::from_parts(
            Some(OwnKeys::with_kids(vec![("k2".into(), new)], None)),
            None,
        );
        assert_eq!(after.verify(&new_token), Ok(alice.clone()));
        assert_eq!(after.verify(&old_token), Err(AuthError::UnknownKey));
        assert_eq!(after.verify(&legacy_token), Err(AuthError::NoKeyId));
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        assert_eq!(AuthError::Missing.www_authenticate(), "Bearer");
        assert_eq!(
            AuthError::Expired.www_authenticate(),
            "Bearer error=\"invalid_token\", error_description=\"the token has expired\""
        );
        for e in [
            AuthError::TooLarge,
            AuthError::Malformed,
            AuthError::Algorithm,
            AuthError::AlgorithmMismatch,
            AuthError::NoKeyId,
            AuthError::UnknownKey,
            AuthError::BadSignature,
            AuthError::NotYetValid,
            AuthError::WrongIssuer,
            AuthError::WrongAudience,
            AuthError::MissingClaim,
            AuthError::BadClaim,
            AuthError::BadSubject,
            AuthError::BadOwnerClaim,
            AuthError::KeysNotLoaded,
        ] {
            let text = e.to_string();
            assert!(
                text.bytes()
                    .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'),
                "{e:?} fits a quoted-string"
            );
            assert!(http::HeaderValue::from_str(&e.www_authenticate()).is_ok());
        }
    }
}
