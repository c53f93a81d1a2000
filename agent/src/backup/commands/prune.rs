//! `prune`: reclaim space from blobs no snapshot uses, safely while backups
//! run (a time fence, as in Kopia and Proxmox Backup Server).
//!
//! A pack is deleted in two steps (in one run only when no backup could
//! rely on it: a repacked pack, or one only forgotten snapshots used):
//! 1. *Mark*: it holds no used blob, so it is written to `prune-state.json`
//!    and then dropped from the index (partly used packs are first copied:
//!    their used blobs go to new packs). Once no index file names it, its
//!    `unindexed_since` time T is recorded.
//! 2. *Sweep* (a later prune): it is deleted only if every backup alive now
//!    started after T (so none loaded an index naming it; backups never
//!    re-index packs listed in the state file), no index names it again, and
//!    no snapshot uses any of its blobs. Otherwise it is kept (re-indexed if a
//!    snapshot uses it). Marked packs' headers are read for loading trees,
//!    since a backup that finishes after the mark may use them.
//!
//! Locks are listed before snapshots are read, so a backup that finishes
//! meanwhile has its snapshot seen, and snapshots before index files, so
//! every snapshot seen has its index seen too. Every step writes new files before it
//! removes old ones; a prune killed at any point leaves a valid repository.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use levee_proto::repo::{BlobEntry, BlobId, IndexFile, IndexPack, PackId};
use serde::{Deserialize, Serialize};

use crate::backup::backend::local::clean_tmp;
use crate::backup::backend::{FileKind, ReadBackend, WriteBackend};
use crate::backup::blob::{BlobMeta, EncodedBlob};
use crate::backup::lock::{list_locks, Lock};
use crate::backup::packer::Packer;
use crate::backup::progress::Counters;
use crate::backup::repository::{RepoError, Repository};
use crate::util::now_ns;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct PruneOptions {
    /// Repack a partly used pack when more than this percent of it is unused.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 25))]
    #[serde(default)]
    pub max_unused_percent: u8,
    /// After `key rotate`: re-encrypt under the current key every tree and
    /// blob a retired key wrote, and repack every pack with unused bytes,
    /// so the old packs leave through the fence. Once a run finds nothing
    /// left under the old key (usually the second), it drops the retired
    /// keys from the config.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default)]
    pub rewrite: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("another prune is running (pid {0} on {1}, process {2}); if it is not, `levee-agent unlock` removes its lock once it is stale")]
    Busy(u32, String, String),
    #[error("refusing to prune: {0}")]
    Unsafe(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PendingPack {
    pub marked_ns: i64,
    #[serde(default)]
    pub unindexed_since_ns: Option<i64>,
}

/// `prune-state.json`: packs on their way out.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PruneState {
    pub packs: BTreeMap<String, PendingPack>,
    /// Indexed packs that must be repacked whatever their unused share:
    /// `repair --read-data` left a damaged blob of theirs out of the index,
    /// so the index alone does not show the dead bytes.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub repack: BTreeSet<String>,
    /// Snapshots `prune --rewrite` found entirely under the current key,
    /// so the next run does not read them again.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub rewritten: BTreeSet<String>,
    /// Root trees (hex) of snapshots `forget` removed since the last prune.
    /// A wholly unused pack whose every blob belonged to them is no running
    /// backup's, so it goes in this run like a repacked pack (see
    /// [`released_blobs`]). Only a hint: lost, the pack waits for the fence.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub forgotten: BTreeSet<String>,
}

impl PruneState {
    pub fn load(repo: &Repository) -> Result<Self, RepoError> {
        match repo.local().read(FileKind::PruneState, "") {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| RepoError::Config(format!("prune-state.json: {e}"))),
            Err(e) if e.is_not_found() => Ok(Self::default()),
            Err(e) => Err(e.into()),
        }
    }
    pub(crate) fn save(&self, repo: &Repository) -> Result<(), RepoError> {
        let b = serde_json::to_vec_pretty(self).map_err(|e| RepoError::Config(e.to_string()))?;
        Ok(repo.local().write(FileKind::PruneState, "", &b)?)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub used_blobs: usize,
    pub packs_deleted: usize,
    pub bytes_freed: u64,
    pub packs_marked: usize,
    pub packs_repacked: usize,
    pub packs_reindexed: usize,
    pub packs_pending: usize,
    pub waiting_for_backups: usize,
    /// `--rewrite` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<crate::backup::commands::rotate::RewriteReport>,
}

