//! Scheduled backups in the service: a thread that sleeps until the next
//! job of the current configuration is due ([`crate::schedule::next_due`]),
//! runs it ([`crate::schedule::run_job`]) into the repository on the data
//! partition, and records when each schedule last started, so a restart or
//! a reboot neither repeats nor loses a run. Heartbeats go on meanwhile: a
//! backup of a large share takes hours. Each job's runs are reported to
//! the server through the spool ([`crate::runs`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use levee_proto::config::CustomerConfig;
use levee_proto::restore_api::RestoreRequest;

use crate::asked_restore::{CancelAsked, Watch};

use crate::enroll::{unix_now, write_atomic};
use levee_proto::runs::{RunKind, RunReport};

use crate::runs::{self, build, build::RunContext, Flushed, Spool};
use crate::schedule::{next_due, run_job, JobError, JobReport};

/// When the schedules last started, by schedule name (Unix seconds).
const LAST_RUNS: &str = "jobs.json";
/// The repository's appliance secret (random, made once, 0600).
pub(super) const REPO_KEY: &str = "credential/repo.key";
/// The repository on the data partition.
pub(super) const REPO_DIR: &str = "repo";
/// Longest sleep before the schedule is looked at again: a configuration
/// pulled meanwhile may have moved the next job earlier.
const RECHECK: Duration = Duration::from_secs(30);

/// The handle the heartbeat loop keeps: it hands over each configuration
/// and each restore ops asked for.
pub(super) struct Jobs {
    config: Arc<Mutex<Option<CustomerConfig>>>,
    asked: Arc<Asked>,
}

/// The restore request the heartbeat brought, for the job thread, which
/// naps on it: a request wakes it before the next job is due.
#[derive(Default)]
struct Asked {
    next: Mutex<Option<RestoreRequest>>,
    wake: Condvar,
    /// A running request ops cancels (the restore on the job thread
    /// watches it).
    cancel: CancelAsked,
    /// The heartbeat interval: how often a running restore reports its
    /// progress.
    every: Mutex<Duration>,
}

impl Asked {
    fn put(&self, req: RestoreRequest) {
        if let Ok(mut next) = self.next.lock() {
            *next = Some(req);
            self.wake.notify_all();
        }
    }

    fn take(&self) -> Option<RestoreRequest> {
        self.next.lock().ok().and_then(|mut n| n.take())
    }

    /// Sleeps `d`, or less if a request is (or comes) in.
    fn nap(&self, d: Duration) {
        let Ok(next) = self.next.lock() else {
            std::thread::sleep(d);
            return;
        };
        if next.is_none() {
            let _ = self.wake.wait_timeout_while(next, d, |n| n.is_none());
        }
    }
}

use super::update_step::JobGate;

impl Jobs {
    /// Starts the job thread for the appliance whose state is in
    /// `state_dir`; `who` prefixes its log lines.
    pub(super) fn start(
        state_dir: PathBuf,
        who: String,
        config: Option<CustomerConfig>,
        gate: JobGate,
    ) -> Jobs {
        let shared = Arc::new(Mutex::new(config));
        let asked = Arc::new(Asked::default());
        let (theirs, their_asked) = (shared.clone(), asked.clone());
        let (state2, who2, theirs2) = (state_dir.clone(), who.clone(), shared.clone());
        let spawned = std::thread::Builder::new()
            .name("levee-jobs".into())
            .spawn(move || run(&state_dir, &who, &theirs, &their_asked, &gate));
        if let Err(e) = spawned {
            tracing::warn!("cannot start the backup scheduler: {e}");
        }
        // Its own thread: a back-fill of a large repository under a low
        // cap takes days and must not hold back a scheduled backup.
        let spawned = std::thread::Builder::new()
            .name("levee-backfill".into())
            .spawn(move || backfill_loop(&state2, &who2, &theirs2));
        if let Err(e) = spawned {
            tracing::warn!("cannot start the back-fill: {e}");
        }
        Jobs {
            config: shared,
            asked,
        }
    }

