//! A restore ops asks for (issue 14): `levee appliance restore` checks and
//! stores the request, the appliance gets it in its heartbeat answer (only
//! its own: another appliance's certificate can neither fetch nor complete
//! it), its real service runs it once from its repository and reports it
//! (`levee appliance show`: the request's state and a run of kind
//! `restore`). Loopback only: a real server, the real CLI, the real agent
//! service (one pass), a real repository.
//!
//! Ops withdraws a request (`--cancel`): before it starts (it never runs),
//! while it runs (the service, as its own process, stops between files
//! and reports `cancelled`); a service killed mid-restore resumes it at
//! its next start, writing only what the cut run had not finished. The
//! service "as its own process" is this test binary running the same test
//! with [`CHILD_ENV`] set: one pass of the real agent service
//! (`levee_agent::daemon::run`), SIGSTOPped and SIGKILLed by the parent.

mod common;

use common::offsite::{back_up, enroll, new_repo};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

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

fn refused_with<T: std::fmt::Debug>(r: Result<T, EnrollError>, code: u16) {
    match r {
        Err(EnrollError::Refused { status, .. }) if status == code => {}
        other => panic!("expected HTTP {code}, got {other:?}"),
    }
}

/// The newest request in `levee appliance show --json` output: request
/// `id`, done after a resume.
fn resumed_and_done(shown: &serde_json::Value, id: i64) -> serde_json::Value {
    let r = shown["restores"][0].clone();
    assert_eq!(
        (&r["id"], &r["state"]),
        (&serde_json::json!(id), &serde_json::json!("done")),
        "{r}"
    );
    let why = r["reason"].as_str().unwrap_or("");
    assert!(why.contains("resumed after a restart"), "{r}");
    r
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

    // A restore cut by a restart of the service (its journal says it
    // started): resumed at the next start, done.
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
    let r = &resumed_and_done(&show(&s, MAC_A), cut["id"].as_i64().expect("id"));
    assert_eq!(r["files"], 2, "{r}");
    assert_eq!(
        std::fs::read(out.join("share/ledger.csv")).expect("resumed"),
        std::fs::read(src.join("ledger.csv")).expect("original")
    );
}

/// Set in the child: the JSON of a [`ChildPass`].
const CHILD_ENV: &str = "LEVEE_TEST_RESTORE_CHILD";
/// Files in the large share: enough that a restore takes a while.
const MANY: usize = 1200;

/// What the child process runs: one pass of the agent service.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChildPass {
    http: String,
    mac: String,
    state: PathBuf,
}

/// In the child (see the module doc): runs the pass and returns true.
fn child() -> bool {
    let Ok(job) = std::env::var(CHILD_ENV) else {
        return false;
    };
    let job: ChildPass = serde_json::from_str(&job).expect("child job");
    common::agent_pass(&job.http, &job.mac, &job.state);
    true
}

/// The agent service's pass for `mac` as its own process, running `test`
/// of this binary; its log in `log`.
fn spawn_pass(test: &str, s: &common::LoopbackServer, state: &Path, log: &Path) -> Child {
    let job = ChildPass {
        http: s.http.clone(),
        mac: MAC_A.into(),
        state: state.to_path_buf(),
    };
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, serde_json::to_string(&job).expect("job"))
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(log).expect("log"))
        .stderr(std::process::Stdio::null());
    common::dies_with_test(&mut cmd);
    cmd.spawn().expect("child agent pass")
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: a signal to our own child, which has not been waited for.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// A server with appliance A enrolled and its service's repository
/// holding one backup of `share/`: [`MANY`] files of 32 KiB in 12
/// directories. The server, A's state directory and the share's files
/// (path below the share, contents).
fn a_with_a_large_backup() -> (common::LoopbackServer, PathBuf, BTreeMap<String, Vec<u8>>) {
    let s = common::LoopbackServer::start(
        common::AGENT_CMDLINE,
        serde_json::json!({"customer": "acme", "install": {"to_disk": false}}),
        &[MAC_A],
    );
    let (state, _) = enroll(&s, MAC_A);
    let src = s.dir.path().join("share");
    let mut files = BTreeMap::new();
    for i in 0..MANY {
        let rel = format!("d{:02}/f{i:04}.bin", i % 12);
        let data = common::noise(32 << 10, i as u64 + 1);
        std::fs::create_dir_all(src.join(&rel).parent().expect("dir")).expect("dir");
        std::fs::write(src.join(&rel), &data).expect("write");
        files.insert(rel, data);
    }
    back_up_as_the_service(&state, &src);
    (s, state, files)
}

