//! Encryption and keyed hashing.
//!
//! Two object layouts, chosen by the repository's format (its `config`):
//! - format 1 (read and written for repositories created before format 2):
//!   `nonce (12 random) || AES-256-GCM ciphertext || tag (16)` under the
//!   master key. NIST SP 800-38D caps random 96-bit nonces at 2^32
//!   encryptions per key (collision chance 2^-32).
//! - format 2: `nonce (24 random) || XAES-256-GCM ciphertext || tag (16)`
//!   (C2SP XAES-256-GCM): the first 12 nonce bytes derive a fresh
//!   AES-256-GCM key from the master key (NIST SP 800-108 counter-mode KDF
//!   with CMAC-AES-256, three AES calls), the last 12 are that key's GCM
//!   nonce. Each derived key encrypts about one object, so the per-key bound
//!   never comes near; a repeated 192-bit nonce needs ~2^80 objects. No
//!   per-pack state, and AES-NI/VAES speed (docs/REPOSITORY.md says why
//!   not XChaCha20-Poly1305 or per-pack HKDF subkeys).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::cipher::BlockEncrypt;
use aes_gcm::aes::Aes256;
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::file_formats::{CRYPTO_OVERHEAD, NONCE_LEN, TAG_LEN, XNONCE_LEN};
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

/// How objects are encrypted: fixed per repository by its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// Format 1: AES-256-GCM, 96-bit random nonces, one key.
    Aes256Gcm,
    /// Format 2: XAES-256-GCM, 192-bit random nonces.
    Xaes256Gcm,
}

impl Cipher {
    /// Bytes an encryption adds to its plaintext.
    pub fn overhead(self) -> usize {
        match self {
            Cipher::Aes256Gcm => CRYPTO_OVERHEAD,
            Cipher::Xaes256Gcm => XNONCE_LEN + TAG_LEN,
        }
    }
}

/// XAES-256-GCM's key derivation (C2SP XAES-256-GCM), with the
/// per-master-key part (the AES key schedule and the CMAC subkey K1)
/// computed once. Written here because no maintained crate offers it; it is
/// three AES block calls on top of the `aes`/`aes-gcm` crates, checked
/// against the specification's vectors in the tests below.
#[derive(Clone)]
struct XaesKdf {
    aes: Aes256,
    k1: [u8; 16],
}

impl XaesKdf {
    fn new(key: &[u8; 32]) -> Self {
        let aes = Aes256::new(key.into());
        let mut l = [0u8; 16].into();
        aes.encrypt_block(&mut l);
        // K1 = L doubled in GF(2^128) (CMAC's subkey).
        let mut k1 = [0u8; 16];
        for i in 0..15 {
            k1[i] = (l[i] << 1) | (l[i + 1] >> 7);
        }
        k1[15] = (l[15] << 1) ^ (0x87 * (l[0] >> 7));
        Self { aes, k1 }
    }

    /// The AES-256-GCM key for the first 12 bytes of a 24-byte nonce.
    fn derive(&self, n: &[u8]) -> Aes256Gcm {
        Aes256Gcm::new((&self.derive_bytes(n)).into())
    }

    /// [`derive`](Self::derive)'s key as bytes.
    fn derive_bytes(&self, n: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, half) in out.chunks_exact_mut(16).enumerate() {
            let mut m = [0u8; 16];
            m[..4].copy_from_slice(&[0, i as u8 + 1, b'X', 0]);
            m[4..].copy_from_slice(&n[..12]);
            for (b, k) in m.iter_mut().zip(self.k1) {
                *b ^= k;
            }
            let mut block = m.into();
            self.aes.encrypt_block(&mut block);
            half.copy_from_slice(&block);
        }
        out
    }

    /// Opens `nonce || ct || tag` in place with ring's AES-256-GCM (the
    /// same cipher as `aes-gcm`'s, 3-4x faster here: GHASH was ~5% of a
    /// restore's samples); `buf` becomes the plaintext. On failure its
    /// contents are unspecified.
    fn open_in_place(&self, buf: &mut Vec<u8>, aad: &[u8]) -> Result<(), CryptoError> {
        use ring::aead::{Aad, LessSafeKey, Nonce as RingNonce, UnboundKey, AES_256_GCM};
        if buf.len() < XNONCE_LEN + TAG_LEN {
            return Err(CryptoError::TooShort(buf.len()));
        }
        let key = UnboundKey::new(&AES_256_GCM, &self.derive_bytes(&buf[..12]))
            .map_err(|_| CryptoError::Auth)?;
        let nonce = RingNonce::try_assume_unique_for_key(&buf[12..XNONCE_LEN])
            .map_err(|_| CryptoError::Auth)?;
        let n = LessSafeKey::new(key)
            .open_within(nonce, Aad::from(aad), buf, XNONCE_LEN..)
            .map_err(|_| CryptoError::Auth)?
            .len();
        buf.truncate(n);
        Ok(())
    }
}

