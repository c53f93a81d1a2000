//! `backup`: walk sources, chunk, dedup, compress, encrypt, pack, and write
//! a snapshot last.
//!
//! Pipeline (all stages run at once, joined by bounded channels, so memory
//! is bounded by channel depth x chunk size plus the index):
//! walker (this thread; lists dirs, decides unchanged files, queues files)
//! -> readers (N; read + chunk + keyed hash + dedup)
//! -> compressors (one per core; zstd + AES-GCM)
//! -> packer (one; writes packs and index files durably)
//! and a finaliser that assembles directories bottom-up as their files
//! finish, storing each tree as a blob. Only after every pack and index
//! file is durable and our lock is still valid is the snapshot written.

use std::collections::HashSet;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};
use globset::{Glob, GlobSet, GlobSetBuilder};
use levee_proto::repo::file_formats::FRAME_MAX_MEMBERS;
use levee_proto::repo::{
    BlobId, BlobKind, Node, NodeKind, PackId, Snapshot, SnapshotSummary, Tree,
};
use serde::{Deserialize, Serialize};

use crate::backup::blob::{self, EncodedBlob, RawBlob};
use crate::backup::chunker::Chunker;
use crate::backup::commands::recover::recover_unindexed;
use crate::backup::index::MasterIndex;
use crate::backup::lock::{hostname, Lock};
use crate::backup::packer::Packer;
use crate::backup::progress::Counters;
use crate::backup::repository::{RepoError, Repository};
use crate::backup::source::{join, open_source, Source, SourceEntry, SourceError};
use crate::util::now_ns;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct BackupOptions {
    /// Local paths or smb://user@host[:port]/share/path URLs.
    #[cfg_attr(feature = "cli", arg(required = true))]
    pub sources: Vec<String>,
    /// Tag the snapshot (repeatable).
    #[cfg_attr(feature = "cli", arg(long = "tag"))]
    #[serde(default)]
    pub tags: Vec<String>,
    /// Glob of paths or names to leave out (repeatable), e.g. '*.tmp', 'cache/**'.
    #[cfg_attr(feature = "cli", arg(long = "exclude", short = 'e'))]
    #[serde(default)]
    pub excludes: Vec<String>,
    /// Read every file again, even when the parent snapshot says unchanged.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default)]
    pub force: bool,
    /// Hostname to record (default: this machine's).
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default)]
    pub host: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("bad exclude pattern: {0}")]
    Exclude(String),
    #[error("writing packs failed: {0}")]
    Pack(String),
    #[error("this backup's lock was lost (a prune declared it dead); snapshot not written")]
    LockLost,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    pub snapshot: String,
    pub parent: Option<String>,
    #[serde(flatten)]
    pub summary: SnapshotSummary,
    pub bytes_stored: u64,
    pub packs_written: u64,
    pub dedup_ratio: f64,
    pub error_messages: Vec<String>,
}

struct FileJob {
    source: Arc<dyn Source>,
    path: String,
    /// Size when listed: sizes the read buffers (the file may change).
    size: u64,
    reply: Sender<Result<(Vec<BlobId>, u64), String>>,
}

enum Pending {
    Ready(Node),
    File(Node, Receiver<Result<(Vec<BlobId>, u64), String>>),
    /// Its tree id comes from the finaliser's stack.
    Dir(Node),
}

struct DirDone {
    path: String,
    entries: Vec<Pending>,
}

/// Blobs already stored or queued in this run: the dedup decision.
struct Dedup<'a> {
    index: &'a MasterIndex,
    queued: Mutex<HashSet<BlobId>>,
}

impl Dedup<'_> {
    fn is_new(&self, id: &BlobId) -> bool {
        !self.index.contains(id)
            && self
                .queued
                .lock()
                .map(|mut q| q.insert(*id))
                .unwrap_or(true)
    }
}

fn node_from(e: &SourceEntry) -> Node {
    let mut n = Node::new(e.name.clone(), e.kind);
    n.size = e.size;
    n.mode = e.mode;
    n.mtime_ns = e.mtime_ns;
    n.atime_ns = e.atime_ns;
    n.ctime_ns = e.ctime_ns;
    n.btime_ns = e.btime_ns;
    n.attributes = e.attributes;
    n.file_id = e.file_id;
    n.uid = e.uid;
    n.gid = e.gid;
    n.link_target = e.link_target.clone();
    n.security_descriptor = e.security_descriptor.as_ref().map(hex::encode);
    n
}

