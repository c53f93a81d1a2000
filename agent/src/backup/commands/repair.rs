//! `repair`: make a damaged repository usable again, like `restic repair
//! index` followed by `restic repair snapshots`, without ever deleting a
//! pack or anything still readable.
//!
//! 1. *Index*: every pack's header is read and a new index written from
//!    the headers (with `--read-data`, every blob is verified too and
//!    damaged ones are left out); then the old index files are removed. A
//!    lost or damaged index file loses nothing that a pack still holds.
//! 2. *Snapshots*: each snapshot's trees are walked against the new index.
//!    A file with a blob no pack holds is dropped from its directory, a
//!    directory whose tree is lost becomes empty; the changed trees and a
//!    new snapshot (tagged `repaired`) are written, then the old snapshot
//!    file is removed. Everything dropped is listed.
//!
//! Runs under a prune lock, so no prune runs meanwhile.

use std::collections::HashMap;

use levee_proto::repo::{BlobId, BlobKind, IndexFile, IndexPack, NodeKind, PackId, Tree};
use serde::{Deserialize, Serialize};

use crate::backup::backend::{FileKind, ReadBackend, WriteBackend};
use crate::backup::blob;
use crate::backup::index::MasterIndex;
use crate::backup::lock::{list_locks, Lock};
use crate::backup::packer::Packer;
use crate::backup::progress::Counters;
use crate::backup::repository::{RepoError, Repository};
use crate::util::now_ns;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct RepairOptions {
    /// Also read every pack and leave blobs that fail verification out of
    /// the new index (snapshots then drop the files that used them).
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default)]
    pub read_data: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    pub packs_indexed: usize,
    pub blobs_indexed: usize,
    /// Packs whose header cannot be read: left in place, not indexed.
    pub packs_unreadable: Vec<String>,
    /// Blobs left out of the index because they failed verification.
    pub blobs_damaged: Vec<String>,
    pub index_files_replaced: usize,
    /// Old snapshot id -> new snapshot id.
    pub snapshots_rewritten: Vec<(String, String)>,
    /// `snapshot <id>: <path>`: files dropped and directories emptied.
    pub dropped: Vec<String>,
}

pub fn repair(
    repo: &Repository,
    opts: &RepairOptions,
    counters: &Counters,
) -> Result<RepairReport, RepoError> {
    // It rebuilds the index from the packs here: the unfetched would be lost.
    crate::backup::unfetched::refuse(repo, "repair")?;
    let lock = Lock::acquire(repo.local().clone(), repo.key(), "prune")?;
    let now = now_ns();
    let (locks, _) = list_locks(repo.local(), repo.key())?;
    if let Some((_, l)) = locks
        .iter()
        .find(|(n, l)| n != lock.name() && l.kind == "prune" && l.is_alive(now))
    {
        return Err(RepoError::Busy(format!(
            "a prune or repair is running (pid {} on {}); try again when it is done",
            l.pid, l.hostname
        )));
    }
    let mut r = RepairReport::default();
    counters.set_phase("index");
    let index = rebuild_index(repo, opts, counters, &mut r)?;
    counters.set_phase("snapshots");
    repair_snapshots(repo, &index, &mut r)?;
    drop(lock);
    Ok(r)
}

fn rebuild_index(
    repo: &Repository,
    opts: &RepairOptions,
    counters: &Counters,
    r: &mut RepairReport,
) -> Result<MasterIndex, RepoError> {
    let old: Vec<String> = repo
        .be
        .list(FileKind::Index)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut packs: Vec<IndexPack> = Vec::new();
    let mut damaged_packs = Vec::new();
    let mut listed = repo.be.list(FileKind::Pack)?;
    listed.sort();
    Counters::add(&counters.expected, listed.iter().map(|(_, s)| *s).sum());
    for (name, size) in listed {
        Counters::add(&counters.done, size);
        let Ok(id) = name.parse::<PackId>() else {
            continue;
        };
        let blobs = if opts.read_data {
            match crate::backup::commands::check::read_pack(repo, &name, size, None) {
                Ok((h, _, _, bad)) => {
                    if !bad.is_empty() {
                        damaged_packs.push(name.clone());
                    }
                    for (b, why) in &bad {
                        r.blobs_damaged
                            .push(format!("blob {b} in pack {name}: {why}"));
                    }
                    h.blobs
                        .into_iter()
                        .filter(|e| !bad.iter().any(|(b, _)| *b == e.id))
                        .collect()
                }
                Err(e) => {
                    r.packs_unreadable.push(format!("{name}: {e}"));
                    continue;
                }
            }
        } else {
            match repo.read_pack_header(&name, size) {
                Ok(h) => h.blobs,
                Err(e) => {
                    r.packs_unreadable.push(format!("{name}: {e}"));
                    continue;
                }
            }
        };
        r.blobs_indexed += blobs.len();
        packs.push(IndexPack { id, blobs });
    }
    r.packs_indexed = packs.len();
    // The index will not show a left-out blob's bytes as unused: the next
    // prune is told to repack these packs (their good blobs), so the
    // damaged bytes leave the repository.
    if !damaged_packs.is_empty() {
        let mut state = crate::backup::commands::prune::PruneState::load(repo)?;
        state.repack.extend(damaged_packs);
        state.save(repo)?;
    }
    let mut index = MasterIndex::new();
    // New index first, then the old files go: a kill in between leaves
    // duplicates, which are harmless.
    for chunk in packs.chunks(4096) {
        let f = IndexFile {
            packs: chunk.to_vec(),
        };
        repo.be.save(FileKind::Index, &f.to_bytes())?;
        index.add_file(&f);
    }
    index.finish();
    for name in &old {
        repo.be.remove(FileKind::Index, name)?;
    }
    r.index_files_replaced = old.len();
    Ok(index)
}

