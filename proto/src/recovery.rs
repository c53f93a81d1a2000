//! The customer's recovery key: how a repository outlives its appliance
//! without the server ever being able to read it (issue 14).
//!
//! `levee customer recovery-key init` makes an X25519 key pair. The public
//! half goes into the customer's configuration (`recovery_key:`), so every
//! appliance of the customer receives it; the private half is printed once
//! as a paper key and kept offline by the customer or ops.
//!
//! Each appliance then adds a *recovery slot* to its repository: a random
//! 256-bit secret that opens the repository like any key slot, sealed to
//! the customer's public key and kept, sealed, in the slot itself. The
//! sealed secret travels with the repository to every offsite copy; only
//! the paper key opens it. Whoever holds a copy of the repository and the
//! paper key can open it on any machine; the server holds neither.
//!
//! Sealing is ECIES in the shape of HPKE's base mode: an ephemeral X25519
//! key, HKDF-SHA256 over the shared secret (salt: both public keys; info:
//! what the secret is for), AES-256-GCM. Pure code, no I/O: the agent, the
//! CLI, tests and fuzzers call it directly.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

/// How a public recovery key is written in a configuration.
pub const PUBLIC_PREFIX: &str = "x25519:";
/// How a sealed secret starts (algorithm and version).
const SEALED_PREFIX: &str = "levee-sealed-1:";
/// The context a repository's recovery secret is sealed under.
pub const SLOT_CONTEXT: &str = "levee recovery slot v1";
/// Base32 characters in a paper key: 32 key bytes + 2 checksum bytes.
const PAPER_CHARS: usize = 55;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecoveryError {
    #[error("a recovery public key is `x25519:` and 64 hex digits; got {0:?}")]
    PublicKey(String),
    #[error("the paper key has {0} letters and digits, a paper key has 55 (groups of five; dashes and spaces do not count)")]
    PaperLength(usize),
    #[error("the paper key has `{ch}` at letter {pos}: a paper key uses only A-Z and 2-7")]
    PaperCharacter { ch: char, pos: usize },
    #[error("the paper key's checksum does not match: a letter is mistyped")]
    PaperChecksum,
    #[error("the sealed secret is malformed: {0}")]
    Malformed(String),
    #[error("the sealed secret does not open with this key (another customer's key, or altered)")]
    WrongKey,
    #[error("the X25519 public key {0} is a low-order point: anything sealed to it could be opened by anyone")]
    WeakKey(String),
}

/// A customer's recovery public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryPublicKey(pub [u8; 32]);

impl RecoveryPublicKey {
    /// Parses `x25519:<64 hex digits>`.
    pub fn parse(s: &str) -> Result<Self, RecoveryError> {
        let bad = || RecoveryError::PublicKey(s.chars().take(80).collect());
        let hex_part = s.trim().strip_prefix(PUBLIC_PREFIX).ok_or_else(bad)?;
        let bytes = hex::decode(hex_part).map_err(|_| bad())?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        let key = Self(key);
        key.check()?;
        Ok(key)
    }

    /// Refuses a low-order point (all zeros, and the few others): the
    /// shared secret with it is known to everyone, so a secret sealed to
    /// it would be readable by whoever stores the sealed copy.
    pub fn check(&self) -> Result<(), RecoveryError> {
        let probe = StaticSecret::from(rand::random::<[u8; 32]>());
        if probe
            .diffie_hellman(&PublicKey::from(self.0))
            .was_contributory()
        {
            Ok(())
        } else {
            Err(RecoveryError::WeakKey(self.fingerprint()))
        }
    }

    /// Short, stable name for listings and slot labels (first 16 hex digits
    /// of the key's SHA-256).
    pub fn fingerprint(&self) -> String {
        hex::encode(&Sha256::digest(self.0)[..8])
    }
}

impl std::fmt::Display for RecoveryPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", hex::encode(self.0))
    }
}

/// The private half, as held on paper.
pub struct RecoveryPrivateKey(StaticSecret);

impl RecoveryPrivateKey {
    /// A new key from the operating system's random generator.
    pub fn generate() -> Self {
        Self(StaticSecret::from(rand::random::<[u8; 32]>()))
    }

