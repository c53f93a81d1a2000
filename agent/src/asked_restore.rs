//! Restores ops asked for (`levee appliance restore`; the protocol is
//! `levee_proto::restore_api`). The service gets a request in its
//! heartbeat answer and runs it on its job thread ([`run`]), so never
//! beside a backup or a replication: from the repository on the data
//! partition (a repository taken over from offsite fetches the packs it
//! lacks as they are read: `replicate::ondemand`) to an SMB share (the
//! account and password of the customer's source on that host and share,
//! or of the source the request names) or a directory on the appliance.
//!
//! Each request runs once: the ids this appliance started are kept in
//! [`JOURNAL`] (written before the restore starts). A request found there
//! as started but never finished was cut by a restart of the service or
//! the box: it is **resumed** with `--overwrite if-changed`, so a file
//! already restored whole (its size and modification time are the
//! snapshot's, which the target sets only once the file is complete) is
//! skipped and every other one is written again from its start. A
//! finished request whose last status the server missed is told again,
//! and nothing runs.
//!
//! Ops may withdraw a request (`--cancel`): one not started never runs
//! (the server answers the appliance's `running` with 409); one running
//! comes back with `cancel` in the heartbeat answer ([`CancelAsked`], set
//! by the heartbeat thread) or in the answer to a progress report (sent
//! every heartbeat interval while it runs), and the restore stops between
//! files and reports `cancelled`; what was written stays.
//!
//! Each step is sent to the server (`running` and progress, then `done`,
//! `failed` with the reason, or `cancelled`), and a run that wrote
//! anything goes through the run report spool as a run of kind `restore`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use levee_proto::config::{format_size, CustomerConfig};
use levee_proto::restore_api::{
    printable, smb_credentials, RestoreRequest, RestoreState, RestoreStatus, RestoreTarget,
};
use levee_proto::runs::{RunKind, RunReport};
use serde::{Deserialize, Serialize};

use crate::backup::commands::restore::{restore, Overwrite, RestoreOptions, RestoreSummary};
use crate::backup::progress::Counters;
use crate::enroll::{unix_now, write_atomic, Credential, MtlsClient};
use crate::runs::build::{self, RunContext};
use crate::Repository;

/// The requests this appliance started, by id (in the state directory).
pub const JOURNAL: &str = "restores.json";
/// Entries kept in the journal (the newest ids).
const KEPT: usize = 200;

/// One request as this appliance last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub state: RestoreState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub files: u64,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub errors: u64,
    /// The server has this final state (nothing more to send).
    #[serde(default)]
    pub told: bool,
}

impl Entry {
    fn status(&self, id: i64) -> RestoreStatus {
        RestoreStatus {
            id,
            state: self.state,
            reason: self.reason.clone(),
            files: self.files,
            bytes: self.bytes,
            errors: self.errors,
        }
    }

    fn new(state: RestoreState, reason: Option<String>) -> Entry {
        Entry {
            state,
            reason,
            files: 0,
            bytes: 0,
            errors: 0,
            told: false,
        }
    }
}

type Journal = BTreeMap<i64, Entry>;

fn load(state: &Path) -> Journal {
    let path = state.join(JOURNAL);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            // A journal we cannot read must not let a request run twice
            // unnoticed; it can only lose the memory of old requests.
            tracing::warn!(
                "{} is not readable ({e}); starting a new one",
                path.display()
            );
            Journal::new()
        }),
        Err(_) => Journal::new(),
    }
}

fn save(state: &Path, journal: &mut Journal) -> Result<(), String> {
    while journal.len() > KEPT {
        journal.pop_first();
    }
    let path = state.join(JOURNAL);
    let bytes = serde_json::to_vec_pretty(journal).map_err(|e| e.to_string())?;
    write_atomic(&path, &bytes, 0o600).map_err(|e| format!("{}: {e}", path.display()))
}

/// The request ops is cancelling, as the heartbeat answer said (`cancel`):
/// the heartbeat thread sets it, the restore running that request on the
/// job thread stops between files.
#[derive(Debug, Default)]
pub struct CancelAsked(AtomicI64);

impl CancelAsked {
    /// Request `id` is to stop.
    pub fn ask(&self, id: i64) {
        self.0.store(id, Ordering::SeqCst);
    }

    fn asked(&self, id: i64) -> bool {
        self.0.load(Ordering::SeqCst) == id
    }
}

