//! Operators' passwords: argon2id hashes (PHC strings, with the crate's
//! default cost: 19 MiB, two passes, about 30 ms here) and the one-time
//! passwords `levee operator add` prints.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;

/// Shortest password an operator may choose.
pub const MIN_LEN: usize = 12;
/// Longest accepted (argon2 takes any length; this bounds the work a
/// login request can ask for).
pub const MAX_LEN: usize = 256;

/// The argon2id hash of `password`, with a fresh random salt.
pub fn hash(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches `hash`; a damaged hash matches nothing.
pub fn verify(password: &str, hash: &str) -> bool {
    if password.len() > MAX_LEN {
        return false;
    }
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash that no password matches, verified when the operator does not
/// exist, so a login takes as long for an unknown name as for a wrong
/// password (names cannot be probed by timing).
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let mut random = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut random);
        hash(&hex::encode(random)).unwrap_or_default()
    })
}

/// A one-time password: 20 characters from an alphabet without look-alikes
/// (about 100 bits), grouped by four for reading aloud.
pub fn one_time() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut bytes = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// Why a new password is refused, or `None`.
pub fn weakness(password: &str, name: &str) -> Option<String> {
    if password.chars().count() < MIN_LEN {
        return Some(format!("use at least {MIN_LEN} characters"));
    }
    if password.len() > MAX_LEN {
        return Some(format!("use at most {MAX_LEN} bytes"));
    }
    if password.eq_ignore_ascii_case(name) {
        return Some("do not use your name".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let a = hash("correct horse battery").unwrap();
        let b = hash("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(verify("correct horse battery", &a));
        assert!(!verify("correct horse batterY", &a));
        assert!(!verify("x", "not a hash"));
        assert!(!verify("anything", decoy_hash()));
    }

    #[test]
    fn one_time_passwords_are_long_and_differ() {
        let (a, b) = (one_time(), one_time());
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        assert!(weakness(&a, "ann").is_none());
        assert!(weakness("short", "ann").is_some());
    }
}