    /// A restore ops asked for (from a heartbeat answer, sent every
    /// `every`): run on the job thread after the job under way (see
    /// [`crate::asked_restore`]); one ops cancels stops if it runs.
    pub(super) fn restore(&self, req: Option<&RestoreRequest>, every: Duration) {
        if let Ok(mut e) = self.asked.every.lock() {
            *e = every;
        }
        if let Some(r) = req {
            if r.cancel {
                self.asked.cancel.ask(r.id);
            }
            self.asked.put(r.clone());
        }
    }

    /// The configuration to schedule from, from now on.
    pub(super) fn update(&self, config: Option<&CustomerConfig>) {
        if let (Some(c), Ok(mut slot)) = (config, self.config.lock()) {
            if slot.as_ref() != Some(c) {
                *slot = Some(c.clone());
            }
        }
    }
}

fn run(
    state_dir: &Path,
    who: &str,
    shared: &Mutex<Option<CustomerConfig>>,
    asked: &Asked,
    gate: &JobGate,
) {
    let mut last_runs = load_last_runs(state_dir, who);
    let mut announced: Option<(String, i64)> = None;
    // At start: a target that was down while the service was not running
    // (or a run cut by a reboot) is caught up now.
    let mut replicate_at: Option<i64> = Some(unix_now());
    // Disaster recovery: publish this appliance's key and repository slot,
    // take over a replaced appliance's repository (crate::recover). Done
    // at start and after each job; no backup while it says to wait.
    let mut recovery_ok = false;
    let mut waiting: Option<String> = None;
    loop {
        let config = shared.lock().ok().and_then(|c| c.clone());
        let Some(config) = config else {
            // No configuration yet: it usually arrives within seconds.
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        if !recovery_ok {
            recovery_ok = recovery_step(state_dir, &config, who, &mut waiting);
            if !recovery_ok {
                std::thread::sleep(RECHECK);
                continue;
            }
        }
        // A restore ops asked for goes first, once the repository is the
        // one to restore from (a take-over above is done).
        if let Some(req) = asked.take() {
            let watch = Watch {
                cancel: &asked.cancel,
                every: asked.every.lock().map(|e| *e).unwrap_or(RECHECK),
            };
            if !restore_asked(state_dir, &config, who, gate, &req, watch) {
                asked.put(req);
                std::thread::sleep(RECHECK);
            }
            continue;
        }
        let now = unix_now();
        if replicate_at.is_some_and(|t| t <= now) && !config.offsite.is_empty() {
            replicate_at = replicate(state_dir, &config, who, gate);
        }
        // Appliances keep UTC (the image carries no time zone database).
        let due = match next_due(&config, &last_runs, now, 0) {
            Ok(Some(d)) => d,
            Ok(None) => {
                asked.nap(RECHECK);
                continue;
            }
            Err(e) => {
                tracing::warn!("{who}: schedules not run: {e}");
                std::thread::sleep(RECHECK * 10);
                continue;
            }
        };
        if due.at > now {
            let next = (due.schedule.clone(), due.at);
            if announced.as_ref() != Some(&next) {
                tracing::info!(
                    "{who}: next backup: schedule {} in {} s",
                    due.schedule,
                    due.at - now
                );
                announced = Some(next);
            }
            asked.nap(RECHECK.min(Duration::from_secs((due.at - now) as u64)));
            continue;
        }
        let key = match repo_key(state_dir) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!("{who}: backup of schedule {} not run: {e}", due.schedule);
                std::thread::sleep(RECHECK * 10);
                continue;
            }
        };
        // Busy first, then the hold: of this and the updater (hold, then
        // busy) at least one sees the other, so no job starts under a reboot.
        gate.busy.store(true, std::sync::atomic::Ordering::SeqCst);
        if gate.hold.load(std::sync::atomic::Ordering::SeqCst) {
            // The updater is rebooting into a new slot: no new job now.
            gate.busy.store(false, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(RECHECK);
            continue;
        }
        tracing::info!("{who}: backup of schedule {} starting", due.schedule);
        // Recorded before the run: a crash or reboot mid-backup does not
        // start it again at once (the next slot redoes it, and the packs the
        // interrupted run finished are reused).
        last_runs.insert(due.schedule.clone(), now);
        save_last_runs(state_dir, &last_runs, who);
        let result = run_job(&config, &due.schedule, &state_dir.join(REPO_DIR), &key);
        gate.busy.store(false, std::sync::atomic::Ordering::SeqCst);
        log_job(&due.schedule, &result, who);
        // The job may have added the recovery slot: published next round.
        recovery_ok = false;
        let reports = job_reports(&config, &due.schedule, now, state_dir, &result);
        report_runs(state_dir, &reports, who);
        if !config.offsite.is_empty() {
            replicate_at = replicate(state_dir, &config, who, gate);
        }
    }
}

