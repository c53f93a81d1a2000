//! Chunking throughput of format 1's seeded gear table against format 2's
//! keyed one (docs/REPOSITORY.md, "the chosen-file attack"): the same
//! scanner on the same 256 MiB of pseudo-random data, best of 5.
//! `cargo run --release --example chunker_speed`.

use std::time::Instant;

use levee_agent::backup::chunker::{seeded_gear, Chunker, AVG_SIZE, MAX_SIZE, MIN_SIZE};
use levee_proto::repo::MasterKey;

fn main() {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..256 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let key = MasterKey::generate();
    let t = Instant::now();
    let keyed = key.gear_table();
    println!("deriving the keyed table: {:?}", t.elapsed());
    for (name, gear) in [
        ("seeded (format 1)", seeded_gear(key.chunker_seed())),
        ("keyed (format 2)", keyed),
    ] {
        let mut best = f64::MAX;
        let mut chunks = 0;
        for _ in 0..5 {
            let mut c = Chunker::with_table(gear.clone(), MIN_SIZE, AVG_SIZE, MAX_SIZE);
            let t = Instant::now();
            let (mut off, mut n) = (0, 0);
            while let Some(k) = c.scan(&data[off..]) {
                off += k;
                n += 1;
            }
            best = best.min(t.elapsed().as_secs_f64());
            chunks = n;
        }
        println!(
            "{name}: {:.0} MB/s, {chunks} chunks",
            data.len() as f64 / best / 1e6
        );
    }
}
