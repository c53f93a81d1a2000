//! Issue 12, item 4: `key rotate` after a leaked secret, and `prune
//! --rewrite`. The attack: someone kept a copy of a key slot from before
//! the rotation and knows its secret (the leak), and can read the store.
//! After the rotation and the rewrite that copy must open nothing the
//! repository still holds: not the config, index or snapshot files, not a
//! pack header, not a single blob.

use std::fs;
use std::path::Path;

use levee_proto::repo::pack::parse_trailer;
use levee_proto::repo::{KeySlot, MasterKey, PackHeader};

use crate::util::{assert_same_tree, rand_bytes, Env, PASSWORD};

const NEW: &str = "a fresh secret after the leak";

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".tmp"))
        {
            out.push(p);
        }
    }
    out
}

fn open_slot(path: &Path, secret: &str) -> MasterKey {
    let slot = KeySlot::parse(&fs::read(path).expect("slot")).expect("parse slot");
    slot.open(secret.as_bytes())
        .expect("slot opens")
        .with_cipher(levee_proto::repo::Cipher::Xaes256Gcm)
}

/// Every encrypted thing in the repository, tried with `key`; returns how
/// many opened. Blob offsets come from the headers opened with `reader`.
fn count_opened(repo: &Path, key: &MasterKey, reader: &MasterKey) -> usize {
    let mut opened = 0;
    let cfg = fs::read(repo.join("config")).expect("config");
    opened += usize::from(key.decrypt_aad(&cfg[5..], &cfg[..5]).is_ok());
    for d in ["index", "snapshots"] {
        for f in files(&repo.join(d)) {
            opened += usize::from(key.decrypt(&fs::read(&f).expect("read")).is_ok());
        }
    }
    for f in files(&repo.join("data")) {
        let b = fs::read(&f).expect("pack");
        let (start, len) = parse_trailer(&b[b.len() - 8..], b.len() as u64).expect("trailer");
        let hb = &b[start as usize..(start + u64::from(len)) as usize];
        opened += usize::from(key.decrypt(hb).is_ok());
        let Ok((plain, _)) = reader.decrypt_pack_data(hb) else {
            continue;
        };
        for e in PackHeader::parse(&plain).expect("header").blobs {
            let ct = &b[e.offset as usize..(e.offset + e.length) as usize];
            opened += usize::from(key.decrypt(ct).is_ok());
        }
    }
    opened
}

#[test]
fn r12_key_rotate_and_rewrite_lock_out_an_old_slot_copy() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).expect("mkdir");
    fs::write(src.join("big.bin"), rand_bytes(7, 3_000_000)).expect("write");
    for i in 0..30 {
        fs::write(src.join("d").join(format!("f{i}")), format!("small {i}")).expect("write");
    }
    let s = src.to_string_lossy().to_string();
    env.ok(&["backup", &s]);
    // The attacker's copy of the slot, taken before the rotation.
    let slots = files(&env.repo.join("keys"));
    assert_eq!(slots.len(), 1);
    let old_slot = fs::read(&slots[0]).expect("slot");
    let old_key = open_slot(&slots[0], PASSWORD);

    let o = env
        .cmd(&["key", "rotate", "--kdf-memory-kib", "1024"])
        .env("LEVEE_NEW_PASSWORD", NEW)
        .output()
        .expect("spawn");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("prune --rewrite"), "{}", stderr(&o));
    assert!(stderr(&o).contains("Offsite copies"), "{}", stderr(&o));
    let new_slots = files(&env.repo.join("keys"));
    assert_eq!(new_slots.len(), 1, "old slots are removed");
    let new_key = open_slot(&new_slots[0], NEW);

    // The old secret no longer opens the repository, even with the old
    // slot put back; the message says why.
    fs::write(env.repo.join("keys").join("kept-copy"), &old_slot).expect("write");
    let o = env.run(&["snapshots"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("rotated"), "{}", stderr(&o));
    fs::remove_file(env.repo.join("keys").join("kept-copy")).expect("rm");

    let with_new = |args: &[&str]| {
        let o = env
            .cmd(args)
            .env("LEVEE_PASSWORD", NEW)
            .output()
            .expect("spawn");
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // Before the rewrite the old key still opens the old packs (what the
    // rewrite is for), but not the re-encrypted config, index or snapshots.
    let before = count_opened(
        &env.repo,
        &old_key,
        &new_key.clone().with_retired(vec![old_key.clone()]),
    );
    assert!(
        before > 0,
        "the old packs should still be under the old key"
    );
    // New data after the rotation, then the rewrite.
    fs::write(src.join("after.bin"), rand_bytes(8, 1_500_000)).expect("write");
    fs::write(src.join("d").join("f3"), "changed after the rotation").expect("write");
    with_new(&["backup", &s]);
    let mut left = usize::MAX;
    let mut rewritten = 0;
    for _ in 0..3 {
        let v: serde_json::Value =
            serde_json::from_str(&with_new(&["prune", "--rewrite", "--json"])).expect("json");
        rewritten += v["rewrite"]["snapshots_rewritten"]
            .as_array()
            .map_or(0, Vec::len);
        left = v["rewrite"]["retired_keys_left"].as_u64().expect("left") as usize;
        if left == 0 {
            break;
        }
    }
    assert_eq!(rewritten, 2, "both snapshots referenced old blobs");
    assert_eq!(left, 0, "retired keys dropped after the old packs went");

    // The attack: the old key opens nothing the repository holds.
    assert_eq!(count_opened(&env.repo, &old_key, &new_key), 0);
    // ... and everything is readable with the new key alone.
    let c: serde_json::Value =
        serde_json::from_str(&with_new(&["check", "--read-data", "--json"])).expect("json");
    assert_eq!(c["errors"].as_array().map(Vec::len), Some(0), "{c}");
    let out = env.path("out");
    with_new(&["restore", "latest", "--target", &out.to_string_lossy()]);
    assert_same_tree(&src, &out.join("src"), 1);
    // Deduplication continues under the new key: an unchanged backup adds nothing.
    let v: serde_json::Value =
        serde_json::from_str(&with_new(&["backup", &s, "--json"])).expect("json");
    assert_eq!(v["bytes_new"], 0, "{v}");
}

/// Rotation refuses format 1 repositories (their config is plaintext and
/// cannot hold the retired key) with a clear way out, changing nothing.
#[test]
fn r12_key_rotate_refusals() {
    let env = Env::new();
    fs::remove_dir_all(&env.repo).expect("rm");
    levee_agent::Repository::init_format(
        &env.repo,
        PASSWORD.as_bytes(),
        levee_proto::repo::KdfParams::with_memory(1024),
        "password",
        "",
        levee_proto::repo::file_formats::FORMAT_1,
    )
    .expect("init format 1");
    let o = env
        .cmd(&["key", "rotate", "--kdf-memory-kib", "1024"])
        .env("LEVEE_NEW_PASSWORD", NEW)
        .output()
        .expect("spawn");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("format 2"), "{}", stderr(&o));
    // Still opens with the old secret: nothing changed.
    env.ok(&["snapshots"]);
}
