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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use levee_proto::repo::Node;
use xattr::FileExt as _;

use super::beneath::{self, Beneath};
use super::direct::{Staged, DIRECT_MIN_FILE};
use super::{FileSink, Target, TargetError, TargetReport};

/// A local directory. Every path is resolved beneath its descriptor and
/// never through a symlink (`beneath`); directories are made one level at a
/// time; a file is created under its own name with `O_EXCL` (nothing can be
/// in its place: no link is followed, nothing existing is truncated), and
/// only where something already has the name, under a temporary name that
/// is renamed over it when complete; symlinks always that way.
pub struct LocalTarget {
    root: PathBuf,
    dir: Beneath,
    replace: bool,
    xattrs: Arc<XattrLog>,
    dirs: Mutex<DirCache>,
}

/// Directories opened (beneath the target, as `Beneath::dir` does) by
/// relative path, so the files of a directory do not each walk the path
/// again (an `openat2` and a `close` per file). A descriptor stays the
/// directory it was opened as, wherever that is later moved, exactly as
/// one opened per file would between its open and its use.
#[derive(Default)]
struct DirCache {
    open: HashMap<String, Arc<OwnedFd>>,
    order: VecDeque<String>,
}

/// Directories kept open: the workers' current ones and the walker's, with
/// room to spare, well under the usual 1024 descriptors.
const DIR_CACHE_LEN: usize = 128;

impl DirCache {
    fn get(&self, rel: &str) -> Option<Arc<OwnedFd>> {
        self.open.get(rel).cloned()
    }
    fn put(&mut self, rel: &str, fd: Arc<OwnedFd>) {
        if self.open.contains_key(rel) {
            return;
        }
        if self.order.len() >= DIR_CACHE_LEN {
            if let Some(old) = self.order.pop_front() {
                self.open.remove(&old);
            }
        }
        self.order.push_back(rel.to_string());
        self.open.insert(rel.to_string(), fd);
    }
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
    /// `replace`: whether something that is not a directory (a file, a
    /// symlink) where the snapshot has a directory is removed to make room
    /// (`--overwrite always` and `if-changed`), or left and reported
    /// (`--overwrite never`).
    pub fn new(path: &str, replace: bool) -> Result<Self, TargetError> {
        fs::create_dir_all(path).map_err(|e| TargetError::Io {
            path: path.into(),
            source: e,
        })?;
        let dir = Beneath::open(path).map_err(|e| TargetError::Io {
            path: path.into(),
            source: e,
        })?;
        Ok(Self {
            root: PathBuf::from(path),
            dir,
            replace,
            xattrs: Arc::default(),
            dirs: Mutex::default(),
        })
    }
    fn full(&self, p: &str) -> PathBuf {
        if p.is_empty() {
            self.root.clone()
        } else {
            self.root.join(p)
        }
    }
    /// The descriptor of `path`'s parent and `path`'s last name.
    fn parent<'a>(&self, path: &'a str) -> Result<(Arc<OwnedFd>, &'a str), TargetError> {
        let (parent, name) = beneath::split(path);
        Ok((self.dir_fd(parent)?, name))
    }
    /// The directory at `rel`, opened beneath the target (or from the cache).
    fn dir_fd(&self, rel: &str) -> Result<Arc<OwnedFd>, TargetError> {
        if let Some(fd) = self.dirs.lock().ok().and_then(|c| c.get(rel)) {
            return Ok(fd);
        }
        let fd = Arc::new(self.dir.dir(rel).map_err(|e| io(&self.full(rel), e))?);
        if let Ok(mut c) = self.dirs.lock() {
            c.put(rel, fd.clone());
        }
        Ok(fd)
    }
}

fn io(p: &Path, e: std::io::Error) -> TargetError {
    TargetError::Io {
        path: p.to_string_lossy().into_owned(),
        source: e,
    }
}

