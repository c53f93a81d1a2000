//! Snapshot and tree parsing: never panics; what parses round-trips.
#![no_main]
use levee_proto::repo::{Snapshot, Tree};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Snapshot::parse(data) {
        assert_eq!(Snapshot::parse(&s.to_bytes()).ok(), Some(s));
    }
    if let Ok(t) = Tree::parse(data) {
        assert_eq!(Tree::parse(&t.to_bytes()).ok(), Some(t));
    }
});
