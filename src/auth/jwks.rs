//! An identity provider's keys: load, bound and refresh its JWK set, and
//! verify its tokens (RS256, PS256, ES256, EdDSA).
//!
//! jsonwebtoken parses JWKs and builds keys from them; fetching, bounding,
//! caching and refreshing are ours:
//! - Source: `--jwks-file PATH` (read at start, so a bad file stops the
//!   start, and re-read on refresh) or `--jwks-url URL` (https, or http to a
//!   loopback address; fetched in the background from the start).
//! - Bounds: the set at most `JWKS_BYTES_MAX` bytes and `JWKS_KEYS_MAX` keys;
//!   a fetch connects within `JWKS_CONNECT_TIMEOUT`, completes within
//!   `JWKS_FETCH_TIMEOUT` and follows at most `JWKS_REDIRECTS_MAX` redirects.
//! - Which keys are used: signing keys (`use` absent or `sig`) with a `kid`
//!   of at most `PROVIDER_KID_BYTES_MAX` bytes: RSA of 2048–8192 bits
//!   (`alg` RS256, PS256, or absent = RS256), EC P-256 (ES256), OKP Ed25519
//!   (EdDSA). Other keys (encryption keys, HMAC keys, other curves) are
//!   skipped and counted; a set with no usable key, more keys than the bound
//!   or a repeated `kid` is refused whole.
//! - Refresh: every `refresh_interval`, and soon after a token names an
//!   unknown `kid`; never two fetches within `refresh_gap` (10 s from the
//!   CLI), so a flood of made-up kids costs at most one fetch per gap. A
//!   failed refresh keeps the last good set (logged, counted); until a first
//!   set is loaded, fetches are retried every `refresh_gap` and the node is
//!   not ready.
//! - A token whose `kid` is unknown is refused at once (it is not held while
//!   the set is fetched again); the client's retry after the refresh passes.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse, RSAKeyParameters,
};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use sha2::{Digest, Sha256};

use super::claims::{owner_for, OwnerMapping};
use super::AuthError;
use crate::domain::OwnerId;

/// Largest JWK set read (a provider's is 1–10 KB).
pub const JWKS_BYTES_MAX: usize = 64 * 1024;
/// Most keys in a set (providers publish 2–10).
pub const JWKS_KEYS_MAX: usize = 32;
/// Longest provider `kid` accepted (Keycloak's are 43 bytes).
pub const PROVIDER_KID_BYTES_MAX: usize = 256;
/// RSA modulus sizes accepted.
pub const RSA_BITS_MIN: usize = 2048;
pub const RSA_BITS_MAX: usize = 8192;
/// Clock leeway for provider tokens: default and largest.
pub const LEEWAY_DEFAULT: Duration = Duration::from_secs(30);
pub const LEEWAY_MAX: Duration = Duration::from_secs(300);
/// How often the set is refreshed: default and the CLI's bounds.
pub const JWKS_REFRESH_INTERVAL_DEFAULT: Duration = Duration::from_secs(300);
pub const JWKS_REFRESH_INTERVAL_MIN: Duration = Duration::from_secs(30);
pub const JWKS_REFRESH_INTERVAL_MAX: Duration = Duration::from_secs(24 * 3600);
/// Never two fetches closer than this (unknown-kid refreshes, retries).
pub const JWKS_REFRESH_GAP: Duration = Duration::from_secs(10);
pub const JWKS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
pub const JWKS_REDIRECTS_MAX: usize = 3;

/// The algorithms a provider's keys may carry.
const PROVIDER_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// Where the JWK set comes from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

/// An identity provider as the node trusts it.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub source: JwksSource,
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// A token's `aud` must name at least one of these.
    pub audiences: Vec<String>,
    /// Clock leeway for `exp` and `nbf` (at most `LEEWAY_MAX`).
    pub leeway: Duration,
    /// The claim that names the owner (`sub` by default).
    pub owner_claim: String,
    pub owner_mapping: OwnerMapping,
    pub refresh_interval: Duration,
    /// Least time between two fetches.
    pub refresh_gap: Duration,
}

