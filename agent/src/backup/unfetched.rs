//! A repository taken over from an offsite copy opens before its packs
//! arrive (`docs/OFFSITE.md`, "Disaster recovery"): `unfetched.json` in the
//! repository says which offsite targets hold the packs that are not here
//! yet. While it exists, a read of a missing pack fetches it (when the
//! opener attached a [`super::backend::PackSource`]), the back-fill brings
//! the rest, and nothing may conclude from the local listing that a pack
//! is gone: prune and repair refuse, replication asks no target to delete
//! anything, and check reports such packs as not yet fetched. The back-fill
//! removes the file once every pack the index names is here.
//!
//! Which packs are missing is never recorded: it is what the index names
//! minus what the directory holds, so a restart (or a crash mid-fetch)
//! resumes from the listing, and a pack fetched by a restore counts at once.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use levee_proto::repo::{BlobEntry, BlobKind};

use serde::{Deserialize, Serialize};

use super::backend::local::LocalBackend;
use super::backend::{BackendError, FileKind, PackSource, ReadBackend, WriteBackend};
use super::repository::{RepoError, Repository};

/// The contents of `unfetched.json` (plaintext JSON: names of targets and
/// the namespace, nothing secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unfetched {
    pub version: u32,
    /// The namespace on the targets: `<customer>/<repository id>`.
    pub customer: String,
    pub repository: String,
    /// The configuration's offsite targets (by name) that hold the packs,
    /// in the order to try them.
    pub targets: Vec<String>,
    /// When the take-over opened the repository, Unix seconds.
    pub since: i64,
}

impl Unfetched {
    /// The marker of the repository whose local backend is `be`, if any.
    pub fn load(be: &impl ReadBackend) -> Result<Option<Unfetched>, RepoError> {
        match be.read(FileKind::Unfetched, "") {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                RepoError::Config(format!("{}: {e}", super::backend::local::UNFETCHED_FILE))
            }),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Written durably (temporary name, fsync, rename, directory fsync).
    pub fn save(&self, be: &impl WriteBackend) -> Result<(), BackendError> {
        let b = serde_json::to_vec_pretty(self).map_err(|e| BackendError::Invalid {
            kind: FileKind::Unfetched,
            name: String::new(),
            what: e.to_string(),
        })?;
        be.write(FileKind::Unfetched, "", &b)
    }

    pub fn remove(be: &impl WriteBackend) -> Result<(), BackendError> {
        match be.remove(FileKind::Unfetched, "") {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    }

    /// The targets, for messages: `hq` or `hq, cold`.
    pub fn target_names(&self) -> String {
        self.targets.join(", ")
    }
}

/// Packs some index file names that the directory does not hold.
pub fn missing_packs(repo: &Repository) -> Result<BTreeSet<String>, RepoError> {
    Ok(missing_entries(repo)?.into_keys().collect())
}

/// The missing packs with their index entries (one pack may be named by
/// several index files: the first one's entries are kept).
fn missing_entries(repo: &Repository) -> Result<BTreeMap<String, Vec<BlobEntry>>, RepoError> {
    let here: HashSet<String> = repo
        .local()
        .list(FileKind::Pack)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut out = BTreeMap::new();
    for (name, _) in repo.local().list(FileKind::Index)? {
        let bytes = repo.be.load(FileKind::Index, &name)?;
        let f = levee_proto::repo::IndexFile::parse(&bytes)
            .map_err(|e| RepoError::BadPack(name.clone(), e.to_string()))?;
        for p in f.packs {
            let hex = p.id.to_hex();
            if !here.contains(&hex) {
                out.entry(hex).or_insert(p.blobs);
            }
        }
    }
    Ok(out)
}

/// A mixed repository's tree-holding packs are fetched for a backup's
/// parent only while they are at most this share (1/N) of the missing
/// bytes. See [`trees_for_backup`].
const MIXED_SHARE: u64 = 10;

/// Which missing packs a backup may fetch to use its parent's trees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeFetch {
    /// Packs it may fetch (on demand: only those its parent's trees are
    /// actually read from are downloaded).
    pub allowed: HashSet<String>,
    /// Tree-only packs among them.
    pub tree_packs: usize,
    /// Mixed packs (trees and data: repositories written before trees had
    /// packs of their own) that hold trees, and their bytes.
    pub mixed_packs: usize,
    pub mixed_bytes: u64,
    /// Every missing pack's bytes (estimated from the index: the end of
    /// its last blob).
    pub missing_bytes: u64,
    /// The mixed packs are left to the back-fill (their share is too large).
    pub mixed_refused: bool,
}