fn unchanged(e: &SourceEntry, old: &Node, index: &MasterIndex) -> bool {
    old.kind == NodeKind::File
        && old.size == e.size
        && old.mtime_ns == e.mtime_ns
        && old.ctime_ns == e.ctime_ns
        && (e.file_id == 0 || old.file_id == 0 || old.file_id == e.file_id)
        && (old.size == 0 || !old.content.is_empty())
        && old.content.iter().all(|id| index.contains(id))
}

fn build_excludes(pats: &[String]) -> Result<GlobSet, BackupError> {
    let mut b = GlobSetBuilder::new();
    for p in pats {
        b.add(Glob::new(p).map_err(|e| BackupError::Exclude(format!("{p}: {e}")))?);
    }
    b.build().map_err(|e| BackupError::Exclude(e.to_string()))
}

struct Walker<'a> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    excludes: GlobSet,
    jobs: Sender<FileJob>,
    dirs: Sender<DirDone>,
    counters: &'a Counters,
    force: bool,
}

impl Walker<'_> {
    /// Walks one directory depth-first; emits its DirDone after its
    /// children's (post-order), which is what the finaliser's stack needs.
    fn walk_dir(
        &self,
        src: &Arc<dyn Source>,
        label: &str,
        rel: &str,
        parent: Option<Tree>,
    ) -> Result<(), SourceError> {
        let mut entries = src.list(rel)?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let path = join(rel, &e.name);
            if self.excludes.is_match(&path) || self.excludes.is_match(&e.name) {
                continue;
            }
            let old = parent.as_ref().and_then(|t| t.find(&e.name));
            match e.kind {
                NodeKind::Dir => {
                    let sub = old
                        .filter(|o| o.kind == NodeKind::Dir)
                        .and_then(|o| o.subtree)
                        .and_then(|id| self.repo.load_tree(self.index, &id).ok());
                    match self.walk_dir(src, label, &path, sub) {
                        Ok(()) => out.push(Pending::Dir(self.with_xattrs(src, label, &path, &e))),
                        Err(err) => self.counters.error(format!("{label}/{path}: {err}")),
                    }
                }
                NodeKind::Symlink => {
                    out.push(Pending::Ready(self.with_xattrs(src, label, &path, &e)))
                }
                NodeKind::File => out.push(self.file(src, label, &e, &path, old)),
            }
        }
        Counters::add(&self.counters.dirs, 1);
        // Send fails only if the finaliser died; its error is reported there.
        let _ = self.dirs.send(DirDone {
            path: format!("{label}/{rel}"),
            entries: out,
        });
        Ok(())
    }

    /// The entry's node with its extended attributes read from the source.
    /// A failure is reported and the entry kept without them.
    fn with_xattrs(&self, src: &Arc<dyn Source>, label: &str, path: &str, e: &SourceEntry) -> Node {
        let mut node = node_from(e);
        match src.xattrs(path) {
            Ok(x) => {
                for why in x.skipped {
                    self.counters.error(format!("{label}/{path}: {why}"));
                }
                node.xattrs = x
                    .values
                    .into_iter()
                    .map(|(k, v)| (k, hex::encode(v)))
                    .collect();
            }
            Err(err) => self.counters.error(format!(
                "{label}/{path}: extended attributes not kept: {err}"
            )),
        }
        node
    }

    fn file(
        &self,
        src: &Arc<dyn Source>,
        label: &str,
        e: &SourceEntry,
        path: &str,
        old: Option<&Node>,
    ) -> Pending {
        Counters::add(&self.counters.files, 1);
        Counters::add(&self.counters.bytes_total, e.size);
        if let Some(old) = old.filter(|o| !self.force && unchanged(e, o, self.index)) {
            let mut node = node_from(e);
            node.content = old.content.clone();
            // Changing an xattr moves ctime, which `unchanged` compares: the
            // parent's are current, and reading them again would cost a
            // syscall or two per file on every incremental backup.
            node.xattrs = old.xattrs.clone();
            Counters::add(&self.counters.files_unchanged, 1);
            return Pending::Ready(node);
        }
        let node = self.with_xattrs(src, label, path, e);
        let (tx, rx) = bounded(1);
        let _ = self.jobs.send(FileJob {
            source: src.clone(),
            path: path.to_string(),
            size: e.size,
            reply: tx,
        });
        Pending::File(node, rx)
    }
}

/// A reader thread's reusable state.
struct Scratch {
    chunker: Chunker,
}

