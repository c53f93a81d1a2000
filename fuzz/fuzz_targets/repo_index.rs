//! Index file parsing: never panics; what parses round-trips (a version 1
//! index is rewritten as version 2 with the same entries).
#![no_main]
use levee_proto::repo::IndexFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = IndexFile::parse(data) {
        let b = f.to_bytes();
        if data[4] == levee_proto::repo::file_formats::VERSION {
            assert_eq!(b, data);
        }
        assert_eq!(IndexFile::parse(&b).as_ref(), Ok(&f));
    }
});
