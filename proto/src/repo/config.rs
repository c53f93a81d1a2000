//! The repository `config` file: repository id, format, chunker parameters.
//!
//! Format 1 (older repositories): plain JSON, read as is.
//! Format 2: `"LVCF" || format u8 (2) || encrypted JSON`, encrypted under
//! the master key with the first five bytes as associated data, like
//! restic's encrypted config: whoever can write the store can neither read
//! nor change the chunker parameters or the repository id.
//!
//! Both are range-checked when parsed and when made, so a damaged or
//! hostile config is a clear error instead of a panic in the chunker or a
//! repository that silently stops deduplicating.

use serde::{Deserialize, Serialize};

use super::crypto::{Cipher, MasterKey};
use super::file_formats::{CONFIG_MAGIC, FORMAT_1, FORMAT_2};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("config is neither JSON (format 1) nor an encrypted format 2 config")]
    Unrecognised,
    #[error("config format {0} is not supported by this version of levee-agent")]
    Format(u8),
    #[error("config cannot be decrypted with this key (corrupted or replaced)")]
    Decrypt,
    #[error("config is not valid: {0}")]
    Json(String),
    #[error("config says format {0} inside a format {1} file")]
    Mismatch(u8, u8),
    #[error("chunker {0:?} is not known (format {1} uses {2:?})")]
    Chunker(String, u8, &'static str),
    #[error("chunk sizes min {min}, avg {avg}, max {max} out of range: {why}")]
    ChunkSizes {
        min: usize,
        avg: usize,
        max: usize,
        why: &'static str,
    },
}

/// Chunker of format 1: fastcdc's gear table XORed with a 64-bit seed.
pub const CHUNKER_V1: &str = "fastcdc-v2020-seeded";
/// Chunker of format 2: all 256 gear entries derived from the key.
pub const CHUNKER_V2: &str = "fastcdc-v2020-keyed-gear";
/// Pack padding of format 2: pack files grow to a Padmé length.
pub const PADDING_PADME: &str = "padme";

/// Smallest minimum chunk size: below this, index and per-blob overhead
/// outgrow the data, and deduplication across shifted data suffers.
pub const CHUNK_MIN_FLOOR: usize = 64 * 1024;
/// Rotations whose old data may still wait for `prune --rewrite`.
pub const MAX_RETIRED_KEYS: usize = 8;
/// Largest maximum chunk size: blobs must fit well inside a 16 MiB pack.
pub const CHUNK_MAX_CEILING: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoConfig {
    pub version: u8,
    pub id: String,
    pub created_ns: i64,
    pub chunker: String,
    pub chunk_min: usize,
    pub chunk_avg: usize,
    pub chunk_max: usize,
    /// How pack files are padded (format 2: "padme"; format 1: none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pack_padding: String,
    /// Master keys replaced by `key rotate` (format 2 only: the config is
    /// then encrypted under the new key, so only it reveals them), newest
    /// first. They read blobs and pack headers written before the rotation
    /// until `prune --rewrite` has re-encrypted those and no pack needs
    /// them any more; see `MasterKey::decrypt_pack_data`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_keys: Vec<RetiredKey>,
}

/// A retired master key (64 bytes, hex in the config). Debug does not
/// print it.
#[derive(Clone, PartialEq, Eq)]
pub struct RetiredKey(pub [u8; 64]);

impl std::fmt::Debug for RetiredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetiredKey(..)")
    }
}

impl Serialize for RetiredKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for RetiredKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(s).map_err(serde::de::Error::custom)?;
        let b: [u8; 64] = v
            .try_into()
            .map_err(|_| serde::de::Error::custom("a retired key is 64 bytes"))?;
        Ok(Self(b))
    }
}

