//! `check`: is the repository whole? Structure: every index file readable,
//! every indexed pack present with a plausible size, every snapshot
//! readable, every tree loadable and every blob a snapshot needs indexed.
//! `--read-data[=PERCENT]`: also read packs, verify their SHA-256 name, and
//! decrypt, decompress and verify every blob against its keyed id.
//! Problems are collected with the file they concern; nothing panics.

use std::collections::{HashMap, HashSet};

use levee_proto::repo::crypto::file_id;
use levee_proto::repo::pack::parse_trailer;
use levee_proto::repo::{BlobId, PackHeader, PackId};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::backup::backend::{FileKind, ReadBackend};
use crate::backup::blob;
use crate::backup::progress::Counters;
use crate::backup::repository::{RepoError, Repository};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct CheckOptions {
    /// Also read and verify pack data: all of it, or PERCENT of the packs.
    #[cfg_attr(feature = "cli", arg(long, value_name = "PERCENT", num_args = 0..=1, default_missing_value = "100"))]
    #[serde(default)]
    pub read_data: Option<f64>,
    /// Replace packs that fail the data check with their offsite copies
    /// (the targets of the appliance's configuration, its credential), then
    /// check again. Needs --read-data.
    #[cfg_attr(feature = "cli", arg(long, requires = "read_data"))]
    #[serde(default)]
    pub repair_from_offsite: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub snapshots: usize,
    pub index_files: usize,
    pub packs: usize,
    pub packs_read: usize,
    pub blobs_verified: u64,
    pub unindexed_packs: Vec<String>,
    /// Packs the index names that are still only on the offsite targets
    /// (a repository taken over from an offsite copy).
    #[serde(default)]
    pub unfetched_packs: usize,
    /// Every blob `--read-data` found damaged, with what it belongs to.
    pub damaged_blobs: Vec<DamagedBlob>,
    /// Not errors: states that the next prune or backup resolves.
    pub notes: Vec<String>,
    pub errors: Vec<String>,
}

/// A blob that failed verification and the files (or directories) of
/// which snapshots hold it.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedBlob {
    pub id: BlobId,
    pub pack: String,
    pub error: String,
    /// `snapshot <id>: <path>` for each file or directory that uses it.
    pub used_by: Vec<String>,
}

