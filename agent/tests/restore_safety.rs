//! Issue 12, item 1 (and 9's truncated files): restore never writes outside
//! its target, whatever the trees say or the target already holds.
//!
//! The malicious trees are built as an attacker with the master key would:
//! real tree blobs, encrypted and packed with the repository's key, and a
//! snapshot naming them. Every test compares a sentinel directory outside
//! the target (its mtime, mode and listing) before and after.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use levee_agent::backup::blob;
use levee_agent::backup::packer::Packer;
use levee_agent::backup::Repository;
use levee_proto::repo::{BlobId, BlobKind, Node, NodeKind, Snapshot, Tree};

use crate::util::{rand_bytes, Env, PASSWORD};

/// Per entry: name, mode, size, mtime.
pub type Listing = Vec<(String, u32, u64, i64)>;

/// What must not change: the directory's mtime and mode and its listing.
pub fn sentinel(p: &Path) -> (i64, u32, Listing) {
    let m = fs::symlink_metadata(p).expect("sentinel");
    let mut list: Vec<_> = fs::read_dir(p)
        .expect("read sentinel")
        .map(|e| {
            let e = e.expect("entry");
            let m = fs::symlink_metadata(e.path()).expect("stat");
            (
                e.file_name().to_string_lossy().into_owned(),
                m.mode(),
                m.len(),
                m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            )
        })
        .collect();
    list.sort();
    (m.mtime() * 1_000_000_000 + m.mtime_nsec(), m.mode(), list)
}

/// A directory outside every target with one file in it, mode 0755 and an
/// old mtime, so a chmod or a new entry shows.
pub fn make_sentinel(env: &Env) -> PathBuf {
    let s = env.path("sentinel");
    fs::create_dir_all(&s).expect("mkdir");
    fs::write(s.join("keep"), b"keep").expect("write");
    fs::set_permissions(&s, fs::Permissions::from_mode(0o755)).expect("chmod");
    let t = [libc::timespec {
        tv_sec: 1_000_000_000,
        tv_nsec: 0,
    }; 2];
    let c = std::ffi::CString::new(s.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: valid path, two timespecs.
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), 0) },
        0
    );
    s
}

/// Writes trees (children before parents) with the repository's key and a
/// snapshot whose root is the last one; returns the snapshot id.
pub struct Crafter {
    repo: Repository,
    packer: Option<Packer>,
}

impl Crafter {
    pub fn new(env: &Env) -> Self {
        let repo = Repository::open(&env.repo, PASSWORD.as_bytes()).expect("open repo");
        let packer = Some(Packer::new(repo.be.clone(), repo.pads_packs()));
        Self { repo, packer }
    }

    pub fn blob(&mut self, kind: BlobKind, data: &[u8]) -> BlobId {
        let id = self.repo.key().blob_id(data);
        let b = blob::encode(self.repo.key(), kind, id, data, None);
        self.packer
            .as_mut()
            .expect("packer")
            .add(b)
            .expect("add blob");
        id
    }

    pub fn tree(&mut self, nodes: Vec<Node>) -> BlobId {
        self.blob(BlobKind::Tree, &Tree { nodes }.to_bytes())
    }

    /// Flushes the pack (left unindexed: restores adopt such packs, as
    /// after a killed backup) and writes the snapshot.
    pub fn snapshot(mut self, root: BlobId) -> String {
        self.packer.take().expect("packer").finish().expect("pack");
        let s = Snapshot {
            version: 1,
            time_ns: 4_000_000_000_000_000_000,
            hostname: "attacker".into(),
            paths: vec!["/x".into()],
            tags: vec![],
            tree: root,
            parent: None,
            summary: Default::default(),
            program: "crafted".into(),
        };
        self.repo.save_snapshot(&s).expect("snapshot").to_string()
    }
}

pub fn dir(name: &str, subtree: BlobId, mode: u32) -> Node {
    let mut n = Node::new(name.into(), NodeKind::Dir);
    n.subtree = Some(subtree);
    n.mode = mode;
    n.mtime_ns = 1;
    n
}

pub fn link(name: &str, to: &Path) -> Node {
    let mut n = Node::new(name.into(), NodeKind::Symlink);
    n.link_target = Some(to.to_string_lossy().into_owned());
    n
}