/// Bytes asked of the source per read. Data is read straight into the
/// chunk's own buffer; only the part of a read past a chunk boundary is
/// copied (into the next chunk), so smaller reads copy less.
const READ_SIZE: usize = 256 * 1024;

/// Capacity for a chunk buffer that holds `have` bytes, with `rest` more
/// expected in the file: exact for small files, two average chunks for
/// large ones (a longer chunk grows its buffer).
fn chunk_capacity(have: usize, rest: u64) -> usize {
    let want = (rest.min(u64::from(u32::MAX)) as usize)
        .saturating_add(have)
        .saturating_add(1);
    want.min(2 * crate::backup::chunker::AVG_SIZE + READ_SIZE)
}

#[allow(clippy::too_many_arguments)]
fn read_file(
    repo: &Repository,
    dedup: &Dedup,
    chunks: &Sender<RawBlob>,
    counters: &Counters,
    src: &dyn Source,
    path: &str,
    size_hint: u64,
    scratch: &mut Scratch,
) -> Result<(Vec<BlobId>, u64), String> {
    let Scratch { chunker } = scratch;
    let mut r = src.open(path).map_err(|e| e.to_string())?;
    chunker.reset();
    let key = repo.key();
    let mut content = Vec::new();
    let mut total = 0u64;
    let mut emit = |data: Vec<u8>| {
        let id = key.blob_id(&data);
        content.push(id);
        Counters::add(&counters.bytes_read, data.len() as u64);
        if dedup.is_new(&id) {
            Counters::add(&counters.bytes_new, data.len() as u64);
            Counters::add(&counters.blobs_new, 1);
            let _ = chunks.send(RawBlob {
                kind: BlobKind::Data,
                id,
                data,
            });
        }
    };
    let mut cur: Vec<u8> = Vec::with_capacity(chunk_capacity(0, size_hint));
    loop {
        let start = cur.len();
        // read_to_end fills the spare capacity without zeroing it first
        // and retries on EINTR.
        let n = match (&mut r).take(READ_SIZE as u64).read_to_end(&mut cur) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(format!("{path}: {e}")),
        };
        total += n as u64;
        let rest = size_hint.saturating_sub(total);
        let mut off = start;
        while let Some(k) = chunker.scan(&cur[off..]) {
            let end = off + k;
            let mut next = Vec::with_capacity(chunk_capacity(cur.len() - end, rest));
            next.extend_from_slice(&cur[end..]);
            cur.truncate(end);
            emit(std::mem::replace(&mut cur, next));
            off = 0;
        }
    }
    if !cur.is_empty() {
        emit(cur);
    }
    Ok((content, total))
}

/// Data chunks smaller than this (small files and the tails of large ones)
/// are stored in frames; larger chunks compress well enough alone.
pub(crate) const FRAME_BLOB_MAX: usize = crate::backup::chunker::MIN_SIZE;
/// A frame is closed once its members add up to this many bytes.
pub(crate) const FRAME_TARGET: usize = 1024 * 1024;

/// Encodes and empties `frame`: one member is stored alone, more as a frame.
pub(crate) fn encode_frame(
    repo: &Repository,
    frame: &mut Vec<RawBlob>,
    z: Option<&mut zstd::bulk::Compressor<'static>>,
) -> EncodedBlob {
    let b = match frame.as_slice() {
        [one] => blob::encode(repo.key(), one.kind, one.id, &one.data, z),
        members => blob::encode_frame(repo.key(), members, z),
    };
    frame.clear();
    b
}

