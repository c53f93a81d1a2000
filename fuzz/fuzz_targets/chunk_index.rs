//! The rootfs chunk index of delta updates (`levee_proto::delta`): parsing
//! never panics; an index that parses has chunks within its declared
//! sizes adding up to its length, and round-trips byte for byte; a plan
//! against it covers every byte once.
#![no_main]
use levee_proto::delta::{plan, ChunkIndex, Op};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(idx) = ChunkIndex::parse(data) {
        assert_eq!(idx.to_bytes(), data);
        let sum: u64 = idx.chunks.iter().map(|c| c.len as u64).sum();
        assert_eq!(sum, idx.length);
        assert!(idx.chunks.iter().all(|c| c.len >= 1 && c.len <= idx.max));
        let have = idx
            .offsets()
            .step_by(2)
            .map(|(at, c)| (c.id, at))
            .collect();
        let (ops, stats) = plan(&idx, &have, 0, 1 << 20);
        assert_eq!(stats.reused + stats.fetched, idx.length);
        let fetched: u64 = ops
            .iter()
            .map(|o| match o {
                Op::Fetch { len, .. } => *len,
                Op::Copy { .. } => 0,
            })
            .sum();
        assert_eq!(fetched, stats.fetched);
    }
});
