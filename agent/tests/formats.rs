//! Round trips and golden files for every persisted format, plus the
//! chunker's boundary stability. Regenerate goldens with UPDATE_GOLDEN=1
//! (only when a format change is intended: old repositories must still read).

use std::path::PathBuf;

use levee_agent::backup::chunker::Chunker;
use levee_proto::repo::config::{CHUNKER_V2, PADDING_PADME};
use levee_proto::repo::crypto::{decrypt, encrypt_with_nonce};
use levee_proto::repo::{
    BlobEntry, BlobId, BlobKind, Cipher, Compression, IndexFile, IndexPack, KdfParams, KeySlot,
    MasterKey, Node, NodeKind, PackHeader, PackId, RepoConfig, Snapshot, SnapshotSummary, Tree,
};

use crate::util::rand_bytes;

fn read_golden(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("golden {name}: {e}"))
}

fn golden(name: &str, actual: &[u8]) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&p, actual).expect("write golden");
    }
    let expected = std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create)", p.display()));
    assert!(
        expected == actual,
        "{name} differs from its golden file; a format change breaks existing repositories"
    );
}

fn entry(i: u8, kind: BlobKind, c: Compression) -> BlobEntry {
    BlobEntry {
        kind,
        compression: c,
        id: BlobId([i; 32]),
        offset: u32::from(i) * 100,
        length: 100,
        raw_length: 300,
        member: 0,
    }
}

/// Two members of one frame (version 2 entries).
fn frame_entries() -> Vec<BlobEntry> {
    (1..=2)
        .map(|k: u16| BlobEntry {
            member: k,
            raw_length: 50 * u32::from(k),
            ..entry(10 + k as u8, BlobKind::Data, Compression::Zstd)
        })
        .map(|mut e| {
            e.offset = 1000;
            e
        })
        .collect()
}

/// What version 1 could express: blobs stored alone.
fn sample_header_v1() -> PackHeader {
    PackHeader {
        blobs: vec![
            entry(1, BlobKind::Data, Compression::Zstd),
            entry(2, BlobKind::Tree, Compression::None),
        ],
    }
}

fn sample_header() -> PackHeader {
    let mut h = sample_header_v1();
    h.blobs.extend(frame_entries());
    h
}

fn sample_index() -> IndexFile {
    IndexFile {
        packs: vec![
            IndexPack {
                id: PackId([0xaa; 32]),
                blobs: sample_header().blobs,
            },
            IndexPack {
                id: PackId([0xbb; 32]),
                blobs: vec![entry(3, BlobKind::Data, Compression::None)],
            },
        ],
    }
}

fn sample_tree() -> Tree {
    let mut f = Node::new("Ünïcødé 日本語.txt".into(), NodeKind::File);
    f.size = 12;
    f.mtime_ns = 1_700_000_000_123_456_700;
    f.btime_ns = 1_600_000_000_000_000_000;
    f.attributes = 0x21;
    f.file_id = 42;
    f.content = vec![BlobId([1; 32])];
    let mut d = Node::new("sub".into(), NodeKind::Dir);
    d.subtree = Some(BlobId([2; 32]));
    d.mode = 0o755;
    Tree { nodes: vec![f, d] }
}

fn sample_snapshot() -> Snapshot {
    Snapshot {
        version: 1,
        time_ns: 1_700_000_000_000_000_000,
        hostname: "appliance-1".into(),
        paths: vec!["smb://backup@fs:445/Company".into()],
        tags: vec!["nightly".into()],
        tree: BlobId([3; 32]),
        parent: Some(PackId([4; 32])),
        summary: SnapshotSummary {
            files: 2,
            dirs: 1,
            bytes_total: 12,
            ..Default::default()
        },
        program: "levee-agent 0.1.0".into(),
    }
}

