//! The run report spool: `STATE/spool/runs/`, one JSON file per report,
//! named so that the names sort in the order the runs ended. Every report
//! is written here first (by the daemon's jobs and by runs by hand) and
//! sent from here in order, so a server that is down for a week loses
//! nothing and sees the runs in the order they happened.
//!
//! Bounded: beyond [`MAX_SPOOLED`] reports the oldest are dropped (and the
//! drop is logged), so an appliance cut off for months cannot fill its
//! data partition with reports.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use levee_proto::runs::RunReport;

use crate::enroll::write_atomic;

/// Where the spool lives under the agent's state dir.
pub const SPOOL_DIR: &str = "spool/runs";
/// Most reports kept waiting.
pub const MAX_SPOOLED: usize = 1000;

/// One flush at a time per process (the jobs thread and the heartbeat
/// loop both flush): a report is never sent twice at once, and the order
/// holds.
static FLUSHING: Mutex<()> = Mutex::new(());

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("run report spool {path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// Why a report was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Try again later (server unreachable, 5xx, certificate trouble):
    /// the report stays, and so do the ones after it.
    Transient(String),
    /// The server will never take this report (400: it fails validation):
    /// it is dropped, and the next one goes.
    Refused(String),
}

/// What a flush did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flushed {
    pub sent: usize,
    /// Reports dropped: refused by the server, or unreadable in the spool.
    pub dropped: Vec<String>,
    /// Still waiting.
    pub left: usize,
    /// Why the flush stopped early.
    pub stopped: Option<String>,
}

pub struct Spool {
    dir: PathBuf,
    max: usize,
}

impl Spool {
    /// The spool of the agent whose state is in `state_dir`.
    pub fn new(state_dir: &Path) -> Spool {
        Spool {
            dir: state_dir.join(SPOOL_DIR),
            max: MAX_SPOOLED,
        }
    }

    /// A spool bounded at `max` reports (tests: the bound without writing
    /// a thousand files).
    #[cfg(test)]
    fn with_max(state_dir: &Path, max: usize) -> Spool {
        Spool {
            max,
            ..Spool::new(state_dir)
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, e: impl std::fmt::Display) -> SpoolError {
        SpoolError::Io {
            path: self.dir.clone(),
            reason: e.to_string(),
        }
    }

    /// Adds a report; returns how many old reports were dropped to stay
    /// within its bound ([`MAX_SPOOLED`]).
    pub fn push(&self, report: &RunReport) -> Result<usize, SpoolError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // The id keeps two reports of one nanosecond apart; it is checked
        // to be file-name safe by validate().
        report
            .validate()
            .map_err(|e| self.io(format!("not spooling an invalid report: {e}")))?;
        let path = self.dir.join(format!("{nanos:024}-{}.json", report.id));
        write_atomic(&path, &report.to_bytes(), 0o600).map_err(|e| self.io(e))?;
        let pending = self.pending()?;
        let excess = pending.len().saturating_sub(self.max);
        for old in &pending[..excess] {
            // Gone already (sent meanwhile) is as good as removed.
            let _ = std::fs::remove_file(old);
        }
        Ok(excess)
    }

    /// The spooled reports' files, oldest first.
    pub fn pending(&self) -> Result<Vec<PathBuf>, SpoolError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && p.file_name()
                        .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
            })
            .collect();
        files.sort();
        Ok(files)
    }

    /// Sends the spooled reports in order with `send`, removing each one
    /// delivered or refused; stops at the first transient failure.
    pub fn flush(
        &self,
        mut send: impl FnMut(&RunReport) -> Result<(), SendError>,
    ) -> Result<Flushed, SpoolError> {
        let _one = FLUSHING.lock().unwrap_or_else(|p| p.into_inner());
        let pending = self.pending()?;
        let mut out = Flushed::default();
        for (i, path) in pending.iter().enumerate() {
            let report = match std::fs::read(path) {
                Ok(b) => RunReport::parse(&b),
                // Sent and removed by a flush of another process.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io(format!("{}: {e}", path.display()))),
            };
            let outcome = match &report {
                Ok(r) => send(r),
                Err(e) => Err(SendError::Refused(format!(
                    "{} is not a valid report: {e}",
                    path.display()
                ))),
            };
            match outcome {
                Ok(()) => out.sent += 1,
                Err(SendError::Refused(why)) => out.dropped.push(why),
                Err(SendError::Transient(why)) => {
                    out.left = pending.len() - i;
                    out.stopped = Some(why);
                    return Ok(out);
                }
            }
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(self.io(format!("{}: {e}", path.display())));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_proto::runs::{RunKind, RunResult};

    fn report(n: i64) -> RunReport {
        let mut r = RunReport::new(RunKind::Backup, 1_800_000_000 + n);
        r.ended_at = r.started_at + 1;
        r.result = RunResult::Success;
        r.job = Some(format!("job{n}"));
        r
    }

    #[test]
    fn sends_in_order_and_keeps_what_a_down_server_did_not_take() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path());
        for n in 0..5 {
            spool.push(&report(n)).unwrap();
        }
        // The server is down: nothing goes, nothing is lost.
        let f = spool
            .flush(|_| Err(SendError::Transient("connection refused".into())))
            .unwrap();
        assert_eq!((f.sent, f.left), (0, 5));
        assert_eq!(f.stopped.as_deref(), Some("connection refused"));
        // It comes back after two: those two go, in order, the rest wait.
        let mut got = Vec::new();
        let f = spool
            .flush(|r| {
                if got.len() == 2 {
                    return Err(SendError::Transient("503".into()));
                }
                got.push(r.job.clone().unwrap());
                Ok(())
            })
            .unwrap();
        assert_eq!((f.sent, f.left), (2, 3));
        assert_eq!(got, ["job0", "job1"]);
        let mut rest = Vec::new();
        let f = spool
            .flush(|r| {
                rest.push(r.job.clone().unwrap());
                Ok(())
            })
            .unwrap();
        assert_eq!((f.sent, f.left, f.stopped), (3, 0, None));
        assert_eq!(rest, ["job2", "job3", "job4"]);
        assert!(spool.pending().unwrap().is_empty());
    }

    #[test]
    fn refused_and_unreadable_reports_are_dropped_not_retried_forever() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path());
        spool.push(&report(0)).unwrap();
        spool.push(&report(1)).unwrap();
        std::fs::write(spool.dir().join("000000000000000000000001-x.json"), b"{").unwrap();
        let mut sent = Vec::new();
        let f = spool
            .flush(|r| {
                if r.job.as_deref() == Some("job0") {
                    return Err(SendError::Refused("HTTP 400".into()));
                }
                sent.push(r.job.clone().unwrap());
                Ok(())
            })
            .unwrap();
        assert_eq!(sent, ["job1"]);
        assert_eq!(f.dropped.len(), 2, "{f:?}");
        assert!(spool.pending().unwrap().is_empty());
    }

    #[test]
    fn bounded_by_dropping_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::with_max(dir.path(), 20);
        let mut dropped = 0;
        for n in 0..23 {
            dropped += spool.push(&report(n)).unwrap();
        }
        assert_eq!(dropped, 3);
        let pending = spool.pending().unwrap();
        assert_eq!(pending.len(), 20);
        let first = RunReport::parse(&std::fs::read(&pending[0]).unwrap()).unwrap();
        assert_eq!(first.job.as_deref(), Some("job3"));
        // Spooled reports are the owner's only.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&pending[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
