//! Collects encoded blobs into pack files of ~16 MiB and writes an index
//! file for every batch of finished packs. A pack is written whole and
//! durably before any index names it, and an index file before any snapshot
//! can reference its blobs (the backup writes the snapshot last).
//!
//! Trees and data go to separate packs (two streams into one writer):
//! a tree pack holds only trees, a data pack only data, so whatever walks
//! trees without the data (a backup's parent after a take-over, `ls` or a
//! one-file restore from an offsite copy) fetches the small tree packs
//! only. Trees are small, so the tree pack is usually flushed at the end of
//! the run, or when it reaches the pack size. The pack format is unchanged:
//! every header entry already names its blob's kind.
//!
//! Writing happens on a thread of its own, so the fsync of one pack overlaps
//! the filling of the next instead of stalling the compressors behind the
//! packer. Format 2 pads each pack (random bytes between the last blob
//! and the header, which is itself zero-padded inside its encryption) to a
//! Padmé length, so neither a pack's size nor its header's length tells the
//! sizes or number of the chunks in it. Two pack buffers take turns; they are 4 KiB aligned so the local
//! backend can write them with O_DIRECT (see `backend::local`).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use aligned_vec::{AVec, ConstAlign};
use levee_proto::repo::crypto::file_id;
use levee_proto::repo::pack::{padme, trailer};
use levee_proto::repo::{BlobEntry, BlobKind, IndexFile, IndexPack, PackHeader};
use rand::RngCore;

use crate::backup::backend::crypt::{CryptBackend, CryptError};
use crate::backup::backend::local::{LocalBackend, DIRECT_ALIGN};
use crate::backup::backend::{FileKind, WriteBackend};
use crate::backup::blob::EncodedBlob;

pub const PACK_TARGET: usize = 16 * 1024 * 1024;
/// Index files cover at most this many packs, so an interrupted run loses
/// little index work (its packs are recovered from their headers anyway).
const PACKS_PER_INDEX: usize = 64;

type PackBuf = AVec<u8, ConstAlign<DIRECT_ALIGN>>;

fn pack_buf() -> PackBuf {
    // Room for a full pack plus one large blob, so a pack rarely regrows.
    AVec::with_capacity(DIRECT_ALIGN, PACK_TARGET + 2 * 1024 * 1024)
}

#[derive(Debug, Default, Clone, Copy)]
pub struct PackerStats {
    pub packs: u64,
    pub blobs: u64,
    pub stored_bytes: u64,
    pub index_files: u64,
}

/// A finished pack on its way to the writer.
struct PackJob {
    buf: PackBuf,
    blobs: Vec<BlobEntry>,
}

/// One pack being filled.
struct OpenPack {
    buf: PackBuf,
    entries: Vec<BlobEntry>,
}

impl OpenPack {
    fn new(buf: PackBuf) -> Self {
        Self {
            buf,
            entries: Vec::new(),
        }
    }

    fn push(&mut self, b: &EncodedBlob) {
        let offset = self.buf.len() as u32;
        for m in &b.blobs {
            self.entries.push(BlobEntry {
                kind: m.kind,
                compression: b.compression,
                id: m.id,
                offset,
                length: b.data.len() as u32,
                raw_length: m.raw_length,
                member: m.member,
            });
        }
        self.buf.extend_from_slice(&b.data);
    }
}

pub struct Packer {
    key: levee_proto::repo::MasterKey,
    /// Pad packs and headers (format 2).
    pad: bool,
    /// Data blobs and frames.
    data: OpenPack,
    /// Trees, apart from data (module doc); allocated at the first tree.
    trees: Option<OpenPack>,
    blobs: u64,
    to_writer: Option<SyncSender<PackJob>>,
    /// Buffers the writer is done with, for reuse: fresh 16 MiB buffers
    /// would cost page faults on every pack.
    free: Receiver<PackBuf>,
    writer: Option<JoinHandle<Result<PackerStats, CryptError>>>,
}

impl Packer {
    /// `pad`: [`Repository::pads_packs`](crate::backup::repository::Repository::pads_packs).
    pub fn new(be: CryptBackend<LocalBackend>, pad: bool) -> Self {
        let (to_writer, jobs) = sync_channel::<PackJob>(1);
        let (give_back, free) = sync_channel::<PackBuf>(2);
        let key = be.key().clone();
        let writer = std::thread::Builder::new()
            .name("pack-writer".into())
            .spawn(move || write_packs(be, jobs, give_back));
        let (to_writer, writer) = match writer {
            Ok(h) => (Some(to_writer), Some(h)),
            // Without a thread every add reports the failure below.
            Err(_) => (None, None),
        };
        Self {
            key,
            pad,
            data: OpenPack::new(pack_buf()),
            trees: None,
            blobs: 0,
            to_writer,
            free,
            writer,
        }
    }

