//! `/api/v1/recovery` (mutual TLS): how a replacement appliance gets the
//! lost one's repository secret without the server being able to read it
//! (issue 14).
//!
//! - Every appliance `POST`s a [`RecoveryUpload`]: its own X25519 public
//!   key (the private half never leaves its state directory) and, once its
//!   repository has a recovery slot, the repository id and that slot's
//!   secret as sealed to the customer's paper key. The server can open
//!   neither.
//! - `levee appliance replace OLD --with NEW --recovery-key FILE` (where
//!   ops holds the paper key) opens OLD's sealed secret and seals it again
//!   to NEW's public key under [`grant_context`] (bound to the customer
//!   and repository), and stores that grant for NEW.
//! - NEW `GET`s its [`RecoveryAnswer`]: only its own grant, which only its
//!   own private key opens; the secret opens the old repository's recovery
//!   slot, fetched from an offsite target.

use serde::{Deserialize, Serialize};

use crate::recovery::{check_sealed, RecoveryError, RecoveryPublicKey};

/// `POST` a [`RecoveryUpload`], `GET` a [`RecoveryAnswer`].
pub const PATH: &str = "/api/v1/recovery";
/// Largest accepted body (a sealed 64-byte secret is ~250 characters).
pub const MAX_BODY: usize = 8 * 1024;
/// Longest accepted sealed secret, in characters.
pub const MAX_SEALED: usize = 1024;

/// The context a grant is sealed under: a grant for one repository cannot
/// be passed off as one for another.
pub fn grant_context(customer: &str, repository: &str) -> String {
    format!("levee recovery grant v1 {customer}/{repository}")
}

/// What an appliance publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryUpload {
    /// The appliance's own public key, `x25519:<hex>`.
    pub appliance_key: String,
    /// Its repository's recovery slot, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<SealedSlot>,
}

/// A repository and its recovery slot's secret, sealed to the customer's
/// paper key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedSlot {
    pub id: String,
    pub sealed: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UploadError {
    #[error("not a recovery upload: {0}")]
    Json(String),
    #[error("appliance_key: {0}")]
    Key(RecoveryError),
    #[error("repository id {0:?}: 16 to 64 lowercase hex digits")]
    Repository(String),
    #[error("repository sealed secret: {0}")]
    Sealed(RecoveryError),
}

impl RecoveryUpload {
    /// Parses and checks a body from outside: the key is a usable X25519
    /// key (not a low-order point), the repository id is hex, the sealed
    /// secret is shaped like one.
    pub fn parse(body: &[u8]) -> Result<(RecoveryUpload, RecoveryPublicKey), UploadError> {
        let u: RecoveryUpload =
            serde_json::from_slice(body).map_err(|e| UploadError::Json(e.to_string()))?;
        let key = RecoveryPublicKey::parse(&u.appliance_key).map_err(UploadError::Key)?;
        if let Some(r) = &u.repository {
            let hex_ok = (16..=64).contains(&r.id.len())
                && r.id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if !hex_ok {
                return Err(UploadError::Repository(r.id.chars().take(80).collect()));
            }
            check_sealed(&r.sealed, MAX_SEALED).map_err(UploadError::Sealed)?;
        }
        Ok((u, key))
    }
}

/// The answer to `GET`: this appliance's grant, if ops made one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<RecoveryGrant>,
    /// Set while this appliance replaced one whose repository it should
    /// take over but ops has not re-wrapped the secret yet: the agent
    /// waits instead of starting a new repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// A lost appliance's repository secret, sealed to this appliance's key
/// under [`grant_context`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryGrant {
    pub customer: String,
    pub repository: String,
    pub sealed: String,
    /// The appliance id whose repository this is (for logs).
    pub from_appliance: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recovery::{seal, RecoveryPrivateKey, SLOT_CONTEXT};

    #[test]
    fn uploads_are_checked() {
        let k = RecoveryPrivateKey::generate().public();
        let sealed = seal(&k, b"x", SLOT_CONTEXT).unwrap();
        let ok = serde_json::json!({"appliance_key": k.to_string(),
            "repository": {"id": "ab".repeat(32), "sealed": sealed}});
        let (u, key) = RecoveryUpload::parse(ok.to_string().as_bytes()).unwrap();
        assert_eq!((key, u.repository.unwrap().id.len()), (k, 64));
        let weak = format!("x25519:{}", "00".repeat(32));
        for (bad, what) in [
            (serde_json::json!({"appliance_key": weak}), "low-order"),
            (serde_json::json!({"appliance_key": "x25519:12"}), "x25519:"),
            (
                serde_json::json!({"appliance_key": k.to_string(), "repository": {"id": "../x", "sealed": sealed}}),
                "repository id",
            ),
            (
                serde_json::json!({"appliance_key": k.to_string(), "repository": {"id": "ab".repeat(32), "sealed": "nope"}}),
                "sealed",
            ),
            (
                serde_json::json!({"appliance_key": k.to_string(), "other": 1}),
                "unknown field",
            ),
        ] {
            let e = RecoveryUpload::parse(bad.to_string().as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(what), "{e}");
        }
    }
}