/// Longest back-fill run: each ends with a run report (progress for the
/// server) and a fresh look at the configuration (its cap).
const BACKFILL_SLICE: Duration = Duration::from_secs(600);

/// While the repository has packs still offsite (a take-over), fetches
/// them in runs of at most [`BACKFILL_SLICE`] under `bandwidth_limit`,
/// beside the backups (they never wait for it: packs only appear, and
/// prune waits for the end). Resumes after a restart from the listing.
fn backfill_loop(state_dir: &Path, who: &str, shared: &Mutex<Option<CustomerConfig>>) {
    // ondemand::service_run opens STATE/repo: the same directory.
    let repo_dir = state_dir.join(REPO_DIR);
    loop {
        if !crate::replicate::ondemand::pending(&repo_dir) {
            std::thread::sleep(RECHECK);
            continue;
        }
        let Some(config) = shared.lock().ok().and_then(|c| c.clone()) else {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        let run = repo_key(state_dir).and_then(|key| {
            crate::replicate::ondemand::service_run(state_dir, &config, &key, BACKFILL_SLICE)
        });
        let b = match run {
            Ok((b, flushed)) => {
                log_flush(flushed, who);
                b
            }
            Err(e) => {
                tracing::warn!("{who}: back-fill not run: {e}");
                std::thread::sleep(RECHECK * 10);
                continue;
            }
        };
        if !b.errors.is_empty() {
            tracing::warn!(
                "{who}: back-fill from {}: {}; retrying in {} s",
                b.targets,
                b.errors.join("; "),
                crate::replicate::RETRY.as_secs()
            );
            std::thread::sleep(crate::replicate::RETRY);
        } else if !b.complete && b.packs_fetched == 0 {
            std::thread::sleep(RECHECK);
        }
    }
}

/// One recovery step ([`crate::recover::step`]); whether backups may run.
/// A server out of reach does not stop them; a grant that could not be
/// taken over yet (a target down) does, so no new repository starts
/// beside the one to continue.
fn recovery_step(
    state_dir: &Path,
    config: &CustomerConfig,
    who: &str,
    waiting: &mut Option<String>,
) -> bool {
    use crate::recover::{RecoverError, Step};
    let key = match repo_key(state_dir) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("{who}: recovery step not run: {e}");
            return true;
        }
    };
    match crate::recover::step(state_dir, config, &key) {
        Ok(Step::Ready) | Ok(Step::Adopted { fetched: false, .. }) => {
            *waiting = None;
            true
        }
        Ok(Step::Adopted {
            repository,
            fetched: true,
        }) => {
            tracing::info!(
                "{who}: took over repository {repository} from the appliance it replaces; \
                 backups continue its history"
            );
            *waiting = None;
            true
        }
        Ok(Step::Waiting(why)) => {
            if waiting.as_deref() != Some(why.as_str()) {
                tracing::warn!("{who}: no backup yet: {why}");
            }
            *waiting = Some(why);
            false
        }
        Err(e @ (RecoverError::Server(_) | RecoverError::Local(_))) => {
            tracing::warn!("{who}: recovery step: {e}");
            true
        }
        Err(e) => {
            tracing::warn!(
                "{who}: taking over the replaced appliance's repository failed: {e}; retrying in {} s, no backup meanwhile",
                RECHECK.as_secs()
            );
            false
        }
    }
}

