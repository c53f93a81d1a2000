//! Repository config and key slot parsing: never panics. A config that
//! parses is valid (its chunk sizes in range) and round-trips; a format 2
//! config sealed under the fuzz key opens again.
#![no_main]
use levee_proto::repo::{KeySlot, MasterKey, RepoConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = MasterKey::from_bytes(&[7u8; 64]);
    let _ = RepoConfig::format_of(data);
    if let Ok(c) = RepoConfig::parse(data, &key) {
        assert!(c.validate().is_ok());
        let b = c.to_bytes(&key).expect("a parsed config serialises");
        assert_eq!(RepoConfig::parse(&b, &key).as_ref(), Ok(&c));
    }
    if let Ok(s) = KeySlot::parse(data) {
        // A fuzzed slot never opens (the wrap needs the KDF key) but must
        // not panic on any field: versions, KDF costs, wrapped lengths.
        let mut cheap = s.clone();
        cheap.kdf.memory_kib = cheap.kdf.memory_kib.min(64);
        cheap.kdf.iterations = cheap.kdf.iterations.min(2);
        let _ = cheap.open(b"fuzz secret");
        let _ = KeySlot::parse(&s.to_bytes());
    }
});
