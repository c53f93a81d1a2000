//! Run reports: what an appliance tells the server after each backup,
//! restore, prune or check (and, as they arrive, replication and update)
//! run, on `POST /api/v1/runs` (mTLS).
//!
//! The appliance writes each report to its spool first and sends the
//! spool in order, so a report may arrive days after its run and more than
//! once (an answer lost on the way): `id` makes a resend harmless. The
//! server takes nothing in a report on trust beyond what it is for (the
//! certificate says whose it is), and [`RunReport::parse`] bounds every
//! field so a broken or hostile appliance cannot fill the database or put
//! terminal escapes into an operator's listing.
//!
//! ```
//! use levee_proto::runs::{RunKind, RunReport, RunResult};
//! let mut r = RunReport::new(RunKind::Backup, 1_800_000_000);
//! r.job = Some("nightly".into());
//! r.sources = vec!["scans".into()];
//! r.ended_at = 1_800_000_060;
//! r.result = RunResult::Success;
//! let back = RunReport::parse(&r.to_bytes()).unwrap();
//! assert_eq!(back, r);
//! assert!(RunReport::parse(br#"{"id":"x\u001b[2J"}"#).is_err());
//! ```

use serde::{Deserialize, Serialize};

/// Largest report body the server reads.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
/// Most sources named in one report.
pub const MAX_SOURCES: usize = 64;
/// Most distinct error messages carried (the rest are only counted).
pub const MAX_ERRORS: usize = 20;
/// Longest error message, in characters (longer ones are cut by
/// [`ErrorTally`]; the server refuses them).
pub const MAX_MESSAGE_CHARS: usize = 1024;
/// Longest source (a name, a path or an `smb://` URL without password).
pub const MAX_SOURCE_CHARS: usize = 1024;
/// Longest job name.
pub const MAX_JOB_CHARS: usize = 128;
/// Longest report id and snapshot id.
pub const MAX_ID_CHARS: usize = 128;
/// Timestamps beyond this (year 5138) are nonsense, not reports.
const MAX_UNIX: i64 = 100_000_000_000;

/// What kind of run a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    Backup,
    Restore,
    Prune,
    Check,
    Replication,
    Update,
}

impl RunKind {
    pub const ALL: [RunKind; 6] = [
        RunKind::Backup,
        RunKind::Restore,
        RunKind::Prune,
        RunKind::Check,
        RunKind::Replication,
        RunKind::Update,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Backup => "backup",
            RunKind::Restore => "restore",
            RunKind::Prune => "prune",
            RunKind::Check => "check",
            RunKind::Replication => "replication",
            RunKind::Update => "update",
        }
    }

    pub fn parse(s: &str) -> Option<RunKind> {
        RunKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunResult {
    /// Done, nothing went wrong.
    Success,
    /// Done, but some items failed (files that could not be read, ...):
    /// a backup still made its snapshot.
    Warning,
    /// Not done: no snapshot, nothing restored, or the check found damage.
    Failed,
}

impl RunResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Success => "success",
            RunResult::Warning => "warning",
            RunResult::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<RunResult> {
        [RunResult::Success, RunResult::Warning, RunResult::Failed]
            .into_iter()
            .find(|r| r.as_str() == s)
    }

    /// Whether the run did its job (a backup with a few unreadable files
    /// did: its snapshot holds the rest).
    pub fn succeeded(self) -> bool {
        self != RunResult::Failed
    }
}

/// One distinct error message and how often it occurred.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCount {
    pub message: String,
    pub count: u64,
}

/// One run's report. Fields only ever get added (with defaults), so old
/// servers and old agents keep understanding each other; unknown fields
/// are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// Unique per run, made by the appliance: a resent report is stored
    /// once.
    pub id: String,
    pub kind: RunKind,
    /// The schedule that ran it; `None` for a run by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Source names (scheduled runs) or paths and URLs (by hand); for a
    /// restore, the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Start and end, Unix seconds (the appliance's clock, set from the
    /// server's at boot).
    pub started_at: i64,
    pub ended_at: i64,
    pub result: RunResult,
    /// Files and bytes the run added (backup: new or changed; restore:
    /// written) and the totals it went through.
    #[serde(default)]
    pub files_new: u64,
    #[serde(default)]
    pub files_total: u64,
    #[serde(default)]
    pub bytes_new: u64,
    #[serde(default)]
    pub bytes_total: u64,
    /// The snapshot made (backup) or read (restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The first distinct errors with their counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ErrorCount>,
    /// All errors, including those beyond `errors`.
    #[serde(default)]
    pub error_count: u64,
    /// Size of the repository on disk after the run, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_bytes: Option<u64>,
    /// Replication: how far the target is behind the local repository, in
    /// seconds since the oldest local snapshot it does not hold yet (0: up
    /// to date). A replication report names its target in `sources` and
    /// counts uploaded files and bytes in `files_new` and `bytes_new`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_secs: Option<u64>,
}

