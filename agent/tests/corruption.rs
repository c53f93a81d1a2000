//! Damage the repository on purpose: check names what is broken, restores
//! of unaffected files still work, nothing panics (exit code 101).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::util::{assert_same_tree, rand_bytes, Env};

fn packs(repo: &Path) -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    for d in fs::read_dir(repo.join("data")).expect("data dir").flatten() {
        for f in fs::read_dir(d.path()).expect("fan-out dir").flatten() {
            out.insert(f.path());
        }
    }
    out
}

fn files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".tmp"))
        .collect()
}

fn no_panic(o: &std::process::Output) {
    assert_ne!(
        o.status.code(),
        Some(101),
        "panicked: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Two sources backed up separately, so their data sits in different packs.
fn setup() -> (Env, PathBuf, PathBuf, String, String, HashSet<PathBuf>) {
    let env = Env::new();
    let (a, b) = (env.path("a"), env.path("b"));
    fs::create_dir_all(&a).expect("mkdir");
    fs::create_dir_all(&b).expect("mkdir");
    fs::write(a.join("a.bin"), rand_bytes(1, 3_000_000)).expect("write");
    fs::write(b.join("b.bin"), rand_bytes(2, 3_000_000)).expect("write");
    let sa = env.json(&["backup", &a.to_string_lossy()])["snapshot"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let packs_a = packs(&env.repo);
    let sb = env.json(&["backup", &b.to_string_lossy()])["snapshot"]
        .as_str()
        .unwrap_or("")
        .to_string();
    (env, a, b, sa, sb, packs_a)
}

#[test]
fn flipped_bytes_in_a_pack() {
    let (env, _a, b, sa, sb, packs_a) = setup();
    let victim = packs_a
        .iter()
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack")
        .clone();
    let mut bytes = fs::read(&victim).expect("read");
    // Inside a.bin's data, not in the pack's header or in a tree blob the
    // pack may also hold (blob order in a pack is not fixed): at a quarter,
    // a half and three quarters of a 3 MB pack, only data chunks lie there.
    // Fixed offsets near the start hit the directory's tree in about one
    // run in eight, and the restore then names the directory, not a.bin.
    let len = bytes.len();
    assert!(
        len > 1_000_000,
        "A's largest pack holds a.bin's data: {len} bytes"
    );
    for i in [len / 4, len / 2, len * 3 / 4] {
        bytes[i] ^= 0x5a;
    }
    fs::write(&victim, &bytes).expect("write");
    let name = victim
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();

    let o = env.run(&["check", "--read-data"]);
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("pack {name}")),
        "check did not name the damaged pack {name}:\n{out}"
    );

    // B's files are elsewhere: they restore.
    let rb = env.path("rb");
    env.ok(&["restore", &sb, "--target", &rb.to_string_lossy()]);
    assert_same_tree(&b, &rb.join("b"), 1);
    // A's file is damaged: reported, exit 3, no panic.
    let ra = env.path("ra");
    let o = env.run(&["restore", &sa, "--target", &ra.to_string_lossy()]);
    no_panic(&o);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("a.bin"),
        "the damaged file is not named:\n{err}"
    );
}

#[test]
fn deleted_index_file() {
    let (env, a, b, sa, _sb, _) = setup();
    let idx = env.repo.join("index");
    let names = files(&idx);
    assert!(names.len() >= 2);
    fs::remove_file(idx.join(&names[0])).expect("rm");

    let o = env.run(&["check"]);
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("no index file names it"), "{out}");

    // Restores read the orphaned packs' headers: everything still restores.
    let r = env.path("r");
    env.ok(&["restore", "latest", "--target", &r.to_string_lossy()]);
    assert_same_tree(&b, &r.join("b"), 1);
    let ra = env.path("ra");
    env.ok(&["restore", &sa, "--target", &ra.to_string_lossy()]);
    assert_same_tree(&a, &ra.join("a"), 1);
    // The next backup re-indexes them, and check is clean again.
    env.ok(&["backup", &a.to_string_lossy()]);
    let c = env.json(&["check", "--read-data"]);
    assert_eq!(c["errors"].as_array().map(Vec::len), Some(0), "{c}");
}

#[test]
fn truncated_snapshot_file() {
    let (env, _a, b, sa, sb, _) = setup();
    let p = env.repo.join("snapshots").join(&sa);
    let len = fs::metadata(&p).expect("stat").len();
    let f = fs::OpenOptions::new().write(true).open(&p).expect("open");
    f.set_len(len / 2).expect("truncate");

    let o = env.run(&["check"]);
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("snapshot {sa}")), "{out}");

    let o = env.run(&["snapshots"]);
    no_panic(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&sb[..8]));
    let r = env.path("r");
    env.ok(&["restore", &sb, "--target", &r.to_string_lossy()]);
    assert_same_tree(&b, &r.join("b"), 1);
    let o = env.run(&["restore", &sa, "--target", &r.to_string_lossy()]);
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1));
    // Prune refuses rather than guess what the damaged snapshot needed.
    let o = env.run(&["prune"]);
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing to prune"));
}
