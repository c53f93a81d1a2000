//! Run report parsing (`POST /api/v1/runs`): never panics; a report that
//! parses is valid, has no control characters anywhere, and round-trips.
#![no_main]
use levee_proto::runs::RunReport;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = RunReport::parse(data) {
        assert!(r.validate().is_ok());
        let text = String::from_utf8(r.to_bytes()).expect("JSON is UTF-8");
        let back = RunReport::parse(text.as_bytes()).expect("a parsed report parses again");
        assert_eq!(back, r);
        for s in r.job.iter().chain(&r.sources).chain(r.errors.iter().map(|e| &e.message)) {
            assert!(!s.chars().any(char::is_control));
        }
    }
});