/// Files below `dir` (relative paths), temporary files included.
fn files_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// Stores a restore of A's latest snapshot into `out`; its id.
fn ask(s: &common::LoopbackServer, out: &Path) -> i64 {
    let stored: serde_json::Value = serde_json::from_str(&s.levee(&[
        "appliance",
        "restore",
        MAC_A,
        "--to",
        out.to_str().expect("utf-8"),
        "--json",
    ]))
    .expect("json");
    stored["id"].as_i64().expect("id")
}

/// Lets the (stopped) child run in slices of 3 ms every 33 ms (a local
/// restore is too fast to catch otherwise) until `enough` says so or it
/// exits; it is left stopped. Whether it exited.
fn throttle(child: &mut Child, mut enough: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(180);
    while std::time::Instant::now() < until {
        signal(child, libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(3));
        signal(child, libc::SIGSTOP);
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if enough() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    panic!("the throttled agent pass neither ended nor got there in 180 s");
}

/// The child pass, throttled until `restored` counts at least 40 files
/// (and fewer than all: else the test proves nothing), then stopped.
fn stopped_mid_restore(
    test: &str,
    s: &common::LoopbackServer,
    state: &Path,
    restored: impl Fn() -> usize,
) -> (Child, PathBuf) {
    let log = s.dir.path().join("child.log");
    let mut child = spawn_pass(test, s, state, &log);
    signal(&child, libc::SIGSTOP);
    if throttle(&mut child, || restored() >= 40) {
        panic!(
            "the agent pass ended before it was stopped:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let n = restored();
    assert!(
        n < MANY,
        "the restore ended before it could be stopped ({n} files)"
    );
    (child, log)
}

/// Every file below `out/share` is the share's, byte for byte; no
/// temporary file is left.
fn only_whole_files(out: &Path, files: &BTreeMap<String, Vec<u8>>) -> usize {
    let here = files_below(&out.join("share"));
    for rel in &here {
        let want = files
            .get(rel)
            .unwrap_or_else(|| panic!("{rel}: not a file of the share (a temporary file?)"));
        assert!(
            std::fs::read(out.join("share").join(rel)).expect("read") == *want,
            "{rel} is not byte-identical"
        );
    }
    here.len()
}

#[test]
fn r14_ops_withdraws_a_restore_the_appliance_has_not_started() {
    if child() {
        return;
    }
    let s = common::LoopbackServer::start(
        common::AGENT_CMDLINE,
        serde_json::json!({"customer": "acme", "install": {"to_disk": false}}),
        &[MAC_A],
    );
    let (state, cred) = enroll(&s, MAC_A);
    let src = s.dir.path().join("share");
    std::fs::create_dir_all(&src).expect("src");
    std::fs::write(src.join("a.txt"), "alpha\n").expect("write");
    back_up_as_the_service(&state, &src);
    let out = s.dir.path().join("restored");
    let id = ask(&s, &out);
    let cli = common::Cli::new(&s.data);
    let help = cli.ok(&["appliance", "restore", "--help"]).expect("help");
    assert!(help.contains("--cancel <REQUEST-ID>"), "{help}");
    let err = cli
        .fails(&["appliance", "restore", MAC_A, "--cancel", "999"])
        .expect("run");
    assert!(err.contains("has no restore request 999"), "{err}");
    let err = cli
        .fails(&[
            "appliance",
            "restore",
            MAC_A,
            "--cancel",
            &id.to_string(),
            "--to",
            "/x",
        ])
        .expect("run");
    assert!(err.contains("cannot be used with"), "{err}");

    let said = cli
        .ok(&["appliance", "restore", MAC_A, "--cancel", &id.to_string()])
        .expect("cancel");
    assert!(
        said.contains("withdrawn") && said.contains("will not run it"),
        "{said}"
    );
    let r = &show(&s, MAC_A)["restores"][0];
    assert_eq!(
        (&r["id"], &r["state"]),
        (&serde_json::json!(id), &serde_json::json!("cancelled")),
        "{r}"
    );
    assert!(
        r["cancel_asked_by"]
            .as_str()
            .unwrap_or("")
            .starts_with("cli:"),
        "{r}"
    );
    let text = s.levee(&["appliance", "show", MAC_A]);
    assert!(
        text.contains("cancelled") && text.contains("cancel asked by cli:"),
        "{text}"
    );

    // The appliance is never given it, and never runs it; had it got it
    // just before, its `running` is refused.
    let a = MtlsClient::new(&cred).expect("client");
    let report = StatusReport {
        mac: MAC_A.into(),
        ..Default::default()
    };
    assert!(a.heartbeat(&report).expect("hb").restore.is_none());
    assert!(a.restores().expect("list").requests.is_empty());
    refused_with(a.post_restore(&status(id, RestoreState::Running)), 409);
    common::agent_pass(&s.http, MAC_A, &state);
    assert!(!out.exists(), "a withdrawn request ran");
    assert_eq!(show(&s, MAC_A)["restores"][0]["state"], "cancelled");

    // Finished requests cannot be cancelled: the error names the state.
    let err = cli
        .fails(&["appliance", "restore", MAC_A, "--cancel", &id.to_string()])
        .expect("run");
    assert!(
        err.contains(&format!(
            "restore request {id} of appliance {MAC_A} is cancelled"
        )),
        "{err}"
    );
    let done = ask(&s, &out);
    common::agent_pass(&s.http, MAC_A, &state);
    assert_eq!(show(&s, MAC_A)["restores"][0]["state"], "done");
    let err = cli
        .fails(&["appliance", "restore", MAC_A, "--cancel", &done.to_string()])
        .expect("run");
    assert!(
        err.contains("is done")
            && err.contains("only a requested or running restore can be cancelled"),
        "{err}"
    );
}

#[test]
fn r14_a_running_restore_ops_cancels_stops_between_files() {
    const TEST: &str = "r14_a_running_restore_ops_cancels_stops_between_files";
    if child() {
        return;
    }
    let (s, state, files) = a_with_a_large_backup();
    let out = s.dir.path().join("restored");
    let id = ask(&s, &out);
    let (mut child, log) =
        stopped_mid_restore(TEST, &s, &state, || files_below(&out.join("share")).len());
    let said = s.levee(&["appliance", "restore", MAC_A, "--cancel", &id.to_string()]);
    assert!(
        said.contains("is being cancelled") && said.contains("stay there"),
        "{said}"
    );
    assert_eq!(show(&s, MAC_A)["restores"][0]["state"], "cancelling");
    // Its next progress report (each heartbeat interval, 1 s here: due
    // once it runs again) is answered `cancelling`, and it stops.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(throttle(&mut child, || false));
    let ended = child.wait().expect("wait");
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ended.success(), "{said}");
    let r = &show(&s, MAC_A)["restores"][0];
    assert_eq!(r["state"], "cancelled", "{r}\n{said}");
    let why = r["reason"].as_str().unwrap_or("");
    assert!(
        why.contains("stopped on request of ops") && why.contains("stays"),
        "{r}"
    );
    let written = only_whole_files(&out, &files);
    assert!(written < MANY, "it did not stop: {written} files");
    assert_eq!(r["files"], written as u64, "{r}");
    eprintln!("cancelled with {written} of {MANY} files written");
    // Cancelled stays cancelled: not given again, nothing runs again.
    std::fs::remove_dir_all(&out).expect("clean");
    common::agent_pass(&s.http, MAC_A, &state);
    assert!(!out.exists(), "a cancelled restore ran again");
}

#[test]
fn r14_a_restore_cut_by_a_killed_service_is_resumed_and_completes_byte_identical() {
    const TEST: &str =
        "r14_a_restore_cut_by_a_killed_service_is_resumed_and_completes_byte_identical";
    if child() {
        return;
    }
    let (s, state, files) = a_with_a_large_backup();
    let total: u64 = files.values().map(|f| f.len() as u64).sum();
    // The target holds an older version of every file (other contents,
    // same size), so the restore writes each under a temporary name and
    // renames it over the old one: the kill leaves such files.
    let out = s.dir.path().join("restored");
    for (i, rel) in files.keys().enumerate() {
        let old = out.join("share").join(rel);
        std::fs::create_dir_all(old.parent().expect("dir")).expect("dir");
        std::fs::write(&old, common::noise(32 << 10, 9000 + i as u64)).expect("old");
    }
    // A file is restored once its size and time are the snapshot's (the
    // share's): the target sets the time last.
    let src = s.dir.path().join("share");
    let like_src = |rel: &String| {
        let meta = |p: PathBuf| std::fs::metadata(p).and_then(|m| Ok((m.len(), m.modified()?)));
        matches!(
            (meta(out.join("share").join(rel)), meta(src.join(rel))),
            (Ok(a), Ok(b)) if a == b
        )
    };
    let restored = || files.keys().filter(|rel| like_src(rel)).count();
    let id = ask(&s, &out);
    let (mut child, _log) = stopped_mid_restore(TEST, &s, &state, restored);
    signal(&child, libc::SIGKILL);
    let _ = child.wait();
    let cut = restored();
    let temps = files_below(&out.join("share"))
        .iter()
        .filter(|f| f.contains(".levee-restore-"))
        .count();
    assert_eq!(show(&s, MAC_A)["restores"][0]["state"], "running");

    // The service starts again: the heartbeat brings the request back, the
    // journal says it started: resumed.
    common::agent_pass(&s.http, MAC_A, &state);
    let shown = show(&s, MAC_A);
    let r = &resumed_and_done(&shown, id);
    assert_eq!(
        only_whole_files(&out, &files),
        MANY,
        "every file, and nothing else"
    );
    let (again_files, again_bytes) = (
        r["files"].as_u64().expect("files"),
        r["bytes"].as_u64().expect("bytes"),
    );
    assert!(
        again_bytes < total && again_files < MANY as u64,
        "resumed run wrote {again_files} files, {again_bytes} of {total} bytes; the cut run had \
         {cut} files there"
    );
    eprintln!(
        "cut with {cut} of {MANY} files restored and {temps} temporary files; resumed run \
         wrote {again_files} files, {again_bytes} of {total} bytes"
    );
    // The files the cut run had finished were kept: at most the ones it
    // was writing when killed are written again.
    assert!(
        again_files as usize + cut >= MANY && (again_files as usize) <= MANY - cut + 16,
        "{again_files} written again, {cut} there after the cut"
    );
    let run = shown["backups"]["runs"]
        .as_array()
        .and_then(|runs| runs.iter().find(|r| r["kind"] == "restore"))
        .unwrap_or_else(|| panic!("no restore run: {shown}"))
        .clone();
    assert_eq!(
        (&run["result"], &run["files_total"]),
        (&serde_json::json!("success"), &serde_json::json!(MANY)),
        "{run}"
    );
    assert_eq!(run["bytes_new"], again_bytes, "{run}");
}
