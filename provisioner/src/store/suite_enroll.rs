//! Store suite case for an enrollment with a token as one unit (run by
//! `suite.rs`'s `cases!` on SQLite and PostgreSQL).

use super::{customer, mac, register_for};
use crate::store::*;

fn steps(s: &dyn Store, n: u8) -> Vec<String> {
    s.events(mac(n), 50)
        .expect("events")
        .into_iter()
        .map(|e| e.step)
        .collect()
}

fn enroll(
    s: &dyn Store,
    a: &Appliance,
    token: &str,
    fingerprint: &str,
    issuable: bool,
) -> TokenEnrolled {
    let e = TokenEnrollment {
        token_sha256: token,
        mac: a.mac,
        at: now(),
        peer: None,
        id: a.id,
        fingerprint,
        not_after: now() + 1000,
        facts: "facts: 1 disk(s)",
    };
    s.enroll_with_token(&e, &|_| issuable).expect("enroll")
}

pub(super) fn an_enrollment_with_a_token_is_one_unit(s: &dyn Store) {
    s.put_customer(&customer("acme", "5m")).expect("customer");
    let a = register_for(s, 80, "acme");
    let fresh = |t: &str| s.put_token(t, a.mac, now() + 900, None).expect("token");
    // A token that is not valid writes nothing.
    fresh("t1");
    assert!(matches!(
        enroll(s, &a, "zz", "f0", true),
        TokenEnrolled::Refused(TokenCheck::Unknown)
    ));
    assert_eq!(steps(s, 80), ["registered"]);
    assert_eq!(
        s.appliance(a.mac).expect("get").expect("there").last_seen,
        None
    );
    // Token, sighting, certificate and history, together.
    let TokenEnrolled::Issued { appliance, revoked } = enroll(s, &a, "t1", "f1", true) else {
        panic!("not issued")
    };
    assert_eq!(revoked, None);
    assert_eq!(appliance.state, ApplianceState::Enrolled);
    assert_eq!(appliance.cert_fingerprint.as_deref(), Some("f1"));
    assert!(appliance.last_seen.is_some());
    assert_eq!(steps(s, 80), ["registered", "enroll-facts", "enrolled"]);
    assert!(matches!(
        enroll(s, &a, "t1", "f9", true),
        TokenEnrolled::Refused(TokenCheck::Used)
    ));
    // A live certificate is not replaced unless ops armed it: the token
    // is used up, nothing else changes.
    fresh("t2");
    let TokenEnrolled::Seen(seen) = enroll(s, &a, "t2", "evil", true) else {
        panic!("issued over a live certificate")
    };
    assert_eq!(seen.cert_fingerprint.as_deref(), Some("f1"));
    assert_eq!(
        s.take_token("t2", a.mac, now(), None).expect("take"),
        TokenCheck::Used
    );
    // Armed: the old certificate is revoked, in the history too.
    s.set_reenroll(a.id, true).expect("arm");
    fresh("t3");
    let TokenEnrolled::Issued { appliance, revoked } = enroll(s, &a, "t3", "f2", true) else {
        panic!("armed re-enrollment not issued")
    };
    assert_eq!(revoked.as_deref(), Some("f1"));
    assert_eq!(
        (appliance.cert_fingerprint.as_deref(), appliance.reenroll),
        (Some("f2"), false)
    );
    assert!(steps(s, 80).ends_with(&[
        "enroll-facts".into(),
        "cert-revoked".into(),
        "reenrolled".into()
    ]));
    // The caller's own rule, another appliance's id, a retired one: the
    // token is redeemed and the machine seen, no certificate recorded.
    s.set_reenroll(a.id, true).expect("arm");
    fresh("t4");
    assert!(matches!(
        enroll(s, &a, "t4", "f3", false),
        TokenEnrolled::Seen(_)
    ));
    let other = Appliance {
        id: a.id + 100,
        ..a.clone()
    };
    fresh("t5");
    assert!(matches!(
        enroll(s, &other, "t5", "f3", true),
        TokenEnrolled::Seen(_)
    ));
    s.retire_appliance(a.id, "stolen").expect("retire");
    fresh("t6");
    let TokenEnrolled::Seen(seen) = enroll(s, &a, "t6", "f3", true) else {
        panic!("a retired appliance got a certificate")
    };
    assert!(seen.revoked_at.is_some());
    assert_eq!(seen.cert_fingerprint.as_deref(), Some("f2"));
}

/// Recovery rows: an appliance's key and sealed slot, a later upload
/// without a slot keeping the stored one, a grant beside them, and
/// nothing for an appliance that published nothing.
pub(super) fn recovery_rows_keep_keys_slots_and_grants(s: &dyn Store) {
    let a = s.appliance_seen(mac(70)).expect("seen");
    let b = s.appliance_seen(mac(71)).expect("seen");
    assert_eq!(s.recovery(a.id).expect("none"), None);
    s.put_recovery(a.id, "x25519:aa", Some(("r1", "levee-sealed-1:01")))
        .expect("put");
    s.put_recovery(a.id, "x25519:bb", None).expect("key only");
    let r = s.recovery(a.id).expect("get").expect("row");
    assert_eq!(
        (
            r.public_key.as_deref(),
            r.repository.as_deref(),
            r.sealed.as_deref(),
            r.grant.as_ref()
        ),
        (
            Some("x25519:bb"),
            Some("r1"),
            Some("levee-sealed-1:01"),
            None
        )
    );
    // A grant for b before b published anything, then b's key: both kept.
    s.put_recovery_grant(b.id, a.id, "r1", "levee-sealed-1:02")
        .expect("grant");
    s.put_recovery(b.id, "x25519:cc", None).expect("b's key");
    let r = s.recovery(b.id).expect("get").expect("row");
    let g = r.grant.expect("grant");
    assert_eq!(
        (
            r.public_key.as_deref(),
            g.from,
            g.repository.as_str(),
            g.sealed.as_str()
        ),
        (Some("x25519:cc"), a.id, "r1", "levee-sealed-1:02")
    );
    s.put_recovery_grant(b.id, a.id, "r1", "levee-sealed-1:03")
        .expect("again");
    let g = s
        .recovery(b.id)
        .expect("get")
        .expect("row")
        .grant
        .expect("grant");
    assert_eq!(g.sealed, "levee-sealed-1:03");
    assert!(s.recovery(a.id).expect("a").expect("row").grant.is_none());
}
