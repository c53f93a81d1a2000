//! Store suite case for an enrollment with a token as one unit (run by
//! `suite.rs`'s `cases!` on SQLite and PostgreSQL).

use std::sync::Arc;

use super::{customer, mac, register_for};
use crate::store::*;

fn steps(s: &dyn Store, n: u8) -> Vec<String> {
    s.events(mac(n), 50)
        .expect("events")
        .into_iter()
        .map(|e| e.step)
        .collect()
}

/// Enrolls machine `n` with `token`, signing a certificate with
/// fingerprint `fingerprint` (`None`: signing fails) for the id the store
/// found, which must be `want_id`.
fn enroll(
    s: &dyn Store,
    n: u8,
    token: &str,
    fingerprint: Option<&str>,
    issuable: bool,
    want_id: i64,
) -> KnownEnrolled {
    let e = KnownEnrollment {
        token_sha256: token.into(),
        mac: mac(n),
        at: now(),
        peer: None,
        facts: "facts: 1 disk(s)".into(),
    };
    let fingerprint = fingerprint.map(str::to_string);
    let sign: Signer = Box::new(move |id| {
        assert_eq!(id, want_id, "signed for the appliance found by MAC");
        match fingerprint {
            Some(f) => Ok(SignedCert {
                pem: format!("PEM {f}"),
                fingerprint: f,
                not_after: now() + 1000,
            }),
            None => Err("no signing today".into()),
        }
    });
    s.enroll_known(&e, Arc::new(move |_| issuable), sign)
        .expect("enroll")
}