    /// Adds a blob or frame to the pack of its kind. A piece is a tree only
    /// if every member is one (trees are stored alone; a frame is data).
    pub fn add(&mut self, b: EncodedBlob) -> Result<(), CryptError> {
        self.blobs += b.blobs.len() as u64;
        let is_tree = !b.blobs.is_empty() && b.blobs.iter().all(|m| m.kind == BlobKind::Tree);
        if is_tree {
            // Grows as needed: most runs' trees are far below a pack.
            let small = || OpenPack::new(AVec::with_capacity(DIRECT_ALIGN, 0));
            let trees = self.trees.get_or_insert_with(small);
            trees.push(&b);
            if trees.buf.len() >= PACK_TARGET {
                let full = std::mem::replace(trees, small());
                self.send_pack(full)?;
            }
        } else {
            self.data.push(&b);
            if self.data.buf.len() >= PACK_TARGET {
                self.flush_data()?;
            }
        }
        Ok(())
    }

    fn flush_data(&mut self) -> Result<(), CryptError> {
        if self.data.entries.is_empty() {
            return Ok(());
        }
        let next = self.free.try_recv().unwrap_or_else(|_| pack_buf());
        let full = std::mem::replace(&mut self.data, OpenPack::new(next));
        self.send_pack(full)
    }

    /// Seals `pack` (header, padding, trailer) and hands it to the writer.
    fn send_pack(&mut self, pack: OpenPack) -> Result<(), CryptError> {
        let OpenPack {
            mut buf,
            entries: blobs,
        } = pack;
        if blobs.is_empty() {
            return Ok(());
        }
        let plain = PackHeader {
            blobs: blobs.clone(),
        };
        let header = if self.pad {
            self.key.encrypt(&plain.to_bytes_padded())
        } else {
            self.key.encrypt(&plain.to_bytes())
        };
        if self.pad {
            let len = (buf.len() + header.len() + 8) as u64;
            let fill = (padme(len) - len) as usize;
            let start = buf.len();
            buf.resize(start + fill, 0);
            rand::thread_rng().fill_bytes(&mut buf[start..]);
        }
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&trailer(header.len() as u32));
        let sent = self
            .to_writer
            .as_ref()
            .is_some_and(|tx| tx.send(PackJob { buf, blobs }).is_ok());
        if sent {
            Ok(())
        } else {
            // The writer stopped: its error says why.
            Err(self.stop_writer().err().unwrap_or_else(writer_gone))
        }
    }

    fn stop_writer(&mut self) -> Result<PackerStats, CryptError> {
        self.to_writer = None;
        match self.writer.take() {
            Some(h) => h.join().unwrap_or_else(|_| Err(writer_gone())),
            None => Err(writer_gone()),
        }
    }

    /// Writes the last partial pack and the pending index entries.
    pub fn finish(mut self) -> Result<PackerStats, CryptError> {
        self.flush_data()?;
        if let Some(trees) = self.trees.take() {
            self.send_pack(trees)?;
        }
        let mut stats = self.stop_writer()?;
        stats.blobs = self.blobs;
        Ok(stats)
    }
}

impl Drop for Packer {
    /// A packer dropped after an error still waits for its writer, so no
    /// pack or index write outlives the command that started it.
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = self.stop_writer();
        }
    }
}

fn writer_gone() -> CryptError {
    CryptError::from(crate::backup::backend::BackendError::io(
        "pack writer",
        std::io::Error::other("the pack writer thread stopped"),
    ))
}

/// The writer thread: each pack durably, then an index file for every
/// [`PACKS_PER_INDEX`] packs and one for the rest when the packer is done.
fn write_packs(
    be: CryptBackend<LocalBackend>,
    jobs: Receiver<PackJob>,
    give_back: SyncSender<PackBuf>,
) -> Result<PackerStats, CryptError> {
    let mut stats = PackerStats::default();
    let mut done = Vec::new();
    for PackJob { mut buf, blobs } in jobs {
        let id = file_id(&buf);
        be.write(FileKind::Pack, &id.to_hex(), &buf)
            .map_err(CryptError::from)?;
        stats.packs += 1;
        stats.stored_bytes += buf.len() as u64;
        buf.clear();
        // Only full-size buffers are reused for data (a small tree pack's
        // would regrow).
        if buf.capacity() >= PACK_TARGET {
            let _ = give_back.try_send(buf);
        }
        done.push(IndexPack { id, blobs });
        if done.len() >= PACKS_PER_INDEX {
            write_index(&be, &mut done, &mut stats)?;
        }
    }
    write_index(&be, &mut done, &mut stats)?;
    Ok(stats)
}

fn write_index(
    be: &CryptBackend<LocalBackend>,
    done: &mut Vec<IndexPack>,
    stats: &mut PackerStats,
) -> Result<(), CryptError> {
    if done.is_empty() {
        return Ok(());
    }
    let f = IndexFile {
        packs: std::mem::take(done),
    };
    be.save(FileKind::Index, &f.to_bytes())?;
    stats.index_files += 1;
    Ok(())
}
