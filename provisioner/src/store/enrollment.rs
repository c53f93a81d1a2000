//! An enrollment with a token as one unit of work: the token redeemed, the
//! machine recorded as seen, the certificate and the history written
//! together (issue 16). On PostgreSQL that is one transaction and a few
//! pipelined round trips instead of five store calls (each its own
//! transaction, 20 round trips and two durable commits), which held
//! enrollments to ~400/s.

use std::net::IpAddr;

use levee_pxe::boot::MacAddr;

use super::{check_new_enrollment, Appliance, Result, Store, TokenCheck};

/// What [`Store::enroll_with_token`] records, the certificate already
/// signed for appliance `id` (the one the caller looked up by MAC).
#[derive(Debug, Clone, Copy)]
pub struct TokenEnrollment<'a> {
    pub token_sha256: &'a str,
    pub mac: MacAddr,
    /// Now (Unix seconds).
    pub at: u64,
    /// The address the request came from (a token may be bound to one).
    pub peer: Option<IpAddr>,
    pub id: i64,
    /// sha256 of the signed certificate, and its end of validity.
    pub fingerprint: &'a str,
    pub not_after: u64,
    /// The machine's facts, for the history (`enroll-facts`).
    pub facts: &'a str,
}

/// What [`Store::enroll_with_token`] did.
#[derive(Debug, Clone)]
pub enum TokenEnrolled {
    /// The token was not valid: nothing was written.
    Refused(TokenCheck),
    /// The token was redeemed and the machine recorded as seen, but its row
    /// no longer allows the certificate (it changed since the caller looked:
    /// retired, pending, another key, ...): nothing else was written, and
    /// the caller carries on as after `take_token` and `appliance_seen`.
    Seen(Appliance),
    /// Everything recorded: the appliance now, and the certificate this
    /// enrollment revoked (an armed re-enrollment), if any.
    Issued {
        appliance: Appliance,
        revoked: Option<String>,
    },
}

/// Whether an enrollment with a token may record a new certificate for `a`
/// now (besides the caller's own rule, `issuable`): the row the store
/// locked is the appliance it was signed for and a new enrollment may
/// replace what it holds. Shared by the stores.
pub(crate) fn may_record(
    a: &Appliance,
    e: &TokenEnrollment,
    issuable: &(dyn Fn(&Appliance) -> bool + Sync),
) -> Option<Option<String>> {
    if a.id != e.id || a.revoked_at.is_some() || !issuable(a) {
        return None;
    }
    check_new_enrollment(a, e.at).ok()
}

/// [`Store::enroll_with_token`] from the other store calls, one after
/// another (SQLite: each call is quick and local).
pub(crate) fn in_steps<S: Store + ?Sized>(
    store: &S,
    e: &TokenEnrollment,
    issuable: &(dyn Fn(&Appliance) -> bool + Sync),
) -> Result<TokenEnrolled> {
    let verdict = store.take_token(e.token_sha256, e.mac, e.at, e.peer)?;
    if verdict != TokenCheck::Valid {
        return Ok(TokenEnrolled::Refused(verdict));
    }
    let a = store.appliance_seen(e.mac)?;
    let Some(revoked) = may_record(&a, e, issuable) else {
        return Ok(TokenEnrolled::Seen(a));
    };
    store.add_event(e.mac, "enroll-facts", e.facts)?;
    let appliance = store.record_certificate(e.id, e.fingerprint, e.not_after, true)?;
    Ok(TokenEnrolled::Issued { appliance, revoked })
}