/// Runs a restore ops asked for ([`crate::asked_restore::run`]) with the
/// gate shut, as a backup would, and reports its run; `false`: not now
/// (the updater is rebooting into a new slot, or the key is unreadable).
pub(super) fn restore_asked(
    state_dir: &Path,
    config: &CustomerConfig,
    who: &str,
    gate: &JobGate,
    req: &RestoreRequest,
    watch: Watch,
) -> bool {
    let key = match repo_key(state_dir) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("{who}: restore request {} not run yet: {e}", req.id);
            return false;
        }
    };
    gate.busy.store(true, std::sync::atomic::Ordering::SeqCst);
    if gate.hold.load(std::sync::atomic::Ordering::SeqCst) {
        gate.busy.store(false, std::sync::atomic::Ordering::SeqCst);
        return false;
    }
    let ran = crate::asked_restore::run(
        state_dir,
        config,
        &state_dir.join(REPO_DIR),
        &key,
        req,
        watch,
    );
    gate.busy.store(false, std::sync::atomic::Ordering::SeqCst);
    if let Some(report) = &ran.report {
        report_runs(state_dir, std::slice::from_ref(report), who);
    }
    true
}

/// Replicates to every offsite target and reports each target's run;
/// returns when to try again (`None`: every target is up to date).
fn replicate(state_dir: &Path, config: &CustomerConfig, who: &str, gate: &JobGate) -> Option<i64> {
    let retry = Some(unix_now() + crate::replicate::RETRY.as_secs() as i64);
    let key = match repo_key(state_dir) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("{who}: replication not run: {e}");
            return retry;
        }
    };
    if !state_dir.join(REPO_DIR).join("config").exists() {
        // No backup yet: nothing to replicate.
        return None;
    }
    gate.busy.store(true, std::sync::atomic::Ordering::SeqCst);
    if gate.hold.load(std::sync::atomic::Ordering::SeqCst) {
        gate.busy.store(false, std::sync::atomic::Ordering::SeqCst);
        return retry;
    }
    let opts = crate::replicate::ReplicateOptions::default();
    let outcomes = crate::replicate::replicate_all(state_dir, config, &key, &opts);
    // The local copy's read-back, with repair from the copies just
    // brought up to date (crate::replicate::scrub).
    let scrubbed = crate::Repository::open(&state_dir.join(REPO_DIR), &key)
        .map(|repo| crate::replicate::scrub(state_dir, config, &repo, None));
    gate.busy.store(false, std::sync::atomic::Ordering::SeqCst);
    match &scrubbed {
        Ok(s) => {
            for (p, why) in &s.unrepaired {
                tracing::error!("{who}: damaged local pack {p} not repaired yet: {why}");
            }
            for p in &s.repaired {
                tracing::warn!("{who}: damaged local pack {p} repaired from its offsite copy");
            }
            if s.packs_read > 0 || s.error.is_some() || !s.unrepaired.is_empty() {
                tracing::info!(
                    "{who}: local read-back: {} of {} pack(s), {} bytes, {} damaged, {} repaired",
                    s.packs_read,
                    s.packs_total,
                    s.bytes_read,
                    s.damaged.len(),
                    s.repaired.len()
                );
                report_runs(state_dir, &[s.report()], who);
            }
        }
        Err(e) => tracing::warn!("{who}: local read-back not run: {e}"),
    }
    let outcomes = match outcomes {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(
                "{who}: replication not run: {e}; retrying in {} s",
                crate::replicate::RETRY.as_secs()
            );
            return retry;
        }
    };
    let mut all_ok = true;
    for o in &outcomes {
        if o.ok() {
            tracing::info!(
                "{who}: offsite target {} up to date: {} file(s), {} bytes uploaded; {} deletion(s) requested",
                o.target, o.files_uploaded, o.bytes_uploaded, o.deletions_requested
            );
        } else {
            all_ok = false;
            tracing::warn!(
                "{who}: offsite target {} behind by {} s: {}; retrying in {} s",
                o.target,
                o.lag_secs,
                o.errors.first().map(String::as_str).unwrap_or(""),
                crate::replicate::RETRY.as_secs()
            );
        }
    }
    let reports: Vec<RunReport> = outcomes.iter().map(|o| o.report()).collect();
    report_runs(state_dir, &reports, who);
    if all_ok {
        None
    } else {
        retry
    }
}

