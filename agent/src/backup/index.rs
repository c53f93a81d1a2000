//! The in-memory master index: every blob id in the repository and where it
//! lives. A sorted vector of 44-byte entries (no per-entry allocation, no
//! hash-table slack), so memory is ~44 bytes per chunk; blobs added during a
//! run go to a small side table.

use std::collections::HashMap;

use levee_proto::repo::file_formats::FRAME_MAX_MEMBERS;
use levee_proto::repo::{BlobEntry, BlobId, BlobKind, Compression, IndexFile, PackId};

#[derive(Clone, Copy)]
#[repr(C)]
struct Entry {
    id: [u8; 32],
    pack: u32,
    /// Offset in the pack; for a frame member, the low 24 bits are the
    /// frame's offset and the high 8 bits the member number (packs hold
    /// blobs below 16 MiB, frames at most 255 members).
    offset: u32,
    /// Stored length; bit 31 = zstd, bit 30 = tree blob, bit 29 = member of
    /// a frame.
    len_flags: u32,
}

const ZSTD_BIT: u32 = 1 << 31;
const TREE_BIT: u32 = 1 << 30;
const FRAME_BIT: u32 = 1 << 29;
const LEN_MASK: u32 = FRAME_BIT - 1;
const FRAME_OFFSET_MASK: u32 = (1 << 24) - 1;

/// Where one blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: PackId,
    pub offset: u32,
    pub length: u32,
    pub compression: Compression,
    pub kind: BlobKind,
    /// 0 if stored alone, else the blob's place in the frame at `offset`.
    pub member: u16,
}

#[derive(Default)]
pub struct MasterIndex {
    entries: Vec<Entry>,
    packs: Vec<PackId>,
    /// Pack numbers ordered by pack id (valid after `finish`): 4 bytes per
    /// pack instead of a hash map's ~60.
    pack_order: Vec<u32>,
    /// Packs added since the last `finish`; dropped by it.
    pack_new: HashMap<PackId, u32>,
    sorted: bool,
    /// Entries left out because they do not fit the compact encoding (not
    /// written by this program; `check` names them, and their blobs count
    /// as missing).
    pub unrepresentable: usize,
}

