//! Disaster recovery: a repository brought back from an offsite target
//! into a local directory, which the customer's paper key then opens
//! (`Repository::open_with_recovery`). Every file is checked against its
//! name (its SHA-256) before it is written, so a store cannot slip in a
//! file of its own; packs, index and key slots go first and the config
//! last, so an interrupted fetch leaves no directory that looks like a
//! complete repository, and a second fetch skips what the first wrote.
//! A take-over ([`fetch_metadata`]) copies everything but the packs.

use std::path::Path;

use levee_proto::offsite::FileKind;

use super::target::Target;
use crate::backup::backend::local::LocalBackend;
use crate::backup::backend::{FileKind as LocalKind, WriteBackend};

/// What [`fetch_repository`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub files: u64,
    pub bytes: u64,
    /// Files already there from an earlier, interrupted fetch.
    pub skipped: u64,
    /// [`fetch_metadata`]: the packs (count, bytes) the target holds and
    /// that were left for later.
    pub packs_left: (u64, u64),
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the target: {0}")]
    Target(#[from] super::StoreError),
    #[error(
        "{kind} {name} from the target does not hash to its name: the copy is damaged or not ours"
    )]
    Mismatch { kind: &'static str, name: String },
    #[error("the target holds {0} repository configs for this namespace; expected one")]
    Config(usize),
    #[error("{0}")]
    Local(String),
}

fn local_kind(kind: FileKind) -> LocalKind {
    match kind {
        FileKind::Config => LocalKind::Config,
        FileKind::Keys => LocalKind::Key,
        FileKind::Data => LocalKind::Pack,
        FileKind::Index => LocalKind::Index,
        FileKind::Snapshots => LocalKind::Snapshot,
    }
}

/// Copies every file `target` holds of the repository into `dest`.
pub fn fetch_repository(target: &dyn Target, dest: &Path) -> Result<Fetched, FetchError> {
    fetch_files(target, dest, true)
}

/// Copies all but the packs (key slots, index, snapshots, then the config):
/// what a take-over needs to open the repository, list and find every
/// snapshot and blob, and deduplicate new backups against the old data.
/// The packs come later, on demand and by the back-fill
/// ([`super::ondemand`]).
pub fn fetch_metadata(target: &dyn Target, dest: &Path) -> Result<Fetched, FetchError> {
    fetch_files(target, dest, false)
}

fn fetch_files(target: &dyn Target, dest: &Path, packs: bool) -> Result<Fetched, FetchError> {
    let listing = target.list_all()?;
    let configs = listing.get(&FileKind::Config).map_or(0, |m| m.len());
    if configs != 1 {
        return Err(FetchError::Config(configs));
    }
    let local_err =
        |e: &dyn std::fmt::Display| FetchError::Local(format!("{}: {e}", dest.display()));
    std::fs::create_dir_all(dest).map_err(|e| local_err(&e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(crate::backup::backend::local::DIR_MODE);
        std::fs::set_permissions(dest, private).map_err(|e| local_err(&e))?;
    }
    let local = LocalBackend::new(dest);
    local.create_layout().map_err(|e| local_err(&e))?;
    let mut out = Fetched::default();
    let wanted = |kind: &FileKind| packs || *kind != FileKind::Data;
    // Progress for the journal: a line per 64 MiB (and per kind of file).
    let total: u64 = listing
        .iter()
        .filter(|(k, _)| wanted(k))
        .flat_map(|(_, m)| m.values())
        .sum();
    out.packs_left = listing
        .get(&FileKind::Data)
        .filter(|_| !packs)
        .map_or((0, 0), |m| (m.len() as u64, m.values().sum()));
    let mut done = 0u64;
    let mut logged = 0u64;
    for kind in [
        FileKind::Data,
        FileKind::Index,
        FileKind::Keys,
        FileKind::Snapshots,
        FileKind::Config,
    ] {
        if !wanted(&kind) {
            continue;
        }
        for (name, size) in listing.get(&kind).into_iter().flatten() {
            let lk = local_kind(kind);
            let local_name = if kind == FileKind::Config { "" } else { name };
            let path = local.path(lk, local_name);
            if kind != FileKind::Config && std::fs::metadata(&path).is_ok_and(|m| m.len() == *size)
            {
                out.skipped += 1;
                continue;
            }
            let bytes = target.download(kind, name)?;
            if levee_proto::repo::crypto::file_id(&bytes).to_hex() != *name {
                return Err(FetchError::Mismatch {
                    kind: kind.as_str(),
                    name: name.clone(),
                });
            }
            local
                .write(lk, local_name, &bytes)
                .map_err(|e| FetchError::Local(e.to_string()))?;
            out.files += 1;
            out.bytes += bytes.len() as u64;
            done += bytes.len() as u64;
            if done - logged >= 64 << 20 {
                logged = done;
                tracing::info!(
                    "fetching {}: {} of {} MiB",
                    dest.display(),
                    done >> 20,
                    total >> 20
                );
            }
        }
        if listing.get(&kind).is_some_and(|m| !m.is_empty()) {
            tracing::info!(
                "fetching {}: {} done ({} of {total} bytes fetched, {} file(s) already here)",
                dest.display(),
                kind.as_str(),
                done,
                out.skipped
            );
        }
    }
    Ok(out)
}

/// What [`repair_packs`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// Packs replaced by the target's copy.
    pub packs: Vec<String>,
    /// Packs the target could not give (absent, damaged there too, or
    /// unreachable), with why.
    pub failed: Vec<(String, String)>,
}

/// Replaces each local pack in `packs` (damaged ones, as `check
/// --read-data` found them) with the target's copy, if that copy hashes to
/// the pack's name. The local file is replaced atomically (written aside,
/// renamed over it); a copy that does not match leaves it as it was.
pub fn repair_packs(target: &dyn Target, repo_dir: &Path, packs: &[String]) -> Repaired {
    let local = LocalBackend::new(repo_dir);
    let mut out = Repaired::default();
    for name in packs {
        let got = target
            .download(FileKind::Data, name)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                if levee_proto::repo::crypto::file_id(&bytes).to_hex() != *name {
                    return Err("the offsite copy does not hash to its name either".into());
                }
                local
                    .write(LocalKind::Pack, name, &bytes)
                    .map_err(|e| e.to_string())
            });
        match got {
            Ok(()) => {
                tracing::info!(pack = %name, "damaged local pack repaired from its offsite copy");
                out.packs.push(name.clone());
            }
            Err(why) => out.failed.push((name.clone(), why)),
        }
    }
    out
}
