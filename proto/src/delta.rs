//! Delta updates: the chunk index of a release's root file system.
//!
//! `levee release publish` cuts `rootfs.squashfs` into content-defined
//! chunks (the backup engine's FastCDC scanner, [`crate::chunker`], with
//! fastcdc's public gear table: a release is public, there is nothing for
//! boundaries to hide) and publishes the list of chunk lengths and plain
//! sha256 ids as one more signed TUF target, `<version>.rootfs.chunks`.
//! An appliance chunks its running slot the same way, copies the chunks it
//! already has and fetches only the others with HTTP `Range` requests on
//! the rootfs target ([`plan`]). The whole target's signed sha256 is
//! checked from disk at the end, so the index only saves bytes: a wrong
//! index can make a delta fail, never install something unsigned.
//!
//! Byte layout (all integers little-endian), parsed by [`ChunkIndex::parse`]:
//!
//! ```text
//! magic    8  "LVCHUNKS"
//! version  1  1
//! reserved 3  zero
//! min      4  chunker minimum size
//! avg      4  chunker average size
//! max      4  chunker maximum size
//! length   8  bytes of the file the index describes
//! count    4  number of chunks
//! count x { len 4, sha256 32 }   in file order; lengths sum to `length`
//! ```
//!
//! No I/O here: the server and the agent feed bytes in; tests and the
//! fuzzer (`fuzz/fuzz_targets/chunk_index.rs`) reach everything.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::chunker::{seeded_gear, Chunker};

/// The artifact name of a release's rootfs chunk index (its TUF target is
/// `<version>.rootfs.chunks`).
pub const ROOTFS_INDEX: &str = "rootfs.chunks";

pub const MAGIC: &[u8; 8] = b"LVCHUNKS";
pub const VERSION: u8 = 1;
const HEADER: usize = 8 + 1 + 3 + 4 * 3 + 8 + 4;
const ENTRY: usize = 4 + 32;

/// Chunk sizes for release root file systems: casync's 64 KiB average.
/// Smaller chunks find more of an old slot in a new one (squashfs moves
/// whole compressed blocks around), larger ones keep the index and the
/// number of `Range` requests small; at 64 KiB a 500 MB rootfs has an
/// index of about 280 KB.
pub const MIN_SIZE: u32 = 16 << 10;
pub const AVG_SIZE: u32 = 64 << 10;
pub const MAX_SIZE: u32 = 256 << 10;

/// Largest index accepted (the agent's download cap for it, too).
pub const MAX_INDEX_BYTES: usize = 16 << 20;
/// Largest chunk size an index may declare.
pub const MAX_CHUNK: u32 = 16 << 20;
/// Smallest chunker minimum an index may declare.
pub const MIN_CHUNK: u32 = 1 << 10;
/// Largest file an index may describe (1 TiB).
pub const MAX_LENGTH: u64 = 1 << 40;

/// A chunk's id: the plain sha256 of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn of(bytes: &[u8]) -> ChunkId {
        ChunkId(Sha256::digest(bytes).into())
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub len: u32,
    pub id: ChunkId,
}

/// The chunk index of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIndex {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
    pub length: u64,
    pub chunks: Vec<Chunk>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("chunk index: {0} bytes is shorter than its {HEADER}-byte header")]
    TooShort(usize),
    #[error("chunk index: {0} bytes is larger than the {MAX_INDEX_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("chunk index: wrong magic (not a Levee chunk index)")]
    Magic,
    #[error("chunk index: version {0} is not supported (this agent reads version {VERSION})")]
    Version(u8),
    #[error("chunk index: reserved header bytes are not zero")]
    Reserved,
    #[error("chunk index: chunk sizes min {min}, avg {avg}, max {max} are not {MIN_CHUNK} <= min <= avg <= max <= {MAX_CHUNK}")]
    Sizes { min: u32, avg: u32, max: u32 },
    #[error("chunk index: a length of {0} bytes is over the {MAX_LENGTH}-byte limit")]
    Length(u64),
    #[error("chunk index: {count} chunks need {need} bytes, the index has {have}")]
    Count { count: u64, need: u64, have: usize },
    #[error("chunk index: chunk {index} is {len} bytes, outside {min}..={max}")]
    ChunkSize {
        index: usize,
        len: u32,
        min: u32,
        max: u32,
    },
    #[error("chunk index: the chunks add up to {sum} bytes, the header says {length}")]
    Sum { sum: u64, length: u64 },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Checks chunker sizes an index (or a caller) declares.