impl MasterIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn reserve(&mut self, blobs: usize) {
        self.entries.reserve_exact(blobs);
    }

    fn find_pack(&self, id: &PackId) -> Option<u32> {
        if let Some(n) = self.pack_new.get(id) {
            return Some(*n);
        }
        self.pack_order
            .binary_search_by(|n| self.packs[*n as usize].cmp(id))
            .ok()
            .map(|i| self.pack_order[i])
    }

    fn pack_no(&mut self, id: PackId) -> u32 {
        if let Some(n) = self.find_pack(&id) {
            return n;
        }
        let n = self.packs.len() as u32;
        self.packs.push(id);
        self.pack_new.insert(id, n);
        n
    }

    pub fn add_pack(&mut self, pack: PackId, blobs: &[BlobEntry]) {
        let p = self.pack_no(pack);
        for b in blobs {
            let fits = b.length <= LEN_MASK
                && (b.member == 0
                    || (b.offset <= FRAME_OFFSET_MASK
                        && usize::from(b.member) <= FRAME_MAX_MEMBERS));
            if !fits {
                self.unrepresentable += 1;
                continue;
            }
            let mut f = b.length;
            let mut offset = b.offset;
            if b.compression == Compression::Zstd {
                f |= ZSTD_BIT;
            }
            if b.kind == BlobKind::Tree {
                f |= TREE_BIT;
            }
            if b.member != 0 {
                f |= FRAME_BIT;
                offset |= u32::from(b.member) << 24;
            }
            self.entries.push(Entry {
                id: b.id.0,
                pack: p,
                offset,
                len_flags: f,
            });
        }
        self.sorted = false;
    }

    pub fn add_file(&mut self, f: &IndexFile) {
        for p in &f.packs {
            self.add_pack(p.id, &p.blobs);
        }
    }

    /// Sorts for lookups; duplicates (a blob in two packs) keep one entry.
    pub fn finish(&mut self) {
        self.entries.sort_unstable_by_key(|e| e.id);
        self.entries.dedup_by(|a, b| a.id == b.id);
        self.entries.shrink_to_fit();
        let mut order: Vec<u32> = (0..self.packs.len() as u32).collect();
        order.sort_unstable_by(|a, b| self.packs[*a as usize].cmp(&self.packs[*b as usize]));
        self.pack_order = order;
        self.pack_new = HashMap::new();
        self.packs.shrink_to_fit();
        self.sorted = true;
    }

    fn find(&self, id: &BlobId) -> Option<&Entry> {
        debug_assert!(self.sorted);
        self.entries
            .binary_search_by(|e| e.id.cmp(&id.0))
            .ok()
            .map(|i| &self.entries[i])
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        self.find(id).is_some()
    }

    pub fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        self.find(id).map(|e| {
            let framed = e.len_flags & FRAME_BIT != 0;
            BlobLocation {
                pack: self.packs[e.pack as usize],
                offset: if framed {
                    e.offset & FRAME_OFFSET_MASK
                } else {
                    e.offset
                },
                member: if framed { (e.offset >> 24) as u16 } else { 0 },
                length: e.len_flags & LEN_MASK,
                compression: if e.len_flags & ZSTD_BIT != 0 {
                    Compression::Zstd
                } else {
                    Compression::None
                },
                kind: if e.len_flags & TREE_BIT != 0 {
                    BlobKind::Tree
                } else {
                    BlobKind::Data
                },
            }
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn packs(&self) -> &[PackId] {
        &self.packs
    }

    pub fn has_pack(&self, id: &PackId) -> bool {
        self.find_pack(id).is_some()
    }

    /// Bytes of heap held by the entries (for `--json` statistics).
    pub fn entry_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_is_44_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 44);
    }

    #[test]
    fn lookup() {
        let mut m = MasterIndex::new();
        let e = |i: u8| BlobEntry {
            kind: BlobKind::Tree,
            compression: Compression::Zstd,
            id: BlobId([i; 32]),
            offset: i as u32,
            length: 10,
            raw_length: 20,
            member: 0,
        };
        m.add_pack(PackId([9; 32]), &[e(3), e(1), e(2)]);
        m.finish();
        let l = m.get(&BlobId([2; 32])).unwrap();
        assert_eq!(
            (l.pack, l.offset, l.length, l.compression, l.kind),
            (PackId([9; 32]), 2, 10, Compression::Zstd, BlobKind::Tree)
        );
        assert!(!m.contains(&BlobId([4; 32])));
        assert!(m.has_pack(&PackId([9; 32])) && !m.has_pack(&PackId([8; 32])));
        m.add_pack(PackId([8; 32]), &[e(4)]);
        m.add_pack(PackId([9; 32]), &[e(5)]);
        m.finish();
        assert_eq!(m.packs().len(), 2);
        assert_eq!(
            m.get(&BlobId([5; 32])).map(|l| l.pack),
            Some(PackId([9; 32]))
        );
    }

    #[test]
    fn frame_members_and_unrepresentable_entries() {
        let mut m = MasterIndex::new();
        let e = |i: u8, offset: u32, member: u16| BlobEntry {
            kind: BlobKind::Data,
            compression: Compression::Zstd,
            id: BlobId([i; 32]),
            offset,
            length: 1000,
            raw_length: 5000,
            member,
        };
        m.add_pack(
            PackId([9; 32]),
            &[
                e(1, (1 << 24) - 1, 255),
                e(2, 77, 1),
                e(3, 1 << 24, 1),
                e(4, 1 << 30, 0),
                e(5, 1, 256),
            ],
        );
        m.finish();
        let l = m.get(&BlobId([1; 32])).unwrap();
        assert_eq!((l.offset, l.member, l.length), ((1 << 24) - 1, 255, 1000));
        let l = m.get(&BlobId([2; 32])).unwrap();
        assert_eq!((l.offset, l.member, l.kind), (77, 1, BlobKind::Data));
        let l = m.get(&BlobId([4; 32])).unwrap();
        assert_eq!((l.offset, l.member), (1 << 30, 0));
        assert!(!m.contains(&BlobId([3; 32])) && !m.contains(&BlobId([5; 32])));
        assert_eq!(m.unrepresentable, 2);
    }
}
