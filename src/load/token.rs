//! Bearer tokens for the load generator. The tool mints its own tokens, one
//! per owner, with the node's own `countiq::auth` (the same secret rules and
//! the same signer the server verifies with), so a run needs no server help.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::auth::{self, Auth};
use crate::domain::OwnerId;

/// Token lifetime: far longer than any run (`DURATION_MAX` is one hour).
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(2 * 3600);

/// The HMAC key: `--jwt-secret` / `COUNTIQ_JWT_SECRET`, else
/// `<data_dir>/jwt.secret`, exactly as `countiq serve` reads it. The file
/// must already exist (the server creates it): a secret the server does not
/// know would only produce 401s.
pub(crate) fn load_secret(explicit: Option<&str>, data_dir: &Path) -> Result<Vec<u8>> {
    let file = data_dir.join(auth::SECRET_FILE_NAME);
    if explicit.is_none() && !file.exists() {
        anyhow::bail!(
            "no --jwt-secret given and {} does not exist (start the server first)",
            file.display()
        );
    }
    Ok(auth::load_secret(explicit, None, data_dir)?)
}

/// Signs an HS256 token for `owner`, valid for `TOKEN_TTL`.
pub(crate) fn mint(secret: &[u8], owner: &str) -> Result<String> {
    let owner = OwnerId::new(owner).context("owner id")?;
    Ok(Auth::new(secret).mint(&owner, TOKEN_TTL))
}

#[cfg(test)]
mod tests {
    //! Goal: the tokens are what the server verifies; method: verify with
    //! the server's own `Auth`, and load secrets from a temp dir.
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn minted_token_verifies_with_the_servers_auth() {
        let token = mint(SECRET, "owner-1").expect("mint");
        assert_eq!(
            Auth::new(SECRET).verify(&token).map(|o| o.to_string()),
            Ok("owner-1".to_string())
        );
        assert!(Auth::new(b"another-secret-another-secret-xx")
            .verify(&token)
            .is_err());
    }

    #[test]
    fn secret_comes_from_the_flag_or_an_existing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load_secret(None, dir.path()).is_err(), "no file, no flag");
        let text = "ab".repeat(32);
        std::fs::write(
            dir.path().join(auth::SECRET_FILE_NAME),
            format!("  {text}\n"),
        )
        .expect("write");
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
}
