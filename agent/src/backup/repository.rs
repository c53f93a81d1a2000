//! An open repository: its backend, master key and configuration, plus the
//! operations every command shares (index loading, blob and tree reads,
//! snapshot lookup, pack header recovery).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use levee_proto::repo::config::{CHUNKER_V1, CHUNKER_V2, PADDING_PADME};
use levee_proto::repo::file_formats::FORMAT_2;
use levee_proto::repo::pack::parse_trailer;
pub use levee_proto::repo::RepoConfig;
use levee_proto::repo::{
    BlobId, ConfigError, IndexFile, KdfParams, KeySlot, KeySlotError, MasterKey, PackHeader,
    PackId, Snapshot, Tree,
};
use rand::RngCore;

use crate::backup::backend::crypt::{CryptBackend, CryptError};
use crate::backup::backend::local::LocalBackend;
use crate::backup::backend::{BackendError, FileKind, ReadBackend, WriteBackend};
use crate::backup::blob::{self, BlobError};
use crate::backup::index::MasterIndex;
use crate::util::now_ns;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Crypt(#[from] CryptError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("{0}: no repository here (no config file); run `levee-agent init` first")]
    NotARepository(PathBuf),
    #[error("{0}: a repository already exists here")]
    AlreadyExists(PathBuf),
    #[error("no key slot opens with this password")]
    WrongPassword,
    #[error(
        "key slot {0} opens with this secret, but the config cannot be decrypted with its key: \
         either the key was rotated (`key rotate`) and this slot is a copy from before (use the \
         secret given at the rotation), or the config is corrupted or replaced (restore it \
         from a copy)"
    )]
    RotatedOut(String),
    #[error(
        "the repository's key was rotated while this ran (its config no longer opens with \
         the key this process holds); nothing was committed: run it again"
    )]
    KeyRotated,
    #[error("key slot {0}: {1}")]
    KeySlot(String, KeySlotError),
    #[error("config: {0}")]
    Config(String),
    #[error("config: {0}")]
    BadConfig(#[from] ConfigError),
    #[error(
        "key slot {0} belongs to a format {1} repository but the config is format {2}: \
         the config was replaced or downgraded; restore it from a copy"
    )]
    FormatMismatch(String, u8, u8),
    #[error("blob {0} is not in the index")]
    MissingBlob(BlobId),
    #[error("tree {0}: {1}")]
    BadTree(BlobId, String),
    #[error("snapshot {0}: {1}")]
    BadSnapshot(String, String),
    #[error("damaged snapshot{}: {}; it may be the newest. Forget it by id (`levee-agent forget ID`) or pass --skip-damaged to use the readable ones", if .0.len() > 1 { "s" } else { "" }, .0.join("; "))]
    Damaged(Vec<String>),
    #[error("{0}")]
    Busy(String),
    #[error("no snapshot matches {0:?}")]
    NoSnapshot(String),
    #[error("{0:?} matches more than one snapshot")]
    AmbiguousSnapshot(String),
    #[error("pack {0}: {1}")]
    BadPack(String, String),
    #[error("cannot remove the last key slot")]
    LastKey,
    #[error("no key slot {0:?}")]
    NoKey(String),
    #[error(
        "no recovery slot opens with this paper key ({0} recovery slot(s) here): it is another \
         customer's key, or one the customer has since replaced"
    )]
    NoRecoverySlot(usize),
    #[error("recovery: {0}")]
    Recovery(String),
}

pub struct Repository {
    pub be: CryptBackend<LocalBackend>,
    pub config: RepoConfig,
    pub path: PathBuf,
    frames: FrameCache,
}

/// Recently decoded frames. A restore reads the members of a frame one after
/// another, often from different threads; decoding the whole frame (up to
/// 1 MiB) again for every small file in it would cost more than the restore.
#[derive(Default)]
struct FrameCache {
    recent: Mutex<VecDeque<(FrameAt, Arc<Vec<u8>>)>>,
}

/// A frame's pack and offset.
type FrameAt = (PackId, u32);

