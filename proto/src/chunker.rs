//! Content-defined chunking: FastCDC (normalized, level 1) with a secret
//! gear table, so chunk boundaries depend on the key and do not fingerprint
//! known files. Format 2 repositories derive all 256 entries from the key
//! ([`MasterKey::gear_table`](levee_proto::repo::MasterKey::gear_table));
//! format 1 ones keep fastcdc's public table XORed with a 64-bit seed
//! ([`seeded_gear`]), the construction Truong et al. (2025) break, so that
//! their boundaries, and so their deduplication, stay as they were.
//!
//! [`Chunker::scan`] is a pure scanner: feed it bytes in any pieces and it
//! reports where the current chunk ends; the boundaries are the same whether
//! the data comes a byte at a time or all at once.

use fastcdc::v2020::{get_gear_with_seed, MASKS};

/// Chunk size limits: restic's sizes; large chunks keep the index small.
pub const MIN_SIZE: usize = 512 * 1024;
pub const AVG_SIZE: usize = 1024 * 1024;
pub const MAX_SIZE: usize = 8 * 1024 * 1024;

pub struct Chunker {
    gear: Box<[u64; 256]>,
    mask_s: u64,
    mask_l: u64,
    min: usize,
    avg: usize,
    max: usize,
    /// Bytes of the current chunk seen so far.
    pos: usize,
    hash: u64,
}

impl Chunker {
    pub fn new(seed: u64) -> Self {
        Self::with_sizes(seed, MIN_SIZE, AVG_SIZE, MAX_SIZE)
    }

    /// Format 1's chunker (seeded public table).
    pub fn with_sizes(seed: u64, min: usize, avg: usize, max: usize) -> Self {
        Self::with_table(seeded_gear(seed), min, avg, max)
    }

    /// A chunker with the given gear table. The sizes must have passed
    /// [`RepoConfig::validate`](levee_proto::repo::RepoConfig::validate)
    /// (the masks exist for averages of 4 B to 16 MiB; the sizes are clamped
    /// here so nothing can index out of range even if not).
    pub fn with_table(gear: Box<[u64; 256]>, min: usize, avg: usize, max: usize) -> Self {
        let bits = (avg.next_power_of_two().trailing_zeros() as usize).clamp(2, MASKS.len() - 2);
        let (avg, max) = (avg.max(1), max.max(1));
        Self {
            gear,
            mask_s: MASKS[bits + 1],
            mask_l: MASKS[bits - 1],
            min,
            avg,
            max,
            pos: 0,
            hash: 0,
        }
    }

    /// Scans `data`, the continuation of the current chunk. Returns
    /// `Some(n)` if the chunk ends after `data[..n]` (the scanner then starts
    /// a new chunk at `data[n]`; call again with `&data[n..]`), or `None` if
    /// all of `data` belongs to the current chunk.
    pub fn scan(&mut self, data: &[u8]) -> Option<usize> {
        let mut i = 0;
        // Below the minimum size no boundary is possible: skip hashing.
        if self.pos < self.min {
            let skip = (self.min - self.pos).min(data.len());
            self.pos += skip;
            i = skip;
        }
        // Two tight loops, one per mask (FastCDC's normalised chunking: the
        // stricter mask before the average size, the looser one after), so
        // the per-byte work is one shift-add and one test. This loop is the
        // chunker's whole cost: ~6% of a first backup's CPU before the split.
        let gear = &*self.gear;
        let mut hash = self.hash;
        let start = self.pos - i;
        // The byte that makes the chunk `avg` long is judged by the looser mask.
        for (mask, limit) in [(self.mask_s, self.avg - 1), (self.mask_l, self.max)] {
            let end = data.len().min(limit.saturating_sub(start));
            while i < end {
                hash = (hash << 1).wrapping_add(gear[data[i] as usize]);
                i += 1;
                if hash & mask == 0 {
                    return Some(self.cut(i));
                }
            }
        }
        if start + i >= self.max {
            return Some(self.cut(i));
        }
        self.pos = start + i;
        self.hash = hash;
        None
    }

    fn cut(&mut self, i: usize) -> usize {
        self.pos = 0;
        self.hash = 0;
        i
    }

    /// Forgets the current chunk (at the end of a file).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.hash = 0;
    }
}

/// fastcdc's public gear table XORed with `seed` (format 1).
pub fn seeded_gear(seed: u64) -> Box<[u64; 256]> {
    get_gear_with_seed(seed).0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        let mut x = 0x1234_5678_9abc_def0u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn cuts_whole(c: &mut Chunker, d: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut off = 0;
        while let Some(n) = c.scan(&d[off..]) {
            off += n;
            out.push(off);
        }
        out
    }

    /// FastCDC as first written here (one loop, the mask chosen per byte):
    /// the two-loop scanner must cut at exactly the same places, or
    /// existing repositories would stop deduplicating against new backups.
    fn reference_cuts(c: &Chunker, d: &[u8]) -> Vec<usize> {
        let (mut out, mut pos, mut hash) = (Vec::new(), 0usize, 0u64);
        let mut i = 0;
        while i < d.len() {
            if pos < c.min {
                let skip = (c.min - pos).min(d.len() - i);
                pos += skip;
                i += skip;
                continue;
            }
            hash = (hash << 1).wrapping_add(c.gear[d[i] as usize]);
            pos += 1;
            i += 1;
            let mask = if pos < c.avg { c.mask_s } else { c.mask_l };
            if hash & mask == 0 || pos >= c.max {
                out.push(i);
                pos = 0;
                hash = 0;
            }
        }
        out
    }

    #[test]
    fn cuts_match_the_reference_scanner() {
        let d = data(3_000_000);
        for seed in [1, 7, 99] {
            let mut c = Chunker::with_sizes(seed, 2048, 8192, 32768);
            let want = reference_cuts(&c, &d);
            assert!(want.len() > 50);
            assert_eq!(cuts_whole(&mut c, &d), want, "seed {seed}");
            // Runs of equal bytes never match the mask: cuts at the maximum.
            let zeros = vec![0u8; 200_000];
            let mut c = Chunker::with_sizes(seed, 2048, 8192, 32768);
            assert_eq!(cuts_whole(&mut c, &zeros), reference_cuts(&c, &zeros));
        }
    }

    #[test]
    fn byte_at_a_time_matches_whole_buffer() {
        let d = data(300_000);
        let mut a = Chunker::with_sizes(7, 2048, 8192, 32768);
        let whole = cuts_whole(&mut a, &d);
        let mut b = Chunker::with_sizes(7, 2048, 8192, 32768);
        let mut single = Vec::new();
        for (i, byte) in d.iter().enumerate() {
            if b.scan(std::slice::from_ref(byte)) == Some(1) {
                single.push(i + 1);
            }
        }
        assert!(whole.len() > 10);
        assert_eq!(whole, single);
    }
}
