//! The offsite store's request parsing (method, path, upload headers,
//! deletion body): never panics, and what parses round-trips.
#![no_main]

use levee_proto::offsite::{DeletionRequest, Request, UploadRange};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if let Ok(Request::Put(f) | Request::Get(f) | Request::Head(f)) = Request::parse(method, path) {
        assert_eq!(f.path(), path);
    }
    let headers = parts.next().unwrap_or("");
    let (o, l) = headers.split_once(' ').unwrap_or((headers, ""));
    if let Ok(r) = UploadRange::parse(Some(o), Some(l)) {
        assert!(r.offset <= r.length);
    }
    if let Ok(d) = DeletionRequest::parse(data) {
        assert_eq!(DeletionRequest::parse(&d.to_bytes()), Ok(d));
    }
});
