//! Arbitrary bytes as an enrollment request body (JSON, field caps, the
//! certificate request inside) and as a certificate request on its own, PEM
//! and DER: the server runs these before it looks anything up, so they
//! must never panic, and what passes must pass again after a round trip.
#![no_main]

use levee_proto::csr::{check_csr_der, check_csr_pem};
use levee_proto::enroll::{key_sha256, EnrollmentRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((req, csr)) = EnrollmentRequest::parse(data) {
        assert!(req.check().is_ok());
        assert_eq!(csr.key_sha256, key_sha256(&csr.spki_der));
        let again = match serde_json::to_vec(&req) {
            Ok(b) => b,
            Err(e) => panic!("an accepted request does not serialise: {e}"),
        };
        match EnrollmentRequest::parse(&again) {
            Ok((r2, c2)) => assert!(r2 == req && c2 == csr, "round trip changed the request"),
            Err(e) => panic!("an accepted request is refused after a round trip: {e}"),
        }
    }
    if let Ok(c) = check_csr_der(data) {
        assert_eq!(c.der, data);
        assert_eq!(check_csr_der(&c.der).ok(), Some(c.clone()));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = check_csr_pem(text) {
            assert_eq!(check_csr_der(&c.der).ok(), Some(c));
        }
    }
});
