//! The install plan: what the server (or an operator) asks the agent to put
//! on the disk. The same shape is being added to `proto::enroll`; at merge
//! this file becomes a re-export, so the field names are a contract.

use serde::{Deserialize, Serialize};

/// Whether and what to install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallPlan {
    /// The customer wants this appliance installed to its local disk.
    pub install: bool,
    /// Wipe a disk that already holds a Levee install (`levee appliance
    /// reinstall`). A disk holding anything else is never touched.
    #[serde(default)]
    pub reinstall: bool,
    /// Smallest disk to accept, in bytes.
    #[serde(default)]
    pub min_disk_bytes: u64,
    /// The image to write into slot A.
    pub image: Option<InstallImage>,
}

/// One image's boot artifacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallImage {
    pub version: String,
    pub kernel: Artifact,
    pub initrd: Artifact,
    /// `rootfs.squashfs`, padded to 4 KiB (stage 1 checks the padded sum).
    pub rootfs: Artifact,
    /// The image's own kernel arguments (image.json `cmdline`).
    #[serde(default)]
    pub cmdline: String,
}

/// A file to download: `http://`, `https://` or `file://` URL, its sha256
/// (lower-case hex) and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub url: String,
    pub sha256: String,
    pub size: u64,
}
