//! Resident memory of the master index per chunk: loads N million synthetic
//! index entries (as `load_index` does: reserve, add, sort) and prints the
//! RSS growth. Used by bench/backup.sh. `cargo run --release --example
//! index_memory -- 2` for 2 million chunks.

use levee_agent::backup::index::MasterIndex;
use levee_proto::repo::{BlobEntry, BlobId, BlobKind, Compression, PackId};

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let millions: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let n = millions * 1_000_000;
    let before = rss_bytes();
    let mut index = MasterIndex::new();
    index.reserve(n);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut blobs = Vec::with_capacity(16);
    for p in 0..n / 16 {
        blobs.clear();
        for i in 0..16u32 {
            let mut id = [0u8; 32];
            for c in id.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            blobs.push(BlobEntry {
                kind: BlobKind::Data,
                compression: Compression::Zstd,
                id: BlobId(id),
                offset: i * 1_000_000,
                length: 1_000_000,
                raw_length: 1_048_576,
                member: 0,
            });
        }
        let mut pid = [0u8; 32];
        pid[..8].copy_from_slice(&(p as u64).to_le_bytes());
        index.add_pack(PackId(pid), &blobs);
    }
    index.finish();
    let after = rss_bytes();
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!("{{\"chunks\": {n}, \"rss_growth_bytes\": {}, \"bytes_per_chunk\": {per:.1}, \"entries\": {}}}", after.saturating_sub(before), index.len());
}
