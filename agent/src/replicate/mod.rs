//! Replication to offsite targets: after every backup run and on a retry
//! schedule, every target of the configuration is brought up to date with
//! the local repository (`diff` -> `upload` -> deletion requests):
//!
//! 1. ask the target what it holds ([`client::StoreClient::list_all`]);
//! 2. upload what it lacks in dependency order ([`plan`]): config, key
//!    slots (only high-entropy ones: the appliance's and the recovery slot;
//!    password slots stay local, so a copy gives nothing to guess offline),
//!    packs, index, and snapshots only once all their data is there;
//!    each file in parts, resumed after what the store holds, spread over
//!    the target's endpoints with failover, under `bandwidth_limit`;
//! 3. ask for the deletion of files the local repository no longer has
//!    (the store carries it out after its grace period).
//!
//! Each target's run becomes a run report (`kind: replication`).

pub mod client;
pub mod fetch;
pub mod ondemand;
pub mod parallel;
pub mod plan;
pub mod s3;
pub mod scrub;
pub mod target;
pub mod throttle;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use levee_proto::config::{CustomerConfig, OffsiteTarget};
use levee_proto::offsite::{DeletionItem, DeletionRequest, FileKind, Namespace};
use levee_proto::repo::keyslot::KeySlot;
use levee_proto::runs::{ErrorTally, RunKind, RunReport, RunResult};

use crate::backup::backend::{FileKind as LocalKind, ReadBackend};
use crate::backup::Repository;
use crate::enroll::{unix_now, write_atomic, Credential};
pub use client::{StoreClient, StoreError};
pub use fetch::{fetch_metadata, fetch_repository, repair_packs, FetchError, Fetched, Repaired};
pub use plan::{LocalFile, Plan};
pub use s3::{AppendOnly, S3Target};
pub use scrub::{scrub, ScrubOutcome};
pub use target::{Listing, Target};
pub use throttle::Bucket;

/// Key slot kinds that may leave the appliance.
pub const TRAVELLING_SLOTS: [&str; 2] = ["appliance", "recovery"];
/// A failed replication is tried again after this long.
pub const RETRY: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct ReplicateOptions {
    /// Bytes per upload request (a cut loses at most the part in flight;
    /// the store keeps what arrived of it).
    pub part_bytes: u64,
    /// S3 targets: files up to this size go up in one request (a cut
    /// re-sends them), larger ones in parts of `part_bytes`.
    pub whole_bytes: u64,
    /// Longest single request.
    pub timeout: Duration,
    /// Share of the files a target holds that this run reads back and
    /// checks against their names (rotating, so every file comes round); a
    /// corrupt one is uploaded again. [`replicate_all`] (the daemon) sets
    /// it per target from the configuration's `verify_per_week` and the
    /// time since that target's last run.
    pub verify_share: f64,
    /// Files uploaded at the same time per target (within one kind:
    /// packs and index before the snapshots that reference them), for a
    /// target whose configuration gives no `streams`.
    pub streams: usize,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        ReplicateOptions {
            part_bytes: 8 << 20,
            whole_bytes: s3::WHOLE_MAX,
            timeout: Duration::from_secs(600),
            // With a backup a day: every file read back about every 3 weeks.
            verify_share: 0.05,
            streams: levee_proto::config::DEFAULT_STREAMS as usize,
        }
    }
}

/// What one target's run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetOutcome {
    pub target: String,
    pub started_at: i64,
    pub ended_at: i64,
    pub files_uploaded: u64,
    /// Request-body bytes sent (parts resent after a cut count again).
    pub bytes_uploaded: u64,
    /// Files and bytes the target holds of the local repository after.
    pub files_present: u64,
    pub bytes_present: u64,
    pub deletions_requested: u64,
    /// Files the store read back and checked, and those found corrupt (and
    /// uploaded again).
    pub files_verified: u64,
    pub files_corrupt: u64,
    /// Seconds since the oldest local snapshot the target still lacks.
    pub lag_secs: u64,
    pub errors: Vec<String>,
    /// What the run could do but an operator should know (a bucket that
    /// is not append-only); in the report's errors, the run still counts
    /// as a success.
    pub warnings: Vec<String>,
}

