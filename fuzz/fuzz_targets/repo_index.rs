//! Index file parsing: never panics; what parses round-trips.
#![no_main]
use levee_proto::repo::IndexFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = IndexFile::parse(data) {
        assert_eq!(f.to_bytes(), data);
    }
});
