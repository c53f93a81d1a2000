//! The CLI end to end on a local source: backup, unchanged detection,
//! restore with times and modes, diff, forget + prune, keys, JSON output.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::{assert_same_tree, rand_bytes, Env};

fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).expect("mkdir");
    fs::write(root.join("a/b/c/deep.bin"), rand_bytes(2, 3_000_000)).expect("write");
    fs::write(root.join("a/same1.bin"), rand_bytes(3, 1_500_000)).expect("write");
    fs::write(root.join("a/same2.bin"), rand_bytes(3, 1_500_000)).expect("write");
    fs::write(root.join("empty"), b"").expect("write");
    fs::write(root.join("Ünïcødé 日本語 ✓.txt"), "unicode\n").expect("write");
    fs::write(
        root.join(format!("{}.txt", "long".repeat(60))),
        "long name\n",
    )
    .expect("write");
    fs::write(root.join("script.sh"), "#!/bin/sh\n").expect("write");
    fs::set_permissions(root.join("script.sh"), fs::Permissions::from_mode(0o750)).expect("chmod");
    std::os::unix::fs::symlink("a/same1.bin", root.join("link")).expect("symlink");
}

#[test]
fn backup_restore_diff_forget_prune_keys() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    let s = src.to_string_lossy().to_string();

    let first = env.json(&["backup", &s, "--tag", "one"]);
    assert_eq!(first["files"], 7);
    assert_eq!(first["errors"], 0);
    // Identical files dedup: stored well below the bytes read.
    assert!(
        first["bytes_new"].as_u64().unwrap_or(0) < 5_000_000,
        "{first}"
    );

    let second = env.json(&["backup", &s]);
    assert_eq!(second["files_unchanged"], 7, "{second}");
    assert_eq!(second["bytes_read"], 0);
    assert_eq!(second["parent"], first["snapshot"]);

    fs::write(src.join("a/b/c/deep.bin"), rand_bytes(4, 3_000_000)).expect("write");
    fs::write(src.join("new.txt"), "new\n").expect("write");
    let third = env.json(&["backup", &s]);
    assert_eq!(third["files_unchanged"], 6, "{third}");

    let out = env.path("out");
    env.ok(&["restore", "latest", "--target", &out.to_string_lossy()]);
    assert_same_tree(&src, &out.join("src"), 1);

    // A sub-path restore.
    let out2 = env.path("out2");
    env.ok(&[
        "restore",
        "latest",
        "/src/a/b",
        "--target",
        &out2.to_string_lossy(),
    ]);
    assert_same_tree(&src.join("a/b"), &out2.join("b"), 1);

    let diff = env.ok(&[
        "diff",
        first["snapshot"].as_str().unwrap_or(""),
        third["snapshot"].as_str().unwrap_or(""),
    ]);
    assert!(diff.contains("M  /src/a/b/c/deep.bin"), "{diff}");
    assert!(diff.contains("+  /src/new.txt"), "{diff}");

    let ls = env.ok(&["ls", "latest", "/src/a"]);
    assert!(ls.contains("/src/a/same1.bin"), "{ls}");

    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps["snapshots"].as_array().map(Vec::len), Some(3));

    let f = env.json(&["forget", "--keep-last", "1"]);
    assert_eq!(f["remove"].as_array().map(Vec::len), Some(2));
    // Marks now; deletes repacked packs at once when no backup runs, the
    // rest on a later run once no backup predates the mark.
    let p1 = env.json(&["prune"]);
    assert!(p1["packs_marked"].as_u64().unwrap_or(0) >= 1, "{p1}");
    let p2 = env.json(&["prune"]);
    let deleted = |p: &serde_json::Value| p["packs_deleted"].as_u64().unwrap_or(0);
    assert!(deleted(&p1) + deleted(&p2) >= 1, "{p1} {p2}");
    let c = env.json(&["check", "--read-data"]);
    assert_eq!(c["errors"].as_array().map(Vec::len), Some(0), "{c}");
    let out3 = env.path("out3");
    env.ok(&["restore", "latest", "--target", &out3.to_string_lossy()]);
    assert_same_tree(&src, &out3.join("src"), 1);

    // Keys: add a recovery slot, open with it, remove the original.
    let added = env
        .cmd(&[
            "key",
            "add",
            "--kind",
            "recovery",
            "--kdf-memory-kib",
            "1024",
            "--json",
        ])
        .env("LEVEE_NEW_PASSWORD", "recovery secret")
        .output()
        .expect("spawn");
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let keys = env.json(&["key", "list"]);
    assert_eq!(keys.as_array().map(Vec::len), Some(2));
    let by_recovery = env
        .cmd(&["snapshots"])
        .env("LEVEE_PASSWORD", "recovery secret")
        .output()
        .expect("spawn");
    assert!(by_recovery.status.success());
    let first_id = keys[0]["id"].as_str().unwrap_or("").to_string();
    let other = keys[1]["id"].as_str().unwrap_or("").to_string();
    // Remove the slot we are not the password of, then the last must stay.
    let (old_pw_slot, _) = if keys[0]["kind"] == "password" {
        (first_id, other)
    } else {
        (other, first_id)
    };
    let rm = env
        .cmd(&["key", "remove", &old_pw_slot])
        .env("LEVEE_PASSWORD", "recovery secret")
        .output()
        .expect("spawn");
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    let wrong = env.run(&["snapshots"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("no key slot opens"));
    let last = env
        .cmd(&["key", "list", "--json"])
        .env("LEVEE_PASSWORD", "recovery secret")
        .output()
        .expect("spawn");
    let last: serde_json::Value = serde_json::from_slice(&last.stdout).expect("json");
    let last_id = last[0]["id"].as_str().unwrap_or("").to_string();
    let rm_last = env
        .cmd(&["key", "remove", &last_id])
        .env("LEVEE_PASSWORD", "recovery secret")
        .output()
        .expect("spawn");
    assert_eq!(rm_last.status.code(), Some(1));
}

