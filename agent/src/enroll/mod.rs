//! The appliance's side of enrollment and of the mutual-TLS API.
//!
//! Plain HTTP (`levee.url=`) carries only what has to come before a
//! credential: the enrollment itself (token + the CSR of a key made here).
//! Everything after goes through mutual TLS, trusting the one server CA
//! certificate pinned by `levee.ca=` at enrollment: [`MtlsClient`], and
//! [`server_clock`], the authenticated time the clock is set from.
//!
//! The pieces are plain functions; the daemon (`crate::daemon`) drives them
//! and does the logging and retrying.
//!
//! ```
//! use levee_agent::enroll::{clock_correction, renewal_due};
//! // Off by 10 s: set the clock to the server's.
//! assert_eq!(clock_correction(1_000, 1_010), Some(1_010));
//! // A 90-day certificate is renewed in its last 30 days.
//! assert!(!renewal_due(0, 90 * 86_400, 59 * 86_400));
//! assert!(renewal_due(0, 90 * 86_400, 61 * 86_400));
//! ```

mod clock;
mod credential;
mod keys;
mod mtls;
mod plain;
mod timesync;

pub use clock::{authenticated_step, clock_correction, set_system_clock, unix_now, ClockError};
pub use credential::{
    cert_validity, renewal_due, write_atomic, Credential, CredentialError, ServerInfo,
};
pub use keys::NewKey;
pub use mtls::{ConfigFetch, MtlsClient, CONFIG_CACHE};
pub use plain::{ca_sha256, check_ca, request_enrollment, single_certificate, Attempt};
pub use timesync::{server_clock, ServerClock};

/// Errors of the enrollment client and the mTLS API.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The server answered with a refusal (403 for a used or expired token,
    /// a retired machine, ...): retrying the same request will not help.
    #[error("{url}: refused (HTTP {status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// The server could not be reached or answered oddly: worth a retry.
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("the server's CA certificate has sha256 {got}, but levee.ca= says {expected}: refusing to trust this server")]
    CaMismatch { expected: String, got: String },
    #[error(
        "the server's CA is not exactly one certificate ({reason}): refusing to trust this server"
    )]
    CaNotSingle { reason: String },
    #[error("{0}")]
    Key(String),
    #[error(transparent)]
    Credential(#[from] CredentialError),
}

impl EnrollError {
    /// Whether a later retry of the same request may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            EnrollError::Transport { .. } => true,
            EnrollError::Refused { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// The agent's client builder with enrollment's timeout.
fn client_builder() -> reqwest::blocking::ClientBuilder {
    crate::http_client::blocking(std::time::Duration::from_secs(15))
}

/// Turns a non-2xx response into [`EnrollError::Refused`] with the server's
/// `error` message when it sent one.
fn refusal(url: &str, resp: reqwest::blocking::Response) -> EnrollError {
    let status = resp.status().as_u16();
    let body = resp.text().unwrap_or_default();
    let message = serde_json::from_str::<levee_proto::enroll::ApiError>(&body)
        .map(|e| e.error)
        .unwrap_or_else(|_| body.chars().take(200).collect());
    EnrollError::Refused {
        url: url.to_string(),
        status,
        message,
    }
}

fn transport(url: &str, e: impl std::fmt::Display) -> EnrollError {
    EnrollError::Transport {
        url: url.to_string(),
        reason: e.to_string(),
    }
}
