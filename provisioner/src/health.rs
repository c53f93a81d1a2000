//! Backup health of an appliance, as a pure function of its customer's
//! schedules, what the store knows about its backup runs, and the time:
//! last successful backup, the next run the schedule expects (computed by
//! [`levee_proto::schedule`], the very code the agent schedules with),
//! whether that run is overdue, failures in a row, and the repository's
//! size and growth. The CLI listings and the alert rules read it.
//!
//! ```
//! use levee_provisioner::health::{assess, OVERDUE_GRACE_SECS};
//! use levee_provisioner::store::BackupFacts;
//! let config: levee_proto::config::CustomerConfig = serde_json::from_value(serde_json::json!({
//!     "customer": "acme", "sources": [{"name": "s", "path": "/srv"}],
//!     "schedules": [{"name": "daily", "every": "1d"}],
//! })).unwrap();
//! let mut facts = BackupFacts::default();
//! facts.last_starts.insert("daily".into(), 1_000_000);
//! // Due a day after its last start; overdue once the grace has passed too.
//! let h = assess(Some(&config), &facts, 0, 1_000_000 + 86_400 + OVERDUE_GRACE_SECS + 1);
//! assert!(h.overdue);
//! assert_eq!(h.next_expected.unwrap().at, 1_000_000 + 86_400);
//! ```

use levee_proto::config::CustomerConfig;
use levee_proto::schedule::next_run;
use serde::Serialize;

use crate::enroll::ca::CLIENT_CERT_DAYS;
use crate::store::{Appliance, ApplianceState, BackupFacts, FailStreak, RunRecord, Store};

/// Heartbeat interval assumed for machines without a customer (or whose
/// customer's interval does not parse).
pub const DEFAULT_HEARTBEAT_SECS: u64 = 300;

/// Each customer's heartbeat interval in seconds.
pub fn heartbeat_intervals(
    store: &dyn Store,
) -> crate::store::Result<std::collections::HashMap<String, u64>> {
    Ok(store
        .customers()?
        .into_iter()
        .filter_map(|c| {
            let secs = levee_proto::config::parse_duration(&c.config.heartbeat_interval)?;
            Some((c.name, secs))
        })
        .collect())
}

/// The heartbeat interval that applies to `a`: its customer's, else
/// [`DEFAULT_HEARTBEAT_SECS`].
pub fn heartbeat_interval(
    intervals: &std::collections::HashMap<String, u64>,
    a: &Appliance,
) -> u64 {
    a.customer
        .as_ref()
        .and_then(|c| intervals.get(c).copied())
        .unwrap_or(DEFAULT_HEARTBEAT_SECS)
}

/// Whether `a` is online at `now` (a report within three of its
/// intervals); a retired appliance never is, whatever it last said. The CLI
/// listings and the panel say the same.
pub fn online(a: &Appliance, intervals: &std::collections::HashMap<String, u64>, now: u64) -> bool {
    a.state != ApplianceState::Retired && a.online(heartbeat_interval(intervals, a), now)
}

/// How long past its expected start a backup may still be missing before
/// it is overdue: the expected time is when the run starts, and its report
/// arrives when it ends, so this covers the run itself.
pub const OVERDUE_GRACE_SECS: i64 = 4 * 3600;

/// The window that repository growth is measured over.
pub const GROWTH_WINDOW_SECS: i64 = 7 * 86_400;

/// The next backup run a schedule expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expected {
    pub schedule: String,
    /// Unix seconds; in the past when the run is late.
    pub at: i64,
}

/// An appliance's backup health (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BackupHealth {
    /// Its customer has schedules: backups are expected at all.
    pub scheduled: bool,
    pub last_success_at: Option<i64>,
    pub last_backup_at: Option<i64>,
    /// The earliest next run of its schedules.
    pub next_expected: Option<Expected>,
    /// The expected run is more than [`OVERDUE_GRACE_SECS`] late.
    pub overdue: bool,
    /// The worst stream of failures in a row, if any.
    pub failing: Option<FailStreak>,
}

/// The health of an appliance whose customer has `config`, from `facts`,
/// at `now`. `expected_since` is when backups were first expected of it
/// (enrollment, or the configuration's last change): a schedule that never
/// ran counts from then, as the agent's scheduler counts from its start.
pub fn assess(
    config: Option<&CustomerConfig>,
    facts: &BackupFacts,
    expected_since: i64,
    now: i64,
) -> BackupHealth {
    let schedules = config.map(|c| c.schedules.as_slice()).unwrap_or_default();
    let next_expected = schedules
        .iter()
        .filter_map(|s| {
            // Appliances keep UTC, as the agent's scheduler assumes.
            let at = next_run(
                s,
                facts.last_starts.get(&s.name).copied(),
                expected_since,
                0,
            )
            .ok()?;
            Some(Expected {
                schedule: s.name.clone(),
                at,
            })
        })
        .min_by_key(|e| e.at);
    let overdue = next_expected
        .as_ref()
        .is_some_and(|e| now > e.at.saturating_add(OVERDUE_GRACE_SECS));
    BackupHealth {
        scheduled: !schedules.is_empty(),
        last_success_at: facts.last_success_at,
        last_backup_at: facts.last_backup_at,
        next_expected,
        overdue,
        failing: facts.failing.first().cloned(),
    }
}

