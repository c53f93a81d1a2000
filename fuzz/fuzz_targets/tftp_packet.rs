//! Any bytes: parsing never panics, and whatever parses re-encodes to bytes
//! that parse to the same packet.
#![no_main]

use levee_pxe::tftp::Packet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = Packet::parse(data) {
        let bytes = packet.to_bytes().expect("a parsed packet encodes");
        assert_eq!(Packet::parse(&bytes).as_ref(), Ok(&packet));
    }
});
