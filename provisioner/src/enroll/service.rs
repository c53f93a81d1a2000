//! `POST /api/v1/enroll`: a token, a MAC, a certificate request and the
//! machine's facts in; a client certificate from the server CA out.

use std::sync::Arc;

use axum::http::StatusCode;
use levee_proto::enroll::{EnrollmentRequest, EnrollmentResponse};
use levee_pxe::boot::MacAddr;
use tracing::{debug, info, warn};

use super::ca::{self, CaError, ServerCa};
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

/// Why an enrollment was not answered with a certificate: the HTTP status
/// and a message for the machine's console and the server log. A pending
/// machine gets 202 Accepted and `approve`, the command ops must type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
    /// Set for 202 (pending approval).
    pub approve: Option<String>,
}

impl Refusal {
    /// Waiting for approval (not an error).
    pub fn is_pending(&self) -> bool {
        self.status == StatusCode::ACCEPTED
    }
}

fn refusal(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
        approve: None,
    }
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    refusal(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("server error: {e}"),
    )
}

/// A store failure: 503 while the database is out of reach (the agent
/// retries), else 500.
fn store_failure(e: crate::store::StoreError) -> Refusal {
    refusal(e.http_status(), format!("server error: {e}"))
}

fn pending(mac: MacAddr) -> Refusal {
    let approve = format!("levee appliance approve {mac} --customer NAME");
    Refusal {
        status: StatusCode::ACCEPTED,
        message: format!(
            "appliance {mac} is waiting for approval: ops must run `{approve}`; keep retrying with the same key"
        ),
        approve: Some(approve),
    }
}

impl EnrollService {
    /// Checks and answers an enrollment at time `now` (Unix seconds). Blocks
    /// on the store: call it off the async runtime. Every refusal is logged
    /// once here with the MAC and the reason.
    ///
    /// ACME-like: a valid token from a machine ops has not approved is
    /// redeemed once and the hash of the request's public key is kept; the
    /// machine then retries with a request for the same key, answered 202
    /// (pending) until it is approved and then with its certificate, no new
    /// token (and so no reboot) needed.
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
            // Retries every few seconds: logged at debug, recorded once
            // (when the key is kept, by the store).
            Err(r) if r.is_pending() => debug!(%mac, "enrollment pending approval"),
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
        let forbidden = |m: &str| refusal(StatusCode::FORBIDDEN, m);
        let key = ca::csr_key_sha256(&req.csr_pem)
            .map_err(|e| refusal(StatusCode::BAD_REQUEST, e.to_string()))?;
        let retired = |a: &crate::store::Appliance| {
            forbidden(&format!(
                "appliance {mac} (id {}) is retired; its credential is revoked",
                a.id
            ))
        };
        let known = self.store.appliance(mac).map_err(store_failure)?;
        if let Some(a) = &known {
            if a.revoked_at.is_some() {
                return Err(retired(a));
            }
        }
        // The retry of a pending machine: the key it proved with a token.
        let appliance = match known.filter(|a| a.pending_key.as_deref() == Some(key.as_str())) {
            Some(a) if a.approved() => a,
            Some(_) => return Err(pending(mac)),
            None => {
                let verdict = token::redeem(self.store.as_ref(), &req.token, mac, now)
                    .map_err(store_failure)?;
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
                let a = self.store.appliance_seen(mac).map_err(store_failure)?;
                if a.revoked_at.is_some() {
                    return Err(retired(&a));
                }
                if !a.approved() {
                    self.store
                        .set_pending_key(a.id, &key)
                        .map_err(store_failure)?;
                    info!(%mac, appliance = a.id, "enrollment pending approval: key kept");
                    return Err(pending(mac));
                }
                a
            }
        };
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
            .map_err(store_failure)?;
        let not_after = u64::try_from(issued.not_after_unix).unwrap_or(0);
        self.store
            .record_certificate(appliance.id, &issued.fingerprint, not_after, true)
            .map_err(|e| match e {
                e if e.is_unavailable() => store_failure(e),
                e => refusal(StatusCode::FORBIDDEN, e.to_string()),
            })?;
        Ok(EnrollmentResponse {
            certificate_pem: issued.pem,
            ca_pem: self.ca.pem().to_string(),
            https_url,
            appliance_id: appliance.id,
            server_time_unix: now as i64,
        })
    }
}
