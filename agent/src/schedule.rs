//! Scheduled backups: which configured job is due next ([`next_due`], pure:
//! configuration, last run times and "now" in, a time out) and running one
//! job ([`run_job`]: back up its sources, then apply the retention policy).
//! The daemon owns the loop (sleep until the due time, run, record the run's
//! start time); nothing here sleeps or reads the clock.
//!
//! Semantics, for a schedule's last run time `last` (its start, Unix
//! seconds) and `now`:
//! - `every: 4h`: due at `last + 4h`; never run: due now.
//! - `at: "01:30"` (appliance local time, `utc_offset` seconds east of UTC)
//!   on `days` (`mon`..`sun`, default every day): due at the first such slot
//!   after `last`. A slot missed while the appliance was off is run once when
//!   it comes back (the returned time is then <= now), not once per missed
//!   slot. Never run: the first slot at or after `now`.

use std::collections::HashMap;
use std::path::Path;

use levee_proto::config::{parse_duration, CustomerConfig, Schedule};
use levee_proto::repo::KdfParams;
use serde::Serialize;

use crate::backup::commands::backup::{backup, BackupOptions, BackupSummary};
use crate::backup::commands::forget::{forget, ForgetOptions, ForgetResult};
use crate::backup::commands::prune::{prune, PruneOptions, PruneReport};
use crate::backup::progress::Counters;
use crate::backup::repository::{RepoError, Repository};

/// Shortest `every` the configuration allows.
pub const MIN_EVERY_SECS: u64 = 5 * 60;

const DAY: i64 = 86_400;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule {0}: give exactly one of `at` and `every`")]
    AtOrEvery(String),
    #[error("schedule {0}: bad time of day {1:?} (want HH:MM)")]
    BadAt(String, String),
    #[error("schedule {0}: bad day {1:?} (want mon, tue, wed, thu, fri, sat or sun)")]
    BadDay(String, String),
    #[error("schedule {0}: bad interval {1:?} (want e.g. 30m, 4h, 1d; at least 5m)")]
    BadEvery(String, String),
    #[error("schedule {0}: no such source {1:?}")]
    NoSource(String, String),
    #[error("no schedule named {0:?}")]
    NoSchedule(String),
}

/// The next job to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Due {
    /// The schedule's name (its `Schedule::name`).
    pub schedule: String,
    /// When it is due, Unix seconds; <= now means run it now.
    pub at: i64,
}

/// Monday = 0 .. Sunday = 6 for days since 1970-01-01 (a Thursday).
fn weekday(days: i64) -> usize {
    (days + 3).rem_euclid(7) as usize
}

fn parse_at(s: &Schedule, at: &str) -> Result<i64, ScheduleError> {
    let bad = || ScheduleError::BadAt(s.name.clone(), at.to_string());
    let (h, m) = at.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(0..24).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    Ok(h * 3600 + m * 60)
}

/// Allowed weekdays; empty `days` means all.
fn parse_days(s: &Schedule) -> Result<[bool; 7], ScheduleError> {
    if s.days.is_empty() {
        return Ok([true; 7]);
    }
    let mut out = [false; 7];
    for d in &s.days {
        let i = DAY_NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(d.trim()))
            .ok_or_else(|| ScheduleError::BadDay(s.name.clone(), d.clone()))?;
        out[i] = true;
    }
    Ok(out)
}

/// Checks a schedule's fields (the same rules [`next_run`] applies).
pub fn validate(s: &Schedule) -> Result<(), ScheduleError> {
    next_run(s, None, 0, 0).map(|_| ())
}

/// When schedule `s` is next due, given its last run (start, Unix seconds).
pub fn next_run(
    s: &Schedule,
    last_run: Option<i64>,
    now: i64,
    utc_offset: i32,
) -> Result<i64, ScheduleError> {
    match (&s.at, &s.every) {
        (None, Some(every)) => {
            if !s.days.is_empty() {
                return Err(ScheduleError::AtOrEvery(s.name.clone()));
            }
            let secs = parse_duration(every)
                .filter(|n| *n >= MIN_EVERY_SECS && *n <= i64::MAX as u64 / 2)
                .ok_or_else(|| ScheduleError::BadEvery(s.name.clone(), every.clone()))?;
            Ok(match last_run {
                Some(l) => l.saturating_add(secs as i64),
                None => now,
            })
        }
        (Some(at), None) => {
            let tod = parse_at(s, at)?;
            let days = parse_days(s)?;
            let off = i64::from(utc_offset);
            // First slot strictly after `last`, or at/after `now` if never run.
            let after = match last_run {
                Some(l) => l,
                None => now - 1,
            };
            let day0 = (after + off).div_euclid(DAY);
            for d in day0..=day0 + 7 {
                let t = d * DAY + tod - off;
                if days[weekday(d)] && t > after {
                    return Ok(t);
                }
            }
            unreachable!("some day in any 8 consecutive days is allowed")
        }
        _ => Err(ScheduleError::AtOrEvery(s.name.clone())),
    }
}

