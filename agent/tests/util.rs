//! Running the real `levee-agent` binary against temp repositories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PASSWORD: &str = "correct horse battery staple";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_levee-agent")
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    smb_password: Option<&'static str>,
}

impl Env {
    /// A temp dir with an initialised repository (cheap KDF for speed).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let e = Self {
            dir,
            repo,
            smb_password: None,
        };
        e.ok(&["init", "--kdf-memory-kib", "1024"]);
        e
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Every command then gets this SMB password (`LEVEE_SMB_PASSWORD`).
    pub fn with_smb_password(mut self, password: &'static str) -> Self {
        self.smb_password = Some(password);
        self
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        if let Some(pw) = self.smb_password {
            c.env("LEVEE_SMB_PASSWORD", pw);
        }
        c.args(args)
            .env("LEVEE_REPO", &self.repo)
            .env("LEVEE_PASSWORD", PASSWORD)
            .env_remove("LEVEE_PASSWORD_FILE")
            .arg("--quiet");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn levee-agent")
    }

    /// Runs and asserts exit code 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "levee-agent {args:?} failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let s = self.ok(&a);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{s}"))
    }
}

/// Deterministic pseudo-random bytes.
pub fn rand_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Asserts two trees have the same files, contents, modes, and (for files
/// and dirs) modification times to `mtime_precision_ns`.
pub fn assert_same_tree(a: &Path, b: &Path, mtime_precision_ns: i64) {
    same_tree(a, b, mtime_precision_ns, true)
}

/// [`assert_same_tree`] without modes: for a tree restored over SMB, where
/// permissions are the Windows security descriptor and the Unix mode is
/// only Samba's projection of it.
pub fn assert_same_tree_but_mode(a: &Path, b: &Path, mtime_precision_ns: i64) {
    same_tree(a, b, mtime_precision_ns, false)
}

fn same_tree(a: &Path, b: &Path, mtime_precision_ns: i64, modes: bool) {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![PathBuf::new()];
    let mut n = 0;
    while let Some(rel) = stack.pop() {
        let (pa, pb) = (a.join(&rel), b.join(&rel));
        let ma = std::fs::symlink_metadata(&pa).unwrap_or_else(|e| panic!("{}: {e}", pa.display()));
        let mb = std::fs::symlink_metadata(&pb)
            .unwrap_or_else(|e| panic!("restored {} missing: {e}", pb.display()));
        assert_eq!(
            ma.file_type().is_dir(),
            mb.file_type().is_dir(),
            "{}",
            rel.display()
        );
        let ta = ma.mtime() * 1_000_000_000 + ma.mtime_nsec();
        let tb = mb.mtime() * 1_000_000_000 + mb.mtime_nsec();
        assert_eq!(
            ta / mtime_precision_ns,
            tb / mtime_precision_ns,
            "mtime of {}",
            rel.display()
        );
        if ma.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&pa)
                .expect("read_dir")
                .map(|e| e.expect("entry").file_name())
                .collect();
            let mut nb: Vec<_> = std::fs::read_dir(&pb)
                .expect("read_dir")
                .map(|e| e.expect("entry").file_name())
                .collect();
            names.sort();
            nb.sort();
            assert_eq!(names, nb, "entries of {}", rel.display());
            stack.extend(names.into_iter().map(|x| rel.join(x)));
        } else if ma.file_type().is_symlink() {
            assert_eq!(std::fs::read_link(&pa).ok(), std::fs::read_link(&pb).ok());
        } else {
            assert_eq!(ma.len(), mb.len(), "size of {}", rel.display());
            if modes {
                assert_eq!(
                    ma.mode() & 0o7777,
                    mb.mode() & 0o7777,
                    "mode of {}",
                    rel.display()
                );
            }
            let st = Command::new("cmp")
                .arg("--silent")
                .arg(&pa)
                .arg(&pb)
                .status()
                .expect("cmp (diffutils) must be installed");
            assert!(st.success(), "contents of {} differ", rel.display());
            n += 1;
        }
    }
    assert!(n > 0, "no files compared");
}