pub fn check_sizes(min: u32, avg: u32, max: u32) -> Result<(), IndexError> {
    if MIN_CHUNK <= min && min <= avg && avg <= max && max <= MAX_CHUNK {
        Ok(())
    } else {
        Err(IndexError::Sizes { min, avg, max })
    }
}

impl ChunkIndex {
    /// Parses and checks an index: bounded sizes, every chunk within the
    /// declared limits (all but the last at least `min`), lengths adding up.
    pub fn parse(b: &[u8]) -> Result<ChunkIndex, IndexError> {
        if b.len() > MAX_INDEX_BYTES {
            return Err(IndexError::TooLarge(b.len()));
        }
        if b.len() < HEADER {
            return Err(IndexError::TooShort(b.len()));
        }
        if &b[..8] != MAGIC {
            return Err(IndexError::Magic);
        }
        if b[8] != VERSION {
            return Err(IndexError::Version(b[8]));
        }
        if b[9..12] != [0, 0, 0] {
            return Err(IndexError::Reserved);
        }
        let (min, avg, max) = (u32_at(b, 12), u32_at(b, 16), u32_at(b, 20));
        check_sizes(min, avg, max)?;
        let length = u64_at(b, 24);
        if length > MAX_LENGTH {
            return Err(IndexError::Length(length));
        }
        let count = u32_at(b, 32) as u64;
        let need = HEADER as u64 + count * ENTRY as u64;
        if need != b.len() as u64 {
            return Err(IndexError::Count {
                count,
                need,
                have: b.len(),
            });
        }
        let mut chunks = Vec::with_capacity(count as usize);
        let mut sum = 0u64;
        for (index, e) in b[HEADER..].chunks_exact(ENTRY).enumerate() {
            let len = u32_at(e, 0);
            let last = index + 1 == count as usize;
            let low = if last { 1 } else { min };
            if len < low || len > max {
                return Err(IndexError::ChunkSize {
                    index,
                    len,
                    min: low,
                    max,
                });
            }
            let mut id = [0u8; 32];
            id.copy_from_slice(&e[4..]);
            sum += len as u64;
            chunks.push(Chunk {
                len,
                id: ChunkId(id),
            });
        }
        if sum != length {
            return Err(IndexError::Sum { sum, length });
        }
        Ok(ChunkIndex {
            min,
            avg,
            max,
            length,
            chunks,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.chunks.len() * ENTRY);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, 0, 0, 0]);
        for v in [self.min, self.avg, self.max] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.len.to_le_bytes());
            out.extend_from_slice(&c.id.0);
        }
        out
    }

    /// Each chunk with its offset in the file.
    pub fn offsets(&self) -> impl Iterator<Item = (u64, &Chunk)> {
        self.chunks.iter().scan(0u64, |at, c| {
            let here = *at;
            *at += c.len as u64;
            Some((here, c))
        })
    }
}

/// Builds an index from bytes fed in any pieces (the same chunks whatever
/// the pieces). Also used by the agent to chunk its running slot.
pub struct IndexBuilder {
    chunker: Chunker,
    hasher: Sha256,
    cur: u64,
    index: ChunkIndex,
}

impl IndexBuilder {
    /// Sizes must pass [`check_sizes`] (they come from a parsed index or
    /// the constants above).
    pub fn new(min: u32, avg: u32, max: u32) -> IndexBuilder {
        IndexBuilder {
            chunker: Chunker::with_table(seeded_gear(0), min as usize, avg as usize, max as usize),
            hasher: Sha256::new(),
            cur: 0,
            index: ChunkIndex {
                min,
                avg,
                max,
                length: 0,
                chunks: Vec::new(),
            },
        }
    }

