//! Run reports of each appliance: a bounded history (the newest
//! [`RUNS_KEPT`] per appliance), and the facts about its backups that the
//! listings and the alert rules need, computed in the database for the
//! whole fleet at once.

use std::collections::{BTreeMap, HashMap};

use levee_proto::runs::RunReport;
use serde::Serialize;

use super::Result;

/// Reports kept per appliance (the oldest beyond are dropped).
pub const RUNS_KEPT: i64 = 1000;

/// The columns of `runs` that [`run_record!`] reads, in its order.
pub(crate) const RUN_COLUMNS: &str = "received_at, report_id, kind, job, sources, started_at,
    ended_at, result, files_new, files_total, bytes_new, bytes_total, snapshot, errors,
    error_count, repo_bytes, lag_secs";

/// Decodes one row of [`RUN_COLUMNS`] into a [`RunRecord`], the same way
/// for both stores: `$get` is the row's getter (`get` for rusqlite,
/// `try_get` for tokio-postgres) and `corrupt` (resolved where the macro
/// is used) turns a bad value into that store's error.
macro_rules! run_record {
    ($r:expr, $get:ident) => {{
        let r = $r;
        let u = |i: usize| r.$get::<_, i64>(i).map(|v| v.max(0) as u64);
        let kind: String = r.$get(2)?;
        let result: String = r.$get(7)?;
        let sources: String = r.$get(4)?;
        let errors: String = r.$get(13)?;
        $crate::store::RunRecord {
            received_at: u(0)?,
            report: levee_proto::runs::RunReport {
                id: r.$get(1)?,
                kind: levee_proto::runs::RunKind::parse(&kind)
                    .ok_or_else(|| corrupt(format!("run kind `{kind}`")))?,
                job: r.$get(3)?,
                sources: serde_json::from_str(&sources).map_err(corrupt)?,
                started_at: r.$get(5)?,
                ended_at: r.$get(6)?,
                result: levee_proto::runs::RunResult::parse(&result)
                    .ok_or_else(|| corrupt(format!("run result `{result}`")))?,
                files_new: u(8)?,
                files_total: u(9)?,
                bytes_new: u(10)?,
                bytes_total: u(11)?,
                snapshot: r.$get(12)?,
                errors: serde_json::from_str(&errors).map_err(corrupt)?,
                error_count: u(14)?,
                repo_bytes: r.$get::<_, Option<i64>>(15)?.map(|v| v.max(0) as u64),
                lag_secs: r.$get::<_, Option<i64>>(16)?.map(|v| v.max(0) as u64),
            },
        }
    }};
}
pub(crate) use run_record;

/// One stored run report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    /// When the server received it (the run itself may be much older: the
    /// appliance spools reports while the server is out of reach).
    pub received_at: u64,
    #[serde(flatten)]
    pub report: RunReport,
}

/// Backup runs of one schedule and sources that failed in a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailStreak {
    pub job: Option<String>,
    pub sources: Vec<String>,
    /// Failed backup runs since that stream's last successful one.
    pub count: u64,
}

/// What the store knows about one appliance's backups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BackupFacts {
    /// End of the newest backup run that made a snapshot.
    pub last_success_at: Option<i64>,
    /// End of the newest backup run, whatever its result.
    pub last_backup_at: Option<i64>,
    /// Start of each schedule's newest backup run (what the agent's
    /// scheduler counts from).
    pub last_starts: BTreeMap<String, i64>,
    /// Streams whose latest runs failed, with how many in a row.
    pub failing: Vec<FailStreak>,
}

/// Run reports and what they say about backups.
pub trait RunStore {
    /// Stores a report of appliance `appliance`; `false` when a report with
    /// that id was stored already (a resend), which changes nothing.
    fn record_run(&self, appliance: i64, report: &RunReport) -> Result<bool>;
    /// The appliance's newest `limit` reports, newest first (in the order
    /// they were received, which is the order the runs ended).
    fn runs(&self, appliance: i64, limit: usize) -> Result<Vec<RunRecord>>;
    /// Backup facts of every appliance that has reported a backup run
    /// (`only`: of that one appliance).
    fn backup_facts(&self, only: Option<i64>) -> Result<HashMap<i64, BackupFacts>>;
    /// The newest report of `kind` of every appliance that has one.
    fn latest_runs(&self, kind: levee_proto::runs::RunKind) -> Result<HashMap<i64, RunRecord>>;
}

/// Database rows as [`BackupFacts`] (shared by the stores): the newest
/// ends per appliance, each schedule's newest start, and the failing
/// streams.
pub(crate) fn assemble_facts(
    ends: Vec<(i64, Option<i64>, Option<i64>)>,
    starts: Vec<(i64, String, i64)>,
    streaks: Vec<(i64, Option<String>, String, i64)>,
) -> HashMap<i64, BackupFacts> {
    let mut out: HashMap<i64, BackupFacts> = HashMap::new();
    for (id, success, any) in ends {
        let f = out.entry(id).or_default();
        f.last_success_at = success;
        f.last_backup_at = any;
    }
    for (id, job, at) in starts {
        out.entry(id).or_default().last_starts.insert(job, at);
    }
    for (id, job, sources, count) in streaks {
        out.entry(id).or_default().failing.push(FailStreak {
            job,
            sources: serde_json::from_str(&sources).unwrap_or_default(),
            count: count.max(0) as u64,
        });
    }
    for f in out.values_mut() {
        f.failing.sort_by_key(|s| std::cmp::Reverse(s.count));
    }
    out
}

/// A u64 counter in a BIGINT column (clamped: no real run reaches 2^63).
pub(crate) fn db_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
