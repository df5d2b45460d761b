//! Tokens from an identity provider, end to end and offline.
//!
//! Method: RSA-2048, P-256 and Ed25519 keys are generated in the test; a
//! JWKS is served by a small axum server on 127.0.0.1:0 whose set the test
//! can swap (and whose fetches it counts); the real CountIQ server (the
//! production router, node and `serve_with`) verifies tokens with it over
//! real HTTP. Every state check reads the state back with a good token.
//! Waiting is on conditions with deadlines, never on fixed sleeps.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use countiq::auth::{
    owner_for, AuthConfig, JwksSource, OwnKeys, OwnerMapping, ProviderConfig, Verifier,
};
use countiq::server::{serve_with, ServeConfig, Stopped};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;

const ISSUER: &str = "https://tenant.example.auth0.com/";
const AUDIENCE: &str = "https://countiq.example.com";
/// How long a condition may take to become true before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A provider's signing key: what signs (private) and what is published.
struct Key {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl Key {
    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

fn rsa_private() -> rsa::RsaPrivateKey {
    rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap()
}

fn rsa_key(kid: &str, alg: Algorithm, private: &rsa::RsaPrivateKey) -> Key {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    let der = private.to_pkcs1_der().unwrap();
    let public = private.to_public_key();
    Key {
        kid: kid.into(),
        alg,
        encoding: EncodingKey::from_rsa_der(der.as_bytes()),
        jwk: json!({"kty": "RSA", "use": "sig", "kid": kid, "alg": format!("{alg:?}"),
                    "n": b64(&public.n().to_bytes_be()), "e": b64(&public.e().to_bytes_be())}),
    }
}

fn ec_key(kid: &str) -> Key {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::EncodePrivateKey;
    let secret = p256::SecretKey::random(&mut rsa::rand_core::OsRng);
    let point = secret.public_key().to_encoded_point(false);
    Key {
        kid: kid.into(),
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(secret.to_pkcs8_der().unwrap().as_bytes()),
        jwk: json!({"kty": "EC", "crv": "P-256", "use": "sig", "kid": kid, "alg": "ES256",
                    "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())}),
    }
}

fn ed_key(kid: &str) -> Key {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let signing = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    Key {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(signing.to_pkcs8_der().unwrap().as_bytes()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "use": "sig", "kid": kid, "alg": "EdDSA",
                    "x": b64(signing.verifying_key().as_bytes())}),
    }
}

fn jwks(keys: &[&Key]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// Good claims for `sub`, valid for ten minutes.
fn claims(sub: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now(), "exp": now() + 600})
}

/// The provider's JWKS endpoint: serves `body` with `status`, counts GETs.
#[derive(Clone)]
struct Idp {
    body: Arc<Mutex<(StatusCode, String)>>,
    fetches: Arc<AtomicUsize>,
    url: String,
}

impl Idp {
    async fn start(status: StatusCode, body: String) -> Idp {
        let body = Arc::new(Mutex::new((status, body)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (b, f) = (body.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/certs",
            axum::routing::get(move || {
                let (b, f) = (b.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = b.lock().unwrap().clone();
                    (status, [("content-type", "application/json")], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/certs", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Idp { body, fetches, url }
    }

    fn publish(&self, status: StatusCode, body: String) {
        *self.body.lock().unwrap() = (status, body);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

struct Node {
    base: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<Stopped, countiq::server::ServeError>>>,
    _dir: tempfile::TempDir,
}

impl Node {
    /// The real server with own tokens (common::SECRET) and the provider.
    async fn start(provider: ProviderConfig) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let auth = Verifier::from_config(AuthConfig {
            own: Some(OwnKeys::single(common::SECRET)),
            provider: Some(provider),
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = ServeConfig {
            addr,
            node: common::node_config(dir.path()),
            jwt_secret: Vec::new(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_with(config, auth, None, listener, async move {
            let _ = stopped.await;
        }));
        Node {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    async fn ready(&self) -> common::Resp {
        let r = self.http.get(format!("{}/readyz", self.base)).send().await;
        common::read(r.unwrap()).await
    }

    async fn wait_ready(&self) {
        wait_until("the node is ready", || async {
            self.ready().await.status == StatusCode::OK
        })
        .await;
    }

    /// A request with `token` (None: no Authorization) and a JSON body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> common::Resp {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        common::read(req.send().await.unwrap()).await
    }

    async fn create(&self, token: &str, name: &str, qty: i64) -> String {
        let r = self
            .send(
                Method::POST,
                "/items",
                Some(token),
                Some(json!({"name": name, "qty": qty})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
        r.body["id"].as_str().unwrap().to_string()
    }

    /// Every item of the token's owner, as (id, qty, version).
    async fn items(&self, token: &str) -> Vec<(String, u64, u64)> {
        let r = self
            .send(Method::GET, "/items?limit=1000", Some(token), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["id"].as_str().unwrap().to_string(),
                    i["qty"].as_u64().unwrap(),
                    i["version"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let stopped = self.task.take().unwrap().await.unwrap().unwrap();
        assert!(matches!(stopped, Stopped::Gracefully), "{stopped:?}");
    }
}

/// Poll `check` until it holds; fail after `DEADLINE`.
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn provider(idp: &Idp) -> ProviderConfig {
    let mut p = ProviderConfig::new(JwksSource::Url(idp.url.clone()), ISSUER, &[AUDIENCE]);
    p.refresh_gap = Duration::from_millis(100);
    p.refresh_interval = Duration::from_secs(3600);
    p
}

/// Every protected route, with `id` as the item.
fn routes(id: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, "/items".into(), None),
        (
            Method::POST,
            "/items".into(),
            Some(json!({"name": "intruder"})),
        ),
        (Method::GET, format!("/items/{id}"), None),
        (
            Method::PUT,
            format!("/items/{id}"),
            Some(json!({"name": "x", "qty": 0})),
        ),
        (
            Method::PATCH,
            format!("/items/{id}/qty"),
            Some(json!({"delta": 1})),
        ),
        (Method::DELETE, format!("/items/{id}"), None),
        (
            Method::POST,
            "/transactions".into(),
            Some(json!({"ops": [{"item": id, "delta": 1}]})),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_each_algorithm_are_accepted_and_map_to_one_owner() {
    // Goal: RS256, PS256, ES256 and EdDSA tokens are accepted; a provider
    // subject that is not an owner id (`auth0|alice`) maps to the documented
    // derived owner, the same whichever key signed; a subject that is a
    // valid owner id is that owner. Method: one item per algorithm, then the
    // whole namespace read back with each token and with an own token for
    // the derived owner id.
    let private = rsa_private();
    let keys = [
        rsa_key("rs", Algorithm::RS256, &private),
        rsa_key("ps", Algorithm::PS256, &private),
        ec_key("ec"),
        ed_key("ed"),
    ];
    let idp = Idp::start(StatusCode::OK, jwks(&keys.iter().collect::<Vec<_>>())).await;
    let node = Node::start(provider(&idp)).await;
    node.wait_ready().await;
    let tokens: Vec<String> = keys
        .iter()
        .map(|k| k.sign(&claims("auth0|alice")))
        .collect();
    let mut ids = Vec::new();
    for (key, token) in keys.iter().zip(&tokens) {
        ids.push(
            node.create(token, &format!("made with {:?}", key.alg), 1)
                .await,
        );
    }
    for token in &tokens {
        let seen: Vec<String> = node.items(token).await.into_iter().map(|i| i.0).collect();
        assert_eq!(seen, ids, "one owner whichever key signed");
    }
    let derived = owner_for(ISSUER, "auth0|alice", OwnerMapping::Auto).unwrap();
    assert!(derived.as_str().starts_with("idp."));
    let own = Verifier::new(common::SECRET).mint(&derived, Duration::from_secs(60));
    let seen: Vec<String> = node.items(&own).await.into_iter().map(|i| i.0).collect();
    assert_eq!(seen, ids, "the derived owner id names the same namespace");

    let direct = keys[2].sign(&claims("alice"));
    assert!(
        node.items(&direct).await.is_empty(),
        "`alice` is another owner"
    );
    node.create(&direct, "alice's own", 5).await;
    let alice = countiq::domain::OwnerId::new("alice").unwrap();
    let own_alice = Verifier::new(common::SECRET).mint(&alice, Duration::from_secs(60));
    assert_eq!(
        node.items(&own_alice).await.len(),
        1,
        "a valid owner id is used as it is"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_on_every_route_and_nothing_changes() {
    // Goal: wrong issuer, wrong audience, expired beyond the leeway, unknown
    // kid, a kid rotated out, an HS256 token keyed with the RSA public key,
    // alg none, an algorithm other than the key's, no kid, and a missing or
    // non-string owner claim are each 401 on every route, with
    // `WWW-Authenticate: Bearer error="invalid_token"` and the reason; a
    // valid token of another owner sees none of alice's items; afterwards
    // every item of both owners is exactly as before. Method: crafted
    // tokens against the real server; the rotated-out kid is removed from
    // the served set and the test waits until the server has refetched.
    let private = rsa_private();
    let rs = rsa_key("rs", Algorithm::RS256, &private);
    let old = rsa_key("rs-old", Algorithm::RS256, &rsa_private());
    let ec = ec_key("ec");
    let ed = ed_key("ed");
    let idp = Idp::start(StatusCode::OK, jwks(&[&rs, &old, &ec, &ed])).await;
    let mut config = provider(&idp);
    config.refresh_interval = Duration::from_millis(200);
    let node = Node::start(config).await;
    node.wait_ready().await;

    let alice = rs.sign(&claims("auth0|alice"));
    let bob = ed.sign(&claims("svc@clients"));
    let alice_item = node.create(&alice, "milk", 3).await;
    node.create(&alice, "eggs", 12).await;
    node.create(&bob, "bolts", 7).await;
    let rotated_out = old.sign(&claims("auth0|alice"));
    assert_eq!(
        node.items(&rotated_out).await.len(),
        2,
        "control: the old key works"
    );
    let within_leeway =
        rs.sign(&json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "auth0|alice", "exp": now() - 5}));
    assert_eq!(
        node.items(&within_leeway).await.len(),
        2,
        "control: 5 s late is within the 30 s leeway"
    );

    idp.publish(StatusCode::OK, jwks(&[&rs, &ec, &ed]));
    wait_until("the rotated-out key is refused", || async {
        let r = node
            .send(Method::GET, "/items", Some(&rotated_out), None)
            .await;
        r.status == StatusCode::UNAUTHORIZED
    })
    .await;

    let with = |mut c: Value, k: &str, v: Value| {
        c[k] = v;
        c
    };
    let good = claims("auth0|alice");
    let hs = |secret: &[u8], kid: Option<&str>| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(secret)).unwrap()
    };
    let unsigned = |header: Value| {
        format!(
            "{}.{}.",
            b64(header.to_string().as_bytes()),
            b64(good.to_string().as_bytes())
        )
    };
    let public_pem = {
        use rsa::pkcs8::EncodePublicKey;
        private
            .to_public_key()
            .to_public_key_pem(Default::default())
            .unwrap()
    };
    let public_der = {
        use rsa::pkcs1::EncodeRsaPublicKey;
        private
            .to_public_key()
            .to_pkcs1_der()
            .unwrap()
            .as_bytes()
            .to_vec()
    };
    let mut rs_header_on_ec_key = Header::new(Algorithm::RS256);
    rs_header_on_ec_key.kid = Some("ec".into());
    let mut no_kid = Header::new(Algorithm::RS256);
    no_kid.kid = None;
    let stranger = rsa_key("rs", Algorithm::RS256, &rsa_private());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong issuer",
            rs.sign(&with(good.clone(), "iss", json!("https://evil.example/"))),
            "issuer",
        ),
        (
            "wrong audience",
            rs.sign(&with(good.clone(), "aud", json!("another-api"))),
            "audience",
        ),
        (
            "no audience",
            rs.sign(&{
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove("aud");
                c
            }),
            "required claim",
        ),
        (
            "expired beyond the leeway",
            rs.sign(&with(good.clone(), "exp", json!(now() - 31 - 5))),
            "expired",
        ),
        (
            "not valid yet beyond the leeway",
            ec.sign(&with(good.clone(), "nbf", json!(now() + 120))),
            "not valid yet",
        ),
        (
            "unknown kid",
            rsa_key("nobody", Algorithm::RS256, &private).sign(&good),
            "no current key",
        ),
        ("kid rotated out", rotated_out.clone(), "no current key"),
        (
            "signed by another key under a known kid",
            stranger.sign(&good),
            "signature",
        ),
        (
            "HS256 keyed with the RSA public key (PEM)",
            hs(public_pem.as_bytes(), Some("rs")),
            "no current key",
        ),
        (
            "HS256 keyed with the RSA public key (PEM), no kid",
            hs(public_pem.as_bytes(), None),
            "signature",
        ),
        (
            "HS256 keyed with the RSA public key (DER)",
            hs(&public_der, None),
            "signature",
        ),
        (
            "HS256 keyed with the JWK's n",
            hs(rs.jwk["n"].as_str().unwrap().as_bytes(), None),
            "signature",
        ),
        (
            "alg none",
            unsigned(json!({"alg": "none", "kid": "rs"})),
            "well-formed",
        ),
        (
            "alg none, no kid",
            unsigned(json!({"alg": "none"})),
            "well-formed",
        ),
        (
            "RS256 header on the EC key",
            jsonwebtoken::encode(&rs_header_on_ec_key, &good, &rs.encoding).unwrap(),
            "does not match its key",
        ),
        (
            "no kid",
            jsonwebtoken::encode(&no_kid, &good, &rs.encoding).unwrap(),
            "no kid",
        ),
        (
            "no owner claim",
            rs.sign(&{
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove("sub");
                c
            }),
            "required claim",
        ),
        (
            "owner claim not a string",
            rs.sign(&with(good.clone(), "sub", json!(42))),
            "owner claim",
        ),
        (
            "tampered claims",
            {
                let (head, rest) = alice.split_once('.').unwrap();
                let sig = rest.rsplit_once('.').unwrap().1;
                format!(
                    "{head}.{}.{sig}",
                    b64(claims("svc@clients").to_string().as_bytes())
                )
            },
            "signature",
        ),
        (
            "too large",
            rs.sign(&with(good.clone(), "pad", json!("x".repeat(4096)))),
            "larger than",
        ),
    ];
    let before_alice = node.items(&alice).await;
    let before_bob = node.items(&bob).await;
    for (what, token, reason) in &cases {
        for (method, path, body) in routes(&alice_item) {
            let r = node.send(method.clone(), &path, Some(token), body).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{what}: {method} {path}: {}",
                r.raw
            );
            assert_eq!(r.code(), "unauthorized", "{what}");
            let www = r.header("www-authenticate").unwrap_or("");
            assert!(
                www.starts_with("Bearer error=\"invalid_token\", error_description=\""),
                "{what}: {www}"
            );
            assert!(
                www.contains(reason),
                "{what}: {www:?} should say {reason:?}"
            );
            assert!(
                r.body["detail"].as_str().unwrap().contains(reason),
                "{what}: {}",
                r.raw
            );
        }
    }
    // Another owner's valid token: alice's item does not exist for bob.
    for (method, path, body) in routes(&alice_item) {
        let r = node.send(method.clone(), &path, Some(&bob), body).await;
        let expected = match (method.as_str(), path.as_str()) {
            ("GET", "/items") => StatusCode::OK,
            ("POST", "/items") => StatusCode::CREATED,
            ("DELETE", _) => StatusCode::NO_CONTENT,
            _ => StatusCode::NOT_FOUND,
        };
        assert_eq!(r.status, expected, "bob: {method} {path}: {}", r.raw);
    }
    let missing = node.send(Method::GET, "/items", None, None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer"),
        "RFC 6750 §3.1"
    );

    assert_eq!(
        node.items(&alice).await,
        before_alice,
        "alice's items are unchanged"
    );
    let after_bob = node.items(&bob).await;
    assert_eq!(
        after_bob.len(),
        before_bob.len() + 1,
        "bob only gained his own POST"
    );
    assert_eq!(after_bob[..before_bob.len()], before_bob[..]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_at_the_provider_is_picked_up_without_restart() {
    // Goal: the provider starts signing with a new key and drops the old
    // one; the running node accepts the new kid (refetching on the unknown
    // kid, at most once per refresh gap) and then refuses the old key's
    // tokens, including ones it had cached. Method: a node whose periodic
    // refresh is an hour away, so only the unknown kid can trigger the
    // fetch; the fetch count is read from the JWKS server.
    let rs1 = rsa_key("2026-11", Algorithm::RS256, &rsa_private());
    let rs2 = rsa_key("2026-12", Algorithm::RS256, &rsa_private());
    let idp = Idp::start(StatusCode::OK, jwks(&[&rs1])).await;
    let mut config = provider(&idp);
    config.refresh_gap = Duration::from_millis(500);
    let node = Node::start(config).await;
    node.wait_ready().await;
    assert_eq!(idp.fetches(), 1, "one fetch at start");
    let old = rs1.sign(&claims("auth0|alice"));
    let new = rs2.sign(&claims("auth0|alice"));
    node.create(&old, "milk", 1).await;
    assert_eq!(
        node.items(&old).await.len(),
        1,
        "the old token is cached now"
    );

    // Unknown kids before the provider publishes the key: refused, and
    // however many arrive, they cost at most one fetch per gap.
    let started = tokio::time::Instant::now();
    for _ in 0..50 {
        let r = node.send(Method::GET, "/items", Some(&new), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    wait_until("the unknown kid caused a refetch", || async {
        idp.fetches() >= 2
    })
    .await;
    let gaps = started.elapsed().as_millis() / 500 + 1;
    assert!(
        idp.fetches() as u128 <= 1 + gaps,
        "{} fetches in {:?}: more than one per gap",
        idp.fetches(),
        started.elapsed()
    );

    idp.publish(StatusCode::OK, jwks(&[&rs2]));
    wait_until("the new key is accepted", || async {
        node.send(Method::GET, "/items", Some(&new), None)
            .await
            .status
            == StatusCode::OK
    })
    .await;
    assert_eq!(node.items(&new).await.len(), 1, "same owner, same items");
    let r = node.send(Method::GET, "/items", Some(&old), None).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "the old key is gone, cache or not"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_a_first_jwks_and_a_failed_refresh_keeps_the_last() {
    // Goal: while a configured JWKS was never loaded, /readyz is 503
    // not_ready with the reason and /items is 503 (not 401); once loaded the
    // node is ready; later failed refreshes keep the last good set. Method:
    // the JWKS server answers 500, then a good set, then 500 and an
    // oversized body while the test watches the fetch count.
    let key = ec_key("ec");
    let idp = Idp::start(StatusCode::INTERNAL_SERVER_ERROR, "oops".into()).await;
    let mut config = provider(&idp);
    config.refresh_interval = Duration::from_millis(100);
    let node = Node::start(config).await;
    wait_until("a failed fetch is reported", || async {
        let r = node.ready().await;
        r.status == StatusCode::SERVICE_UNAVAILABLE && r.raw.contains("HTTP status 500")
    })
    .await;
    let r = node.ready().await;
    assert_eq!(r.code(), "not_ready");
    assert!(r.raw.contains("JWKS has not been loaded"), "{}", r.raw);
    let token = key.sign(&claims("auth0|alice"));
    let r = node.send(Method::GET, "/items", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.code(), "not_ready");
    // Own tokens do not depend on the provider: they keep working.
    let own = Verifier::new(common::SECRET).mint(
        &countiq::domain::OwnerId::new("own-alice").unwrap(),
        Duration::from_secs(60),
    );
    let r = node.send(Method::GET, "/items", Some(&own), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);

    idp.publish(StatusCode::OK, jwks(&[&key]));
    node.wait_ready().await;
    node.create(&token, "milk", 1).await;

    for (status, body) in [
        (StatusCode::INTERNAL_SERVER_ERROR, "oops".to_string()),
        (
            StatusCode::OK,
            " ".repeat(countiq::auth::jwks::JWKS_BYTES_MAX + 1),
        ),
        (StatusCode::OK, "{\"keys\": []}".to_string()),
    ] {
        idp.publish(status, body);
        let seen = idp.fetches();
        wait_until("two more refreshes", || async { idp.fetches() >= seen + 2 }).await;
        assert_eq!(node.ready().await.status, StatusCode::OK, "still ready");
        // A token the verifier's cache has never seen (jti differs).
        let mut fresh_claims = claims("auth0|alice");
        fresh_claims["jti"] = json!(format!("refresh-{seen}"));
        let fresh = key.sign(&fresh_claims);
        assert_eq!(
            node.items(&fresh).await.len(),
            1,
            "the last good set still verifies"
        );
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_file_is_read_at_start_and_reread_on_refresh() {
    // Goal: `--jwks-file` works like a URL: the node becomes ready (the
    // file was read before it started), a rewritten file (a rotation) is
    // picked up without a restart, and a file that is not a JWKS stops the
    // start. Method: a temp file, rewritten.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let k1 = ed_key("one");
    let k2 = ed_key("two");
    std::fs::write(&path, jwks(&[&k1])).unwrap();
    let mut config = ProviderConfig::new(JwksSource::File(path.clone()), ISSUER, &[AUDIENCE]);
    config.refresh_interval = Duration::from_millis(100);
    config.refresh_gap = Duration::from_millis(100);
    let node = Node::start(config.clone()).await;
    node.wait_ready().await;
    let t1 = k1.sign(&claims("auth0|alice"));
    node.create(&t1, "milk", 1).await;
    std::fs::write(&path, jwks(&[&k2])).unwrap();
    let t2 = k2.sign(&claims("auth0|alice"));
    wait_until("the rewritten file is picked up", || async {
        node.send(Method::GET, "/items", Some(&t2), None)
            .await
            .status
            == StatusCode::OK
    })
    .await;
    assert_eq!(
        node.send(Method::GET, "/items", Some(&t1), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    node.stop().await;

    std::fs::write(&path, "not json").unwrap();
    let refused = Verifier::from_config(AuthConfig {
        own: None,
        provider: Some(config),
    });
    assert!(refused.is_err(), "a bad file stops the start");
}