/// Frames kept: enough for every restore thread's current frame and the
/// next, 16 MiB at most.
const FRAME_CACHE_LEN: usize = 16;

impl FrameCache {
    fn get(&self, at: &FrameAt) -> Option<Arc<Vec<u8>>> {
        let recent = self.recent.lock().ok()?;
        recent.iter().find(|(k, _)| k == at).map(|(_, f)| f.clone())
    }

    fn put(&self, at: FrameAt, frame: Arc<Vec<u8>>) {
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() >= FRAME_CACHE_LEN {
                recent.pop_front();
            }
            recent.push_back((at, frame));
        }
    }
}

impl Repository {
    /// Creates a repository (the current format) with one key slot.
    pub fn init(
        path: &Path,
        password: &[u8],
        kdf: KdfParams,
        kind: &str,
        label: &str,
    ) -> Result<Self, RepoError> {
        Self::init_format(path, password, kdf, kind, label, FORMAT_2)
    }

    /// [`init`](Self::init) in a given format. Format 1 exists only so
    /// tests can make the repositories older versions made and prove they
    /// still back up and restore.
    #[doc(hidden)]
    pub fn init_format(
        path: &Path,
        password: &[u8],
        kdf: KdfParams,
        kind: &str,
        label: &str,
        format: u8,
    ) -> Result<Self, RepoError> {
        let local = LocalBackend::new(path);
        if local.size(FileKind::Config, "").is_ok() {
            return Err(RepoError::AlreadyExists(path.into()));
        }
        let mut id = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut id);
        let v1 = format == levee_proto::repo::file_formats::FORMAT_1;
        let config = RepoConfig {
            version: format,
            id: hex::encode(id),
            created_ns: now_ns(),
            chunker: if v1 { CHUNKER_V1 } else { CHUNKER_V2 }.into(),
            chunk_min: crate::backup::chunker::MIN_SIZE,
            chunk_avg: crate::backup::chunker::AVG_SIZE,
            chunk_max: crate::backup::chunker::MAX_SIZE,
            pack_padding: if v1 { "" } else { PADDING_PADME }.into(),
            retired_keys: Vec::new(),
        };
        let key = MasterKey::generate().with_cipher(RepoConfig::cipher_of(format));
        // Checked before anything is written, so a refused secret or KDF
        // cost leaves no half-made repository behind.
        let slot = KeySlot::create(
            &key,
            password,
            kdf,
            kind,
            label,
            now_ns() / 1_000_000_000,
            format,
        )
        .map_err(|e| RepoError::KeySlot("new".into(), e))?;
        let config_bytes = config.to_bytes(&key)?;
        std::fs::create_dir_all(path).map_err(|e| BackendError::io(path, e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let private = std::fs::Permissions::from_mode(crate::backup::backend::local::DIR_MODE);
            std::fs::set_permissions(path, private).map_err(|e| BackendError::io(path, e))?;
        }
        local.create_layout()?;
        write_slot(&local, &slot)?;
        // The config is written last: its presence means init completed.
        local.write(FileKind::Config, "", &config_bytes)?;
        Ok(Self {
            be: CryptBackend::new(Arc::new(local), key),
            config,
            path: path.into(),
            frames: FrameCache::default(),
        })
    }