    /// The key of these 32 bytes (tests and fuzzers; keys are generated).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(StaticSecret::from(bytes))
    }

    pub fn public(&self) -> RecoveryPublicKey {
        RecoveryPublicKey(PublicKey::from(&self.0).to_bytes())
    }

    /// The paper key: the 32 key bytes and a 2-byte checksum in base32
    /// (A-Z, 2-7: no 0/O or 1/I to confuse), in groups of five.
    pub fn to_paper(&self) -> String {
        let mut raw = self.0.to_bytes().to_vec();
        raw.extend_from_slice(&Sha256::digest(&raw)[..2]);
        let text = data_encoding::BASE32_NOPAD.encode(&raw);
        text.as_bytes()
            .chunks(5)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("-")
    }

    /// Reads a paper key file: the one `levee customer recovery-key init`
    /// writes (a header, then the key after the `Paper key` line) or a
    /// typed-back copy holding only the key (see [`Self::from_paper`]).
    pub fn from_key_file(text: &str) -> Result<Self, RecoveryError> {
        let key = match text.find("\nPaper key") {
            Some(at) => {
                let rest = &text[at + 1..];
                rest.split_once('\n').map_or("", |(_, key)| key)
            }
            None => text,
        };
        Self::from_paper(key)
    }

    /// Reads a paper key as typed back: case, spaces, dashes and line
    /// breaks do not matter; a mistyped letter is caught by the checksum.
    pub fn from_paper(text: &str) -> Result<Self, RecoveryError> {
        let mut clean = String::new();
        for ch in text.chars() {
            if ch.is_whitespace() || ch == '-' {
                continue;
            }
            let up = ch.to_ascii_uppercase();
            if !(up.is_ascii_uppercase() || ('2'..='7').contains(&up)) {
                return Err(RecoveryError::PaperCharacter {
                    ch,
                    pos: clean.len() + 1,
                });
            }
            clean.push(up);
        }
        if clean.len() != PAPER_CHARS {
            return Err(RecoveryError::PaperLength(clean.len()));
        }
        let raw = data_encoding::BASE32_NOPAD
            .decode(clean.as_bytes())
            .map_err(|_| RecoveryError::PaperChecksum)?;
        let (key, sum) = raw.split_at(32);
        if Sha256::digest(key)[..2] != *sum {
            return Err(RecoveryError::PaperChecksum);
        }
        let mut k = [0u8; 32];
        k.copy_from_slice(key);
        Ok(Self(StaticSecret::from(k)))
    }

    /// Opens a secret [`seal`]ed to this key under `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, RecoveryError> {
        let body = sealed.trim().strip_prefix(SEALED_PREFIX).ok_or_else(|| {
            RecoveryError::Malformed(format!("it does not start with {SEALED_PREFIX}"))
        })?;
        let bytes =
            hex::decode(body).map_err(|e| RecoveryError::Malformed(format!("not hex: {e}")))?;
        if bytes.len() < 32 + 12 + 16 {
            return Err(RecoveryError::Malformed(format!(
                "{} bytes is too short",
                bytes.len()
            )));
        }
        let (eph, rest) = bytes.split_at(32);
        let (nonce, ct) = rest.split_at(12);
        let mut eph_key = [0u8; 32];
        eph_key.copy_from_slice(eph);
        let eph = PublicKey::from(eph_key);
        let shared = self.0.diffie_hellman(&eph);
        if !shared.was_contributory() {
            return Err(RecoveryError::WrongKey);
        }
        let cipher = cipher(shared.as_bytes(), &eph, &self.public(), context);
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| RecoveryError::WrongKey)
    }
}

/// Seals `secret` to `to` under `context` (what the secret is for, bound
/// into the key and the tag so a sealed secret cannot be replayed as
/// another kind): `levee-sealed-1:` and hex of ephemeral public key,
/// nonce, ciphertext and tag. A low-order key is refused
/// ([`RecoveryError::WeakKey`]).
pub fn seal(to: &RecoveryPublicKey, secret: &[u8], context: &str) -> Result<String, RecoveryError> {
    let eph_secret = StaticSecret::from(rand::random::<[u8; 32]>());
    let eph = PublicKey::from(&eph_secret);
    let shared = eph_secret.diffie_hellman(&PublicKey::from(to.0));
    if !shared.was_contributory() {
        return Err(RecoveryError::WeakKey(to.fingerprint()));
    }
    let cipher = cipher(shared.as_bytes(), &eph, to, context);
    let nonce: [u8; 12] = rand::random();
    // Encrypting into a Vec cannot fail for inputs of this size.
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: secret,
                aad: context.as_bytes(),
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(32 + 12 + ct.len());
    out.extend_from_slice(eph.as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(format!("{SEALED_PREFIX}{}", hex::encode(out)))
}

/// Checks the shape of a sealed secret from outside (the API): the
/// prefix, hex, and a length between the smallest seal and `max` chars.
pub fn check_sealed(sealed: &str, max: usize) -> Result<(), RecoveryError> {
    let body = sealed.strip_prefix(SEALED_PREFIX).ok_or_else(|| {
        RecoveryError::Malformed(format!("it does not start with {SEALED_PREFIX}"))
    })?;
    if sealed.len() > max {
        return Err(RecoveryError::Malformed(format!(
            "{} characters, at most {max}",
            sealed.len()
        )));
    }
    if body.len() < 2 * (32 + 12 + 16) || !body.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RecoveryError::Malformed(
            "not hex of an ephemeral key, nonce and tag".into(),
        ));
    }
    Ok(())
}

