//! Issue 12, item 2: prune frees what it repacks, and repeated prunes with
//! no new data change nothing.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::util::{rand_bytes, Env};

/// Pack name -> size.
fn packs(repo: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for d in fs::read_dir(repo.join("data")).expect("data") {
        for p in fs::read_dir(d.expect("dir").path()).expect("fan") {
            let p = p.expect("pack");
            out.insert(
                p.file_name().to_string_lossy().into_owned(),
                p.metadata().expect("stat").len(),
            );
        }
    }
    out
}

/// The scenario from the issue: 12 files of 2 MB, 5 rewritten, the first
/// snapshot forgotten. Before the fix "marked 2, repacked 2" and
/// "re-indexed 2" alternated, nothing was deleted and data grew
/// 49 -> 63 -> 77 MB.
#[test]
fn r12_ten_prunes_in_a_row_converge() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).expect("mkdir");
    for n in 0..12u64 {
        fs::write(src.join(format!("f{n}")), rand_bytes(n, 2_000_000)).expect("write");
    }
    let s = src.to_string_lossy().to_string();
    let first = env.json(&["backup", &s])["snapshot"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for n in 0..5u64 {
        fs::write(src.join(format!("f{n}")), rand_bytes(n + 100, 2_000_000)).expect("write");
    }
    env.ok(&["backup", &s]);
    env.ok(&["forget", &first]);
    let before: u64 = packs(&env.repo).values().sum();

    let mut history = Vec::new();
    for i in 0..10 {
        let r = env.json(&["prune"]);
        let p = packs(&env.repo);
        let bytes: u64 = p.values().sum();
        eprintln!("prune {}: {r} -> {} packs, {bytes} bytes", i + 1, p.len());
        if i > 0 {
            for k in [
                "packs_deleted",
                "packs_marked",
                "packs_repacked",
                "packs_reindexed",
            ] {
                assert_eq!(r[k], 0, "prune {}: {k} in {r}", i + 1);
            }
        }
        history.push(p);
    }
    assert!(
        history.windows(2).skip(1).all(|w| w[0] == w[1]) && history[0] == history[1],
        "packs changed after the first prune"
    );
    let after: u64 = history[9].values().sum();
    // 7 unchanged files + 5 new versions remain: about 24 MB of the 34.
    assert!(after < before, "{before} -> {after} bytes: nothing freed");
    assert!(after < 26_000_000, "{after} bytes left for 24 MB of data");
    let c = env.json(&["check", "--read-data"]);
    assert_eq!(c["errors"].as_array().map(Vec::len), Some(0), "{c}");
    let out = env.path("out");
    env.ok(&["restore", "latest", "--target", &out.to_string_lossy()]);
    crate::util::assert_same_tree(&src, &out.join("src"), 1);
}
