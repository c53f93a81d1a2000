//! Secrets at rest: customer passwords and offsite credentials are stored
//! encrypted with the server key (`DATA_DIR/server.key`, AES-256-GCM).
//!
//! Each secret is sealed with a fresh random nonce and, as associated data,
//! what it belongs to: the customer, the field (`sources/<name>/password`,
//! `offsite/<name>/secret_access_key`) and where it is used (the share or
//! the store's URL and endpoint). Whoever can write the database cannot
//! move a ciphertext into another customer's row, another field, or point
//! the field at another destination: it no longer decrypts, and the
//! configuration is refused whole. The key never leaves the data directory;
//! with PostgreSQL, every machine that runs `levee` against the database
//! needs the same key.
//!
//! Format 1 (`sealed:v1:`, bound to the customer only) is re-sealed as
//! format 2 by [`reseal_store`], which `levee serve` and `levee customer`
//! run before anything reads a secret; format 1 is not opened otherwise.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use levee_proto::config::{CustomerConfig, Secret};
use rand::RngCore;

/// What `show` prints instead of a secret.
pub const REDACTED: &str = "********";

/// Prefix of a sealed secret: format version, then hex(nonce || ciphertext).
const SEALED_PREFIX: &str = "sealed:v2:";
/// Format 1: associated data was the customer name only.
const SEALED_V1_PREFIX: &str = "sealed:v1:";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("server key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("server key {0} is not 32 bytes: restore it from backup (stored secrets cannot be read without it)")]
    BadKey(PathBuf),
    #[error("secret {0} cannot be decrypted: wrong server key or damaged data")]
    Decrypt(String),
}

/// The server key.
pub struct ServerKey {
    cipher: Aes256Gcm,
}

impl ServerKey {
    /// Reads `DATA_DIR/server.key`, creating it (mode 0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<ServerKey, SecretError> {
        let path = data_dir.join("server.key");
        let io = |source| SecretError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let mut key = [0u8; 32];
        // create_new: two commands starting at once must not both write a key.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut f) => {
                rand::rngs::OsRng.fill_bytes(&mut key);
                f.write_all(&key).and_then(|()| f.sync_all()).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let bytes = std::fs::read(&path).map_err(io)?;
                key = bytes
                    .try_into()
                    .map_err(|_| SecretError::BadKey(path.clone()))?;
            }
            Err(e) => return Err(io(e)),
        }
        Ok(ServerKey {
            cipher: Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(&key)),
        })
    }

    fn seal(&self, plain: &str, aad: &str) -> String {
        self.seal_as(SEALED_PREFIX, plain, aad)
    }

    fn seal_as(&self, prefix: &str, plain: &str, aad: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plain.as_bytes(),
            aad: aad.as_bytes(),
        };
        // Encryption with a valid key and in-memory buffers cannot fail.
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        format!("{prefix}{}{}", hex::encode(nonce), hex::encode(ct))
    }

    fn open(&self, sealed: &str, aad: &str, what: &str) -> Result<String, SecretError> {
        self.open_as(SEALED_PREFIX, sealed, aad, what)
    }

    fn open_as(
        &self,
        prefix: &str,
        sealed: &str,
        aad: &str,
        what: &str,
    ) -> Result<String, SecretError> {
        let bad = || SecretError::Decrypt(what.to_string());
        let raw = sealed
            .strip_prefix(prefix)
            .and_then(|h| hex::decode(h).ok())
            .filter(|b| b.len() > 12)
            .ok_or_else(bad)?;
        let (nonce, ct) = raw.split_at(12);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| bad())?;
        String::from_utf8(plain).map_err(|_| bad())
    }

    /// Seals one secret (`aad`: what it belongs to; the same must be given
    /// to open it).
    pub fn seal_secret(&self, plain: &str, aad: &str) -> String {
        self.seal(plain, aad)
    }

    /// Opens a secret sealed by [`ServerKey::seal_secret`] with `aad`;
    /// `what` names it in the error.
    pub fn open_secret(&self, sealed: &str, aad: &str, what: &str) -> Result<String, SecretError> {
        self.open(sealed, aad, what)
    }

    /// The configuration with every secret encrypted, as stored.
    pub fn seal_config(&self, config: &CustomerConfig) -> CustomerConfig {
        let mut c = config.clone();
        for (_, aad, s) in bound_secrets_mut(&mut c) {
            s.0 = self.seal(&s.0, &aad);
        }
        c
    }

    /// The stored configuration with its secrets decrypted (for the agent
    /// and for comparing on apply; never for printing).
    pub fn open_config(&self, sealed: &CustomerConfig) -> Result<CustomerConfig, SecretError> {
        let mut c = sealed.clone();
        let customer = c.customer.clone();
        for (path, aad, s) in bound_secrets_mut(&mut c) {
            s.0 = self.open(&s.0, &aad, &format!("{customer}: {path}"))?;
        }
        Ok(c)
    }

    /// The configuration with its format-1 secrets re-sealed as format 2,
    /// or `None` if it has none.
    pub fn reseal_v1(
        &self,
        sealed: &CustomerConfig,
    ) -> Result<Option<CustomerConfig>, SecretError> {
        let mut c = sealed.clone();
        let customer = c.customer.clone();
        let mut changed = false;
        for (path, aad, s) in bound_secrets_mut(&mut c) {
            if s.0.starts_with(SEALED_V1_PREFIX) {
                let plain = self.open_as(
                    SEALED_V1_PREFIX,
                    &s.0,
                    &customer,
                    &format!("{customer}: {path}"),
                )?;
                s.0 = self.seal(&plain, &aad);
                changed = true;
            }
        }
        Ok(changed.then_some(c))
    }
}