    pub fn open(path: &Path, password: &[u8]) -> Result<Self, RepoError> {
        let local = LocalBackend::new(path);
        let cfg = match local.read(FileKind::Config, "") {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Err(RepoError::NotARepository(path.into())),
            Err(e) => return Err(e.into()),
        };
        let format = RepoConfig::format_of(&cfg)?;
        if format == levee_proto::repo::file_formats::FORMAT_1 {
            // A format 1 config is plaintext: check it before any KDF runs.
            RepoConfig::parse(&cfg, &MasterKey::generate())?;
        }
        // A slot that opens but whose key no longer decrypts the config
        // belongs to a key that `key rotate` replaced (a kept copy of it).
        let mut rotated_out = None;
        for (name, _) in local.list(FileKind::Key)? {
            let Ok(slot) = local
                .read(FileKind::Key, &name)
                .map_err(RepoError::from)
                .and_then(|b| KeySlot::parse(&b).map_err(|e| RepoError::KeySlot(name.clone(), e)))
            else {
                tracing::warn!(slot = %name, "unreadable key slot skipped");
                continue;
            };
            match slot.open(password) {
                Ok(key) => {
                    // The slot's format is authenticated (version 2 slots):
                    // a format 2 repository whose config was swapped for a
                    // plaintext format 1 one is refused, not downgraded.
                    if slot.format != format {
                        return Err(RepoError::FormatMismatch(name, slot.format, format));
                    }
                    let key = key.with_cipher(RepoConfig::cipher_of(format));
                    let config = match RepoConfig::parse(&cfg, &key) {
                        Err(ConfigError::Decrypt) => {
                            rotated_out = Some(name);
                            continue;
                        }
                        r => r?,
                    };
                    let retired = config
                        .retired_keys
                        .iter()
                        .map(|k| MasterKey::from_bytes(&k.0))
                        .collect();
                    let key = key.with_retired(retired);
                    return Ok(Self {
                        be: CryptBackend::new(Arc::new(local), key),
                        config,
                        path: path.into(),
                        frames: FrameCache::default(),
                    });
                }
                Err(KeySlotError::WrongPassword) => continue,
                Err(e) => tracing::warn!(slot = %name, error = %e, "key slot skipped"),
            }
        }
        Err(match rotated_out {
            Some(slot) => RepoError::RotatedOut(slot),
            None => RepoError::WrongPassword,
        })
    }

    pub fn key(&self) -> &MasterKey {
        self.be.key()
    }

    /// Whether the config on disk still opens with this process's key: a
    /// backup that opened the repository before a `key rotate` must not
    /// commit a snapshot under the old key (the rotation re-encrypted
    /// snapshots and index files and will not see it).
    pub fn key_is_current(&self) -> Result<(), RepoError> {
        if self.config.version < FORMAT_2 {
            return Ok(());
        }
        let cfg = self.local().read(FileKind::Config, "")?;
        match RepoConfig::parse(&cfg, self.key()) {
            Ok(_) => Ok(()),
            Err(ConfigError::Decrypt) => Err(RepoError::KeyRotated),
            Err(e) => Err(e.into()),
        }
    }

    pub fn local(&self) -> &Arc<LocalBackend> {
        self.be.inner()
    }

    /// The chunker the config names: format 2's keyed gear table, or
    /// format 1's seeded one (old repositories keep their boundaries).
    pub fn chunker(&self) -> crate::backup::chunker::Chunker {
        let gear = if self.config.chunker == CHUNKER_V2 {
            self.key().gear_table()
        } else {
            crate::backup::chunker::seeded_gear(self.key().chunker_seed())
        };
        crate::backup::chunker::Chunker::with_table(
            gear,
            self.config.chunk_min,
            self.config.chunk_avg,
            self.config.chunk_max,
        )
    }

    /// Whether packs are padded (format 2).
    pub fn pads_packs(&self) -> bool {
        !self.config.pack_padding.is_empty()
    }

    /// Loads every index file. Unreadable ones are returned, not fatal, so
    /// `check` can name them and restores can still use the rest.
    pub fn load_index(&self) -> Result<LoadedIndex, RepoError> {
        let files = self.be.list(FileKind::Index)?;
        let mut index = MasterIndex::new();
        index.reserve(files.iter().map(|(_, s)| (*s as usize) / 46).sum());
        let mut names = Vec::new();
        let mut failed = Vec::new();
        for (name, _) in files {
            match self
                .be
                .load(FileKind::Index, &name)
                .map_err(RepoError::from)
                .and_then(|b| {
                    IndexFile::parse(&b)
                        .map_err(|e| RepoError::BadPack(name.clone(), e.to_string()))
                }) {
                Ok(f) => {
                    index.add_file(&f);
                    names.push(name);
                }
                Err(e) => failed.push((name, e.to_string())),
            }
        }
        index.finish();
        Ok(LoadedIndex {
            index,
            names,
            failed,
        })
    }

