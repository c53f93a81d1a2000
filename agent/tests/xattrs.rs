//! Extended attributes and POSIX ACLs of a local source: backed up,
//! restored elsewhere with mtimes exact, kept across an incremental backup
//! of unchanged files, and names that cannot be kept are reported.
//! Needs a file system with `user.*` xattrs and ACLs (ext4 or tmpfs under
//! /tmp) and `setfacl`/`getfacl`, installed here if missing.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{assert_same_tree, Env};

/// A file's xattrs as the kernel shows them, symlinks not followed.
fn xattrs_of(p: &Path) -> BTreeMap<OsString, Vec<u8>> {
    xattr::list(p)
        .unwrap_or_else(|e| panic!("listxattr {}: {e}", p.display()))
        .map(|n| {
            let v = xattr::get(p, &n)
                .unwrap_or_else(|e| panic!("getxattr {} {n:?}: {e}", p.display()))
                .unwrap_or_default();
            (n, v)
        })
        .collect()
}

fn set(p: &Path, name: &str, value: &[u8]) {
    xattr::set(p, name, value).unwrap_or_else(|e| {
        panic!(
            "setxattr {} {name}: {e} (the tests' temp dir must be on a file system with xattrs)",
            p.display()
        )
    });
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// setfacl/getfacl (Debian package `acl`): installed if missing, since a
/// skipped ACL test proves nothing.
fn ensure_acl_tools() {
    let have = || {
        Command::new("setfacl")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have() {
        return;
    }
    let install = || {
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300", "install", "-y"])
            .args(["--no-install-recommends", "acl"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        // The package lists may be missing on a fresh machine.
        let _ = Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300", "update"])
            .status();
        assert!(
            install(),
            "setfacl is missing and `apt-get install acl` failed: install the acl package"
        );
    }
    assert!(have(), "setfacl still missing after installing acl");
}

/// getfacl of `rels` below `root`, numeric and without following symlinks,
/// named relative to `root` so two trees compare.
fn getfacl(root: &Path, rels: &[&str]) -> String {
    run(Command::new("getfacl")
        .args(["-n", "-P"])
        .args(rels)
        .current_dir(root))
}

/// Every entry below `root` (root included, as ""), sorted.
fn entries(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::new()];
    let mut i = 0;
    while i < out.len() {
        let p = root.join(&out[i]);
        if fs::symlink_metadata(&p).expect("lstat").is_dir() {
            for e in fs::read_dir(&p).expect("read_dir") {
                out.push(out[i].join(e.expect("entry").file_name()));
            }
        }
        i += 1;
    }
    out.sort();
    out
}

fn assert_same_xattrs(a: &Path, b: &Path) {
    let mut seen = 0;
    for rel in entries(a) {
        let xa = xattrs_of(&a.join(&rel));
        let xb = xattrs_of(&b.join(&rel));
        assert_eq!(xa, xb, "xattrs of {}", rel.display());
        seen += xa.len();
    }
    assert!(seen > 0, "no xattrs compared");
}

const ACL_PATHS: [&str; 4] = [".", "file", "dir", "dir/inner"];

/// A tree with user xattrs (binary, non-ASCII name), access and default
/// ACLs, a symlink, and set mtimes.
fn make_tree(src: &Path) {
    fs::create_dir_all(src.join("dir")).expect("mkdir");
    let file = src.join("file");
    fs::write(&file, b"contents\n").expect("write");
    // Fail loudly, not vacuously, where xattrs do not work.
    set(&file, "user.levee-probe", b"1");
    assert_eq!(
        xattr::get(&file, "user.levee-probe").ok().flatten(),
        Some(b"1".to_vec()),
        "user xattrs do not work in {}",
        src.display()
    );
    set(&file, "user.bin", b"\0a\0b\xff\0");
    set(&file, "user.ünïcødé ✓", "värde".as_bytes());
    run(Command::new("setfacl")
        .args(["-m", "u:1234:rw,g:4321:r"])
        .arg(&file));
    let dir = src.join("dir");
    set(&dir, "user.dir", b"a directory");
    run(Command::new("setfacl").args(["-m", "u:1234:rwx"]).arg(&dir));
    run(Command::new("setfacl")
        .args(["-d", "-m", "g:55:rx,u:1234:r"])
        .arg(&dir));
    // Inherits the default ACL as its access ACL.
    fs::write(dir.join("inner"), b"inner\n").expect("write");
    std::os::unix::fs::symlink("file", src.join("link")).expect("symlink");
    // Exact, odd mtimes: a restore that set xattrs after the times would
    // still keep them (setxattr moves ctime only), but this proves it.
    for (p, t) in [
        ("file", "2021-03-04 05:06:07.123456789"),
        ("dir/inner", "2020-01-02 03:04:05.987654321"),
        ("dir", "2019-12-31 23:59:59.000000001"),
        ("", "2018-06-07 08:09:10.5"),
    ] {
        run(Command::new("touch").args(["-h", "-d", t]).arg(src.join(p)));
    }
    let acl = getfacl(src, &ACL_PATHS);
    assert!(
        acl.contains("user:1234:rw-") && acl.contains("default:group:55:r-x"),
        "setfacl had no effect:\n{acl}"
    );
}

fn assert_restored(src: &Path, out: &Path) {
    assert_same_tree(src, out, 1);
    assert_same_xattrs(src, out);
    assert_eq!(getfacl(src, &ACL_PATHS), getfacl(out, &ACL_PATHS));
    // The symlink's target got nothing of its own beyond the file's.
    assert_eq!(xattrs_of(&out.join("file")), xattrs_of(&src.join("file")));
}

#[test]
fn xattrs_and_acls_round_trip() {
    ensure_acl_tools();
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    // As root (CI), a symlink can carry trusted.* (user.* is refused on
    // symlinks by the kernel): it must land on the link, not its target.
    let root = xattr::set(src.join("link"), "trusted.levee", b"on the link").is_ok();
    let s = src.to_string_lossy().to_string();

    let b = env.json(&["backup", &s]);
    assert_eq!(b["errors"], 0, "{b}");
    let out = env.path("out");
    let r = env.json(&["restore", "latest", "--target", &out.to_string_lossy()]);
    assert_eq!(r["warnings"], 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    // file: probe, bin, ünïcødé, ACL; dir: user.dir, access and default
    // ACL; dir/inner: inherited ACL; the link's trusted.* as root.
    let want = 8 + u64::from(root);
    assert_eq!(r["xattrs"].as_u64(), Some(want), "{r}");
    assert_restored(&src, &out.join("src"));
    if root {
        assert_eq!(
            xattr::get(out.join("src/link"), "trusted.levee")
                .ok()
                .flatten(),
            Some(b"on the link".to_vec())
        );
    }
}

#[test]
fn unchanged_files_keep_their_xattrs() {
    ensure_acl_tools();
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    let s = src.to_string_lossy().to_string();
    env.json(&["backup", &s]);
    let second = env.json(&["backup", &s]);
    // Both files came from the parent snapshot, xattrs and all.
    assert_eq!(second["files_unchanged"], 2, "{second}");
    assert_eq!(second["bytes_read"], 0, "{second}");
    let out = env.path("out2");
    env.ok(&["restore", "latest", "--target", &out.to_string_lossy()]);
    assert_restored(&src, &out.join("src"));

    // An xattr change moves ctime, so the file is read again with it.
    set(&src.join("file"), "user.bin", b"changed");
    let third = env.json(&["backup", &s]);
    assert_eq!(third["files_unchanged"], 1, "{third}");
    let out = env.path("out3");
    env.ok(&["restore", "latest", "--target", &out.to_string_lossy()]);
    assert_eq!(
        xattr::get(out.join("src/file"), "user.bin").ok().flatten(),
        Some(b"changed".to_vec())
    );
}

#[test]
fn non_utf8_xattr_names_are_reported_and_skipped() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).expect("mkdir");
    let file = src.join("file");
    fs::write(&file, b"x").expect("write");
    set(&file, "user.fine", b"kept");
    let bad = OsString::from_vec(b"user.bad\xff".to_vec());
    xattr::set(&file, &bad, b"lost").expect("setxattr with a non-UTF-8 name");
    let o = env
        .cmd(&["backup", &src.to_string_lossy(), "--json"])
        .output()
        .expect("spawn");
    // Done, with errors: exit 3.
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(j["errors"], 1, "{j}");
    let msg = j["error_messages"][0].as_str().unwrap_or_default();
    assert!(
        msg.contains("/file") && msg.contains("user.bad") && msg.contains("not UTF-8"),
        "{msg}"
    );
    let out = env.path("out");
    env.ok(&["restore", "latest", "--target", &out.to_string_lossy()]);
    let got = xattrs_of(&out.join("src/file"));
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        vec![(OsString::from("user.fine"), b"kept".to_vec())]
    );
}
