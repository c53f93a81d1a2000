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

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use super::backend::{BackendError, FileKind, ReadBackend, WriteBackend};
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
    let here: HashSet<String> = repo
        .local()
        .list(FileKind::Pack)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut out = BTreeSet::new();
    for (name, _) in repo.local().list(FileKind::Index)? {
        let bytes = repo.be.load(FileKind::Index, &name)?;
        let f = levee_proto::repo::IndexFile::parse(&bytes)
            .map_err(|e| RepoError::BadPack(name.clone(), e.to_string()))?;
        for p in f.packs {
            let hex = p.id.to_hex();
            if !here.contains(&hex) {
                out.insert(hex);
            }
        }
    }
    Ok(out)
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
