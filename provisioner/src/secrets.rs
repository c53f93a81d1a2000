//! Secrets at rest: customer passwords and offsite credentials are stored
//! encrypted with the server key (`DATA_DIR/server.key`, AES-256-GCM).
//!
//! Each secret is sealed with a fresh random nonce and the customer name as
//! associated data, so a ciphertext copied into another customer's row does
//! not decrypt. The key never leaves the data directory; with PostgreSQL,
//! every machine that runs `levee` against the database needs the same key.

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
const SEALED_PREFIX: &str = "sealed:v1:";

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
        format!("{SEALED_PREFIX}{}{}", hex::encode(nonce), hex::encode(ct))
    }

    fn open(&self, sealed: &str, aad: &str, what: &str) -> Result<String, SecretError> {
        let bad = || SecretError::Decrypt(what.to_string());
        let raw = sealed
            .strip_prefix(SEALED_PREFIX)
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
        let aad = c.customer.clone();
        for (_, s) in secrets_mut(&mut c) {
            s.0 = self.seal(&s.0, &aad);
        }
        c
    }

    /// The stored configuration with its secrets decrypted (for the agent
    /// and for comparing on apply; never for printing).
    pub fn open_config(&self, sealed: &CustomerConfig) -> Result<CustomerConfig, SecretError> {
        let mut c = sealed.clone();
        let aad = c.customer.clone();
        for (path, s) in secrets_mut(&mut c) {
            s.0 = self.open(&s.0, &aad, &format!("{aad}: {path}"))?;
        }
        Ok(c)
    }
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
        assert_eq!(
            redact(&sealed).sources[0].password.as_ref().unwrap().0,
            REDACTED
        );
    }
}