/// When backups were first expected of appliance `a` whose customer's
/// configuration last changed at `config_updated_at`: the latest of its
/// first sighting, its certificate's issue (enrollment or renewal: the
/// store keeps the expiry, issued [`CLIENT_CERT_DAYS`] before) and that
/// change. A schedule that never ran counts from here.
pub fn expected_since(a: &Appliance, config_updated_at: Option<u64>) -> i64 {
    let issued = a
        .cert_not_after
        .map(|t| t as i64 - CLIENT_CERT_DAYS * 86_400)
        .unwrap_or(0);
    (a.first_seen as i64)
        .max(issued)
        .max(config_updated_at.unwrap_or(0) as i64)
}

/// Repository size and growth from an appliance's runs (newest first).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RepoGrowth {
    /// The newest reported size, and when that run ended.
    pub bytes: Option<u64>,
    pub at: Option<i64>,
    /// Bytes per day over the last [`GROWTH_WINDOW_SECS`] (or the history
    /// there is, at least an hour of it); negative when prune freed more
    /// than backups added.
    pub per_day: Option<i64>,
}

pub fn repo_growth(runs: &[RunRecord]) -> RepoGrowth {
    let sized: Vec<(i64, u64)> = runs
        .iter()
        .filter_map(|r| Some((r.report.ended_at, r.report.repo_bytes?)))
        .collect();
    let Some(&(at, bytes)) = sized.iter().max_by_key(|(t, _)| *t) else {
        return RepoGrowth::default();
    };
    let per_day = sized
        .iter()
        .filter(|(t, _)| *t >= at - GROWTH_WINDOW_SECS)
        .min_by_key(|(t, _)| *t)
        .filter(|(t, _)| at - t >= 3600)
        .map(|&(t, b)| ((bytes as i128 - b as i128) * 86_400 / i128::from(at - t)) as i64);
    RepoGrowth {
        bytes: Some(bytes),
        at: Some(at),
        per_day,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_proto::runs::{RunKind, RunReport, RunResult};

    const DAY: i64 = 86_400;
    // 2026-11-26 10:00 UTC.
    const NOW: i64 = 1_795_687_200;

    fn config(schedules: serde_json::Value) -> CustomerConfig {
        serde_json::from_value(serde_json::json!({
            "customer": "acme", "sources": [{"name": "s", "path": "/srv"}],
            "schedules": schedules,
        }))
        .unwrap()
    }

    #[test]
    fn nightly_is_overdue_only_after_the_grace() {
        let c = config(serde_json::json!([{"name": "nightly", "at": "01:00"}]));
        let today_1am = NOW - 9 * 3600;
        let mut f = BackupFacts::default();
        // Ran last night: next is tonight, not overdue.
        f.last_starts.insert("nightly".into(), today_1am);
        let h = assess(Some(&c), &f, 0, NOW);
        assert_eq!(h.next_expected.as_ref().unwrap().at, today_1am + DAY);
        assert!(!h.overdue && h.scheduled);
        // Last ran the night before: tonight's slot was missed 9 h ago.
        f.last_starts.insert("nightly".into(), today_1am - DAY);
        let h = assess(Some(&c), &f, 0, NOW);
        assert_eq!(h.next_expected.as_ref().unwrap().at, today_1am);
        assert!(h.overdue);
        // Within the grace (it may still be running): not yet.
        assert!(!assess(Some(&c), &f, 0, today_1am + OVERDUE_GRACE_SECS).overdue);
    }

    #[test]
    fn never_run_counts_from_when_backups_were_expected() {
        let c = config(serde_json::json!([{"name": "often", "every": "1h"}]));
        let f = BackupFacts::default();
        // Enrolled an hour ago: due then, within the grace.
        assert!(!assess(Some(&c), &f, NOW - 3600, NOW).overdue);
        // Enrolled two days ago and never ran: overdue.
        let h = assess(Some(&c), &f, NOW - 2 * DAY, NOW);
        assert!(h.overdue);
        assert_eq!(h.next_expected.unwrap().at, NOW - 2 * DAY);
        // No schedules: nothing expected, never overdue.
        let none = assess(Some(&config(serde_json::json!([]))), &f, 0, NOW);
        assert!(!none.scheduled && !none.overdue && none.next_expected.is_none());
        assert!(!assess(None, &f, 0, NOW).overdue);
    }

    #[test]
    fn earliest_schedule_wins() {
        let c = config(serde_json::json!([
            {"name": "weekly", "at": "03:00", "days": ["sun"]},
            {"name": "hourly", "every": "1h"},
        ]));
        let mut f = BackupFacts::default();
        f.last_starts.insert("hourly".into(), NOW - 600);
        f.last_starts.insert("weekly".into(), NOW - DAY);
        let h = assess(Some(&c), &f, 0, NOW);
        assert_eq!(h.next_expected.unwrap().schedule, "hourly");
    }

    fn run(ended_at: i64, repo_bytes: Option<u64>) -> RunRecord {
        let mut r = RunReport::new(RunKind::Backup, ended_at - 10);
        r.ended_at = ended_at;
        r.result = RunResult::Success;
        r.repo_bytes = repo_bytes;
        RunRecord {
            received_at: ended_at as u64,
            report: r,
        }
    }

    #[test]
    fn growth_per_day_over_the_window() {
        let runs = vec![
            run(NOW, Some(3_000)),
            run(NOW - DAY, None),
            run(NOW - 2 * DAY, Some(1_000)),
            run(NOW - 30 * DAY, Some(10)),
        ];
        let g = repo_growth(&runs);
        assert_eq!(
            (g.bytes, g.at, g.per_day),
            (Some(3_000), Some(NOW), Some(1_000))
        );
        // One measurement: a size, no growth.
        let g = repo_growth(&runs[..1]);
        assert_eq!((g.bytes, g.per_day), (Some(3_000), None));
        assert_eq!(repo_growth(&[]), RepoGrowth::default());
    }
}