/// How a running restore learns that ops cancels it.
#[derive(Debug, Clone, Copy)]
pub struct Watch<'a> {
    /// What the heartbeat thread says.
    pub cancel: &'a CancelAsked,
    /// Between progress reports (their answer says `cancelling` too): the
    /// heartbeat interval.
    pub every: Duration,
}

/// What [`run`] did with a request.
#[derive(Debug)]
pub struct Ran {
    /// The request's final status (as sent, or to be sent again).
    pub status: RestoreStatus,
    /// The run report to spool (`None`: nothing ran now).
    pub report: Option<RunReport>,
}

/// How a request ended here.
enum Outcome {
    /// The restore ran (to its end, or stopped on request).
    Ran(RestoreSummary),
    /// It could not run, or not to its end: why.
    Failed(String),
    /// Ops cancelled it before it started (or before it resumed).
    Cancelled,
    /// The server refused `running`: ops withdrew it (or it is finished
    /// there); nothing runs and nothing more is sent.
    Withdrawn,
}

/// Runs `req` once from the repository in `repo_dir` (opened with
/// `repo_key`), or resumes it after a restart, telling the server each
/// step if this appliance is enrolled (see the module doc). The caller
/// keeps backups and updates out of the way and spools [`Ran::report`].
pub fn run(
    state: &Path,
    config: &CustomerConfig,
    repo_dir: &Path,
    repo_key: &[u8],
    req: &RestoreRequest,
    watch: Watch,
) -> Ran {
    let client = client(state);
    let mut journal = load(state);
    let resumed = match journal.get(&req.id).cloned() {
        Some(e) if e.state.finished() => {
            if !e.told {
                tell(client.as_ref(), state, &mut journal, &e.status(req.id));
            }
            return Ran {
                status: e.status(req.id),
                report: None,
            };
        }
        // Started and never finished: cut by a restart.
        Some(_) => true,
        None => false,
    };
    let started = unix_now();
    let outcome = if req.cancel || watch.cancel.asked(req.id) {
        Outcome::Cancelled
    } else {
        match prepare(config, req) {
            Err(e) => Outcome::Failed(e),
            Ok((target, password)) => {
                journal.insert(req.id, Entry::new(RestoreState::Running, None));
                match save(state, &mut journal) {
                    // Not run without the journal entry: it could run twice.
                    Err(e) => {
                        Outcome::Failed(format!("cannot record the restore before it starts: {e}"))
                    }
                    Ok(()) => match send(client.as_ref(), &journal[&req.id].status(req.id)) {
                        Sent::Refused => Outcome::Withdrawn,
                        Sent::Taken(Some(RestoreState::Cancelling)) => Outcome::Cancelled,
                        Sent::Taken(_) | Sent::Unsent => {
                            let how = Execute {
                                target: &target,
                                password: password.as_deref(),
                                resume: resumed,
                            };
                            match execute(state, config, repo_dir, repo_key, req, &how, |c| {
                                watch_while_running(client.as_ref(), req.id, c, watch)
                            }) {
                                Ok(s) => Outcome::Ran(s),
                                Err(e) => Outcome::Failed(e),
                            }
                        }
                    },
                }
            }
        }
    };
    let report = match &outcome {
        Outcome::Ran(s) => Some(build::restore(&context(req, started, repo_dir), s)),
        Outcome::Failed(e) => Some(build::failed(
            RunKind::Restore,
            &context(req, started, repo_dir),
            e,
        )),
        Outcome::Cancelled | Outcome::Withdrawn => None,
    };
    let status = finish(
        client.as_ref(),
        state,
        &mut journal,
        req,
        entry(outcome, resumed),
    );
    Ran { status, report }
}

fn client(state: &Path) -> Option<MtlsClient> {
    match Credential::load(state) {
        Ok(Some(c)) => match MtlsClient::new(&c) {
            Ok(client) => Some(client),
            Err(e) => {
                tracing::warn!("restore status not sent: {e}");
                None
            }
        },
        _ => None,
    }
}

fn context(req: &RestoreRequest, started: i64, repo_dir: &Path) -> RunContext {
    RunContext {
        job: Some(format!("restore request {}", req.id)),
        sources: vec![req.target.clone()],
        started_at: started,
        ended_at: unix_now(),
        repo_bytes: build::repo_size(repo_dir),
    }
}

/// The target to write to (with the account for SMB) and its password.
fn prepare(
    config: &CustomerConfig,
    req: &RestoreRequest,
) -> Result<(String, Option<String>), String> {
    let target = req.check().map_err(|e| e.to_string())?;
    match &target {
        RestoreTarget::Local(dir) => Ok((dir.clone(), None)),
        RestoreTarget::Smb { .. } => {
            let (url, source) =
                smb_credentials(&target, &config.sources, req.credentials_of.as_deref())
                    .map_err(|e| format!("{e} (customer {})", config.customer))?;
            Ok((url, source.password.as_ref().map(|p| p.0.clone())))
        }
    }
}

