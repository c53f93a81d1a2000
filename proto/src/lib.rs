//! Wire types that the Levee server and the appliance agent both speak.
//!
//! Anything serialised between `levee` (the provisioner) and `levee-agent`
//! lives here, so that both binaries and the validation agree by
//! construction. Keep the dependency list short: this crate is linked into
//! the appliance image.
//!
//! ```
//! use levee_proto::report::StatusReport;
//! let r: StatusReport = serde_json::from_str(r#"{"mac":"52:54:00:12:34:56","stage":"test-initramfs"}"#).unwrap();
//! assert_eq!(r.mac, "52:54:00:12:34:56");
//! ```

pub mod chunker;
pub mod config;
pub mod csr;
pub mod delta;
pub mod enroll;
pub mod image;
pub mod offsite;
pub mod recovery;
pub mod recovery_api;
pub mod release;
pub mod repo;
pub mod report;
pub mod restore_api;
pub mod runs;
pub mod s3;
pub mod schedule;
pub mod update;
#[cfg(feature = "yaml")]
pub mod yaml;

/// Paths of the plain-HTTP listener that firmware, iPXE and un-enrolled
/// machines use. One place, so the server's router and the clients agree.
pub mod paths {
    /// `GET /boot/<mac>.ipxe`: the machine's rendered iPXE script.
    pub const BOOT_SCRIPT_PREFIX: &str = "/boot/";
    /// `POST`: a [`crate::report::StatusReport`] as JSON.
    pub const REPORT: &str = "/api/v1/report";
    /// `GET /images/<image-id>/<artifact>`: boot artifacts, with `Range`.
    pub const IMAGES_PREFIX: &str = "/images/";
}

/// An error's message followed by all its causes, `a: b: c` (reqwest's and
/// tough's own messages are generic: the refused connection, the failed TLS
/// check or the bad signature is in the sources). A cause whose text is
/// already there is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let msg = c.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cause = c.source();
    }
    out
}
