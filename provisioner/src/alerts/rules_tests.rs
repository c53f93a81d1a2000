//! The rules on hand-made snapshots: each kind opens on its condition,
//! and the transitions open once and resolve once.

use super::*;
use crate::health::Expected;
use crate::store::FailStreak;
use levee_proto::report::StatusReport;
use levee_proto::runs::{RunKind, RunReport};

const NOW: i64 = 1_800_000_000;

fn appliance(id: i64) -> Appliance {
    Appliance {
        id,
        mac: format!("52:54:00:00:00:{id:02x}").parse().unwrap(),
        serial: None,
        profile: None,
        registered: true,
        first_seen: (NOW - 10 * 86_400) as u64,
        last_seen: None,
        last_report: None,
        last_report_at: None,
        customer: Some("acme".into()),
        state: ApplianceState::Installed,
        state_reason: None,
        image_version: None,
        slot: None,
        last_heartbeat: Some(NOW as u64 - 10),
        revoked_at: None,
        replaced_by: None,
        replaces: None,
        cert_fingerprint: Some("f".into()),
        cert_not_after: Some((NOW + 80 * 86_400) as u64),
        pending_key: None,
        reinstall: false,
        reenroll: false,
        key_conflict: None,
    }
}

fn view(a: Appliance) -> ApplianceView {
    ApplianceView {
        appliance: a,
        heartbeat_secs: 300,
        backup: BackupHealth::default(),
        last_update: None,
        update: None,
        events: Vec::new(),
    }
}

fn kinds_found(views: Vec<ApplianceView>) -> Vec<&'static str> {
    let snap = Snapshot {
        now: NOW,
        listening_since: 0,
        appliances: views,
        open: HashSet::new(),
    };
    let mut k: Vec<_> = evaluate(&default_rules(&RuleOptions::default()), &snap)
        .into_iter()
        .map(|f| f.kind)
        .collect();
    k.sort();
    k
}

#[test]
fn a_healthy_appliance_raises_nothing() {
    assert!(kinds_found(vec![view(appliance(1))]).is_empty());
}

