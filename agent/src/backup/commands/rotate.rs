//! `key rotate` and `prune --rewrite`: new master keys after a leaked
//! secret, and the old data re-encrypted under them.
//!
//! `key rotate` makes a new master key (encryption and MAC key, so also a
//! new chunker table) for everything written from then on. The config,
//! every index file and every snapshot file are re-encrypted under it at
//! once (they are small); the old key goes, encrypted under the new one,
//! into the config's `retired_keys`, which only read blobs and pack headers
//! written before. All old key slots are removed: they wrap the old key, so
//! a copy of one opens old packs only, never the config, an index or a
//! snapshot, nor anything written after the rotation.
//!
//! `prune --rewrite` then re-encrypts the old data: every snapshot's trees
//! and blobs that the current key did not write are decoded and written
//! again (new ids under the new MAC key, new packs), the snapshots replaced,
//! and the prune that follows repacks every pack with a dead blob, so the
//! old packs leave through the usual time fence. A later `prune --rewrite`
//! that finds no backup running, nothing waiting for the fence and every
//! pack's header under the current key drops the retired keys.
//!
//! Why `prune --rewrite` and not a background task: it runs under the
//! prune lock with prune's fence (the only safe way to delete the old
//! packs), the operator sees when the old key stops mattering, and an
//! appliance that rewrites its whole repository unasked would compete with
//! its backups for the disk for hours.

use std::collections::{HashMap, HashSet};

use levee_proto::repo::config::{RetiredKey, MAX_RETIRED_KEYS};
use levee_proto::repo::file_formats::FORMAT_2;
use levee_proto::repo::{
    BlobId, BlobKind, Cipher, KdfParams, KeySlot, MasterKey, NodeKind, PackId, Tree,
};
use serde::Serialize;

use crate::backup::backend::crypt::CryptBackend;
use crate::backup::backend::{FileKind, ReadBackend, WriteBackend};
use crate::backup::blob::{self, RawBlob};
use crate::backup::commands::backup::{encode_frame, FRAME_BLOB_MAX, FRAME_TARGET};
use crate::backup::index::MasterIndex;
use crate::backup::lock::{list_locks, Lock};
use crate::backup::packer::Packer;
use crate::backup::repository::{RepoError, Repository};
use crate::util::now_ns;

#[derive(Debug, Clone, Default, Serialize)]
pub struct RotateReport {
    /// The one key slot left: for the secret given to the rotation.
    pub new_slot: String,
    /// Slots removed (they wrap the old key); add other secrets again
    /// with `key add`.
    pub removed_slots: Vec<String>,
    pub index_files: usize,
    /// Old snapshot id -> new id (the file is re-encrypted, so its name,
    /// the SHA-256 of its bytes, changes).
    pub snapshots: Vec<(String, String)>,
    /// Keys retired so far whose data `prune --rewrite` has yet to re-encrypt.
    pub retired_keys: usize,
    pub duration_ms: u64,
}

/// Refuses unless this process's prune lock is the only live lock: a
/// backup running under the old key would write a snapshot nobody can read.
fn only_lock(repo: &Repository, lock: &Lock, what: &str) -> Result<(), RepoError> {
    let now = now_ns();
    let (locks, _) = list_locks(repo.local(), repo.key())?;
    if let Some((_, l)) = locks
        .iter()
        .find(|(n, l)| n != lock.name() && l.is_alive(now))
    {
        return Err(RepoError::Busy(format!(
            "a {} is running (pid {} on {:?}); {what} when it is done",
            l.kind, l.pid, l.hostname
        )));
    }
    Ok(())
}