/// The configured job due first: earliest due time, ties in configuration
/// order. `last_runs` maps schedule names to their last run's start (Unix
/// seconds); `utc_offset` is the appliance's local offset east of UTC in
/// seconds. `None` when the configuration has no schedules.
pub fn next_due(
    config: &CustomerConfig,
    last_runs: &HashMap<String, i64>,
    now: i64,
    utc_offset: i32,
) -> Result<Option<Due>, ScheduleError> {
    let mut best: Option<Due> = None;
    for s in &config.schedules {
        let at = next_run(s, last_runs.get(&s.name).copied(), now, utc_offset)?;
        if best.as_ref().is_none_or(|b| at < b.at) {
            best = Some(Due {
                schedule: s.name.clone(),
                at,
            });
        }
    }
    Ok(best)
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// One source's outcome in a job.
#[derive(Debug, Serialize)]
pub struct SourceRun {
    pub source: String,
    /// The backup's summary, or why it failed (other sources still run).
    pub result: Result<BackupSummary, String>,
}

#[derive(Debug, Serialize)]
pub struct JobReport {
    pub schedule: String,
    pub sources: Vec<SourceRun>,
    /// Retention: what forget kept and removed (None if no backup succeeded).
    pub forget: Option<ForgetResult>,
    /// Prune after forget removed snapshots; Err is its message.
    pub prune: Option<Result<PruneReport, String>>,
}

/// Runs schedule `schedule` of `config` now: opens the repository at
/// `repo_dir` with `appliance_key` (creating it, with that secret in an
/// "appliance" key slot, if absent), backs up each of the schedule's
/// sources (all sources if it names none) as its own snapshot, tagged
/// `schedule:NAME` and `source:NAME`, then forgets per `config.retention`
/// and prunes if anything was forgotten. A failing source is reported and
/// the others still run; retention runs only after at least one success.
pub fn run_job(
    config: &CustomerConfig,
    schedule: &str,
    repo_dir: &Path,
    appliance_key: &[u8],
) -> Result<JobReport, JobError> {
    let s = config
        .schedules
        .iter()
        .find(|s| s.name == schedule)
        .ok_or_else(|| ScheduleError::NoSchedule(schedule.into()))?;
    validate(s)?;
    let sources: Vec<&levee_proto::config::Source> = if s.sources.is_empty() {
        config.sources.iter().collect()
    } else {
        s.sources
            .iter()
            .map(|name| {
                config
                    .sources
                    .iter()
                    .find(|src| &src.name == name)
                    .ok_or_else(|| ScheduleError::NoSource(s.name.clone(), name.clone()))
            })
            .collect::<Result<_, _>>()?
    };
    let repo = match Repository::open(repo_dir, appliance_key) {
        Ok(r) => r,
        Err(RepoError::NotARepository(_)) => Repository::init(
            repo_dir,
            appliance_key,
            KdfParams::new_default(),
            "appliance",
            "appliance",
        )?,
        Err(e) => return Err(e.into()),
    };
    let mut runs = Vec::new();
    for src in sources {
        let spec = src.smb.clone().or_else(|| src.path.clone());
        let result = match spec {
            None => Err(format!("source {}: neither smb nor path", src.name)),
            Some(spec) => {
                let opts = BackupOptions {
                    sources: vec![spec],
                    tags: vec![
                        format!("schedule:{}", s.name),
                        format!("source:{}", src.name),
                    ],
                    excludes: src.exclude.clone(),
                    ..Default::default()
                };
                let password = src.password.as_ref().map(|p| p.0.as_str());
                backup(&repo, &opts, password, &Counters::default()).map_err(|e| e.to_string())
            }
        };
        runs.push(SourceRun {
            source: src.name.clone(),
            result,
        });
    }
    let (mut forgot, mut pruned) = (None, None);
    if runs.iter().any(|r| r.result.is_ok()) {
        let r = &config.retention;
        let keep = |n: u32| (n > 0).then_some(n as usize);
        let f = forget(
            &repo,
            &ForgetOptions {
                keep_last: keep(r.keep_last),
                keep_daily: keep(r.keep_daily),
                keep_weekly: keep(r.keep_weekly),
                keep_monthly: keep(r.keep_monthly),
                ..Default::default()
            },
        )?;
        if !f.remove.is_empty() {
            pruned = Some(
                prune(
                    &repo,
                    &PruneOptions {
                        max_unused_percent: 25,
                    },
                    &Counters::default(),
                )
                .map_err(|e| e.to_string()),
            );
        }
        forgot = Some(f);
    }
    Ok(JobReport {
        schedule: s.name.clone(),
        sources: runs,
        forget: forgot,
        prune: pruned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(at: Option<&str>, days: &[&str], every: Option<&str>) -> Schedule {
        Schedule {
            name: "s".into(),
            sources: vec![],
            at: at.map(Into::into),
            days: days.iter().map(|d| d.to_string()).collect(),
            every: every.map(Into::into),
        }
    }

    // 2026-11-26 is a Thursday; this is 10:00:00 UTC that day.
    const THU_10: i64 = 1_795_687_200;

    #[test]
    fn epoch_anchor() {
        let (y, m, d) = crate::util::civil_from_days(THU_10 / DAY);
        assert_eq!((y, m, d), (2026, 11, 26));
        assert_eq!(THU_10 % DAY, 10 * 3600);
        assert_eq!(DAY_NAMES[weekday(THU_10 / DAY)], "thu");
    }

    #[test]
    fn at_daily() {
        let s = sched(Some("01:30"), &[], None);
        // Never run: the next 01:30, tomorrow.
        let t = next_run(&s, None, THU_10, 0).unwrap();
        assert_eq!(t, THU_10 - 10 * 3600 + DAY + 5400);
        // Ran today at 01:30: tomorrow.
        let today = THU_10 - 10 * 3600 + 5400;
        assert_eq!(next_run(&s, Some(today), THU_10, 0).unwrap(), today + DAY);
        // Last ran three days ago: the missed slot is due now, once.
        let t = next_run(&s, Some(today - 3 * DAY), THU_10, 0).unwrap();
        assert_eq!(t, today - 2 * DAY);
        assert!(t <= THU_10);
        // Slot exactly now and never run: due now.
        assert_eq!(
            next_run(&sched(Some("10:00"), &[], None), None, THU_10, 0).unwrap(),
            THU_10
        );
    }

    #[test]
    fn at_days_of_week() {
        let s = sched(Some("22:00"), &["mon", "Wed"], None);
        // Thursday 10:00 -> next Monday 22:00 (4 days on).
        let mon = THU_10 - 10 * 3600 + 4 * DAY + 22 * 3600;
        assert_eq!(next_run(&s, None, THU_10, 0).unwrap(), mon);
        // After Monday's run -> Wednesday.
        assert_eq!(next_run(&s, Some(mon), mon + 60, 0).unwrap(), mon + 2 * DAY);
        // Only Thursday, already past today's 09:00 slot -> a week on.
        let thu = sched(Some("09:00"), &["thu"], None);
        let t = next_run(&thu, Some(THU_10 - 3600), THU_10, 0).unwrap();
        assert_eq!(t, THU_10 - 3600 + 7 * DAY);
    }

    #[test]
    fn at_local_offset() {
        // 01:30 at UTC+2 is 23:30 UTC the day before.
        let s = sched(Some("01:30"), &["fri"], None);
        let t = next_run(&s, None, THU_10, 2 * 3600).unwrap();
        assert_eq!(t, THU_10 - 10 * 3600 + 23 * 3600 + 1800);
        // Local weekday, not UTC weekday: Friday local is Thursday UTC here.
        assert_eq!(DAY_NAMES[weekday((t + 7200) / DAY)], "fri");
        assert_eq!(DAY_NAMES[weekday(t / DAY)], "thu");
    }

    #[test]
    fn every_interval() {
        let s = sched(None, &[], Some("4h"));
        assert_eq!(next_run(&s, None, THU_10, 0).unwrap(), THU_10);
        assert_eq!(
            next_run(&s, Some(THU_10), THU_10, 0).unwrap(),
            THU_10 + 4 * 3600
        );
        assert!(matches!(
            next_run(&sched(None, &[], Some("1m")), None, 0, 0),
            Err(ScheduleError::BadEvery(..))
        ));
    }

    #[test]
    fn invalid() {
        let e = |s: Schedule| next_run(&s, None, THU_10, 0).unwrap_err();
        assert!(matches!(
            e(sched(None, &[], None)),
            ScheduleError::AtOrEvery(_)
        ));
        assert!(matches!(
            e(sched(Some("1:00"), &[], Some("1h"))),
            ScheduleError::AtOrEvery(_)
        ));
        assert!(matches!(
            e(sched(None, &["mon"], Some("1h"))),
            ScheduleError::AtOrEvery(_)
        ));
        assert!(matches!(
            e(sched(Some("24:00"), &[], None)),
            ScheduleError::BadAt(..)
        ));
        assert!(matches!(
            e(sched(Some("noon"), &[], None)),
            ScheduleError::BadAt(..)
        ));
        assert!(matches!(
            e(sched(Some("12:00"), &["funday"], None)),
            ScheduleError::BadDay(..)
        ));
    }

    fn config(schedules: Vec<Schedule>) -> CustomerConfig {
        serde_json::from_value(serde_json::json!({
            "customer": "acme",
            "sources": [{"name": "a", "path": "/nonexistent-a"}],
        }))
        .map(|mut c: CustomerConfig| {
            c.schedules = schedules;
            c
        })
        .unwrap()
    }

    #[test]
    fn next_due_picks_earliest() {
        let mut nightly = sched(Some("01:00"), &[], None);
        nightly.name = "nightly".into();
        let mut hourly = sched(None, &[], Some("1h"));
        hourly.name = "hourly".into();
        let c = config(vec![nightly, hourly]);
        let mut last = HashMap::new();
        // Hourly never ran: due now.
        let d = next_due(&c, &last, THU_10, 0).unwrap().unwrap();
        assert_eq!((d.schedule.as_str(), d.at), ("hourly", THU_10));
        last.insert("hourly".to_string(), THU_10);
        let d = next_due(&c, &last, THU_10 + 60, 0).unwrap().unwrap();
        assert_eq!((d.schedule.as_str(), d.at), ("hourly", THU_10 + 3600));
        // Nightly's missed slot (ran two days ago) comes first.
        last.insert("nightly".to_string(), THU_10 - 2 * DAY);
        let d = next_due(&c, &last, THU_10 + 60, 0).unwrap().unwrap();
        assert_eq!(d.schedule, "nightly");
        assert!(d.at <= THU_10);
        assert_eq!(next_due(&config(vec![]), &last, THU_10, 0).unwrap(), None);
    }

    #[test]
    fn run_job_backs_up_and_applies_retention() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("f.txt"), b"hello").unwrap();
        let mut c = config(vec![sched(None, &[], Some("1h"))]);
        c.sources[0].path = Some(data.to_string_lossy().into());
        c.retention = levee_proto::config::Retention {
            keep_last: 2,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
        };
        let repo_dir = dir.path().join("repo");
        let key = b"appliance secret";
        for i in 0..3 {
            std::fs::write(data.join("f.txt"), format!("v{i}")).unwrap();
            let r = run_job(&c, "s", &repo_dir, key).unwrap();
            assert_eq!(r.sources.len(), 1);
            let b = r.sources[0].result.as_ref().unwrap();
            assert_eq!(b.summary.files, 1);
            let f = r.forget.unwrap();
            assert_eq!(f.remove.len(), if i == 2 { 1 } else { 0 });
            assert_eq!(r.prune.is_some(), i == 2);
        }
        let repo = Repository::open(&repo_dir, key).unwrap();
        let (snaps, _) = repo.snapshots().unwrap();
        assert_eq!(snaps.len(), 2);
        assert!(snaps[1].1.tags.contains(&"source:a".to_string()));
        assert!(matches!(
            run_job(&c, "nope", &repo_dir, key),
            Err(JobError::Schedule(ScheduleError::NoSchedule(_)))
        ));
    }
}
