//! Pack header and trailer parsing: never panics; what parses round-trips.
#![no_main]
use levee_proto::repo::pack::parse_trailer;
use levee_proto::repo::PackHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = PackHeader::parse(data) {
        assert_eq!(h.to_bytes(), data);
        let _ = h.check_bounds(data.len() as u64);
    }
    if data.len() >= 8 {
        let _ = parse_trailer(&data[data.len() - 8..], data.len() as u64);
    }
});