#[test]
fn pack_header_round_trip_and_golden() {
    let h = sample_header();
    let b = h.to_bytes();
    assert_eq!(PackHeader::parse(&b).expect("parse"), h);
    golden("pack_header_v2.bin", &b);
    // Every truncation is an error, never a panic.
    for n in 0..b.len() {
        assert!(PackHeader::parse(&b[..n]).is_err());
    }
    assert!(h.check_bounds(1050).is_err());
    assert!(h.check_bounds(1100).is_ok());
}

#[test]
fn index_round_trip_and_golden() {
    let f = sample_index();
    let b = f.to_bytes();
    assert_eq!(IndexFile::parse(&b).expect("parse"), f);
    golden("index_v2.bin", &b);
    for n in 0..b.len() {
        assert!(IndexFile::parse(&b[..n]).is_err());
    }
}

/// Repositories written before frames (version 1) still read: their
/// entries come back with member 0, i.e. stored alone.
#[test]
fn version_1_pack_headers_and_indexes_still_read() {
    let read = |name: &str| {
        std::fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/golden")
                .join(name),
        )
        .expect("golden file")
    };
    let h = PackHeader::parse(&read("pack_header_v1.bin")).expect("v1 header");
    assert_eq!(h, sample_header_v1());
    let f = IndexFile::parse(&read("index_v1.bin")).expect("v1 index");
    assert_eq!(f.packs[0].blobs, sample_header_v1().blobs);
    assert_eq!(
        f.packs[1].blobs,
        vec![entry(3, BlobKind::Data, Compression::None)]
    );
}

#[test]
fn tree_and_snapshot_round_trip_and_golden() {
    let t = sample_tree();
    let b = t.to_bytes();
    assert_eq!(Tree::parse(&b).expect("parse"), t);
    golden("tree.json", &b);
    let s = sample_snapshot();
    let b = s.to_bytes();
    assert_eq!(Snapshot::parse(&b).expect("parse"), s);
    golden("snapshot.json", &b);
    assert!(Snapshot::parse(&b[..b.len() / 2]).is_err());
}

#[test]
fn encryption_and_keyed_ids_golden() {
    let key = [7u8; 32];
    let ct = encrypt_with_nonce(&key, &[9u8; 12], b"levee blob");
    golden("encrypted.bin", &ct);
    assert_eq!(decrypt(&key, &ct).expect("decrypt"), b"levee blob");
    let m = MasterKey::from_bytes(&[7u8; 64]);
    golden("blob_id.txt", m.blob_id(b"levee blob").to_hex().as_bytes());
    golden("chunker_seed.txt", m.chunker_seed().to_string().as_bytes());
}

#[test]
fn key_slot_golden_opens() {
    let m = MasterKey::from_bytes(&[7u8; 64]);
    // Version 1 (format 1 repositories): a read-compat vector, never rewritten.
    let slot = KeySlot::parse(&read_golden("keyslot.json")).expect("parse");
    assert!(!slot.authenticated());
    assert_eq!(slot.open(b"golden").expect("open").to_bytes(), m.to_bytes());
    assert!(slot.open(b"wrong").is_err());
    // Version 2: metadata authenticated; the secret is now at least 8 bytes.
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/keyslot_v2.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let slot = KeySlot::create(
            &m,
            b"golden secret",
            KdfParams::with_memory(1024),
            "recovery",
            "golden",
            1_700_000_000,
            2,
        )
        .expect("create");
        std::fs::write(&p, slot.to_bytes()).expect("write");
    }
    let slot = KeySlot::parse(&std::fs::read(&p).expect("golden keyslot")).expect("parse");
    assert!(slot.authenticated());
    assert_eq!(slot.format, 2);
    assert_eq!(
        slot.open(b"golden secret").expect("open").to_bytes(),
        m.to_bytes()
    );
    let mut edited = slot.clone();
    edited.label = "forged".into();
    assert!(edited.open(b"golden secret").is_err());
}