    /// The release sizes ([`MIN_SIZE`], [`AVG_SIZE`], [`MAX_SIZE`]).
    pub fn for_release() -> IndexBuilder {
        IndexBuilder::new(MIN_SIZE, AVG_SIZE, MAX_SIZE)
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, mut data: &[u8]) {
        while let Some(n) = self.chunker.scan(data) {
            self.hasher.update(&data[..n]);
            self.cur += n as u64;
            self.cut();
            data = &data[n..];
        }
        self.hasher.update(data);
        self.cur += data.len() as u64;
    }

    fn cut(&mut self) {
        let id = ChunkId(std::mem::take(&mut self.hasher).finalize().into());
        // A chunk never exceeds `max` (u32), so the cast is exact.
        self.index.chunks.push(Chunk {
            len: self.cur as u32,
            id,
        });
        self.index.length += self.cur;
        self.cur = 0;
    }

    pub fn finish(mut self) -> ChunkIndex {
        if self.cur > 0 {
            self.cut();
        }
        self.index
    }
}

/// One step of assembling a new file from an old one and the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Chunk `chunk` of the new file is in the old one at `from`.
    Copy { chunk: usize, from: u64 },
    /// Chunks `first..end` of the new file, bytes `start..start + len`:
    /// one `Range` request.
    Fetch {
        first: usize,
        end: usize,
        start: u64,
        len: u64,
    },
}

/// What a plan costs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanStats {
    pub reused: u64,
    pub fetched: u64,
    pub ranges: usize,
}

/// The steps that build `new` from chunk `from_chunk` on (earlier chunks
/// are already written, on a resume), given `have`: chunk ids found in the
/// old file and their offsets there. Adjacent missing chunks coalesce into
/// one range of at most `max_range` bytes (at least one chunk).
pub fn plan(
    new: &ChunkIndex,
    have: &HashMap<ChunkId, u64>,
    from_chunk: usize,
    max_range: u64,
) -> (Vec<Op>, PlanStats) {
    let mut ops = Vec::new();
    let mut stats = PlanStats::default();
    for (i, (at, c)) in new.offsets().enumerate().skip(from_chunk) {
        if let Some(&from) = have.get(&c.id) {
            stats.reused += c.len as u64;
            ops.push(Op::Copy { chunk: i, from });
            continue;
        }
        stats.fetched += c.len as u64;
        if let Some(Op::Fetch { end, len, .. }) = ops.last_mut() {
            if *end == i && *len + c.len as u64 <= max_range {
                *end += 1;
                *len += c.len as u64;
                continue;
            }
        }
        stats.ranges += 1;
        ops.push(Op::Fetch {
            first: i,
            end: i + 1,
            start: at,
            len: c.len as u64,
        });
    }
    (ops, stats)
}