/// Rewrites trees below `id` without lost blobs; `None` if nothing changed.
struct TreeFixer<'a> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    packer: Packer,
    done: HashMap<BlobId, Option<BlobId>>,
    empty: Option<BlobId>,
}

impl TreeFixer<'_> {
    fn save(&mut self, t: &Tree) -> Result<BlobId, RepoError> {
        let bytes = t.to_bytes();
        let id = self.repo.key().blob_id(&bytes);
        if !self.index.contains(&id) {
            let b = blob::encode(self.repo.key(), BlobKind::Tree, id, &bytes, None);
            self.packer.add(b)?;
        }
        Ok(id)
    }

    fn fix(
        &mut self,
        id: BlobId,
        path: &str,
        snap: &str,
        dropped: &mut Vec<String>,
    ) -> Result<Option<BlobId>, RepoError> {
        if let Some(d) = self.done.get(&id) {
            return Ok(*d);
        }
        let mut tree = match self.repo.load_tree(self.index, &id) {
            Ok(t) => t,
            Err(e) => {
                dropped.push(format!(
                    "snapshot {snap}: directory {path} emptied (its tree is lost: {e})"
                ));
                let empty = match self.empty {
                    Some(e) => e,
                    None => {
                        let e = self.save(&Tree::default())?;
                        self.empty = Some(e);
                        e
                    }
                };
                self.done.insert(id, Some(empty));
                return Ok(Some(empty));
            }
        };
        let mut changed = false;
        let mut keep = Vec::with_capacity(tree.nodes.len());
        for mut n in std::mem::take(&mut tree.nodes) {
            let p = format!("{path}{}", n.name);
            if n.kind == NodeKind::File {
                if let Some(lost) = n.content.iter().find(|b| !self.index.contains(b)) {
                    dropped.push(format!(
                        "snapshot {snap}: file {p} dropped (blob {lost} is lost)"
                    ));
                    changed = true;
                    continue;
                }
            }
            if let Some(st) = n.subtree {
                if let Some(new) = self.fix(st, &format!("{p}/"), snap, dropped)? {
                    n.subtree = Some(new);
                    changed = true;
                }
            }
            keep.push(n);
        }
        tree.nodes = keep;
        let out = if changed {
            Some(self.save(&tree)?)
        } else {
            None
        };
        self.done.insert(id, out);
        Ok(out)
    }
}

fn repair_snapshots(
    repo: &Repository,
    index: &MasterIndex,
    r: &mut RepairReport,
) -> Result<(), RepoError> {
    let (snaps, _) = repo.snapshots()?;
    let mut fixer = TreeFixer {
        repo,
        index,
        packer: Packer::new(repo.be.clone(), repo.pads_packs()),
        done: HashMap::new(),
        empty: None,
    };
    let mut rewrite = Vec::new();
    for (name, s) in snaps {
        let short = name[..12.min(name.len())].to_string();
        // Afresh per snapshot, so each lists what it loses.
        fixer.done.clear();
        if let Some(root) = fixer.fix(s.tree, "/", &short, &mut r.dropped)? {
            let mut s = s;
            s.tree = root;
            if !s.tags.iter().any(|t| t == "repaired") {
                s.tags.push("repaired".into());
            }
            rewrite.push((name, s));
        }
    }
    // Trees durable (packed and indexed) before a snapshot names them.
    fixer.packer.finish()?;
    for (old, s) in rewrite {
        let new = repo.save_snapshot(&s)?;
        repo.be.remove(FileKind::Snapshot, &old)?;
        r.snapshots_rewritten.push((old, new.to_hex()));
    }
    Ok(())
}
