//! The status report: what a machine tells the server about itself.
//!
//! The same message is sent before enrollment (from the test initramfs or a
//! freshly booted image, over plain HTTP) and later as the heartbeat. It only
//! ever grows: every field but `mac` is optional so that old senders stay
//! valid, and unknown fields are ignored so that old servers do too.

use serde::{Deserialize, Serialize};

/// One status report. `mac` identifies the machine before it has an
/// appliance id (the MAC of the interface it booted from).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// MAC address of the boot interface, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// What is reporting: `test-initramfs`, `agent`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Version of the sender (agent or image version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Linux boot id (`/proc/sys/kernel/random/boot_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// Seconds since boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<f64>,
    /// Addresses of the machine, `10.0.0.5/24` style.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Version of the image the machine runs (`IMAGE_VERSION` of os-release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<String>,
    /// Free bytes of the file system holding the agent's state
    /// (`/var/lib/levee`, else `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_free_bytes: Option<u64>,
    /// Size in bytes of that file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_total_bytes: Option<u64>,
    /// Boot slot the system runs from (`levee.slot=`, e.g. `a`); absent
    /// when booted from the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}
