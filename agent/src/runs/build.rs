//! Run reports from the engine's summaries: pure mapping, plus the one
//! measurement a report carries that no summary has (the repository's
//! size on disk).

use std::path::Path;

use levee_proto::runs::{sanitize, ErrorTally, RunKind, RunReport, RunResult, MAX_SOURCE_CHARS};

use crate::backup::commands::backup::BackupSummary;
use crate::backup::commands::check::CheckReport;
use crate::backup::commands::prune::PruneReport;
use crate::backup::commands::restore::RestoreSummary;

/// Who ran it and on what: shared by every kind.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    /// The schedule; `None` by hand.
    pub job: Option<String>,
    /// Source names, paths or URLs (passwords never: URLs come from the
    /// configuration or the command line, which hold none).
    pub sources: Vec<String>,
    pub started_at: i64,
    pub ended_at: i64,
    /// The repository's size on disk after the run ([`repo_size`]).
    pub repo_bytes: Option<u64>,
}

fn base(kind: RunKind, ctx: &RunContext) -> RunReport {
    let mut r = RunReport::new(kind, ctx.started_at.max(0));
    r.ended_at = ctx.ended_at.max(r.started_at);
    r.job = ctx.job.as_deref().map(|j| sanitize(j, 128));
    r.sources = ctx
        .sources
        .iter()
        .take(levee_proto::runs::MAX_SOURCES)
        .map(|s| sanitize(s, MAX_SOURCE_CHARS))
        .collect();
    r.repo_bytes = ctx.repo_bytes;
    r
}

/// A failed run of any kind: its error is the report's one error.
pub fn failed(kind: RunKind, ctx: &RunContext, error: &str) -> RunReport {
    let mut r = base(kind, ctx);
    let mut t = ErrorTally::default();
    t.add(error);
    t.into_report(&mut r);
    r.result = RunResult::Failed;
    r
}

pub fn backup(ctx: &RunContext, s: &BackupSummary) -> RunReport {
    let mut r = base(RunKind::Backup, ctx);
    let sum = &s.summary;
    r.files_total = sum.files;
    r.files_new = sum.files.saturating_sub(sum.files_unchanged);
    r.bytes_total = sum.bytes_total;
    r.bytes_new = sum.bytes_new;
    r.snapshot = Some(s.snapshot.clone());
    let mut t = ErrorTally::default();
    for m in &s.error_messages {
        t.add(m);
    }
    t.add_uncounted(sum.errors.saturating_sub(s.error_messages.len() as u64));
    t.into_report(&mut r);
    r.result = if r.error_count > 0 {
        RunResult::Warning
    } else {
        RunResult::Success
    };
    r
}

pub fn restore(ctx: &RunContext, s: &RestoreSummary) -> RunReport {
    let mut r = base(RunKind::Restore, ctx);
    r.files_new = s.files;
    r.files_total = s.files + s.skipped;
    r.bytes_new = s.bytes;
    r.bytes_total = s.bytes;
    r.snapshot = Some(s.snapshot.clone());
    let mut t = ErrorTally::default();
    for m in &s.error_messages {
        t.add(m);
    }
    t.add_uncounted(s.errors.saturating_sub(s.error_messages.len() as u64));
    if s.stopped {
        // Not an error of the restore, but it did not restore everything:
        // the run says so (a warning, or failed if nothing was written).
        t.add("cancelled by ops: stopped between files; the rest was not restored");
    }
    t.into_report(&mut r);
    r.result = match (r.error_count, s.files) {
        (0, _) => RunResult::Success,
        (_, 0) => RunResult::Failed,
        _ => RunResult::Warning,
    };
    r
}

pub fn prune(ctx: &RunContext, p: &PruneReport) -> RunReport {
    let mut r = base(RunKind::Prune, ctx);
    // What a prune removes: its "new" is what it freed.
    r.files_new = p.packs_deleted as u64;
    r.bytes_new = p.bytes_freed;
    r.result = RunResult::Success;
    r
}

pub fn check(ctx: &RunContext, c: &CheckReport) -> RunReport {
    let mut r = base(RunKind::Check, ctx);
    r.files_total = c.packs as u64;
    r.files_new = c.packs_read as u64;
    let mut t = ErrorTally::default();
    for e in &c.errors {
        t.add(e);
    }
    t.into_report(&mut r);
    r.result = if c.errors.is_empty() {
        RunResult::Success
    } else {
        RunResult::Failed
    };
    r
}

/// Bytes of the files under `dir` (the repository on the data partition),
/// `None` if it cannot be read.
pub fn repo_size(dir: &Path) -> Option<u64> {
    fn walk(dir: &Path, total: &mut u64) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let m = e.metadata()?;
            if m.is_dir() {
                walk(&e.path(), total)?;
            } else {
                *total = total.saturating_add(m.len());
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(dir, &mut total).ok().map(|()| total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_proto::repo::SnapshotSummary;

    #[test]
    fn a_backup_with_unreadable_files_is_a_warning_with_its_errors() {
        let ctx = RunContext {
            job: Some("nightly".into()),
            sources: vec!["scans\x1b]".into()],
            started_at: 100,
            ended_at: 160,
            repo_bytes: Some(7),
        };
        let s = BackupSummary {
            snapshot: "abcd".into(),
            parent: None,
            summary: SnapshotSummary {
                files: 10,
                files_unchanged: 7,
                bytes_total: 1000,
                bytes_new: 300,
                errors: 5,
                ..Default::default()
            },
            bytes_stored: 0,
            packs_written: 0,
            dedup_ratio: 1.0,
            error_messages: vec!["a: denied".into(), "a: denied".into()],
        };
        let r = backup(&ctx, &s);
        r.validate().unwrap();
        assert_eq!((r.files_new, r.files_total, r.bytes_new), (3, 10, 300));
        assert_eq!(r.result, RunResult::Warning);
        assert_eq!(
            (r.errors.len(), r.errors[0].count, r.error_count),
            (1, 2, 5)
        );
        assert_eq!(r.sources, ["scans ]"]);
        let f = failed(RunKind::Backup, &ctx, "share unreachable");
        f.validate().unwrap();
        assert_eq!((f.result, f.error_count), (RunResult::Failed, 1));
    }

    #[test]
    fn repo_size_counts_every_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/x"), [0u8; 100]).unwrap();
        std::fs::write(d.path().join("y"), [0u8; 20]).unwrap();
        assert_eq!(repo_size(d.path()), Some(120));
        assert_eq!(repo_size(&d.path().join("missing")), None);
    }
}
