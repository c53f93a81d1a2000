//! Restore correctness under the parallel writers (issue 12: restore
//! speed): many directories of many files handed out in batches, files
//! created under their own names on a fresh target and through a temporary
//! name over existing ones, holes in the middle and at the end, modes
//! (setuid included), times of files and directories, symlinks, empty and
//! duplicate files: the restored tree is byte-identical with the same
//! metadata, and no temporary file is left.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::restore_safety::{make_sentinel, sentinel};
use crate::util::{assert_same_tree, rand_bytes, Env};

fn set_mtime(p: &Path, secs: i64, nsec: i64) {
    let t = [libc::timespec {
        tv_sec: secs,
        tv_nsec: nsec,
    }; 2];
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: valid path, two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

/// 8 directories (two nested) of 100 files each, plus the special cases.
fn make_tree(root: &Path) {
    for d in 0..8 {
        let dir = if d % 3 == 2 {
            root.join(format!("d{}", d - 1)).join(format!("sub{d}"))
        } else {
            root.join(format!("d{d}"))
        };
        fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..100u64 {
            let p = dir.join(format!("f{f:03}"));
            match f % 5 {
                // The same small file in every directory (copied on restore).
                0 => fs::write(&p, b"the same in every directory\n").expect("write"),
                1 => fs::write(&p, b"").expect("write"),
                _ => fs::write(&p, rand_bytes(d * 1000 + f, (f as usize * 37) % 9000)).expect("w"),
            }
            let mode = [0o644, 0o600, 0o755, 0o4755, 0o640][(f % 5) as usize];
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
            set_mtime(
                &p,
                1_600_000_000 + (d * 100 + f) as i64,
                (f as i64) * 1_000_003,
            );
        }
        std::os::unix::fs::symlink("f002", dir.join("link-rel")).expect("symlink");
        std::os::unix::fs::symlink("/nonexistent/abs", dir.join("link-abs")).expect("symlink");
    }
    // A big file with a hole in the middle and one at the end.
    let f = fs::File::create(root.join("d0/holes.img")).expect("create");
    use std::os::unix::fs::FileExt;
    f.write_all_at(&rand_bytes(90, 3 << 20), 0).expect("write");
    f.write_all_at(&rand_bytes(91, 3 << 20), 40 << 20)
        .expect("write");
    f.set_len(80 << 20).expect("set_len");
    fs::write(root.join("d3/big.bin"), rand_bytes(92, 9_000_000)).expect("write");
    // Directory modes and times last (writing children moves mtimes).
    for (d, mode) in [("d0", 0o750), ("d1", 0o700), ("d1/sub2", 0o755)] {
        fs::set_permissions(root.join(d), fs::Permissions::from_mode(mode)).expect("chmod");
        set_mtime(&root.join(d), 1_500_000_000, 123_456_789);
    }
}

/// Directory modes and mtimes, which `assert_same_tree` leaves out.
fn assert_same_dirs(a: &Path, b: &Path) {
    for d in ["d0", "d1", "d1/sub2", "d3"] {
        let (ma, mb) = (
            fs::metadata(a.join(d)).expect("a"),
            fs::metadata(b.join(d)).expect("b"),
        );
        assert_eq!(ma.mode() & 0o7777, mb.mode() & 0o7777, "mode of {d}");
        assert_eq!(
            (ma.mtime(), ma.mtime_nsec()),
            (mb.mtime(), mb.mtime_nsec()),
            "mtime of {d}"
        );
    }
}

fn temporaries(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".levee-restore") {
                found.push(e.path().display().to_string());
            }
            if e.file_type().expect("type").is_dir() {
                stack.push(e.path());
            }
        }
    }
    found
}

#[test]
fn r12_parallel_restore_is_identical_fresh_and_over_an_existing_tree() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    env.ok(&["backup", &src.to_string_lossy()]);
    let files = 8 * 100 + 2;

    let out = env.path("out");
    let v = env.json(&["restore", "latest", "--target", &out.to_string_lossy()]);
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["files"], files, "{v}");
    assert!(v["files_copied"].as_u64().unwrap_or(0) >= 9, "{v}");
    assert_same_tree(&src, &out.join("src"), 1);
    assert_same_dirs(&src, &out.join("src"));
    let holes = fs::metadata(out.join("src/d0/holes.img")).expect("stat");
    assert_eq!(holes.len(), 80 << 20);
    // 74 MiB of the 80 are holes; the chunks that hold data run on into
    // the zeros up to their cut (the chunker finds none in zeros), and
    // only the all-zero chunks after that are left as holes.
    assert!(holes.blocks() * 512 < 40 << 20, "the holes were filled");
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));

    // Over the restored tree, with files changed, one removed and one
    // replaced by a symlink to a sentinel outside: every file there is
    // written again through a temporary name renamed over it (the link
    // itself replaced), the removed one created afresh, nothing outside
    // changes.
    let outside = make_sentinel(&env);
    let before = sentinel(&outside);
    let tree = out.join("src");
    fs::write(tree.join("d0/f002"), b"changed").expect("write");
    fs::write(tree.join("d4/f003"), rand_bytes(5, 20_000)).expect("write");
    fs::remove_file(tree.join("d3/f004")).expect("rm");
    std::os::unix::fs::symlink(outside.join("keep"), tree.join("d3/f004")).expect("symlink");
    fs::remove_file(tree.join("d1/sub2/f007")).expect("rm");
    let v = env.json(&["restore", "latest", "--target", &out.to_string_lossy()]);
    assert_eq!(v["errors"], 0, "{v}");
    assert_same_tree(&src, &tree, 1);
    assert_same_dirs(&src, &tree);
    assert_eq!(sentinel(&outside), before);
    assert_eq!(fs::read(outside.join("keep")).expect("keep"), b"keep");
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
}