/// The bytes a squashfs image occupies, from its superblock (`bytes_used`
/// rounded up to mksquashfs's 4 KiB padding), so a slot partition larger
/// than its image is chunked only as far as the image goes. `None` if
/// `sb` is not a squashfs superblock.
pub fn squashfs_len(sb: &[u8]) -> Option<u64> {
    if sb.len() < 48 || &sb[..4] != b"hsqs" {
        return None;
    }
    let used = u64_at(sb, 40);
    used.checked_next_multiple_of(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn build(d: &[u8], piece: usize) -> ChunkIndex {
        let mut b = IndexBuilder::new(2048, 8192, 32768);
        for p in d.chunks(piece) {
            b.update(p);
        }
        b.finish()
    }

    #[test]
    fn pieces_do_not_change_the_chunks_and_the_index_round_trips() {
        let d = data(1_000_000, 7);
        let whole = build(&d, d.len());
        assert!(whole.chunks.len() > 50);
        assert_eq!(build(&d, 1000), whole);
        assert_eq!(build(&d, 1), whole);
        assert_eq!(whole.length, d.len() as u64);
        for (at, c) in whole.offsets() {
            let s = &d[at as usize..at as usize + c.len as usize];
            assert_eq!(ChunkId::of(s), c.id);
        }
        let bytes = whole.to_bytes();
        assert_eq!(ChunkIndex::parse(&bytes).unwrap(), whole);
        // An empty file has no chunks and is a valid index.
        let empty = build(&[], 1);
        assert_eq!(ChunkIndex::parse(&empty.to_bytes()).unwrap(), empty);
    }

    #[test]
    fn damaged_indexes_are_refused_with_the_reason() {
        let idx = build(&data(200_000, 3), 4096);
        let good = idx.to_bytes();
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            ChunkIndex::parse(&b).unwrap_err()
        };
        assert_eq!(with(&|b| b.truncate(10)), IndexError::TooShort(10));
        assert_eq!(with(&|b| b[0] = b'X'), IndexError::Magic);
        assert_eq!(with(&|b| b[8] = 2), IndexError::Version(2));
        assert_eq!(with(&|b| b[10] = 1), IndexError::Reserved);
        assert!(matches!(
            with(&|b| b[20..24].copy_from_slice(&u32::MAX.to_le_bytes())),
            IndexError::Sizes { .. }
        ));
        assert!(matches!(
            with(&|b| b.truncate(b.len() - 1)),
            IndexError::Count { .. }
        ));
        assert!(matches!(
            with(&|b| b[32..36].copy_from_slice(&u32::MAX.to_le_bytes())),
            IndexError::Count { .. }
        ));
        assert!(matches!(
            with(&|b| b[24..32].copy_from_slice(&(1u64 << 41).to_le_bytes())),
            IndexError::Length(_)
        ));
        assert!(matches!(
            with(&|b| b[24..32].copy_from_slice(&7u64.to_le_bytes())),
            IndexError::Sum { .. }
        ));
        // The first chunk shorter than the minimum.
        assert!(matches!(
            with(&|b| b[HEADER..HEADER + 4].copy_from_slice(&5u32.to_le_bytes())),
            IndexError::ChunkSize { index: 0, .. }
        ));
        assert!(matches!(
            ChunkIndex::parse(&vec![0; MAX_INDEX_BYTES + 1]),
            Err(IndexError::TooLarge(_))
        ));
    }

    #[test]
    fn an_insertion_costs_only_the_chunks_around_it() {
        let old = data(2_000_000, 11);
        let mut new = old.clone();
        // 5000 new bytes in the middle, everything after shifted.
        let insert = data(5000, 99);
        new.splice(1_000_000..1_000_000, insert);
        let (oi, ni) = (build(&old, 65536), build(&new, 65536));
        let have: HashMap<ChunkId, u64> = oi.offsets().map(|(at, c)| (c.id, at)).collect();
        let (ops, stats) = plan(&ni, &have, 0, 1 << 20);
        assert_eq!(stats.reused + stats.fetched, new.len() as u64);
        assert!(stats.fetched < 100_000, "{stats:?}");
        assert!(stats.ranges >= 1 && stats.ranges <= 2, "{stats:?}");
        // Replaying the plan rebuilds the new file exactly.
        let mut out = vec![0u8; new.len()];
        let starts: Vec<u64> = ni.offsets().map(|(at, _)| at).collect();
        for op in &ops {
            match *op {
                Op::Copy { chunk, from } => {
                    let (to, len) = (starts[chunk] as usize, ni.chunks[chunk].len as usize);
                    out[to..to + len].copy_from_slice(&old[from as usize..from as usize + len]);
                }
                Op::Fetch { start, len, .. } => {
                    let (s, l) = (start as usize, len as usize);
                    out[s..s + l].copy_from_slice(&new[s..s + l]);
                }
            }
        }
        assert_eq!(out, new);
        // A resume plans only what is left; ranges respect the cap.
        let (later, _) = plan(&ni, &HashMap::new(), 10, 100_000);
        assert!(matches!(later[0], Op::Fetch { first: 10, .. }));
        assert!(later.iter().all(|o| match o {
            Op::Fetch {
                len, first, end, ..
            } => *len <= 100_000 || end - first == 1,
            Op::Copy { .. } => false,
        }));
    }

    #[test]
    fn squashfs_superblock_length() {
        let mut sb = vec![0u8; 96];
        sb[..4].copy_from_slice(b"hsqs");
        sb[40..48].copy_from_slice(&5000u64.to_le_bytes());
        assert_eq!(squashfs_len(&sb), Some(8192));
        sb[40..48].copy_from_slice(&8192u64.to_le_bytes());
        assert_eq!(squashfs_len(&sb), Some(8192));
        assert_eq!(squashfs_len(&sb[..20]), None);
        sb[0] = b'x';
        assert_eq!(squashfs_len(&sb), None);
    }
}
