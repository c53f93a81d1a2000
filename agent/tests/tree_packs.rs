//! Issue 14: trees and data in separate packs. A new backup's packs each
//! hold one kind of blob (so a take-over or an offsite listing fetches the
//! small tree packs only), prune's repack and `prune --rewrite` keep the
//! kinds apart, and a repository written before (packs mixing trees and
//! data, made here by merging a backup's packs into one) still backs up,
//! prunes and restores.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use levee_agent::backup::backend::{FileKind, ReadBackend, WriteBackend};
use levee_agent::Repository;
use levee_proto::repo::crypto::file_id;
use levee_proto::repo::pack::trailer;
use levee_proto::repo::{BlobEntry, BlobKind, IndexFile, IndexPack, PackHeader};

use crate::util::{rand_bytes, Env, PASSWORD};

/// What each pack holds: (trees, data) blob counts, by pack name.
pub fn pack_kinds(repo_dir: &Path) -> BTreeMap<String, (usize, usize)> {
    let repo = Repository::open(repo_dir, PASSWORD.as_bytes()).expect("open");
    let mut out = BTreeMap::new();
    for (name, size) in repo.local().list(FileKind::Pack).expect("list") {
        let h = repo.read_pack_header(&name, size).expect("header");
        let trees = h.blobs.iter().filter(|b| b.kind == BlobKind::Tree).count();
        out.insert(name, (trees, h.blobs.len() - trees));
    }
    out
}

/// Every pack holds one kind of blob; returns (tree packs, data packs).
fn assert_pure(repo_dir: &Path, when: &str) -> (usize, usize) {
    let kinds = pack_kinds(repo_dir);
    let mixed: Vec<_> = kinds
        .iter()
        .filter(|(_, (t, d))| *t > 0 && *d > 0)
        .collect();
    assert!(mixed.is_empty(), "{when}: mixed packs {mixed:?}");
    let trees = kinds.values().filter(|(t, _)| *t > 0).count();
    (trees, kinds.len() - trees)
}

/// A source with nested directories, small files (in frames) and two
/// large ones of `big` MiB each (alone; over one pack from 9 up).
pub fn make_source(dir: &Path, big: [usize; 2]) {
    for d in 0..6 {
        let sub = dir.join(format!("d{d}")).join("inner");
        fs::create_dir_all(&sub).expect("mkdir");
        for f in 0..20 {
            fs::write(
                sub.join(format!("f{f}.txt")),
                format!("file {d}/{f}\n").repeat(50),
            )
            .expect("write");
        }
    }
    fs::write(dir.join("big1.bin"), rand_bytes(1, big[0] << 20)).expect("write");
    fs::write(dir.join("big2.bin"), rand_bytes(2, big[1] << 20)).expect("write");
}

