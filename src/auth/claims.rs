//! From a provider's claim to an owner id.
//!
//! Providers name principals in ways an owner id (1–64 of `[A-Za-z0-9._-]`)
//! cannot always hold: `auth0|6543abc`, `svc@clients`, an e-mail address.
//! Such a value is not refused; it is mapped, injectively:
//!
//! - `auto` (the default): a value that is already a valid owner id and does
//!   not start with `DERIVED_PREFIX` is the owner id as it is (a Keycloak
//!   `sub` is a UUID, so it stays readable). Any other value is derived.
//! - `derive`: every value is derived.
//!
//! Derived: `DERIVED_PREFIX` followed by the 32 hex digits of the UUIDv5,
//! under the fixed `OWNER_NAMESPACE`, of the name: the issuer's length in
//! bytes as 4 bytes big-endian, the issuer, then the claim's value. The
//! issuer is part of the name, so the same subject from two issuers is two
//! owners, and the length prefix keeps (issuer, value) pairs apart. As-is ids
//! never start with the prefix and derived ones always do, so the two sets
//! cannot meet; two derived ids collide only if SHA-1 truncated to 122 bits
//! does.

use uuid::Uuid;

use super::AuthError;
use crate::domain::OwnerId;

/// Every derived owner id starts with this; no as-is id does.
pub const DERIVED_PREFIX: &str = "idp.";
/// Longest owner claim value looked at.
pub const OWNER_CLAIM_BYTES_MAX: usize = 1024;
/// The namespace of derived owner ids. Fixed forever: changing it would move
/// every derived owner to a new, empty namespace.
pub const OWNER_NAMESPACE: Uuid = uuid::uuid!("6f1c2b9e-3d4a-4e8b-9c71-2a5d0e8f4b13");

/// How a claim value becomes an owner id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OwnerMapping {
    /// Valid owner ids as they are, anything else derived.
    #[default]
    Auto,
    /// Every value derived (the issuer always separates owners).
    Derive,
}

/// The owner a provider's claim value names.
pub fn owner_for(issuer: &str, value: &str, mapping: OwnerMapping) -> Result<OwnerId, AuthError> {
    if value.is_empty() || value.len() > OWNER_CLAIM_BYTES_MAX {
        return Err(AuthError::BadOwnerClaim);
    }
    if mapping == OwnerMapping::Auto && !value.starts_with(DERIVED_PREFIX) {
        if let Ok(owner) = OwnerId::new(value) {
            return Ok(owner);
        }
    }
    Ok(derived(issuer, value))
}

/// `DERIVED_PREFIX` + UUIDv5(OWNER_NAMESPACE, len(issuer) ‖ issuer ‖ value).
pub fn derived(issuer: &str, value: &str) -> OwnerId {
    let mut name = Vec::with_capacity(4 + issuer.len() + value.len());
    name.extend_from_slice(&(issuer.len() as u32).to_be_bytes());
    name.extend_from_slice(issuer.as_bytes());
    name.extend_from_slice(value.as_bytes());
    let id = Uuid::new_v5(&OWNER_NAMESPACE, &name);
    let text = format!("{DERIVED_PREFIX}{}", id.simple());
    OwnerId::new(&text).expect("a derived id is a valid owner id")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://tenant.example.auth0.com/";

    #[test]
    fn valid_ids_stay_and_provider_subjects_are_derived() {
        let kc = "7f3c1a52-8d0e-4c57-a0f4-2f5b8e0c9d11";
        assert_eq!(owner_for(ISS, kc, OwnerMapping::Auto).unwrap().as_str(), kc);
        for subject in ["auth0|6543abc", "svc@clients", "a b", "ü"] {
            let owner = owner_for(ISS, subject, OwnerMapping::Auto).unwrap();
            assert!(owner.as_str().starts_with(DERIVED_PREFIX), "{subject}");
            assert_eq!(owner.as_str().len(), DERIVED_PREFIX.len() + 32);
            assert_eq!(owner, derived(ISS, subject), "deterministic");
        }
        let forced = owner_for(ISS, "alice", OwnerMapping::Derive).unwrap();
        assert_eq!(forced, derived(ISS, "alice"));
        assert_ne!(forced.as_str(), "alice");
    }

    /// A subject cannot pose as a derived id: a value in the derived form is
    /// itself derived again, so it never equals the id it spells.
    #[test]
    fn as_is_and_derived_ids_cannot_meet() {
        let victim = derived(ISS, "auth0|victim");
        let posing = owner_for(ISS, victim.as_str(), OwnerMapping::Auto).unwrap();
        assert_ne!(posing, victim);
        assert!(posing.as_str().starts_with(DERIVED_PREFIX));
    }

    #[test]
    fn issuers_and_boundaries_separate_owners() {
        assert_ne!(
            derived("https://a.example/", "auth0|x"),
            derived("https://b.example/", "auth0|x")
        );
        // Without the length prefix, ("ab", "c") and ("a", "bc") would be
        // the same name.
        assert_ne!(derived("ab", "c"), derived("a", "bc"));
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            assert!(seen.insert(derived(ISS, &format!("auth0|{i}"))));
        }
    }

    #[test]
    fn empty_and_oversized_values_are_refused() {
        assert_eq!(
            owner_for(ISS, "", OwnerMapping::Auto),
            Err(AuthError::BadOwnerClaim)
        );
        let long = "x".repeat(OWNER_CLAIM_BYTES_MAX + 1);
        assert_eq!(
            owner_for(ISS, &long, OwnerMapping::Auto),
            Err(AuthError::BadOwnerClaim)
        );
        let max = "x|".repeat(OWNER_CLAIM_BYTES_MAX / 2);
        assert!(owner_for(ISS, &max, OwnerMapping::Auto).is_ok());
    }

    /// The namespace and derivation are part of the contract (docs/API.md):
    /// this pins one value, computed independently (Python's `uuid` and
    /// `hashlib` over the documented name), so that a change to either
    /// cannot go unnoticed.
    #[test]
    fn the_derivation_is_stable() {
        let pinned = derived("https://tenant.example.auth0.com/", "auth0|6543abc");
        assert_eq!(pinned.as_str(), "idp.722c0e88ad38587fb7e51ddfa2774026");
    }
}