pub fn prune(
    repo: &Repository,
    opts: &PruneOptions,
    counters: &Counters,
) -> Result<PruneReport, PruneError> {
    // Its listing lacks the packs still offsite: they would count as gone.
    crate::backup::unfetched::refuse(repo, "prune")?;
    let now = now_ns();
    let lock = Lock::acquire(repo.local().clone(), repo.key(), "prune").map_err(RepoError::from)?;
    // Locks first, then snapshots: see the module comment.
    let (locks, _) = list_locks(repo.local(), repo.key()).map_err(RepoError::from)?;
    let mut backups_start = Vec::new();
    for (name, l) in &locks {
        if name == lock.name() || !l.is_alive(now) {
            continue;
        }
        match l.kind.as_str() {
            "prune" => {
                return Err(PruneError::Busy(
                    l.pid,
                    l.hostname.clone(),
                    l.process_id.clone(),
                ))
            }
            _ => backups_start.push(l.start_ns),
        }
    }
    counters.set_phase("loading");
    let mut state = PruneState::load(repo)?;
    let mut rep = PruneReport::default();
    if opts.rewrite {
        counters.set_phase("rewrite");
        let mut rw = crate::backup::commands::rotate::RewriteReport::default();
        crate::backup::commands::rotate::rewrite(repo, &mut state.rewritten, &mut rw)?;
        state.save(repo)?;
        rep.rewrite = Some(rw);
    }
    // A rewrite repacks every pack with a dead blob: blobs a retired key
    // wrote are dead now, and must leave before the key can go.
    let max_unused_percent = if opts.rewrite {
        0
    } else {
        opts.max_unused_percent
    };

    // Snapshots before index files: a backup writes its index before its
    // snapshot, so every snapshot read here has its blobs in an index file
    // listed below, even when the backup finishes in between.
    let (snaps, bad) = repo.snapshots()?;
    if let Some((name, e)) = bad.first() {
        return Err(PruneError::Unsafe(format!(
            "snapshot {name} is unreadable ({e}); run `check`, then `forget` it"
        )));
    }

    // Index files, kept whole: we rewrite them.
    let mut files: Vec<(String, IndexFile)> = Vec::new();
    for (name, _) in repo.be.list(FileKind::Index).map_err(RepoError::from)? {
        match repo
            .be
            .load(FileKind::Index, &name)
            .map_err(RepoError::from)
            .and_then(|b| {
                IndexFile::parse(&b).map_err(|e| RepoError::BadPack(name.clone(), e.to_string()))
            }) {
            Ok(f) => files.push((name, f)),
            // Its packs look unindexed below and are re-indexed if used.
            Err(e) => tracing::warn!(index = %name, "unreadable index file left alone: {e}"),
        }
    }
    let mut index = crate::backup::index::MasterIndex::new();
    let mut by_pack: HashMap<PackId, Vec<BlobEntry>> = HashMap::new();
    for (_, f) in &files {
        index.add_file(f);
        for p in &f.packs {
            by_pack.entry(p.id).or_insert_with(|| p.blobs.clone());
        }
    }
    let on_disk: HashMap<String, u64> = repo
        .be
        .list(FileKind::Pack)
        .map_err(RepoError::from)?
        .into_iter()
        .collect();
    // Packs an earlier prune marked are out of the index but still on disk,
    // and a snapshot may use them: a backup that had indexed them (so that
    // prune saw them unused) can finish and write its snapshot afterwards.
    // Its trees must load here, so the sweep below re-indexes those packs
    // instead of this run refusing.
    for name in state.packs.keys() {
        let (Ok(id), Some(size)) = (name.parse::<PackId>(), on_disk.get(name)) else {
            continue;
        };
        if !by_pack.contains_key(&id) {
            if let Ok(h) = repo.read_pack_header(name, *size) {
                index.add_pack(id, &h.blobs);
            }
        }
    }
    index.finish();

    let mut used: HashSet<BlobId> = HashSet::new();
    for (name, s) in &snaps {
        let mut stack = vec![s.tree];
        while let Some(t) = stack.pop() {
            if !used.insert(t) {
                continue;
            }
            let tree = repo
                .load_tree(&index, &t)
                .map_err(|e| PruneError::Unsafe(format!("snapshot {name}: {e}; run `check`")))?;
            for n in tree.nodes {
                used.extend(n.content);
                if let Some(st) = n.subtree {
                    stack.push(st);
                }
            }
        }
    }
    rep.used_blobs = used.len();

    // Blobs some indexed pack holds: a marked pack whose used blobs are all
    // here (a repacked pack: its live blobs were copied) is not needed.
    let indexed: HashSet<BlobId> = by_pack
        .iter()
        .filter(|(id, _)| on_disk.contains_key(&id.to_hex()))
        .flat_map(|(_, blobs)| blobs.iter().map(|b| b.id))
        .collect();
    let needed = |blobs: &[BlobEntry]| {
        blobs
            .iter()
            .any(|b| used.contains(&b.id) && !indexed.contains(&b.id))
    };

    // Sweep: packs marked by an earlier run.
    counters.set_phase("sweep");
    let mut reindex: Vec<IndexPack> = Vec::new();
    let mut to_delete: Vec<String> = Vec::new();
    let names: Vec<String> = state.packs.keys().cloned().collect();
    for name in names {
        let Some(size) = on_disk.get(&name).copied() else {
            state.packs.remove(&name);
            continue;
        };
        let Ok(id) = name.parse::<PackId>() else {
            continue;
        };
        if by_pack.contains_key(&id) {
            // An index names it again (a prune killed mid-way): re-decide below.
            state.packs.remove(&name);
            continue;
        }
        let Some(p) = state.packs.get_mut(&name) else {
            continue;
        };
        let Some(since) = p.unindexed_since_ns else {
            p.unindexed_since_ns = Some(now);
            continue;
        };
        if backups_start.iter().any(|s| *s <= since) {
            rep.waiting_for_backups += 1;
            continue;
        }
        match repo.read_pack_header(&name, size) {
            Ok(h) if needed(&h.blobs) => {
                reindex.push(IndexPack { id, blobs: h.blobs });
                state.packs.remove(&name);
            }
            _ => to_delete.push(name),
        }
    }

    // Mark: decide every indexed pack, and unindexed ones nobody marked yet.
    counters.set_phase("mark");
    let mut keep: Vec<IndexPack> = Vec::new();
    let mut repack: Vec<(PackId, Vec<BlobEntry>)> = Vec::new();
    let mut newly_marked: Vec<String> = Vec::new();
    let released = released_blobs(repo, &index, &state.forgotten, &used);
    let mut released_packs: Vec<String> = Vec::new();
    for (id, blobs) in &by_pack {
        if !on_disk.contains_key(&id.to_hex()) {
            continue; // missing pack: dropping it from the index loses nothing
        }
        // Bytes per stored piece (a frame counts once, used if any member is).
        let (total, unused) = pieces(blobs)
            .into_iter()
            .fold((0u64, 0u64), |(t, u), piece| {
                let len = u64::from(piece[0].length);
                let dead = piece.iter().all(|b| !used.contains(&b.id));
                (t + len, if dead { u + len } else { u })
            });
        if unused == total {
            if blobs.iter().all(|b| released.contains(&b.id)) {
                released_packs.push(id.to_hex());
            }
            newly_marked.push(id.to_hex());
        } else if state.repack.contains(&id.to_hex())
            || unused * 100 > total * u64::from(max_unused_percent.min(100))
        {
            repack.push((*id, blobs.clone()));
        } else {
            keep.push(IndexPack {
                id: *id,
                blobs: blobs.clone(),
            });
        }
    }
    let mut unindexed_marked = Vec::new();
    for (name, size) in &on_disk {
        let Ok(id) = name.parse::<PackId>() else {
            continue;
        };
        if by_pack.contains_key(&id)
            || state.packs.contains_key(name)
            || to_delete.contains(name)
            || reindex.iter().any(|p| p.id == id)
        {
            continue;
        }
        match repo.read_pack_header(name, *size) {
            Ok(h) if needed(&h.blobs) => reindex.push(IndexPack { id, blobs: h.blobs }),
            // Possibly a running backup's pack: marking only starts the clock.
            _ => unindexed_marked.push(name.clone()),
        }
    }

    // Copy the used blobs of sparse packs (ciphertext as is: no
    // re-encryption). A frame is copied whole if any member is used; only
    // the used members are indexed in the new pack.
    let mut packer = Packer::new(repo.be.clone(), repo.pads_packs());
    let mut repacked: Vec<String> = Vec::new();
    // A blob that a kept pack also holds is not copied again.
    let mut copied: HashSet<BlobId> = keep
        .iter()
        .chain(&reindex)
        .flat_map(|p| p.blobs.iter().map(|b| b.id))
        .collect();
    for (id, blobs) in &repack {
        let name = id.to_hex();
        for piece in pieces(blobs) {
            let live: Vec<BlobMeta> = piece
                .iter()
                .filter(|b| used.contains(&b.id) && copied.insert(b.id))
                .map(|b| BlobMeta {
                    kind: b.kind,
                    id: b.id,
                    raw_length: b.raw_length,
                    member: b.member,
                })
                .collect();
            if live.is_empty() {
                continue;
            }
            let data = repo
                .be
                .read_at(
                    FileKind::Pack,
                    &name,
                    u64::from(piece[0].offset),
                    piece[0].length as usize,
                )
                .map_err(RepoError::from)?;
            packer
                .add(EncodedBlob {
                    compression: piece[0].compression,
                    blobs: live,
                    data,
                })
                .map_err(RepoError::from)?;
        }
        newly_marked.push(name.clone());
        repacked.push(name);
        rep.packs_repacked += 1;
    }
    packer.finish().map_err(RepoError::from)?;

    // Durable order: state naming the candidates, new index, old index gone,
    // then the candidates' unindexed time.
    for name in &newly_marked {
        state.repack.remove(name);
        state.packs.insert(
            name.clone(),
            PendingPack {
                marked_ns: now,
                unindexed_since_ns: None,
            },
        );
    }
    for name in &unindexed_marked {
        state.packs.insert(
            name.clone(),
            PendingPack {
                marked_ns: now,
                unindexed_since_ns: Some(now),
            },
        );
    }
    rep.packs_marked = newly_marked.len() + unindexed_marked.len();
    rep.packs_reindexed = reindex.len();
    state.save(repo)?;
    keep.extend(reindex);
    let changed = !newly_marked.is_empty() || rep.packs_reindexed > 0 || files.len() > 1;
    if changed {
        for chunk in keep.chunks(4096) {
            repo.be
                .save(
                    FileKind::Index,
                    &IndexFile {
                        packs: chunk.to_vec(),
                    }
                    .to_bytes(),
                )
                .map_err(RepoError::from)?;
        }
        for (name, _) in &files {
            repo.be
                .remove(FileKind::Index, name)
                .map_err(RepoError::from)?;
        }
    }
    let t = now_ns();
    for name in &newly_marked {
        if let Some(p) = state.packs.get_mut(name) {
            p.unindexed_since_ns = Some(t);
        }
    }
    state.save(repo)?;
    // Repacked packs go now if nothing could have loaded an index naming
    // them: no live backup started before `t`, and no snapshot appeared
    // since the start (one that did may use their blobs). Their used blobs
    // have copies in the new pack, so keeping them for the fence only made
    // every other prune re-index and repack them again (issue 12). A pack
    // no snapshot uses at all still waits for the fence: that is what a
    // running backup's packs look like before its snapshot is written
    // (crash::snapshot_written_after_prune_marked_its_packs), unless every
    // blob of it belonged to snapshots `forget` removed (`released_packs`).
    let now_free: Vec<&String> = repacked.iter().chain(&released_packs).collect();
    if !now_free.is_empty() && nothing_saw_old_index(repo, &lock, t, &snaps)? {
        for name in now_free {
            if !to_delete.contains(name) {
                to_delete.push(name.clone());
            }
        }
    }
    // Their blobs are marked or deleted now: the hint is spent.
    state.forgotten.clear();
    // Delete, then forget: a kill in between leaves state naming a missing
    // pack (dropped next run), never an unmarked garbage pack.
    for name in &to_delete {
        rep.bytes_freed += on_disk.get(name).copied().unwrap_or(0);
        repo.be
            .remove(FileKind::Pack, name)
            .map_err(RepoError::from)?;
        state.packs.remove(name);
        rep.packs_deleted += 1;
    }
    state.save(repo)?;
    rep.packs_pending = state.packs.len();
    if let Some(rw) = rep.rewrite.as_mut() {
        rw.retired_keys_left =
            crate::backup::commands::rotate::drop_retired(repo, lock.name(), rep.packs_pending)?;
        if rw.retired_keys_left == 0 && !state.rewritten.is_empty() {
            state.rewritten.clear();
            state.save(repo)?;
        }
    }
    clean_tmp(repo.local().root(), std::time::Duration::from_secs(3600));
    drop(lock);
    Ok(rep)
}

