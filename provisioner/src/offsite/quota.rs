//! Per-customer quotas (`levee customer quota NAME SIZE|none`): the bytes a
//! customer may hold in each offsite store, checked before a file's bytes
//! are accepted, so a refused upload leaves nothing behind.
//!
//! Usage is what the customer's directory holds (complete files, uploads
//! in progress, deletion requests): walked at most every [`FRESH`] per
//! customer and counted up by this node's writes in between. Nodes on one
//! directory see each other's writes at their next walk, so together they
//! may overshoot by what they accept in that time; one node overshoots by
//! at most the files uploaded at the same moment.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[cfg(test)]
use super::disk::Disk;
use super::files::Files;

/// How long a walked usage is trusted (plus this node's own writes).
pub const FRESH: Duration = Duration::from_secs(30);

/// Usage per customer, as last walked plus written since.
#[derive(Debug, Default)]
pub struct Usage(Mutex<HashMap<String, (Instant, u64)>>);

impl Usage {
    /// The customer's bytes in `files`, walking (or listing) them when the
    /// count is older than [`FRESH`].
    pub fn current(&self, files: &Files, customer: &str) -> std::io::Result<u64> {
        if let Ok(map) = self.0.lock() {
            if let Some((at, n)) = map.get(customer) {
                if at.elapsed() < FRESH {
                    return Ok(*n);
                }
            }
        }
        let n = files.usage(customer)?;
        if let Ok(mut map) = self.0.lock() {
            map.insert(customer.to_string(), (Instant::now(), n));
        }
        Ok(n)
    }

    /// Counts `bytes` written for the customer since the last walk.
    pub fn add(&self, customer: &str, bytes: u64) {
        if let Ok(mut map) = self.0.lock() {
            if let Some((_, n)) = map.get_mut(customer) {
                *n = n.saturating_add(bytes);
            }
        }
    }
}

/// Whether `need` more bytes fit: `Err` is the message for the appliance
/// (and its run report), naming the quota and the usage.
pub fn check(customer: &str, quota: Option<u64>, usage: u64, need: u64) -> Result<(), String> {
    match quota {
        Some(q) if usage.saturating_add(need) > q => Err(format!(
            "customer {customer}'s offsite quota is {} and it holds {} here; this file needs {} more: \
             ask ops to raise it (`levee customer quota {customer} SIZE`) or forget and prune old snapshots",
            human(q),
            human(usage),
            human(need)
        )),
        _ => Ok(()),
    }
}

/// `1536` -> `1.5 KiB` (see [`levee_proto::config::format_size`]).
pub fn human(n: u64) -> String {
    levee_proto::config::format_size(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_fits_or_the_message_names_quota_and_usage() {
        assert!(check("acme", None, u64::MAX, 1).is_ok());
        assert!(check("acme", Some(100), 40, 60).is_ok());
        let e = check("acme", Some(1 << 20), 900 << 10, 200 << 10).unwrap_err();
        assert!(e.contains("quota is 1.0 MiB"), "{e}");
        assert!(e.contains("holds 900.0 KiB"), "{e}");
        assert!(e.contains("levee customer quota acme"), "{e}");
        assert_eq!(human(512), "512 B");
    }

    #[test]
    fn usage_is_walked_then_counted_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = Files::Dir(Disk::new(dir.path()));
        std::fs::create_dir_all(dir.path().join("acme/r1")).expect("dir");
        std::fs::write(dir.path().join("acme/r1/f"), [0u8; 1000]).expect("file");
        let u = Usage::default();
        assert_eq!(u.current(&disk, "acme").expect("usage"), 1000);
        u.add("acme", 24);
        assert_eq!(u.current(&disk, "acme").expect("usage"), 1024);
        assert_eq!(u.current(&disk, "other").expect("usage"), 0);
    }
}