/// The packs a backup of a taken-over repository may fetch on demand for
/// its parent snapshot's trees.
///
/// Tree packs (repositories written since trees were packed apart) are
/// small and always allowed. In a mixed repository trees sit next to data
/// in almost every pack a run wrote, so "the packs holding trees" is
/// usually nearly the whole repository: fetching them at full speed before
/// the backup can compare anything would be the back-fill itself,
/// unpaced, on the customer's uplink, and would delay the first backup
/// after a disaster by the whole download. Reading the source files again
/// is local (or on the customer's LAN) and bounded by the share's size,
/// so that is the fallback: the mixed packs are allowed only when all of
/// them together are at most 1/[`MIXED_SHARE`] of the missing bytes (a
/// repository whose trees happen to sit in a few packs), else the backup
/// reads every file as before and the back-fill brings those packs.
pub fn trees_for_backup(repo: &Repository) -> Result<TreeFetch, RepoError> {
    let mut out = TreeFetch::default();
    let mut mixed = Vec::new();
    for (name, blobs) in missing_entries(repo)? {
        let size = blobs
            .iter()
            .map(|b| u64::from(b.offset) + u64::from(b.length))
            .max()
            .unwrap_or(0);
        out.missing_bytes += size;
        let trees = blobs.iter().filter(|b| b.kind == BlobKind::Tree).count();
        if trees == 0 {
            continue;
        }
        if trees == blobs.len() {
            out.tree_packs += 1;
            out.allowed.insert(name);
        } else {
            out.mixed_packs += 1;
            out.mixed_bytes += size;
            mixed.push(name);
        }
    }
    if out.mixed_bytes.saturating_mul(MIXED_SHARE) <= out.missing_bytes {
        out.allowed.extend(mixed);
    } else {
        out.mixed_refused = true;
    }
    Ok(out)
}

/// A pack source that passes on only the packs in `allowed`: a backup
/// fetches its parent's trees, never data (the back-fill brings that).
pub struct OnlyPacks {
    pub inner: Arc<dyn PackSource>,
    pub allowed: HashSet<String>,
}

impl PackSource for OnlyPacks {
    fn fetch(&self, name: &str) -> Result<Vec<u8>, String> {
        if self.allowed.contains(name) {
            self.inner.fetch(name)
        } else {
            Err("a backup fetches only the packs of its parent's trees; the back-fill brings this one".into())
        }
    }
}

/// While it lives, the repository's pack source is restricted to
/// [`trees_for_backup`]; dropping it restores the source as it was.
pub struct TreesOnly {
    be: Arc<LocalBackend>,
    prev: Option<Arc<dyn PackSource>>,
}

impl Drop for TreesOnly {
    fn drop(&mut self) {
        self.be.set_pack_source(self.prev.take());
    }
}

/// For a backup of a taken-over repository with a pack source attached:
/// restricts the source to the packs of trees ([`trees_for_backup`]).
/// `None`: not taken over, or nothing to fetch from (the backup then
/// reads the files whose parent trees are not here, as before).
pub fn restrict_to_trees(repo: &Repository) -> Result<Option<(TreesOnly, TreeFetch)>, RepoError> {
    let be = repo.local().clone();
    let Some(prev) = be.pack_source() else {
        return Ok(None);
    };
    if Unfetched::load(be.as_ref())?.is_none() {
        return Ok(None);
    }
    let fetch = trees_for_backup(repo)?;
    be.set_pack_source(Some(Arc::new(OnlyPacks {
        inner: prev.clone(),
        allowed: fetch.allowed.clone(),
    })));
    Ok(Some((
        TreesOnly {
            be,
            prev: Some(prev),
        },
        fetch,
    )))
}

/// The error of a command that must not act on a partial listing.
pub fn refuse(repo: &Repository, what: &str) -> Result<(), RepoError> {
    let Some(u) = Unfetched::load(repo.local().as_ref())? else {
        return Ok(());
    };
    let n = missing_packs(repo)?.len();
    Err(RepoError::Busy(format!(
        "{what} waits until the back-fill ends: this repository was taken over from an offsite \
         copy and {n} pack(s) are not yet fetched from {} (its listing would count them as \
         gone); nothing was changed",
        u.target_names()
    )))
}