/// Why a report was refused. Names the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunReportError {
    #[error("run report is {0} bytes; at most {MAX_REPORT_BYTES} are accepted")]
    TooLarge(usize),
    #[error("malformed run report: {0}")]
    Json(String),
    #[error("run report field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RunReportError {
    RunReportError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// A string that goes into listings: bounded, non-empty, no control
/// characters (no terminal escapes, no forged lines in a log).
fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), RunReportError> {
    if s.is_empty() {
        return Err(invalid(field, "is empty"));
    }
    let n = s.chars().count();
    if n > max {
        return Err(invalid(field, format!("has {n} characters; at most {max}")));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

/// Ids: letters, digits, `-`, `_`, `.`, `:`.
fn check_id(field: &'static str, s: &str) -> Result<(), RunReportError> {
    check_text(field, s, MAX_ID_CHARS)?;
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err(invalid(
            field,
            "may hold only letters, digits, `-`, `_`, `.` and `:`",
        ));
    }
    Ok(())
}

impl RunReport {
    /// A report of `kind` started at `started_at`, with a fresh random id,
    /// not yet finished (ended at its start, failed, all counters zero).
    pub fn new(kind: RunKind, started_at: i64) -> RunReport {
        RunReport {
            id: hex::encode(rand::random::<[u8; 16]>()),
            kind,
            job: None,
            sources: Vec::new(),
            started_at,
            ended_at: started_at,
            result: RunResult::Failed,
            files_new: 0,
            files_total: 0,
            bytes_new: 0,
            bytes_total: 0,
            snapshot: None,
            errors: Vec::new(),
            error_count: 0,
            repo_bytes: None,
            lag_secs: None,
        }
    }

    /// Reads and validates a report as it comes off the network.
    pub fn parse(bytes: &[u8]) -> Result<RunReport, RunReportError> {
        if bytes.len() > MAX_REPORT_BYTES {
            return Err(RunReportError::TooLarge(bytes.len()));
        }
        let r: RunReport =
            serde_json::from_slice(bytes).map_err(|e| RunReportError::Json(e.to_string()))?;
        r.validate()?;
        Ok(r)
    }

    /// The report as JSON (what [`RunReport::parse`] reads).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain structs, strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks every field's bounds (see the module doc).
    pub fn validate(&self) -> Result<(), RunReportError> {
        check_id("id", &self.id)?;
        if let Some(j) = &self.job {
            check_text("job", j, MAX_JOB_CHARS)?;
        }
        if self.sources.len() > MAX_SOURCES {
            return Err(invalid(
                "sources",
                format!("names {}; at most {MAX_SOURCES}", self.sources.len()),
            ));
        }
        for s in &self.sources {
            check_text("sources", s, MAX_SOURCE_CHARS)?;
        }
        for (field, t) in [("started_at", self.started_at), ("ended_at", self.ended_at)] {
            if !(0..MAX_UNIX).contains(&t) {
                return Err(invalid(field, format!("{t} is not a plausible Unix time")));
            }
        }
        if self.ended_at < self.started_at {
            return Err(invalid("ended_at", "is before started_at"));
        }
        if let Some(s) = &self.snapshot {
            check_id("snapshot", s)?;
        }
        if self.errors.len() > MAX_ERRORS {
            return Err(invalid(
                "errors",
                format!("holds {}; at most {MAX_ERRORS}", self.errors.len()),
            ));
        }
        let mut listed = 0u64;
        for e in &self.errors {
            check_text("errors", &e.message, MAX_MESSAGE_CHARS)?;
            if e.count == 0 {
                return Err(invalid("errors", "an error counted 0 times"));
            }
            listed = listed.saturating_add(e.count);
        }
        if self.error_count < listed {
            return Err(invalid(
                "error_count",
                format!(
                    "is {}, fewer than the {listed} the listed errors count",
                    self.error_count
                ),
            ));
        }
        Ok(())
    }

    /// Seconds the run took.
    pub fn duration_secs(&self) -> i64 {
        self.ended_at - self.started_at
    }
}

/// Makes any text fit a report: control characters become spaces, and it
/// is cut to `max` characters (an ellipsis marks the cut).
pub fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if s.chars().count() > max && max > 0 {
        out.pop();
        out.push('…');
    }
    if out.trim().is_empty() {
        "(no message)".into()
    } else {
        out
    }
}