/// Where and how [`execute`] writes.
struct Execute<'a> {
    /// With the account for SMB.
    target: &'a str,
    password: Option<&'a str>,
    /// Resuming a restore cut by a restart: files already restored whole
    /// are skipped.
    resume: bool,
}

/// Opens the repository and restores, with `watcher` running beside it
/// (it gets the restore's counters and sets their `stop`).
fn execute(
    state: &Path,
    config: &CustomerConfig,
    repo_dir: &Path,
    repo_key: &[u8],
    req: &RestoreRequest,
    how: &Execute,
    watcher: impl FnOnce(&Progress) + Send,
) -> Result<RestoreSummary, String> {
    let repo = match Repository::open(repo_dir, repo_key) {
        Ok(r) => r,
        Err(crate::RepoError::NotARepository(_)) => {
            return Err(format!(
                "this appliance has no repository yet ({}: no backup has run, and no repository \
                 was taken over)",
                repo_dir.display()
            ))
        }
        Err(e) => return Err(format!("the repository {}: {e}", repo_dir.display())),
    };
    // A repository taken over from offsite: packs not here yet are
    // fetched as the restore reads them (replicate::ondemand).
    crate::replicate::ondemand::attach(&repo, state, config)
        .map_err(|e| format!("packs not yet fetched from offsite cannot be fetched: {e}"))?;
    tracing::info!(
        "restore request {}{}: snapshot {}{} to {}",
        req.id,
        if how.resume {
            " (resumed after a restart)"
        } else {
            ""
        },
        req.snapshot,
        req.path
            .as_deref()
            .map(|p| format!(" (only {p})"))
            .unwrap_or_default(),
        how.target
    );
    let opts = RestoreOptions {
        snapshot: req.snapshot.clone(),
        path: req.path.clone(),
        target: how.target.to_string(),
        // A fresh restore writes everything; a resumed one skips what the
        // cut run finished (the target sets a file's size and time only
        // once it is whole).
        overwrite: if how.resume {
            Overwrite::IfChanged
        } else {
            Overwrite::Always
        },
        skip_damaged: false,
    };
    let progress = Progress::default();
    std::thread::scope(|s| {
        s.spawn(|| watcher(&progress));
        let r = restore(&repo, &opts, how.password, &progress.counters);
        progress.end();
        r
    })
    .map_err(|e| e.to_string())
}

/// A running restore's counters, and its end for the watcher.
#[derive(Default)]
struct Progress {
    counters: Counters,
    ended: Mutex<bool>,
    wake: Condvar,
}

impl Progress {
    fn end(&self) {
        if let Ok(mut e) = self.ended.lock() {
            *e = true;
        }
        self.wake.notify_all();
    }

    /// Waits up to `d`; whether the restore has ended.
    fn wait(&self, d: Duration) -> bool {
        let Ok(ended) = self.ended.lock() else {
            return true;
        };
        match self.wake.wait_timeout_while(ended, d, |e| !*e) {
            Ok((e, _)) => *e,
            Err(_) => true,
        }
    }
}

/// Beside a running restore: stops it when the heartbeat thread says ops
/// cancels it, and every `watch.every` reports its progress (`running`
/// with the counts so far), whose answer says so too.
fn watch_while_running(client: Option<&MtlsClient>, id: i64, p: &Progress, watch: Watch) {
    // The heartbeat's word is checked often; the server is asked each
    // interval.
    const LOOK: Duration = Duration::from_millis(200);
    let mut next_report = Instant::now() + watch.every;
    while !p.wait(LOOK) {
        let mut stop = watch.cancel.asked(id);
        if !stop && Instant::now() >= next_report {
            next_report = Instant::now() + watch.every;
            let c = &p.counters;
            let status = RestoreStatus {
                id,
                state: RestoreState::Running,
                reason: None,
                files: Counters::get(&c.files),
                bytes: Counters::get(&c.bytes_read),
                errors: Counters::get(&c.errors),
            };
            stop = matches!(
                send(client, &status),
                Sent::Refused | Sent::Taken(Some(RestoreState::Cancelling))
            );
        }
        if stop {
            tracing::info!("restore request {id}: ops cancelled it; stopping between files");
            p.counters.stop.store(true, Ordering::SeqCst);
            return;
        }
    }
}

