//! Enrollment and the mutual-TLS API: what an appliance sends to become an
//! identity, and what it gets back.
//!
//! ```
//! use levee_proto::enroll::EnrollmentRequest;
//! let r: EnrollmentRequest = serde_json::from_str(
//!     r#"{"token":"t","mac":"52:54:00:12:34:56","csr_pem":"...","facts":{"macs":[]}}"#,
//! ).unwrap();
//! assert!(r.facts.disks.is_empty());
//! ```

use serde::{Deserialize, Serialize};

/// Paths of enrollment (plain HTTP) and of the `--https` API.
pub mod paths {
    /// `POST` an [`super::EnrollmentRequest`] (plain HTTP).
    pub const ENROLL: &str = "/api/v1/enroll";
    /// `GET` this appliance's customer configuration (mTLS).
    pub const CONFIG: &str = "/api/v1/config";
    /// `POST` a [`crate::report::StatusReport`] (mTLS).
    pub const HEARTBEAT: &str = "/api/v1/heartbeat";
    /// `POST` a [`super::RenewRequest`] (mTLS).
    pub const RENEW: &str = "/api/v1/renew";
    /// `GET` this appliance's [`super::InstallPlan`]; `POST` an
    /// [`super::InstallStatus`] (mTLS).
    pub const INSTALL: &str = "/api/v1/install";
    /// `POST` a [`crate::runs::RunReport`] (mTLS).
    pub const RUNS: &str = "/api/v1/runs";
    /// `GET` the server's clock as a [`super::ServerTime`], on both
    /// listeners. The appliance sets its clock only from the mTLS answer's
    /// `Date` (authenticated); the plain-HTTP one is informational, since
    /// anyone on the LAN could forge it.
    pub const TIME: &str = "/api/v1/time";
}

/// What the machine says about itself; recorded, not trusted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HardwareFacts {
    #[serde(default)]
    pub macs: Vec<String>,
    #[serde(default)]
    pub dmi_serial: Option<String>,
    #[serde(default)]
    pub dmi_uuid: Option<String>,
    #[serde(default)]
    pub disks: Vec<DiskFact>,
}

/// One block device as the agent sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskFact {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    pub size_bytes: u64,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
}

/// `POST /api/v1/enroll`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentRequest {
    /// The one-time token from `levee.token=`.
    pub token: String,
    /// The MAC the machine booted from (the one the token was minted for).
    pub mac: String,
    /// PKCS#10 request for the key the agent generated on the machine.
    pub csr_pem: String,
    pub facts: HardwareFacts,
}

/// The answer to a successful enrollment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentResponse {
    pub certificate_pem: String,
    /// The server CA; its sha256 must match `levee.ca=`.
    pub ca_pem: String,
    /// Where the mTLS API is, e.g. `https://10.0.0.1:8443`.
    pub https_url: String,
    pub appliance_id: i64,
    /// The server's clock: a blank box's may be wrong, and an isolated LAN
    /// has no time server.
    pub server_time_unix: i64,
}

/// `POST /api/v1/renew`: a new key's request, sent with the current
/// certificate before it expires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr_pem: String,
}

/// The answer (HTTP 202 Accepted) to an enrollment from a machine that ops
/// has not approved yet. The server keeps the hash of the request's public
/// key: the machine retries with a request for the same key (no new token
/// needed) until it is approved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentPending {
    /// What is going on, for the console (named like [`ApiError::error`] so
    /// a client that only knows errors still shows it).
    pub error: String,
    /// Always `true`: tells this answer apart from an error.
    pub pending: bool,
    /// The command ops must type, e.g.
    /// `levee appliance approve 52:54:00:12:34:56 --customer NAME`.
    pub approve: String,
}

/// `GET /api/v1/install`: whether and what this appliance installs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallPlan {
    /// The customer wants the appliance installed to its local disk.
    pub install: bool,
    /// Ops ran `levee appliance reinstall`: a disk holding a Levee install
    /// may be overwritten (never a disk holding anything else).
    #[serde(default)]
    pub reinstall: bool,
    /// Smallest disk the installer may pick.
    #[serde(default)]
    pub min_disk_bytes: u64,
    /// The image to install: the one of the boot profile the appliance
    /// boots. `None` when that image has no root file system.
    pub image: Option<InstallImage>,
}

/// An image's artifacts, as the installer downloads and checks them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallImage {
    pub version: String,
    pub kernel: Artifact,
    pub initrd: Artifact,
    pub rootfs: Artifact,
    /// The image's own kernel arguments (`cmdline` of its `image.json`),
    /// without `levee.root=` / `levee.sha256=`, which the installer adds
    /// for the slot it writes.
    #[serde(default)]
    pub cmdline: String,
}

/// One downloadable artifact. The URL is plain HTTP (`/images/<id>/<file>`);
/// its integrity comes from `sha256`, delivered over mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub url: String,
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
}

/// Where an install stands, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstallState {
    Installing,
    Installed,
    Failed,
}

impl InstallState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstallState::Installing => "installing",
            InstallState::Installed => "installed",
            InstallState::Failed => "failed",
        }
    }
}

/// `POST /api/v1/install`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallStatus {
    pub state: InstallState,
    /// Why (required in spirit for `failed`: it is shown to ops).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Slot written (`a`/`b`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// Disk chosen, e.g. `vda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<String>,
}

/// `GET /api/v1/time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerTime {
    pub unix: i64,
}

/// A refusal from either listener, with what went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}
