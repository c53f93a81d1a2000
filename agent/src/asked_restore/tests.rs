//! Unit tests of the restores ops asks for.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;
use crate::backup::commands::backup::{backup, BackupOptions};
use crate::backup::progress::Counters;
use levee_proto::repo::KdfParams;
use levee_proto::runs::RunResult;
use std::os::unix::fs::MetadataExt;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A state dir with a repository holding one backup of `share/`.
fn appliance() -> (tempfile::TempDir, CustomerConfig) {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::fs::write(share.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(share.join("sub/b.bin"), vec![7u8; 100_000]).unwrap();
    let repo = Repository::init(
        &dir.path().join("repo"),
        KEY,
        KdfParams::with_memory(1024),
        "appliance",
        "appliance",
    )
    .unwrap();
    let opts = BackupOptions {
        sources: vec![share.to_string_lossy().into()],
        ..Default::default()
    };
    backup(&repo, &opts, None, &Counters::default()).unwrap();
    let config = serde_json::from_value(serde_json::json!({
        "customer": "c",
        "sources": [{"name": "files", "smb": "smb://backup@10.0.0.1/files", "password": "pw"}],
    }))
    .unwrap();
    (dir, config)
}

fn req(id: i64, target: &str) -> RestoreRequest {
    RestoreRequest {
        id,
        snapshot: "latest".into(),
        path: None,
        target: target.into(),
        credentials_of: None,
        cancel: false,
    }
}

/// No cancel from the heartbeat; progress every minute.
fn watch(cancel: &CancelAsked) -> Watch<'_> {
    Watch {
        cancel,
        every: std::time::Duration::from_secs(60),
    }
}

#[test]
fn a_request_runs_once_into_a_directory_and_is_reported() {
    let (dir, config) = appliance();
    let state = dir.path();
    let cancel = CancelAsked::default();
    let w = watch(&cancel);
    let out = state.join("out");
    let target = out.to_string_lossy().to_string();
    let ran = run(
        state,
        &config,
        &state.join("repo"),
        KEY,
        &req(4, &target),
        w,
    );
    assert_eq!(ran.status.state, RestoreState::Done, "{:?}", ran.status);
    assert_eq!((ran.status.files, ran.status.errors), (2, 0));
    assert_eq!(
        std::fs::read(out.join("share/sub/b.bin")).unwrap(),
        vec![7u8; 100_000]
    );
    let r = ran.report.expect("a run report");
    assert_eq!((r.kind, r.result), (RunKind::Restore, RunResult::Success));
    assert_eq!(r.job.as_deref(), Some("restore request 4"));
    assert_eq!(r.sources, std::slice::from_ref(&target));
    assert_eq!(r.files_new, 2);
    // The same id again: nothing runs (the target stays empty).
    std::fs::remove_dir_all(&out).unwrap();
    let again = run(
        state,
        &config,
        &state.join("repo"),
        KEY,
        &req(4, &target),
        w,
    );
    assert!(again.report.is_none());
    assert_eq!(again.status.state, RestoreState::Done);
    assert!(!out.exists(), "a request ran twice");
}

#[test]
fn bad_targets_and_missing_accounts_are_refused_with_the_reason() {
    let (dir, config) = appliance();
    let state = dir.path();
    let cancel = CancelAsked::default();
    let w = watch(&cancel);
    let repo = state.join("repo");
    for (id, target, says) in [
        (
            1,
            "relative/dir",
            "neither an smb:// URL nor an absolute path",
        ),
        (2, "/srv/../etc", "`..`"),
        (3, "smb://10.0.0.9/other", "--credentials-of"),
    ] {
        let ran = run(state, &config, &repo, KEY, &req(id, target), w);
        let why = ran.status.reason.clone().unwrap_or_default();
        assert_eq!(ran.status.state, RestoreState::Failed);
        assert!(why.contains(says), "{target}: {why}");
        let r = ran.report.expect("a failed run is reported");
        assert_eq!((r.kind, r.result), (RunKind::Restore, RunResult::Failed));
        assert!(r.errors[0].message.contains(says), "{:?}", r.errors);
    }
    // No repository: said so.
    let empty = tempfile::tempdir().unwrap();
    let ran = run(
        empty.path(),
        &config,
        &empty.path().join("repo"),
        KEY,
        &req(9, "/srv/x"),
        w,
    );
    let why = ran.status.reason.unwrap_or_default();
    assert!(why.contains("no repository yet"), "{why}");
}