pub fn check(
    repo: &Repository,
    opts: &CheckOptions,
    counters: &Counters,
) -> Result<CheckReport, RepoError> {
    let mut r = CheckReport::default();
    counters.set_phase("index");
    let loaded = repo.load_index()?;
    for (name, e) in &loaded.failed {
        r.errors.push(format!("index file {name}: {e}"));
    }
    r.index_files = loaded.names.len();
    let index = &loaded.index;
    if index.unrepresentable > 0 {
        r.errors.push(format!(
            "index: {} entries lie beyond what this version can address (a frame member above 255 or past 16 MiB in its pack, or a blob over 512 MiB); their blobs count as missing",
            index.unrepresentable
        ));
    }

    let mut packs: HashMap<String, u64> = repo.be.list(FileKind::Pack)?.into_iter().collect();
    r.packs = packs.len();
    // A repository taken over from an offsite copy: packs the index names
    // that are still on the targets are not missing, only not here yet.
    let marker = crate::backup::unfetched::Unfetched::load(repo.local().as_ref())?;
    let unfetched = match &marker {
        Some(_) => crate::backup::unfetched::missing_packs(repo)?,
        None => Default::default(),
    };
    // Which blobs each indexed pack should hold, from the index files.
    let mut expected: HashMap<PackId, Vec<levee_proto::repo::BlobEntry>> = HashMap::new();
    for name in &loaded.names {
        if let Ok(b) = repo.be.load(FileKind::Index, name) {
            if let Ok(f) = levee_proto::repo::IndexFile::parse(&b) {
                for p in f.packs {
                    expected.entry(p.id).or_insert(p.blobs);
                }
            }
        }
    }
    for (id, blobs) in &expected {
        match packs.get(&id.to_hex()) {
            None if unfetched.contains(&id.to_hex()) => {}
            None => r
                .errors
                .push(format!("pack {id}: named in the index but missing")),
            Some(size) => {
                let end = blobs
                    .iter()
                    .map(|b| u64::from(b.offset) + u64::from(b.length))
                    .max()
                    .unwrap_or(0);
                if end + 8 > *size {
                    r.errors.push(format!("pack {id}: {size} bytes, too short for the blobs the index lists (truncated)"));
                }
            }
        }
    }
    for name in packs.keys() {
        if name
            .parse::<PackId>()
            .map(|id| !expected.contains_key(&id))
            .unwrap_or(true)
        {
            r.unindexed_packs.push(name.clone());
        }
    }

    if let Some(m) = &marker {
        r.unfetched_packs = unfetched.len();
        r.notes.push(format!(
            "{} packs not yet fetched from {} (taken over from an offsite copy; the back-fill \
             brings them, a read fetches what it needs)",
            unfetched.len(),
            m.target_names()
        ));
    }
    let mut unwalked = 0usize;

    counters.set_phase("snapshots");
    // Trees are walked with the index plus unindexed packs' headers, so a
    // lost index file costs one error per pack, not one per blob, and the
    // walk still reaches everything below.
    let (full, _) = repo.load_index_recovering()?;
    let full = &full.index;
    let pending = crate::backup::commands::recover::pending_packs(repo);
    let (snaps, bad) = repo.snapshots()?;
    for (name, e) in bad {
        r.errors.push(format!("snapshot {name}: {e}"));
    }
    r.snapshots = snaps.len();
    let mut seen: HashSet<BlobId> = HashSet::new();
    let mut unindexed_used: HashMap<PackId, usize> = HashMap::new();
    let mut classify = |id: &BlobId, what: &dyn Fn() -> String, r: &mut CheckReport| {
        if index.contains(id) || !seen.insert(*id) {
            return;
        }
        match full.get(id) {
            Some(loc) => *unindexed_used.entry(loc.pack).or_default() += 1,
            None => r.errors.push(format!("{}: blob {id} is missing", what())),
        }
    };
    let mut seen_trees: HashSet<BlobId> = HashSet::new();
    for (name, s) in &snaps {
        let mut stack = vec![(s.tree, String::from("/"))];
        while let Some((tid, path)) = stack.pop() {
            if !seen_trees.insert(tid) {
                continue;
            }
            classify(
                &tid,
                &|| format!("snapshot {name}: directory {path}"),
                &mut r,
            );
            let t = match repo.load_tree(full, &tid) {
                Ok(t) => t,
                Err(e) => {
                    let offsite = full
                        .get(&tid)
                        .is_some_and(|loc| unfetched.contains(&loc.pack.to_hex()));
                    if offsite {
                        unwalked += 1;
                    } else if full.contains(&tid) {
                        r.errors
                            .push(format!("snapshot {name}: directory {path}: {e}"));
                    }
                    continue;
                }
            };
            let problems = t.problems();
            if !problems.is_empty() {
                let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                r.errors.push(format!(
                    "snapshot {name}: directory {path:?}: tree breaks the rules restore relies on ({}); restore skips those entries",
                    list.join(", ")
                ));
            }
            for n in t.nodes {
                for id in &n.content {
                    classify(
                        id,
                        &|| format!("snapshot {name}: file {path}{}", n.name),
                        &mut r,
                    );
                }
                if let Some(st) = n.subtree {
                    stack.push((st, format!("{path}{}/", n.name)));
                }
            }
        }
    }
    let mut used: Vec<_> = unindexed_used.into_iter().collect();
    used.sort();
    for (pack, n) in used {
        if pending.contains(&pack.to_hex()) {
            // A backup that ran across a prune used blobs prune had marked;
            // the pack stays (the fence) and the next prune re-indexes it.
            r.notes.push(format!("pack {pack}: marked by prune but used by {n} blobs of a newer snapshot; the next prune re-indexes it"));
        } else {
            r.errors.push(format!("pack {pack}: no index file names it, but it holds {n} blobs that snapshots use (index file lost?); the next backup re-indexes it"));
        }
    }

    if unwalked > 0 {
        r.notes.push(format!(
            "{unwalked} directories not checked: their trees are in packs not yet fetched"
        ));
    }

    if let Some(pct) = opts.read_data {
        counters.set_phase("read data");
        if repo.local().has_pack_source() {
            // Read means fetched first (each checked against its name).
            for name in &unfetched {
                packs.entry(name.clone()).or_insert(0);
            }
        } else if !unfetched.is_empty() {
            r.notes.push(format!(
                "{} packs not yet fetched were not read",
                unfetched.len()
            ));
        }
        let mut names: Vec<(&String, &u64)> = packs.iter().collect();
        names.sort();
        if pct < 100.0 {
            names.shuffle(&mut rand::thread_rng());
            let n = ((names.len() as f64) * pct.clamp(0.0, 100.0) / 100.0).ceil() as usize;
            names.truncate(n);
        }
        Counters::add(&counters.expected, names.iter().map(|(_, s)| **s).sum());
        for (name, size) in names {
            r.packs_read += 1;
            let exp = name.parse::<PackId>().ok().and_then(|id| expected.get(&id));
            match read_pack(repo, name, *size, exp.map(Vec::as_slice)) {
                Ok((h, verified, errs, bad)) => {
                    r.blobs_verified += verified;
                    r.errors.extend(errs);
                    for (id, error) in bad {
                        r.damaged_blobs.push(DamagedBlob {
                            id,
                            pack: name.clone(),
                            error,
                            used_by: Vec::new(),
                        });
                    }
                    if let Some(exp) = name.parse::<PackId>().ok().and_then(|id| expected.get(&id))
                    {
                        if *exp != h.blobs {
                            r.errors
                                .push(format!("pack {name}: header does not match the index"));
                        }
                    }
                }
                Err(e) => r.errors.push(format!("pack {name}: {e}")),
            }
            Counters::add(&counters.done, *size);
        }
        if !r.damaged_blobs.is_empty() {
            counters.set_phase("damage");
            name_users(repo, full, &snaps, &mut r);
        }
    }
    Ok(r)
}