/// Format 2 vectors: XAES-256-GCM objects, the encrypted config, the keyed
/// gear table, padded pack headers. Written once; later versions must read
/// them.
#[test]
fn format_2_goldens() {
    let m = MasterKey::from_bytes(&[7u8; 64]).with_cipher(Cipher::Xaes256Gcm);
    let ct = m.xaes_seal(&[9u8; 24], b"levee blob", b"");
    golden("encrypted_xaes.bin", &ct);
    assert_eq!(m.decrypt(&ct).expect("decrypt"), b"levee blob");
    let gear = m.gear_table();
    golden("gear_table_v2.txt", format!("{:?}", &gear[..]).as_bytes());
    golden("pack_header_v3.bin", &sample_header().to_bytes_padded());
    assert_eq!(
        PackHeader::parse(&read_golden("pack_header_v3.bin")).expect("v3"),
        sample_header()
    );
    let cfg = RepoConfig {
        version: 2,
        id: "ab".repeat(16),
        created_ns: 1_700_000_000_000_000_000,
        chunker: CHUNKER_V2.into(),
        chunk_min: 512 * 1024,
        chunk_avg: 1024 * 1024,
        chunk_max: 8 * 1024 * 1024,
        pack_padding: PADDING_PADME.into(),
        retired_keys: Vec::new(),
    };
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/config_v2.bin");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&p, cfg.to_bytes(&m).expect("config")).expect("write");
    }
    assert_eq!(
        RepoConfig::parse(&read_golden("config_v2.bin"), &m).expect("config"),
        cfg
    );
    // The keyed table's boundaries on the same data as the seeded golden.
    let data = rand_bytes(1, 2 * 1024 * 1024);
    let mut c = Chunker::with_table(gear, 16 * 1024, 64 * 1024, 256 * 1024);
    let mut cuts = Vec::new();
    let mut off = 0;
    while let Some(n) = c.scan(&data[off..]) {
        off += n;
        cuts.push(off);
    }
    assert!(cuts.len() > 10);
    golden("chunker_cuts_v2.txt", format!("{cuts:?}").as_bytes());
}

#[test]
fn chunker_boundaries_stable_and_golden() {
    let data = rand_bytes(1, 6 * 1024 * 1024);
    let seed = MasterKey::from_bytes(&[7u8; 64]).chunker_seed();
    let whole = {
        let mut c = Chunker::with_sizes(seed, 16 * 1024, 64 * 1024, 256 * 1024);
        let mut cuts = Vec::new();
        let mut off = 0;
        while let Some(n) = c.scan(&data[off..]) {
            off += n;
            cuts.push(off);
        }
        cuts
    };
    // Odd-sized pieces, including single bytes, must give the same cuts.
    let mut c = Chunker::with_sizes(seed, 16 * 1024, 64 * 1024, 256 * 1024);
    let mut pieces = Vec::new();
    let (mut pos, mut step) = (0usize, 1usize);
    while pos < data.len() {
        let end = (pos + step).min(data.len());
        let mut off = pos;
        while let Some(n) = c.scan(&data[off..end]) {
            off += n;
            pieces.push(off);
        }
        pos = end;
        step = step % 7919 + 1;
    }
    assert_eq!(whole, pieces);
    assert!(whole.len() > 40, "expected ~96 chunks, got {}", whole.len());
    // An insertion near the start moves only nearby boundaries.
    let mut shifted = b"inserted".to_vec();
    shifted.extend_from_slice(&data);
    let mut c = Chunker::with_sizes(seed, 16 * 1024, 64 * 1024, 256 * 1024);
    let mut cuts2 = Vec::new();
    let mut off = 0;
    while let Some(n) = c.scan(&shifted[off..]) {
        off += n;
        cuts2.push(off - 8);
    }
    let same = whole.iter().filter(|c| cuts2.contains(c)).count();
    assert!(
        same + 3 >= whole.len(),
        "only {same} of {} boundaries survived an insertion",
        whole.len()
    );
    golden("chunker_cuts.txt", format!("{whole:?}").as_bytes());
}
