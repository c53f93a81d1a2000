//! Re-indexing packs that no index file names: what an interrupted backup
//! leaves behind. Reading their headers lets the next backup reuse every
//! pack the interrupted one finished.

use std::collections::HashSet;

use levee_proto::repo::{IndexFile, IndexPack, PackId};

use crate::backup::backend::{FileKind, ReadBackend};
use crate::backup::index::MasterIndex;
use crate::backup::repository::{RepoError, Repository};

/// Packs listed in prune's pending-deletion state: never recovered, so a
/// pack on its way out cannot be pulled back into use behind prune's back.
pub fn pending_packs(repo: &Repository) -> HashSet<String> {
    crate::backup::commands::prune::PruneState::load(repo)
        .map(|s| s.packs.into_keys().collect())
        .unwrap_or_default()
}

/// Indexes unindexed packs (except pending ones); returns how many and the
/// packs whose headers could not be read.
pub fn recover_unindexed(
    repo: &Repository,
    index: &mut MasterIndex,
) -> Result<(usize, Vec<(String, String)>), RepoError> {
    let pending = pending_packs(repo);
    let mut found = Vec::new();
    let mut bad = Vec::new();
    for (name, size) in repo.be.list(FileKind::Pack)? {
        let Ok(id) = name.parse::<PackId>() else {
            continue;
        };
        if index.has_pack(&id) || pending.contains(&name) {
            continue;
        }
        match repo.read_pack_header(&name, size) {
            Ok(h) => found.push(IndexPack { id, blobs: h.blobs }),
            Err(e) => bad.push((name, e.to_string())),
        }
    }
    let n = found.len();
    if n > 0 {
        let f = IndexFile { packs: found };
        // Durable before anything may dedup against these packs.
        repo.be.save(FileKind::Index, &f.to_bytes())?;
        index.add_file(&f);
        index.finish();
        tracing::info!(packs = n, "re-indexed packs left by an interrupted run");
    }
    Ok((n, bad))
}
