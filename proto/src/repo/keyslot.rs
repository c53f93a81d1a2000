//! Key slots: the master key wrapped once per secret. Each slot is a small
//! JSON file `keys/<id>`; a password slot derives its wrapping key with
//! Argon2id (memory-hard), so a stolen disk does not give cheap guesses.
//! The appliance's own secret and the customer's recovery secret are
//! separate slots, so either can be removed without re-encrypting data.

use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::crypto::{self, CryptoError, MasterKey};
use super::file_formats::NONCE_LEN;

#[derive(Debug, thiserror::Error)]
pub enum KeySlotError {
    #[error("key slot is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported key slot: {0}")]
    Unsupported(String),
    #[error("invalid KDF parameters: {0}")]
    Kdf(String),
    #[error("wrong password for this key slot")]
    WrongPassword,
    #[error("key slot is damaged: {0}")]
    Damaged(&'static str),
}

/// Argon2id cost parameters, stored in each slot so they can grow later.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    pub algorithm: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    #[serde(with = "hexbytes")]
    pub salt: Vec<u8>,
}

impl KdfParams {
    /// 64 MiB, 3 passes: about a quarter second on the appliance.
    pub fn new_default() -> Self {
        Self::with_memory(64 * 1024)
    }
    pub fn with_memory(memory_kib: u32) -> Self {
        let mut salt = vec![0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        Self {
            algorithm: "argon2id".into(),
            memory_kib,
            iterations: 3,
            parallelism: 1,
            salt,
        }
    }

    fn derive(&self, password: &[u8]) -> Result<[u8; 32], KeySlotError> {
        if self.algorithm != "argon2id" {
            return Err(KeySlotError::Unsupported(format!("kdf {}", self.algorithm)));
        }
        // Refuse absurd costs from a tampered slot rather than allocating them.
        if self.memory_kib > 4 * 1024 * 1024 || self.iterations > 100 || self.parallelism > 64 {
            return Err(KeySlotError::Kdf("cost out of range".into()));
        }
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| KeySlotError::Kdf(e.to_string()))?;
        let mut out = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(password, &self.salt, &mut out)
            .map_err(|e| KeySlotError::Kdf(e.to_string()))?;
        Ok(out)
    }
}

/// One wrapped copy of the master key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySlot {
    pub version: u8,
    /// What the secret is: "password", "appliance" or "recovery".
    pub kind: String,
    pub label: String,
    /// Unix seconds.
    pub created: i64,
    pub kdf: KdfParams,
    /// `nonce || AES-256-GCM(kek, master key) || tag`.
    #[serde(with = "hexbytes")]
    pub wrapped: Vec<u8>,
}

impl KeySlot {
    pub fn create(
        master: &MasterKey,
        password: &[u8],
        kdf: KdfParams,
        kind: &str,
        label: &str,
        created: i64,
    ) -> Result<Self, KeySlotError> {
        let kek = kdf.derive(password)?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let wrapped = crypto::encrypt_with_nonce(&kek, &nonce, &master.to_bytes());
        Ok(Self {
            version: 1,
            kind: kind.into(),
            label: label.into(),
            created,
            kdf,
            wrapped,
        })
    }

    pub fn open(&self, password: &[u8]) -> Result<MasterKey, KeySlotError> {
        if self.version != 1 {
            return Err(KeySlotError::Unsupported(format!(
                "key slot version {}",
                self.version
            )));
        }
        let kek = self.kdf.derive(password)?;
        let plain = crypto::decrypt(&kek, &self.wrapped).map_err(|e| match e {
            CryptoError::Auth => KeySlotError::WrongPassword,
            _ => KeySlotError::Damaged("wrapped key too short"),
        })?;
        let bytes: [u8; 64] = plain
            .as_slice()
            .try_into()
            .map_err(|_| KeySlotError::Damaged("wrapped key has wrong length"))?;
        Ok(MasterKey::from_bytes(&bytes))
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, KeySlotError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain structs of strings and numbers cannot fail.
        serde_json::to_vec_pretty(self).expect("key slot serialises")
    }
}

mod hexbytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap() {
        let m = MasterKey::generate();
        let slot = KeySlot::create(
            &m,
            b"pw",
            KdfParams::with_memory(1024),
            "password",
            "test",
            0,
        )
        .unwrap();
        let back = KeySlot::parse(&slot.to_bytes()).unwrap();
        assert_eq!(back.open(b"pw").unwrap().to_bytes(), m.to_bytes());
        assert!(matches!(
            back.open(b"nope"),
            Err(KeySlotError::WrongPassword)
        ));
    }
}
