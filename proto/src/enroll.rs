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
use sha2::{Digest, Sha256};

/// Hex digits of a key's sha256 in its short fingerprint.
const SHORT_DIGITS: usize = 16;

/// sha256 (lowercase hex) of a key's SubjectPublicKeyInfo DER: how the
/// server knows a pending machine's key.
pub fn key_sha256(spki_der: &[u8]) -> String {
    hex::encode(Sha256::digest(spki_der))
}

/// The short fingerprint of a key, from its sha256 in hex: the first 16
/// digits in groups of four (`ab12-cd34-ef56-7890`). The appliance prints
/// it on its console while it enrolls, `levee appliance list` shows it, and
/// `approve --fingerprint` compares it: 64 bits, enough that an attacker
/// cannot make a key that matches a given one.
pub fn short_fingerprint(key_sha256_hex: &str) -> String {
    let digits: Vec<char> = key_sha256_hex
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(SHORT_DIGITS)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    digits
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// Whether `given` (a short or full fingerprint as ops typed it, any case,
/// with or without `-`, `:` or spaces) names the key with sha256
/// `key_sha256_hex`: at least the short fingerprint's 16 digits, all of
/// them matching.
pub fn fingerprint_matches(key_sha256_hex: &str, given: &str) -> bool {
    let given: String = given
        .chars()
        .filter(|c| !matches!(c, '-' | ':' | ' '))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    given.len() >= SHORT_DIGITS
        && given.chars().all(|c| c.is_ascii_hexdigit())
        && key_sha256_hex.to_ascii_lowercase().starts_with(&given)
}

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

/// Largest enrollment request body accepted (a real one is about 2 KiB).
pub const MAX_ENROLL_BODY: usize = 32 * 1024;

/// Why an enrollment request was refused before anything was looked up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the enrollment request is {0} bytes; at most {MAX_ENROLL_BODY} are accepted")]
    TooLarge(usize),
    #[error("malformed enrollment request: {0}")]
    Json(String),
    #[error("enrollment request field `{field}` is too long ({len} > {max})")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("enrollment request field `{field}` has {len} entries (at most {max})")]
    TooMany {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("enrollment request field `{0}` contains control characters")]
    Control(&'static str),
    #[error(transparent)]
    Csr(#[from] crate::csr::CsrError),
}

/// A length cap and a control-character check on one text field.
pub(crate) fn check_text(
    field: &'static str,
    value: &str,
    max: usize,
) -> Result<(), (&'static str, usize, usize, bool)> {
    if value.len() > max {
        return Err((field, value.len(), max, false));
    }
    if value.chars().any(char::is_control) {
        return Err((field, 0, 0, true));
    }
    Ok(())
}

impl EnrollmentRequest {
    /// Parses and checks a request body: its size, each field's length and
    /// characters, and the certificate request (see [`crate::csr`]). Pure:
    /// the server calls it first, and the fuzz target `enroll_request`
    /// drives it.
    pub fn parse(body: &[u8]) -> Result<(EnrollmentRequest, crate::csr::CheckedCsr), RequestError> {
        if body.len() > MAX_ENROLL_BODY {
            return Err(RequestError::TooLarge(body.len()));
        }
        let req: EnrollmentRequest =
            serde_json::from_slice(body).map_err(|e| RequestError::Json(e.to_string()))?;
        req.check()?;
        let csr = crate::csr::check_csr_pem(&req.csr_pem)?;
        Ok((req, csr))
    }

    /// The field checks of [`EnrollmentRequest::parse`].
    pub fn check(&self) -> Result<(), RequestError> {
        let text = |field, value: &str, max| {
            check_text(field, value, max).map_err(|(field, len, max, control)| {
                if control {
                    RequestError::Control(field)
                } else {
                    RequestError::FieldTooLong { field, len, max }
                }
            })
        };
        let count = |field, len: usize, max| {
            if len > max {
                Err(RequestError::TooMany { field, len, max })
            } else {
                Ok(())
            }
        };
        text("token", &self.token, 128)?;
        text("mac", &self.mac, 32)?;
        let f = &self.facts;
        count("facts.macs", f.macs.len(), 64)?;
        for m in &f.macs {
            text("facts.macs", m, 32)?;
        }
        text(
            "facts.dmi_serial",
            f.dmi_serial.as_deref().unwrap_or(""),
            256,
        )?;
        text("facts.dmi_uuid", f.dmi_uuid.as_deref().unwrap_or(""), 64)?;
        count("facts.disks", f.disks.len(), 64)?;
        for d in &f.disks {
            text("facts.disks.name", &d.name, 64)?;
            text("facts.disks.model", d.model.as_deref().unwrap_or(""), 256)?;
            text("facts.disks.serial", d.serial.as_deref().unwrap_or(""), 256)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_fingerprints_are_grouped_and_match_loosely() {
        let full = "AB12cd34ef5678900000111122223333aaaabbbbccccddddeeeeffff00001111";
        assert_eq!(short_fingerprint(full), "ab12-cd34-ef56-7890");
        assert!(fingerprint_matches(full, "ab12-cd34-ef56-7890"));
        assert!(fingerprint_matches(full, "AB12:CD34:EF56:7890:0000"));
        assert!(fingerprint_matches(full, &full.to_lowercase()));
        assert!(!fingerprint_matches(full, "ab12-cd34-ef56"), "too short");
        assert!(!fingerprint_matches(full, "ab12-cd34-ef56-7891"));
        assert!(!fingerprint_matches(full, "ab12-cd34-ef56-789x"));
    }

    fn request(csr_pem: String) -> EnrollmentRequest {
        EnrollmentRequest {
            token: "ab".repeat(32),
            mac: "52:54:00:12:34:56".into(),
            csr_pem,
            facts: HardwareFacts::default(),
        }
    }

    #[test]
    fn requests_are_capped_per_field_and_checked() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let good = request(csr);
        let body = serde_json::to_vec(&good).unwrap();
        let (parsed, checked) = EnrollmentRequest::parse(&body).unwrap();
        assert_eq!(parsed, good);
        assert_eq!(checked.key_sha256, key_sha256(&key.public_key_der()));

        let mut long = good.clone();
        long.facts.dmi_serial = Some("x".repeat(300));
        let err = EnrollmentRequest::parse(&serde_json::to_vec(&long).unwrap()).unwrap_err();
        assert!(err.to_string().contains("facts.dmi_serial"), "{err}");
        let mut escape = good.clone();
        escape.facts.dmi_serial = Some("\u{1b}[2J".into());
        assert_eq!(
            EnrollmentRequest::parse(&serde_json::to_vec(&escape).unwrap()),
            Err(RequestError::Control("facts.dmi_serial"))
        );
        let mut many = good.clone();
        many.facts.macs = vec!["m".into(); 65];
        assert!(matches!(
            EnrollmentRequest::parse(&serde_json::to_vec(&many).unwrap()),
            Err(RequestError::TooMany { .. })
        ));
        assert!(matches!(
            EnrollmentRequest::parse(&vec![b' '; MAX_ENROLL_BODY + 1]),
            Err(RequestError::TooLarge(_))
        ));
        assert!(matches!(
            EnrollmentRequest::parse(b"{"),
            Err(RequestError::Json(_))
        ));
    }
}
