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
pub mod plan;
pub mod s3;
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
pub use fetch::{fetch_repository, repair_packs, FetchError, Fetched, Repaired};
pub use plan::{LocalFile, Plan};
pub use s3::{AppendOnly, S3Target};
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
    /// Longest single request.
    pub timeout: Duration,
    /// Share of the files a target holds that each run has the store read
    /// back and check against their names (rotating, so every file comes
    /// round); a corrupt one is uploaded again.
    pub verify_share: f64,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        ReplicateOptions {
            part_bytes: 8 << 20,
            timeout: Duration::from_secs(600),
            // With a backup a day: every file read back about every 3 weeks.
            verify_share: 0.05,
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
        r.result = if self.ok() {
            RunResult::Success
        } else {
            RunResult::Failed
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
        let s3 =
            S3Target::new(target, ns, bucket, opts.timeout, &dir).map_err(|e| e.to_string())?;
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
    let p = plan::plan(local, &remote, &requested);
    out.files_present = p.present_files;
    out.bytes_present = p.present_bytes;
    tracing::info!(target = %target.name, missing = p.uploads.len(), present = p.present_files, "replication starting");
    let mut data_complete = true;
    for f in &p.uploads {
        if f.kind == FileKind::Snapshots && !data_complete {
            out.errors.push(format!(
                "snapshot {} held back: some of its data did not reach the target",
                f.name
            ));
            continue;
        }
        let read = |offset: u64, len: usize| read_local(repo, f, offset, len);
        let result = client.upload(f.kind, &f.name, f.size, opts.part_bytes, &read);
        out.bytes_uploaded = client.total_sent();
        match result {
            Ok(_) => {
                out.files_uploaded += 1;
                out.files_present += 1;
                out.bytes_present += f.size;
            }
            Err(e) => {
                if f.kind != FileKind::Snapshots {
                    data_complete = false;
                }
                out.errors
                    .push(format!("{} {}: {e}", f.kind.as_str(), f.name));
                if matches!(e, StoreError::Transport { .. }) {
                    // Every endpoint failed: the target is down; the retry
                    // schedule catches it up.
                    return Ok(());
                }
                if matches!(e, StoreError::Refused { status: 413, .. }) {
                    // The customer's quota is reached: nothing more fits
                    // until ops raise it or a prune frees room.
                    return Ok(());
                }
            }
        }
    }
    if !out.ok() || p.deletions.is_empty() {
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

/// Has the store check the next share of the files it holds (a cursor in
/// `verify.json` rotates through them); corrupt ones leave `remote`, so
/// the plan uploads them again.
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
    if held.is_empty() || share <= 0.0 {
        return;
    }
    held.sort_by(|a, b| a.name.cmp(&b.name));
    let path = dir.join("verify.json");
    let start: usize = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(0);
    let n = ((held.len() as f64 * share.min(1.0)).ceil() as usize).clamp(1, held.len());
    for i in 0..n {
        let f = held[(start + i) % held.len()];
        match client.verify(f.kind, &f.name) {
            Ok(true) => out.files_verified += 1,
            Ok(false) => {
                out.files_verified += 1;
                out.files_corrupt += 1;
                tracing::warn!(target = %out.target, kind = f.kind.as_str(), file = %f.name, "offsite file corrupt: uploading it again");
                if let Some(m) = remote.get_mut(&f.kind) {
                    m.remove(&f.name);
                }
            }
            Err(e) => {
                tracing::warn!(target = %out.target, error = %e, "offsite verification stopped");
                break;
            }
        }
    }
    let next = (start + n) % held.len();
    let saved = std::fs::create_dir_all(dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            write_atomic(&path, next.to_string().as_bytes(), 0o600).map_err(|e| e.to_string())
        });
    if let Err(e) = saved {
        tracing::warn!(target = %out.target, error = %e, "verification cursor not saved");
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
            replicate_target(
                &repo,
                &config.customer,
                t,
                &cred,
                bucket.clone(),
                opts,
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
