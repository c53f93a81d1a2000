//! Collects encoded blobs into pack files of ~16 MiB and writes an index
//! file for every batch of finished packs. A pack is written whole and
//! durably before any index names it, and an index file before any snapshot
//! can reference its blobs (the backup writes the snapshot last).

use levee_proto::repo::crypto::file_id;
use levee_proto::repo::pack::trailer;
use levee_proto::repo::{BlobEntry, IndexFile, IndexPack, PackHeader};

use crate::backend::crypt::{CryptBackend, CryptError};
use crate::backend::local::LocalBackend;
use crate::backend::{FileKind, WriteBackend};
use crate::blob::EncodedBlob;

pub const PACK_TARGET: usize = 16 * 1024 * 1024;
/// Index files cover at most this many packs, so an interrupted run loses
/// little index work (its packs are recovered from their headers anyway).
const PACKS_PER_INDEX: usize = 64;

#[derive(Debug, Default, Clone, Copy)]
pub struct PackerStats {
    pub packs: u64,
    pub blobs: u64,
    pub stored_bytes: u64,
    pub index_files: u64,
}

pub struct Packer {
    be: CryptBackend<LocalBackend>,
    buf: Vec<u8>,
    entries: Vec<BlobEntry>,
    done: Vec<IndexPack>,
    pub stats: PackerStats,
    /// Packs written, for callers that add them to an in-memory index.
    pub written: Vec<IndexPack>,
    keep_written: bool,
}

impl Packer {
    pub fn new(be: CryptBackend<LocalBackend>, keep_written: bool) -> Self {
        Self {
            be,
            buf: Vec::with_capacity(PACK_TARGET + 1024 * 1024),
            entries: Vec::new(),
            done: Vec::new(),
            stats: PackerStats::default(),
            written: Vec::new(),
            keep_written,
        }
    }

    pub fn add(&mut self, b: EncodedBlob) -> Result<(), CryptError> {
        self.entries.push(BlobEntry {
            kind: b.kind,
            compression: b.compression,
            id: b.id,
            offset: self.buf.len() as u32,
            length: b.data.len() as u32,
            raw_length: b.raw_length,
        });
        self.buf.extend_from_slice(&b.data);
        self.stats.blobs += 1;
        if self.buf.len() >= PACK_TARGET {
            self.flush_pack()?;
        }
        Ok(())
    }

    fn flush_pack(&mut self) -> Result<(), CryptError> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let blobs = std::mem::take(&mut self.entries);
        let header = self.be.key().encrypt(
            &PackHeader {
                blobs: blobs.clone(),
            }
            .to_bytes(),
        );
        self.buf.extend_from_slice(&header);
        self.buf.extend_from_slice(&trailer(header.len() as u32));
        let id = file_id(&self.buf);
        self.be
            .write(FileKind::Pack, &id.to_hex(), &self.buf)
            .map_err(CryptError::from)?;
        self.stats.packs += 1;
        self.stats.stored_bytes += self.buf.len() as u64;
        self.buf.clear();
        let ip = IndexPack { id, blobs };
        if self.keep_written {
            self.written.push(ip.clone());
        }
        self.done.push(ip);
        if self.done.len() >= PACKS_PER_INDEX {
            self.write_index()?;
        }
        Ok(())
    }

    fn write_index(&mut self) -> Result<(), CryptError> {
        if self.done.is_empty() {
            return Ok(());
        }
        let f = IndexFile {
            packs: std::mem::take(&mut self.done),
        };
        self.be.save(FileKind::Index, &f.to_bytes())?;
        self.stats.index_files += 1;
        Ok(())
    }

    /// Writes the last partial pack and the pending index entries.
    pub fn finish(&mut self) -> Result<PackerStats, CryptError> {
        self.flush_pack()?;
        self.write_index()?;
        Ok(self.stats)
    }
}