pub(super) fn an_enrollment_with_a_token_is_one_unit(s: &dyn Store) {
    s.put_customer(&customer("acme", "5m")).expect("customer");
    let a = register_for(s, 80, "acme");
    let fresh = |t: &str| s.put_token(t, a.mac, now() + 900, None).expect("token");
    let valid = |t: &str| s.take_token(t, a.mac, now(), None).expect("take") == TokenCheck::Valid;
    // A token that is not valid, or a failed signature, writes nothing.
    fresh("t1");
    assert!(matches!(
        enroll(s, 80, "zz", Some("f0"), true, a.id),
        KnownEnrolled::Refused(TokenCheck::Unknown)
    ));
    assert!(matches!(
        enroll(s, 80, "t1", None, true, a.id),
        KnownEnrolled::SignFailed(m) if m == "no signing today"
    ));
    assert_eq!(steps(s, 80), ["registered"]);
    assert_eq!(
        s.appliance(a.mac).expect("get").expect("there").last_seen,
        None
    );
    // Token, sighting, certificate and history, together.
    let KnownEnrolled::Issued {
        appliance,
        revoked,
        cert,
    } = enroll(s, 80, "t1", Some("f1"), true, a.id)
    else {
        panic!("not issued")
    };
    assert_eq!((revoked, cert.pem.as_str()), (None, "PEM f1"));
    assert_eq!(appliance.state, ApplianceState::Enrolled);
    assert_eq!(appliance.cert_fingerprint.as_deref(), Some("f1"));
    assert!(appliance.last_seen.is_some());
    assert_eq!(steps(s, 80), ["registered", "enroll-facts", "enrolled"]);
    // The token is used up; the machine now holds a live certificate, so
    // a second enrollment is not the common case: nothing is written.
    assert!(matches!(
        enroll(s, 80, "t1", Some("f9"), true, a.id),
        KnownEnrolled::NotIssuable
    ));
    assert_eq!(
        s.take_token("t1", a.mac, now(), None).expect("take"),
        TokenCheck::Used
    );
    // A live certificate is not replaced unless ops armed it: nothing is
    // written, the token stays for the caller's general way.
    fresh("t2");
    assert!(matches!(
        enroll(s, 80, "t2", Some("evil"), true, a.id),
        KnownEnrolled::NotIssuable
    ));
    assert!(valid("t2"), "the token is not used up");
    // Armed: the old certificate is revoked, in the history too.
    s.set_reenroll(a.id, true).expect("arm");
    fresh("t3");
    let KnownEnrolled::Issued {
        appliance, revoked, ..
    } = enroll(s, 80, "t3", Some("f2"), true, a.id)
    else {
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
    // The caller's own rule, an unknown machine, a retired one: nothing.
    s.set_reenroll(a.id, true).expect("arm");
    fresh("t4");
    assert!(matches!(
        enroll(s, 80, "t4", Some("f3"), false, a.id),
        KnownEnrolled::NotIssuable
    ));
    assert!(matches!(
        enroll(s, 81, "t4", Some("f3"), true, a.id),
        KnownEnrolled::NotIssuable
    ));
    s.retire_appliance(a.id, "stolen").expect("retire");
    assert!(matches!(
        enroll(s, 80, "t4", Some("f3"), true, a.id),
        KnownEnrolled::NotIssuable
    ));
    assert!(valid("t4"));
    let a = s.appliance(a.mac).expect("get").expect("there");
    assert_eq!(a.cert_fingerprint.as_deref(), Some("f2"));
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

/// Restore requests: stored as `requested`, given to their appliance only,
/// moved on by it (running, then done or failed, once), a status sent
/// again changes nothing, and another appliance's status finds nothing.
pub(super) fn restore_requests_move_on_once_and_only_for_their_appliance(s: &dyn Store) {
    use levee_proto::restore_api::{RestoreState, RestoreStatus};
    let a = s.appliance_seen(mac(72)).expect("seen");
    let b = s.appliance_seen(mac(73)).expect("seen");
    let r = s
        .add_restore(
            a.id,
            &NewRestore {
                snapshot: "latest",
                path: Some("/finance"),
                target: "smb://10.0.0.1/restore/r1",
                credentials_of: Some("files"),
            },
        )
        .expect("add");
    assert_eq!(
        (r.state.as_str(), r.path.as_deref(), r.started_at),
        ("requested", Some("/finance"), None)
    );
    assert_eq!(s.pending_restores(a.id).expect("pending"), vec![r.clone()]);
    assert!(s.pending_restores(b.id).expect("pending").is_empty());
    let status = |state, reason: Option<&str>| RestoreStatus {
        id: r.id,
        state,
        reason: reason.map(str::to_string),
        files: 3,
        bytes: 300,
        errors: 0,
    };
    // B cannot move A's request.
    assert_eq!(
        s.set_restore_state(b.id, &status(RestoreState::Running, None))
            .expect("b"),
        RestoreMove::NotFound
    );
    let RestoreMove::Moved(running) = s
        .set_restore_state(a.id, &status(RestoreState::Running, None))
        .expect("running")
    else {
        panic!("not moved")
    };
    assert!(running.state == "running" && running.started_at.is_some());
    assert_eq!(s.pending_restores(a.id).expect("pending").len(), 1);
    let RestoreMove::Moved(done) = s
        .set_restore_state(a.id, &status(RestoreState::Done, None))
        .expect("done")
    else {
        panic!("not moved")
    };
    assert_eq!(
        (done.state.as_str(), done.files, done.bytes),
        ("done", 3, 300)
    );
    assert!(done.ended_at.is_some());
    assert!(s.pending_restores(a.id).expect("pending").is_empty());
    // Sent again: the same; a different end: refused, nothing changed.
    assert_eq!(
        s.set_restore_state(a.id, &status(RestoreState::Done, None))
            .expect("again"),
        RestoreMove::Moved(done.clone())
    );
    assert_eq!(
        s.set_restore_state(a.id, &status(RestoreState::Failed, Some("late")))
            .expect("late"),
        RestoreMove::Refused(done.clone())
    );
    assert_eq!(
        s.set_restore_state(a.id, &status(RestoreState::Running, None))
            .expect("late"),
        RestoreMove::Refused(done.clone())
    );
    assert_eq!(s.restores(a.id, 10).expect("list"), vec![done]);
}

/// Withdrawing restore requests: a `requested` one is `cancelled` at once
/// (never given to the appliance again), a `running` one `cancelling`
/// (given with `cancel`, progress reports keep it so) until the appliance
/// says `cancelled` (or ends first); a finished one refuses, naming its
/// state, and an appliance cannot set ops' states or cancel what it never
/// started.
pub(super) fn restore_requests_are_withdrawn_or_stopped_and_refuse_impossible_moves(s: &dyn Store) {
    use levee_proto::restore_api::{RestoreState, RestoreStatus};
    let a = s.appliance_seen(mac(74)).expect("seen");
    let b = s.appliance_seen(mac(75)).expect("seen");
    let add = || {
        s.add_restore(
            a.id,
            &NewRestore {
                snapshot: "latest",
                path: None,
                target: "/srv/restore",
                credentials_of: None,
            },
        )
        .expect("add")
    };
    let status = |id, state, files| RestoreStatus {
        id,
        state,
        reason: None,
        files,
        bytes: files * 100,
        errors: 0,
    };
    let state_of = |m: RestoreMove| match m {
        RestoreMove::Moved(r) => format!("moved {}", r.state),
        RestoreMove::Refused(r) => format!("refused {}", r.state),
        RestoreMove::NotFound => "not found".into(),
    };

    // Withdrawn before it started: cancelled, with who and why; gone from
    // the appliance's list; its late `running` is refused.
    let early = add();
    assert_eq!(
        state_of(s.cancel_restore(b.id, early.id, "olga").expect("b")),
        "not found"
    );
    let RestoreMove::Moved(w) = s.cancel_restore(a.id, early.id, "olga").expect("cancel") else {
        panic!("not withdrawn")
    };
    assert_eq!(w.state, "cancelled");
    assert_eq!(w.cancel_asked_by.as_deref(), Some("olga"));
    assert!(w.cancel_asked_at.is_some() && w.ended_at.is_some() && w.started_at.is_none());
    assert!(w
        .reason
        .as_deref()
        .unwrap_or("")
        .contains("before the appliance started it"));
    assert!(s.pending_restores(a.id).expect("pending").is_empty());
    for late in [
        RestoreState::Running,
        RestoreState::Done,
        RestoreState::Failed,
    ] {
        assert_eq!(
            state_of(
                s.set_restore_state(a.id, &status(early.id, late, 0))
                    .expect("late")
            ),
            "refused cancelled",
            "{late:?}"
        );
    }
    assert_eq!(
        state_of(s.cancel_restore(a.id, early.id, "olga").expect("again")),
        "refused cancelled"
    );

    // Asked to stop while it runs: cancelling, handed to the appliance
    // with `cancel`; a progress report keeps it cancelling and takes the
    // counts; `cancelled` from the appliance ends it.
    let run = add();
    assert_eq!(
        state_of(
            s.set_restore_state(a.id, &status(run.id, RestoreState::Cancelled, 0))
                .expect("c")
        ),
        "refused requested",
        "an appliance cannot cancel what it never started"
    );
    s.set_restore_state(a.id, &status(run.id, RestoreState::Running, 1))
        .expect("running");
    assert_eq!(
        state_of(s.cancel_restore(a.id, run.id, "olga").expect("stop")),
        "moved cancelling"
    );
    assert_eq!(
        state_of(s.cancel_restore(a.id, run.id, "olga").expect("stop again")),
        "moved cancelling"
    );
    let pending = s.pending_restores(a.id).expect("pending");
    assert_eq!(pending.len(), 1);
    assert!(pending[0].request().cancel);
    let RestoreMove::Moved(p) = s
        .set_restore_state(a.id, &status(run.id, RestoreState::Running, 7))
        .expect("progress")
    else {
        panic!("progress refused")
    };
    assert_eq!((p.state.as_str(), p.files), ("cancelling", 7));
    for ops_only in [RestoreState::Requested, RestoreState::Cancelling] {
        assert_eq!(
            state_of(
                s.set_restore_state(a.id, &status(run.id, ops_only, 0))
                    .expect("ops")
            ),
            "refused cancelling"
        );
    }
    let RestoreMove::Moved(c) = s
        .set_restore_state(a.id, &status(run.id, RestoreState::Cancelled, 9))
        .expect("cancelled")
    else {
        panic!("not cancelled")
    };
    assert_eq!((c.state.as_str(), c.files), ("cancelled", 9));
    assert!(c.ended_at.is_some());
    assert!(s.pending_restores(a.id).expect("pending").is_empty());
    assert_eq!(
        state_of(
            s.set_restore_state(a.id, &status(run.id, RestoreState::Cancelled, 9))
                .expect("again")
        ),
        "moved cancelled",
        "the same status sent again"
    );

    // Ended before it saw the cancel: done stands.
    let raced = add();
    s.set_restore_state(a.id, &status(raced.id, RestoreState::Running, 1))
        .expect("running");
    s.cancel_restore(a.id, raced.id, "olga").expect("stop");
    assert_eq!(
        state_of(
            s.set_restore_state(a.id, &status(raced.id, RestoreState::Done, 2))
                .expect("done")
        ),
        "moved done"
    );
    assert_eq!(
        state_of(s.cancel_restore(a.id, raced.id, "olga").expect("too late")),
        "refused done"
    );
}
