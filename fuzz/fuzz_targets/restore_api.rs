//! The restore requests' wire (`/api/v1/restore`): an appliance's status
//! body (`RestoreStatus::parse`, server side) and a target string
//! (`parse_target`, checked by the CLI and again by the appliance before
//! it writes anything). Never panics; a parsed status carries no control
//! characters and is never `requested` or `cancelling` (ops' states); a parsed target has no `..` or
//! `.` component and no account in it.
#![no_main]
use levee_proto::restore_api::{parse_target, RestoreState, RestoreStatus, RestoreTarget};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = RestoreStatus::parse(data) {
        assert!(!matches!(
            s.state,
            RestoreState::Requested | RestoreState::Cancelling
        ));
        if let Some(r) = &s.reason {
            assert!(!r.chars().any(char::is_control));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = parse_target(text) {
            let path = match &t {
                RestoreTarget::Smb { dir, .. } => dir.as_str(),
                RestoreTarget::Local(p) => p.as_str(),
            };
            assert!(!path.split('/').any(|c| c == ".." || c == "."), "{text:?}");
            assert!(!path.chars().any(char::is_control));
            if let RestoreTarget::Smb { host, .. } = &t {
                assert!(!host.contains('@'));
            }
        }
    }
});