/// `key rotate`: a new master key for new data; the one slot left wraps
/// it for `secret`.
pub fn rotate(
    repo: &Repository,
    secret: &[u8],
    kdf: KdfParams,
    kind: &str,
    label: &str,
) -> Result<RotateReport, RepoError> {
    let started = std::time::Instant::now();
    if repo.config.version < FORMAT_2 {
        return Err(RepoError::Config(
            "key rotate needs a format 2 repository (a format 1 config is plaintext and cannot \
             hold the retired key): init a new repository, back up into it and retire this one"
                .into(),
        ));
    }
    if repo.config.retired_keys.len() >= MAX_RETIRED_KEYS {
        return Err(RepoError::Config(format!(
            "{MAX_RETIRED_KEYS} rotations are waiting for `prune --rewrite`; run it first"
        )));
    }
    let lock = Lock::acquire(repo.local().clone(), repo.key(), "prune")?;
    only_lock(repo, &lock, "rotate")?;
    let old = repo.key();
    let new = MasterKey::generate().with_cipher(Cipher::Xaes256Gcm);
    // The slot is made first: a refused secret or KDF cost changes nothing.
    let slot = KeySlot::create(
        &new,
        secret,
        kdf,
        kind,
        label,
        now_ns() / 1_000_000_000,
        repo.config.version,
    )
    .map_err(|e| RepoError::KeySlot("new".into(), e))?;
    let mut config = repo.config.clone();
    config.retired_keys.insert(0, RetiredKey(old.to_bytes()));
    let config_bytes = config.to_bytes(&new)?;
    let new_be = CryptBackend::new(repo.local().clone(), new.clone());
    let mut r = RotateReport::default();

    // New copies first; the old files go only once the config names the new
    // key. Until then the new files are unreadable leftovers.
    let mut written: Vec<(FileKind, String)> = Vec::new();
    let mut old_files: Vec<(FileKind, String)> = Vec::new();
    let copied = (|| -> Result<(), RepoError> {
        for kind in [FileKind::Index, FileKind::Snapshot] {
            for (name, _) in repo.be.list(kind)? {
                // An unreadable one stays as it is: `check` names it.
                let Ok(plain) = repo.be.load(kind, &name) else {
                    tracing::warn!(file = %name, "unreadable {kind:?} file left as it is");
                    continue;
                };
                let id = new_be.save(kind, &plain)?;
                written.push((kind, id.to_hex()));
                if kind == FileKind::Snapshot {
                    r.snapshots.push((name.clone(), id.to_hex()));
                } else {
                    r.index_files += 1;
                }
                old_files.push((kind, name));
            }
        }
        // A backup that started meanwhile would commit under the old key.
        only_lock(repo, &lock, "rotate")
    })();
    if let Err(e) = copied {
        for (kind, name) in &written {
            let _ = repo.local().remove(*kind, name);
        }
        return Err(e);
    }
    let new_slot = super::super::repository::write_slot(repo.local(), &slot)?;
    repo.local().write(FileKind::Config, "", &config_bytes)?;
    // From here the repository is on the new key.
    for (kind, name) in &old_files {
        repo.local().remove(*kind, name)?;
    }
    for (name, _) in repo.local().list(FileKind::Key)? {
        if name != new_slot {
            repo.local().remove(FileKind::Key, &name)?;
            r.removed_slots.push(name);
        }
    }
    drop(lock);
    r.new_slot = new_slot;
    r.retired_keys = config.retired_keys.len();
    r.duration_ms = started.elapsed().as_millis() as u64;
    Ok(r)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RewriteReport {
    /// Snapshots whose trees or blobs were under a retired key: old id ->
    /// new id.
    pub snapshots_rewritten: Vec<(String, String)>,
    pub blobs_rewritten: u64,
    pub bytes_rewritten: u64,
    /// Blobs read and found already under the current key.
    pub blobs_current: u64,
    /// Retired keys left in the config after this run (0: the old key
    /// opens nothing this repository still uses).
    pub retired_keys_left: usize,
}

/// Re-encrypts under the current key every tree and blob that a snapshot
/// uses and a retired key wrote; replaces those snapshots. Runs inside
/// `prune`, under its lock, before prune reads the snapshots.
pub fn rewrite(
    repo: &Repository,
    done: &mut std::collections::BTreeSet<String>,
    r: &mut RewriteReport,
) -> Result<(), RepoError> {
    if repo.key().retired().is_empty() {
        return Ok(());
    }
    let (loaded, _) = repo.load_index_recovering()?;
    let (snaps, bad) = repo.snapshots()?;
    if !bad.is_empty() {
        return Err(crate::backup::repository::damaged(&bad));
    }
    let mut w = Rewriter {
        repo,
        index: &loaded.index,
        packer: Packer::new(repo.be.clone(), repo.pads_packs()),
        map: HashMap::new(),
        written: HashSet::new(),
        frame: Vec::new(),
        frame_bytes: 0,
        recent: std::collections::VecDeque::new(),
        z: blob::compressor(),
        r,
    };
    let mut replace = Vec::new();
    let mut current = Vec::new();
    for (name, s) in snaps {
        if done.contains(&name) {
            continue;
        }
        let root = w.tree(s.tree)?;
        if root != s.tree {
            let mut s = s;
            s.tree = root;
            replace.push((name, s));
        } else {
            current.push(name);
        }
    }
    w.flush_frame()?;
    // Blobs and trees durable (packed and indexed) before a snapshot names them.
    w.packer.finish()?;
    for (old, s) in replace {
        let new = repo.save_snapshot(&s)?;
        repo.be.remove(FileKind::Snapshot, &old)?;
        done.insert(new.to_hex());
        r.snapshots_rewritten.push((old, new.to_hex()));
    }
    done.extend(current);
    Ok(())
}

/// After a `prune --rewrite`: drops the retired keys if nothing can need
/// them any more (no other live lock, no pack waiting for the fence, every
/// pack's header under the current key). Returns how many are left.
pub fn drop_retired(
    repo: &Repository,
    own_lock: &str,
    pending_packs: usize,
) -> Result<usize, RepoError> {
    let n = repo.config.retired_keys.len();
    if n == 0 || pending_packs > 0 {
        return Ok(n);
    }
    let now = now_ns();
    let (locks, _) = list_locks(repo.local(), repo.key())?;
    if locks
        .iter()
        .any(|(name, l)| name != own_lock && l.is_alive(now))
    {
        return Ok(n);
    }
    let current = repo.key().clone().with_retired(Vec::new());
    for (name, size) in repo.be.list(FileKind::Pack)? {
        if name.parse::<PackId>().is_err() {
            continue;
        }
        let header_current = repo.read_pack_header_with(&current, &name, size).is_ok();
        if !header_current {
            return Ok(n);
        }
    }
    let mut config = repo.config.clone();
    config.retired_keys.clear();
    repo.local()
        .write(FileKind::Config, "", &config.to_bytes(repo.key())?)?;
    Ok(0)
}

/// Frames kept decoded (about 1 MiB each).
const RECENT_FRAMES: usize = 32;

/// A decoded frame or lone blob, and whether the current key opened it.
type Decoded = (Vec<u8>, bool);

struct Rewriter<'a> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    packer: Packer,
    /// Old id -> id under the current key (itself if already current).
    map: HashMap<BlobId, BlobId>,
    /// New ids queued in this run (the loaded index does not know them).
    written: HashSet<BlobId>,
    frame: Vec<RawBlob>,
    frame_bytes: usize,
    /// Recently decoded frames: a frame's members are read close together
    /// but not one after another (a backup's readers interleave files).
    recent: std::collections::VecDeque<((PackId, u32), Decoded)>,
    z: Option<zstd::bulk::Compressor<'static>>,
    r: &'a mut RewriteReport,
}