impl TargetOutcome {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// The run report: the target in `sources`, uploads in `*_new`, what
    /// it holds in `*_total`.
    pub fn report(&self) -> RunReport {
        let mut r = RunReport::new(RunKind::Replication, self.started_at);
        r.ended_at = self.ended_at.max(self.started_at);
        r.sources = vec![levee_proto::runs::sanitize(&self.target, 1024)];
        r.files_new = self.files_uploaded;
        r.bytes_new = self.bytes_uploaded;
        r.files_total = self.files_present;
        r.bytes_total = self.bytes_present;
        r.lag_secs = Some(self.lag_secs);
        let mut t = ErrorTally::default();
        for e in self.errors.iter().chain(&self.warnings) {
            t.add(e);
        }
        t.into_report(&mut r);
        r.result = match (self.ok(), self.warnings.is_empty()) {
            (false, _) => RunResult::Failed,
            (true, true) => RunResult::Success,
            (true, false) => RunResult::Warning,
        };
        r
    }
}

fn sha256_hex(b: &[u8]) -> String {
    levee_proto::repo::crypto::file_id(b).to_hex()
}

/// The local files that may travel, with their store names.
pub fn local_files(repo: &Repository) -> Result<Vec<LocalFile>, String> {
    let be = repo.local();
    let e = |e: crate::backup::backend::BackendError| e.to_string();
    let mut out = Vec::new();
    let config = be.read(LocalKind::Config, "").map_err(e)?;
    out.push(LocalFile {
        kind: FileKind::Config,
        name: sha256_hex(&config),
        size: config.len() as u64,
    });
    for (name, _) in be.list(LocalKind::Key).map_err(e)? {
        let bytes = be.read(LocalKind::Key, &name).map_err(e)?;
        match KeySlot::parse(&bytes) {
            Ok(s) if TRAVELLING_SLOTS.contains(&s.kind.as_str()) => out.push(LocalFile {
                kind: FileKind::Keys,
                name: sha256_hex(&bytes),
                size: bytes.len() as u64,
            }),
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(slot = %name, error = %err, "unreadable key slot not replicated")
            }
        }
    }
    for (local, kind) in [
        (LocalKind::Pack, FileKind::Data),
        (LocalKind::Index, FileKind::Index),
        (LocalKind::Snapshot, FileKind::Snapshots),
    ] {
        for (name, size) in be.list(local).map_err(e)? {
            if levee_proto::offsite::check_name(&name).is_ok() {
                out.push(LocalFile { kind, name, size });
            }
        }
    }
    Ok(out)
}