#[test]
fn a_restore_cut_by_a_restart_is_resumed_keeping_the_files_it_finished() {
    let (dir, config) = appliance();
    let state = dir.path();
    let (cancel, out) = (CancelAsked::default(), state.join("out"));
    let w = watch(&cancel);
    let target = out.to_string_lossy().to_string();
    // What a run cut mid-way leaves: one file whole (size and time of
    // the snapshot), one half-written under its name, a directory.
    let first = run(
        state,
        &config,
        &state.join("repo"),
        KEY,
        &req(4, &target),
        w,
    );
    assert_eq!(first.status.state, RestoreState::Done);
    let whole = std::fs::metadata(out.join("share/sub/b.bin")).unwrap();
    std::fs::write(out.join("share/a.txt"), b"alp").unwrap();
    // ... and the temporary file of one it was overwriting (its process
    // is gone).
    let dead = crate::backup::target::local::tests::dead_pid();
    let temp = out.join(format!("share/sub/.levee-restore-{dead}-7.tmp"));
    std::fs::write(&temp, b"half").unwrap();
    let mut j = load(state);
    j.insert(5, Entry::new(RestoreState::Running, None));
    save(state, &mut j).unwrap();
    let ran = run(
        state,
        &config,
        &state.join("repo"),
        KEY,
        &req(5, &target),
        w,
    );
    assert_eq!(ran.status.state, RestoreState::Done, "{:?}", ran.status);
    assert_eq!(
        (ran.status.files, ran.status.bytes),
        (1, 6),
        "only a.txt again"
    );
    let why = ran.status.reason.clone().unwrap_or_default();
    assert!(
        why.contains("resumed") && why.contains("1 restored before"),
        "{why}"
    );
    assert_eq!(std::fs::read(out.join("share/a.txt")).unwrap(), b"alpha\n");
    assert!(!temp.exists(), "the killed run's temporary file was left");
    let kept = std::fs::metadata(out.join("share/sub/b.bin")).unwrap();
    assert_eq!(
        (kept.ino(), kept.len()),
        (whole.ino(), 100_000),
        "the whole file was kept, not written again"
    );
    let r = ran.report.expect("a run report");
    assert_eq!((r.files_new, r.files_total, r.bytes_new), (1, 2, 6));
    assert_eq!(load(state)[&5].state, RestoreState::Done);
}

#[test]
fn a_request_ops_cancels_does_not_run_and_is_cancelled() {
    let (dir, config) = appliance();
    let state = dir.path();
    let out = state.join("out");
    let target = out.to_string_lossy().to_string();
    // Cancelled in the request itself, or by the heartbeat thread.
    let mut cancelled = req(6, &target);
    cancelled.cancel = true;
    let none = CancelAsked::default();
    let ran = run(
        state,
        &config,
        &state.join("repo"),
        KEY,
        &cancelled,
        watch(&none),
    );
    let asked = CancelAsked::default();
    asked.ask(7);
    let ran2 = run(
        state,
        &config,
        &state.join("repo"),
        KEY,
        &req(7, &target),
        watch(&asked),
    );
    for r in [ran, ran2] {
        assert_eq!(r.status.state, RestoreState::Cancelled, "{:?}", r.status);
        assert!(r.report.is_none());
        let why = r.status.reason.unwrap_or_default();
        assert!(why.contains("before it started"), "{why}");
    }
    assert!(!out.exists(), "a cancelled request ran");
    // A cut run ops cancels before it resumes: not resumed.
    let mut j = load(state);
    j.insert(8, Entry::new(RestoreState::Running, None));
    save(state, &mut j).unwrap();
    asked.ask(8);
    let ran = run(
        state,
        &config,
        &state.join("repo"),
        KEY,
        &req(8, &target),
        watch(&asked),
    );
    assert_eq!(ran.status.state, RestoreState::Cancelled);
    assert!(ran
        .status
        .reason
        .unwrap_or_default()
        .contains("before it resumed"));
    assert!(!out.exists());
}

#[test]
fn the_heartbeats_cancel_stops_the_restore_it_names_between_files() {
    // The watcher beside a running restore: the heartbeat thread's word
    // for this request sets the restore's stop within a look.
    let (asked, p) = (CancelAsked::default(), Progress::default());
    asked.ask(3);
    let t = Instant::now();
    watch_while_running(None, 3, &p, watch(&asked));
    assert!(p.counters.stopping() && t.elapsed() < Duration::from_secs(5));
    // Another request's cancel does not stop this one; its end ends
    // the watcher.
    let p = Progress::default();
    std::thread::scope(|s| {
        s.spawn(|| watch_while_running(None, 4, &p, watch(&asked)));
        std::thread::sleep(Duration::from_millis(500));
        p.end();
    });
    assert!(!p.counters.stopping());
    // A restore asked to stop writes no file it had not started, says
    // so, and its run is not a success.
    let (dir, _) = appliance();
    let repo = Repository::open(&dir.path().join("repo"), KEY).unwrap();
    let out = dir.path().join("out");
    let opts = RestoreOptions {
        snapshot: "latest".into(),
        path: None,
        target: out.to_string_lossy().into(),
        overwrite: Overwrite::Always,
        skip_damaged: false,
    };
    let c = Counters::default();
    c.stop.store(true, Ordering::SeqCst);
    let s = restore(&repo, &opts, None, &c).unwrap();
    assert!(s.stopped && s.files == 0, "{s:?}");
    assert!(!out.join("share/a.txt").exists());
    let ctx = context(&req(9, "/x"), 0, &dir.path().join("repo"));
    let r = build::restore(&ctx, &s);
    assert_eq!(r.result, RunResult::Failed);
    assert!(
        r.errors[0].message.contains("cancelled by ops"),
        "{:?}",
        r.errors
    );
}