fn log_job(schedule: &str, result: &Result<JobReport, JobError>, who: &str) {
    match result {
        Ok(report) => {
            for s in &report.sources {
                match &s.result {
                    Ok(sum) => tracing::info!(
                        "{who}: schedule {}: source {} backed up as snapshot {}: {} files, {} bytes read, {} bytes new, {} errors",
                        report.schedule,
                        s.source,
                        sum.snapshot,
                        sum.summary.files,
                        sum.summary.bytes_read,
                        sum.summary.bytes_new,
                        sum.summary.errors
                    ),
                    Err(e) => tracing::warn!(
                        "{who}: schedule {}: source {} failed: {e}",
                        report.schedule, s.source
                    ),
                }
            }
            if let Some(Err(e)) = &report.prune {
                tracing::warn!("{who}: schedule {}: prune failed: {e}", report.schedule);
            }
        }
        Err(e) => tracing::warn!("{who}: schedule {schedule} failed: {e}"),
    }
}

/// The run reports of one job: one backup report per source (each its own
/// snapshot), and one for the prune if retention ran one. A job that could
/// not start (no repository) is one failed backup report naming all the
/// schedule's sources.
fn job_reports(
    config: &CustomerConfig,
    schedule: &str,
    started_at: i64,
    state_dir: &Path,
    result: &Result<JobReport, JobError>,
) -> Vec<RunReport> {
    let repo_bytes = build::repo_size(&state_dir.join(REPO_DIR));
    let ctx = |sources: Vec<String>, started_at: i64, ended_at: i64| RunContext {
        job: Some(schedule.to_string()),
        sources,
        started_at,
        ended_at,
        repo_bytes,
    };
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let sources = config
                .schedules
                .iter()
                .find(|s| s.name == schedule)
                .map(|s| s.sources.clone())
                .unwrap_or_default();
            let c = ctx(sources, started_at, unix_now());
            return vec![build::failed(RunKind::Backup, &c, &e.to_string())];
        }
    };
    let mut out: Vec<RunReport> = report
        .sources
        .iter()
        .map(|s| {
            let c = ctx(vec![s.source.clone()], s.started_at, s.ended_at);
            match &s.result {
                Ok(sum) => build::backup(&c, sum),
                Err(e) => build::failed(RunKind::Backup, &c, e),
            }
        })
        .collect();
    if let Some(p) = &report.prune {
        let (start, end) = report.prune_times;
        let c = ctx(Vec::new(), start, end);
        out.push(match p {
            Ok(p) => build::prune(&c, p),
            Err(e) => build::failed(RunKind::Prune, &c, e),
        });
    }
    out
}

/// Spools `reports` and sends the spool (what a down server missed goes
/// first, in order).
fn report_runs(state_dir: &Path, reports: &[RunReport], who: &str) {
    let spool = Spool::new(state_dir);
    for r in reports {
        match spool.push(r) {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!("{who}: run report spool full: dropped its {n} oldest report(s)")
            }
            Err(e) => tracing::warn!("{who}: run report not kept: {e}"),
        }
    }
    log_flush(runs::flush_with_stored_credential(state_dir), who);
}