#[test]
fn each_kind_opens_on_its_condition() {
    let mut off = appliance(1);
    off.last_heartbeat = Some(NOW as u64 - 3 * 300 - 1);
    assert_eq!(kinds_found(vec![view(off.clone())]), ["offline"]);
    // A server that has listened for less than three intervals (it was
    // down itself) does not call anyone offline yet.
    let rules = default_rules(&RuleOptions::default());
    let restarted = Snapshot {
        now: NOW,
        listening_since: NOW - 600,
        appliances: vec![view(off)],
        open: HashSet::new(),
    };
    assert!(evaluate(&rules, &restarted).is_empty());
    // Installing: silent from its enrollment to its first boot from disk,
    // offline only after INSTALL_SILENCE_SECS.
    let mut installing = appliance(3);
    installing.state = ApplianceState::Installing;
    installing.last_heartbeat = None;
    let enrolled_view = |silent: u64| Snapshot {
        now: NOW,
        listening_since: NOW - silent as i64,
        appliances: vec![view(installing.clone())],
        open: HashSet::new(),
    };
    assert!(evaluate(&rules, &enrolled_view(20 * 60)).is_empty());
    assert_eq!(
        evaluate(&rules, &enrolled_view(INSTALL_SILENCE_SECS + 1))
            .iter()
            .map(|f| f.kind.to_string())
            .collect::<Vec<_>>(),
        ["offline"]
    );

    let mut v = view(appliance(2));
    v.backup.next_expected = Some(Expected {
        schedule: "nightly".into(),
        at: NOW - 86_400,
    });
    v.backup.overdue = true;
    v.backup.failing = Some(FailStreak {
        job: Some("nightly".into()),
        sources: vec!["docs".into()],
        count: 3,
    });
    assert_eq!(
        kinds_found(vec![v.clone()]),
        ["backup-failing", "backup-overdue"]
    );
    v.backup.failing.as_mut().unwrap().count = 2;
    v.backup.overdue = false;
    assert!(kinds_found(vec![v]).is_empty(), "2 failures are not yet 3");

    let mut failed = appliance(3);
    failed.state = ApplianceState::Failed;
    failed.state_reason = Some("no disk".into());
    assert_eq!(kinds_found(vec![view(failed)]), ["install-failed"]);

    let mut v = view(appliance(4));
    let mut r = RunReport::new(RunKind::Update, NOW - 100);
    r.errors = vec![levee_proto::runs::ErrorCount {
        message: "rolled back: health check failed".into(),
        count: 1,
    }];
    r.error_count = 1;
    v.last_update = Some(RunRecord {
        received_at: NOW as u64,
        report: r,
    });
    assert_eq!(kinds_found(vec![v]), ["update-failed"]);
    // The rollout's record of a rolled-back update.
    let mut v = view(appliance(4));
    v.update = Some(UpdateRecord {
        appliance_id: 4,
        release: 3,
        version: "v3".into(),
        state: UpdateState::RolledBack,
        reason: Some("health check failed".into()),
        slot: Some("b".into()),
        blocked: true,
        at: NOW as u64,
    });
    assert_eq!(kinds_found(vec![v.clone()]), ["update-failed"]);
    v.update.as_mut().unwrap().state = UpdateState::Committed;
    assert!(kinds_found(vec![v]).is_empty());

    let mut full = appliance(5);
    full.last_report = Some(StatusReport {
        mac: "x".into(),
        disk_free_bytes: Some(5),
        disk_total_bytes: Some(100),
        ..Default::default()
    });
    assert_eq!(kinds_found(vec![view(full)]), ["disk-full"]);

    let mut pending = appliance(6);
    pending.state = ApplianceState::Pending;
    pending.cert_fingerprint = None;
    pending.customer = None;
    pending.pending_key = Some("k".into());
    pending.first_seen = (NOW - 2 * 86_400) as u64;
    assert_eq!(
        kinds_found(vec![view(pending.clone())]),
        ["enrollment-pending"]
    );
    pending.first_seen = (NOW - 3600) as u64;
    let mut v = view(pending);
    for k in ["k1", "k2"] {
        v.events.push(Event {
            at: NOW as u64 - 60,
            step: "pending-key".into(),
            detail: format!("waiting for approval with key sha256 {k}"),
        });
    }
    assert_eq!(kinds_found(vec![v.clone()]), ["enrollment-key-conflict"]);
    // Ops approved one key and it enrolled: settled.
    v.events.push(Event {
        at: NOW as u64 - 30,
        step: "enrolled".into(),
        detail: String::new(),
    });
    assert!(kinds_found(vec![v.clone()]).is_empty());
    // A conflict the enrollment path recorded (another key refused).
    v.events.push(Event {
        at: NOW as u64 - 10,
        step: "key-conflict".into(),
        detail: "refused another key ab12".into(),
    });
    assert_eq!(kinds_found(vec![v]), ["enrollment-key-conflict"]);

    let mut expiring = appliance(7);
    expiring.cert_not_after = Some((NOW + 10 * 86_400) as u64);
    assert_eq!(kinds_found(vec![view(expiring)]), ["renewal-failing"]);

    // Retired machines owe nothing.
    let mut gone = appliance(8);
    gone.revoked_at = Some(1);
    gone.state = ApplianceState::Retired;
    gone.last_heartbeat = None;
    gone.cert_not_after = Some(1);
    assert!(kinds_found(vec![view(gone)]).is_empty());
}

