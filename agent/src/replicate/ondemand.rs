//! A repository taken over from an offsite copy, before its packs are all
//! here (`crate::backup::unfetched`): packs fetched on demand by whatever
//! reads them ([`attach`]: restores, `check --read-data`, `ls`, `diff`),
//! and the rest brought by the back-fill ([`backfill`]) under the
//! customer's `bandwidth_limit`, resumable from the listing alone.
//!
//! Every pack is checked against its name before it is kept (by the local
//! backend, `LocalBackend::fetch_pack`), written to a temporary name,
//! fsynced and renamed; a pack no target gives intact is an error naming
//! the pack and every target's reason, never data.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use levee_proto::config::CustomerConfig;
use levee_proto::offsite::{FileKind, Namespace};
use levee_proto::runs::{ErrorTally, RunKind, RunReport, RunResult};

use super::target::Target;
use super::{open_target, Bucket};
use crate::backup::backend::{PackSource, ReadBackend};
use crate::backup::unfetched::{missing_packs, Unfetched};
use crate::backup::Repository;
use crate::enroll::{unix_now, Credential};

/// The targets a marker names, as clients, in its order.
pub struct OnDemand {
    targets: Vec<(String, Box<dyn Target>)>,
    /// Pacing (the back-fill); `None`: full speed (a restore waits).
    pace: Option<Arc<Bucket>>,
    /// Packs and bytes fetched.
    pub packs: AtomicU64,
    pub bytes: AtomicU64,
}

