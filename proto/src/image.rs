//! `image.json`: what the image builder writes beside the boot artifacts,
//! and what `levee image import` reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// File name of the manifest inside an image directory.
pub const IMAGE_MANIFEST: &str = "image.json";
/// Artifact names the boot path relies on.
pub const KERNEL: &str = "vmlinuz";
pub const INITRD: &str = "initrd.img";
pub const ROOTFS: &str = "rootfs.squashfs";

/// The manifest of one built image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageManifest {
    /// Image name, e.g. `levee-appliance`.
    pub name: String,
    /// Image version, e.g. `2026.11.26-3f2a9c1`. Shown in `/etc/os-release`
    /// and reported by the agent.
    pub version: String,
    /// Debian release the image was built from (`bookworm`).
    #[serde(default)]
    pub release: String,
    /// Exact package versions in the root file system, by package name.
    #[serde(default)]
    pub packages: BTreeMap<String, String>,
    /// Every artifact in the directory (other than this manifest), by file name.
    pub artifacts: BTreeMap<String, Artifact>,
    /// Extra kernel command-line arguments the image wants (e.g. `quiet`).
    #[serde(default)]
    pub cmdline: String,
}

/// One artifact's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}