/// The repository's random master key. Never written anywhere unwrapped.
#[derive(Clone)]
pub struct MasterKey {
    enc: [u8; 32],
    mac: [u8; 32],
    cipher: Cipher,
    xaes: XaesKdf,
    /// Keys replaced by `key rotate`, newest first, kept (inside the config,
    /// encrypted under this key) only to read blobs and pack headers
    /// written before the rotation, until `prune --rewrite` has re-encrypted
    /// them. Never used to encrypt, nor to open config, index, snapshot or
    /// lock files.
    retired: Vec<MasterKey>,
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

    /// The 64 key bytes: encryption key then MAC key. The cipher starts as
    /// format 1's; [`with_cipher`](Self::with_cipher) picks the repository's.
    pub fn from_bytes(b: &[u8; 64]) -> Self {
        let mut enc = [0u8; 32];
        let mut mac = [0u8; 32];
        enc.copy_from_slice(&b[..32]);
        mac.copy_from_slice(&b[32..]);
        Self {
            xaes: XaesKdf::new(&enc),
            enc,
            mac,
            cipher: Cipher::Aes256Gcm,
            retired: Vec::new(),
        }
    }

    /// This key with `retired` as the older keys it may read pack
    /// contents with (their cipher set to this key's).
    pub fn with_retired(mut self, retired: Vec<MasterKey>) -> Self {
        let cipher = self.cipher;
        self.retired = retired.into_iter().map(|k| k.with_cipher(cipher)).collect();
        self
    }

    /// Keys replaced by rotations that still read old pack contents.
    pub fn retired(&self) -> &[MasterKey] {
        &self.retired
    }

    /// Decrypts a blob, frame or pack header: with this key, else with a
    /// retired one. Returns whether this (the current) key opened it.
    ///
    /// Why a holder of a retired key cannot plant data with it: the ids
    /// read come from index files and trees reachable from snapshots, and
    /// those only the current key opens (after `prune --rewrite`, all trees
    /// too); a blob must hash to its id under one of the keyring's MAC keys
    /// ([`id_matches`](Self::id_matches)), and other bytes with the same
    /// keyed hash are a second preimage of SHA-256, key known or not.
    pub fn decrypt_pack_data(&self, data: &[u8]) -> Result<(Vec<u8>, bool), CryptoError> {
        if self.cipher == Cipher::Xaes256Gcm {
            return self.decrypt_pack_data_owned(data.to_vec());
        }
        self.decrypt_pack_data_slice(data)
    }

    /// [`decrypt_pack_data`](Self::decrypt_pack_data) of a buffer the
    /// caller gives up: XAES-256-GCM data is decrypted in place (no copy).
    pub fn decrypt_pack_data_owned(&self, data: Vec<u8>) -> Result<(Vec<u8>, bool), CryptoError> {
        if self.cipher != Cipher::Xaes256Gcm {
            return self.decrypt_pack_data_slice(&data);
        }
        // In place destroys the input on failure: keep a copy only when a
        // retired key may have to try it next.
        let spare = (!self.retired.is_empty()).then(|| data.clone());
        let mut buf = data;
        match self.xaes.open_in_place(&mut buf, b"") {
            Ok(()) => Ok((buf, true)),
            Err(e) => match spare {
                Some(d) => self.decrypt_pack_data_slice(&d).map_err(|_| e),
                None => Err(e),
            },
        }
    }

