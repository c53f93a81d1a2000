//! Store suite cases for run reports and alerts (run by `suite.rs`'s
//! `cases!` on SQLite and PostgreSQL).

use super::{customer, mac, register_for};
use crate::store::*;

pub(super) fn runs_are_kept_once_bounded_and_summed_up(s: &dyn Store) {
    use levee_proto::runs::{RunKind, RunReport, RunResult};
    s.put_customer(&customer("acme", "5m")).expect("customer");
    let a = register_for(s, 70, "acme");
    let b = register_for(s, 71, "acme");
    let run = |kind, job: Option<&str>, src: &str, start: i64, result| {
        let mut r = RunReport::new(kind, start);
        r.job = job.map(Into::into);
        r.sources = vec![src.into()];
        r.ended_at = start + 60;
        r.result = result;
        r.repo_bytes = Some(start as u64);
        r
    };
    let ok = run(
        RunKind::Backup,
        Some("nightly"),
        "docs",
        1000,
        RunResult::Success,
    );
    assert!(s.record_run(a.id, &ok).expect("record"));
    // A resend (the answer was lost) is stored once.
    assert!(!s.record_run(a.id, &ok).expect("again"));
    // Two failures of one stream after its success, one of another.
    for t in [2000, 3000] {
        let f = run(
            RunKind::Backup,
            Some("nightly"),
            "docs",
            t,
            RunResult::Failed,
        );
        s.record_run(a.id, &f).expect("failed");
    }
    let mail = run(
        RunKind::Backup,
        Some("nightly"),
        "mail",
        3500,
        RunResult::Failed,
    );
    s.record_run(a.id, &mail).expect("failed");
    let warn = run(RunKind::Backup, None, "/srv", 4000, RunResult::Warning);
    s.record_run(a.id, &warn).expect("manual");
    s.record_run(
        a.id,
        &run(
            RunKind::Prune,
            Some("nightly"),
            "x",
            5000,
            RunResult::Failed,
        ),
    )
    .expect("prune");
    let runs = s.runs(a.id, 100).expect("runs");
    assert_eq!(runs.len(), 6);
    assert_eq!(runs[0].report.kind, RunKind::Prune, "newest first");
    assert_eq!(runs[5].report, ok, "stored as sent");
    let facts = s.backup_facts(None).expect("facts");
    let f = &facts[&a.id];
    assert_eq!(f.last_success_at, Some(4060), "a warning made its snapshot");
    assert_eq!(f.last_backup_at, Some(4060));
    assert_eq!(f.last_starts.get("nightly"), Some(&3500));
    assert_eq!(f.failing.len(), 2, "{f:?}");
    assert_eq!(f.failing[0].count, 2);
    assert_eq!(f.failing[0].sources, ["docs"]);
    assert!(!facts.contains_key(&b.id));
    // Another appliance's runs are its own.
    s.record_run(b.id, &ok).expect("same id, other appliance");
    let only = s.backup_facts(Some(b.id)).expect("facts");
    assert_eq!(only.len(), 1);
    assert_eq!(only[&b.id].failing, vec![]);
    // A replication run keeps its lag (issue 14), also through latest_runs.
    let c = register_for(s, 72, "acme");
    let mut rep = run(
        RunKind::Replication,
        None,
        "offsite-a",
        4500,
        RunResult::Warning,
    );
    rep.lag_secs = Some(3600);
    s.record_run(c.id, &rep).expect("replication");
    let latest = s.latest_runs(RunKind::Replication).expect("latest");
    assert_eq!(latest[&c.id].report, rep, "stored as sent, lag included");
    assert_eq!(
        s.runs(c.id, 1).expect("runs")[0].report.lag_secs,
        Some(3600)
    );
    // A success of the stream ends its streak.
    s.record_run(
        a.id,
        &run(
            RunKind::Backup,
            Some("nightly"),
            "docs",
            6000,
            RunResult::Success,
        ),
    )
    .expect("ok");
    let f = &s.backup_facts(Some(a.id)).expect("facts")[&a.id];
    assert_eq!(f.failing.len(), 1);
    assert_eq!(f.failing[0].sources, ["mail"]);
    // Bounded: the oldest go beyond RUNS_KEPT.
    for i in 0..(RUNS_KEPT + 60) {
        s.record_run(
            b.id,
            &run(RunKind::Check, None, "r", 10_000 + i, RunResult::Success),
        )
        .expect("many");
    }
    let kept = s.runs(b.id, 10_000).expect("runs").len() as i64;
    assert!((RUNS_KEPT..RUNS_KEPT + 50).contains(&kept), "{kept}");
    // Removing an appliance removes its runs.
    s.remove_appliance(b.mac).expect("remove");
    assert!(s.runs(b.id, 10).expect("runs").is_empty());
}