fn last_err(p: &Path) -> TargetError {
    io(p, std::io::Error::last_os_error())
}

/// Whether `name` is a [`temp_name`] of a process that no longer runs: a
/// restore killed between a file's create and its rename left it (a
/// live process's file, e.g. of a restore beside this one, is its own).
fn stale_temp(name: &str) -> bool {
    let Some(pid) = name
        .strip_prefix(".levee-restore-")
        .and_then(|r| r.strip_suffix(".tmp"))
        .and_then(|r| r.split_once('-'))
        .filter(|(_, n)| n.parse::<u64>().is_ok())
        .and_then(|(pid, _)| pid.parse::<libc::pid_t>().ok())
    else {
        return false;
    };
    // SAFETY: signal 0 only asks whether the process exists.
    pid > 0
        && pid as u32 != std::process::id()
        && unsafe { libc::kill(pid, 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// A fresh temporary name in a directory: files and symlinks are made under
/// it and renamed into place, so a failed restore never leaves a truncated
/// file under the real name.
fn temp_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        ".levee-restore-{}-{}.tmp",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn rename_at(dir: &OwnedFd, from: &str, to: &str) -> std::io::Result<()> {
    let (f, t) = (beneath::cstr(from)?, beneath::cstr(to)?);
    let d = dir.as_raw_fd();
    // SAFETY: open dirfd, NUL-terminated names.
    if unsafe { libc::renameat(d, f.as_ptr(), d, t.as_ptr()) } != 0 {
        let e = std::io::Error::last_os_error();
        unlink_at(dir, from, false);
        return Err(e);
    }
    Ok(())
}

fn unlink_at(dir: &OwnedFd, name: &str, is_dir: bool) -> bool {
    let Ok(c) = beneath::cstr(name) else {
        return false;
    };
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: open dirfd, NUL-terminated name.
    unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) == 0 }
}

/// Metadata of a symlink, by name in its directory, never following it.
fn set_link_meta(
    dir: &OwnedFd,
    name: &str,
    shown: &Path,
    node: &Node,
    xattrs: &XattrLog,
) -> Result<(), TargetError> {
    let c = beneath::cstr(name).map_err(|e| io(shown, e))?;
    let d = dir.as_raw_fd();
    // Owner only as root; failure to chown is not worth failing a restore.
    if node.uid != 0 || node.gid != 0 {
        // SAFETY: open dirfd, NUL-terminated name.
        unsafe { libc::fchownat(d, c.as_ptr(), node.uid, node.gid, libc::AT_SYMLINK_NOFOLLOW) };
    }
    if !node.xattrs.is_empty() {
        // The directory through its own descriptor (proc's link to it is
        // the directory we hold, not a path resolved again), the link
        // itself with the no-follow call.
        let via = PathBuf::from(format!("/proc/self/fd/{d}/{name}"));
        xattrs.apply(shown, node, |n, v| xattr::set(&via, n, v));
    }
    let times = file_times(node);
    // SAFETY: open dirfd, NUL-terminated name, two timespecs.
    if unsafe { libc::utimensat(d, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(last_err(shown));
    }
    Ok(())
}

struct LocalSink {
    f: File,
    /// The directory the file is made in, its temporary name (if something
    /// already had its real name) and its real name.
    dir: Arc<OwnedFd>,
    temp: Option<String>,
    name: String,
    done: bool,
    path: PathBuf,
    xattrs: Arc<XattrLog>,
    pos: u64,
    /// End of the last byte written: a trailing hole needs a set_len.
    written_end: u64,
    /// Large files: written with O_DIRECT through a staging buffer.
    staged: Option<Staged>,
}

/// Owner, mode and times through the open descriptor: no path walks
/// (restores create tens of thousands of files; chmod and utimensat by path
/// plus an ftruncate per file were ~6% of a restore).
/// `default_mode` applies when the node has none (SMB sources): what a
/// plain create would have given, so files and directories are not left at
/// the 0600/0700 they are made with.
fn set_meta_fd(
    f: &File,
    p: &Path,
    node: &Node,
    default_mode: u32,
    xattrs: &XattrLog,
) -> Result<(), TargetError> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    if node.uid != 0 || node.gid != 0 {
        // SAFETY: fd is an open descriptor owned by `f`.
        unsafe { libc::fchown(fd, node.uid, node.gid) };
    }
    xattrs.apply(p, node, |name, value| f.set_xattr(name, value));
    let mode = if node.mode != 0 {
        node.mode
    } else {
        default_mode
    };
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| io(p, e))?;
    let times = file_times(node);
    // SAFETY: fd is open; times is the two-element array futimens wants.
    if unsafe { libc::futimens(fd, times.as_ptr()) } != 0 {
        return Err(io(p, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The process's umask, read once (from /proc: `umask(2)` can only be read
/// by setting it, which would race with other threads).
fn umask() -> u32 {
    static MASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    })
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
        match &mut self.staged {
            Some(st) => st.write(&self.f, data),
            // At an offset: a hole before it costs no seek.
            None => self.f.write_all_at(data, self.pos),
        }
        .map_err(|e| io(&self.path, e))?;
        self.pos += data.len() as u64;
        self.written_end = self.pos;
        Ok(())
    }
    fn zeros(&mut self, n: u64) -> Result<(), TargetError> {
        if let Some(st) = &mut self.staged {
            st.zeros(&self.f, n).map_err(|e| io(&self.path, e))?;
        }
        self.pos += n;
        Ok(())
    }
    fn finish(mut self: Box<Self>, node: &Node) -> Result<(), TargetError> {
        if let Some(mut st) = self.staged.take() {
            self.written_end = st.finish(&self.f).map_err(|e| io(&self.path, e))?;
        }
        // Sets the length a trailing hole implies (the file was created
        // empty, so without one its length is already right).
        if self.pos != self.written_end {
            self.f.set_len(self.pos).map_err(|e| io(&self.path, e))?;
        }
        set_meta_fd(&self.f, &self.path, node, 0o666 & !umask(), &self.xattrs)?;
        let mut this = self;
        this.done = true;
        match &this.temp {
            Some(temp) => rename_at(&this.dir, temp, &this.name).map_err(|e| io(&this.path, e)),
            None => Ok(()),
        }
    }
}

impl Drop for LocalSink {
    /// A file that failed half-way goes, not a truncated copy: the
    /// temporary one, or the one this restore created under the real name
    /// (with `O_EXCL`, so it was nobody else's).
    fn drop(&mut self) {
        if !self.done {
            unlink_at(&self.dir, self.temp.as_deref().unwrap_or(&self.name), false);
        }
    }
}

impl LocalTarget {
    /// Creates `path`'s file: under its own name when the name is free (a
    /// fresh restore: one directory operation per file, as a plain create),
    /// else under a temporary name renamed over the old entry when complete
    /// (an old version stays whole until then; a symlink in the way is
    /// replaced, never followed).
    ///
    /// `size`: the file's final size; a large file is written with O_DIRECT
    /// (see `direct`), 0 for never.
    fn create_local(&self, path: &str, size: u64) -> Result<LocalSink, TargetError> {
        let (dir, name) = self.parent(path)?;
        let p = self.full(path);
        let create = |n: &str| -> Result<libc::c_int, TargetError> {
            let c = beneath::cstr(n).map_err(|e| io(&p, e))?;
            // O_EXCL: never opens what is there (a file, a link to
            // anywhere); O_NOFOLLOW as well, for clarity.
            // SAFETY: open dirfd, NUL-terminated name; the fd is ours.
            Ok(unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o600,
                )
            })
        };
        let mut temp = None;
        let mut fd = create(name)?;
        if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
            let t = temp_name();
            fd = create(&t)?;
            temp = Some(t);
        }
        if fd < 0 {
            return Err(last_err(&p));
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let f = unsafe { File::from_raw_fd(fd) };
        let staged = if size >= DIRECT_MIN_FILE {
            Staged::new(&f)
        } else {
            None
        };
        Ok(LocalSink {
            f,
            staged,
            dir,
            temp,
            name: name.to_string(),
            done: false,
            path: p,
            xattrs: self.xattrs.clone(),
            pos: 0,
            written_end: 0,
        })
    }
}