/// Re-seals every customer's format-1 secrets as format 2 (bound to
/// customer, field and destination); returns how many customers changed.
/// Idempotent: run at every start of `levee serve` and by `levee customer`.
pub fn reseal_store(store: &dyn crate::store::Store, key: &ServerKey) -> anyhow::Result<usize> {
    let mut n = 0;
    for c in store.customers()? {
        if let Some(resealed) = key.reseal_v1(&c.config)? {
            store.put_customer(&resealed)?;
            tracing::info!(customer = %c.name, "secrets re-sealed bound to customer, field and destination");
            n += 1;
        }
    }
    Ok(n)
}

/// Every secret with its path and its associated data (see the module
/// docs): customer, field, destination.
fn bound_secrets_mut(c: &mut CustomerConfig) -> Vec<(String, String, &mut Secret)> {
    let customer = c.customer.clone();
    let aad = |field: String, dest: &str| format!("levee-secret-v2\0{customer}\0{field}\0{dest}");
    let mut out = Vec::new();
    for (i, s) in c.sources.iter_mut().enumerate() {
        let dest = s.smb.clone().or_else(|| s.path.clone()).unwrap_or_default();
        let field = format!("sources/{}/password", s.name);
        if let Some(p) = s.password.as_mut() {
            out.push((format!("sources[{i}].password"), aad(field, &dest), p));
        }
    }
    for (i, o) in c.offsite.iter_mut().enumerate() {
        // One endpoint (every S3 target) binds exactly as before `urls`.
        let dest = format!(
            "{}\0{}",
            o.endpoints().join(" "),
            o.endpoint.as_deref().unwrap_or("")
        );
        let field = format!("offsite/{}/secret_access_key", o.name);
        if let Some(k) = o.secret_access_key.as_mut() {
            out.push((
                format!("offsite[{i}].secret_access_key"),
                aad(field, &dest),
                k,
            ));
        }
    }
    out
}

/// The configuration with every secret replaced by [`REDACTED`].
pub fn redact(config: &CustomerConfig) -> CustomerConfig {
    let mut c = config.clone();
    for (_, s) in secrets_mut(&mut c) {
        s.0 = REDACTED.into();
    }
    c
}