pub(super) fn alerts_open_once_and_queue_deliveries_in_order(s: &dyn Store) {
    s.put_customer(&customer("acme", "5m")).expect("customer");
    s.put_customer(&customer("other", "5m")).expect("customer");
    let (all, added) = s
        .set_webhook("http://127.0.0.1:9/all", None, "sealed")
        .expect("hook");
    assert!(added);
    let (again, added) = s
        .set_webhook("http://127.0.0.1:9/all", None, "new")
        .expect("hook");
    assert!(!added, "set twice is one webhook");
    assert_eq!((again.id, again.secret_sealed.as_str()), (all.id, "sealed"));
    s.set_webhook("http://127.0.0.1:9/acme", Some("acme"), "s2")
        .expect("hook");
    s.set_webhook("http://127.0.0.1:9/other", Some("other"), "s3")
        .expect("hook");
    assert_eq!(s.webhooks().expect("hooks").len(), 3);
    let new = NewAlert {
        kind: "offline",
        subject: "appliance:1",
        appliance_id: Some(1),
        customer: Some("acme"),
        severity: "critical",
        summary: "gone",
    };
    let a = s.open_alert(&new).expect("open").expect("opened");
    assert!(s.open_alert(&new).expect("open").is_none(), "open once");
    assert_eq!(s.open_alerts().expect("open").len(), 1);
    let resolved = s.resolve_alert(a.id).expect("resolve").expect("resolved");
    assert!(resolved.resolved_at.is_some());
    assert!(
        s.resolve_alert(a.id).expect("resolve").is_none(),
        "resolve once"
    );
    assert!(s.open_alerts().expect("open").is_empty());
    assert_eq!(s.alerts(true, 10).expect("all").len(), 1);
    // Opened again later: a new alert.
    let b = s.open_alert(&new).expect("open").expect("opened");
    assert_ne!(b.id, a.id);
    // Deliveries: the global and acme webhooks, not other's; per webhook
    // the opening first, and the resolution only after it is delivered.
    let now = crate::store::now();
    let due = s.claim_deliveries(now, 30, 100).expect("claim");
    let got: Vec<(String, &str, i64)> = due
        .iter()
        .map(|d| (d.webhook.url.clone(), d.event.as_str(), d.alert.id))
        .collect();
    assert_eq!(
        got,
        [
            ("http://127.0.0.1:9/all".to_string(), "opened", a.id),
            ("http://127.0.0.1:9/acme".to_string(), "opened", a.id),
            ("http://127.0.0.1:9/all".to_string(), "opened", b.id),
            ("http://127.0.0.1:9/acme".to_string(), "opened", b.id),
        ]
    );
    // Claimed: not handed out again during the lease.
    assert!(s.claim_deliveries(now, 30, 100).expect("claim").is_empty());
    s.delivery_failed(due[0].id, "HTTP 500", now)
        .expect("failed");
    s.delivery_done(due[1].id).expect("done");
    let next = s.claim_deliveries(now, 30, 100).expect("claim");
    let got: Vec<(i64, &str, u32)> = next
        .iter()
        .map(|d| (d.webhook.id, d.event.as_str(), d.attempts))
        .collect();
    // The failed opening again (attempt 2), and acme's resolution now its
    // opening is delivered.
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.contains(&(all.id, "opened", 1)));
    assert!(next
        .iter()
        .any(|d| d.event == "resolved" && d.webhook.url.ends_with("acme")));
    assert!(s
        .remove_webhook("http://127.0.0.1:9/all", None)
        .expect("remove"));
    assert!(!s
        .remove_webhook("http://127.0.0.1:9/all", None)
        .expect("remove"));
    assert!(!s
        .remove_webhook("http://127.0.0.1:9/acme", None)
        .expect("scope"));
    // The events the rules read (enrollment steps and channel checks)
    // since a time, every machine at once; other steps are left out.
    let m = s.appliance_seen(mac(80)).expect("seen");
    s.keep_pending_key(m.id, "k1").expect("key");
    s.add_event(mac(80), crate::store::CHANNEL_CHECK_STEP, "check-failed v1")
        .expect("event");
    s.add_event(mac(80), "update", "written v2").expect("event");
    let ev = s.alert_events(now.saturating_sub(60)).expect("events");
    assert!(ev
        .iter()
        .any(|(m2, e)| *m2 == mac(80) && e.step == "pending-key"));
    assert!(ev
        .iter()
        .any(|(m2, e)| *m2 == mac(80) && e.step == "channel-check"));
    assert!(!ev.iter().any(|(_, e)| e.step == "update"));
    assert!(s.alert_events(now + 3600).expect("events").is_empty());
}

