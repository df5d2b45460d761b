//! The OpenAPI document stays in sync with the router.
mod common;

use std::collections::BTreeSet;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// What the probe looks at in an answer.
struct Probe {
    status: StatusCode,
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Goal: every route the server serves is documented, and nothing that is
/// documented is missing. Method: axum cannot list its routes, so probe the
/// real server: for every documented path and every method, "documented"
/// must equal "the server does not answer 405"; and the documented paths
/// and their methods must equal the route table (`http::routes::TABLE`),
/// which the router, the metric labels and the fingerprints use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_matches_the_router() {
    let s = TestServer::start().await;
    let doc: Value = serde_json::from_str(&s.text("/openapi.json").await).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let known: BTreeSet<&str> = countiq::http::routes::ALL.iter().copied().collect();
    assert_eq!(
        documented, known,
        "documented paths vs the router's route templates"
    );
    for (path, methods) in countiq::http::routes::TABLE {
        let documented: BTreeSet<String> =
            paths[*path].as_object().unwrap().keys().cloned().collect();
        let table: BTreeSet<String> = methods.iter().map(|(m, _)| m.to_lowercase()).collect();
        assert_eq!(
            documented, table,
            "{path}: documented methods vs the route table"
        );
    }
    let item = s.create("alice", "probe", 1).await;
    let id = item["id"].as_str().unwrap();
    for (path, ops) in paths {
        let url = path.replace("{id}", id);
        for method in METHODS {
            let is_documented = ops.get(method).is_some();
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let status = if *path == countiq::http::routes::EVENTS && method == "get" {
                // A stream that never ends: its head is the answer.
                let r = s
                    .http
                    .get(format!("{}{url}", s.base))
                    .bearer_auth(s.token("alice"));
                r.send().await.expect("request").status()
            } else {
                s.send(m, &url, Some("alice"), None, &[]).await.status
            };
            let r = Probe { status };
            let served = r.status != StatusCode::METHOD_NOT_ALLOWED;
            assert_eq!(
                is_documented, served,
                "{method} {path}: documented={is_documented}, server answered {}",
                r.status
            );
            if is_documented {
                let documented_statuses = ops[method]["responses"].as_object().unwrap();
                let status = r.status.as_u16().to_string();
                assert!(
                    documented_statuses.contains_key(&status),
                    "{method} {path} answered {status}, which is not documented"
                );
            }
        }
    }
}

