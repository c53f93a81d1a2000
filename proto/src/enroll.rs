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

/// A refusal from either listener, with what went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}
