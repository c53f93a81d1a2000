//! Pack header, trailer and frame parsing: never panics; what parses
//! round-trips (a version 1 header is rewritten as version 2, and padded
//! as version 3).
#![no_main]
use levee_proto::repo::pack::parse_trailer;
use levee_proto::repo::{frame, PackHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = PackHeader::parse(data) {
        let b = h.to_bytes();
        if data[4] == levee_proto::repo::file_formats::VERSION {
            assert_eq!(b, data);
        }
        assert_eq!(PackHeader::parse(&b).as_ref(), Ok(&h));
        // Version 3: padded, and read back the same.
        let p = h.to_bytes_padded();
        assert_eq!(PackHeader::parse(&p).as_ref(), Ok(&h));
        let _ = h.check_bounds(data.len() as u64);
    }
    if data.len() >= 8 {
        let _ = parse_trailer(&data[data.len() - 8..], data.len() as u64);
    }
    // A frame's plaintext, as found after decryption and decompression.
    if let Ok(ms) = frame::members(data) {
        assert_eq!(frame::build(&ms), data);
        for k in 0..=ms.len() as u16 + 1 {
            let _ = frame::member(data, k);
        }
    }
});
