//! Update report parsing (`POST /api/v1/update`) and the `update_window`
//! key: never panics; a report that parses has a printable version and
//! reason within its bounds and round-trips; a window that parses prints
//! as itself.
#![no_main]
use levee_proto::update::{UpdateReport, UpdateWindow, MAX_REASON};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = UpdateReport::parse(data) {
        assert!(!r.version.chars().any(char::is_control));
        let reason = r.reason.as_deref().unwrap_or("");
        assert!(reason.len() <= MAX_REASON && !reason.chars().any(char::is_control));
        let back = UpdateReport::parse(&r.to_bytes()).expect("a parsed report parses again");
        assert_eq!(back, r);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(w) = UpdateWindow::parse(text) {
            assert_eq!(UpdateWindow::parse(&w.to_string()), Ok(w));
            assert!(w.start < 1440 && w.end < 1440);
        }
    }
});
