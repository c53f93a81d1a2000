//! A restore ops asks for (issue 14): `levee appliance restore` checks and
//! stores the request, the appliance gets it in its heartbeat answer (only
//! its own: another appliance's certificate can neither fetch nor complete
//! it), its real service runs it once from its repository and reports it
//! (`levee appliance show`: the request's state and a run of kind
//! `restore`). Loopback only: a real server, the real CLI, the real agent
//! service (one pass), a real repository.

mod common;

use common::offsite::{back_up, enroll, new_repo};

use std::path::Path;

use levee_agent::enroll::{EnrollError, MtlsClient};
use levee_proto::report::StatusReport;
use levee_proto::restore_api::{RestoreState, RestoreStatus};

const MAC_A: &str = "52:54:00:14:30:01";
const MAC_B: &str = "52:54:00:14:30:02";
/// The appliance's repository secret, as its service keeps it.
const KEY: &str = "5e1f0a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";

fn show(s: &common::LoopbackServer, mac: &str) -> serde_json::Value {
    serde_json::from_str(&s.levee(&["appliance", "show", mac, "--json"])).expect("json")
}

fn status(id: i64, state: RestoreState) -> RestoreStatus {
    RestoreStatus {
        id,
        state,
        reason: None,
        files: 0,
        bytes: 0,
        errors: 0,
    }
}

fn refused_with(r: Result<(), EnrollError>, code: u16) {
    match r {
        Err(EnrollError::Refused { status, .. }) if status == code => {}
        other => panic!("expected HTTP {code}, got {other:?}"),
    }
}

/// A's repository where its service keeps it, with one backup of `src`.
fn back_up_as_the_service(state: &Path, src: &Path) {
    std::fs::write(state.join("credential/repo.key"), KEY).expect("key");
    back_up(&new_repo(&state.join("repo"), KEY.as_bytes()), src);
}

