//! Content-defined chunking: FastCDC (normalized, level 1) with fastcdc's
//! gear table XORed with a per-repository secret seed, so chunk boundaries
//! depend on the key and do not fingerprint known files.
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

    pub fn with_sizes(seed: u64, min: usize, avg: usize, max: usize) -> Self {
        let bits = avg.next_power_of_two().trailing_zeros() as usize;
        let (gear, _) = get_gear_with_seed(seed);
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
        let gear = &*self.gear;
        let mut hash = self.hash;
        while i < data.len() {
            hash = (hash << 1).wrapping_add(gear[data[i] as usize]);
            self.pos += 1;
            i += 1;
            let mask = if self.pos < self.avg {
                self.mask_s
            } else {
                self.mask_l
            };
            if hash & mask == 0 || self.pos >= self.max {
                self.pos = 0;
                self.hash = 0;
                return Some(i);
            }
        }
        self.hash = hash;
        None
    }

    /// Forgets the current chunk (at the end of a file).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.hash = 0;
    }
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