impl OnDemand {
    /// Clients for the targets of `marker` that `config` still has (by
    /// name), with the appliance's credential in `state`.
    pub fn open(
        state: &Path,
        config: &CustomerConfig,
        marker: &Unfetched,
        pace: Option<Arc<Bucket>>,
    ) -> Result<OnDemand, String> {
        let cred = Credential::load(state)
            .map_err(|e| e.to_string())?
            .ok_or("not enrolled: no credential to reach the offsite targets")?;
        let ns = Namespace::new(&marker.customer, &marker.repository).map_err(|e| e.to_string())?;
        // A pack at the cap (16 MiB packs, twice for headroom) plus slack.
        let timeout = Duration::from_secs(600)
            + pace
                .as_ref()
                .and_then(|b| b.rate())
                .map_or(Duration::ZERO, |r| {
                    Duration::from_secs((64u64 << 20) / r.max(1))
                });
        let mut targets = Vec::new();
        let mut why = Vec::new();
        for name in &marker.targets {
            let Some(t) = config.offsite.iter().find(|t| &t.name == name) else {
                why.push(format!("{name}: not in the configuration any more"));
                continue;
            };
            // Uploads have their own bucket; this one is never charged.
            let unused = Arc::new(Bucket::new(None));
            match open_target(t, ns.clone(), &cred, unused, timeout, state) {
                Ok(c) => targets.push((name.clone(), c)),
                Err(e) => why.push(format!("{name}: {e}")),
            }
        }
        if targets.is_empty() {
            return Err(format!(
                "no offsite target to fetch packs from ({})",
                if why.is_empty() {
                    "the take-over recorded none".to_string()
                } else {
                    why.join("; ")
                }
            ));
        }
        Ok(OnDemand {
            targets,
            pace,
            packs: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }
}

impl OnDemand {
    /// One target already opened, at full speed: a copy read straight
    /// from an offsite store ([`open_copy`]).
    pub fn from_target(name: &str, target: Box<dyn Target>) -> OnDemand {
        OnDemand {
            targets: vec![(name.to_string(), target)],
            pace: None,
            packs: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }
}

/// What [`open_copy`] opened.
pub struct Copy {
    pub repo: Repository,
    /// Fetches the packs as they are read (its counters say how many).
    pub source: Arc<OnDemand>,
    /// What was copied now (everything but the packs).
    pub fetched: crate::replicate::Fetched,
}

/// A repository read straight from an offsite target (`levee-agent --repo
/// https://STORE/<customer>/<id> restore|ls|snapshots`): key slots, index,
/// snapshots and config are copied into `dest` (each checked against its
/// name), the packs are fetched only when read. A listing walks trees
/// only, so it fetches the tree packs; a one-file restore fetches those
/// plus the data packs of that file. `unfetched.json` in `dest` names
/// `label` (so prune and repair refuse the partial copy) until every pack
/// is here.
pub fn open_copy(
    target: Box<dyn Target>,
    label: &str,
    ns: &Namespace,
    dest: &Path,
    key: &levee_proto::recovery::RecoveryPrivateKey,
) -> Result<Copy, String> {
    let fetched = super::fetch_metadata(target.as_ref(), dest).map_err(|e| e.to_string())?;
    let repo = Repository::open_with_recovery(dest, key).map_err(|e| e.to_string())?;
    let marker = Unfetched {
        version: 1,
        customer: ns.customer.clone(),
        repository: ns.repo.clone(),
        targets: vec![label.to_string()],
        since: unix_now(),
    };
    let missing = missing_packs(&repo).map_err(|e| e.to_string())?;
    if missing.is_empty() {
        Unfetched::remove(repo.local().as_ref()).map_err(|e| e.to_string())?;
    } else if Unfetched::load(repo.local().as_ref())
        .map_err(|e| e.to_string())?
        .is_none()
    {
        marker
            .save(repo.local().as_ref())
            .map_err(|e| e.to_string())?;
    }
    let source = Arc::new(OnDemand::from_target(label, target));
    repo.local().set_pack_source(Some(source.clone()));
    Ok(Copy {
        repo,
        source,
        fetched,
    })
}

impl PackSource for OnDemand {
    fn fetch(&self, name: &str) -> Result<Vec<u8>, String> {
        let mut why = Vec::new();
        for (t, target) in &self.targets {
            let got = match &self.pace {
                Some(b) => target.download_paced(FileKind::Data, name, b),
                None => target.download(FileKind::Data, name),
            };
            match got {
                Ok(bytes) if levee_proto::repo::crypto::file_id(&bytes).to_hex() == name => {
                    self.packs.fetch_add(1, Ordering::Relaxed);
                    self.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    tracing::debug!(pack = %name, target = %t, bytes = bytes.len(), "pack fetched from offsite");
                    return Ok(bytes);
                }
                Ok(_) => why.push(format!(
                    "offsite target {t}: its copy does not hash to the pack's name (damaged, or not this repository's); refused"
                )),
                Err(e) => why.push(format!("offsite target {t}: {e}")),
            }
        }
        Err(why.join("; "))
    }
}

/// The appliance's configuration as the service last received it.
pub fn cached_config(state: &Path) -> Result<CustomerConfig, String> {
    let path = state.join(crate::enroll::CONFIG_CACHE);
    let text = std::fs::read(&path).map_err(|e| {
        format!(
            "reading the appliance's configuration {} (its offsite targets): {e}",
            path.display()
        )
    })?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Makes reads of `repo` fetch the packs that are not here yet from the
/// targets its marker names (full speed: someone waits for them).
/// `Ok(None)`: every pack is here, nothing to attach.
pub fn attach(
    repo: &Repository,
    state: &Path,
    config: &CustomerConfig,
) -> Result<Option<Arc<OnDemand>>, String> {
    let Some(marker) = Unfetched::load(repo.local().as_ref()).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let source = Arc::new(OnDemand::open(state, config, &marker, None)?);
    repo.local().set_pack_source(Some(source.clone()));
    Ok(Some(source))
}

/// What one back-fill run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backfill {
    /// The targets it fetched from (the marker's).
    pub targets: String,
    pub started_at: i64,
    pub ended_at: i64,
    pub packs_fetched: u64,
    pub bytes_fetched: u64,
    /// Packs (and their bytes, as the first target lists them) still to
    /// fetch after this run.
    pub packs_left: u64,
    pub bytes_left: u64,
    /// Every pack is here: the marker is gone, the repository is like any
    /// other.
    pub complete: bool,
    pub errors: Vec<String>,
    /// Time spent fetching (from the first request to the last byte).
    pub fetch_time: Duration,
}

impl Backfill {
    /// A run report: `kind: replication`, `job: back-fill`, the targets in
    /// `sources`, fetched packs in `*_new`, what is still to fetch in
    /// `*_total`.
    pub fn report(&self) -> RunReport {
        let mut r = RunReport::new(RunKind::Replication, self.started_at);
        r.ended_at = self.ended_at.max(self.started_at);
        r.job = Some("back-fill".into());
        r.sources = vec![levee_proto::runs::sanitize(
            &format!("back-fill from {}", self.targets),
            1024,
        )];
        r.files_new = self.packs_fetched;
        r.bytes_new = self.bytes_fetched;
        r.files_total = self.packs_left;
        r.bytes_total = self.bytes_left;
        let mut t = ErrorTally::default();
        for e in &self.errors {
            t.add(e);
        }
        t.into_report(&mut r);
        r.result = if self.errors.is_empty() {
            RunResult::Success
        } else {
            RunResult::Failed
        };
        r
    }
}

/// Errors after which a back-fill run stops (a target that is down fails
/// every pack; the next run tries again).
const MAX_ERRORS: usize = 3;
/// A progress line in the journal per this many bytes.
const LOG_EVERY: u64 = 64 << 20;

/// Fetches the packs of `repo` that are not here, from the targets its
/// marker names, at `rate` bytes per second at most (`None`: unlimited),
/// for at most `budget` (then it returns; the next run resumes from the
/// listing). Removes the marker when every pack is here.
pub fn backfill(
    repo: &Repository,
    state: &Path,
    config: &CustomerConfig,
    rate: Option<u64>,
    budget: Option<Duration>,
) -> Backfill {
    let mut out = Backfill {
        started_at: unix_now(),
        ..Default::default()
    };
    if let Err(e) = run_backfill(repo, state, config, rate, budget, &mut out) {
        out.errors.push(e);
    }
    out.ended_at = unix_now();
    out
}

fn run_backfill(
    repo: &Repository,
    state: &Path,
    config: &CustomerConfig,
    rate: Option<u64>,
    budget: Option<Duration>,
    out: &mut Backfill,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let Some(marker) = Unfetched::load(repo.local().as_ref()).map_err(|e| err(&e))? else {
        out.complete = true;
        return Ok(());
    };
    out.targets = marker.target_names();
    let missing = missing_packs(repo).map_err(|e| err(&e))?;
    let source = Arc::new(OnDemand::open(
        state,
        config,
        &marker,
        Some(Arc::new(Bucket::new(rate))),
    )?);
    // Sizes for progress, from the first target that lists (not needed to
    // fetch: a failed listing only leaves the byte counts out).
    let sizes = source
        .targets
        .iter()
        .find_map(|(_, t)| t.list_all().ok())
        .and_then(|mut l| l.remove(&FileKind::Data))
        .unwrap_or_default();
    let size = |name: &str| sizes.get(name).copied().unwrap_or(0);
    let total_bytes: u64 = missing.iter().map(|n| size(n)).sum();
    tracing::info!(
        "back-fill from {}: {} pack(s), {} MiB to fetch{}",
        out.targets,
        missing.len(),
        total_bytes >> 20,
        rate.map_or(String::new(), |r| format!(" at {} KiB/s at most", r >> 10))
    );
    repo.local().set_pack_source(Some(source.clone()));
    let started = Instant::now();
    let mut logged = 0u64;
    let mut left: Vec<&String> = Vec::new();
    for name in &missing {
        let over = budget.is_some_and(|b| started.elapsed() >= b);
        if over || out.errors.len() >= MAX_ERRORS {
            left.push(name);
            continue;
        }
        let before = source.bytes.load(Ordering::Relaxed);
        match repo.local().fetch_pack(name) {
            Ok(_) => {
                let got = source.bytes.load(Ordering::Relaxed) - before;
                if got > 0 {
                    out.packs_fetched += 1;
                    out.bytes_fetched += got;
                }
            }
            Err(e) => {
                tracing::warn!("back-fill: {e}");
                out.errors.push(e.to_string());
                left.push(name);
            }
        }
        if out.bytes_fetched - logged >= LOG_EVERY {
            logged = out.bytes_fetched;
            tracing::info!(
                "back-fill from {}: {} of {} MiB",
                out.targets,
                out.bytes_fetched >> 20,
                total_bytes >> 20
            );
        }
    }
    out.fetch_time = started.elapsed();
    repo.local().set_pack_source(None);
    out.packs_left = left.len() as u64;
    out.bytes_left = left.iter().map(|n| size(n)).sum();
    if left.is_empty() {
        // Listed again: only what the directory holds counts.
        let still = missing_packs(repo).map_err(|e| err(&e))?;
        if still.is_empty() {
            Unfetched::remove(repo.local().as_ref()).map_err(|e| err(&e))?;
            out.complete = true;
            tracing::info!(
                "back-fill from {} complete: {} pack(s), {} bytes fetched in this run; every pack is here, the repository is like any other",
                out.targets,
                out.packs_fetched,
                out.bytes_fetched
            );
        } else {
            out.packs_left = still.len() as u64;
        }
    } else {
        tracing::info!(
            "back-fill from {}: {} pack(s) fetched, {} left ({} MiB)",
            out.targets,
            out.packs_fetched,
            out.packs_left,
            out.bytes_left >> 20
        );
    }
    Ok(())
}

/// One run of the service's back-fill (`daemon/jobs.rs` calls it in a
/// loop on a thread of its own): opens `STATE/repo` with the appliance's
/// repository secret, fetches for at most `budget` under the
/// configuration's `bandwidth_limit`, spools the run's report and sends
/// the spool (what the flush did comes back for the journal).
pub fn service_run(
    state: &Path,
    config: &CustomerConfig,
    repo_key: &[u8],
    budget: Duration,
) -> Result<(Backfill, Result<Option<crate::runs::Flushed>, String>), String> {
    let repo_dir = state.join("repo");
    let repo = Repository::open(&repo_dir, repo_key)
        .map_err(|e| format!("{}: {e}", repo_dir.display()))?;
    let rate = config
        .bandwidth_limit
        .as_deref()
        .and_then(levee_proto::config::parse_rate);
    let b = backfill(&repo, state, config, rate, Some(budget));
    drop(repo);
    if let Err(e) = crate::runs::Spool::new(state).push(&b.report()) {
        tracing::warn!("back-fill run report not kept: {e}");
    }
    Ok((b, crate::runs::flush_with_stored_credential(state)))
}

/// Whether `repo_dir` holds a repository with packs still offsite.
pub fn pending(repo_dir: &Path) -> bool {
    crate::backup::backend::local::LocalBackend::new(repo_dir)
        .size(crate::backup::backend::FileKind::Unfetched, "")
        .is_ok()
}
