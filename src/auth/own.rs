//! Own tokens: HS256 JWTs that `countiq token` signs with the node's secrets.
//!
//! The algorithm is pinned to HS256, `exp` and `sub` are required, `nbf` is
//! checked when present, and there is no leeway: the node checks tokens it
//! signed itself, with its own clock. `sub` must already be a valid owner id.
//!
//! Secrets (the HMAC key is a secret's text with surrounding whitespace
//! trimmed, as bytes; at least `SECRET_BYTES_MIN` bytes):
//! - one secret without a key id, as before: `COUNTIQ_JWT_SECRET`, else
//!   `--jwt-secret-file`, else `<data-dir>/jwt.secret` (created on first use,
//!   mode 0600, 32 random bytes as 64 hex characters). Its tokens carry no
//!   `kid`.
//! - or a rotation file (`--jwt-secrets-file`): one `kid=secret` per line,
//!   oldest first. The last line signs (its `kid` goes in the token header);
//!   every line verifies tokens carrying its `kid`, until it is removed (and
//!   the node restarted). A single secret given explicitly next to it keeps
//!   verifying the kid-less tokens signed before the rotation began.
//!
//! `<data-dir>/jwt.secret` is created without a window in which a reader
//! could see it empty or half written: the secret is written and synced to a
//! temporary file first, which is then hard-linked to the final name (the
//! link fails if someone else created it first, and then theirs is used).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::AuthError;
use crate::domain::OwnerId;

/// Shortest accepted secret: HS256 wants at least 256 bits of key.
pub const SECRET_BYTES_MIN: usize = 32;
pub const SECRET_FILE_NAME: &str = "jwt.secret";
/// Secrets in a rotation file at most.
pub const OWN_KEYS_MAX: usize = 16;
/// A key id (ours, or a provider's) is at most this long.
pub const KID_BYTES_MAX: usize = 64;
/// A rotation file is at most this long.
pub const SECRETS_FILE_BYTES_MAX: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the JWT secret must be at least {SECRET_BYTES_MIN} bytes")]
    TooShort,
    #[error("{path} line {line}: {reason}")]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
    #[error("{path}: holds no secret")]
    Empty { path: PathBuf },
    #[error("{path}: more than {OWN_KEYS_MAX} secrets")]
    TooMany { path: PathBuf },
    #[error("{path}: larger than {SECRETS_FILE_BYTES_MAX} bytes")]
    FileTooLarge { path: PathBuf },
}

/// The single kid-less secret, from where it comes in order of precedence.
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
    secret_bytes(&text).ok_or(SecretError::TooShort)
}

fn secret_bytes(text: &str) -> Option<Vec<u8>> {
    let key = text.trim().as_bytes();
    (key.len() >= SECRET_BYTES_MIN).then(|| key.to_vec())
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
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err)?;
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let temp = dir.join(format!(
        ".{SECRET_FILE_NAME}.{:016x}.tmp",
        rand::random::<u64>()
    ));
    let linked = write_synced(&temp, &secret).and_then(|()| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            // The new name is durable once its directory is.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err)?;
            Ok(secret)
        }
        // Someone (another `countiq token`) created it first: use theirs,
        // which is complete, since it too was linked only once written.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read(path),
        Err(e) => Err(io_err(e)),
    }
}

fn write_synced(path: &Path, secret: &str) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    f.write_all(format!("{secret}\n").as_bytes())?;
    f.sync_all()
}

/// A rotation file: `kid=secret` lines, oldest first; blank lines and lines
/// starting with `#` are ignored.
pub fn load_secrets_file(path: &Path) -> Result<Vec<(String, Vec<u8>)>, SecretError> {
    let io_err = |source| SecretError::Io {
        path: path.into(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io_err)?.len();
    if len > SECRETS_FILE_BYTES_MAX {
        return Err(SecretError::FileTooLarge { path: path.into() });
    }
    parse_secrets(path, &read(path)?)
}

fn parse_secrets(path: &Path, text: &str) -> Result<Vec<(String, Vec<u8>)>, SecretError> {
    let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason| SecretError::BadLine {
            path: path.into(),
            line: i + 1,
            reason,
        };
        let (kid, secret) = line.split_once('=').ok_or(bad("expected kid=secret"))?;
        let kid = kid.trim();
        if !valid_kid(kid) {
            return Err(bad("a kid is 1-64 characters of [A-Za-z0-9._-]"));
        }
        if keys.iter().any(|(k, _)| k == kid) {
            return Err(bad("this kid appears twice"));
        }
        let secret = secret_bytes(secret).ok_or(bad("a secret must be at least 32 bytes"))?;
        if keys.len() == OWN_KEYS_MAX {
            return Err(SecretError::TooMany { path: path.into() });
        }
        keys.push((kid.to_string(), secret));
    }
    if keys.is_empty() {
        return Err(SecretError::Empty { path: path.into() });
    }
    Ok(keys)
}

fn valid_kid(kid: &str) -> bool {
    (1..=KID_BYTES_MAX).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    // Defaults only so that a missing `sub` or `exp` is reported as such by
    // the validation (which requires both), not as a malformed token.
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
}

struct OwnKey {
    /// `None`: the single secret of old, whose tokens carry no `kid`.
    kid: Option<String>,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// The node's HS256 secrets, oldest first; the last one signs.
pub struct OwnKeys {
    keys: Vec<OwnKey>,
    validation: Validation,
}

/// What an own token says, once verified.
pub(super) struct OwnClaims {
    pub owner: OwnerId,
    pub exp: u64,
    pub nbf: u64,
}

impl OwnKeys {
    /// One kid-less secret (the setup before rotation existed).
    pub fn single(secret: &[u8]) -> Self {
        Self::build(vec![(None, secret.to_vec())])
    }