    /// [`load_index`](Self::load_index), plus the headers of packs that no
    /// readable index names (a lost index file, an interrupted backup), in
    /// memory only: restores and listings then still find every blob.
    pub fn load_index_recovering(&self) -> Result<(LoadedIndex, Vec<String>), RepoError> {
        let mut loaded = self.load_index()?;
        let mut recovered = Vec::new();
        for (name, size) in self.be.list(FileKind::Pack)? {
            let Ok(id) = name.parse::<PackId>() else {
                continue;
            };
            if loaded.index.has_pack(&id) {
                continue;
            }
            if let Ok(h) = self.read_pack_header(&name, size) {
                loaded.index.add_pack(id, &h.blobs);
                recovered.push(name);
            }
        }
        if !recovered.is_empty() {
            loaded.index.finish();
        }
        Ok((loaded, recovered))
    }

    /// Reads, decrypts, decompresses and verifies one blob.
    pub fn read_blob(&self, index: &MasterIndex, id: &BlobId) -> Result<Vec<u8>, RepoError> {
        let loc = index.get(id).ok_or(RepoError::MissingBlob(*id))?;
        let read = || {
            self.be.read_at(
                FileKind::Pack,
                &loc.pack.to_hex(),
                u64::from(loc.offset),
                loc.length as usize,
            )
        };
        if loc.member == 0 {
            return Ok(blob::decode_owned(
                self.key(),
                *id,
                loc.compression,
                0,
                read()?,
            )?);
        }
        let at = (loc.pack, loc.offset);
        let frame = match self.frames.get(&at) {
            Some(f) => f,
            None => {
                let f = Arc::new(blob::decode_frame_owned(
                    self.key(),
                    *id,
                    loc.compression,
                    read()?,
                )?);
                self.frames.put(at, f.clone());
                f
            }
        };
        Ok(blob::frame_member(self.key(), *id, &frame, loc.member)?)
    }

    pub fn load_tree(&self, index: &MasterIndex, id: &BlobId) -> Result<Tree, RepoError> {
        let b = self.read_blob(index, id)?;
        Tree::parse(&b).map_err(|e| RepoError::BadTree(*id, e.to_string()))
    }

    pub fn save_snapshot(&self, s: &Snapshot) -> Result<PackId, RepoError> {
        Ok(self.be.save(FileKind::Snapshot, &s.to_bytes())?)
    }

    pub fn load_snapshot(&self, name: &str) -> Result<Snapshot, RepoError> {
        let b = self.be.load(FileKind::Snapshot, name)?;
        Snapshot::parse(&b).map_err(|e| RepoError::BadSnapshot(name.into(), e.to_string()))
    }

