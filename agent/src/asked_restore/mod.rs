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

use std::path::Path;

use levee_proto::config::{format_size, CustomerConfig};
use levee_proto::restore_api::{
    printable, smb_credentials, RestoreRequest, RestoreState, RestoreStatus, RestoreTarget,
};
use levee_proto::runs::{RunKind, RunReport};

use crate::backup::commands::restore::{restore, Overwrite, RestoreOptions, RestoreSummary};
use crate::enroll::{unix_now, Credential, MtlsClient};
use crate::runs::build::{self, RunContext};
use crate::Repository;

mod journal;
#[cfg(test)]
mod tests;
mod watch;

use journal::{load, save, Journal};
pub use journal::{Entry, JOURNAL};
use watch::{watch_while_running, Progress};
pub use watch::{CancelAsked, Watch};

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
