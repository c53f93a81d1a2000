//! The recovery key's parsers (levee_proto::recovery): a sealed secret read
//! from a repository copy (a store anyone with write access may alter), a
//! paper key typed back by hand, a public key from a YAML file. Never
//! panics; a sealed secret opens only with the key it was sealed to.
#![no_main]
use levee_proto::recovery::{RecoveryPrivateKey, RecoveryPublicKey, SLOT_CONTEXT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let k = RecoveryPrivateKey::from_bytes([7; 32]);
    if k.open(&text, SLOT_CONTEXT).is_ok() {
        assert!(text.trim().starts_with("levee-sealed-1:"));
    }
    if let Ok(k) = RecoveryPrivateKey::from_paper(&text) {
        // A paper key that parses prints back to the same key.
        let again = RecoveryPrivateKey::from_paper(&k.to_paper()).expect("round trip");
        assert_eq!(again.public(), k.public());
    }
    if let Ok(p) = RecoveryPublicKey::parse(&text) {
        assert_eq!(RecoveryPublicKey::parse(&p.to_string()).ok(), Some(p));
    }
});