    /// All readable snapshots, oldest first, and the unreadable ones.
    pub fn snapshots(&self) -> Result<(Vec<NamedSnapshot>, Vec<Unreadable>), RepoError> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for (name, _) in self.be.list(FileKind::Snapshot)? {
            match self.load_snapshot(&name) {
                Ok(s) => ok.push((name, s)),
                Err(e) => bad.push((name, e.to_string())),
            }
        }
        ok.sort_by(|a, b| a.1.time_ns.cmp(&b.1.time_ns).then(a.0.cmp(&b.0)));
        Ok((ok, bad))
    }

    /// `latest`, a full id, or a unique id prefix. `latest` is refused
    /// while any snapshot is damaged (the damaged one may be the newest, and
    /// restoring an older one silently is worse than stopping), unless
    /// `skip_damaged`.
    pub fn find_snapshot(
        &self,
        spec: &str,
        skip_damaged: bool,
    ) -> Result<(String, Snapshot), RepoError> {
        if spec == "latest" {
            let (mut all, bad) = self.snapshots()?;
            if !bad.is_empty() && !skip_damaged {
                return Err(damaged(&bad));
            }
            return all.pop().ok_or_else(|| RepoError::NoSnapshot(spec.into()));
        }
        let name = self.snapshot_name(spec)?;
        let s = self.load_snapshot(&name)?;
        Ok((name, s))
    }

    /// The snapshot file a full id or unique prefix names, without reading
    /// it (so a snapshot that cannot be decrypted can still be forgotten).
    pub fn snapshot_name(&self, spec: &str) -> Result<String, RepoError> {
        let mut names: Vec<String> = self
            .be
            .list(FileKind::Snapshot)?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.starts_with(spec))
            .collect();
        match names.len() {
            0 => Err(RepoError::NoSnapshot(spec.into())),
            1 => Ok(names.remove(0)),
            _ => Err(RepoError::AmbiguousSnapshot(spec.into())),
        }
    }

    /// Reads a pack's header from its end (no index needed).
    pub fn read_pack_header(&self, name: &str, size: u64) -> Result<PackHeader, RepoError> {
        self.read_pack_header_with(self.key(), name, size)
    }

    /// [`read_pack_header`](Self::read_pack_header) with `key` (and its
    /// retired keys, if it has any).
    pub fn read_pack_header_with(
        &self,
        key: &MasterKey,
        name: &str,
        size: u64,
    ) -> Result<PackHeader, RepoError> {
        let bad = |w: String| RepoError::BadPack(name.into(), w);
        if size < 8 {
            return Err(bad("too short".into()));
        }
        let t = self.be.read_at(FileKind::Pack, name, size - 8, 8)?;
        let (start, len) = parse_trailer(&t, size).map_err(|e| bad(e.to_string()))?;
        let hb = self.be.read_at(FileKind::Pack, name, start, len as usize)?;
        let (plain, _) = key
            .decrypt_pack_data(&hb)
            .map_err(|_| bad("header cannot be decrypted".into()))?;
        let h = PackHeader::parse(&plain).map_err(|e| bad(e.to_string()))?;
        h.check_bounds(start).map_err(|e| bad(e.to_string()))?;
        Ok(h)
    }

    pub fn key_slots(&self) -> Result<Vec<(String, KeySlot)>, RepoError> {
        let mut out = Vec::new();
        for (name, _) in self.local().list(FileKind::Key)? {
            let b = self.local().read(FileKind::Key, &name)?;
            out.push((
                name.clone(),
                KeySlot::parse(&b).map_err(|e| RepoError::KeySlot(name, e))?,
            ));
        }
        Ok(out)
    }

    pub fn add_key(
        &self,
        password: &[u8],
        kdf: KdfParams,
        kind: &str,
        label: &str,
    ) -> Result<String, RepoError> {
        let slot = KeySlot::create(
            self.key(),
            password,
            kdf,
            kind,
            label,
            now_ns() / 1_000_000_000,
            self.config.version,
        )
        .map_err(|e| RepoError::KeySlot("new".into(), e))?;
        write_slot(self.local(), &slot)
    }

    pub fn remove_key(&self, prefix: &str) -> Result<String, RepoError> {
        let slots = self.key_slots()?;
        let m: Vec<_> = slots
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .collect();
        if m.len() != 1 {
            return Err(RepoError::NoKey(prefix.into()));
        }
        if slots.len() == 1 {
            return Err(RepoError::LastKey);
        }
        self.local().remove(FileKind::Key, &m[0].0)?;
        Ok(m[0].0.clone())
    }
}

pub(crate) fn write_slot(local: &LocalBackend, slot: &KeySlot) -> Result<String, RepoError> {
    let bytes = slot.to_bytes();
    let name = levee_proto::repo::crypto::file_id(&bytes).to_hex();
    local.write(FileKind::Key, &name, &bytes)?;
    Ok(name)
}

/// A file that could not be read, and why.
pub type Unreadable = (String, String);
/// A snapshot and its file name (its id).
pub type NamedSnapshot = (String, Snapshot);

/// The error naming every damaged snapshot (id and why).
pub fn damaged(bad: &[Unreadable]) -> RepoError {
    RepoError::Damaged(bad.iter().map(|(n, e)| format!("{n} ({e})")).collect())
}

pub struct LoadedIndex {
    pub index: MasterIndex,
    /// Index files that were read (prune replaces exactly these).
    pub names: Vec<String>,
    pub failed: Vec<(String, String)>,
}