/// Collects a run's errors: the first [`MAX_ERRORS`] distinct messages
/// with their counts, and the total.
#[derive(Debug, Clone, Default)]
pub struct ErrorTally {
    errors: Vec<ErrorCount>,
    total: u64,
}

impl ErrorTally {
    pub fn add(&mut self, message: &str) {
        self.total = self.total.saturating_add(1);
        let m = sanitize(message, MAX_MESSAGE_CHARS);
        if let Some(e) = self.errors.iter_mut().find(|e| e.message == m) {
            e.count = e.count.saturating_add(1);
        } else if self.errors.len() < MAX_ERRORS {
            self.errors.push(ErrorCount {
                message: m,
                count: 1,
            });
        }
    }

    /// Counts `n` errors beyond the messages added (a summary that only
    /// says how many).
    pub fn add_uncounted(&mut self, n: u64) {
        self.total = self.total.saturating_add(n);
    }

    /// Writes the tally into `report`.
    pub fn into_report(self, report: &mut RunReport) {
        report.errors = self.errors;
        report.error_count = self.total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> RunReport {
        let mut r = RunReport::new(RunKind::Backup, 1_800_000_000);
        r.job = Some("nightly".into());
        r.sources = vec!["scans".into(), "smb://u@nas/share/dir".into()];
        r.ended_at = r.started_at + 30;
        r.result = RunResult::Warning;
        r.snapshot = Some("ab12".into());
        let mut t = ErrorTally::default();
        t.add("a: permission denied");
        t.add("a: permission denied");
        t.add("b: gone");
        t.into_report(&mut r);
        r.repo_bytes = Some(1 << 30);
        r
    }

    #[test]
    fn round_trips_and_tallies() {
        let r = good();
        assert_eq!(r.errors.len(), 2);
        assert_eq!(r.errors[0].count, 2);
        assert_eq!(r.error_count, 3);
        assert_eq!(RunReport::parse(&r.to_bytes()).unwrap(), r);
        // Old senders: defaults fill what they do not know; unknown fields
        // from newer ones are ignored.
        let min = br#"{"id":"a1","kind":"check","started_at":5,"ended_at":6,"result":"success","new_field":1}"#;
        let m = RunReport::parse(min).unwrap();
        assert_eq!(
            (m.kind, m.files_total, m.repo_bytes),
            (RunKind::Check, 0, None)
        );
    }

    #[test]
    fn refuses_bad_fields_by_name() {
        let field = |r: RunReport| match RunReport::parse(&r.to_bytes()) {
            Err(RunReportError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let mut r = good();
        r.id = "x y".into();
        assert_eq!(field(r), "id");
        let mut r = good();
        r.job = Some("night\x1b[2Jly".into());
        assert_eq!(field(r), "job");
        let mut r = good();
        r.sources = vec!["s".into(); MAX_SOURCES + 1];
        assert_eq!(field(r), "sources");
        let mut r = good();
        r.sources = vec!["a\nforged log line".into()];
        assert_eq!(field(r), "sources");
        let mut r = good();
        r.ended_at = r.started_at - 1;
        assert_eq!(field(r), "ended_at");
        let mut r = good();
        r.started_at = -5;
        assert_eq!(field(r), "started_at");
        let mut r = good();
        r.errors[0].message = "x".repeat(MAX_MESSAGE_CHARS + 1);
        assert_eq!(field(r), "errors");
        let mut r = good();
        r.error_count = 1;
        assert_eq!(field(r), "error_count");
        let mut r = good();
        r.snapshot = Some("../../etc".into());
        assert_eq!(field(r), "snapshot");
        assert!(matches!(
            RunReport::parse(&vec![b' '; MAX_REPORT_BYTES + 1]),
            Err(RunReportError::TooLarge(_))
        ));
        assert!(matches!(
            RunReport::parse(
                br#"{"id":"a","kind":"reboot","started_at":1,"ended_at":1,"result":"success"}"#
            ),
            Err(RunReportError::Json(_))
        ));
    }

    #[test]
    fn tally_keeps_the_first_distinct_errors_and_counts_all() {
        let mut t = ErrorTally::default();
        for i in 0..100 {
            t.add(&format!("file {i}: \x07bad"));
        }
        t.add_uncounted(5);
        let mut r = good();
        t.into_report(&mut r);
        assert_eq!(r.errors.len(), MAX_ERRORS);
        assert_eq!(r.error_count, 105);
        assert!(!r.errors[0].message.contains('\x07'));
        r.validate().unwrap();
        assert_eq!(sanitize(&"é".repeat(10), 4).chars().count(), 4);
        assert_eq!(sanitize("\n\t", 10), "(no message)");
    }
}