/// Logs what a flush of the spool did: failures and drops, not successes
/// (one line per job is already there).
pub(super) fn log_flush(flushed: Result<Option<Flushed>, String>, who: &str) {
    match flushed {
        Ok(Some(f)) => {
            for d in &f.dropped {
                tracing::warn!("{who}: run report dropped: {d}");
            }
            if let Some(why) = &f.stopped {
                tracing::warn!("{who}: {} run report(s) wait in the spool: {why}", f.left);
            } else if f.sent > 0 {
                tracing::info!("{who}: {} run report(s) sent", f.sent);
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("{who}: run reports not sent: {e}"),
    }
}

fn load_last_runs(state_dir: &Path, who: &str) -> HashMap<String, i64> {
    let path = state_dir.join(LAST_RUNS);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(
                "{who}: {} is not readable ({e}); every schedule counts as never run",
                path.display()
            );
            HashMap::new()
        }),
        Err(_) => HashMap::new(),
    }
}

fn save_last_runs(state_dir: &Path, runs: &HashMap<String, i64>, who: &str) {
    let path = state_dir.join(LAST_RUNS);
    let saved = serde_json::to_vec_pretty(runs)
        .map_err(|e| e.to_string())
        .and_then(|b| write_atomic(&path, &b, 0o600).map_err(|e| e.to_string()));
    if let Err(e) = saved {
        tracing::warn!(
            "{who}: cannot record the schedule's run in {}: {e}",
            path.display()
        );
    }
}