pub fn file(c: &mut Crafter, name: &str, data: &[u8]) -> Node {
    let mut n = Node::new(name.into(), NodeKind::File);
    n.content = vec![c.blob(BlobKind::Data, data)];
    n.size = data.len() as u64;
    n.mode = 0o644;
    n
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Issue 12: a symlink `a -> /outside` followed by a directory `a` made
/// restore write into /outside, chmod it 0777 and set its mtime. Also the
/// other orders and names a crafted tree can use.
#[test]
fn r12_crafted_trees_never_leave_the_target() {
    let env = Env::new();
    let outside = make_sentinel(&env);
    let before = sentinel(&outside);
    let mut c = Crafter::new(&env);
    let pwned = file(&mut c, "pwned", b"written outside");
    let inner = c.tree(vec![pwned.clone()]);
    // root: "a" symlink then "a" dir (duplicate), "b" dir then "b" symlink,
    // "c" dir holding "..", "x/y" and "" entries, and "ok" (restored).
    let bad_names = {
        let mut dots = dir("..", inner, 0o777);
        dots.name = "..".into();
        let slash = dir("x/y", inner, 0o777);
        let empty = file(&mut c, "", b"empty name");
        c.tree(vec![dots, slash, empty])
    };
    let ok = file(&mut c, "ok", b"fine");
    let root = c.tree(vec![
        link("a", &outside),
        dir("a", inner, 0o777),
        dir("b", inner, 0o777),
        link("b", &outside),
        dir("c", bad_names, 0o755),
        ok,
    ]);
    let snap = c.snapshot(root);

    let target = env.path("target");
    let o = env.run(&["restore", &snap, "--target", &target.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("\"a\" appears twice"), "{err}");
    assert!(err.contains("\"b\" appears twice"), "{err}");
    assert!(err.contains("unsafe name \"..\""), "{err}");
    assert!(err.contains("unsafe name \"x/y\""), "{err}");
    assert_eq!(sentinel(&outside), before, "the sentinel changed: {err}");
    assert!(!outside.join("pwned").exists());
    assert_eq!(fs::read(target.join("ok")).expect("ok restored"), b"fine");
    assert!(!target.join("a").exists() && !target.join("b").exists());

    // `check` names the tree.
    let o = env.run(&["check"]);
    assert_eq!(o.status.code(), Some(1), "check passed a crafted tree");
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(out.contains("appears twice"), "{out}");
}

/// Without any key: a symlink already in the target where the snapshot
/// has a directory made restore write through it (21 entries outside).
#[test]
fn r12_symlinks_in_the_target_are_never_followed() {
    let env = Env::new();
    let outside = make_sentinel(&env);
    let before = sentinel(&outside);
    let src = env.path("src");
    fs::create_dir_all(src.join("d/sub")).expect("mkdir");
    fs::write(src.join("d/sub/f"), b"data").expect("write");
    fs::write(src.join("d/g"), b"more").expect("write");
    env.ok(&["backup", &src.to_string_lossy()]);

    // The symlink at each level: the top directory, a nested one.
    for (level, rel) in [("top", "src/d"), ("nested", "src/d/sub")] {
        for overwrite in ["never", "if-changed", "always"] {
            let target = env.path(&format!("t-{level}-{overwrite}"));
            fs::create_dir_all(target.join(rel).parent().expect("parent")).expect("mkdir");
            std::os::unix::fs::symlink(&outside, target.join(rel)).expect("symlink");
            let o = env.run(&[
                "restore",
                "latest",
                "--target",
                &target.to_string_lossy(),
                "--overwrite",
                overwrite,
            ]);
            assert_eq!(
                sentinel(&outside),
                before,
                "{level} {overwrite}: {}",
                stderr(&o)
            );
            let is_link = fs::symlink_metadata(target.join(rel))
                .expect("still there")
                .file_type()
                .is_symlink();
            if overwrite == "never" {
                // Left alone and reported.
                assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
                assert!(stderr(&o).contains("in the way"), "{}", stderr(&o));
                assert!(is_link);
            } else {
                // Replaced by the directory, contents restored inside.
                assert!(o.status.success(), "{level} {overwrite}: {}", stderr(&o));
                assert!(!is_link);
                assert_eq!(fs::read(target.join("src/d/sub/f")).expect("f"), b"data");
            }
        }
    }
    // A file symlink where the snapshot has a file: replaced, not written
    // through.
    let target = env.path("t-file");
    fs::create_dir_all(target.join("src/d")).expect("mkdir");
    std::os::unix::fs::symlink(outside.join("keep"), target.join("src/d/g")).expect("symlink");
    env.ok(&["restore", "latest", "--target", &target.to_string_lossy()]);
    assert_eq!(fs::read(outside.join("keep")).expect("keep"), b"keep");
    assert_eq!(sentinel(&outside), before);
    assert_eq!(fs::read(target.join("src/d/g")).expect("g"), b"more");
}

/// A file whose restore fails half-way leaves the old file (or nothing)
/// under its name, never a truncated one, and no temporary file.
#[test]
fn r12_failed_file_restore_leaves_no_truncated_file() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).expect("mkdir");
    fs::write(src.join("big"), rand_bytes(7, 6_000_000)).expect("write");
    env.ok(&["backup", &src.to_string_lossy()]);
    // Damage the second half of the only data pack.
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
    let mut bytes = fs::read(pack).expect("read pack");
    let at = bytes.len() * 3 / 4;
    bytes[at] ^= 0xff;
    fs::set_permissions(pack, fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::write(pack, &bytes).expect("write pack");

    let target = env.path("target");
    fs::create_dir_all(target.join("src")).expect("mkdir");
    fs::write(target.join("src/big"), b"the old version").expect("write");
    let o = env.run(&["restore", "latest", "--target", &target.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(
        fs::read(target.join("src/big")).expect("old"),
        b"the old version"
    );
    let left: Vec<_> = fs::read_dir(target.join("src"))
        .expect("list")
        .map(|e| e.expect("e").file_name())
        .collect();
    assert_eq!(left.len(), 1, "temporary files left: {left:?}");
    // Without an old version, nothing is left under the name.
    let fresh = env.path("fresh");
    let o = env.run(&["restore", "latest", "--target", &fresh.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(fs::read_dir(fresh.join("src")).expect("list").count(), 0);
}

/// The case-insensitive variant onto a real Samba share: a symlink `A`
/// (to a directory outside) next to a directory `a` holding a file. On the
/// share `A` and `a` are one name; both are refused. A symlink already on
/// the share where the snapshot has a directory is not written through.
#[test]
fn r12_case_insensitive_names_onto_smb_stay_inside() {
    use crate::samba::{Samba, PASSWORD as SMB_PASSWORD};
    let samba = Samba::start();
    let env = Env::new();
    let outside = make_sentinel(&env);
    let before = sentinel(&outside);
    let mut c = Crafter::new(&env);
    let pwned = file(&mut c, "pwned", b"written outside");
    let inner = c.tree(vec![pwned]);
    let ok = file(&mut c, "ok", b"fine");
    let sub = c.tree(vec![link("A", &outside), dir("a", inner, 0o777), ok]);
    let root = c.tree(vec![dir("linked", inner, 0o755), dir("src", sub, 0o755)]);
    let snap = c.snapshot(root);

    let share = samba.dir.path().join("restore");
    // Already on the share: `r/linked` is a symlink to the sentinel.
    fs::create_dir_all(share.join("r")).expect("mkdir");
    std::os::unix::fs::symlink(&outside, share.join("r/linked")).expect("symlink");
    let o = env
        .cmd(&["restore", &snap, "--target", &samba.url("restore/r")])
        .env("LEVEE_SMB_PASSWORD", SMB_PASSWORD)
        .output()
        .expect("spawn");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("case-insensitive"), "{err}");
    assert!(!err.contains("breaks the rules"), "{err}");
    // Samba (wide links = no) refuses the path through the link.
    assert!(err.contains("r/linked"), "{err}");
    assert_eq!(sentinel(&outside), before, "the sentinel changed: {err}");
    assert!(!outside.join("pwned").exists());
    assert_eq!(fs::read(share.join("r/src/ok")).expect("ok"), b"fine");
    assert!(!share.join("r/src/a").exists() && !share.join("r/src/A").exists());
}
