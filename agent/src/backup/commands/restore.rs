//! `restore`: write a snapshot (or a path inside it) to a local directory
//! or an SMB share. One walker makes the directories in order and hands
//! each one's files to the workers in batches (`queue`: one directory per
//! worker where it can); a file whose blobs are damaged is reported and the
//! rest still restore. At the end directories get their metadata, deepest
//! first, and the target is synced once.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use levee_proto::repo::{BlobId, Node, NodeKind, Tree, TreeProblem};
use serde::{Deserialize, Serialize};

use crate::backup::index::MasterIndex;
use crate::backup::progress::Counters;
use crate::backup::repository::{RepoError, Repository};
use crate::backup::source::join;
use crate::backup::target::{open_target, Target, TargetError};

mod queue;
use queue::{Batch, Queue};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Overwrite {
    Never,
    IfChanged,
    #[default]
    Always,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct RestoreOptions {
    /// Snapshot id (or unique prefix), or `latest`.
    pub snapshot: String,
    /// Path inside the snapshot to restore (default: everything).
    pub path: Option<String>,
    /// Local directory or smb://user@host[:port]/share/path.
    #[cfg_attr(feature = "cli", arg(long))]
    pub target: String,
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value = "always"))]
    #[serde(default)]
    pub overwrite: Overwrite,
    /// With `latest`: use the newest readable snapshot even if some are
    /// damaged (else a damaged snapshot, which may be the newest, stops
    /// the restore).
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default)]
    pub skip_damaged: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("{0}: no such path in the snapshot")]
    NoPath(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreSummary {
    pub snapshot: String,
    pub files: u64,
    pub dirs: u64,
    pub skipped: u64,
    pub bytes: u64,
    pub errors: u64,
    pub error_messages: Vec<String>,
    /// Windows security descriptors written back (SMB targets only; a local
    /// directory has nowhere to put them).
    pub security_descriptors: u64,
    /// Files with the same contents as one restored before, copied from it
    /// on the target instead of being read from the repository again.
    pub files_copied: u64,
    /// Extended attributes (POSIX ACLs among them) written back (local
    /// targets; an SMB share has nowhere to put them).
    pub xattrs: u64,
    /// Metadata only partly restored (e.g. an owner the server refused);
    /// the data is restored, so these do not make the exit code 3.
    pub warnings: u64,
    pub warning_messages: Vec<String>,
    pub duration_ms: u64,
    /// Stopped before the end ([`Counters::stop`]): files not reached are
    /// missing; each file written is whole.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
}

/// Finds the node at `path` below a root tree.
pub fn find_node(
    repo: &Repository,
    index: &MasterIndex,
    root: &BlobId,
    path: &str,
) -> Result<Option<Node>, RepoError> {
    let mut tree = repo.load_tree(index, root)?;
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, p) in parts.iter().enumerate() {
        let Some(n) = tree.find(p).cloned() else {
            return Ok(None);
        };
        if i + 1 == parts.len() {
            return Ok(Some(n));
        }
        match n.subtree {
            Some(id) => tree = repo.load_tree(index, &id)?,
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// The nodes of a tree that are safe to restore. A restore runs as root
/// with names from the repository, so a tree that breaks the rules (see
/// `Tree::problems`) is damaged or crafted: its bad names and every entry
/// of a repeated name are skipped and reported (which of two `a` is the
/// real one is unknowable; a symlink `a` then a directory `a` would
/// otherwise write through the link). On a case-insensitive target names
/// that collide (`A` and `a`) are skipped the same way.
fn safe_nodes(tree: Tree, dir: &str, target: &dyn Target, counters: &Counters) -> Vec<Node> {
    let problems = tree.problems();
    let mut refused: HashSet<String> = HashSet::new();
    for p in &problems {
        match p {
            TreeProblem::BadName(n) | TreeProblem::Duplicate(n) => {
                refused.insert(n.clone());
            }
            TreeProblem::Unsorted(_) => {}
        }
    }
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        counters.error(format!(
            "{}: the directory's tree breaks the rules ({}); those entries are not restored",
            shown(dir),
            list.join(", ")
        ));
    }
    if target.case_insensitive() {
        for group in tree.case_collisions() {
            counters.error(format!(
                "{}: names {} are one name on this case-insensitive target; none restored",
                shown(dir),
                group
                    .iter()
                    .map(|n| format!("{:?}", join(dir, n)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            refused.extend(group);
        }
    }
    let mut nodes = tree.nodes;
    if !refused.is_empty() {
        nodes.retain(|n| !refused.contains(&n.name));
    }
    if problems
        .iter()
        .any(|p| matches!(p, TreeProblem::Unsorted(_)))
    {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }
    nodes
}

fn shown(dir: &str) -> String {
    if dir.is_empty() {
        "/".into()
    } else {
        format!("{dir:?}")
    }
}

struct Job {
    path: String,
    node: Node,
}

/// Files (and symlinks) per batch at most, and bytes: big enough that a
/// worker stays in one directory for a while, small enough that a large
/// directory (thousands of libraries) is still shared out.
const BATCH_FILES: usize = 256;
const BATCH_BYTES: u64 = 32 << 20;

/// Jobs queued at most ahead of the workers.
const QUEUE_JOBS: usize = 4096;

/// Queues the files and symlinks of directory `dir` in batches and puts
/// its subdirectories on the walker's stack (in order).
fn schedule(dir: &str, nodes: Vec<Node>, stack: &mut Vec<(String, Node)>, queue: &Queue<Job>) {
    let key: std::sync::Arc<str> = std::sync::Arc::from(dir);
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    let mut subdirs = Vec::new();
    for n in nodes {
        let path = join(dir, &n.name);
        if n.kind == NodeKind::Dir {
            subdirs.push((path, n));
            continue;
        }
        bytes += n.size;
        batch.push(Job { path, node: n });
        if batch.len() >= BATCH_FILES || bytes >= BATCH_BYTES {
            queue.push(Batch {
                dir: key.clone(),
                jobs: std::mem::take(&mut batch),
            });
            bytes = 0;
        }
    }
    queue.push(Batch {
        dir: key,
        jobs: batch,
    });
    stack.extend(subdirs.into_iter().rev());
}

/// What the workers share.
struct Worker<'a> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    target: &'a dyn Target,
    overwrite: Overwrite,
    counters: &'a Counters,
    zero_blobs: Mutex<HashMap<BlobId, u64>>,
    restored: Restored,
    copied: std::sync::atomic::AtomicU64,
    /// Files and symlinks left because the restore was asked to stop.
    left: std::sync::atomic::AtomicU64,
}

impl Worker<'_> {
    fn entry(&self, j: Job) {
        let counters = self.counters;
        // Asked to stop: the files not started are left (between files,
        // so none is left half-written).
        if counters.stopping() {
            Counters::add(&self.left, 1);
            return;
        }
        if j.node.kind == NodeKind::Symlink {
            if self.overwrite == Overwrite::Never && self.target.existing(&j.path).is_some() {
                Counters::add(&counters.files_unchanged, 1);
            } else if let Err(e) = self.target.symlink(&j.path, &j.node) {
                counters.error(e.to_string());
            }
            return;
        }
        let existing = if self.overwrite == Overwrite::Always {
            None
        } else {
            self.target.existing(&j.path)
        };
        if let Some((size, mtime)) = existing {
            let skip = match self.overwrite {
                Overwrite::Never => true,
                Overwrite::IfChanged => {
                    size == j.node.size && mtime == self.target.kept_mtime(j.node.mtime_ns)
                }
                Overwrite::Always => false,
            };
            if skip {
                Counters::add(&counters.files_unchanged, 1);
                return;
            }
        }
        let first = match self.restored.plan(self.target, &j) {
            Plan::Copied => {
                Counters::add(&self.copied, 1);
                Counters::add(&counters.files, 1);
                Counters::add(&counters.bytes_read, j.node.size);
                return;
            }
            Plan::Restore(first) => first,
        };
        let r = restore_file(self.repo, self.index, self.target, &j, &self.zero_blobs);
        if let Some(k) = first {
            self.restored.finished(k, &j, r.is_ok());
        }
        match r {
            Ok(n) => {
                Counters::add(&counters.files, 1);
                Counters::add(&counters.bytes_read, n);
            }
            Err(e) => counters.error(format!("{}: {e}", j.path)),
        }
    }
}

pub fn restore(
    repo: &Repository,
    opts: &RestoreOptions,
    smb_password: Option<&str>,
    counters: &Counters,
) -> Result<RestoreSummary, RestoreError> {
    let started = std::time::Instant::now();
    let (loaded, _) = repo.load_index_recovering()?;
    for (name, err) in &loaded.failed {
        counters.error(format!("index {name}: {err}"));
    }
    let index = &loaded.index;
    let (snap_id, snap) = repo.find_snapshot(&opts.snapshot, opts.skip_damaged)?;
    let target = open_target(
        &opts.target,
        smb_password,
        opts.overwrite != Overwrite::Never,
    )?;
    let target: &dyn Target = &*target;

    // What to restore: the whole root, or one node inside it.
    let top: Vec<Node> = match opts
        .path
        .as_deref()
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
    {
        None => {
            let root = repo.load_tree(index, &snap.tree)?;
            safe_nodes(root, "", target, counters)
        }
        Some(p) => {
            let n = find_node(repo, index, &snap.tree, p)?
                .ok_or_else(|| RestoreError::NoPath(p.into()))?;
            safe_nodes(Tree { nodes: vec![n] }, "", target, counters)
        }
    };
    let worker = Worker {
        repo,
        index,
        target,
        overwrite: opts.overwrite,
        counters,
        zero_blobs: Mutex::new(HashMap::new()),
        restored: Restored::default(),
        copied: std::sync::atomic::AtomicU64::new(0),
        left: std::sync::atomic::AtomicU64::new(0),
    };
    let mut walk_cut = false;
    // Not a fresh restore (a resumed one among them): temporary files a
    // killed restore left in the directories it reaches go.
    let sweep = |dir: &str| {
        if opts.overwrite == Overwrite::Always {
            return;
        }
        match target.sweep_stale(dir) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                "{}: removed {n} temporary file(s) a killed restore left",
                if dir.is_empty() { "." } else { dir }
            ),
            Err(e) => counters.error(e.to_string()),
        }
    };
    sweep("");
    let queue: Queue<Job> = Queue::new(QUEUE_JOBS);
    let mut dirs: Vec<(String, Node)> = Vec::new();
    std::thread::scope(|s| {
        for _ in 0..target.parallelism() {
            let (worker, queue) = (&worker, &queue);
            s.spawn(move || {
                while let Some(b) = queue.take() {
                    for j in b.jobs {
                        worker.entry(j);
                    }
                    queue.done(&b.dir);
                }
            });
        }
        // The walker: directories are made here, in order, and each one's
        // files and symlinks go to the workers in batches.
        let mut stack: Vec<(String, Node)> = Vec::new();
        schedule("", top, &mut stack, &queue);
        while let Some((path, node)) = stack.pop() {
            if counters.stopping() {
                walk_cut = true;
                break;
            }
            if let Err(e) = target.mkdir(&path) {
                counters.error(e.to_string());
                continue;
            }
            Counters::add(&counters.dirs, 1);
            sweep(&path);
            match node
                .subtree
                .map(|id| repo.load_tree(index, &id))
                .transpose()
            {
                Ok(t) => {
                    let nodes = safe_nodes(t.unwrap_or_default(), &path, target, counters);
                    schedule(&path, nodes, &mut stack, &queue);
                }
                Err(e) => counters.error(format!("{path}: directory contents lost: {e}")),
            }
            dirs.push((path, node));
        }
        queue.close();
    });
    // Directory times (and xattrs) last, deepest first, so writing children
    // does not move them again.
    for (path, node) in dirs.iter().rev() {
        if let Err(e) = target.set_dir_meta(path, node) {
            counters.error(e.to_string());
        }
    }
    // Durable when the command says it is done: one sync of the target's
    // file system, not an fsync per file (see `Target::sync`).
    if let Err(e) = target.sync() {
        counters.error(e.to_string());
    }
    let report = target.report();
    let g = |c: &std::sync::atomic::AtomicU64| Counters::get(c);
    Ok(RestoreSummary {
        snapshot: snap_id,
        files: g(&counters.files),
        dirs: g(&counters.dirs),
        skipped: g(&counters.files_unchanged),
        bytes: g(&counters.bytes_read),
        errors: g(&counters.errors),
        error_messages: counters.errors(),
        security_descriptors: report.security_descriptors,
        files_copied: worker.copied.into_inner(),
        xattrs: report.xattrs,
        warnings: report.warnings.len() as u64,
        warning_messages: report.warnings,
        duration_ms: started.elapsed().as_millis() as u64,
        stopped: walk_cut || worker.left.load(std::sync::atomic::Ordering::Relaxed) > 0,
    })
}

/// Files this restore wrote, by contents (their blob ids), so a file with
/// the same contents is copied on the target (`copy_file_range`) instead
/// of every blob being read, decrypted and decompressed again. Duplicate
/// files are common (the same documentation or library twice); restic
/// gets the same effect by writing each blob it decodes to every file
/// that uses it.
#[derive(Default)]
struct Restored {
    by_content: Mutex<HashMap<[u8; 32], Original>>,
    done: std::sync::Condvar,
}

enum Original {
    /// A worker is restoring it now (so it finishes without waiting for
    /// anything else: waiting for it cannot deadlock).
    Running,
    Done(String),
}

/// What a worker does with a file.
enum Plan {
    /// Restore it from the repository; `Some(key)`: it is the first with
    /// these contents, to be registered when done.
    Restore(Option<[u8; 32]>),
    Copied,
}

impl Restored {
    /// One key per distinct content list: the id itself for one blob.
    fn key(ids: &[BlobId]) -> Option<[u8; 32]> {
        use sha2::{Digest, Sha256};
        match ids {
            [] => None,
            [one] => Some(one.0),
            many => {
                let mut h = Sha256::new();
                for id in many {
                    h.update(id.0);
                }
                Some(h.finalize().into())
            }
        }
    }

    /// Copies `j` from a restored file with its contents if there is one
    /// (waiting if one is being restored right now), else says to restore it.
    fn plan(&self, target: &dyn Target, j: &Job) -> Plan {
        let Some(k) = Self::key(&j.node.content) else {
            return Plan::Restore(None);
        };
        let Ok(mut m) = self.by_content.lock() else {
            return Plan::Restore(None);
        };
        loop {
            match m.get(&k) {
                None => {
                    m.insert(k, Original::Running);
                    return Plan::Restore(Some(k));
                }
                Some(Original::Running) => match self.done.wait(m) {
                    Ok(g) => m = g,
                    Err(_) => return Plan::Restore(None),
                },
                Some(Original::Done(from)) => {
                    let from = from.clone();
                    drop(m);
                    return match target.copy_restored(&from, &j.path, &j.node) {
                        Ok(true) => Plan::Copied,
                        _ => Plan::Restore(None),
                    };
                }
            }
        }
    }

    /// The first file with contents `k` is done (`ok`: restored, so later
    /// ones may copy it; else the next one restores from the repository).
    fn finished(&self, k: [u8; 32], j: &Job, ok: bool) {
        if let Ok(mut m) = self.by_content.lock() {
            if ok {
                m.insert(k, Original::Done(j.path.clone()));
            } else {
                m.remove(&k);
            }
        }
        self.done.notify_all();
    }
}

fn restore_file(
    repo: &Repository,
    index: &MasterIndex,
    target: &dyn Target,
    j: &Job,
    zero_blobs: &Mutex<HashMap<BlobId, u64>>,
) -> Result<u64, String> {
    // Check every blob is known before touching the target file.
    if let Some(id) = j.node.content.iter().find(|id| !index.contains(id)) {
        return Err(format!("blob {id} is missing from the repository"));
    }
    let mut sink = target
        .create(&j.path, j.node.size)
        .map_err(|e| e.to_string())?;
    let mut n = 0u64;
    for id in &j.node.content {
        let known_zero = zero_blobs.lock().ok().and_then(|z| z.get(id).copied());
        if let Some(len) = known_zero {
            sink.zeros(len).map_err(|e| e.to_string())?;
            n += len;
            continue;
        }
        let data = repo.read_blob(index, id).map_err(|e| e.to_string())?;
        if data.iter().all(|b| *b == 0) {
            if let Ok(mut z) = zero_blobs.lock() {
                z.insert(*id, data.len() as u64);
            }
            sink.zeros(data.len() as u64).map_err(|e| e.to_string())?;
        } else {
            sink.write(&data).map_err(|e| e.to_string())?;
        }
        n += data.len() as u64;
    }
    sink.finish(&j.node).map_err(|e| e.to_string())?;
    Ok(n)
}

/// Walks a tree depth-first, calling `f(path, node)` for every node.
pub fn walk(
    repo: &Repository,
    index: &MasterIndex,
    tree: &Tree,
    base: &str,
    f: &mut dyn FnMut(&str, &Node),
) -> Result<(), RepoError> {
    for n in &tree.nodes {
        let p = join(base, &n.name);
        f(&p, n);
        if let Some(id) = n.subtree {
            let t = repo.load_tree(index, &id)?;
            walk(repo, index, &t, &p, f)?;
        }
    }
    Ok(())
}
