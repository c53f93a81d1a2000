//! Restores ops asked for (`levee appliance restore`; the protocol is
//! `levee_proto::restore_api`). The service gets a request in its
//! heartbeat answer and runs it on its job thread ([`run`]), so never
//! beside a backup or a replication: from the repository on the data
//! partition (a repository taken over from offsite fetches the packs it
//! lacks as they are read: `replicate::ondemand`) to an SMB share (the account and password of the customer's
//! source on that host and share, or of the source the request names) or
//! a directory on the appliance.
//!
//! Each request runs once: the ids this appliance started are kept in
//! [`JOURNAL`] (written before the restore starts). A request found
//! there as started but never finished was cut by a restart of the
//! service or the box: it is reported failed (what was written stays in
//! the target) and not run again; ops asks again for a new one. A finished
//! request whose last status the server missed is told again, and nothing
//! runs. Each step is sent to the server (`running`, then `done` or
//! `failed` with the reason), and the run itself goes through the run
//! report spool as a run of kind `restore`.

use std::collections::BTreeMap;
use std::path::Path;

use levee_proto::config::CustomerConfig;
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

/// What [`run`] did with a request.
#[derive(Debug)]
pub struct Ran {
    /// The request's final status (as sent, or to be sent again).
    pub status: RestoreStatus,
    /// The run report to spool (`None`: nothing ran now).
    pub report: Option<RunReport>,
}

/// Runs `req` once from the repository in `repo_dir` (opened with
/// `repo_key`), telling the server each step if this appliance is
/// enrolled (see the module doc). The caller keeps backups and updates
/// out of the way and spools [`Ran::report`].
pub fn run(
    state: &Path,
    config: &CustomerConfig,
    repo_dir: &Path,
    repo_key: &[u8],
    req: &RestoreRequest,
) -> Ran {
    let client = client(state);
    let mut journal = load(state);
    if let Some(e) = journal.get(&req.id).cloned() {
        if e.state.finished() {
            if !e.told {
                tell(client.as_ref(), state, &mut journal, &e.status(req.id));
            }
            return Ran {
                status: e.status(req.id),
                report: None,
            };
        }
        // Started and never finished: cut by a restart.
        let why = "the appliance restarted during this restore (what was written stays in the \
                   target); it is not run again: ask for a new restore";
        let started = unix_now();
        let status = finish(
            client.as_ref(),
            state,
            &mut journal,
            req.id,
            Err(why.into()),
        );
        return Ran {
            report: Some(build::failed(
                RunKind::Restore,
                &context(req, started, repo_dir),
                why,
            )),
            status,
        };
    }
    let started = unix_now();
    let outcome = match prepare(config, req) {
        Ok((target, password)) => {
            journal.insert(
                req.id,
                Entry {
                    state: RestoreState::Running,
                    reason: None,
                    files: 0,
                    bytes: 0,
                    errors: 0,
                    told: false,
                },
            );
            match save(state, &mut journal) {
                // Not run without the journal entry: it could run twice.
                Err(e) => Err(format!("cannot record the restore before it starts: {e}")),
                Ok(()) => {
                    send(client.as_ref(), &journal[&req.id].status(req.id));
                    execute(
                        state,
                        config,
                        repo_dir,
                        repo_key,
                        req,
                        &target,
                        password.as_deref(),
                    )
                }
            }
        }
        Err(e) => Err(e),
    };
    let report = match &outcome {
        Ok(s) => build::restore(&context(req, started, repo_dir), s),
        Err(e) => build::failed(RunKind::Restore, &context(req, started, repo_dir), e),
    };
    let status = finish(client.as_ref(), state, &mut journal, req.id, outcome);
    Ran {
        status,
        report: Some(report),
    }
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

fn execute(
    state: &Path,
    config: &CustomerConfig,
    repo_dir: &Path,
    repo_key: &[u8],
    req: &RestoreRequest,
    target: &str,
    password: Option<&str>,
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
        "restore request {}: snapshot {}{} to {target}",
        req.id,
        req.snapshot,
        req.path
            .as_deref()
            .map(|p| format!(" (only {p})"))
            .unwrap_or_default()
    );
    let opts = RestoreOptions {
        snapshot: req.snapshot.clone(),
        path: req.path.clone(),
        target: target.to_string(),
        overwrite: Overwrite::Always,
        skip_damaged: false,
    };
    restore(&repo, &opts, password, &Counters::default()).map_err(|e| e.to_string())
}

