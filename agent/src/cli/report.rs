//! Runs by hand are reported too: on an enrolled appliance (its state dir
//! holds a credential) `backup`, `restore`, `prune` and `check` put their
//! run report into the spool, and the service sends it with its next
//! heartbeat. Elsewhere (a workstation, a test) nothing is written.

use std::path::Path;

use levee_agent::enroll::unix_now;
use levee_agent::runs::build::{self, RunContext};
use levee_agent::runs::Spool;
use levee_proto::runs::{RunKind, RunReport};

/// A run by hand being timed for its report.
pub struct Manual<'a> {
    state_dir: &'a Path,
    kind: RunKind,
    ctx: RunContext,
}

impl<'a> Manual<'a> {
    pub fn start(state_dir: &'a Path, kind: RunKind, sources: Vec<String>) -> Manual<'a> {
        Manual {
            state_dir,
            kind,
            ctx: RunContext {
                job: None,
                sources,
                started_at: unix_now(),
                ended_at: 0,
                repo_bytes: None,
            },
        }
    }

    /// Spools the report of the finished run: `make` builds it from the
    /// outcome; an error becomes a failed report.
    pub fn finish<T, E: std::fmt::Display>(
        mut self,
        repo: Option<&Path>,
        outcome: &Result<T, E>,
        make: impl FnOnce(&RunContext, &T) -> RunReport,
    ) {
        if !enrolled(self.state_dir) {
            return;
        }
        self.ctx.ended_at = unix_now();
        self.ctx.repo_bytes = repo.and_then(build::repo_size);
        let report = match outcome {
            Ok(v) => make(&self.ctx, v),
            Err(e) => build::failed(self.kind, &self.ctx, &format!("{e:#}")),
        };
        if let Err(e) = Spool::new(self.state_dir).push(&report) {
            eprintln!("levee-agent: run report not kept: {e}");
        }
    }
}

/// Whether `state_dir` is an enrolled appliance's (it has a credential).
fn enrolled(state_dir: &Path) -> bool {
    matches!(
        levee_agent::enroll::Credential::load(state_dir),
        Ok(Some(_))
    )
}
