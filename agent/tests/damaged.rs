//! Issue 12, item 3: a damaged snapshot is named, never silently passed
//! over, and can be forgotten.

use std::fs;

use crate::util::{assert_same_tree, rand_bytes, Env};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn r12_damaged_newest_snapshot_is_named_and_forgettable() {
    let env = Env::new();
    let (a, b) = (env.path("a"), env.path("b"));
    for (d, seed) in [(&a, 1), (&b, 2)] {
        fs::create_dir_all(d).expect("mkdir");
        fs::write(d.join("f"), rand_bytes(seed, 100_000)).expect("write");
    }
    let sa = env.json(&["backup", &a.to_string_lossy()])["snapshot"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let sb = env.json(&["backup", &b.to_string_lossy()])["snapshot"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // The newest snapshot cannot be decrypted (bytes replaced).
    let p = env.repo.join("snapshots").join(&sb);
    fs::write(&p, rand_bytes(9, 300)).expect("damage");

    // restore latest used to restore `a` silently, exit 0.
    let r = env.path("r");
    let o = env.run(&["restore", "latest", "--target", &r.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&sb), "{}", stderr(&o));
    assert!(!r.join("a").exists(), "restored an older snapshot");
    env.ok(&[
        "restore",
        "latest",
        "--skip-damaged",
        "--target",
        &r.to_string_lossy(),
    ]);
    assert_same_tree(&a, &r.join("a"), 1);

    let o = env.run(&["snapshots"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("damaged snapshot {sb}")),
        "{}",
        stderr(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains(&sa[..8]));
    env.ok(&["snapshots", "--skip-damaged"]);

    let o = env.run(&["forget", "--keep-last", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&sb), "{}", stderr(&o));
    assert!(env.repo.join("snapshots").join(&sa).exists());
    let o = env.run(&["prune"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&sb), "{}", stderr(&o));

    // Forgotten by id although it cannot be read; then prune goes on.
    env.ok(&["forget", &sb[..12]]);
    assert!(!p.exists());
    env.ok(&["snapshots"]);
    env.ok(&["prune"]);
    env.ok(&["prune"]);
    let c = env.json(&["check", "--read-data"]);
    assert_eq!(c["errors"].as_array().map(Vec::len), Some(0), "{c}");
    let r2 = env.path("r2");
    env.ok(&["restore", "latest", "--target", &r2.to_string_lossy()]);
    assert_same_tree(&a, &r2.join("a"), 1);
}

/// `check --read-data` used to stop at the pack's name mismatch; now every
/// damaged blob is listed with the files of the snapshots that hold it.
#[test]
fn r12_check_lists_every_damaged_blob_and_its_files() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).expect("mkdir");
    for n in 0..3u64 {
        fs::write(src.join(format!("f{n}")), rand_bytes(n + 10, 3_000_000)).expect("write");
    }
    let snap = env.json(&["backup", &src.to_string_lossy()])["snapshot"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut packs = Vec::new();
    for d in fs::read_dir(env.repo.join("data")).expect("data") {
        for p in fs::read_dir(d.expect("dir").path()).expect("fan") {
            packs.push(p.expect("pack").path());
        }
    }
    let pack = packs
        .iter()
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    let mut bytes = fs::read(pack).expect("read");
    // Two places far apart: two different blobs (chunks are >= 512 KiB).
    for at in [bytes.len() / 8, bytes.len() * 5 / 8] {
        bytes[at] ^= 0x5a;
    }
    fs::write(pack, &bytes).expect("write");

    let o = env.run(&["check", "--read-data", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let damaged = r["damaged_blobs"].as_array().cloned().unwrap_or_default();
    assert_eq!(damaged.len(), 2, "{r}");
    for d in &damaged {
        let users = d["used_by"].to_string();
        assert!(
            users.contains(&snap[..12]) && users.contains("/src/f"),
            "{d}"
        );
    }
    let o = env.run(&["check", "--read-data"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.matches("damaged blob ").count(), 2, "{text}");
}

/// `repair`: the index rebuilt from pack headers after every index file is
/// lost; with --read-data a damaged blob is left out and the file using it
/// dropped from the snapshot, the rest restores, and after a prune
/// `check --read-data` is clean. No pack is deleted by repair.
#[test]
fn r12_repair_rebuilds_the_index_and_drops_lost_blobs() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).expect("mkdir");
    for n in 0..3u64 {
        fs::write(src.join(format!("f{n}")), rand_bytes(n + 20, 2_000_000)).expect("write");
        fs::write(src.join(format!("d/s{n}")), format!("small {n}")).expect("write");
    }
    env.ok(&["backup", &src.to_string_lossy()]);
    let listing = |dir: &str| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(env.repo.join(dir))
            .expect("list")
            .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    for f in listing("index") {
        fs::remove_file(env.repo.join("index").join(f)).expect("rm");
    }
    let r = env.json(&["repair"]);
    assert_eq!(
        r["snapshots_rewritten"].as_array().map(Vec::len),
        Some(0),
        "{r}"
    );
    assert!(r["packs_indexed"].as_u64().unwrap_or(0) >= 1, "{r}");
    let c = env.json(&["check"]);
    assert_eq!(c["errors"].as_array().map(Vec::len), Some(0), "{c}");
    assert_eq!(
        c["unindexed_packs"].as_array().map(Vec::len),
        Some(0),
        "{c}"
    );

    // Damage one large blob (the packs hold 2 MB chunks of f0..f2).
    let mut packs = Vec::new();
    for d in fs::read_dir(env.repo.join("data")).expect("data") {
        for p in fs::read_dir(d.expect("dir").path()).expect("fan") {
            packs.push(p.expect("pack").path());
        }
    }
    let pack = packs
        .iter()
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack")
        .clone();
    let mut bytes = fs::read(&pack).expect("read");
    let at = bytes.len() / 3;
    bytes[at] ^= 0x5a;
    fs::write(&pack, &bytes).expect("write");
    let packs_before = packs.len();

    let r = env.json(&["repair", "--read-data"]);
    assert_eq!(r["blobs_damaged"].as_array().map(Vec::len), Some(1), "{r}");
    let dropped = r["dropped"].to_string();
    assert!(dropped.contains("/src/f"), "{r}");
    assert_eq!(
        r["snapshots_rewritten"].as_array().map(Vec::len),
        Some(1),
        "{r}"
    );
    assert!(pack.exists(), "repair deleted a pack");
    let mut after = 0;
    for d in fs::read_dir(env.repo.join("data")).expect("data") {
        after += fs::read_dir(d.expect("dir").path()).expect("fan").count();
    }
    assert!(after >= packs_before);

    // The rest restores, exit 0; the snapshot says it was repaired.
    let out = env.path("out");
    env.ok(&["restore", "latest", "--target", &out.to_string_lossy()]);
    let mut restored = 0;
    for n in 0..3u64 {
        let f = format!("src/f{n}");
        if let Ok(b) = fs::read(out.join(&f)) {
            assert_eq!(b, fs::read(src.join(format!("f{n}"))).expect("src"));
            restored += 1;
        }
        let s = fs::read(out.join(format!("src/d/s{n}"))).expect("small");
        assert_eq!(s, format!("small {n}").as_bytes());
    }
    assert_eq!(restored, 2);
    assert!(env.ok(&["snapshots"]).contains("repaired"));
    env.ok(&["prune"]);
    env.ok(&["prune"]);
    let c = env.json(&["check", "--read-data"]);
    assert_eq!(c["errors"].as_array().map(Vec::len), Some(0), "{c}");
}
