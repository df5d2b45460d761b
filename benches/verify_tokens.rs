//! What verifying a bearer token costs, by algorithm, side by side in one
//! run: a cache hit, and a first sight (signature checked) of an own HS256
//! token and of provider RS256, PS256, ES256 and EdDSA tokens.
//!
//! `cargo bench --bench verify_tokens` prints, per row, the median over 5
//! rounds of the mean time per verification (each round verifies
//! `TOKENS` distinct tokens once, so every one is a cache miss), and the
//! ratio to the cache hit. No assertions: the numbers go to README.

use std::time::{Duration, Instant};

use base64::Engine;
use countiq::auth::{AuthConfig, JwksSource, OwnKeys, ProviderConfig, Verifier};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const TOKENS: usize = 2000;
const ROUNDS: usize = 5;
const ISSUER: &str = "https://idp.example/";
const AUDIENCE: &str = "countiq";
const SECRET: &[u8] = b"bench-secret-bench-secret-bench-secret";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

struct Signer {
    name: &'static str,
    sign: Box<dyn Fn(usize) -> String>,
}

fn provider_signer(
    name: &'static str,
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
) -> Signer {
    Signer {
        name,
        sign: Box::new(move |i| {
            let mut header = Header::new(alg);
            header.kid = Some(kid.into());
            let now = jsonwebtoken::get_current_timestamp();
            let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": format!("auth0|{i}"),
                                "exp": now + 3600, "jti": i});
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        }),
    }
}

fn main() {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;

    let rsa = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let rsa_der = rsa.to_pkcs1_der().unwrap();
    let (n, e) = (rsa.n().to_bytes_be(), rsa.e().to_bytes_be());
    let ec = p256::SecretKey::random(&mut rsa::rand_core::OsRng);
    let point = ec.public_key().to_encoded_point(false);
    let ed = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let set = json!({"keys": [
        {"kty": "RSA", "kid": "rs", "alg": "RS256", "n": b64(&n), "e": b64(&e)},
        {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": b64(&n), "e": b64(&e)},
        {"kty": "EC", "crv": "P-256", "kid": "ec", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(ed.verifying_key().as_bytes())},
    ]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, set.to_string()).unwrap();
    let verifier = || {
        Verifier::from_config(AuthConfig {
            own: Some(OwnKeys::single(SECRET)),
            provider: Some(ProviderConfig::new(
                JwksSource::File(path.clone()),
                ISSUER,
                &[AUDIENCE],
            )),
        })
        .unwrap()
    };
    let own = OwnKeys::single(SECRET);
    let signers = vec![
        Signer {
            name: "own HS256",
            sign: Box::new(move |i| {
                let owner = countiq::domain::OwnerId::new(&format!("owner-{i}")).unwrap();
                own.mint(&owner, Duration::from_secs(3600 + i as u64))
            }),
        },
        provider_signer(
            "provider RS256 (2048)",
            "rs",
            Algorithm::RS256,
            EncodingKey::from_rsa_der(rsa_der.as_bytes()),
        ),
        provider_signer(
            "provider PS256 (2048)",
            "ps",
            Algorithm::PS256,
            EncodingKey::from_rsa_der(rsa_der.as_bytes()),
        ),
        provider_signer(
            "provider ES256",
            "ec",
            Algorithm::ES256,
            EncodingKey::from_ec_der(ec.to_pkcs8_der().unwrap().as_bytes()),
        ),
        provider_signer(
            "provider EdDSA",
            "ed",
            Algorithm::EdDSA,
            EncodingKey::from_ed_der(ed.to_pkcs8_der().unwrap().as_bytes()),
        ),
    ];

    // Cache hits: one token, verified once to fill the cache.
    let hit_verifier = verifier();
    let hit_token = (signers[1].sign)(0);
    hit_verifier.verify(&hit_token).unwrap();
    let hit = median(|| {
        let start = Instant::now();
        for _ in 0..TOKENS {
            std::hint::black_box(hit_verifier.verify(&hit_token).unwrap());
        }
        start.elapsed() / TOKENS as u32
    });
    println!("{:<24} {:>10} {:>8}", "verification", "median", "÷ hit");
    println!("{:<24} {:>10.2?} {:>8.1}", "cache hit (any alg)", hit, 1.0);
    for s in &signers {
        let t = median(|| {
            let tokens: Vec<String> = (0..TOKENS).map(|i| (s.sign)(i)).collect();
            let v = verifier();
            let start = Instant::now();
            for token in &tokens {
                std::hint::black_box(v.verify(token).unwrap());
            }
            start.elapsed() / TOKENS as u32
        });
        println!(
            "{:<24} {:>10.2?} {:>8.1}",
            s.name,
            t,
            t.as_secs_f64() / hit.as_secs_f64()
        );
    }
}

fn median(mut round: impl FnMut() -> Duration) -> Duration {
    let mut times: Vec<Duration> = (0..ROUNDS).map(|_| round()).collect();
    times.sort();
    times[ROUNDS / 2]
}