/// Runs a backup and writes its snapshot.
pub fn backup(
    repo: &Repository,
    opts: &BackupOptions,
    smb_password: Option<&str>,
    counters: &Counters,
) -> Result<BackupSummary, BackupError> {
    let started = Instant::now();
    let time_ns = now_ns();
    let host = opts.host.clone().unwrap_or_else(hostname);
    // The lock comes first: prune's time fence counts from its start time.
    let lock =
        Lock::acquire(repo.local().clone(), repo.key(), "backup").map_err(RepoError::from)?;
    counters.set_phase("loading index");
    let mut loaded = repo.load_index()?;
    for (name, err) in &loaded.failed {
        counters.error(format!(
            "index {name}: {err} (its packs are re-read from their headers)"
        ));
    }
    let (_, bad) = recover_unindexed(repo, &mut loaded.index)?;
    for (name, err) in bad {
        tracing::warn!(pack = %name, "unreadable pack skipped: {err}");
    }
    let index = &loaded.index;
    // A repository taken over from an offsite copy: the parent's trees may
    // be fetched on demand, data never (`unfetched::trees_for_backup`).
    let _trees_only = match crate::backup::unfetched::restrict_to_trees(repo)? {
        Some((guard, f)) => {
            if f.mixed_refused {
                tracing::info!(
                    mixed_packs = f.mixed_packs,
                    mixed_bytes = f.mixed_bytes,
                    missing_bytes = f.missing_bytes,
                    "the parent's trees share packs with data not yet fetched: files are read again"
                );
            }
            Some(guard)
        }
        None => None,
    };

    let sources: Vec<Arc<dyn Source>> = opts
        .sources
        .iter()
        .map(|s| open_source(s, smb_password).map(Arc::from))
        .collect::<Result<_, _>>()?;
    let paths: Vec<String> = sources.iter().map(|s| s.describe()).collect();

    // Parent: newest snapshot of the same paths from the same host.
    let parent = if opts.force {
        None
    } else {
        repo.snapshots()?
            .0
            .into_iter()
            .rev()
            .find(|(_, s)| s.paths == paths && s.hostname == host)
    };
    let parent_root = parent
        .as_ref()
        .and_then(|(_, s)| repo.load_tree(index, &s.tree).ok());

    let excludes = build_excludes(&opts.excludes)?;
    let dedup = Dedup {
        index,
        queued: Mutex::new(HashSet::new()),
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let readers = sources.iter().map(|s| s.parallelism()).max().unwrap_or(2);
    let (job_tx, job_rx) = bounded::<FileJob>(256);
    let (dir_tx, dir_rx) = bounded::<DirDone>(1024);
    let (chunk_tx, chunk_rx) = bounded::<RawBlob>(cores * 2);
    let (pack_tx, pack_rx) = bounded::<EncodedBlob>(cores * 2);
    counters.set_phase("backup");

    let (root, pstats) = std::thread::scope(|s| -> Result<_, BackupError> {
        for _ in 0..readers {
            let (job_rx, chunk_tx, dedup) = (job_rx.clone(), chunk_tx.clone(), &dedup);
            s.spawn(move || {
                // The chunker (and its gear table) is per reader, not per file.
                let mut scratch = Scratch {
                    chunker: repo.chunker(),
                };
                for job in job_rx {
                    let r = read_file(
                        repo,
                        dedup,
                        &chunk_tx,
                        counters,
                        &*job.source,
                        &job.path,
                        job.size,
                        &mut scratch,
                    );
                    let _ = job.reply.send(r);
                }
            });
        }
        for _ in 0..cores {
            let (chunk_rx, pack_tx) = (chunk_rx.clone(), pack_tx.clone());
            s.spawn(move || {
                let mut z = blob::compressor();
                let mut frame = Vec::new();
                let mut frame_bytes = 0;
                let send = |b: EncodedBlob| {
                    Counters::add(&counters.bytes_stored, b.data.len() as u64);
                    pack_tx.send(b).is_ok()
                };
                for c in chunk_rx {
                    if c.kind == BlobKind::Data && c.data.len() < FRAME_BLOB_MAX {
                        frame_bytes += c.data.len();
                        frame.push(c);
                        if frame_bytes >= FRAME_TARGET || frame.len() == FRAME_MAX_MEMBERS {
                            let b = encode_frame(repo, &mut frame, z.as_mut());
                            frame_bytes = 0;
                            if !send(b) {
                                break;
                            }
                        }
                        continue;
                    }
                    if !send(blob::encode(repo.key(), c.kind, c.id, &c.data, z.as_mut())) {
                        break;
                    }
                }
                if !frame.is_empty() {
                    send(encode_frame(repo, &mut frame, z.as_mut()));
                }
            });
        }
        drop((job_rx, chunk_rx, pack_tx));
        let packer = s.spawn(move || {
            let mut p = Packer::new(repo.be.clone(), repo.pads_packs());
            let mut err = None;
            for b in pack_rx {
                if err.is_none() {
                    if let Err(e) = p.add(b) {
                        err = Some(e.to_string());
                    }
                }
            }
            match err {
                Some(e) => Err(e),
                None => p.finish().map_err(|e| e.to_string()),
            }
        });
        let finaliser = {
            let chunk_tx = chunk_tx.clone();
            let dedup = &dedup;
            s.spawn(move || {
                let mut stack: Vec<BlobId> = Vec::new();
                for d in dir_rx {
                    let ndirs = d
                        .entries
                        .iter()
                        .filter(|p| matches!(p, Pending::Dir(_)))
                        .count();
                    let mut subs = stack
                        .split_off(stack.len().saturating_sub(ndirs))
                        .into_iter();
                    let mut nodes = Vec::with_capacity(d.entries.len());
                    for p in d.entries {
                        match p {
                            Pending::Ready(n) => nodes.push(n),
                            Pending::Dir(mut n) => {
                                n.subtree = subs.next();
                                nodes.push(n);
                            }
                            Pending::File(mut n, rx) => match rx.recv() {
                                Ok(Ok((content, size))) => {
                                    n.content = content;
                                    n.size = size;
                                    nodes.push(n);
                                }
                                Ok(Err(e)) => counters.error(format!("{}: {e}", d.path)),
                                Err(_) => counters.error(format!("{}: reader failed", d.path)),
                            },
                        }
                    }
                    // Subtree ids were assigned in walk order; lookups need name order.
                    nodes.sort_by(|a, b| a.name.cmp(&b.name));
                    let bytes = Tree { nodes }.to_bytes();
                    let id = repo.key().blob_id(&bytes);
                    if dedup.is_new(&id) {
                        let _ = chunk_tx.send(RawBlob {
                            kind: BlobKind::Tree,
                            id,
                            data: bytes,
                        });
                    }
                    stack.push(id);
                }
                stack.pop()
            })
        };
        drop(chunk_tx);

        let walker = Walker {
            repo,
            index,
            excludes,
            jobs: job_tx,
            dirs: dir_tx,
            counters,
            force: opts.force,
        };
        let mut roots = Vec::new();
        let mut names = HashSet::new();
        for src in &sources {
            let e = src.root()?;
            let mut name = e.name.clone();
            let mut k = 2;
            while !names.insert(name.clone()) {
                name = format!("{}-{k}", e.name);
                k += 1;
            }
            let old = parent_root.as_ref().and_then(|t| t.find(&name));
            let mut e2 = e.clone();
            e2.name = name;
            match e.kind {
                NodeKind::Dir => {
                    let sub = old
                        .and_then(|o| o.subtree)
                        .and_then(|id| repo.load_tree(index, &id).ok());
                    let label = src.describe();
                    walker.walk_dir(src, &label, "", sub)?;
                    roots.push(Pending::Dir(walker.with_xattrs(src, &label, "", &e2)));
                }
                _ => roots.push(walker.file(src, &src.describe(), &e2, "", old)),
            }
        }
        let Walker { jobs, dirs, .. } = walker;
        drop(jobs);
        let _ = dirs.send(DirDone {
            path: String::new(),
            entries: roots,
        });
        drop(dirs);
        let root = finaliser.join().ok().flatten();
        let pstats = packer
            .join()
            .map_err(|_| BackupError::Pack("packer thread panicked".into()))?
            .map_err(BackupError::Pack)?;
        Ok((root, pstats))
    })?;
    let root = root.ok_or_else(|| BackupError::Pack("no root tree".into()))?;

    if !lock.still_valid() {
        return Err(BackupError::LockLost);
    }
    repo.key_is_current()?;
    let g = |c: &std::sync::atomic::AtomicU64| Counters::get(c);
    let summary = SnapshotSummary {
        files: g(&counters.files),
        dirs: g(&counters.dirs),
        files_unchanged: g(&counters.files_unchanged),
        bytes_total: g(&counters.bytes_total),
        bytes_read: g(&counters.bytes_read),
        bytes_new: g(&counters.bytes_new),
        blobs_new: g(&counters.blobs_new),
        errors: g(&counters.errors),
        duration_ms: started.elapsed().as_millis() as u64,
    };
    let parent_id = parent.as_ref().and_then(|(n, _)| n.parse::<PackId>().ok());
    let snap = Snapshot {
        version: 1,
        time_ns,
        hostname: host,
        paths,
        tags: opts.tags.clone(),
        tree: root,
        parent: parent_id,
        summary: summary.clone(),
        program: format!("levee-agent {}", env!("CARGO_PKG_VERSION")),
    };
    let id = repo.save_snapshot(&snap)?;
    drop(lock);
    let stored = g(&counters.bytes_stored);
    Ok(BackupSummary {
        snapshot: id.to_hex(),
        parent: parent.map(|(n, _)| n),
        dedup_ratio: summary.bytes_total as f64 / (stored.max(1)) as f64,
        summary,
        bytes_stored: stored,
        packs_written: pstats.packs,
        error_messages: counters.errors(),
    })
}
