//! Restoring into a local directory: Unix mode, owner (when root),
//! extended attributes (POSIX ACLs among them), nanosecond atime/mtime, and
//! holes for all-zero chunks. Windows security descriptors from SMB backups
//! are not applied (a Linux file system has no place for them); they stay in
//! the repository for a restore onto SMB.
//!
//! Per entry the order is: contents, owner, xattrs, mode, times. Owner
//! before xattrs because chown drops `security.capability`; mode after them
//! so the restored mode wins over what an ACL implies (they agree when the
//! backup was consistent); times last, though setxattr moves only ctime.
//! Directories get theirs after their contents, so a default ACL does not
//! leak into restored children (each child has its own ACL, if any).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use levee_proto::repo::Node;
use xattr::FileExt;

use super::{FileSink, Target, TargetError, TargetReport};

pub struct LocalTarget {
    root: PathBuf,
    xattrs: Arc<XattrLog>,
}

/// Extended attributes written back, and what could not be, shared by all
/// sinks. Never an error: the data is restored either way.
#[derive(Default)]
struct XattrLog {
    restored: AtomicU64,
    warnings: Mutex<Vec<String>>,
    /// Refused with ENOTSUP, by kind: (count, first path and name). A file
    /// system without (some) xattrs refuses every file's; one warning per
    /// kind says so instead of thousands.
    unsupported: Mutex<BTreeMap<&'static str, (u64, String)>>,
}

impl XattrLog {
    fn warn(&self, msg: String) {
        tracing::warn!("{msg}");
        if let Ok(mut w) = self.warnings.lock() {
            w.push(msg);
        }
    }

    fn unsupported(&self, p: &Path, name: &str) {
        let kind = if name.starts_with("system.posix_acl_") {
            "POSIX ACLs"
        } else if name.starts_with("user.") {
            "user.* extended attributes"
        } else {
            "extended attributes"
        };
        if let Ok(mut u) = self.unsupported.lock() {
            let e = u
                .entry(kind)
                .or_insert_with(|| (0, format!("{} ({name})", p.display())));
            e.0 += 1;
        }
    }

    /// Writes `node`'s xattrs with `set`; failures become warnings.
    fn apply(&self, p: &Path, node: &Node, set: impl Fn(&str, &[u8]) -> std::io::Result<()>) {
        for (name, value) in &node.xattrs {
            let value = match hex::decode(value) {
                Ok(v) => v,
                Err(e) => {
                    self.warn(format!(
                        "{}: xattr {name} not restored: stored value is damaged ({e})",
                        p.display()
                    ));
                    continue;
                }
            };
            match set(name, &value) {
                Ok(()) => {
                    self.restored.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => self.unsupported(p, name),
                Err(e) => self.warn(format!("{}: xattr {name} not restored: {e}", p.display())),
            }
        }
    }
}

impl LocalTarget {
    pub fn new(path: &str) -> Result<Self, TargetError> {
        fs::create_dir_all(path).map_err(|e| TargetError::Io {
            path: path.into(),
            source: e,
        })?;
        Ok(Self {
            root: PathBuf::from(path),
            xattrs: Arc::default(),
        })
    }
    fn full(&self, p: &str) -> PathBuf {
        if p.is_empty() {
            self.root.clone()
        } else {
            self.root.join(p)
        }
    }
}

fn io(p: &Path, e: std::io::Error) -> TargetError {
    TargetError::Io {
        path: p.to_string_lossy().into_owned(),
        source: e,
    }
}

/// Directories and symlinks: by path, a symlink itself and never its target
/// (`follow` is false for symlinks; xattr::set never follows).
fn set_meta(p: &Path, node: &Node, follow: bool, xattrs: &XattrLog) -> Result<(), TargetError> {
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io(p, std::io::Error::other("NUL in path")))?;
    // Owner only as root; failure to chown is not worth failing a restore.
    if node.uid != 0 || node.gid != 0 {
        // SAFETY: c is a valid NUL-terminated path.
        unsafe { libc::lchown(c.as_ptr(), node.uid, node.gid) };
    }
    xattrs.apply(p, node, |name, value| xattr::set(p, name, value));
    if node.mode != 0 && follow {
        fs::set_permissions(p, fs::Permissions::from_mode(node.mode)).map_err(|e| io(p, e))?;
    }
    let times = file_times(node);
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: valid path and a two-element timespec array, as utimensat wants.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) };
    if r != 0 {
        return Err(io(p, std::io::Error::last_os_error()));
    }
    Ok(())
}

struct LocalSink {
    f: File,
    path: PathBuf,
    xattrs: Arc<XattrLog>,
    pos: u64,
    /// End of the last byte written: a trailing hole needs a set_len.
    written_end: u64,
}

/// Owner, mode and times through the open descriptor: no path walks
/// (restores create tens of thousands of files; chmod and utimensat by path
/// plus an ftruncate per file were ~6% of a restore).
fn set_meta_fd(f: &File, p: &Path, node: &Node, xattrs: &XattrLog) -> Result<(), TargetError> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    if node.uid != 0 || node.gid != 0 {
        // SAFETY: fd is an open descriptor owned by `f`.
        unsafe { libc::fchown(fd, node.uid, node.gid) };
    }
    xattrs.apply(p, node, |name, value| f.set_xattr(name, value));
    if node.mode != 0 {
        f.set_permissions(fs::Permissions::from_mode(node.mode))
            .map_err(|e| io(p, e))?;
    }
    let times = file_times(node);
    // SAFETY: fd is open; times is the two-element array futimens wants.
    if unsafe { libc::futimens(fd, times.as_ptr()) } != 0 {
        return Err(io(p, std::io::Error::last_os_error()));
    }
    Ok(())
}