impl RepoConfig {
    /// The format of a config file, from its first bytes.
    pub fn format_of(bytes: &[u8]) -> Result<u8, ConfigError> {
        if bytes.len() > 4 && bytes[..4] == CONFIG_MAGIC {
            return match bytes[4] {
                FORMAT_2 => Ok(FORMAT_2),
                v => Err(ConfigError::Format(v)),
            };
        }
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Ok(FORMAT_1),
            _ => Err(ConfigError::Unrecognised),
        }
    }

    /// The cipher objects of a repository of `format` use.
    pub fn cipher_of(format: u8) -> Cipher {
        if format >= FORMAT_2 {
            Cipher::Xaes256Gcm
        } else {
            Cipher::Aes256Gcm
        }
    }

    /// Parses and checks a config; `key` decrypts a format 2 one (its
    /// cipher must be XAES-256-GCM).
    pub fn parse(bytes: &[u8], key: &MasterKey) -> Result<Self, ConfigError> {
        let format = Self::format_of(bytes)?;
        let json = if format == FORMAT_1 {
            bytes.to_vec()
        } else {
            let key = key.clone().with_cipher(Cipher::Xaes256Gcm);
            key.decrypt_aad(&bytes[5..], &bytes[..5])
                .map_err(|_| ConfigError::Decrypt)?
        };
        let c: Self =
            serde_json::from_slice(&json).map_err(|e| ConfigError::Json(e.to_string()))?;
        if c.version != format {
            return Err(ConfigError::Mismatch(c.version, format));
        }
        c.validate()?;
        Ok(c)
    }

    /// The bytes of the `config` file (format 2: encrypted under `key`).
    pub fn to_bytes(&self, key: &MasterKey) -> Result<Vec<u8>, ConfigError> {
        self.validate()?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| ConfigError::Json(e.to_string()))?;
        if self.version == FORMAT_1 {
            return Ok(json);
        }
        let mut out = CONFIG_MAGIC.to_vec();
        out.push(self.version);
        let key = key.clone().with_cipher(Cipher::Xaes256Gcm);
        let ct = key.encrypt_aad(&json, &out);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Range checks: a known chunker for the format, and chunk sizes the
    /// chunker can use without panicking or destroying deduplication.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let want = match self.version {
            FORMAT_1 => CHUNKER_V1,
            FORMAT_2 => CHUNKER_V2,
            v => return Err(ConfigError::Format(v)),
        };
        if self.chunker != want {
            return Err(ConfigError::Chunker(
                self.chunker.clone(),
                self.version,
                want,
            ));
        }
        let (min, avg, max) = (self.chunk_min, self.chunk_avg, self.chunk_max);
        let bad = |why| ConfigError::ChunkSizes { min, avg, max, why };
        if min < CHUNK_MIN_FLOOR {
            return Err(bad("the minimum must be at least 64 KiB"));
        }
        if max > CHUNK_MAX_CEILING {
            return Err(bad("the maximum must be at most 16 MiB"));
        }
        if !(min < avg && avg < max) {
            return Err(bad("need min < avg < max"));
        }
        if !avg.is_power_of_two() {
            return Err(bad("the average must be a power of two"));
        }
        if self.version == FORMAT_1 && !self.retired_keys.is_empty() {
            // A plaintext config must never carry keys.
            return Err(ConfigError::Json(
                "retired keys in a format 1 (plaintext) config".into(),
            ));
        }
        if self.retired_keys.len() > MAX_RETIRED_KEYS {
            return Err(ConfigError::Json(format!(
                "{} retired keys (at most {MAX_RETIRED_KEYS}); run `prune --rewrite`",
                self.retired_keys.len()
            )));
        }
        if self.version >= FORMAT_2 && self.pack_padding != PADDING_PADME {
            return Err(ConfigError::Json(format!(
                "pack_padding {:?} (format 2 pads with {PADDING_PADME:?})",
                self.pack_padding
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RepoConfig {
        RepoConfig {
            version: FORMAT_2,
            id: "00".repeat(16),
            created_ns: 1,
            chunker: CHUNKER_V2.into(),
            chunk_min: 512 * 1024,
            chunk_avg: 1024 * 1024,
            chunk_max: 8 * 1024 * 1024,
            pack_padding: PADDING_PADME.into(),
            retired_keys: Vec::new(),
        }
    }

    /// Retired keys round-trip inside the encrypted config, and never
    /// show in it or in Debug output.
    #[test]
    fn r12_retired_keys_are_encrypted() {
        let k = MasterKey::generate();
        let old = MasterKey::generate().to_bytes();
        let c = RepoConfig {
            retired_keys: vec![RetiredKey(old)],
            ..sample()
        };
        let b = c.to_bytes(&k).unwrap();
        let h = hex::encode(old);
        assert!(!b.windows(8).any(|w| w == &old[..8]));
        assert!(!String::from_utf8_lossy(&b).contains(&h[..16]));
        assert!(!format!("{c:?}").contains(&h[..16]));
        assert_eq!(RepoConfig::parse(&b, &k).unwrap(), c);
        let v1 = RepoConfig {
            version: FORMAT_1,
            chunker: CHUNKER_V1.into(),
            pack_padding: String::new(),
            ..c
        };
        assert!(v1.validate().is_err());
    }

    #[test]
    fn encrypted_round_trip_and_tamper() {
        let k = MasterKey::generate();
        let b = sample().to_bytes(&k).unwrap();
        assert_eq!(&b[..5], b"LVCF\x02");
        assert!(
            !b.windows(7).any(|w| w == b"chunker"),
            "config is plaintext"
        );
        assert_eq!(RepoConfig::parse(&b, &k).unwrap(), sample());
        for i in [3, 4, 10, b.len() - 1] {
            let mut bad = b.clone();
            bad[i] ^= 1;
            assert!(RepoConfig::parse(&bad, &k).is_err(), "byte {i}");
        }
        assert_eq!(
            RepoConfig::parse(&b, &MasterKey::generate()),
            Err(ConfigError::Decrypt)
        );
        for n in 0..b.len() {
            assert!(RepoConfig::parse(&b[..n], &k).is_err());
        }
    }

    /// Issue 12: chunk_avg=1 and tiny sizes are refused, never a panic.
    #[test]
    fn r12_chunk_sizes_range_checked() {
        let k = MasterKey::generate();
        for (min, avg, max) in [
            (1, 1, 1),
            (512 * 1024, 1, 8 << 20),
            (64, 128, 256),
            (512 * 1024, 1000 * 1024, 8 << 20),
            (512 * 1024, 1 << 20, 1 << 30),
            (2 << 20, 1 << 20, 8 << 20),
        ] {
            let c = RepoConfig {
                chunk_min: min,
                chunk_avg: avg,
                chunk_max: max,
                ..sample()
            };
            assert!(matches!(c.validate(), Err(ConfigError::ChunkSizes { .. })));
            assert!(c.to_bytes(&k).is_err());
            let v1 = RepoConfig {
                version: FORMAT_1,
                chunker: CHUNKER_V1.into(),
                pack_padding: String::new(),
                ..c
            };
            let json = serde_json::to_vec(&v1).unwrap();
            assert!(matches!(
                RepoConfig::parse(&json, &k),
                Err(ConfigError::ChunkSizes { .. })
            ));
        }
    }
}