impl Target for LocalTarget {
    fn mkdir(&self, path: &str) -> Result<(), TargetError> {
        let (dir, name) = self.parent(path)?;
        let p = self.full(path);
        let c = beneath::cstr(name).map_err(|e| io(&p, e))?;
        // 0700 until set_dir_meta gives it its own mode: nobody else
        // reaches into it while it fills.
        // SAFETY: open dirfd, NUL-terminated name.
        let make = || unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o700) } == 0;
        if make() {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(io(&p, err));
        }
        let st = beneath::stat_at(&dir, name).map_err(|e| io(&p, e))?;
        if beneath::is_dir(&st) {
            return Ok(());
        }
        if !self.replace {
            return Err(io(
                &p,
                std::io::Error::other(
                    "a file or symlink is in the way of a directory; left as it is (--overwrite never)",
                ),
            ));
        }
        // A file or a symlink where the snapshot has a directory: the name
        // is removed (a symlink itself, never what it points to).
        if unlink_at(&dir, name, false) && make() {
            Ok(())
        } else {
            Err(last_err(&p))
        }
    }
    fn sweep_stale(&self, dir: &str) -> Result<u64, TargetError> {
        let fd = self.dir_fd(dir)?;
        // The directory as opened beneath the target, listed through its
        // descriptor (no path is walked again).
        let list = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let entries = std::fs::read_dir(&list).map_err(|e| io(&self.full(dir), e))?;
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if stale_temp(name) && unlink_at(&fd, name, false) {
                removed += 1;
            }
        }
        Ok(removed)
    }
    fn existing(&self, path: &str) -> Option<(u64, i64)> {
        let (dir, name) = self.parent(path).ok()?;
        let st = beneath::stat_at(&dir, name).ok()?;
        Some((
            st.st_size as u64,
            st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
        ))
    }
    fn create(&self, path: &str, size: u64) -> Result<Box<dyn FileSink>, TargetError> {
        Ok(Box::new(self.create_local(path, size)?))
    }
    fn copy_restored(&self, from: &str, path: &str, node: &Node) -> Result<bool, TargetError> {
        use std::os::unix::fs::MetadataExt;
        let Ok((sdir, sname)) = self.parent(from) else {
            return Ok(false);
        };
        let Ok(c) = beneath::cstr(sname) else {
            return Ok(false);
        };
        // SAFETY: open dirfd, NUL-terminated name; the fd is ours.
        let fd = unsafe {
            libc::openat(
                sdir.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Ok(false);
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let src = unsafe { File::from_raw_fd(fd) };
        let Ok(st) = src.metadata() else {
            return Ok(false);
        };
        // A sparse source would come out dense: restore those from the
        // repository, which leaves the holes.
        if !st.is_file() || st.len() != node.size || st.blocks() * 512 < st.len() {
            return Ok(false);
        }
        let mut sink = self.create_local(path, 0)?;
        let mut left = node.size;
        while left > 0 {
            let want = left.min(1 << 30) as usize;
            // SAFETY: two open descriptors; null offsets use (and move)
            // the files' positions.
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    std::ptr::null_mut(),
                    sink.f.as_raw_fd(),
                    std::ptr::null_mut(),
                    want,
                    0,
                )
            };
            if n <= 0 {
                // Not supported here, or the source shrank: the sink's
                // drop removes the temporary file.
                return Ok(false);
            }
            left -= n as u64;
        }
        sink.pos = node.size;
        sink.written_end = node.size;
        Box::new(sink).finish(node)?;
        Ok(true)
    }
    fn symlink(&self, path: &str, node: &Node) -> Result<(), TargetError> {
        let (dir, name) = self.parent(path)?;
        let p = self.full(path);
        let target =
            beneath::cstr(node.link_target.as_deref().unwrap_or("")).map_err(|e| io(&p, e))?;
        let make = |n: &str| -> Result<bool, TargetError> {
            let c = beneath::cstr(n).map_err(|e| io(&p, e))?;
            // symlinkat never follows anything at the name: it fails
            // with EEXIST if anything is there.
            // SAFETY: NUL-terminated strings, open dirfd.
            Ok(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), c.as_ptr()) } == 0)
        };
        // Under its own name when that is free (a fresh restore: one
        // directory operation, as for files), else under a temporary name
        // renamed over the old entry.
        let (made, temp) = if make(name)? {
            (name.to_string(), None)
        } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
            let t = temp_name();
            if !make(&t)? {
                return Err(last_err(&p));
            }
            (t.clone(), Some(t))
        } else {
            return Err(last_err(&p));
        };
        if let Err(e) = set_link_meta(&dir, &made, &p, node, &self.xattrs) {
            // Ours either way: made just now with a name nothing had.
            unlink_at(&dir, &made, false);
            return Err(e);
        }
        match temp {
            Some(t) => rename_at(&dir, &t, name).map_err(|e| io(&p, e)),
            None => Ok(()),
        }
    }
    fn set_dir_meta(&self, path: &str, node: &Node) -> Result<(), TargetError> {
        let p = self.full(path);
        let fd = self.dir.dir(path).map_err(|e| io(&p, e))?;
        set_meta_fd(&File::from(fd), &p, node, 0o777 & !umask(), &self.xattrs)
    }
    /// `syncfs` of the target's file system, once: restic does not sync a
    /// restore at all, and an `fsync` per file would cost one journal
    /// commit per file; one `syncfs` writes back the same data once and
    /// makes the restore durable when the command returns.
    fn sync(&self) -> Result<(), TargetError> {
        if let Ok(mut c) = self.dirs.lock() {
            *c = DirCache::default();
        }
        let root = self.dir.dir("").map_err(|e| io(&self.root, e))?;
        // SAFETY: an open descriptor of the target directory.
        if unsafe { libc::syncfs(root.as_raw_fd()) } != 0 {
            return Err(last_err(&self.root));
        }
        Ok(())
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
pub(crate) mod tests {
    use super::*;
    use levee_proto::repo::NodeKind;

    /// The pid of a process that has ended.
    pub(crate) fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().expect("true");
        c.wait().expect("wait");
        c.id()
    }

    #[test]
    fn only_temporary_files_of_ended_processes_are_swept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = LocalTarget::new(&dir.path().to_string_lossy(), true).expect("target");
        t.mkdir("d").expect("mkdir");
        let dead = dead_pid();
        let live = temp_name();
        let names = [
            format!(".levee-restore-{dead}-3.tmp"),
            live.clone(),
            ".levee-restore-1-0.tmp".to_string(),
            format!(".levee-restore-{dead}-x.tmp"),
            format!("levee-restore-{dead}-3.tmp"),
            "a.txt".to_string(),
        ];
        for n in &names {
            std::fs::write(dir.path().join("d").join(n), b"x").expect("write");
        }
        assert_eq!(t.sweep_stale("d").expect("sweep"), 1);
        for n in &names[1..] {
            assert!(dir.path().join("d").join(n).exists(), "{n} was removed");
        }
        assert!(!dir.path().join("d").join(&names[0]).exists());
    }

    #[test]
    fn refused_xattrs_are_warnings_and_enotsup_is_one_per_kind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = LocalTarget::new(&dir.path().to_string_lossy(), true).expect("target");
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
