//! `POST /api/v1/enroll`: a token, a MAC, a certificate request and the
//! machine's facts in; a client certificate from the server CA out.

use std::sync::Arc;

use std::net::IpAddr;

use axum::http::StatusCode;
use levee_proto::csr::CheckedCsr;
use levee_proto::enroll::{EnrollmentRequest, EnrollmentResponse};
use levee_pxe::boot::MacAddr;
use tracing::{debug, info, warn};

use super::ca::{CaError, Issued as IssuedCert, ServerCa};
use super::token;
use crate::store::{
    short_key, Appliance, Issuable, KnownEnrolled, KnownEnrollment, PendingKey, SignedCert, Signer,
    Store, TokenCheck,
};

/// What enrollment needs: the store, the CA, and where the mTLS API is.
#[derive(Clone)]
pub struct EnrollService {
    pub store: Arc<dyn Store>,
    pub ca: Arc<ServerCa>,
    /// Base URL of the `--https` listener; `None` when it is off, and then
    /// nobody can enroll (a certificate would be of no use).
    pub https_url: Option<String>,
    /// Whether unknown machines may enroll and wait, pending, for ops.
    pub allow_pending: bool,
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

fn pending(mac: MacAddr, key: &str) -> Refusal {
    let approve = format!(
        "levee appliance approve {mac} --customer NAME --fingerprint {}",
        short_key(key)
    );
    Refusal {
        status: StatusCode::ACCEPTED,
        message: format!(
            "appliance {mac} is waiting for approval: ops must run `{approve}`; keep retrying with the same key"
        ),
        approve: Some(approve),
    }
}

impl EnrollService {
    /// Checks and answers an enrollment (its request already parsed and its
    /// certificate request checked: [`EnrollmentRequest::parse`]) from
    /// `peer` at time `now` (Unix seconds). Blocks on the store: call it off
    /// the async runtime. Every refusal is logged once here with the MAC
    /// and the reason.
    ///
    /// ACME-like: a valid token from a machine ops has not approved is
    /// redeemed once and the hash of the request's public key is kept; the
    /// machine then retries with a request for the same key, answered 202
    /// (pending) until it is approved and then with its certificate, no new
    /// token (and so no reboot) needed. The first key is kept: another key
    /// for that MAC is refused as a conflict.
    pub fn enroll(
        &self,
        req: &EnrollmentRequest,
        csr: &CheckedCsr,
        peer: Option<IpAddr>,
        now: u64,
    ) -> Result<EnrollmentResponse, Refusal> {
        let mac: MacAddr = req.mac.parse().map_err(|e| {
            let r = refusal(
                StatusCode::BAD_REQUEST,
                format!("bad MAC `{}`: {e}", req.mac),
            );
            warn!(mac = %req.mac, reason = %r.message, "enrollment refused");
            crate::metrics::enrollment("refused");
            r
        })?;
        let result = self.check_and_issue(mac, req, csr, peer, now);
        match &result {
            Ok(resp) => {
                crate::metrics::enrollment("issued");
                info!(%mac, appliance = resp.appliance_id, "enrolled")
            }
            // Retries every few seconds: logged at debug, recorded once
            // (when the key is kept, by the store).
            Err(r) if r.is_pending() => {
                crate::metrics::enrollment("pending");
                debug!(%mac, "enrollment pending approval")
            }
            Err(r) => {
                crate::metrics::enrollment("refused");
                warn!(%mac, peer = ?peer, reason = %r.message, "enrollment refused");
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
        csr: &CheckedCsr,
        peer: Option<IpAddr>,
        now: u64,
    ) -> Result<EnrollmentResponse, Refusal> {
        let https_url = self.https_url.clone().ok_or_else(|| {
            refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "this server has no --https listener, so it does not enroll machines",
            )
        })?;
        let forbidden = |m: &str| refusal(StatusCode::FORBIDDEN, m);
        let key = csr.key_sha256.as_str();
        let retired = |a: &Appliance| {
            forbidden(&format!(
                "appliance {mac} (id {}) is retired; its credential is revoked",
                a.id
            ))
        };
        // The common case first, a known machine whose row allows a
        // certificate now: looked up, token redeemed, signed and recorded
        // in one store call (on PostgreSQL one transaction of two round
        // trips). Anything else wrote nothing, and goes the general way.
        let seen = match self.enroll_known(mac, req, csr, peer, now)? {
            KnownEnrolled::Issued {
                appliance,
                revoked,
                cert,
            } => {
                let signed = IssuedCert {
                    pem: cert.pem,
                    fingerprint: cert.fingerprint,
                    not_after_unix: i64::try_from(cert.not_after).unwrap_or(i64::MAX),
                };
                return Ok(self.answer(&appliance, signed, revoked, csr, https_url, now));
            }
            KnownEnrolled::Refused(verdict) => return Err(token_refusal(verdict)),
            KnownEnrolled::SignFailed(m) => return Err(internal(m)),
            KnownEnrolled::Seen(a) => Some(a),
            KnownEnrolled::NotIssuable => None,
        };
        let seen = match seen {
            Some(a) => a,
            None => {
                let known = self.store.appliance(mac).map_err(store_failure)?;
                if let Some(a) = &known {
                    if a.revoked_at.is_some() {
                        return Err(retired(a));
                    }
                }
                // The retry of a pending machine: the key it proved with a token.
                if let Some(a) = known
                    .as_ref()
                    .filter(|a| a.pending_key.as_deref() == Some(key))
                {
                    if !a.approved() {
                        return Err(pending(mac, key));
                    }
                    return self.issue(a, req, csr, https_url, now);
                }
                // Anything else needs a token, and a machine that may enroll: a
                // token never replaces a live certificate unless ops armed it.
                match &known {
                    Some(a) => a
                        .may_enroll(self.allow_pending, now)
                        .map_err(|m| forbidden(&m))?,
                    None if !self.allow_pending => {
                        return Err(forbidden(&format!(
                            "{mac} is not registered and this server does not take pending enrollments: `levee appliance register --mac {mac} --customer NAME`"
                        )))
                    }
                    None => {}
                }
                let verdict = token::redeem(self.store.as_ref(), &req.token, mac, now, peer)
                    .map_err(store_failure)?;
                if verdict != TokenCheck::Valid {
                    return Err(token_refusal(verdict));
                }
                // Seen: a machine that enrolls unannounced is recorded as pending.
                self.store.appliance_seen(mac).map_err(store_failure)?
            }
        };
        let a = seen;
        if a.revoked_at.is_some() {
            return Err(retired(&a));
        }
        a.may_enroll(self.allow_pending, now)
            .map_err(|m| forbidden(&m))?;
        if a.pending_key.is_some() || !a.approved() {
            let (a, kept) = self
                .store
                .keep_pending_key(a.id, key)
                .map_err(store_failure)?;
            return match kept {
                PendingKey::Conflict => {
                    let kept = a.pending_key.as_deref().map(short_key).unwrap_or_default();
                    Err(refusal(
                        StatusCode::CONFLICT,
                        format!(
                            "another key ({kept}) is already waiting for approval as {mac}: this key ({}) is refused and recorded as a conflict; ops decides with `levee appliance approve {mac} --customer NAME --fingerprint FINGERPRINT`",
                            short_key(key)
                        ),
                    ))
                }
                // A key kept by an approval: enrolled with its own
                // request, tokenless, at the next retry.
                _ if a.approved() => self.issue(&a, req, csr, https_url, now),
                _ => {
                    info!(%mac, appliance = a.id, key = %short_key(key), "enrollment pending approval: key kept");
                    Err(pending(mac, key))
                }
            };
        }
        self.issue(&a, req, csr, https_url, now)
    }

    /// [`Store::enroll_known`] for this request: the key of its checked
    /// certificate request (a bad one is the machine's fault, 400), signed
    /// for the appliance's id once the store has it.
    fn enroll_known(
        &self,
        mac: MacAddr,
        req: &EnrollmentRequest,
        csr: &CheckedCsr,
        peer: Option<IpAddr>,
        now: u64,
    ) -> Result<KnownEnrolled, Refusal> {
        let request = ServerCa::client_request(csr).map_err(|e| match e {
            CaError::BadCsr(_) | CaError::Csr(_) => refusal(StatusCode::BAD_REQUEST, e.to_string()),
            other => internal(other),
        })?;
        let ca = self.ca.clone();
        let sign: Signer = Box::new(move |id| {
            let c = ca.sign_client(request, id).map_err(|e| e.to_string())?;
            Ok(SignedCert {
                pem: c.pem,
                fingerprint: c.fingerprint,
                not_after: u64::try_from(c.not_after_unix).unwrap_or(0),
            })
        });
        let allow_pending = self.allow_pending;
        let rule: Issuable = Arc::new(move |a: &Appliance| issuable(a, allow_pending, now));
        let e = KnownEnrollment {
            token_sha256: token::token_hash(&req.token),
            mac,
            at: now,
            peer: peer.map(token::canonical),
            facts: facts_detail(req),
        };
        self.store
            .enroll_known(&e, rule, sign)
            .map_err(record_failure)
    }

    /// Signs the request for appliance `a`.
    fn sign(&self, a: &Appliance, req: &EnrollmentRequest) -> Result<IssuedCert, Refusal> {
        self.ca
            .issue_client(&req.csr_pem, a.id)
            .map_err(|e| match e {
                CaError::BadCsr(_) | CaError::Csr(_) => {
                    refusal(StatusCode::BAD_REQUEST, e.to_string())
                }
                other => internal(other),
            })
    }

    /// The answer to an enrollment whose certificate is recorded; a
    /// re-enrollment's revocation of the old one is logged at warn.
    fn answer(
        &self,
        a: &Appliance,
        signed: IssuedCert,
        revoked: Option<String>,
        csr: &CheckedCsr,
        https_url: String,
        now: u64,
    ) -> EnrollmentResponse {
        let mac = a.mac;
        if let Some(old) = &revoked {
            warn!(%mac, appliance = a.id, certificate = %old, "re-enrollment: old certificate revoked");
            warn!(%mac, appliance = a.id, certificate = %signed.fingerprint, key = %short_key(&csr.key_sha256), "re-enrollment: new certificate issued");
        }
        EnrollmentResponse {
            certificate_pem: signed.pem,
            ca_pem: self.ca.pem().to_string(),
            https_url,
            appliance_id: a.id,
            server_time_unix: now as i64,
        }
    }

    /// Signs the request for appliance `a` and records the certificate
    /// (the enrollments that need no token or kept a pending key).
    fn issue(
        &self,
        a: &Appliance,
        req: &EnrollmentRequest,
        csr: &CheckedCsr,
        https_url: String,
        now: u64,
    ) -> Result<EnrollmentResponse, Refusal> {
        let signed = self.sign(a, req)?;
        self.store
            .add_event(a.mac, "enroll-facts", &facts_detail(req))
            .map_err(store_failure)?;
        let not_after = u64::try_from(signed.not_after_unix).unwrap_or(0);
        self.store
            .record_certificate(a.id, &signed.fingerprint, not_after, true)
            .map_err(record_failure)?;
        let revoked = a.cert_fingerprint.clone();
        Ok(self.answer(a, signed, revoked, csr, https_url, now))
    }
}

/// Whether a token enrollment of `a` would end in a certificate now,
/// with no pending key to keep first.
fn issuable(a: &Appliance, allow_pending: bool, now: u64) -> bool {
    a.revoked_at.is_none()
        && a.pending_key.is_none()
        && a.approved()
        && a.may_enroll(allow_pending, now).is_ok()
}

/// The machine's facts, for its history.
fn facts_detail(req: &EnrollmentRequest) -> String {
    let facts = &req.facts;
    format!(
        "facts: dmi serial {}, dmi uuid {}, macs {}, {} disk(s)",
        facts.dmi_serial.as_deref().unwrap_or("-"),
        facts.dmi_uuid.as_deref().unwrap_or("-"),
        facts.macs.join(","),
        facts.disks.len()
    )
}

/// Why a token that is not valid refuses the enrollment.
fn token_refusal(verdict: TokenCheck) -> Refusal {
    let again = "boot the machine again for a fresh one";
    let message = match verdict {
        TokenCheck::Valid => return internal("a valid token was refused"),
        TokenCheck::Unknown => format!("unknown or superseded enrollment token: {again}"),
        TokenCheck::Used => format!("enrollment token already used: {again}"),
        TokenCheck::Expired => format!("enrollment token expired: {again}"),
        TokenCheck::OtherMac => "enrollment token was issued for another machine".into(),
        TokenCheck::OtherAddress => "enrollment token is bound to the address this server leased the machine, and was presented from another".into(),
    };
    refusal(StatusCode::FORBIDDEN, message)
}

/// Recording the certificate failed: the store's reason for refusing it
/// (a retired appliance, a live certificate) as 403, else as any store
/// failure (503 while the database is out of reach).
fn record_failure(e: crate::store::StoreError) -> Refusal {
    match e {
        crate::store::StoreError::Invalid(reason) => refusal(StatusCode::FORBIDDEN, reason),
        e => store_failure(e),
    }
}