impl ProviderConfig {
    /// The defaults for everything but the source, issuer and audiences.
    pub fn new(source: JwksSource, issuer: &str, audiences: &[&str]) -> Self {
        ProviderConfig {
            source,
            issuer: issuer.to_string(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            leeway: LEEWAY_DEFAULT,
            owner_claim: "sub".to_string(),
            owner_mapping: OwnerMapping::Auto,
            refresh_interval: JWKS_REFRESH_INTERVAL_DEFAULT,
            refresh_gap: JWKS_REFRESH_GAP,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("reading the JWKS file: {0}")]
    Io(String),
    #[error("fetching the JWKS: {0}")]
    Fetch(String),
    #[error("the JWKS is larger than {JWKS_BYTES_MAX} bytes")]
    TooLarge,
    #[error("the JWKS is not a JSON object with a \"keys\" array")]
    NotJson,
    #[error("the JWKS holds more than {JWKS_KEYS_MAX} keys")]
    TooManyKeys,
    #[error("the JWKS has two keys with the same kid")]
    DuplicateKid,
    #[error("the JWKS holds no usable signing key ({skipped} skipped)")]
    NoUsableKey { skipped: usize },
    #[error("{0}")]
    Config(&'static str),
}

struct ProviderKey {
    /// Fixed by the key, never by a token's header.
    alg: Algorithm,
    key: DecodingKey,
}

/// One loaded JWK set, by `kid`.
struct KeySet {
    keys: HashMap<String, ProviderKey>,
    /// SHA-256 of the bytes it was parsed from: an unchanged set is not
    /// installed again (which would empty the token cache for nothing).
    digest: [u8; 32],
}

/// What a provider token says, once verified.
pub(super) struct ProviderClaims {
    pub owner: OwnerId,
    pub exp: u64,
    pub nbf: u64,
    pub leeway: u64,
}

enum Fetcher {
    File(PathBuf),
    Url {
        client: reqwest::Client,
        url: reqwest::Url,
    },
}

/// A provider's current keys and how to refresh them.
pub struct Provider {
    config: ProviderConfig,
    fetcher: Fetcher,
    keys: RwLock<Arc<KeySet>>,
    /// Shared with the verifier's cache: bumped after every new set.
    generation: Arc<AtomicU64>,
    /// A set was installed at least once.
    loaded: AtomicBool,
    /// Why the last refresh failed (no key material, no URL), or `None`.
    last_error: Mutex<Option<String>>,
    /// A token named an unknown kid: refresh soon (rate-bounded).
    wanted: tokio::sync::Notify,
    validations: Vec<(Algorithm, Validation)>,
}

impl Provider {
    pub(super) fn new(
        config: ProviderConfig,
        generation: Arc<AtomicU64>,
    ) -> Result<Self, JwksError> {
        if config.issuer.is_empty() {
            return Err(JwksError::Config("--issuer is required with a JWKS"));
        }
        if config.audiences.is_empty() || config.audiences.iter().any(String::is_empty) {
            return Err(JwksError::Config("--audience is required with a JWKS"));
        }
        if config.leeway > LEEWAY_MAX {
            return Err(JwksError::Config("--leeway must be at most 5m"));
        }
        if config.owner_claim.is_empty() {
            return Err(JwksError::Config("--owner-claim must not be empty"));
        }
        if config.refresh_interval.is_zero() || config.refresh_gap.is_zero() {
            return Err(JwksError::Config("JWKS refresh times must not be zero"));
        }
        let fetcher = match &config.source {
            JwksSource::File(path) => Fetcher::File(path.clone()),
            JwksSource::Url(raw) => Fetcher::Url {
                url: parse_url(raw)?,
                client: reqwest::Client::builder()
                    .connect_timeout(JWKS_CONNECT_TIMEOUT)
                    .timeout(JWKS_FETCH_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::limited(JWKS_REDIRECTS_MAX))
                    // A redirect must not downgrade an https key source to
                    // plain http (the configured URL alone is checked by
                    // `parse_url`; loopback http stays allowed for tests).
                    .https_only(url_is_https(raw))
                    .user_agent(concat!("countiq/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|_| JwksError::Config("cannot build the HTTP client"))?,
            },
        };
        let validations = PROVIDER_ALGORITHMS
            .iter()
            .map(|&alg| (alg, validation(&config, alg)))
            .collect();
        let provider = Provider {
            config,
            fetcher,
            keys: RwLock::new(Arc::new(KeySet {
                keys: HashMap::new(),
                digest: [0; 32],
            })),
            generation,
            loaded: AtomicBool::new(false),
            last_error: Mutex::new(None),
            wanted: tokio::sync::Notify::new(),
            validations,
        };
        if let Fetcher::File(path) = &provider.fetcher {
            let (set, skipped) = parse_jwks(&read_file(path)?)?;
            provider.install(set, skipped);
        }
        Ok(provider)
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// `None` once a set was loaded; before that, why not.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.loaded.load(Ordering::Acquire) {
            return None;
        }
        let last = self.last_error.lock().expect("not poisoned").clone();
        Some(match last {
            Some(e) => format!("the identity provider's JWKS has not been loaded: {e}"),
            None => "the identity provider's JWKS has not been loaded yet".to_string(),
        })
    }

    pub(super) fn verify(&self, header: &Header, token: &str) -> Result<ProviderClaims, AuthError> {
        let kid = header.kid.as_deref().ok_or(AuthError::NoKeyId)?;
        if !self.loaded.load(Ordering::Acquire) {
            return Err(AuthError::KeysNotLoaded);
        }
        let set = self.keys.read().expect("not poisoned").clone();
        let Some(key) = set.keys.get(kid) else {
            self.wanted.notify_one();
            return Err(AuthError::UnknownKey);
        };
        if key.alg != header.alg {
            return Err(AuthError::AlgorithmMismatch);
        }
        let validation = self
            .validations
            .iter()
            .find_map(|(alg, v)| (*alg == key.alg).then_some(v))
            .expect("a validation per provider algorithm");
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token, &key.key, validation,
        )
        .map_err(AuthError::from_jwt)?;
        let claims = data.claims;
        let value = claims
            .get(&self.config.owner_claim)
            .ok_or(AuthError::MissingClaim)?
            .as_str()
            .ok_or(AuthError::BadOwnerClaim)?;
        let owner = owner_for(&self.config.issuer, value, self.config.owner_mapping)?;
        let time = |name: &str| {
            claims
                .get(name)
                .map(|v| v.as_u64().ok_or(AuthError::BadClaim))
        };
        Ok(ProviderClaims {
            owner,
            exp: time("exp").ok_or(AuthError::MissingClaim)??,
            nbf: time("nbf").transpose()?.unwrap_or(0),
            leeway: validation.leeway,
        })
    }

    /// Refresh until `stop`: see the module docs for when.
    pub(super) async fn refresh_loop(
        self: Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut fetch_now = !self.loaded.load(Ordering::Acquire);
        loop {
            let ok = if fetch_now {
                self.refresh().await
            } else {
                true
            };
            fetch_now = true;
            let fetched = tokio::time::Instant::now();
            let wait = if ok && self.loaded.load(Ordering::Acquire) {
                self.config.refresh_interval
            } else {
                self.config.refresh_gap
            };
            let wanted = tokio::select! {
                _ = tokio::time::sleep(wait) => false,
                _ = self.wanted.notified() => true,
                _ = stop.wait_for(|s| *s) => return,
            };
            if wanted {
                // The rate bound: never two fetches within the gap.
                tokio::select! {
                    _ = tokio::time::sleep_until(fetched + self.config.refresh_gap) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }

    /// One fetch; true if a set was installed (or was unchanged).
    async fn refresh(&self) -> bool {
        let parsed = match self.fetch().await {
            Ok(bytes) => parse_jwks(&bytes),
            Err(e) => Err(e),
        };
        match parsed {
            Ok((set, skipped)) => {
                metrics::counter!("countiq_jwks_fetches_total", "outcome" => "ok").increment(1);
                self.install(set, skipped);
                *self.last_error.lock().expect("not poisoned") = None;
                true
            }
            Err(e) => {
                metrics::counter!("countiq_jwks_fetches_total", "outcome" => "failed").increment(1);
                tracing::warn!(error = %e, "JWKS refresh failed; keeping the last good key set");
                *self.last_error.lock().expect("not poisoned") = Some(e.to_string());
                false
            }
        }
    }

    fn install(&self, set: KeySet, skipped: usize) {
        let count = set.keys.len();
        let changed = {
            let mut current = self.keys.write().expect("not poisoned");
            let changed = current.digest != set.digest;
            if changed {
                *current = Arc::new(set);
            }
            changed
        };
        if changed {
            // After the swap: a verifier that sees the new generation sees
            // the new set; an entry cached under the old one is stale.
            self.generation.fetch_add(1, Ordering::AcqRel);
            metrics::gauge!("countiq_jwks_keys").set(count as f64);
            tracing::info!(keys = count, skipped, "JWKS loaded");
        }
        self.loaded.store(true, Ordering::Release);
    }

    async fn fetch(&self) -> Result<Vec<u8>, JwksError> {
        match &self.fetcher {
            Fetcher::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_file(&path))
                    .await
                    .map_err(|_| JwksError::Io("the reading task failed".into()))?
            }
            Fetcher::Url { client, url } => fetch_url(client, url).await,
        }
    }
}

fn validation(config: &ProviderConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = config.leeway.as_secs();
    v.validate_nbf = true;
    v.set_issuer(&[&config.issuer]);
    v.set_audience(&config.audiences);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v
}

/// https anywhere, http only to a loopback address (tests, a sidecar).
/// Whether the configured key-set URL is https (then every redirect hop
/// must be too).
fn url_is_https(raw: &str) -> bool {
    raw.trim_start()
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
}

fn parse_url(raw: &str) -> Result<reqwest::Url, JwksError> {
    let bad = JwksError::Config("--jwks-url must be an https URL (or http to a loopback address)");
    let url = reqwest::Url::parse(raw).map_err(|_| JwksError::Config("--jwks-url is not a URL"))?;
    let host = url.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(bad),
    }
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, JwksError> {
    let io = |e: std::io::Error| JwksError::Io(format!("{}: {e}", path.display()));
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(JWKS_BYTES_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > JWKS_BYTES_MAX {
        return Err(JwksError::TooLarge);
    }
    Ok(bytes)
}

async fn fetch_url(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, JwksError> {
    let mut response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(fetch_error)?;
    if response
        .content_length()
        .is_some_and(|n| n > JWKS_BYTES_MAX as u64)
    {
        return Err(JwksError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(fetch_error)? {
        if body.len() + chunk.len() > JWKS_BYTES_MAX {
            return Err(JwksError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What went wrong, without the URL (the reason shows on `/readyz`).
fn fetch_error(e: reqwest::Error) -> JwksError {
    tracing::debug!(error = %e, "JWKS fetch");
    JwksError::Fetch(if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else if let Some(status) = e.status() {
        format!("HTTP status {}", status.as_u16())
    } else if e.is_redirect() {
        "too many redirects".to_string()
    } else {
        "the request failed".to_string()
    })
}

/// Parse and bound a JWK set; returns the usable keys and how many were
/// skipped. Pure, so every rule is unit-tested.
fn parse_jwks(bytes: &[u8]) -> Result<(KeySet, usize), JwksError> {
    if bytes.len() > JWKS_BYTES_MAX {
        return Err(JwksError::TooLarge);
    }
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet = serde_json::from_slice(bytes).map_err(|_| JwksError::NotJson)?;
    if raw.keys.len() > JWKS_KEYS_MAX {
        return Err(JwksError::TooManyKeys);
    }
    let mut keys = HashMap::new();
    let mut skipped = 0;
    for value in raw.keys {
        let Some((kid, key)) = usable_key(value) else {
            skipped += 1;
            continue;
        };
        if keys.insert(kid, key).is_some() {
            return Err(JwksError::DuplicateKid);
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey { skipped });
    }
    Ok((
        KeySet {
            keys,
            digest: Sha256::digest(bytes).into(),
        },
        skipped,
    ))
}

/// A signing key we accept, with the algorithm it fixes; `None` to skip.
fn usable_key(value: serde_json::Value) -> Option<(String, ProviderKey)> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    let kid = jwk
        .common
        .key_id
        .clone()
        .filter(|k| (1..=PROVIDER_KID_BYTES_MAX).contains(&k.len()))?;
    let declared = jwk.common.key_algorithm;
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) if rsa_size_ok(p) => match declared {
            None | Some(KeyAlgorithm::RS256) => Algorithm::RS256,
            Some(KeyAlgorithm::PS256) => Algorithm::PS256,
            _ => return None,
        },
        AlgorithmParameters::EllipticCurve(p)
            if p.curve == EllipticCurve::P256
                && decoded_len(&p.x) == Some(32)
                && decoded_len(&p.y) == Some(32)
                && matches!(declared, None | Some(KeyAlgorithm::ES256)) =>
        {
            Algorithm::ES256
        }
        // Exactly 32 bytes: jsonwebtoken slices the first 32 of `x` when it
        // verifies, so a shorter one must never get that far.
        AlgorithmParameters::OctetKeyPair(p)
            if p.curve == EllipticCurve::Ed25519
                && decoded_len(&p.x) == Some(32)
                && matches!(declared, None | Some(KeyAlgorithm::EdDSA)) =>
        {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some((kid, ProviderKey { alg, key }))
}

fn b64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

fn decoded_len(text: &str) -> Option<usize> {
    b64(text).map(|b| b.len())
}

fn rsa_size_ok(p: &RSAKeyParameters) -> bool {
    let (Some(n), Some(e)) = (b64(&p.n), b64(&p.e)) else {
        return false;
    };
    let n: &[u8] = &n[n.iter().take_while(|&&b| b == 0).count()..];
    let bits = match n.first() {
        Some(first) => n.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    };
    let e_ok = (1..=8).contains(&e.len()) && e.iter().any(|&b| b != 0);
    (RSA_BITS_MIN..=RSA_BITS_MAX).contains(&bits) && e_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64e(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa(kid: &str, bits: usize) -> serde_json::Value {
        let mut n = vec![0xff; bits / 8];
        n[0] = 0x80 | (n[0] >> 1);
        json!({"kty": "RSA", "kid": kid, "n": b64e(&n), "e": "AQAB"})
    }

    fn ec(kid: &str, len: usize) -> serde_json::Value {
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64e(&vec![1; len]), "y": b64e(&vec![2; len])})
    }

    fn ed(kid: &str, len: usize) -> serde_json::Value {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64e(&vec![3; len])})
    }

    fn set(keys: Vec<serde_json::Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({ "keys": keys })).unwrap()
    }

    fn algs(bytes: &[u8]) -> Vec<(String, Algorithm)> {
        let (set, _) = parse_jwks(bytes).unwrap();
        let mut v: Vec<_> = set
            .keys
            .iter()
            .map(|(k, key)| (k.clone(), key.alg))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn each_key_type_fixes_its_algorithm() {
        let mut ps = rsa("ps", 2048);
        ps["alg"] = json!("PS256");
        let mut rs = rsa("rs", 3072);
        rs["alg"] = json!("RS256");
        rs["use"] = json!("sig");
        let got = algs(&set(vec![
            rsa("bare", 2048),
            ps,
            rs,
            ec("ec", 32),
            ed("ed", 32),
        ]));
        assert_eq!(
            got,
            [
                ("bare".to_string(), Algorithm::RS256),
                ("ec".to_string(), Algorithm::ES256),
                ("ed".to_string(), Algorithm::EdDSA),
                ("ps".to_string(), Algorithm::PS256),
                ("rs".to_string(), Algorithm::RS256),
            ]
        );
    }

    #[test]
    fn unusable_keys_are_skipped_and_counted() {
        let mut enc = rsa("enc", 2048);
        enc["use"] = json!("enc");
        let mut rs512 = rsa("rs512", 2048);
        rs512["alg"] = json!("RS512");
        let mut ec_as_rs = ec("ec-rs", 32);
        ec_as_rs["alg"] = json!("RS256");
        let mut hs =
            json!({"kty": "oct", "kid": "hs", "k": b64e(b"0123456789abcdef0123456789abcdef")});
        hs["alg"] = json!("HS256");
        let mut no_kid = rsa("x", 2048);
        no_kid.as_object_mut().unwrap().remove("kid");
        let p384 = json!({"kty": "EC", "crv": "P-384", "kid": "p384", "x": b64e(&[1; 48]), "y": b64e(&[2; 48])});
        let skipped = vec![
            enc,
            rs512,
            ec_as_rs,
            hs,
            no_kid,
            p384,
            rsa("small", 1024),
            rsa("huge", 16384),
            rsa(&"k".repeat(PROVIDER_KID_BYTES_MAX + 1), 2048),
            ec("short-ec", 31),
            ed("short-ed", 16),
            ed("long-ed", 33),
            json!({"kty": "ML-DSA", "kid": "pq"}),
            json!("not an object"),
        ];
        let n = skipped.len();
        let mut keys = skipped;
        keys.push(rsa("good", 2048));
        let (parsed, count) = parse_jwks(&set(keys)).unwrap();
        assert_eq!(count, n);
        assert_eq!(parsed.keys.keys().collect::<Vec<_>>(), ["good"]);
    }

    #[test]
    fn sets_are_bounded_and_refused_whole() {
        assert!(matches!(
            parse_jwks(&vec![b' '; JWKS_BYTES_MAX + 1]),
            Err(JwksError::TooLarge)
        ));
        let many: Vec<_> = (0..=JWKS_KEYS_MAX)
            .map(|i| ed(&format!("k{i}"), 32))
            .collect();
        assert!(matches!(
            parse_jwks(&set(many)),
            Err(JwksError::TooManyKeys)
        ));
        let most: Vec<_> = (0..JWKS_KEYS_MAX)
            .map(|i| ed(&format!("k{i}"), 32))
            .collect();
        assert_eq!(parse_jwks(&set(most)).unwrap().0.keys.len(), JWKS_KEYS_MAX);
        assert!(matches!(
            parse_jwks(&set(vec![ed("same", 32), ec("same", 32)])),
            Err(JwksError::DuplicateKid)
        ));
        assert!(matches!(
            parse_jwks(&set(vec![rsa("small", 1024)])),
            Err(JwksError::NoUsableKey { skipped: 1 })
        ));
        for bad in [&b"[]"[..], b"{}", b"{\"keys\": 3}", b"nope"] {
            assert!(matches!(parse_jwks(bad), Err(JwksError::NotJson)));
        }
    }

    #[test]
    fn urls_must_be_https_or_loopback() {
        for ok in [
            "https://idp.example.com/certs",
            "http://127.0.0.1:8080/jwks",
            "http://[::1]/jwks",
            "http://localhost/jwks",
        ] {
            assert!(parse_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://idp.example.com/certs",
            "ftp://127.0.0.1/x",
            "file:///etc/jwks",
            "nope",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configuration_is_checked() {
        let base = || {
            ProviderConfig::new(
                JwksSource::Url("https://idp.example/certs".into()),
                "https://idp.example/",
                &["countiq"],
            )
        };
        let g = || Arc::new(AtomicU64::new(0));
        assert!(Provider::new(base(), g()).is_ok());
        let mut c = base();
        c.issuer.clear();
        assert!(Provider::new(c, g()).is_err());
        let mut c = base();
        c.audiences.clear();
        assert!(Provider::new(c, g()).is_err());
        let mut c = base();
        c.leeway = LEEWAY_MAX + Duration::from_secs(1);
        assert!(Provider::new(c, g()).is_err());
        let mut c = base();
        c.owner_claim.clear();
        assert!(Provider::new(c, g()).is_err());
        let p = Provider::new(base(), g()).unwrap();
        assert!(p.not_ready_reason().unwrap().contains("not been loaded"));
    }
}
