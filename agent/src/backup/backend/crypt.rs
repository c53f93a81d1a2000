//! Encryption as a decorator: [`CryptBackend`] wraps any backend and stores
//! whole-file objects (snapshots, index files) encrypted under the master
//! key, named by the SHA-256 of their ciphertext. Packs are encrypted blob by
//! blob in the backup pipeline instead, so they pass through unchanged.

use std::sync::Arc;

use levee_proto::repo::crypto::file_id;
use levee_proto::repo::{MasterKey, PackId};

use super::{BackendError, FileKind, ReadBackend, WriteBackend};

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{kind:?} {name}: contents do not match the file's name (corrupted)")]
    HashMismatch { kind: FileKind, name: String },
    #[error("{kind:?} {name}: cannot decrypt (corrupted or wrong key)")]
    Decrypt { kind: FileKind, name: String },
}

pub struct CryptBackend<B> {
    inner: Arc<B>,
    key: MasterKey,
}

impl<B> Clone for CryptBackend<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            key: self.key.clone(),
        }
    }
}

impl<B: WriteBackend> CryptBackend<B> {
    pub fn new(inner: Arc<B>, key: MasterKey) -> Self {
        Self { inner, key }
    }

    pub fn key(&self) -> &MasterKey {
        &self.key
    }

    pub fn inner(&self) -> &Arc<B> {
        &self.inner
    }

    /// Encrypts and stores `plaintext` durably; returns its id.
    pub fn save(&self, kind: FileKind, plaintext: &[u8]) -> Result<PackId, CryptError> {
        let ct = self.key.encrypt(plaintext);
        let id = file_id(&ct);
        self.inner.write(kind, &id.to_hex(), &ct)?;
        Ok(id)
    }

    /// Loads, verifies against its name, and decrypts one object.
    pub fn load(&self, kind: FileKind, name: &str) -> Result<Vec<u8>, CryptError> {
        let ct = self.inner.read(kind, name)?;
        if file_id(&ct).to_hex() != name {
            return Err(CryptError::HashMismatch {
                kind,
                name: name.into(),
            });
        }
        self.key.decrypt(&ct).map_err(|_| CryptError::Decrypt {
            kind,
            name: name.into(),
        })
    }
}

impl<B: ReadBackend> ReadBackend for CryptBackend<B> {
    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>, BackendError> {
        self.inner.list(kind)
    }
    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>, BackendError> {
        self.inner.read(kind, name)
    }
    fn read_at(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, BackendError> {
        self.inner.read_at(kind, name, offset, len)
    }
    fn size(&self, kind: FileKind, name: &str) -> Result<u64, BackendError> {
        self.inner.size(kind, name)
    }
}

impl<B: WriteBackend> WriteBackend for CryptBackend<B> {
    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<(), BackendError> {
        self.inner.write(kind, name, data)
    }
    fn remove(&self, kind: FileKind, name: &str) -> Result<(), BackendError> {
        self.inner.remove(kind, name)
    }
}