pub(super) fn operators_and_the_audit_log(s: &dyn Store) {
    assert!(s.operators().expect("list").is_empty());
    let ann = s.add_operator("ann", "hash-1", false).expect("add");
    assert_eq!((ann.read_only, ann.must_change), (false, true));
    let err = s
        .add_operator("ann", "hash-2", true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("exists already"), "{err}");
    assert_eq!(
        s.operator("ann")
            .expect("get")
            .expect("there")
            .password_hash,
        "hash-1"
    );
    s.add_operator("bob", "hash-b", true).expect("add");
    let names: Vec<_> = s
        .operators()
        .expect("list")
        .into_iter()
        .map(|o| (o.name, o.read_only))
        .collect();
    assert_eq!(
        names,
        [("ann".to_string(), false), ("bob".to_string(), true)]
    );
    s.set_operator_password("ann", "hash-3", false)
        .expect("password");
    let ann = s.operator("ann").expect("get").expect("there");
    assert_eq!(
        (ann.password_hash.as_str(), ann.must_change),
        ("hash-3", false)
    );
    assert!(s.set_operator_password("nobody", "h", false).is_err());
    // One client certificate per operator: a new one replaces the old.
    assert_eq!(ann.cert_sha256, None);
    s.set_operator_cert("ann", Some("aa11")).expect("cert");
    s.set_operator_cert("ann", Some("bb22"))
        .expect("cert again");
    let ann = s.operator("ann").expect("get").expect("there");
    assert_eq!(ann.cert_sha256.as_deref(), Some("bb22"));
    s.set_operator_cert("ann", None).expect("revoke");
    assert_eq!(
        s.operator("ann").expect("get").expect("there").cert_sha256,
        None
    );
    assert!(s.set_operator_cert("nobody", Some("cc")).is_err());
    assert!(s.remove_operator("bob").expect("remove"));
    assert!(!s.remove_operator("bob").expect("remove again"));
    assert!(s.operator("bob").expect("get").is_none());

    let before = s.change_stamp().expect("stamp");
    s.add_audit("ann", "retire", "appliance:7", "stolen")
        .expect("audit");
    s.add_audit("ann", "customer-apply", "customer:acme", "")
        .expect("audit");
    let after = s.change_stamp().expect("stamp");
    assert_ne!(before, after, "an audit entry changes the stamp");
    let all = s.audit(None, 10).expect("audit");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].action, "customer-apply", "newest first");
    let one = s.audit(Some("appliance:7"), 10).expect("audit");
    assert_eq!(
        (one.len(), one[0].operator.as_str(), one[0].detail.as_str()),
        (1, "ann", "stolen")
    );
    // A heartbeat changes it too (the panel's live updates).
    let a = s.appliance_seen(mac(99)).expect("seen");
    let stamp = s.change_stamp().expect("stamp");
    s.record_heartbeat(a.id, &Heartbeat::default())
        .expect("heartbeat");
    assert_ne!(s.change_stamp().expect("stamp"), stamp);
}

/// Each server of a fleet records where it serves image files; a restart
/// refreshes its row, the most recently seen first.
pub(super) fn servers_of_a_fleet_are_recorded(s: &dyn Store) {
    assert!(s.fleet_servers().expect("none").is_empty());
    s.announce_server("http://10.0.0.1:8080", 100).expect("a");
    s.announce_server("http://10.1.0.1", 200).expect("b");
    s.announce_server("http://10.0.0.1:8080", 300)
        .expect("a again");
    assert_eq!(
        s.fleet_servers().expect("servers"),
        [
            FleetServer {
                url: "http://10.0.0.1:8080".into(),
                seen_at: 300
            },
            FleetServer {
                url: "http://10.1.0.1".into(),
                seen_at: 200
            },
        ]
    );
}
