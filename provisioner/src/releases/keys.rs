//! Signing keys and root metadata of the release channels.
//!
//! Keys are ed25519, kept as PKCS#8 PEM files (`openssl pkey -in FILE
//! -noout -text` reads them). tough reads ed25519 keys only as raw DER, so
//! [`PemKey`] converts on the way in.
//!
//! Roles and where their keys live:
//! - root: N keys (default 3), threshold T (default 2), in an offline
//!   directory ops keep away from the server; used only to rotate keys.
//! - targets: one key in a file given to `publish`/`promote`
//!   (`--targets-key`), so it need not live on the server either.
//! - snapshot, timestamp: one key each in `DATA_DIR/releases/keys/`, so
//!   `levee serve` can re-sign them before they expire.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use chrono::{DateTime, Utc};
use tough::key_source::KeySource;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::schema::{Role, RoleKeys, RoleType, Root, Signature, Signed};
use tough::sign::Sign;

use super::ReleaseError;

/// TUF specification version written into every role.
pub const SPEC_VERSION: &str = "1.0.0";

/// A private key in a PKCS#8 PEM file.
#[derive(Debug, Clone)]
pub struct PemKey {
    pub path: PathBuf,
}

impl PemKey {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PemKey { path: path.into() }
    }

    /// Reads the key. The error names the file and what to do.
    pub fn load(&self) -> Result<Box<dyn Sign>, ReleaseError> {
        let text = std::fs::read(&self.path).map_err(|e| ReleaseError::Key {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let der = pem::parse(&text).map(|p| p.into_contents()).unwrap_or(text);
        let pair = tough::sign::parse_keypair(&der).map_err(|e| ReleaseError::Key {
            path: self.path.clone(),
            reason: format!("not an ed25519/ECDSA/RSA PKCS#8 key: {e}"),
        })?;
        Ok(Box::new(pair))
    }

    /// The TUF key id of the public half.
    pub fn key_id(&self) -> Result<Decoded<Hex>, ReleaseError> {
        key_id(&self.load()?.tuf_key())
    }
}

#[async_trait]
impl KeySource for PemKey {
    async fn as_sign(
        &self,
    ) -> Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(self.load()?)
    }

    async fn write(
        &self,
        _value: &str,
        _key_id_hex: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Err("levee never rewrites a key file through tough".into())
    }
}

pub fn key_id(key: &Key) -> Result<Decoded<Hex>, ReleaseError> {
    key.key_id()
        .map_err(|e| ReleaseError::Tuf(format!("cannot compute a key id: {e}")))
}

/// Makes a new ed25519 key at `path` (mode 0600, never overwriting).
pub fn generate(path: &Path) -> Result<PemKey, ReleaseError> {
    let io = |e: std::io::Error| ReleaseError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|e| ReleaseError::Tuf(format!("key generation failed: {e}")))?;
    // Make sure what we write reads back with the public key we expect.
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map(|k| k.public_key().as_ref().len())
        .map_err(|e| ReleaseError::Tuf(format!("generated key does not parse: {e}")))?;
    let text = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    write_private_new(path, text.as_bytes()).map_err(io)?;
    Ok(PemKey::new(path))
}

/// Signs `role` with each key, in canonical JSON as TUF requires.
pub async fn sign_role<T: Role + Clone>(
    role: &T,
    keys: &[Box<dyn Sign>],
) -> Result<Signed<T>, ReleaseError> {
    let data = role
        .canonical_form()
        .map_err(|e| ReleaseError::Tuf(format!("cannot serialise {}: {e}", T::TYPE)))?;
    let rng = SystemRandom::new();
    let mut signatures = Vec::new();
    for key in keys {
        let sig = key
            .sign(&data, &rng)
            .await
            .map_err(|e| ReleaseError::Tuf(format!("signing {} failed: {e}", T::TYPE)))?;
        signatures.push(Signature {
            keyid: key_id(&key.tuf_key())?,
            sig: sig.into(),
        });
    }
    Ok(Signed {
        signed: role.clone(),
        signatures,
    })
}

