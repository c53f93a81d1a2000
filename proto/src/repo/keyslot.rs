//! Key slots: the master key wrapped once per secret. Each slot is a small
//! JSON file `keys/<id>`; a password slot derives its wrapping key with
//! Argon2id (memory-hard), so a stolen disk does not give cheap guesses.
//! The appliance's own secret and the customer's recovery secret are
//! separate slots, so either can be removed without re-encrypting data
//! (removing a slot does not revoke a secret: see `docs/REPOSITORY.md`).
//!
//! Version 2 slots authenticate their metadata: kind, label, creation time,
//! KDF parameters and the repository format are the associated data of the
//! wrapping, so editing any of them makes the slot fail to open. Version 1
//! slots (no associated data) are still opened.

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
    #[error("secret too short: {0} bytes, at least {MIN_SECRET_LEN} required")]
    SecretTooShort(usize),
    #[error("KDF cost too low: {0} (at least {MIN_MEMORY_KIB} KiB and {MIN_ITERATIONS} pass)")]
    CostTooLow(String),
}

/// Shortest secret a new slot accepts (NIST SP 800-63B's floor for
/// memorised secrets; appliance and recovery secrets are random and longer).
pub const MIN_SECRET_LEN: usize = 8;
/// Lowest Argon2id memory a new slot accepts. The default is 64 MiB; the
/// floor only refuses settings that make the KDF pointless (tests use 1 MiB
/// to stay fast).
pub const MIN_MEMORY_KIB: u32 = 1024;
/// Fewest Argon2id passes a new slot accepts.
pub const MIN_ITERATIONS: u32 = 1;
/// Current slot version: metadata authenticated.
const SLOT_VERSION: u8 = 2;

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

    /// Refuses costs below the floors (for new slots; old slots still open).
    pub fn check_floor(&self) -> Result<(), KeySlotError> {
        if self.memory_kib < MIN_MEMORY_KIB || self.iterations < MIN_ITERATIONS {
            return Err(KeySlotError::CostTooLow(format!(
                "{} KiB, {} passes",
                self.memory_kib, self.iterations
            )));
        }
        if self.salt.len() < 16 {
            return Err(KeySlotError::CostTooLow(
                "salt shorter than 16 bytes".into(),
            ));
        }
        Ok(())
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
    /// Repository format the slot belongs to (version 2 slots; 1 if absent),
    /// authenticated, so a slot cannot be paired with a downgraded config.
    #[serde(default = "format_1", skip_serializing_if = "is_format_1")]
    pub format: u8,
    /// `nonce || AES-256-GCM(kek, master key) || tag`, with the slot's
    /// metadata as associated data (version 2).
    #[serde(with = "hexbytes")]
    pub wrapped: Vec<u8>,
    /// A recovery slot's secret, sealed to the customer's recovery key
    /// (`crate::recovery`), so that a copy of the repository and the paper
    /// key open it on any machine. Outside the authenticated metadata: the
    /// sealing is itself authenticated (AES-GCM), and a slot whose sealed
    /// secret was swapped opens nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_secret: Option<String>,
}

fn format_1() -> u8 {
    1
}

fn is_format_1(f: &u8) -> bool {
    *f == 1
}

/// What a version 2 slot authenticates (everything but the wrapped key).
#[derive(Serialize)]
struct SlotMeta<'a> {
    purpose: &'static str,
    version: u8,
    kind: &'a str,
    label: &'a str,
    created: i64,
    kdf: &'a KdfParams,
    format: u8,
}

/// The kinds of secret a slot may hold.
pub const SLOT_KINDS: [&str; 3] = ["password", "appliance", "recovery"];