/// Every secret of a configuration, with its path (`sources[0].password`).
/// The one list of secret fields: add new ones here.
pub fn secrets_mut(c: &mut CustomerConfig) -> Vec<(String, &mut Secret)> {
    let mut out = Vec::new();
    for (i, s) in c.sources.iter_mut().enumerate() {
        if let Some(p) = s.password.as_mut() {
            out.push((format!("sources[{i}].password"), p));
        }
    }
    for (i, o) in c.offsite.iter_mut().enumerate() {
        if let Some(k) = o.secret_access_key.as_mut() {
            out.push((format!("offsite[{i}].secret_access_key"), k));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    fn two_fields() -> CustomerConfig {
        serde_json::from_value(serde_json::json!({
            "customer": "acme",
            "sources": [
                {"name": "f", "smb": "smb://u@h/s", "password": "hunter2"},
                {"name": "g", "smb": "smb://u@h/t", "password": "other"}
            ],
            "offsite": [{"name": "o", "url": "s3://b/p", "access_key_id": "A", "secret_access_key": "S3CRET"}],
        }))
        .unwrap()
    }

    #[test]
    fn a_secret_swapped_into_another_field_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let key = ServerKey::load_or_create(dir.path()).unwrap();
        let sealed = key.seal_config(&two_fields());
        assert_eq!(key.open_config(&sealed).unwrap(), two_fields());
        let mut swapped = sealed.clone();
        swapped.sources[1].password = swapped.sources[0].password.clone();
        assert!(key.open_config(&swapped).is_err());
        let mut swapped = sealed.clone();
        swapped.offsite[0].secret_access_key = swapped.sources[0].password.clone();
        assert!(key.open_config(&swapped).is_err());
    }

    #[test]
    fn format_1_secrets_are_resealed_and_not_opened_before() {
        let dir = tempfile::tempdir().unwrap();
        let key = ServerKey::load_or_create(dir.path()).unwrap();
        // A configuration as format 1 stored it.
        let mut v1 = two_fields();
        for (_, _, s) in bound_secrets_mut(&mut v1) {
            s.0 = key.seal_as(SEALED_V1_PREFIX, &s.0, "acme");
        }
        assert!(key.open_config(&v1).is_err(), "format 1 is only re-sealed");
        let v2 = key.reseal_v1(&v1).unwrap().expect("changed");
        assert_eq!(key.open_config(&v2).unwrap(), two_fields());
        assert_eq!(key.reseal_v1(&v2).unwrap(), None, "idempotent");
        // Through a store, as `levee serve` runs it at start.
        let store = crate::store::SqliteStore::open(&dir.path().join("db")).unwrap();
        use crate::store::CustomerStore;
        store.put_customer(&v1).unwrap();
        assert_eq!(reseal_store(&store, &key).unwrap(), 1);
        assert_eq!(reseal_store(&store, &key).unwrap(), 0);
        let stored = store.customer("acme").unwrap().unwrap();
        assert_eq!(key.open_config(&stored.config).unwrap(), two_fields());
    }

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config() -> CustomerConfig {
        serde_json::from_value(serde_json::json!({
            "customer": "acme",
            "sources": [{"name": "f", "smb": "smb://u@h/s", "password": "hunter2"}],
        }))
        .unwrap()
    }

    #[test]
    fn secrets_round_trip_and_are_bound_to_the_customer() {
        let dir = tempfile::tempdir().unwrap();
        let key = ServerKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = key.seal_config(&config());
        let text = serde_json::to_string(&sealed).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        // The same key from disk opens it.
        let again = ServerKey::load_or_create(dir.path()).unwrap();
        assert_eq!(again.open_config(&sealed).unwrap(), config());
        // Moved to another customer: refused.
        let mut moved = sealed.clone();
        moved.customer = "other".into();
        assert!(again.open_config(&moved).is_err());
        // Pointed at another share: refused.
        let mut moved = sealed.clone();
        moved.sources[0].smb = Some("smb://u@evil/s".into());
        assert!(again.open_config(&moved).is_err());
        assert_eq!(
            redact(&sealed).sources[0].password.as_ref().unwrap().0,
            REDACTED
        );
    }
}