#[test]
fn r14_backups_write_tree_packs_apart_and_prune_and_rewrite_keep_them_apart() {
    let env = Env::new();
    let src = env.path("src");
    make_source(&src, [12, 9]);
    let s = src.to_string_lossy().to_string();
    let first = env.json(&["backup", &s]);
    let (trees, data) = assert_pure(&env.repo, "first backup");
    assert_eq!(trees, 1, "one run's trees fit one tree pack");
    assert!(data >= 2, "21 MiB of data: {data} data packs");
    assert_eq!(first["packs_written"], (trees + data) as u64);

    // Changes, a second backup, the first forgotten: prune repacks the
    // partly used packs (tree and data) into pure packs.
    fs::write(src.join("d0/inner/f0.txt"), "changed\n").expect("write");
    fs::write(src.join("big2.bin"), rand_bytes(3, 9 << 20)).expect("write");
    env.ok(&["backup", &s]);
    assert_pure(&env.repo, "second backup");
    env.ok(&["forget", first["snapshot"].as_str().expect("id")]);
    let r = env.json(&["prune", "--max-unused-percent", "0"]);
    assert!(r["packs_repacked"].as_u64() > Some(0), "{r}");
    assert_pure(&env.repo, "after prune");

    // Key rotation and `prune --rewrite`: everything written again, apart.
    const NEW: &str = "a new passphrase for the rotated key";
    let o = env
        .cmd(&["key", "rotate", "--kdf-memory-kib", "1024"])
        .env("LEVEE_NEW_PASSWORD", NEW)
        .output()
        .expect("spawn");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for _ in 0..2 {
        let o = env
            .cmd(&["prune", "--rewrite"])
            .env("LEVEE_PASSWORD", NEW)
            .output()
            .expect("spawn");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let repo = Repository::open(&env.repo, NEW.as_bytes()).expect("open");
    for (name, size) in repo.local().list(FileKind::Pack).expect("list") {
        let h = repo.read_pack_header(&name, size).expect("header");
        let trees = h.blobs.iter().filter(|b| b.kind == BlobKind::Tree).count();
        assert!(
            trees == 0 || trees == h.blobs.len(),
            "pack {name} after the rewrite: {trees} trees of {}",
            h.blobs.len()
        );
    }
    let out = env.path("out");
    let o = env
        .cmd(&["restore", "latest", "--target", &out.to_string_lossy()])
        .env("LEVEE_PASSWORD", NEW)
        .output()
        .expect("spawn");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    crate::util::assert_same_tree(&src, &out.join("src"), 1);
}

/// Rewrites the repository at `repo_dir` the way a backup wrote it before
/// trees had packs of their own: every pack's blobs (ciphertext as is)
/// in one pack, trees between data, one index file naming it. The
/// repository must hold under 16 MiB, like any pack.
pub fn mix_all_packs(repo_dir: &Path) -> String {
    let repo = Repository::open(repo_dir, PASSWORD.as_bytes()).expect("open");
    let packs = repo.local().list(FileKind::Pack).expect("list");
    let mut buf = Vec::new();
    let mut entries: Vec<BlobEntry> = Vec::new();
    for (name, size) in &packs {
        let h = repo.read_pack_header(name, *size).expect("header");
        let bytes = fs::read(repo.local().path(FileKind::Pack, name)).expect("pack");
        // A frame's members share one piece: copied once.
        let mut moved: HashMap<u32, u32> = HashMap::new();
        for e in h.blobs {
            let at = *moved.entry(e.offset).or_insert_with(|| {
                let at = buf.len() as u32;
                let (o, l) = (e.offset as usize, e.length as usize);
                buf.extend_from_slice(&bytes[o..o + l]);
                at
            });
            entries.push(BlobEntry { offset: at, ..e });
        }
    }
    let header = PackHeader {
        blobs: entries.clone(),
    };
    let plain = if repo.pads_packs() {
        header.to_bytes_padded()
    } else {
        header.to_bytes()
    };
    let sealed = repo.key().encrypt(&plain);
    buf.extend_from_slice(&sealed);
    buf.extend_from_slice(&trailer(sealed.len() as u32));
    let id = file_id(&buf);
    repo.local()
        .write(FileKind::Pack, &id.to_hex(), &buf)
        .expect("write");
    for (name, _) in repo.local().list(FileKind::Index).expect("list") {
        repo.local().remove(FileKind::Index, &name).expect("rm");
    }
    repo.be
        .save(
            FileKind::Index,
            &IndexFile {
                packs: vec![IndexPack { id, blobs: entries }],
            }
            .to_bytes(),
        )
        .expect("index");
    for (name, _) in &packs {
        repo.local().remove(FileKind::Pack, name).expect("rm");
    }
    id.to_hex()
}

#[test]
fn r14_an_old_mixed_repository_still_backs_up_prunes_and_restores() {
    let env = Env::new();
    let src = env.path("src");
    // Under 16 MiB in all: an old pack's size (the index keeps frame
    // members' offsets in 24 bits, as packs never grew past that).
    make_source(&src, [6, 4]);
    let s = src.to_string_lossy().to_string();
    let first = env.json(&["backup", &s]);
    let mixed = mix_all_packs(&env.repo);
    let kinds = pack_kinds(&env.repo);
    assert_eq!(kinds.len(), 1);
    assert!(kinds[&mixed].0 > 0 && kinds[&mixed].1 > 0, "{kinds:?}");
    let c = env.json(&["check", "--read-data"]);
    assert_eq!(c["errors"].as_array().map(Vec::len), Some(0), "{c}");

    // A backup into it: the unchanged files come from the parent's trees in
    // the mixed pack, the new packs are pure.
    fs::write(src.join("d1/inner/new.txt"), "new after the upgrade\n").expect("write");
    fs::write(src.join("big2.bin"), rand_bytes(4, 4 << 20)).expect("write");
    let second = env.json(&["backup", &s]);
    assert_eq!(second["files_unchanged"], 121, "{second}");
    let kinds = pack_kinds(&env.repo);
    for (name, (t, d)) in &kinds {
        assert!(
            name == &mixed || *t == 0 || *d == 0,
            "{name}: {t} trees, {d} data"
        );
    }

    // Forget the first snapshot, prune: the mixed pack's live blobs are
    // copied apart (trees to a tree pack, data to data packs).
    env.ok(&["forget", first["snapshot"].as_str().expect("id")]);
    let r = env.json(&["prune", "--max-unused-percent", "0"]);
    assert!(r["packs_repacked"].as_u64() > Some(0), "{r}");
    let r = env.json(&["prune", "--max-unused-percent", "0"]);
    assert_eq!(r["packs_repacked"], 0, "{r}");
    assert_pure(&env.repo, "after pruning the mixed repository");
    let c = env.json(&["check", "--read-data"]);
    assert_eq!(c["errors"].as_array().map(Vec::len), Some(0), "{c}");
    let out = env.path("out");
    env.ok(&["restore", "latest", "--target", &out.to_string_lossy()]);
    crate::util::assert_same_tree(&src, &out.join("src"), 1);
}