    fn decrypt_pack_data_slice(&self, data: &[u8]) -> Result<(Vec<u8>, bool), CryptoError> {
        match self.decrypt(data) {
            Ok(p) => Ok((p, true)),
            Err(e) => {
                for k in &self.retired {
                    if let Ok(p) = k.decrypt(data) {
                        return Ok((p, false));
                    }
                }
                Err(e)
            }
        }
    }

    /// Whether `plaintext` is blob `id` under this key's MAC key or, for
    /// blobs written before a rotation, a retired one's.
    pub fn id_matches(&self, plaintext: &[u8], id: &BlobId) -> bool {
        self.blob_id(plaintext) == *id || self.retired.iter().any(|k| k.blob_id(plaintext) == *id)
    }

    pub fn with_cipher(mut self, cipher: Cipher) -> Self {
        self.cipher = cipher;
        self
    }

    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[..32].copy_from_slice(&self.enc);
        b[32..].copy_from_slice(&self.mac);
        b
    }

    fn hmac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.mac).expect("HMAC takes any key length")
    }

    /// Keyed chunk id: knowing a file does not reveal whether its chunks
    /// are in the repository.
    pub fn blob_id(&self, plaintext: &[u8]) -> BlobId {
        let mut m = self.hmac();
        m.update(plaintext);
        BlobId(m.finalize().into_bytes().into())
    }

    /// Format 1's chunker secret: one 64-bit word XORed into fastcdc's
    /// public gear table (broken by Truong et al. 2025; kept so format 1
    /// repositories keep their chunk boundaries).
    pub fn chunker_seed(&self) -> u64 {
        let mut m = self.hmac();
        m.update(b"levee chunker seed v1");
        let out = m.finalize().into_bytes();
        let mut s = [0u8; 8];
        s.copy_from_slice(&out[..8]);
        u64::from_le_bytes(s)
    }

    /// Format 2's chunker secret: all 256 gear entries pseudo-random under
    /// the MAC key (HMAC-SHA256 of a label and a counter), as bupstash
    /// does, so no entry is public and recovering the table means
    /// recovering 16,384 key-dependent bits, not 64.
    pub fn gear_table(&self) -> Box<[u64; 256]> {
        let mut t = Box::new([0u64; 256]);
        for (i, four) in t.chunks_exact_mut(4).enumerate() {
            let mut m = self.hmac();
            m.update(b"levee gear table v2");
            m.update(&[i as u8]);
            let out = m.finalize().into_bytes();
            for (g, b) in four.iter_mut().zip(out.chunks_exact(8)) {
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                *g = u64::from_le_bytes(w);
            }
        }
        t
    }

    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        self.encrypt_aad(plaintext, b"")
    }

    pub fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.decrypt_aad(data, b"")
    }

    /// Encrypts with associated data that is authenticated, not stored.
    pub fn encrypt_aad(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        match self.cipher {
            Cipher::Aes256Gcm => {
                let mut nonce = [0u8; NONCE_LEN];
                rand::thread_rng().fill_bytes(&mut nonce);
                seal(
                    &Aes256Gcm::new((&self.enc).into()),
                    &nonce,
                    &nonce,
                    plaintext,
                    aad,
                )
            }
            Cipher::Xaes256Gcm => {
                let mut nonce = [0u8; XNONCE_LEN];
                rand::thread_rng().fill_bytes(&mut nonce);
                self.xaes_seal(&nonce, plaintext, aad)
            }
        }
    }

    pub fn decrypt_aad(&self, data: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match self.cipher {
            Cipher::Aes256Gcm => decrypt_aad(&self.enc, data, aad),
            Cipher::Xaes256Gcm => {
                let mut buf = data.to_vec();
                self.xaes.open_in_place(&mut buf, aad)?;
                Ok(buf)
            }
        }
    }

    /// XAES-256-GCM with a caller-chosen 24-byte nonce: `nonce || ct || tag`.
    /// Only for golden tests; everything else draws a random nonce.
    pub fn xaes_seal(&self, nonce: &[u8; XNONCE_LEN], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        seal(
            &self.xaes.derive(nonce),
            &nonce[12..],
            nonce,
            plaintext,
            aad,
        )
    }
}