#[test]
fn r14_an_appliance_runs_the_restore_ops_asked_for_once_and_reports_it() {
    let s = common::LoopbackServer::start(
        common::AGENT_CMDLINE,
        serde_json::json!({
            "customer": "acme",
            "install": {"to_disk": false},
            "sources": [{"name": "files", "smb": "smb://backup@127.0.0.1/files", "password": "pw"}],
        }),
        &[MAC_A, MAC_B],
    );
    let (state_a, cred_a) = enroll(&s, MAC_A);
    let (_state_b, cred_b) = enroll(&s, MAC_B);
    let src = s.dir.path().join("share");
    std::fs::create_dir_all(src.join("sub")).expect("src");
    std::fs::write(src.join("ledger.csv"), "debit,credit\n".repeat(5000)).expect("write");
    std::fs::write(src.join("sub/notes.txt"), "minutes\n").expect("write");
    back_up_as_the_service(&state_a, &src);
    let cli = common::Cli::new(&s.data);

    // Bad input: refused by the CLI with what is wrong, nothing stored.
    let out = s.dir.path().join("restored");
    let out_owned = out.to_string_lossy().to_string();
    let out_s = out_owned.as_str();
    for (args, says) in [
        (
            vec!["--to", "restored"],
            "neither an smb:// URL nor an absolute path",
        ),
        (
            vec!["--to", "smb://backup@127.0.0.1/files"],
            "no account in the URL",
        ),
        (vec!["--to", "/srv/../etc"], "`..`"),
        (
            vec!["--to", "smb://10.1.2.3/other"],
            "give --credentials-of SOURCE; SMB sources: files (smb://backup@127.0.0.1:445/files)",
        ),
        (
            vec!["--to", "smb://10.1.2.3/other", "--credentials-of", "nope"],
            "no SMB source of that name",
        ),
        (
            vec!["--to", out_s, "--credentials-of", "files"],
            "--credentials-of is for smb:// targets",
        ),
        (
            vec!["--to", out_s, "--snapshot", "newest"],
            "expected `latest` or a snapshot id",
        ),
        (vec!["--to", out_s, "--path", "a/../b"], "`..`"),
    ] {
        let mut all = vec!["appliance", "restore", MAC_A];
        all.extend(args.iter().copied());
        let err = cli.fails(&all).expect("run");
        assert!(err.contains(says), "{all:?}: {err}");
    }
    assert_eq!(show(&s, MAC_A)["restores"], serde_json::json!([]));
    // A target on the source's host and share is fine (the account is
    // the source's), as is another share with --credentials-of.
    let help = cli.ok(&["appliance", "restore", "--help"]).expect("help");
    assert!(
        help.contains("--credentials-of") && help.contains("Examples:"),
        "{help}"
    );

    let stored: serde_json::Value =
        serde_json::from_str(&s.levee(&["appliance", "restore", MAC_A, "--to", out_s, "--json"]))
            .expect("json");
    let id = stored["id"].as_i64().expect("id");
    assert_eq!(stored["state"], "requested");
    let smb = s.levee(&[
        "appliance",
        "restore",
        MAC_A,
        "--to",
        "smb://127.0.0.1/FILES/restored",
        "--path",
        "/share/sub",
    ]);
    assert!(
        smb.contains("smb://backup@127.0.0.1:445/FILES/restored") && smb.contains("source files"),
        "{smb}"
    );

    // Only A's certificate sees A's requests.
    let a = MtlsClient::new(&cred_a).expect("client a");
    let b = MtlsClient::new(&cred_b).expect("client b");
    let report = |mac: &str| StatusReport {
        mac: mac.into(),
        ..Default::default()
    };
    assert_eq!(
        a.heartbeat(&report(MAC_A))
            .expect("hb")
            .restore
            .map(|r| r.id),
        Some(id),
        "the oldest unfinished request rides on A's heartbeat answer"
    );
    assert_eq!(a.restores().expect("list").requests.len(), 2);
    assert!(b.heartbeat(&report(MAC_B)).expect("hb").restore.is_none());
    assert!(b.restores().expect("list").requests.is_empty());
    refused_with(b.post_restore(&status(id, RestoreState::Running)), 404);
    refused_with(b.post_restore(&status(id, RestoreState::Done)), 404);
    assert_eq!(show(&s, MAC_A)["restores"][1]["state"], "requested");

    // The SMB request is withdrawn from A's way (its target is not on
    // this machine): A says it failed. Then one pass of A's service runs
    // the other.
    let smb_id = id + 1;
    let mut gone = status(smb_id, RestoreState::Failed);
    gone.reason = Some("no SMB server in this test".into());
    a.post_restore(&gone).expect("failed");
    common::agent_pass(&s.http, MAC_A, &state_a);
    for f in ["ledger.csv", "sub/notes.txt"] {
        assert_eq!(
            std::fs::read(out.join("share").join(f)).expect("restored"),
            std::fs::read(src.join(f)).expect("original"),
            "{f} byte-identical"
        );
    }
    let a_show = show(&s, MAC_A);
    let done = &a_show["restores"][1];
    assert_eq!(
        (&done["id"], &done["state"], &done["files"], &done["errors"]),
        (
            &serde_json::json!(id),
            &serde_json::json!("done"),
            &serde_json::json!(2),
            &serde_json::json!(0)
        ),
        "{a_show}"
    );
    assert!(
        done["started_at"].is_u64() && done["ended_at"].is_u64(),
        "{done}"
    );
    let run = a_show["backups"]["runs"]
        .as_array()
        .and_then(|runs| runs.iter().find(|r| r["kind"] == "restore"))
        .unwrap_or_else(|| panic!("no restore run: {a_show}"))
        .clone();
    assert_eq!(run["result"], "success", "{run}");
    assert_eq!(run["job"], format!("restore request {id}"), "{run}");
    assert_eq!(run["files_new"], 2, "{run}");
    assert_eq!(run["sources"][0], out_s, "{run}");
    let text = s.levee(&["appliance", "show", MAC_A]);
    assert!(text.contains("restores:"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("#{id}")) && l.contains("done") && l.contains("2 files")),
        "{text}"
    );
    assert!(text.contains("no SMB server in this test"), "{text}");

    // Once: it is not delivered again, and a late status cannot change it.
    assert!(a.heartbeat(&report(MAC_A)).expect("hb").restore.is_none());
    refused_with(a.post_restore(&status(id, RestoreState::Failed)), 409);
    std::fs::remove_dir_all(&out).expect("clean");
    common::agent_pass(&s.http, MAC_A, &state_a);
    assert!(!out.exists(), "the request ran twice");

    // A restore cut by a restart of the service: reported failed, not run
    // again.
    let cut: serde_json::Value =
        serde_json::from_str(&s.levee(&["appliance", "restore", MAC_A, "--to", out_s, "--json"]))
            .expect("json");
    let cut_id = cut["id"].as_i64().expect("id");
    let journal = state_a.join(levee_agent::asked_restore::JOURNAL);
    let mut j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&journal).expect("journal")).expect("journal json");
    j[cut_id.to_string()] = serde_json::json!({"state": "running"});
    std::fs::write(&journal, serde_json::to_vec(&j).expect("json")).expect("journal");
    a.post_restore(&status(cut_id, RestoreState::Running))
        .expect("running");
    common::agent_pass(&s.http, MAC_A, &state_a);
    let r = &show(&s, MAC_A)["restores"][0];
    assert_eq!(
        (&r["id"], &r["state"]),
        (&cut["id"], &serde_json::json!("failed")),
        "{r}"
    );
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or("")
            .contains("restarted during this restore"),
        "{r}"
    );
    assert!(!out.exists(), "a cut restore ran again");
}