#[test]
fn password_file_and_repo_flag() {
    let env = Env::new();
    let pw = env.path("pw");
    std::fs::write(&pw, format!("{}\n", crate::util::PASSWORD)).expect("write");
    let o = std::process::Command::new(crate::util::bin())
        .args(["snapshots", "--json", "--repo"])
        .arg(&env.repo)
        .arg("--password-file")
        .arg(&pw)
        .env_remove("LEVEE_PASSWORD")
        .env_remove("LEVEE_REPO")
        .output()
        .expect("spawn");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn missing_repo_and_password_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = std::process::Command::new(crate::util::bin())
        .args(["snapshots", "--repo"])
        .arg(dir.path())
        .env("LEVEE_PASSWORD", "x")
        .output()
        .expect("spawn");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no repository here"));
    let o = std::process::Command::new(crate::util::bin())
        .args(["snapshots", "--repo"])
        .arg(dir.path())
        .env_remove("LEVEE_PASSWORD")
        .env_remove("LEVEE_PASSWORD_FILE")
        .output()
        .expect("spawn");
    assert!(String::from_utf8_lossy(&o.stderr).contains("LEVEE_PASSWORD"));
}

#[test]
fn excludes_and_several_sources() {
    let env = Env::new();
    let (a, b) = (env.path("x/data"), env.path("y/data"));
    make_tree(&a);
    fs::create_dir_all(b.join("cache")).expect("mkdir");
    fs::write(b.join("cache/big.tmp"), rand_bytes(9, 100_000)).expect("write");
    fs::write(b.join("keep.txt"), "keep\n").expect("write");
    let single = env.path("one-file.txt");
    fs::write(&single, "just me\n").expect("write");
    let s = env.json(&[
        "backup",
        &a.to_string_lossy(),
        &b.to_string_lossy(),
        &single.to_string_lossy(),
        "--exclude",
        "*.sh",
        "--exclude",
        "cache",
    ]);
    assert_eq!(s["errors"], 0, "{s}");
    let ls = env.ok(&["ls", "latest"]);
    // Two sources named `data`: the second becomes `data-2`.
    assert!(
        ls.contains("/data/a/same1.bin")
            && ls.contains("/data-2/keep.txt")
            && ls.contains("/one-file.txt"),
        "{ls}"
    );
    assert!(!ls.contains("script.sh") && !ls.contains("big.tmp"), "{ls}");
    let out = env.path("out");
    env.ok(&[
        "restore",
        "latest",
        "/one-file.txt",
        "--target",
        &out.to_string_lossy(),
    ]);
    assert_eq!(
        fs::read(out.join("one-file.txt")).expect("restored"),
        b"just me\n"
    );
    // --overwrite never leaves a changed file alone.
    fs::write(out.join("one-file.txt"), "edited\n").expect("write");
    env.ok(&[
        "restore",
        "latest",
        "/one-file.txt",
        "--target",
        &out.to_string_lossy(),
        "--overwrite",
        "never",
    ]);
    assert_eq!(
        fs::read(out.join("one-file.txt")).expect("read"),
        b"edited\n"
    );
    env.ok(&[
        "restore",
        "latest",
        "/one-file.txt",
        "--target",
        &out.to_string_lossy(),
        "--overwrite",
        "if-changed",
    ]);
    assert_eq!(
        fs::read(out.join("one-file.txt")).expect("read"),
        b"just me\n"
    );
}