/// Goal: the error schema and the security scheme are in the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_declares_errors_and_bearer_auth() {
    let doc: Value = serde_json::from_str(countiq::http::openapi::document()).unwrap();
    let problem = &doc["components"]["schemas"]["Problem"]["properties"];
    for field in ["type", "title", "status", "detail", "error"] {
        assert!(problem.get(field).is_some(), "Problem.{field}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let patch = &doc["paths"]["/items/{id}/qty"]["patch"];
    for status in [
        "200", "400", "401", "404", "412", "413", "415", "422", "503",
    ] {
        assert!(
            patch["responses"].get(status).is_some(),
            "PATCH documents {status}"
        );
    }
}

/// Goal: the schema bounds are the domain's constants, not numbers written
/// out by hand. Method: read each bound from the document and compare.
#[test]
fn schema_bounds_are_the_constants() {
    use countiq::domain::{DELTA_ABS_MAX, NAME_CHARS_MAX, QTY_MAX, TX_OPS_MAX};
    let doc: Value = serde_json::from_str(countiq::http::openapi::document()).unwrap();
    let schemas = &doc["components"]["schemas"];
    for body in ["CreateBody", "ReplaceBody"] {
        let name = &schemas[body]["properties"]["name"];
        assert_eq!(name["maxLength"], NAME_CHARS_MAX as u64, "{body}.name");
        assert_eq!(name["minLength"], 1, "{body}.name");
        let qty = &schemas[body]["properties"]["qty"];
        assert_eq!(
            (qty["minimum"].as_i64(), qty["maximum"].as_u64()),
            (Some(0), Some(QTY_MAX)),
            "{body}.qty"
        );
    }
    for (schema, field) in [("AdjustBody", "delta"), ("TxAdjustBody", "delta")] {
        let delta = &schemas[schema]["properties"][field];
        assert_eq!(
            (delta["minimum"].as_i64(), delta["maximum"].as_i64()),
            (Some(-DELTA_ABS_MAX), Some(DELTA_ABS_MAX)),
            "{schema}.{field}"
        );
    }
    assert_eq!(
        schemas["Item"]["properties"]["qty"]["maximum"].as_u64(),
        Some(QTY_MAX)
    );
    // reason and reference: on every body of a qty-changing write, optional,
    // never null, bounded by the domain's constants.
    use countiq::domain::{HOLD_TTL_SECS_MAX, REASON_BYTES_MAX, REFERENCE_BYTES_MAX};
    let noted: BTreeSet<&str> = schemas
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, s)| name.ends_with("Body") && s["properties"].get("reason").is_some())
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        noted,
        BTreeSet::from([
            "AdjustBody",
            "CommitBody",
            "CreateBody",
            "ReplaceBody",
            "TxAdjustBody",
            "TxCommitBody",
        ]),
        "the bodies of the six qty-changing writes"
    );
    for body in noted {
        for (field, max) in [
            ("reason", REASON_BYTES_MAX),
            ("reference", REFERENCE_BYTES_MAX),
        ] {
            let f = &schemas[body]["properties"][field];
            assert_eq!(
                (
                    f["type"].as_str(),
                    f["minLength"].as_u64(),
                    f["maxLength"].as_u64()
                ),
                (Some("string"), Some(1), Some(max as u64)),
                "{body}.{field}: {f}"
            );
            let required = schemas[body]["required"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(
                !required.contains(&Value::from(field)),
                "{body}.{field} is optional"
            );
        }
        assert_eq!(
            schemas[body]["properties"]["reason"]["pattern"], "^[a-z][a-z0-9_.-]*$",
            "{body}.reason"
        );
    }
    for field in ["qty", "ttl"] {
        let single = &schemas["ReserveBody"]["properties"][field];
        let in_tx = &schemas["TxReserveBody"]["properties"][field];
        assert_eq!(single["minimum"], 1, "{field}");
        assert_eq!(
            (&single["minimum"], &single["maximum"]),
            (&in_tx["minimum"], &in_tx["maximum"]),
            "a reserve op takes what the reservation route takes: {field}"
        );
    }
    assert_eq!(
        schemas["TxReserveBody"]["properties"]["ttl"]["maximum"].as_u64(),
        Some(HOLD_TTL_SECS_MAX)
    );
    // The op is one of four object shapes, the original first; the three
    // hold-op shapes (one key each) refuse other keys, as the server does.
    let shapes = schemas["TxOpBody"]["oneOf"].as_array().expect("oneOf");
    assert_eq!(shapes.len(), 4, "{shapes:?}");
    for shape in shapes.iter().filter(|s| s.get("$ref").is_none()) {
        assert_eq!(shape["additionalProperties"], false, "{shape}");
    }
    // The commit's optional body: "no body or a CommitBody", never `null`
    // (a `null` body is 400, API.md "Objects only").
    let commit = &doc["paths"]["/reservations/{id}/commit"]["post"]["requestBody"];
    assert_eq!(
        commit["content"]["application/json"]["schema"],
        serde_json::json!({"$ref": "#/components/schemas/CommitBody"}),
        "{commit}"
    );
    assert_ne!(commit["required"], true, "{commit}");
    let text = serde_json::to_string(shapes).unwrap();
    for name in [
        "TxAdjustBody",
        "TxReserveBody",
        "TxCommitBody",
        "TxReleaseBody",
    ] {
        assert!(text.contains(name), "{name} in {text}");
    }
    let ops = &schemas["TxBody"]["properties"]["ops"];
    assert_eq!(
        (ops["minItems"].as_u64(), ops["maxItems"].as_u64()),
        (Some(1), Some(TX_OPS_MAX as u64))
    );
    let params = doc["paths"]["/items"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let limit = params
        .iter()
        .find(|p| p["name"] == "limit")
        .expect("limit parameter");
    assert_eq!(
        limit["schema"]["maximum"].as_u64(),
        Some(countiq::http::LIST_LIMIT_MAX as u64)
    );
}

/// Goal: a client that sends an `Idempotency-Key` the document allows is
/// never refused for its form (schemathesis generates keys from this
/// pattern), and the pattern is `IdemKey::parse`'s rule, not a looser one.
/// Method: every keyed write declares the header as a non-null string
/// with one pattern; sample keys on both sides of each rule (bare and
/// quoted forms, escapes, lengths 255 and 256, spaces, non-ASCII) match
/// the pattern exactly when the parser takes them.
#[test]
fn idempotency_key_pattern_is_the_parser() {
    use countiq::domain::idempotency::{IdemKey, KEY_BYTES_MAX};
    let doc: Value = serde_json::from_str(countiq::http::openapi::document()).unwrap();
    let mut patterns = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for p in params.iter().filter(|p| p["name"] == "Idempotency-Key") {
                assert_eq!(p["schema"]["type"], "string", "{method} {path}: {p}");
                patterns.insert(p["schema"]["pattern"].as_str().expect("pattern").to_owned());
            }
        }
    }
    assert_eq!(
        patterns.len(),
        1,
        "one rule for every keyed write: {patterns:?}"
    );
    let pattern = regex::Regex::new(patterns.first().unwrap()).unwrap();
    let long = |n: usize| "k".repeat(n);
    let quoted = |inner: &str| format!("\"{inner}\"");
    let samples: Vec<(String, bool)> = vec![
        ("a".into(), true),
        ("order-1042/retry:2".into(), true),
        ("!~".into(), true),
        ("x\"y".into(), true),
        (long(KEY_BYTES_MAX), true),
        (long(KEY_BYTES_MAX + 1), false),
        (quoted("abc"), true),
        (quoted("a\\\"b"), true),
        (quoted("a\\\\b"), true),
        (quoted(&long(KEY_BYTES_MAX)), true),
        (quoted(&long(KEY_BYTES_MAX + 1)), false),
        (String::new(), false),
        (quoted(""), false),
        ("\"abc".into(), false),
        (quoted("a b"), false),
        (quoted("a\"b"), false),
        (quoted("a\\xb"), false),
        (quoted("a\\"), false),
        ("a b".into(), false),
        ("caf\u{e9}".into(), false),
        ("tab\there".into(), false),
    ];
    for (key, ok) in &samples {
        assert_eq!(pattern.is_match(key), *ok, "pattern on {key:?}");
        assert_eq!(IdemKey::parse(key).is_some(), *ok, "parser on {key:?}");
    }
    // The parser also trims spaces around a value; the pattern leaves
    // that out (stricter, so a schema-valid key is always taken).
    assert!(IdemKey::parse(" a ").is_some() && !pattern.is_match(" a "));
}