fn file_times(node: &Node) -> [libc::timespec; 2] {
    let ts = |ns: i64| libc::timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000),
    };
    [
        ts(if node.atime_ns != 0 {
            node.atime_ns
        } else {
            node.mtime_ns
        }),
        ts(node.mtime_ns),
    ]
}

impl FileSink for LocalSink {
    fn write(&mut self, data: &[u8]) -> Result<(), TargetError> {
        self.f.write_all(data).map_err(|e| io(&self.path, e))?;
        self.pos += data.len() as u64;
        self.written_end = self.pos;
        Ok(())
    }
    fn zeros(&mut self, n: u64) -> Result<(), TargetError> {
        self.pos += n;
        self.f
            .seek(SeekFrom::Start(self.pos))
            .map_err(|e| io(&self.path, e))?;
        Ok(())
    }
    fn finish(self: Box<Self>, node: &Node) -> Result<(), TargetError> {
        // Sets the length a trailing hole implies (the file was created
        // empty, so without one its length is already right).
        if self.pos != self.written_end {
            self.f.set_len(self.pos).map_err(|e| io(&self.path, e))?;
        }
        set_meta_fd(&self.f, &self.path, node, &self.xattrs)
    }
}

impl Target for LocalTarget {
    fn mkdir(&self, path: &str) -> Result<(), TargetError> {
        let p = self.full(path);
        fs::create_dir_all(&p).map_err(|e| io(&p, e))
    }
    fn existing(&self, path: &str) -> Option<(u64, i64)> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::symlink_metadata(self.full(path)).ok()?;
        Some((m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec()))
    }
    fn create(&self, path: &str) -> Result<Box<dyn FileSink>, TargetError> {
        let p = self.full(path);
        let open = || {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
        };
        let f = match open() {
            Ok(f) => f,
            // A read-only file (non-root) or a symlink in the way: replace it.
            Err(_) if fs::symlink_metadata(&p).is_ok() => {
                let _ = fs::remove_file(&p);
                open().map_err(|e| io(&p, e))?
            }
            Err(e) => return Err(io(&p, e)),
        };
        Ok(Box::new(LocalSink {
            f,
            path: p,
            xattrs: self.xattrs.clone(),
            pos: 0,
            written_end: 0,
        }))
    }
    fn symlink(&self, path: &str, node: &Node) -> Result<(), TargetError> {
        let p = self.full(path);
        let _ = fs::remove_file(&p);
        std::os::unix::fs::symlink(node.link_target.as_deref().unwrap_or(""), &p)
            .map_err(|e| io(&p, e))?;
        set_meta(&p, node, false, &self.xattrs)
    }
    fn set_dir_meta(&self, path: &str, node: &Node) -> Result<(), TargetError> {
        set_meta(&self.full(path), node, true, &self.xattrs)
    }
    fn parallelism(&self) -> usize {
        // Decrypting is CPU, writing is I/O: a few more threads than cores.
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2)
            * 2
    }
    fn report(&self) -> TargetReport {
        let mut warnings = self
            .xattrs
            .warnings
            .lock()
            .map(|w| w.clone())
            .unwrap_or_default();
        if let Ok(u) = self.xattrs.unsupported.lock() {
            for (kind, (n, first)) in u.iter() {
                warnings.push(format!(
                    "{}: the file system does not support {kind}: {n} not restored (first: {first})",
                    self.root.display()
                ));
            }
        }
        TargetReport {
            xattrs: self.xattrs.restored.load(Ordering::Relaxed),
            warnings,
            ..TargetReport::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_proto::repo::NodeKind;

    #[test]
    fn refused_xattrs_are_warnings_and_enotsup_is_one_per_kind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = LocalTarget::new(&dir.path().to_string_lossy()).expect("target");
        let mut node = Node::new("f".into(), NodeKind::File);
        node.xattrs.insert("user.a".into(), "00".into());
        node.xattrs
            .insert("system.posix_acl_access".into(), "02".into());
        let enotsup = |_: &str, _: &[u8]| Err(std::io::Error::from_raw_os_error(libc::ENOTSUP));
        for i in 0..3 {
            t.xattrs.apply(&t.full(&format!("f{i}")), &node, enotsup);
        }
        let mut other = Node::new("g".into(), NodeKind::File);
        other.xattrs.insert("security.x".into(), "01".into());
        other.xattrs.insert("user.damaged".into(), "zz".into());
        t.xattrs.apply(&t.full("g"), &other, |_, _| {
            Err(std::io::Error::from_raw_os_error(libc::EPERM))
        });
        let r = t.report();
        assert_eq!(r.xattrs, 0);
        assert_eq!(r.warnings.len(), 4, "{:#?}", r.warnings);
        assert!(r.warnings[0].contains("g: xattr security.x not restored"));
        assert!(r.warnings[1].contains("user.damaged") && r.warnings[1].contains("damaged"));
        assert!(r.warnings[2].contains("does not support POSIX ACLs: 3 not restored"));
        assert!(r.warnings[3].contains("user.* extended attributes: 3 not restored"));
        assert!(r.warnings[3].contains("f0 (user.a)"));
    }
}