/// Reads `len` bytes at `offset` of a local file by its store name.
fn read_local(
    repo: &Repository,
    f: &LocalFile,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, String> {
    let be = repo.local();
    let whole = |kind: LocalKind, name: &str| -> Result<Vec<u8>, String> {
        let b = be.read(kind, name).map_err(|e| e.to_string())?;
        let start = (offset as usize).min(b.len());
        Ok(b[start..(start + len).min(b.len())].to_vec())
    };
    match f.kind {
        FileKind::Data => be
            .read_at(LocalKind::Pack, &f.name, offset, len)
            .map_err(|e| e.to_string()),
        FileKind::Index => whole(LocalKind::Index, &f.name),
        FileKind::Snapshots => whole(LocalKind::Snapshot, &f.name),
        FileKind::Config => whole(LocalKind::Config, ""),
        FileKind::Keys => {
            for (name, _) in be.list(LocalKind::Key).map_err(|e| e.to_string())? {
                let b = be.read(LocalKind::Key, &name).map_err(|e| e.to_string())?;
                if sha256_hex(&b) == f.name {
                    let start = (offset as usize).min(b.len());
                    return Ok(b[start..(start + len).min(b.len())].to_vec());
                }
            }
            Err(format!("key slot {} is gone", f.name))
        }
    }
}

/// Where a target's replication state lives: `STATE/replication/<target>/`.
pub fn state_dir(state: &Path, target: &str) -> PathBuf {
    state.join("replication").join(target)
}

fn load_requested(dir: &Path) -> HashSet<String> {
    std::fs::read(dir.join("requested.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_requested(dir: &Path, names: &HashSet<String>) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut v: Vec<&String> = names.iter().collect();
    v.sort();
    let b = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
    write_atomic(&dir.join("requested.json"), &b, 0o600).map_err(|e| e.to_string())
}

/// Brings one Levee store target up to date (see the module doc).
pub fn replicate_target(
    repo: &Repository,
    customer: &str,
    target: &OffsiteTarget,
    cred: &Credential,
    bucket: Arc<Bucket>,
    opts: &ReplicateOptions,
    state: &Path,
) -> TargetOutcome {
    let mut out = TargetOutcome {
        target: target.name.clone(),
        started_at: unix_now(),
        ..Default::default()
    };
    let local = match local_files(repo) {
        Ok(l) => l,
        Err(e) => {
            out.errors.push(format!("local repository: {e}"));
            out.ended_at = unix_now();
            return out;
        }
    };
    if let Err(e) = sync_target(
        repo, customer, target, cred, bucket, opts, state, &local, &mut out,
    ) {
        out.errors.push(e);
    }
    out.lag_secs = lag(repo, &local, &out);
    out.ended_at = unix_now();
    out
}

/// Seconds since the oldest local snapshot the target lacks (mtime of its
/// local file, when it was written); 0 when it has them all.
fn lag(repo: &Repository, local: &[LocalFile], out: &TargetOutcome) -> u64 {
    if out.ok() {
        return 0;
    }
    let now = std::time::SystemTime::now();
    local
        .iter()
        .filter(|f| f.kind == FileKind::Snapshots)
        .filter_map(|f| {
            std::fs::metadata(repo.local().path(LocalKind::Snapshot, &f.name))
                .and_then(|m| m.modified())
                .ok()
        })
        .filter_map(|t| now.duration_since(t).ok())
        .map(|d| d.as_secs())
        .max()
        .unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
fn sync_target(
    repo: &Repository,
    customer: &str,
    target: &OffsiteTarget,
    cred: &Credential,
    bucket: Arc<Bucket>,
    opts: &ReplicateOptions,
    state: &Path,
    local: &[LocalFile],
    out: &mut TargetOutcome,
) -> Result<(), String> {
    let ns = Namespace::new(customer, &repo.config.id).map_err(|e| e.to_string())?;
    let dir = state_dir(state, &target.name);
    let client: Box<dyn Target> = if target.is_s3() {
        let s3 = S3Target::new(target, ns, bucket, opts.timeout, &dir)
            .map_err(|e| e.to_string())?
            .with_whole_max(opts.whole_bytes);
        check_append_only(&s3, target, out);
        Box::new(s3)
    } else {
        open_target(target, ns, cred, bucket, opts.timeout, state)?
    };
    let client = client.as_ref();
    let mut remote = client.list_all().map_err(|e| format!("listing: {e}"))?;
    verify_share(client, local, &mut remote, opts.verify_share, &dir, out);
    let mut requested = load_requested(&dir);
    let remote_names: HashSet<&String> = remote.values().flat_map(|m| m.keys()).collect();
    requested.retain(|n| remote_names.contains(n));
    let mut p = plan::plan(local, &remote, &requested);
    let unfetched = hold_for_unfetched(repo, &remote, &mut p, out)?;
    out.files_present = p.present_files;
    out.bytes_present = p.present_bytes;
    tracing::info!(target = %target.name, missing = p.uploads.len(), present = p.present_files, "replication starting");
    let read = |f: &LocalFile, offset: u64, len: usize| read_local(repo, f, offset, len);
    // `levee customer apply` refuses other counts; clamped anyway, as a
    // count is threads and connections here.
    let streams = target.streams.map_or(opts.streams, |n| {
        n.clamp(1, levee_proto::config::MAX_STREAMS) as usize
    });
    parallel::upload_all(client, &p.uploads, streams, opts.part_bytes, &read, out);
    if !out.ok() || p.deletions.is_empty() {
        return Ok(());
    }
    if unfetched {
        // The local listing lacks the packs still offsite: it says nothing
        // about what the repository no longer has.
        tracing::info!(target = %target.name, "no deletion requests while packs of the taken-over repository are not all here");
        return Ok(());
    }
    for batch in p.deletions.chunks(levee_proto::offsite::MAX_DELETION_FILES) {
        let req = DeletionRequest {
            files: batch
                .iter()
                .map(|(kind, name)| DeletionItem {
                    kind: *kind,
                    name: name.clone(),
                })
                .collect(),
        };
        let taken = client
            .request_deletion(&req)
            .map_err(|e| format!("deletion request: {e}"))?;
        if !taken {
            tracing::info!(target = %target.name, files = p.deletions.len(), "files forgotten locally stay on this target: it takes no deletions from the appliance");
            return Ok(());
        }
        out.deletions_requested += batch.len() as u64;
        requested.extend(batch.iter().map(|(_, n)| n.clone()));
    }
    save_requested(&dir, &requested)
}

/// A repository taken over from an offsite copy whose packs are not all
/// here (`crate::backup::unfetched`): those packs are neither uploaded (not
/// here) nor asked to be deleted (see the caller); a target that lacks any
/// of them gets no snapshot yet (it would reference data it does not
/// hold), which the run's warnings say. Returns whether packs are missing.
fn hold_for_unfetched(
    repo: &Repository,
    remote: &Listing,
    p: &mut Plan,
    out: &mut TargetOutcome,
) -> Result<bool, String> {
    let e = |e: crate::RepoError| format!("local repository: {e}");
    if crate::backup::unfetched::Unfetched::load(repo.local().as_ref())
        .map_err(e)?
        .is_none()
    {
        return Ok(false);
    }
    let missing = crate::backup::unfetched::missing_packs(repo).map_err(e)?;
    let held = remote.get(&FileKind::Data);
    let lacking = missing
        .iter()
        .filter(|n| held.is_none_or(|m| !m.contains_key(*n)))
        .count();
    if lacking > 0 {
        let before = p.uploads.len();
        p.uploads.retain(|f| f.kind != FileKind::Snapshots);
        let held_back = before - p.uploads.len();
        if held_back > 0 {
            let w = format!(
                "{}: {held_back} snapshot(s) held back: {lacking} pack(s) of the taken-over repository are neither here nor on this target yet; they go once the back-fill brought them",
                out.target
            );
            tracing::warn!(target = %out.target, "{w}");
            out.warnings.push(w);
        }
    }
    Ok(!missing.is_empty())
}

/// A bucket that keeps no versions and has no Object Lock lets whoever
/// holds the appliance's keys destroy the copy: said in the run report and
/// the log at every run (append-only holds only with one of them).
fn check_append_only(s3: &S3Target, target: &OffsiteTarget, out: &mut TargetOutcome) {
    let warn = match s3.append_only() {
        Ok(AppendOnly::ObjectLock | AppendOnly::Versioning) => return,
        Ok(AppendOnly::No) => format!(
            "{}: NOT append-only: the bucket has neither versioning nor Object Lock, so anyone with these keys (a stolen appliance) can delete or overwrite the offsite copy; turn versioning or Object Lock on (docs/OFFSITE.md)",
            target.name
        ),
        Err(e) => format!(
            "{}: append-only not confirmed: asking for versioning and Object Lock failed: {e}",
            target.name
        ),
    };
    tracing::warn!(target = %target.name, "{warn}");
    out.warnings.push(warn);
}

/// Where verification stands on one target (`verify.json`): the next file
/// to read (the held files sorted by name), the fraction of a file owed
/// from earlier runs (small shares of a frequent schedule add up instead
/// of rounding to a file per run), and when the last run verified.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct VerifyState {
    cursor: usize,
    #[serde(default)]
    credit: f64,
    #[serde(default)]
    at: Option<i64>,
}

fn load_verify_state(dir: &Path) -> VerifyState {
    let Ok(bytes) = std::fs::read(dir.join("verify.json")) else {
        return VerifyState::default();
    };
    serde_json::from_slice(&bytes)
        // Before the credit and time were kept: the cursor alone.
        .or_else(|_| {
            serde_json::from_slice(&bytes).map(|cursor| VerifyState {
                cursor,
                ..Default::default()
            })
        })
        .unwrap_or_default()
}

/// The share of a target to read back in a run `elapsed_secs` after the
/// previous one, for `per_week` a week (one day's worth on a first run).
pub fn share_for_run(per_week: f64, elapsed_secs: Option<i64>) -> f64 {
    const WEEK: f64 = 7.0 * 86_400.0;
    let elapsed = elapsed_secs.unwrap_or(86_400).max(0) as f64;
    (per_week * elapsed / WEEK).clamp(0.0, 1.0)
}

/// The next batch of a rolling read-back over `len` items sorted by
/// name: `(start, n)`, the `n` items from `start` on (wrapping). The
/// fraction of an item a small share leaves over is kept in `credit`, so
/// many small shares add up to whole items.
pub(crate) fn rolling_batch(
    len: usize,
    share: f64,
    credit: &mut f64,
    cursor: usize,
) -> (usize, usize) {
    if len == 0 {
        return (0, 0);
    }
    let owed = len as f64 * share.clamp(0.0, 1.0) + credit.clamp(0.0, 1.0);
    // The epsilon: shares that add up to whole items on paper must not
    // lose one to rounding (28 daily sevenths of 25% of 10 = 9.999...).
    let n = ((owed + 1e-9).floor() as usize).min(len);
    *credit = if n == len { 0.0 } else { owed - n as f64 };
    (cursor % len, n)
}

/// Reads the next `share` of the files the target holds back from it and
/// checks each against its name; a corrupt one leaves `remote` (so the
/// plan uploads it again) and is named in the run's warnings.
fn verify_share(
    client: &dyn Target,
    local: &[LocalFile],
    remote: &mut BTreeMap<FileKind, BTreeMap<String, u64>>,
    share: f64,
    dir: &Path,
    out: &mut TargetOutcome,
) {
    let mut held: Vec<&LocalFile> = local
        .iter()
        .filter(|f| remote.get(&f.kind).is_some_and(|m| m.contains_key(&f.name)))
        .collect();
    let mut state = load_verify_state(dir);
    state.at = Some(unix_now());
    if held.is_empty() || share <= 0.0 {
        save_verify_state(dir, &state, out);
        return;
    }
    held.sort_by(|a, b| a.name.cmp(&b.name));
    let (start, n) = rolling_batch(held.len(), share, &mut state.credit, state.cursor);
    let mut done = 0;
    for i in 0..n {
        let f = held[(start + i) % held.len()];
        match client.verify(f.kind, &f.name) {
            Ok(true) => out.files_verified += 1,
            Ok(false) => {
                out.files_verified += 1;
                out.files_corrupt += 1;
                let what = format!(
                    "offsite file {}/{} was corrupt or missing on read-back: uploaded again",
                    f.kind.as_str(),
                    f.name
                );
                tracing::warn!(target = %out.target, "{what}");
                out.warnings.push(what);
                if let Some(m) = remote.get_mut(&f.kind) {
                    m.remove(&f.name);
                }
            }
            Err(e) => {
                tracing::warn!(target = %out.target, error = %e, "offsite verification stopped");
                break;
            }
        }
        done += 1;
    }
    state.cursor = (start + done) % held.len();
    save_verify_state(dir, &state, out);
}

fn save_verify_state(dir: &Path, state: &VerifyState, out: &TargetOutcome) {
    let saved = std::fs::create_dir_all(dir)
        .map_err(|e| e.to_string())
        .and_then(|()| serde_json::to_vec(state).map_err(|e| e.to_string()))
        .and_then(|b| write_atomic(&dir.join("verify.json"), &b, 0o600).map_err(|e| e.to_string()));
    if let Err(e) = saved {
        tracing::warn!(target = %out.target, error = %e, "verification state not saved");
    }
}

/// Replicates the repository in `STATE/repo` to every target of `config`
/// (the daemon's call after a backup and on retries); one outcome per
/// target. `Err` when nothing could start (no credential, no repository).
pub fn replicate_all(
    state: &Path,
    config: &CustomerConfig,
    repo_key: &[u8],
    opts: &ReplicateOptions,
) -> Result<Vec<TargetOutcome>, String> {
    if config.offsite.is_empty() {
        return Ok(Vec::new());
    }
    let cred = Credential::load(state)
        .map_err(|e| e.to_string())?
        .ok_or("not enrolled: no credential")?;
    let repo = Repository::open(&state.join("repo"), repo_key).map_err(|e| e.to_string())?;
    let rate = config
        .bandwidth_limit
        .as_deref()
        .and_then(levee_proto::config::parse_rate);
    let bucket = Arc::new(Bucket::new(rate));
    Ok(config
        .offsite
        .iter()
        .map(|t| {
            // What this target owes of its weekly read-back since its last run.
            let last = load_verify_state(&state_dir(state, &t.name)).at;
            let per_week = t
                .verify_share_per_week()
                .unwrap_or(levee_proto::config::DEFAULT_VERIFY_PER_WEEK);
            let opts = ReplicateOptions {
                verify_share: share_for_run(per_week, last.map(|at| unix_now() - at)),
                ..opts.clone()
            };
            replicate_target(
                &repo,
                &config.customer,
                t,
                &cred,
                bucket.clone(),
                &opts,
                state,
            )
        })
        .collect())
}

/// The client of one target for the namespace `ns`.
pub fn open_target(
    target: &OffsiteTarget,
    ns: Namespace,
    cred: &Credential,
    bucket: Arc<Bucket>,
    timeout: Duration,
    state: &Path,
) -> Result<Box<dyn Target>, String> {
    if target.is_s3() {
        let dir = state_dir(state, &target.name);
        return Ok(Box::new(
            S3Target::new(target, ns, bucket, timeout, &dir).map_err(|e| e.to_string())?,
        ));
    }
    Ok(Box::new(
        StoreClient::new(&target.endpoints(), cred, ns, bucket, timeout)
            .map_err(|e| e.to_string())?,
    ))
}

/// Repairs damaged local packs of the repository in `repo_dir` (id
/// `repo_id`) from the offsite targets of `config`, in their order: each
/// pack from the first target whose copy matches its name. What no target
/// could give stays in `failed`, with every target's reason.
pub fn repair_from_offsite(
    state: &Path,
    config: &CustomerConfig,
    repo_dir: &Path,
    repo_id: &str,
    packs: &[String],
) -> Result<fetch::Repaired, String> {
    let cred = Credential::load(state)
        .map_err(|e| e.to_string())?
        .ok_or("not enrolled: no credential to reach the offsite targets")?;
    let mut left: Vec<String> = packs.to_vec();
    let mut out = fetch::Repaired::default();
    let mut why: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in &config.offsite {
        if left.is_empty() {
            break;
        }
        let ns = Namespace::new(&config.customer, repo_id).map_err(|e| e.to_string())?;
        let target = match open_target(
            t,
            ns,
            &cred,
            Arc::new(Bucket::new(None)),
            Duration::from_secs(600),
            state,
        ) {
            Ok(c) => c,
            Err(e) => {
                for p in &left {
                    why.entry(p.clone())
                        .or_default()
                        .push(format!("{}: {e}", t.name));
                }
                continue;
            }
        };
        let r = fetch::repair_packs(target.as_ref(), repo_dir, &left);
        out.packs.extend(r.packs);
        left = r
            .failed
            .into_iter()
            .map(|(p, e)| {
                why.entry(p.clone())
                    .or_default()
                    .push(format!("{}: {e}", t.name));
                p
            })
            .collect();
    }
    out.failed = left
        .into_iter()
        .map(|p| {
            let reasons = why.remove(&p).unwrap_or_default().join("; ");
            let reasons = if reasons.is_empty() {
                "no offsite target is configured".to_string()
            } else {
                reasons
            };
            (p, reasons)
        })
        .collect();
    Ok(out)
}

/// Names of everything a listing holds, for tests and verification.
pub fn names(listing: &BTreeMap<FileKind, BTreeMap<String, u64>>) -> HashSet<String> {
    listing.values().flat_map(|m| m.keys().cloned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A target that holds every file and counts read-backs; `corrupt`
    /// names fail.
    struct Counting {
        read: Mutex<Vec<String>>,
        corrupt: HashSet<String>,
    }

    impl Target for Counting {
        fn list_all(&self) -> Result<target::Listing, StoreError> {
            Ok(BTreeMap::new())
        }
        fn upload(
            &self,
            _: FileKind,
            _: &str,
            _: u64,
            _: u64,
            _: target::ReadAt<'_>,
        ) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn verify(&self, _: FileKind, name: &str) -> Result<bool, StoreError> {
            self.read.lock().expect("lock").push(name.to_string());
            Ok(!self.corrupt.contains(name))
        }
        fn download(&self, _: FileKind, _: &str) -> Result<Vec<u8>, StoreError> {
            Ok(Vec::new())
        }
        fn request_deletion(&self, _: &DeletionRequest) -> Result<bool, StoreError> {
            Ok(false)
        }
        fn total_sent(&self) -> u64 {
            0
        }
    }

    fn files(n: usize) -> (Vec<LocalFile>, BTreeMap<FileKind, BTreeMap<String, u64>>) {
        let local: Vec<LocalFile> = (0..n)
            .map(|i| LocalFile {
                kind: FileKind::Data,
                name: format!("{i:064x}"),
                size: 1,
            })
            .collect();
        let mut remote = BTreeMap::new();
        remote.insert(
            FileKind::Data,
            local.iter().map(|f| (f.name.clone(), 1)).collect(),
        );
        (local, remote)
    }

    #[test]
    fn the_weekly_share_is_spread_over_the_runs_and_every_file_comes_round() {
        assert_eq!(share_for_run(0.1, Some(7 * 86_400)), 0.1);
        assert!((share_for_run(0.1, None) - 0.1 / 7.0).abs() < 1e-12);
        assert_eq!(share_for_run(0.5, Some(30 * 86_400)), 1.0);
        assert_eq!(share_for_run(0.1, Some(-5)), 0.0);

        // 100 files, 10% a week, a run every 5 minutes: 10 files a week,
        // not one per run (2,016 runs a week), and all of them in turn.
        // The batching alone (no state file: 20,160 fsyncs took minutes on
        // a busy disk)...
        let per_run = share_for_run(0.1, Some(300));
        let (mut cursor, mut credit, mut total) = (0, 0.0, 0);
        for _ in 0..(10 * 2016) {
            let (start, n) = rolling_batch(100, per_run, &mut credit, cursor);
            cursor = (start + n) % 100;
            total += n;
        }
        assert!((99..=101).contains(&total), "{total} read in ten weeks");
        // ...and through verify_share and its state file, a run every 6 h.
        let dir = tempfile::tempdir().expect("dir");
        let (local, mut remote) = files(100);
        let t = Counting {
            read: Mutex::new(Vec::new()),
            corrupt: HashSet::new(),
        };
        let mut out = TargetOutcome::default();
        let per_run = share_for_run(0.1, Some(6 * 3600));
        for _ in 0..(10 * 28) {
            verify_share(&t, &local, &mut remote, per_run, dir.path(), &mut out);
        }
        let read = t.read.lock().expect("lock");
        assert!(
            (99..=101).contains(&read.len()),
            "{} read in ten weeks",
            read.len()
        );
        let distinct: HashSet<&String> = read.iter().collect();
        assert!(distinct.len() >= 99, "{} distinct", distinct.len());
        assert!(out.warnings.is_empty());
    }

    #[test]
    fn a_corrupt_file_is_named_and_leaves_the_listing() {
        let dir = tempfile::tempdir().expect("dir");
        let (local, mut remote) = files(4);
        let bad = local[2].name.clone();
        let t = Counting {
            read: Mutex::new(Vec::new()),
            corrupt: [bad.clone()].into(),
        };
        let mut out = TargetOutcome::default();
        verify_share(&t, &local, &mut remote, 1.0, dir.path(), &mut out);
        assert_eq!((out.files_verified, out.files_corrupt), (4, 1));
        assert!(!remote[&FileKind::Data].contains_key(&bad));
        assert!(out.warnings[0].contains(&bad), "{:?}", out.warnings);
        assert_eq!(out.report().result, RunResult::Warning);
        // An old cursor-only state file still reads.
        std::fs::write(dir.path().join("verify.json"), b"3").expect("write");
        assert_eq!(load_verify_state(dir.path()).cursor, 3);
    }
}