/// Fills in which snapshots' files and directories use each damaged blob,
/// and adds one error line per blob saying so.
fn name_users(
    repo: &Repository,
    index: &crate::backup::index::MasterIndex,
    snaps: &[(String, levee_proto::repo::Snapshot)],
    r: &mut CheckReport,
) {
    let wanted: HashMap<BlobId, usize> = r
        .damaged_blobs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id, i))
        .collect();
    for (name, s) in snaps {
        let short = &name[..12.min(name.len())];
        let mut stack = vec![(s.tree, String::from("/"))];
        let mut seen: HashSet<BlobId> = HashSet::new();
        while let Some((tid, path)) = stack.pop() {
            if !seen.insert(tid) {
                continue;
            }
            if let Some(i) = wanted.get(&tid) {
                r.damaged_blobs[*i]
                    .used_by
                    .push(format!("snapshot {short}: directory {path}"));
            }
            let Ok(t) = repo.load_tree(index, &tid) else {
                continue;
            };
            for n in t.nodes {
                for id in &n.content {
                    if let Some(i) = wanted.get(id) {
                        let user = format!("snapshot {short}: {path}{}", n.name);
                        let users = &mut r.damaged_blobs[*i].used_by;
                        if users.last() != Some(&user) {
                            users.push(user);
                        }
                    }
                }
                if let Some(st) = n.subtree {
                    stack.push((st, format!("{path}{}/", n.name)));
                }
            }
        }
    }
    for d in &r.damaged_blobs {
        let users = if d.used_by.is_empty() {
            "used by no snapshot".to_string()
        } else {
            format!("used by {}", d.used_by.join(", "))
        };
        r.errors.push(format!(
            "damaged blob {} in pack {}: {}; {users}",
            d.id, d.pack, d.error
        ));
    }
}

/// Damaged blobs of one pack: id and what is wrong.
pub(crate) type BadBlobs = Vec<(BlobId, String)>;

/// Reads a pack whole and verifies every blob. A pack whose bytes no
/// longer match its name is still read blob by blob, so the damage is
/// narrowed to the blobs it hit; if its header is lost too, the index's
/// entries (`expected`) say where the blobs are.
pub(crate) fn read_pack(
    repo: &Repository,
    name: &str,
    size: u64,
    expected: Option<&[levee_proto::repo::BlobEntry]>,
) -> Result<(PackHeader, u64, Vec<String>, BadBlobs), String> {
    let data = repo
        .be
        .read(FileKind::Pack, name)
        .map_err(|e| e.to_string())?;
    let mut errs = Vec::new();
    if file_id(&data).to_hex() != name {
        errs.push(format!(
            "pack {name}: contents do not match its name (corrupted)"
        ));
    }
    let h = match pack_header(repo, &data, size) {
        Ok(h) => h,
        Err(e) => match expected {
            Some(blobs) => {
                errs.push(format!(
                    "pack {name}: {e}; its blobs are checked by the index"
                ));
                PackHeader {
                    blobs: blobs.to_vec(),
                }
            }
            None => return Err(e),
        },
    };
    let mut bad: BadBlobs = Vec::new();
    let mut ok = 0;
    // Members of one frame follow each other: decode each frame once.
    let mut frame: Option<(u32, Result<Vec<u8>, String>)> = None;
    for b in &h.blobs {
        let Some(stored) = data.get(b.offset as usize..b.offset as usize + b.length as usize)
        else {
            bad.push((b.id, "out of the pack's bounds".into()));
            continue;
        };
        let res = if b.member == 0 {
            blob::decode(repo.key(), b.id, b.compression, 0, stored)
                .map(drop)
                .map_err(|e| e.to_string())
        } else {
            if frame.as_ref().map(|(o, _)| *o) != Some(b.offset) {
                let f = blob::decode_frame(repo.key(), b.id, b.compression, stored)
                    .map_err(|e| e.to_string());
                frame = Some((b.offset, f));
            }
            match frame.as_ref().map(|(_, f)| f) {
                Some(Ok(f)) => blob::frame_member(repo.key(), b.id, f, b.member)
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Some(Err(e)) => Err(format!("its frame: {e}")),
                None => continue,
            }
        };
        match res {
            Ok(()) => ok += 1,
            Err(e) => bad.push((b.id, e)),
        }
    }
    Ok((h, ok, errs, bad))
}

fn pack_header(repo: &Repository, data: &[u8], size: u64) -> Result<PackHeader, String> {
    let t = data.get(data.len().saturating_sub(8)..).unwrap_or(&[]);
    // The bytes as read, not the listed size: the file may have changed.
    let (start, len) = parse_trailer(t, data.len() as u64).map_err(|e| e.to_string())?;
    let hb = data
        .get(start as usize..start as usize + len as usize)
        .ok_or_else(|| format!("header outside the {size}-byte pack"))?;
    let (plain, _) = repo
        .key()
        .decrypt_pack_data(hb)
        .map_err(|_| "header cannot be decrypted".to_string())?;
    let h = PackHeader::parse(&plain).map_err(|e| e.to_string())?;
    h.check_bounds(start).map_err(|e| e.to_string())?;
    Ok(h)
}
