//! Encryption and keyed hashing. Every encrypted object is
//! `nonce (12) || AES-256-GCM ciphertext || tag (16)` with a fresh random
//! nonce; random 96-bit nonces stay safe well past 2^32 objects per key,
//! i.e. petabytes of 1 MiB chunks.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::file_formats::{CRYPTO_OVERHEAD, NONCE_LEN};
use super::id::{BlobId, PackId};

/// Decryption or key failures. Deliberately vague: which step failed says
/// nothing useful to an attacker and nothing more to a user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("ciphertext too short ({0} bytes)")]
    TooShort(usize),
    #[error("authentication failed: wrong key or corrupted data")]
    Auth,
    #[error("malformed key material")]
    BadKey,
}

/// The repository's random master key. Never written anywhere unwrapped.
#[derive(Clone)]
pub struct MasterKey {
    enc: [u8; 32],
    mac: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub const LEN: usize = 64;

    pub fn generate() -> Self {
        let mut b = [0u8; 64];
        rand::thread_rng().fill_bytes(&mut b);
        Self::from_bytes(&b)
    }

    /// The 64 key bytes: encryption key then MAC key.
    pub fn from_bytes(b: &[u8; 64]) -> Self {
        let mut enc = [0u8; 32];
        let mut mac = [0u8; 32];
        enc.copy_from_slice(&b[..32]);
        mac.copy_from_slice(&b[32..]);
        Self { enc, mac }
    }

    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[..32].copy_from_slice(&self.enc);
        b[32..].copy_from_slice(&self.mac);
        b
    }

    /// Keyed chunk id: knowing a file does not reveal whether its chunks
    /// are in the repository.
    pub fn blob_id(&self, plaintext: &[u8]) -> BlobId {
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.mac).expect("HMAC takes any key length");
        m.update(plaintext);
        BlobId(m.finalize().into_bytes().into())
    }

    /// Seed for the chunker's gear table, derived from the MAC key so chunk
    /// boundaries (and so chunk sizes) do not fingerprint known files.
    pub fn chunker_seed(&self) -> u64 {
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.mac).expect("HMAC takes any key length");
        m.update(b"levee chunker seed v1");
        let out = m.finalize().into_bytes();
        let mut s = [0u8; 8];
        s.copy_from_slice(&out[..8]);
        u64::from_le_bytes(s)
    }

    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        encrypt_with_nonce(&self.enc, &nonce, plaintext)
    }

    pub fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        decrypt(&self.enc, data)
    }
}

/// Encrypts with a caller-chosen nonce. Only for key wrapping (fresh key
/// per wrap) and golden tests; everything else uses [`MasterKey::encrypt`].
pub fn encrypt_with_nonce(key: &[u8; 32], nonce: &[u8; NONCE_LEN], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    let mut out = Vec::with_capacity(plaintext.len() + CRYPTO_OVERHEAD);
    out.extend_from_slice(nonce);
    // Encryption with a valid 32-byte key and in-memory buffer cannot fail.
    let ct = cipher
        .encrypt(Nonce::from_slice(nonce), plaintext)
        .expect("AES-GCM encryption of an in-memory buffer");
    out.extend_from_slice(&ct);
    out
}

pub fn decrypt(key: &[u8; 32], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if data.len() < CRYPTO_OVERHEAD {
        return Err(CryptoError::TooShort(data.len()));
    }
    let cipher = Aes256Gcm::new(key.into());
    let (nonce, ct) = data.split_at(NONCE_LEN);
    cipher
        .decrypt(Nonce::from_slice(nonce), ct)
        .map_err(|_| CryptoError::Auth)
}

/// SHA-256 of a file's bytes: the id of packs, index and snapshot files.
pub fn file_id(bytes: &[u8]) -> PackId {
    PackId(Sha256::digest(bytes).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let k = MasterKey::generate();
        let ct = k.encrypt(b"hello");
        assert_eq!(k.decrypt(&ct).unwrap(), b"hello");
        let mut bad = ct.clone();
        bad[14] ^= 1;
        assert_eq!(k.decrypt(&bad), Err(CryptoError::Auth));
        assert_eq!(k.decrypt(&ct[..5]), Err(CryptoError::TooShort(5)));
        assert_ne!(k.blob_id(b"a"), MasterKey::generate().blob_id(b"a"));
    }
}