/// `prefix || AES-GCM(gcm_nonce, plaintext, aad)`.
fn seal(c: &Aes256Gcm, gcm_nonce: &[u8], prefix: &[u8], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + plaintext.len() + TAG_LEN);
    out.extend_from_slice(prefix);
    // Encryption with a valid key of an in-memory buffer cannot fail.
    let ct = c
        .encrypt(
            Nonce::from_slice(gcm_nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer");
    out.extend_from_slice(&ct);
    out
}

fn open(c: &Aes256Gcm, gcm_nonce: &[u8], ct: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    c.decrypt(Nonce::from_slice(gcm_nonce), Payload { msg: ct, aad })
        .map_err(|_| CryptoError::Auth)
}

/// Encrypts with a caller-chosen nonce (format 1 layout). Only for key
/// wrapping (a fresh key per wrap) and golden tests.
pub fn encrypt_with_nonce(key: &[u8; 32], nonce: &[u8; NONCE_LEN], plaintext: &[u8]) -> Vec<u8> {
    encrypt_with_nonce_aad(key, nonce, plaintext, b"")
}

/// [`encrypt_with_nonce`] with associated data.
pub fn encrypt_with_nonce_aad(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    aad: &[u8],
) -> Vec<u8> {
    seal(&Aes256Gcm::new(key.into()), nonce, nonce, plaintext, aad)
}

pub fn decrypt(key: &[u8; 32], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    decrypt_aad(key, data, b"")
}

pub fn decrypt_aad(key: &[u8; 32], data: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if data.len() < CRYPTO_OVERHEAD {
        return Err(CryptoError::TooShort(data.len()));
    }
    let (nonce, ct) = data.split_at(NONCE_LEN);
    open(&Aes256Gcm::new(key.into()), nonce, ct, aad)
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
        for cipher in [Cipher::Aes256Gcm, Cipher::Xaes256Gcm] {
            let k = MasterKey::generate().with_cipher(cipher);
            let ct = k.encrypt(b"hello");
            assert_eq!(ct.len(), 5 + cipher.overhead());
            assert_eq!(k.decrypt(&ct).unwrap(), b"hello");
            let mut bad = ct.clone();
            bad[14] ^= 1;
            assert_eq!(k.decrypt(&bad), Err(CryptoError::Auth));
            assert_eq!(k.decrypt(&ct[..5]), Err(CryptoError::TooShort(5)));
            let ct = k.encrypt_aad(b"hello", b"ctx");
            assert_eq!(k.decrypt_aad(&ct, b"ctx").unwrap(), b"hello");
            assert_eq!(k.decrypt_aad(&ct, b"other"), Err(CryptoError::Auth));
        }
        assert_ne!(
            MasterKey::generate().blob_id(b"a"),
            MasterKey::generate().blob_id(b"a")
        );
    }

    /// The C2SP XAES-256-GCM test vectors (both branches of the doubling).
    #[test]
    fn xaes_256_gcm_c2sp_vectors() {
        let nonce = *b"ABCDEFGHIJKLMNOPQRSTUVWX";
        for (byte, aad, l, ct) in [
            (
                1u8,
                &b""[..],
                "7298caa565031eadc6ce23d23ea66378",
                "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271",
            ),
            (
                3,
                b"c2sp.org/XAES-256-GCM",
                "91c08762876dccf9ba204a33768fa5fe",
                "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d",
            ),
        ] {
            let mut b = [0u8; 64];
            b[..32].fill(byte);
            let k = MasterKey::from_bytes(&b).with_cipher(Cipher::Xaes256Gcm);
            let mut lb = [0u8; 16].into();
            k.xaes.aes.encrypt_block(&mut lb);
            assert_eq!(hex::encode(lb), l);
            let sealed = k.xaes_seal(&nonce, b"XAES-256-GCM", aad);
            assert_eq!(hex::encode(&sealed[24..]), ct);
            assert_eq!(k.decrypt_aad(&sealed, aad).unwrap(), b"XAES-256-GCM");
        }
    }
}