/// The journal entry (and status) for how a request ended.
fn entry(outcome: Outcome, resumed: bool) -> Entry {
    match outcome {
        Outcome::Ran(s) => {
            let (state, reason) = if s.stopped {
                (
                    RestoreState::Cancelled,
                    Some(format!(
                        "stopped on request of ops after {} files ({}); what was written stays \
                         in the target, the rest was not restored",
                        s.files,
                        format_size(s.bytes)
                    )),
                )
            } else if s.errors > 0 {
                let first = s.error_messages.first().map(String::as_str).unwrap_or("");
                (
                    RestoreState::Failed,
                    Some(format!(
                        "{} error(s) ({} files restored): {first}",
                        s.errors, s.files
                    )),
                )
            } else if resumed {
                (
                    RestoreState::Done,
                    Some(format!(
                        "resumed after a restart: {} files restored now, {} restored before \
                         were kept",
                        s.files, s.skipped
                    )),
                )
            } else {
                (RestoreState::Done, None)
            };
            Entry {
                state,
                reason: reason.as_deref().map(printable),
                files: s.files,
                bytes: s.bytes,
                errors: s.errors,
                told: false,
            }
        }
        Outcome::Failed(e) => Entry {
            errors: 1,
            ..Entry::new(RestoreState::Failed, Some(printable(&e)))
        },
        Outcome::Cancelled => Entry::new(
            RestoreState::Cancelled,
            Some(if resumed {
                "cancelled by ops before it resumed after a restart; what the cut run wrote \
                 stays in the target"
                    .into()
            } else {
                "cancelled by ops before it started; nothing was written".into()
            }),
        ),
        Outcome::Withdrawn => Entry {
            told: true,
            ..Entry::new(
                RestoreState::Cancelled,
                Some(
                    "the server refused to start it (withdrawn by ops); nothing was written".into(),
                ),
            )
        },
    }
}

/// Records how the request ended in the journal and tells the server.
fn finish(
    client: Option<&MtlsClient>,
    state: &Path,
    journal: &mut Journal,
    req: &RestoreRequest,
    entry: Entry,
) -> RestoreStatus {
    let id = req.id;
    let why = entry.reason.as_deref().unwrap_or("");
    match entry.state {
        RestoreState::Done => tracing::info!(
            "restore request {id} done: {} files, {} bytes {why}",
            entry.files,
            entry.bytes
        ),
        RestoreState::Cancelled => tracing::info!("restore request {id} cancelled: {why}"),
        _ => tracing::warn!("restore request {id} failed: {why}"),
    }
    let status = entry.status(id);
    let told = entry.told;
    journal.insert(id, entry);
    if let Err(e) = save(state, journal) {
        tracing::warn!("restore request {id}: {e}");
    }
    if !told {
        tell(client, state, journal, &status);
    }
    status
}

/// Sends a final status; once the server has it, the journal says so.
fn tell(client: Option<&MtlsClient>, state: &Path, journal: &mut Journal, status: &RestoreStatus) {
    if matches!(send(client, status), Sent::Taken(_) | Sent::Refused) {
        if let Some(e) = journal.get_mut(&status.id) {
            e.told = true;
        }
        if let Err(e) = save(state, journal) {
            tracing::warn!("restore request {}: {e}", status.id);
        }
    }
}

/// What became of a status sent to the server.
enum Sent {
    /// Taken; the request's state there now, if the answer said.
    Taken(Option<RestoreState>),
    /// Refused (404, 409): the server has no such open request (withdrawn,
    /// or already finished there): there is nothing more to tell it.
    Refused,
    /// Not enrolled, or the server was not reached: sent again with the
    /// next heartbeat that brings the request back.
    Unsent,
}

/// `POST /api/v1/restore`.
fn send(client: Option<&MtlsClient>, status: &RestoreStatus) -> Sent {
    let Some(c) = client else {
        return Sent::Unsent;
    };
    match c.post_restore(status) {
        Ok(state) => Sent::Taken(state),
        Err(
            e @ crate::enroll::EnrollError::Refused {
                status: 404 | 409, ..
            },
        ) => {
            tracing::warn!(
                "restore request {}: the server refused status {}: {e}",
                status.id,
                status.state.as_str()
            );
            Sent::Refused
        }
        Err(e) => {
            tracing::warn!(
                "restore request {}: status {} not sent ({e}); sent again with the next heartbeat",
                status.id,
                status.state.as_str()
            );
            Sent::Unsent
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::commands::backup::{backup, BackupOptions};
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
}