    /// Secrets with key ids, oldest first, and optionally the kid-less one.
    pub fn with_kids(kids: Vec<(String, Vec<u8>)>, kidless: Option<Vec<u8>>) -> Self {
        let mut keys: Vec<_> = kidless.map(|s| (None, s)).into_iter().collect();
        keys.extend(kids.into_iter().map(|(k, s)| (Some(k), s)));
        Self::build(keys)
    }

    fn build(keys: Vec<(Option<String>, Vec<u8>)>) -> Self {
        assert!(!keys.is_empty(), "at least one secret");
        assert!(
            keys.iter().all(|(_, s)| s.len() >= SECRET_BYTES_MIN),
            "own secrets are at least {SECRET_BYTES_MIN} bytes (the loaders refuse shorter ones)"
        );
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let keys = keys
            .into_iter()
            .map(|(kid, secret)| OwnKey {
                kid,
                encoding: EncodingKey::from_secret(&secret),
                decoding: DecodingKey::from_secret(&secret),
            })
            .collect();
        OwnKeys { keys, validation }
    }

    /// The key id new tokens carry (`None` for the single secret).
    pub fn signing_kid(&self) -> Option<&str> {
        self.newest().kid.as_deref()
    }

    fn newest(&self) -> &OwnKey {
        self.keys.last().expect("at least one secret")
    }

    /// A token for `owner`, valid for `ttl` from now, signed by the newest.
    pub fn mint(&self, owner: &OwnerId, ttl: Duration) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: owner.to_string(),
            exp: now + ttl.as_secs(),
            iat: Some(now),
            nbf: None,
        };
        let key = self.newest();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = key.kid.clone();
        encode(&header, &claims, &key.encoding).expect("HS256 signing cannot fail")
    }

    /// Verify an HS256 token with the secret its `kid` names.
    pub(super) fn verify(&self, kid: Option<&str>, token: &str) -> Result<OwnClaims, AuthError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.kid.as_deref() == kid)
            .ok_or(match kid {
                Some(_) => AuthError::UnknownKey,
                None => AuthError::NoKeyId,
            })?;
        let data = decode::<Claims>(token, &key.decoding, &self.validation)
            .map_err(AuthError::from_jwt)?;
        let owner = OwnerId::new(&data.claims.sub).map_err(|_| AuthError::BadSubject)?;
        Ok(OwnClaims {
            owner,
            exp: data.claims.exp,
            nbf: data.claims.nbf.unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [SECRET_FILE_NAME], "no temporary file is left");
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

    /// Goal: concurrent first uses (two `countiq token`, or a token and a
    /// server start) all get the same, complete secret. The old code created
    /// the file empty and wrote it afterwards, so a racing reader could read
    /// "" and fail with TooShort. Method: 200 rounds of 8 threads released
    /// together by a barrier on a fresh directory; every thread must get a
    /// 64-byte secret and all of them the same one.
    #[test]
    fn racing_first_uses_see_one_complete_secret() {
        const THREADS: usize = 8;
        for round in 0..200 {
            let dir = tempfile::tempdir().unwrap();
            let barrier = std::sync::Barrier::new(THREADS);
            let secrets: Vec<Vec<u8>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            load_secret(None, None, dir.path())
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap().expect("a complete secret"))
                    .collect()
            });
            assert_eq!(secrets[0].len(), 64, "round {round}");
            assert!(
                secrets.iter().all(|s| s == &secrets[0]),
                "round {round}: one secret"
            );
        }
    }

    #[test]
    fn rotation_files_parse_strictly() {
        let p = Path::new("s");
        let ok = parse_secrets(
            p,
            "# comment\n\nk1 = 0123456789abcdef0123456789abcdef\nk2=fedcba9876543210fedcba9876543210\n",
        )
        .unwrap();
        let kids: Vec<_> = ok.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kids, ["k1", "k2"]);
        assert_eq!(ok[0].1, b"0123456789abcdef0123456789abcdef");
        let long = "k".repeat(65);
        let cases = [
            (
                "no equals",
                "k1 0123456789abcdef0123456789abcdef".to_string(),
            ),
            (
                "bad kid",
                "a/b=0123456789abcdef0123456789abcdef".to_string(),
            ),
            (
                "kid too long",
                format!("{long}=0123456789abcdef0123456789abcdef"),
            ),
            ("empty kid", "=0123456789abcdef0123456789abcdef".to_string()),
            ("short secret", "k1=short".to_string()),
            (
                "duplicate",
                "k1=0123456789abcdef0123456789abcdef\nk1=0123456789abcdef0123456789abcdeX"
                    .to_string(),
            ),
        ];
        for (what, text) in cases {
            assert!(
                matches!(parse_secrets(p, &text), Err(SecretError::BadLine { .. })),
                "{what}"
            );
        }
        assert!(matches!(
            parse_secrets(p, "# nothing\n"),
            Err(SecretError::Empty { .. })
        ));
        let many: String = (0..=OWN_KEYS_MAX)
            .map(|i| format!("k{i}=0123456789abcdef0123456789abcdef\n"))
            .collect();
        assert!(matches!(
            parse_secrets(p, &many),
            Err(SecretError::TooMany { .. })
        ));
    }
}
