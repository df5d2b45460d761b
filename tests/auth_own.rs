//! Own tokens with rotated secrets, and the CLI around tokens.
//!
//! Method: the real server (`serve_with`) with a rotation's secrets, driven
//! over HTTP; the `countiq` binary run as a child for `token`, `owner-id`
//! and the refusal of inconsistent provider flags.

mod common;

use std::process::Command;
use std::time::Duration;

use countiq::auth::{owner_for, AuthConfig, OwnKeys, OwnerMapping, Verifier};
use countiq::domain::OwnerId;
use countiq::server::{serve_with, ServeConfig, Stopped};
use reqwest::StatusCode;

const OLD: &str = "old-secret-old-secret-old-secret-0";
const NEW: &str = "new-secret-new-secret-new-secret-0";
const LEGACY: &str = "legacy-secret-legacy-secret-legacy";

fn countiq(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_countiq"))
        .args(args)
        .env_remove("COUNTIQ_JWT_SECRET")
        .env_remove("COUNTIQ_JWT_SECRET_FILE")
        .env_remove("COUNTIQ_JWT_SECRETS_FILE")
        .output()
        .expect("run countiq")
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secrets_all_verify_on_the_routes_until_removed() {
    // Goal: during a rotation a node accepts tokens of the new secret, of
    // the old one (by kid) and kid-less tokens of the secret kept beside
    // them; after the old secret is removed its tokens are 401 with
    // "no current key" and change nothing. Method: two server runs over one
    // data dir, the second without the old secret.
    let dir = tempfile::tempdir().unwrap();
    let alice = OwnerId::new("alice").unwrap();
    let ttl = Duration::from_secs(600);
    let old_token = OwnKeys::with_kids(vec![("k1".into(), OLD.into())], None).mint(&alice, ttl);
    let legacy_token = OwnKeys::single(LEGACY.as_bytes()).mint(&alice, ttl);
    let during = OwnKeys::with_kids(
        vec![("k1".into(), OLD.into()), ("k2".into(), NEW.into())],
        Some(LEGACY.into()),
    );
    let new_token = during.mint(&alice, ttl);
    let run = |keys: OwnKeys| {
        let path = dir.path().to_path_buf();
        async move {
            let auth = Verifier::from_config(AuthConfig {
                own: Some(keys),
                provider: None,
            })
            .unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let config = ServeConfig {
                addr,
                node: common::node_config(&path),
                jwt_secret: Vec::new(),
            };
            let task = tokio::spawn(serve_with(config, auth, None, listener, async move {
                let _ = stopped.await;
            }));
            (format!("http://{addr}"), stop, task)
        }
    };
    let http = reqwest::Client::new();
    let get = |base: &str, token: &str| http.get(format!("{base}/items")).bearer_auth(token).send();
    let (base, stop, task) = run(during).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while get(&base, &new_token).await.map(|r| r.status()).ok() != Some(StatusCode::OK) {
        assert!(tokio::time::Instant::now() < deadline, "the node is ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let created = http
        .post(format!("{base}/items"))
        .bearer_auth(&old_token)
        .header("content-type", "application/json")
        .body(r#"{"name": "milk", "qty": 2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = common::read(created).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    for token in [&new_token, &old_token, &legacy_token] {
        let r = common::read(get(&base, token).await.unwrap()).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body["items"].as_array().unwrap().len(), 1, "one owner");
    }
    let _ = stop.send(());
    let stopped = task.await.unwrap().unwrap();
    assert!(matches!(stopped, Stopped::Gracefully), "{stopped:?}");

    let after = OwnKeys::with_kids(vec![("k2".into(), NEW.into())], None);
    let (base, stop, task) = run(after).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while get(&base, &new_token).await.map(|r| r.status()).ok() != Some(StatusCode::OK) {
        assert!(tokio::time::Instant::now() < deadline, "the node is ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (token, reason) in [(&old_token, "no current key"), (&legacy_token, "no kid")] {
        let r = common::read(
            http.patch(format!("{base}/items/{id}/qty"))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(r#"{"delta": 1}"#)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let www = r.header("www-authenticate").unwrap();
        assert!(
            www.contains("invalid_token") && www.contains(reason),
            "{www}"
        );
    }
    let r = common::read(get(&base, &new_token).await.unwrap()).await;
    assert_eq!(r.body["items"][0]["qty"], 2, "nothing changed");
    let _ = stop.send(());
    let stopped = task.await.unwrap().unwrap();
    assert!(matches!(stopped, Stopped::Gracefully), "{stopped:?}");
}

#[test]
fn countiq_token_signs_with_the_newest_secret_and_sets_its_kid() {
    // Goal: `countiq token --jwt-secrets-file` signs with the last line and
    // names its kid; without the file the old single-secret setup is
    // unchanged (no kid). Method: decode the printed tokens' headers and
    // verify them with the library.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets");
    std::fs::write(&file, format!("# rotation\nk1={OLD}\nk2={NEW}\n")).unwrap();
    let data = dir.path().join("data");
    let (file, data) = (file.to_str().unwrap(), data.to_str().unwrap());
    let token = stdout(&countiq(&[
        "token",
        "--owner",
        "alice",
        "--data-dir",
        data,
        "--jwt-secrets-file",
        file,
    ]));
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.kid.as_deref(), Some("k2"));
    let alice = OwnerId::new("alice").unwrap();
    let only_new = Verifier::from_config(AuthConfig {
        own: Some(OwnKeys::with_kids(vec![("k2".into(), NEW.into())], None)),
        provider: None,
    })
    .unwrap();
    assert_eq!(only_new.verify(&token), Ok(alice.clone()));
    assert!(
        !std::path::Path::new(data).join("jwt.secret").exists(),
        "the rotation file replaces <data-dir>/jwt.secret"
    );

    let single = stdout(&countiq(&["token", "--owner", "alice", "--data-dir", data]));
    assert_eq!(jsonwebtoken::decode_header(&single).unwrap().kid, None);
    let secret = countiq::auth::load_secret(None, None, std::path::Path::new(data)).unwrap();
    assert_eq!(Verifier::new(&secret).verify(&single), Ok(alice));

    std::fs::write(dir.path().join("secrets"), "k1=short\n").unwrap();
    let bad = countiq(&["token", "--owner", "alice", "--jwt-secrets-file", file]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("line 1"));
}

#[test]
fn countiq_owner_id_prints_the_mapping() {
    // Goal: operators can compute the owner id of a provider subject, and
    // it is the library's mapping. Method: run the subcommand.
    let iss = "https://tenant.eu.auth0.com/";
    for (subject, mode, mapping) in [
        ("auth0|6543abc", "auto", OwnerMapping::Auto),
        ("svc@clients", "auto", OwnerMapping::Auto),
        ("alice", "auto", OwnerMapping::Auto),
        ("alice", "derive", OwnerMapping::Derive),
    ] {
        let printed = stdout(&countiq(&[
            "owner-id",
            "--issuer",
            iss,
            "--subject",
            subject,
            "--owner-id-mode",
            mode,
        ]));
        assert_eq!(printed, owner_for(iss, subject, mapping).unwrap().as_str());
    }
    assert_eq!(
        stdout(&countiq(&[
            "owner-id",
            "--issuer",
            iss,
            "--subject",
            "alice"
        ])),
        "alice"
    );
}

#[test]
fn inconsistent_provider_flags_stop_the_start() {
    // Goal: a JWKS without issuer or audience, or issuer/audience without a
    // JWKS, or an http URL to a remote host, is refused before anything
    // listens, naming the flag. Method: run `serve` and read stderr.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--jwks-url", "https://idp.example/certs", "--audience", "a"],
            "--issuer",
        ),
        (
            &["--jwks-url", "https://idp.example/certs", "--issuer", "i"],
            "--audience",
        ),
        (&["--issuer", "i"], "--jwks-file or --jwks-url"),
        (
            &[
                "--jwks-url",
                "http://idp.example/certs",
                "--issuer",
                "i",
                "--audience",
                "a",
            ],
            "https",
        ),
        (&["--leeway", "10m"], "must be between 0s and 5m"),
    ];
    for (flags, says) in cases {
        let mut args = vec!["serve", "--addr", "127.0.0.1:0", "--data-dir", data];
        args.extend_from_slice(flags);
        let out = countiq(&args);
        assert!(!out.status.success(), "{flags:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{flags:?}: {err}");
    }
}
