//! Index files: which blobs live in which pack, so a backup can skip known
//! chunks and a restore can find them without reading pack headers.
//!
//! Plaintext (encrypted as a whole): magic "LVIX", version u8, pack count
//! u32 LE, then per pack: pack id [32], blob count u32 LE, and that many
//! blob entries as in the pack header of the same version (48 bytes; 46 in
//! version 1, which is still read).

use super::file_formats::{BLOB_ENTRY_LEN, INDEX_MAGIC, VERSION, VERSION_1};
use super::id::PackId;
use super::pack::{entry_len, le32, BlobEntry, PackError};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("index: bad magic")]
    BadMagic,
    #[error("index: unsupported version {0}")]
    Version(u8),
    #[error("index: truncated at byte {0}")]
    Truncated(usize),
    #[error("index: trailing garbage at byte {0}")]
    Trailing(usize),
    #[error("index: pack {0}: {1}")]
    Entry(usize, PackError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPack {
    pub id: PackId,
    pub blobs: Vec<BlobEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFile {
    pub packs: Vec<IndexPack>,
}

impl IndexFile {
    pub fn to_bytes(&self) -> Vec<u8> {
        let n: usize = self
            .packs
            .iter()
            .map(|p| 36 + p.blobs.len() * BLOB_ENTRY_LEN)
            .sum();
        let mut out = Vec::with_capacity(9 + n);
        out.extend_from_slice(&INDEX_MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            out.extend_from_slice(&p.id.0);
            out.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
            for b in &p.blobs {
                b.write_to(&mut out);
            }
        }
        out
    }

    pub fn parse(b: &[u8]) -> Result<Self, IndexError> {
        if b.len() < 9 {
            return Err(IndexError::Truncated(b.len()));
        }
        if b[..4] != INDEX_MAGIC {
            return Err(IndexError::BadMagic);
        }
        let version = b[4];
        if version != VERSION && version != VERSION_1 {
            return Err(IndexError::Version(version));
        }
        let elen = entry_len(version);
        let count = le32(&b[5..9]) as usize;
        let mut pos = 9;
        // Capacity from the data actually present, not from the claimed count.
        let mut packs = Vec::with_capacity(count.min(b.len() / 36));
        for n in 0..count {
            if b.len() < pos + 36 {
                return Err(IndexError::Truncated(b.len()));
            }
            let mut id = [0u8; 32];
            id.copy_from_slice(&b[pos..pos + 32]);
            let nb = le32(&b[pos + 32..pos + 36]) as usize;
            pos += 36;
            let need = nb.checked_mul(elen).ok_or(IndexError::Truncated(b.len()))?;
            if b.len() - pos < need {
                return Err(IndexError::Truncated(b.len()));
            }
            let blobs = b[pos..pos + need]
                .chunks_exact(elen)
                .enumerate()
                .map(|(i, e)| BlobEntry::parse(i, e, version))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| IndexError::Entry(n, e))?;
            pos += need;
            packs.push(IndexPack {
                id: PackId(id),
                blobs,
            });
        }
        if pos != b.len() {
            return Err(IndexError::Trailing(pos));
        }
        Ok(Self { packs })
    }
}