/// HKDF-SHA256 (RFC 5869) over the shared secret; salt: both public keys,
/// info: the context.
fn cipher(shared: &[u8; 32], eph: &PublicKey, to: &RecoveryPublicKey, context: &str) -> Aes256Gcm {
    let mut salt = Vec::with_capacity(64);
    salt.extend_from_slice(eph.as_bytes());
    salt.extend_from_slice(&to.0);
    let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), shared);
    let mut key = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit of 255 * 32.
    let _ = hk.expand(context.as_bytes(), &mut key);
    Aes256Gcm::new(&key.into())
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_file_init_writes_reads_back() {
        let key = RecoveryPrivateKey::generate();
        let paper = key.to_paper();
        let file = format!(
            "Levee recovery key for customer acme\nPublic key: {} (fingerprint x)\nPaper key (opens every repository of acme; keep it offline):\n\n{paper}\n",
            key.public()
        );
        let back = RecoveryPrivateKey::from_key_file(&file).expect("init's file");
        assert_eq!(back.public(), key.public());
        // A typed-back copy, over two lines.
        let (a, b) = paper.split_at(paper.len() / 2);
        let typed = format!("{}\n{}\n", a.to_lowercase(), b);
        assert_eq!(
            RecoveryPrivateKey::from_key_file(&typed)
                .expect("typed")
                .public(),
            key.public()
        );
    }

    use super::*;

    #[test]
    fn seal_opens_with_the_paper_key_only() {
        let k = RecoveryPrivateKey::generate();
        let sealed = seal(&k.public(), b"the repository secret", SLOT_CONTEXT).unwrap();
        let paper = k.to_paper();
        assert_eq!(paper.len(), 55 + 10);
        let back = RecoveryPrivateKey::from_paper(&paper.to_lowercase().replace('-', " ")).unwrap();
        assert_eq!(back.public(), k.public());
        assert_eq!(
            back.open(&sealed, SLOT_CONTEXT).unwrap(),
            b"the repository secret"
        );
        let other = RecoveryPrivateKey::generate();
        assert_eq!(
            other.open(&sealed, SLOT_CONTEXT),
            Err(RecoveryError::WrongKey)
        );
        assert_eq!(k.open(&sealed, "another use"), Err(RecoveryError::WrongKey));
    }

    #[test]
    fn a_flipped_byte_or_a_bad_string_is_named() {
        let k = RecoveryPrivateKey::generate();
        let sealed = seal(&k.public(), b"secret", SLOT_CONTEXT).unwrap();
        for i in [
            SEALED_PREFIX.len(),
            SEALED_PREFIX.len() + 70,
            sealed.len() - 1,
        ] {
            let mut b = sealed.clone().into_bytes();
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            let e = k.open(&String::from_utf8(b).unwrap(), SLOT_CONTEXT);
            assert_eq!(e, Err(RecoveryError::WrongKey), "byte {i}");
        }
        assert!(matches!(
            k.open("nope", SLOT_CONTEXT),
            Err(RecoveryError::Malformed(_))
        ));
        assert!(matches!(
            k.open(&format!("{SEALED_PREFIX}abcd"), SLOT_CONTEXT),
            Err(RecoveryError::Malformed(_))
        ));
    }

    #[test]
    fn paper_key_typos_are_caught() {
        let paper = RecoveryPrivateKey::generate().to_paper();
        let mut typo = paper.clone().into_bytes();
        typo[3] = if typo[3] == b'A' { b'B' } else { b'A' };
        assert!(matches!(
            RecoveryPrivateKey::from_paper(&String::from_utf8(typo).unwrap()),
            Err(RecoveryError::PaperChecksum)
        ));
        assert_eq!(
            RecoveryPrivateKey::from_paper(&paper[..20]).err(),
            Some(RecoveryError::PaperLength(17))
        );
        assert_eq!(
            RecoveryPrivateKey::from_paper("AB1CD").err(),
            Some(RecoveryError::PaperCharacter { ch: '1', pos: 3 })
        );
    }

    #[test]
    fn public_keys_parse_strictly() {
        let k = RecoveryPrivateKey::generate().public();
        assert_eq!(RecoveryPublicKey::parse(&k.to_string()).unwrap(), k);
        for bad in [
            "",
            "x25519:",
            "x25519:zz",
            "ed25519:00",
            &format!("x25519:{}", "00".repeat(31)),
        ] {
            assert!(RecoveryPublicKey::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(k.fingerprint().len(), 16);
    }

    #[test]
    fn low_order_keys_are_refused_for_sealing() {
        // All zeros and the other small-order points: the shared secret
        // would be all zeros, known to anyone holding the sealed copy.
        let one = {
            let mut k = [0u8; 32];
            k[0] = 1;
            k
        };
        for weak in [[0u8; 32], one] {
            let key = RecoveryPublicKey(weak);
            assert!(matches!(key.check(), Err(RecoveryError::WeakKey(_))));
            assert!(matches!(
                seal(&key, b"s", SLOT_CONTEXT),
                Err(RecoveryError::WeakKey(_))
            ));
            assert!(RecoveryPublicKey::parse(&key.to_string()).is_err());
        }
        let sealed = seal(&RecoveryPrivateKey::generate().public(), b"s", SLOT_CONTEXT).unwrap();
        assert!(check_sealed(&sealed, 4096).is_ok());
        assert!(check_sealed(&sealed, 20).is_err());
        assert!(check_sealed("levee-sealed-1:zz", 4096).is_err());
    }
}
