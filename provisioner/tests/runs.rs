//! Run reports end to end: a real `levee serve` on 127.0.0.1, an appliance
//! enrolled by the real agent code, its spool sent over mTLS in order
//! after the server was out of reach (and by the service itself after a
//! heartbeat), bad reports refused by name, and
//! the backup health that `levee appliance list` and `show` compute from
//! the reports (last backup, overdue against the customer's schedule,
//! failures in a row, repository size and growth).

mod common;

use std::path::Path;

use common::LoopbackServer;
use levee_agent::enroll::{Credential, EnrollError, MtlsClient};
use levee_agent::runs::{send_with, Spool};
use levee_proto::runs::{RunKind, RunReport, RunResult};

const MAC: &str = "52:54:00:0e:00:01";
const DAY: i64 = 86_400;

/// Customer `beta` with a daily schedule and `MAC` registered for it.
fn start() -> LoopbackServer {
    LoopbackServer::start(
        common::AGENT_CMDLINE,
        serde_json::json!({
            "customer": "beta",
            "sources": [{"name": "docs", "path": "/srv/docs"}],
            "schedules": [{"name": "daily", "every": "1d"}],
            "install": {"to_disk": false},
        }),
        &[MAC],
    )
}

/// Enrolls `MAC` with the real agent (one pass of the daemon); its
/// credential is in `state`.
fn enroll(srv: &LoopbackServer, state: &Path) -> Credential {
    common::agent_pass(&srv.http, MAC, state);
    Credential::load(state).expect("load").expect("credential")
}

fn backup(start: i64, result: RunResult, repo_bytes: u64) -> RunReport {
    let mut r = RunReport::new(RunKind::Backup, start);
    r.job = Some("daily".into());
    r.sources = vec!["docs".into()];
    r.ended_at = start + 120;
    r.result = result;
    r.files_total = 10;
    r.files_new = 2;
    r.bytes_new = 4096;
    r.repo_bytes = Some(repo_bytes);
    if result == RunResult::Failed {
        r.errors = vec![levee_proto::runs::ErrorCount {
            message: "source docs: /srv/docs: no such directory".into(),
            count: 1,
        }];
        r.error_count = 1;
    } else {
        r.snapshot = Some(format!("{start:x}"));
    }
    r
}

fn now() -> i64 {
    levee_provisioner::store::now() as i64
}

fn list_row(srv: &LoopbackServer) -> serde_json::Value {
    let list: serde_json::Value =
        serde_json::from_str(&srv.levee(&["appliance", "list", "--json"])).expect("json");
    list.as_array()
        .and_then(|rows| rows.iter().find(|r| r["mac"] == MAC).cloned())
        .expect("row")
}