/// Scheduled channel checks: one refusal is an event, two in a row an
/// alert naming the last reason, and a check that verifies again clears
/// it; other events in between do not break the run.
#[test]
fn channel_check_failing_opens_on_repeated_refusals_and_clears_on_success() {
    let check = |ago: u64, detail: &str| Event {
        at: NOW as u64 - ago,
        step: CHANNEL_CHECK_STEP.into(),
        detail: detail.into(),
    };
    let mut v = view(appliance(1));
    v.events
        .push(check(7 * 3600, "checked v1 (release 1): scheduled check"));
    let frozen = "check-failed v1 (release 1): scheduled check of channel stable refused (freeze): timestamp metadata is expired";
    v.events.push(check(6 * 3600, frozen));
    assert!(kinds_found(vec![v.clone()]).is_empty(), "one refusal");
    v.events.push(Event {
        at: NOW as u64 - 3 * 3600,
        step: "enrolled".into(),
        detail: String::new(),
    });
    v.events.push(check(3600, frozen));
    assert_eq!(kinds_found(vec![v.clone()]), ["channel-check-failing"]);
    let snap = Snapshot {
        now: NOW,
        listening_since: 0,
        appliances: vec![v.clone()],
        open: HashSet::new(),
    };
    let f = evaluate(&default_rules(&RuleOptions::default()), &snap);
    assert_eq!(f[0].severity, Severity::Critical);
    assert!(
        f[0].summary.contains("2 scheduled checks in a row refused, the last 1 h ago: scheduled check of channel stable refused (freeze)"),
        "{}",
        f[0].summary
    );
    // The check verifies again: resolved.
    v.events.push(check(
        60,
        "checked v1 (release 1): scheduled check verified",
    ));
    assert!(kinds_found(vec![v.clone()]).is_empty());
    // A retired machine owes no checks.
    v.events.push(check(30, frozen));
    v.events.push(check(20, frozen));
    assert_eq!(kinds_found(vec![v.clone()]), ["channel-check-failing"]);
    v.appliance.revoked_at = Some(1);
    v.appliance.state = ApplianceState::Retired;
    v.appliance.last_heartbeat = None;
    assert!(kinds_found(vec![v]).is_empty());
}

#[test]
fn disk_full_does_not_flap_at_the_edge() {
    let mut a = appliance(1);
    a.last_report = Some(StatusReport {
        mac: "x".into(),
        disk_free_bytes: Some(12),
        disk_total_bytes: Some(100),
        ..Default::default()
    });
    let rules = default_rules(&RuleOptions::default());
    let mut snap = Snapshot {
        now: NOW,
        listening_since: 0,
        appliances: vec![view(a)],
        open: HashSet::new(),
    };
    // 12% free: not full when closed...
    assert!(evaluate(&rules, &snap).is_empty());
    // ...but an open alert stays open until 15%.
    snap.open.insert(("disk-full".into(), subject(1)));
    assert_eq!(evaluate(&rules, &snap).len(), 1);
}

#[test]
fn transitions_open_once_and_resolve_once() {
    let f = |kind: &'static str, id: i64| Finding {
        kind,
        subject: subject(id),
        appliance_id: Some(id),
        customer: None,
        severity: Severity::Critical,
        summary: String::new(),
    };
    let judged: BTreeSet<&str> = ["offline", "backup-overdue"].into();
    // Nothing open: both open (a duplicate finding opens one).
    let t = transitions(
        &[f("offline", 1), f("offline", 1), f("backup-overdue", 2)],
        &[],
        &judged,
    );
    assert_eq!(t.open.len(), 2);
    assert!(t.resolve.is_empty());
    let open = vec![
        OpenAlert {
            id: 10,
            kind: "offline".into(),
            subject: subject(1),
        },
        OpenAlert {
            id: 11,
            kind: "backup-overdue".into(),
            subject: subject(2),
        },
        OpenAlert {
            id: 12,
            kind: "replication-lag".into(),
            subject: subject(3),
        },
    ];
    // Still holding: nothing to do (no flood).
    let t = transitions(&[f("offline", 1), f("backup-overdue", 2)], &open, &judged);
    assert_eq!(t, Transitions::default());
    // One stopped: resolved; a kind no rule judges is left alone.
    let t = transitions(&[f("offline", 1)], &open, &judged);
    assert_eq!(t.resolve, vec![11]);
    assert!(t.open.is_empty());
}