/// The repository's appliance secret, made on first use: 32 random bytes,
/// hex, beside the credential (on the data partition of an installed box).
fn repo_key(state_dir: &Path) -> Result<Vec<u8>, String> {
    let path = state_dir.join(REPO_KEY);
    match std::fs::read_to_string(&path) {
        Ok(k) if k.trim().len() == 64 => Ok(k.trim().as_bytes().to_vec()),
        Ok(_) => Err(format!("{} is not a 64-digit hex key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = hex::encode(rand::random::<[u8; 32]>());
            write_atomic(&path, key.as_bytes(), 0o600).map_err(|e| e.to_string())?;
            Ok(key.into_bytes())
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("credential")).unwrap();
        let a = repo_key(dir.path()).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(repo_key(dir.path()).unwrap(), a);
        std::fs::write(dir.path().join(REPO_KEY), "short").unwrap();
        assert!(repo_key(dir.path()).unwrap_err().contains("64-digit"));
    }

    /// A state directory (`dir/state`) and a configuration that backs up
    /// `dir/data` (one file, `f.txt`) every hour.
    fn hourly_backup_of_one_file() -> (tempfile::TempDir, PathBuf, CustomerConfig) {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(state.join("credential")).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("f.txt"), b"hello").unwrap();
        let config: CustomerConfig = serde_json::from_value(serde_json::json!({
            "customer": "c",
            "heartbeat_interval": "5m",
            "sources": [{"name": "d", "path": data.to_string_lossy()}],
            "schedules": [{"name": "often", "every": "1h"}],
        }))
        .unwrap();
        (dir, state, config)
    }

    #[test]
    fn a_due_schedule_runs_into_the_repository_and_is_recorded() {
        let (_dir, state, config) = hourly_backup_of_one_file();
        let jobs = Jobs::start(state.clone(), "test".into(), None, JobGate::default());
        jobs.update(Some(&config));
        // Never run: due at once; the run is recorded before it starts and
        // the repository appears.
        let t = std::time::Instant::now();
        while !(state.join(LAST_RUNS).exists()
            && state
                .join(REPO_DIR)
                .join("snapshots")
                .read_dir()
                .map(|mut d| d.next().is_some())
                .unwrap_or(false))
        {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "no snapshot after 120 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let runs: HashMap<String, i64> =
            serde_json::from_slice(&std::fs::read(state.join(LAST_RUNS)).unwrap()).unwrap();
        assert!(runs.contains_key("often"));
        // Its run report waits in the spool (no credential: not enrolled,
        // nothing to send it with).
        let spool = Spool::new(&state);
        while spool.pending().unwrap().is_empty() {
            assert!(t.elapsed() < Duration::from_secs(120), "no run report");
            std::thread::sleep(Duration::from_millis(100));
        }
        let file = &spool.pending().unwrap()[0];
        let r = RunReport::parse(&std::fs::read(file).unwrap()).unwrap();
        assert_eq!((r.kind, r.job.as_deref()), (RunKind::Backup, Some("often")));
        assert_eq!(r.sources, ["d"]);
        assert_eq!(r.files_total, 1);
        assert!(r.snapshot.is_some() && r.repo_bytes.is_some_and(|b| b > 0));
    }

    #[test]
    fn a_restore_ops_asked_for_runs_on_the_job_thread_and_is_reported() {
        let (dir, state, config) = hourly_backup_of_one_file();
        let jobs = Jobs::start(state.clone(), "test".into(), None, JobGate::default());
        jobs.update(Some(&config));
        let spool = Spool::new(&state);
        let t = std::time::Instant::now();
        let reports = |kind: RunKind| -> Vec<RunReport> {
            spool
                .pending()
                .unwrap()
                .iter()
                .filter_map(|f| RunReport::parse(&std::fs::read(f).ok()?).ok())
                .filter(|r| r.kind == kind)
                .collect()
        };
        while reports(RunKind::Backup).is_empty() {
            assert!(t.elapsed() < Duration::from_secs(120), "no backup");
            std::thread::sleep(Duration::from_millis(100));
        }
        // The next backup is an hour away: the request wakes the thread.
        let out = dir.path().join("restored");
        jobs.restore(
            Some(&RestoreRequest {
                id: 1,
                snapshot: "latest".into(),
                path: None,
                target: out.to_string_lossy().into(),
                credentials_of: None,
                cancel: false,
            }),
            Duration::from_secs(1),
        );
        while reports(RunKind::Restore).is_empty() {
            assert!(t.elapsed() < Duration::from_secs(60), "no restore run");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(std::fs::read(out.join("data/f.txt")).unwrap(), b"hello");
        let r = &reports(RunKind::Restore)[0];
        assert_eq!(r.job.as_deref(), Some("restore request 1"));
        assert_eq!(r.files_new, 1);
        // A bad target: refused with the reason, as a failed run.
        jobs.restore(
            Some(&RestoreRequest {
                id: 2,
                snapshot: "latest".into(),
                path: None,
                target: "smb://10.0.0.1/nobody".into(),
                credentials_of: None,
                cancel: false,
            }),
            Duration::from_secs(1),
        );
        while reports(RunKind::Restore).len() < 2 {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no second restore run"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let failed = reports(RunKind::Restore)
            .into_iter()
            .find(|r| r.job.as_deref() == Some("restore request 2"))
            .unwrap();
        assert!(
            failed.errors[0].message.contains("no SMB source"),
            "{:?}",
            failed.errors
        );
        // A request the heartbeat says ops cancels: the running restore
        // is told (CancelAsked), and one not started never runs.
        let gone = dir.path().join("cancelled");
        jobs.restore(
            Some(&RestoreRequest {
                id: 3,
                snapshot: "latest".into(),
                path: None,
                target: gone.to_string_lossy().into(),
                credentials_of: None,
                cancel: true,
            }),
            Duration::from_secs(1),
        );
        assert!(jobs.asked.cancel.asked(3));
        let journal = state.join(crate::asked_restore::JOURNAL);
        while !std::fs::read_to_string(&journal)
            .unwrap_or_default()
            .contains("cancelled by ops before it started")
        {
            assert!(t.elapsed() < Duration::from_secs(60), "not cancelled");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!gone.exists(), "a cancelled request ran");
        assert_eq!(reports(RunKind::Restore).len(), 2, "no run for it");
    }
}
