//! Restoring duplicate files: the second file with the same contents is
//! copied from the first on the target, not decoded from the repository
//! again (issue 12: restore on duplicate-heavy data), with its own
//! metadata; sparse files are still restored with their holes.

use std::fs;
use std::os::unix::fs::MetadataExt;

use crate::util::{assert_same_tree, rand_bytes, Env};

#[test]
fn r12_duplicate_files_are_copied_on_the_target() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("a")).expect("mkdir");
    fs::create_dir_all(src.join("b")).expect("mkdir");
    let big = rand_bytes(11, 2_500_000);
    for d in ["a", "b"] {
        fs::write(src.join(d).join("big.bin"), &big).expect("write");
        fs::write(src.join(d).join("small.txt"), "the same small file\n").expect("write");
        // Sparse: 1 MiB of data, then a 40 MiB hole (all-zero chunks).
        let f = fs::File::create(src.join(d).join("sparse.img")).expect("create");
        use std::io::Write;
        (&f).write_all(&rand_bytes(12, 1 << 20)).expect("write");
        f.set_len(41 << 20).expect("set_len");
    }
    fs::write(src.join("b").join("other.txt"), "not a duplicate").expect("write");
    // Different modes and times on the copies must be kept.
    fs::set_permissions(
        src.join("b").join("small.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .expect("chmod");
    env.ok(&["backup", &src.to_string_lossy()]);
    let out = env.path("out");
    let v = env.json(&["restore", "latest", "--target", &out.to_string_lossy()]);
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["files_copied"].as_u64().unwrap_or(0) >= 2, "{v}");
    assert_same_tree(&src, &out.join("src"), 1);
    for d in ["a", "b"] {
        let m = fs::metadata(out.join("src").join(d).join("sparse.img")).expect("stat");
        assert!(m.blocks() * 512 < m.len(), "{d}/sparse.img lost its hole");
    }
}