/// The public keys of each role.
pub struct RoleSet {
    pub root: Vec<Key>,
    pub root_threshold: u64,
    pub targets: Key,
    pub snapshot: Key,
    pub timestamp: Key,
}

impl RoleSet {
    /// The keys `root` names for `role` (the first one for single-key roles).
    pub fn of(root: &Root) -> Result<RoleSet, ReleaseError> {
        let keys = |role: RoleType| -> Vec<Key> { root.keys(role).cloned().collect() };
        let one = |role: RoleType| {
            keys(role)
                .into_iter()
                .next()
                .ok_or_else(|| ReleaseError::Tuf(format!("root names no {role} key")))
        };
        Ok(RoleSet {
            root: keys(RoleType::Root),
            root_threshold: root
                .roles
                .get(&RoleType::Root)
                .map(|r| r.threshold.get())
                .unwrap_or(1),
            targets: one(RoleType::Targets)?,
            snapshot: one(RoleType::Snapshot)?,
            timestamp: one(RoleType::Timestamp)?,
        })
    }
}

/// Builds root metadata naming `set`'s keys (not yet signed).
pub fn build_root(
    set: &RoleSet,
    version: u64,
    expires: DateTime<Utc>,
) -> Result<Root, ReleaseError> {
    if set.root_threshold == 0 || set.root_threshold as usize > set.root.len() {
        return Err(ReleaseError::Usage(format!(
            "a root threshold of {} needs 1 to {} root keys",
            set.root_threshold,
            set.root.len()
        )));
    }
    let mut keys = HashMap::new();
    let mut roles = HashMap::new();
    let mut add = |role: RoleType, role_keys: &[Key], threshold: u64| {
        let mut keyids = Vec::new();
        for k in role_keys {
            let id = key_id(k)?;
            keyids.push(id.clone());
            keys.insert(id, k.clone());
        }
        roles.insert(
            role,
            RoleKeys {
                keyids,
                threshold: nonzero(threshold)?,
                _extra: HashMap::new(),
            },
        );
        Ok::<_, ReleaseError>(())
    };
    add(RoleType::Root, &set.root, set.root_threshold)?;
    add(RoleType::Targets, std::slice::from_ref(&set.targets), 1)?;
    add(RoleType::Snapshot, std::slice::from_ref(&set.snapshot), 1)?;
    add(RoleType::Timestamp, std::slice::from_ref(&set.timestamp), 1)?;
    Ok(Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version: nonzero(version)?,
        expires,
        keys,
        roles,
        _extra: HashMap::new(),
    })
}

pub fn nonzero(n: u64) -> Result<NonZeroU64, ReleaseError> {
    NonZeroU64::new(n).ok_or_else(|| ReleaseError::Tuf("a version or threshold of 0".into()))
}

/// Checks `signed` carries a threshold of valid `T::TYPE` signatures
/// under `root` (tough's own check, as the client does it).
pub fn verify<T: Role + serde::Serialize>(
    root: &Root,
    signed: &Signed<T>,
) -> Result<(), ReleaseError> {
    root.verify_role(signed)
        .map_err(|e| ReleaseError::Tuf(format!("{} signatures do not verify: {e}", T::TYPE)))
}

/// Root keys found in an offline directory (`root-*.pem`), sorted by name.
pub fn root_keys_in(dir: &Path) -> Result<Vec<PemKey>, ReleaseError> {
    let rd = std::fs::read_dir(dir).map_err(|e| ReleaseError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("root-") && n.ends_with(".pem"))
        })
        .collect();
    paths.sort();
    Ok(paths.into_iter().map(PemKey::new).collect())
}

/// Creates `path` with mode 0600; refuses to replace an existing file (a
/// key overwritten by mistake could not be recovered).
fn write_private_new(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}