#[test]
fn spooled_reports_arrive_in_order_and_make_backup_health() {
    let srv = start();
    let states = tempfile::tempdir().expect("state");
    let state = states.path().join("appliance");
    let cred = enroll(&srv, &state);
    let id = cred.server.appliance_id;
    let client = MtlsClient::new(&cred).expect("client");

    // Enrolled, scheduled daily, never ran: not overdue yet (backups are
    // expected from enrollment on, and the grace has not passed).
    let row = list_row(&srv);
    assert_eq!(row["backup"]["overdue"], false, "{row}");
    assert_eq!(row["backup"]["scheduled"], true, "{row}");

    // The server is out of reach: three runs wait in the spool.
    let spool = Spool::new(&state);
    let t = now();
    let reports = [
        backup(t - 3 * DAY, RunResult::Success, 1_000_000),
        backup(t - 2 * DAY, RunResult::Failed, 1_000_000),
        backup(t - 2 * DAY + 600, RunResult::Failed, 1_000_000),
    ];
    for r in &reports {
        spool.push(r).expect("spool");
    }
    let mut away = cred.clone();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    away.server.https_url = format!("https://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let unreachable = MtlsClient::new(&away).expect("client");
    let f = spool.flush(send_with(&unreachable)).expect("flush");
    assert_eq!((f.sent, f.left), (0, 3), "{f:?}");
    assert!(srv.store.runs(id, 10).expect("runs").is_empty());

    // Back: all three go, in order, and a resend is stored once.
    let f = spool.flush(send_with(&client)).expect("flush");
    assert_eq!((f.sent, f.left, f.dropped.len()), (3, 0, 0), "{f:?}");
    assert!(spool.pending().expect("pending").is_empty());
    client.post_run(&reports[0]).expect("resend");
    let stored = srv.store.runs(id, 10).expect("runs");
    let ids: Vec<&str> = stored.iter().rev().map(|r| r.report.id.as_str()).collect();
    let sent: Vec<&str> = reports.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, sent);
    assert_eq!(stored[2].report, reports[0], "stored as sent");

    // Last good backup three days ago, the daily run two days late, two
    // failures in a row: all in the listing.
    let row = list_row(&srv);
    let h = &row["backup"];
    assert_eq!(h["overdue"], true, "{row}");
    assert_eq!(h["last_success_at"], reports[0].ended_at, "{row}");
    assert_eq!(h["failing"]["count"], 2, "{row}");
    assert_eq!(h["next_expected"]["schedule"], "daily", "{row}");
    assert_eq!(
        h["next_expected"]["at"],
        reports[2].started_at + DAY,
        "{row}"
    );
    let table = srv.levee(&["appliance", "list"]);
    let header = table.lines().next().expect("header");
    assert!(
        header.contains("LAST BACKUP") && header.contains("OVERDUE"),
        "{table}"
    );
    let line = table.lines().find(|l| l.contains(MAC)).expect("line");
    assert!(line.contains("2d ago (2 failed)"), "{table}");
    assert!(line.contains("yes ("), "{table}");

    // A good run now: not overdue, no failures, the repository grew.
    let fresh = backup(t - 300, RunResult::Success, 3_000_000);
    client.post_run(&fresh).expect("fresh run");
    let show: serde_json::Value =
        serde_json::from_str(&srv.levee(&["appliance", "show", MAC, "--json"])).expect("json");
    let b = &show["backups"];
    assert_eq!(b["health"]["overdue"], false, "{b}");
    assert!(b["health"]["failing"].is_null(), "{b}");
    assert_eq!(b["repository"]["bytes"], 3_000_000, "{b}");
    // 2 MB over (3 days - 5 min): about 667 kB a day.
    let per_day = b["repository"]["per_day"].as_i64().expect("growth");
    assert!((660_000..680_000).contains(&per_day), "{b}");
    assert_eq!(b["runs"][0]["id"], fresh.id.as_str(), "{b}");
    // A replication run names its target, what went up and the lag.
    let mut rep =
        levee_proto::runs::RunReport::new(levee_proto::runs::RunKind::Replication, t - 200);
    rep.ended_at = t - 190;
    rep.sources = vec!["hq".into()];
    rep.files_new = 7;
    rep.bytes_new = 2 << 20;
    rep.files_total = 9;
    rep.result = RunResult::Success;
    rep.lag_secs = Some(3 * 3600);
    client.post_run(&rep).expect("replication run");
    let text = srv.levee(&["appliance", "show", MAC]);
    let line = text
        .lines()
        .find(|l| l.contains("replication"))
        .expect("replication line");
    assert!(
        line.contains("to hq")
            && line.contains("7 files uploaded, 2.0 MiB")
            && line.contains("target holds 9 files")
            && line.contains("3h behind")
            && !line.contains("by hand"),
        "{line}"
    );
    assert!(text.contains("backups:"), "{text}");
    assert!(text.contains("overdue: no"), "{text}");
    assert!(text.contains("no such directory"), "{text}");
    assert!(text.contains("2.9 MiB (+"), "{text}");
}

#[test]
fn bad_reports_are_refused_by_name_and_a_retired_appliance_is_not_heard() {
    let srv = start();
    let states = tempfile::tempdir().expect("state");
    let state = states.path().join("appliance");
    let cred = enroll(&srv, &state);
    let client = MtlsClient::new(&cred).expect("client");

    // Terminal escapes in a job name: 400, naming the field; the spool
    // drops such a report instead of retrying it forever.
    let mut evil = backup(now() - 60, RunResult::Success, 1);
    evil.job = Some("daily\u{1b}[2J".into());
    match client.post_run(&evil) {
        Err(EnrollError::Refused {
            status: 400,
            message,
            ..
        }) => assert!(message.contains("`job`"), "{message}"),
        other => panic!("not refused: {other:?}"),
    }
    // Too large: refused before it is read whole.
    let mut big = backup(now() - 60, RunResult::Success, 1);
    big.sources = vec!["x".repeat(1000); 64];
    big.errors = (0..20)
        .map(|i| levee_proto::runs::ErrorCount {
            message: format!("{i}{}", "e".repeat(1000)),
            count: 1,
        })
        .collect();
    big.error_count = 20;
    match client.post_run(&big) {
        Err(EnrollError::Refused { status, .. }) => assert!(status == 413 || status == 400),
        other => panic!("not refused: {other:?}"),
    }
    assert!(srv
        .store
        .runs(cred.server.appliance_id, 10)
        .expect("runs")
        .is_empty());

    // Retired: its certificate no longer reports anything.
    srv.levee(&["appliance", "retire", MAC]);
    match client.post_run(&backup(now() - 60, RunResult::Success, 1)) {
        Err(EnrollError::Refused { status: 403, .. }) => {}
        other => panic!("a retired appliance was heard: {other:?}"),
    }
    assert!(srv
        .store
        .runs(cred.server.appliance_id, 10)
        .expect("runs")
        .is_empty());
}

#[test]
fn the_service_sends_the_spool_after_its_heartbeat() {
    let srv = start();
    let states = tempfile::tempdir().expect("state");
    let state = states.path().join("appliance");
    let cred = enroll(&srv, &state);
    // A run by hand while the service was between heartbeats.
    let r = backup(now() - 600, RunResult::Success, 42);
    Spool::new(&state).push(&r).expect("spool");
    common::agent_pass(&srv.http, MAC, &state);
    assert!(Spool::new(&state).pending().expect("pending").is_empty());
    let stored = srv.store.runs(cred.server.appliance_id, 10).expect("runs");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].report, r);
}