impl Rewriter<'_> {
    /// A blob's bytes, and whether the current key wrote it (opened it and
    /// its id is under the current MAC key).
    fn read(&mut self, id: &BlobId) -> Result<(Vec<u8>, bool), RepoError> {
        let loc = self.index.get(id).ok_or(RepoError::MissingBlob(*id))?;
        let key = self.repo.key();
        let read = || {
            self.repo.be.read_at(
                FileKind::Pack,
                &loc.pack.to_hex(),
                u64::from(loc.offset),
                loc.length as usize,
            )
        };
        if loc.member == 0 {
            // A lone blob: read once (the map remembers its new id).
            let (raw, opened_current) =
                blob::decode_frame_keyed(key, *id, loc.compression, &read()?)?;
            if !key.id_matches(&raw, id) {
                return Err(blob::BlobError::Mismatch(*id).into());
            }
            let current = opened_current && key.blob_id(&raw) == *id;
            return Ok((raw, current));
        }
        let at = (loc.pack, loc.offset);
        let pos = match self.recent.iter().position(|(a, _)| *a == at) {
            Some(p) => p,
            None => {
                let decoded = blob::decode_frame_keyed(key, *id, loc.compression, &read()?)?;
                if self.recent.len() >= RECENT_FRAMES {
                    self.recent.pop_front();
                }
                self.recent.push_back((at, decoded));
                self.recent.len() - 1
            }
        };
        let Some((_, (plain, opened_current))) = self.recent.get(pos) else {
            return Err(RepoError::MissingBlob(*id));
        };
        let raw = blob::frame_member(key, *id, plain, loc.member)?;
        let current = *opened_current && key.blob_id(&raw) == *id;
        Ok((raw, current))
    }

    fn known(&self, id: &BlobId) -> bool {
        self.index.contains(id) || self.written.contains(id)
    }

    fn data(&mut self, id: BlobId) -> Result<BlobId, RepoError> {
        if let Some(n) = self.map.get(&id) {
            return Ok(*n);
        }
        let (raw, current) = self.read(&id)?;
        let new = if current {
            self.r.blobs_current += 1;
            id
        } else {
            let new = self.repo.key().blob_id(&raw);
            if !self.known(&new) {
                self.written.insert(new);
                self.r.blobs_rewritten += 1;
                self.r.bytes_rewritten += raw.len() as u64;
                if raw.len() < FRAME_BLOB_MAX {
                    self.frame_bytes += raw.len();
                    self.frame.push(RawBlob {
                        kind: BlobKind::Data,
                        id: new,
                        data: raw,
                    });
                    if self.frame_bytes >= FRAME_TARGET
                        || self.frame.len() == levee_proto::repo::file_formats::FRAME_MAX_MEMBERS
                    {
                        self.flush_frame()?;
                    }
                } else {
                    let b =
                        blob::encode(self.repo.key(), BlobKind::Data, new, &raw, self.z.as_mut());
                    self.packer.add(b)?;
                }
            }
            new
        };
        self.map.insert(id, new);
        Ok(new)
    }

    fn flush_frame(&mut self) -> Result<(), RepoError> {
        if !self.frame.is_empty() {
            let b = encode_frame(self.repo, &mut self.frame, self.z.as_mut());
            self.frame_bytes = 0;
            self.packer.add(b)?;
        }
        Ok(())
    }

    fn tree(&mut self, id: BlobId) -> Result<BlobId, RepoError> {
        if let Some(n) = self.map.get(&id) {
            return Ok(*n);
        }
        let (raw, current) = self.read(&id)?;
        let mut tree = Tree::parse(&raw).map_err(|e| RepoError::BadTree(id, e.to_string()))?;
        let mut changed = !current;
        for n in &mut tree.nodes {
            if n.kind == NodeKind::File {
                for c in &mut n.content {
                    let new = self.data(*c)?;
                    changed |= new != *c;
                    *c = new;
                }
            }
            if let Some(st) = n.subtree {
                let new = self.tree(st)?;
                changed |= new != st;
                n.subtree = Some(new);
            }
        }
        let new = if changed {
            let bytes = tree.to_bytes();
            let new = self.repo.key().blob_id(&bytes);
            if !self.known(&new) {
                self.written.insert(new);
                self.r.blobs_rewritten += 1;
                self.r.bytes_rewritten += bytes.len() as u64;
                let b = blob::encode(self.repo.key(), BlobKind::Tree, new, &bytes, None);
                self.packer.add(b)?;
            }
            new
        } else {
            self.r.blobs_current += 1;
            id
        };
        self.map.insert(id, new);
        Ok(new)
    }
}
