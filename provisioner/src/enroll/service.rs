//! `POST /api/v1/enroll`: a token, a MAC, a certificate request and the
//! machine's facts in; a client certificate from the server CA out.

use std::sync::Arc;

use axum::http::StatusCode;
use levee_proto::enroll::{EnrollmentRequest, EnrollmentResponse};
use levee_pxe::boot::MacAddr;
use tracing::{info, warn};

use super::ca::{CaError, ServerCa};
use super::token;
use crate::store::{Store, TokenCheck};

/// What enrollment needs: the store, the CA, and where the mTLS API is.
#[derive(Clone)]
pub struct EnrollService {
    pub store: Arc<dyn Store>,
    pub ca: Arc<ServerCa>,
    /// Base URL of the `--https` listener; `None` when it is off, and then
    /// nobody can enroll (a certificate would be of no use).
    pub https_url: Option<String>,
}

/// Why an enrollment was refused: the HTTP status and a message for the
/// machine's console and the server log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

fn refusal(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    refusal(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("server error: {e}"),
    )
}

impl EnrollService {
    /// Checks and answers an enrollment at time `now` (Unix seconds). Blocks
    /// on the store: call it off the async runtime. Every refusal is logged
    /// once here with the MAC and the reason.
    pub fn enroll(&self, req: &EnrollmentRequest, now: u64) -> Result<EnrollmentResponse, Refusal> {
        let mac: MacAddr = req.mac.parse().map_err(|e| {
            let r = refusal(
                StatusCode::BAD_REQUEST,
                format!("bad MAC `{}`: {e}", req.mac),
            );
            warn!(mac = %req.mac, reason = %r.message, "enrollment refused");
            r
        })?;
        let result = self.check_and_issue(mac, req, now);
        match &result {
            Ok(resp) => info!(%mac, appliance = resp.appliance_id, "enrolled"),
            Err(r) => {
                warn!(%mac, reason = %r.message, "enrollment refused");
                if let Err(e) = self.store.add_event(mac, "enroll-refused", &r.message) {
                    warn!(%mac, error = %e, "could not record enrollment refusal");
                }
            }
        }
        result
    }

    fn check_and_issue(
        &self,
        mac: MacAddr,
        req: &EnrollmentRequest,
        now: u64,
    ) -> Result<EnrollmentResponse, Refusal> {
        let https_url = self.https_url.clone().ok_or_else(|| {
            refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "this server has no --https listener, so it does not enroll machines",
            )
        })?;
        let verdict = token::redeem(self.store.as_ref(), &req.token, mac, now).map_err(internal)?;
        let forbidden = |m: &str| refusal(StatusCode::FORBIDDEN, m);
        match verdict {
            TokenCheck::Valid => {}
            TokenCheck::Unknown => {
                return Err(forbidden(
                    "unknown enrollment token: boot the machine again for a fresh one",
                ))
            }
            TokenCheck::Used => {
                return Err(forbidden(
                    "enrollment token already used: boot the machine again for a fresh one",
                ))
            }
            TokenCheck::Expired => {
                return Err(forbidden(
                    "enrollment token expired: boot the machine again for a fresh one",
                ))
            }
            TokenCheck::OtherMac => {
                return Err(forbidden("enrollment token was issued for another machine"))
            }
        }
        // Seen: a machine that enrolls unannounced is recorded as pending.
        let appliance = self.store.appliance_seen(mac).map_err(internal)?;
        if appliance.revoked_at.is_some() {
            return Err(forbidden(&format!(
                "appliance {mac} (id {}) is retired; its credential is revoked",
                appliance.id
            )));
        }
        if !appliance.approved() {
            return Err(forbidden(&format!(
                "appliance {mac} is not approved: it stays pending until ops runs `levee appliance approve {mac} --customer NAME`; then boot it again"
            )));
        }
        let facts = &req.facts;
        let detail = format!(
            "facts: dmi serial {}, dmi uuid {}, macs {}, {} disk(s)",
            facts.dmi_serial.as_deref().unwrap_or("-"),
            facts.dmi_uuid.as_deref().unwrap_or("-"),
            facts.macs.join(","),
            facts.disks.len()
        );
        let issued = self
            .ca
            .issue_client(&req.csr_pem, appliance.id)
            .map_err(|e| match e {
                CaError::BadCsr(_) => refusal(StatusCode::BAD_REQUEST, e.to_string()),
                other => internal(other),
            })?;
        self.store
            .add_event(mac, "enroll-facts", &detail)
            .map_err(internal)?;
        let not_after = u64::try_from(issued.not_after_unix).unwrap_or(0);
        self.store
            .record_certificate(appliance.id, &issued.fingerprint, not_after, true)
            .map_err(|e| refusal(StatusCode::FORBIDDEN, e.to_string()))?;
        Ok(EnrollmentResponse {
            certificate_pem: issued.pem,
            ca_pem: self.ca.pem().to_string(),
            https_url,
            appliance_id: appliance.id,
            server_time_unix: now as i64,
        })
    }
}
