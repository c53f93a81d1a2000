//! An enrollment with a token of a machine the store knows, as one unit of
//! work: the machine looked up, the token redeemed, the certificate signed
//! and recorded with the sighting and the history, together (issue 16).
//! On PostgreSQL that is one transaction of two pipelined round trips, run
//! as one task beside its connection ([`Store::enroll_known`]), where it
//! was five store calls (20 round trips, two durable commits), then one
//! lookup and a transaction of five round trips driven across threads
//! (~400-500 enrollments/s).

use std::net::IpAddr;
use std::sync::Arc;

use levee_pxe::boot::MacAddr;

use super::{check_new_enrollment, Appliance, Result, Store, TokenCheck};

/// What [`Store::enroll_known`] is asked to record.
#[derive(Debug, Clone)]
pub struct KnownEnrollment {
    /// sha256 (hex) of the token the machine presented.
    pub token_sha256: String,
    pub mac: MacAddr,
    /// Now (Unix seconds).
    pub at: u64,
    /// The address the request came from (a token may be bound to one).
    pub peer: Option<IpAddr>,
    /// The machine's facts, for the history (`enroll-facts`).
    pub facts: String,
}

/// The caller's rule: whether a token enrollment of this appliance ends in
/// a certificate now (approved, not pending, not retired, ...).
pub type Issuable = Arc<dyn Fn(&Appliance) -> bool + Send + Sync>;

/// Signs the certificate for the appliance with this id (it is in the
/// certificate); `Err`: why it could not (the server's fault).
pub type Signer = Box<dyn FnOnce(i64) -> std::result::Result<SignedCert, String> + Send>;

/// A signed certificate, as [`Store::enroll_known`] records and returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCert {
    pub pem: String,
    /// sha256 of the certificate (hex), and its end of validity.
    pub fingerprint: String,
    pub not_after: u64,
}

/// What [`Store::enroll_known`] did.
#[derive(Debug, Clone)]
pub enum KnownEnrolled {
    /// The machine is unknown, or its row does not allow a certificate by
    /// token now (retired, pending, a live certificate, the caller's
    /// rule): nothing was written, the caller takes its general way.
    NotIssuable,
    /// The token was not valid: nothing was written.
    Refused(TokenCheck),
    /// Signing failed: nothing was written.
    SignFailed(String),
    /// The token was redeemed and the machine recorded as seen, but its
    /// row changed between the lookup and the redemption (stores that
    /// cannot lock it first): the caller carries on as after
    /// `take_token` and `appliance_seen`.
    Seen(Appliance),
    /// Everything recorded: the appliance now, the certificate this
    /// enrollment revoked (an armed re-enrollment), if any, and the new one.
    Issued {
        appliance: Appliance,
        revoked: Option<String>,
        cert: SignedCert,
    },
}

/// Whether a token enrollment may record a new certificate for `a` now
/// (besides the caller's rule): it is not retired and a new enrollment
/// may replace what it holds. `Some(revoked)`: yes, revoking that
/// certificate. Shared by the stores.
pub(crate) fn may_record(a: &Appliance, at: u64, issuable: &Issuable) -> Option<Option<String>> {
    if a.revoked_at.is_some() || !issuable(a) {
        return None;
    }
    check_new_enrollment(a, at).ok()
}

/// [`Store::enroll_known`] from the other store calls, one after another
/// (SQLite: each call is quick and local).
pub(crate) fn in_steps<S: Store + ?Sized>(
    store: &S,
    e: &KnownEnrollment,
    issuable: &Issuable,
    sign: Signer,
) -> Result<KnownEnrolled> {
    let Some(known) = store.appliance(e.mac)? else {
        return Ok(KnownEnrolled::NotIssuable);
    };
    if may_record(&known, e.at, issuable).is_none() {
        return Ok(KnownEnrolled::NotIssuable);
    }
    let cert = match sign(known.id) {
        Ok(c) => c,
        Err(m) => return Ok(KnownEnrolled::SignFailed(m)),
    };
    let verdict = store.take_token(&e.token_sha256, e.mac, e.at, e.peer)?;
    if verdict != TokenCheck::Valid {
        return Ok(KnownEnrolled::Refused(verdict));
    }
    let a = store.appliance_seen(e.mac)?;
    let revoked = match may_record(&a, e.at, issuable) {
        Some(revoked) if a.id == known.id => revoked,
        _ => return Ok(KnownEnrolled::Seen(a)),
    };
    store.add_event(e.mac, "enroll-facts", &e.facts)?;
    let appliance = store.record_certificate(a.id, &cert.fingerprint, cert.not_after, true)?;
    Ok(KnownEnrolled::Issued {
        appliance,
        revoked,
        cert,
    })
}
