//! Scheduled backups on the appliance: which job is due comes from
//! [`levee_proto::schedule`] (shared with the server, which computes the
//! same times to tell when a backup is overdue); [`run_job`] runs one job
//! (back up its sources, then apply the retention policy), timing each
//! step for its run report. The daemon owns the loop (sleep until the due
//! time, run, record the run's start time); nothing here sleeps.

use std::path::Path;

use levee_proto::config::CustomerConfig;
use levee_proto::repo::KdfParams;
use serde::Serialize;

pub use levee_proto::schedule::{next_due, next_run, validate, Due, ScheduleError, MIN_EVERY_SECS};

use crate::backup::commands::backup::{backup, BackupOptions, BackupSummary};
use crate::backup::commands::forget::{forget, ForgetOptions, ForgetResult};
use crate::backup::commands::prune::{prune, PruneOptions, PruneReport};
use crate::backup::progress::Counters;
use crate::backup::repository::{RepoError, Repository};
use crate::enroll::unix_now;

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
    /// Start and end of this source's backup, Unix seconds.
    pub started_at: i64,
    pub ended_at: i64,
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
    /// Start and end of the prune, Unix seconds.
    pub prune_times: (i64, i64),
}

/// Gives the repository a recovery slot for the customer's recovery key
/// (`recovery_key:` in the configuration), so a lost appliance's offsite
/// copies open with the customer's paper key; replaces the slot of a key
/// the customer has replaced. A failure is logged, never fails a backup.
fn add_recovery_slot(repo: &Repository, config: &CustomerConfig) {
    use crate::backup::recovery::RecoverySlot;
    let Some(text) = config.recovery_key.as_deref() else {
        return;
    };
    let key = match levee_proto::recovery::RecoveryPublicKey::parse(text) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("recovery_key in the configuration: {e}; no recovery slot added");
            return;
        }
    };
    match repo.ensure_recovery_slot(&key) {
        Ok(RecoverySlot::Present) => {}
        Ok(RecoverySlot::Added { slot, replaced }) => tracing::info!(
            "added recovery slot {slot} for the customer's recovery key {}{}",
            key.fingerprint(),
            if replaced.is_empty() {
                String::new()
            } else {
                format!(
                    "; removed the slot(s) of the replaced key: {}",
                    replaced.join(", ")
                )
            }
        ),
        Err(e) => tracing::warn!("cannot add the recovery slot: {e}"),
    }
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
    add_recovery_slot(&repo, config);
    // Taken over from an offsite copy: the backups fetch their parents'
    // trees on demand (restricted to them by the backup itself), so
    // unchanged files are not read again. Without a source they are read.
    if crate::replicate::ondemand::pending(repo_dir) {
        let state = repo_dir.parent().unwrap_or(repo_dir);
        if let Err(e) = crate::replicate::ondemand::attach(&repo, state, config) {
            tracing::warn!("the parent snapshots' trees cannot be fetched ({e}): unchanged files are read again");
        }
    }
    let mut runs = Vec::new();
    for src in sources {
        let started_at = unix_now();
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
            started_at,
            ended_at: unix_now(),
            result,
        });
    }
    let (mut forgot, mut pruned, mut prune_times) = (None, None, (0, 0));
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
        let unfetched = crate::backup::unfetched::Unfetched::load(repo.local().as_ref())
            .ok()
            .flatten();
        if let (false, Some(u)) = (f.remove.is_empty(), &unfetched) {
            // Prune would refuse: its listing lacks the packs still offsite.
            // The forgotten snapshots' data goes at the first prune after.
            tracing::info!(
                "prune waits until the back-fill from {} ends (packs of the taken-over repository are not all here)",
                u.target_names()
            );
        } else if !f.remove.is_empty() {
            let started = unix_now();
            pruned = Some(
                prune(
                    &repo,
                    &PruneOptions {
                        max_unused_percent: 25,
                        rewrite: false,
                    },
                    &Counters::default(),
                )
                .map_err(|e| e.to_string()),
            );
            prune_times = (started, unix_now());
        }
        forgot = Some(f);
    }
    Ok(JobReport {
        schedule: s.name.clone(),
        sources: runs,
        forget: forgot,
        prune: pruned,
        prune_times,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_proto::config::Schedule;

    fn sched(at: Option<&str>, days: &[&str], every: Option<&str>) -> Schedule {
        Schedule {
            name: "s".into(),
            sources: vec![],
            at: at.map(Into::into),
            days: days.iter().map(|d| d.to_string()).collect(),
            every: every.map(Into::into),
        }
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
