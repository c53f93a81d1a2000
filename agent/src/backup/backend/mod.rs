//! Where repository files live. [`ReadBackend`]/[`WriteBackend`] move whole
//! files (and ranges of packs) by kind and name; [`local::LocalBackend`] is a
//! directory on disk. Encryption is a decorator over the traits
//! ([`crypt::CryptBackend`]), so the offsite replication can move ciphertext
//! with the same interface.

pub mod crypt;
pub mod local;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: not found")]
    NotFound(PathBuf),
    /// A pack that is not here yet (a repository taken over from an
    /// offsite copy, `docs/OFFSITE.md`) and that no target gave intact.
    #[error("pack {name} is not here yet and could not be fetched: {why}")]
    Unfetched { name: String, why: String },
    #[error("{kind:?} {name}: {what}")]
    Invalid {
        kind: FileKind,
        name: String,
        what: String,
    },
}

impl BackendError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            BackendError::NotFound(path)
        } else {
            BackendError::Io { path, source }
        }
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound(_))
    }
}

/// The kinds of file in a repository, each in its own directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Config,
    Key,
    Snapshot,
    Index,
    Pack,
    Lock,
    /// Prune's list of packs waiting for their deletion time fence.
    PruneState,
    /// The offsite targets that still hold packs not yet here (a
    /// repository taken over from an offsite copy).
    Unfetched,
}

/// Where packs that are not here come from: a repository taken over from
/// an offsite copy opens before its packs arrive, and a read of a missing
/// pack asks this (`crate::replicate::ondemand`).
pub trait PackSource: Send + Sync {
    /// The whole pack. The backend checks it against its name before
    /// keeping it; an error names the pack and every target's reason.
    fn fetch(&self, name: &str) -> Result<Vec<u8>, String>;
}

pub trait ReadBackend: Send + Sync {
    /// Names and sizes of all files of a kind (finished files only).
    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>, BackendError>;
    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>, BackendError>;
    fn read_at(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, BackendError>;
    fn size(&self, kind: FileKind, name: &str) -> Result<u64, BackendError>;
}

pub trait WriteBackend: ReadBackend {
    /// Writes a whole file durably and atomically: after this returns the
    /// file is complete on disk under its name, and a crash at any earlier
    /// moment leaves no file of that name.
    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<(), BackendError>;
    /// Removes a file durably (the directory entry is flushed).
    fn remove(&self, kind: FileKind, name: &str) -> Result<(), BackendError>;
}