/// The blobs only forgotten snapshots used: the trees below the roots
/// `forget` recorded and their contents, short of everything a remaining
/// snapshot uses (a used tree's whole subtree is used, so the walk stops
/// there). A tree that no longer loads is skipped: this only lets packs go
/// sooner, and without it they wait for the fence as before.
fn released_blobs(
    repo: &Repository,
    index: &crate::backup::index::MasterIndex,
    roots: &BTreeSet<String>,
    used: &HashSet<BlobId>,
) -> HashSet<BlobId> {
    let mut released = HashSet::new();
    let mut stack: Vec<BlobId> = roots.iter().filter_map(|h| h.parse().ok()).collect();
    while let Some(t) = stack.pop() {
        if used.contains(&t) || !released.insert(t) {
            continue;
        }
        let Ok(tree) = repo.load_tree(index, &t) else {
            continue;
        };
        for n in tree.nodes {
            released.extend(n.content.into_iter().filter(|b| !used.contains(b)));
            stack.extend(n.subtree);
        }
    }
    released
}

/// Whether no backup can hold an index that names packs unindexed at `t`:
/// every live lock but ours started after `t`, and the snapshots are still
/// the ones this prune read.
fn nothing_saw_old_index(
    repo: &Repository,
    own: &Lock,
    t: i64,
    snaps: &[(String, levee_proto::repo::Snapshot)],
) -> Result<bool, RepoError> {
    let now = now_ns();
    let (locks, _) = list_locks(repo.local(), repo.key())?;
    if locks
        .iter()
        .any(|(name, l)| name != own.name() && l.is_alive(now) && l.start_ns <= t)
    {
        return Ok(false);
    }
    let seen: HashSet<&str> = snaps.iter().map(|(n, _)| n.as_str()).collect();
    let listed = repo.be.list(FileKind::Snapshot)?;
    Ok(listed.len() == seen.len() && listed.iter().all(|(n, _)| seen.contains(n.as_str())))
}

/// A pack's entries grouped by stored piece: one entry for a blob stored
/// alone, all members for a frame (they share offset and length).
fn pieces(blobs: &[BlobEntry]) -> Vec<Vec<&BlobEntry>> {
    let mut by_offset: BTreeMap<u32, Vec<&BlobEntry>> = BTreeMap::new();
    for b in blobs {
        by_offset.entry(b.offset).or_default().push(b);
    }
    by_offset.into_values().collect()
}