impl KeySlot {
    /// Wraps `master` for `password`; refuses short secrets, unknown kinds
    /// and KDF costs below the floors.
    pub fn create(
        master: &MasterKey,
        password: &[u8],
        kdf: KdfParams,
        kind: &str,
        label: &str,
        created: i64,
        format: u8,
    ) -> Result<Self, KeySlotError> {
        if password.len() < MIN_SECRET_LEN {
            return Err(KeySlotError::SecretTooShort(password.len()));
        }
        if !SLOT_KINDS.contains(&kind) {
            return Err(KeySlotError::Unsupported(format!(
                "kind {kind:?} (use password, appliance or recovery)"
            )));
        }
        kdf.check_floor()?;
        let kek = kdf.derive(password)?;
        let mut slot = Self {
            version: SLOT_VERSION,
            kind: kind.into(),
            label: label.into(),
            created,
            kdf,
            format,
            wrapped: Vec::new(),
            sealed_secret: None,
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        slot.wrapped =
            crypto::encrypt_with_nonce_aad(&kek, &nonce, &master.to_bytes(), &slot.aad());
        Ok(slot)
    }

    /// The associated data of a version 2 slot's wrapping.
    fn aad(&self) -> Vec<u8> {
        serde_json::to_vec(&SlotMeta {
            purpose: "levee key slot",
            version: self.version,
            kind: &self.kind,
            label: &self.label,
            created: self.created,
            kdf: &self.kdf,
            format: self.format,
        })
        .expect("slot metadata serialises")
    }

    /// Whether the slot's kind, label and parameters are authenticated.
    pub fn authenticated(&self) -> bool {
        self.version >= 2
    }

    pub fn open(&self, password: &[u8]) -> Result<MasterKey, KeySlotError> {
        let aad = match self.version {
            1 => Vec::new(),
            2 => self.aad(),
            v => return Err(KeySlotError::Unsupported(format!("key slot version {v}"))),
        };
        if self.version == 1 && self.format != 1 {
            return Err(KeySlotError::Damaged(
                "version 1 slot naming a later format",
            ));
        }
        let kek = self.kdf.derive(password)?;
        let plain = crypto::decrypt_aad(&kek, &self.wrapped, &aad).map_err(|e| match e {
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
            b"password",
            KdfParams::with_memory(1024),
            "password",
            "test",
            0,
            2,
        )
        .unwrap();
        let back = KeySlot::parse(&slot.to_bytes()).unwrap();
        assert_eq!(back.open(b"password").unwrap().to_bytes(), m.to_bytes());
        assert!(matches!(
            back.open(b"nope"),
            Err(KeySlotError::WrongPassword)
        ));
    }

    /// Issue 12: kind, label and format are authenticated; an edited slot
    /// does not open.
    #[test]
    fn r12_slot_metadata_is_authenticated() {
        let m = MasterKey::generate();
        let slot = KeySlot::create(
            &m,
            b"password",
            KdfParams::with_memory(1024),
            "recovery",
            "safe",
            5,
            2,
        )
        .unwrap();
        for edit in [
            |s: &mut KeySlot| s.kind = "appliance".into(),
            |s: &mut KeySlot| s.label = "other".into(),
            |s: &mut KeySlot| s.created = 6,
            |s: &mut KeySlot| s.format = 1,
        ] {
            let mut s = KeySlot::parse(&slot.to_bytes()).unwrap();
            edit(&mut s);
            assert!(s.open(b"password").is_err(), "{s:?} opened");
        }
    }

    /// Issue 12: empty and short secrets and toy KDF costs are refused.
    #[test]
    fn r12_secret_and_kdf_floors() {
        let m = MasterKey::generate();
        let mk = |pw: &[u8], kib| {
            KeySlot::create(&m, pw, KdfParams::with_memory(kib), "password", "", 0, 2)
        };
        assert!(matches!(
            mk(b"", 1024),
            Err(KeySlotError::SecretTooShort(0))
        ));
        assert!(matches!(
            mk(b"1234567", 1024),
            Err(KeySlotError::SecretTooShort(7))
        ));
        assert!(matches!(
            mk(b"password", 8),
            Err(KeySlotError::CostTooLow(_))
        ));
        assert!(mk(b"password", 1024).is_ok());
    }
}