/// Records the outcome in the journal and tells the server.
fn finish(
    client: Option<&MtlsClient>,
    state: &Path,
    journal: &mut Journal,
    id: i64,
    outcome: Result<RestoreSummary, String>,
) -> RestoreStatus {
    let entry = match outcome {
        Ok(s) => {
            let (state, reason) = if s.errors == 0 {
                (RestoreState::Done, None)
            } else {
                let first = s.error_messages.first().map(String::as_str).unwrap_or("");
                (
                    RestoreState::Failed,
                    Some(printable(&format!(
                        "{} error(s) ({} files restored): {first}",
                        s.errors, s.files
                    ))),
                )
            };
            Entry {
                state,
                reason,
                files: s.files,
                bytes: s.bytes,
                errors: s.errors,
                told: false,
            }
        }
        Err(e) => Entry {
            state: RestoreState::Failed,
            reason: Some(printable(&e)),
            files: 0,
            bytes: 0,
            errors: 1,
            told: false,
        },
    };
    match &entry.reason {
        None => tracing::info!(
            "restore request {id} done: {} files, {} bytes",
            entry.files,
            entry.bytes
        ),
        Some(why) => tracing::warn!("restore request {id} failed: {why}"),
    }
    let status = entry.status(id);
    journal.insert(id, entry);
    if let Err(e) = save(state, journal) {
        tracing::warn!("restore request {id}: {e}");
    }
    tell(client, state, journal, &status);
    status
}

/// Sends a final status; once the server has it, the journal says so.
fn tell(client: Option<&MtlsClient>, state: &Path, journal: &mut Journal, status: &RestoreStatus) {
    if send(client, status) {
        if let Some(e) = journal.get_mut(&status.id) {
            e.told = true;
        }
        if let Err(e) = save(state, journal) {
            tracing::warn!("restore request {}: {e}", status.id);
        }
    }
}

/// `POST /api/v1/restore`; whether the server took it (a request it no
/// longer has counts: there is nothing to tell it any more).
fn send(client: Option<&MtlsClient>, status: &RestoreStatus) -> bool {
    let Some(c) = client else { return false };
    match c.post_restore(status) {
        Ok(()) => true,
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
            true
        }
        Err(e) => {
            tracing::warn!(
                "restore request {}: status {} not sent ({e}); sent again with the next heartbeat",
                status.id,
                status.state.as_str()
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::commands::backup::{backup, BackupOptions};
    use levee_proto::repo::KdfParams;
    use levee_proto::runs::RunResult;

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
        }
    }

    #[test]
    fn a_request_runs_once_into_a_directory_and_is_reported() {
        let (dir, config) = appliance();
        let state = dir.path();
        let out = state.join("out");
        let target = out.to_string_lossy().to_string();
        let ran = run(state, &config, &state.join("repo"), KEY, &req(4, &target));
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
        let again = run(state, &config, &state.join("repo"), KEY, &req(4, &target));
        assert!(again.report.is_none());
        assert_eq!(again.status.state, RestoreState::Done);
        assert!(!out.exists(), "a request ran twice");
    }

    #[test]
    fn bad_targets_and_missing_accounts_are_refused_with_the_reason() {
        let (dir, config) = appliance();
        let state = dir.path();
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
            let ran = run(state, &config, &repo, KEY, &req(id, target));
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
        );
        let why = ran.status.reason.unwrap_or_default();
        assert!(why.contains("no repository yet"), "{why}");
    }

    #[test]
    fn a_restore_cut_by_a_restart_is_reported_failed_and_not_run_again() {
        let (dir, config) = appliance();
        let state = dir.path();
        let out = state.join("out");
        std::fs::write(state.join(JOURNAL), r#"{"5": {"state": "running"}}"#).unwrap();
        let ran = run(
            state,
            &config,
            &state.join("repo"),
            KEY,
            &req(5, &out.to_string_lossy()),
        );
        assert_eq!(ran.status.state, RestoreState::Failed);
        assert!(
            ran.status
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("restarted"),
            "{:?}",
            ran.status
        );
        assert!(!out.exists());
        assert_eq!(ran.report.map(|r| r.result), Some(RunResult::Failed));
    }
}
