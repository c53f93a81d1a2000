//! Paths resolved beneath a directory descriptor, never through a symlink.
//!
//! A restore runs as root and takes names from the repository; a crafted
//! tree or a symlink already in the target must not make it write anywhere
//! else. Every path is opened relative to the target's directory
//! descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`; on
//! kernels without `openat2` (before 5.6, or a seccomp filter that refuses
//! it) the same walk is done one component at a time with
//! `openat(O_NOFOLLOW | O_DIRECTORY)`. Either way a symlink anywhere in the
//! path is an error (`ELOOP`/`ENOTDIR`), not a detour. The last component
//! is always handled by the caller with `*at` calls on the parent's
//! descriptor (`mkdirat`, `openat(O_EXCL | O_NOFOLLOW)`, `renameat`), so it
//! is never followed either.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The target directory, open.
pub struct Beneath {
    root: OwnedFd,
    /// Cleared the first time the kernel says it has no `openat2`.
    openat2: AtomicBool,
}

pub fn cstr(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Splits `a/b/c` into (`a/b`, `c`); a single name has the parent `""`.
pub fn split(rel: &str) -> (&str, &str) {
    match rel.rfind('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => ("", rel),
    }
}

const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;

impl Beneath {
    /// Opens `path` (the operator's own choice, so it may be a symlink).
    pub fn open(path: &str) -> io::Result<Self> {
        let c = cstr(path)?;
        // SAFETY: c is NUL-terminated; the descriptor returned is ours.
        let fd = check(unsafe { libc::open(c.as_ptr(), DIR_FLAGS) })?;
        Ok(Self {
            // SAFETY: fd was just opened and is owned by nobody else.
            root: unsafe { OwnedFd::from_raw_fd(fd) },
            openat2: AtomicBool::new(true),
        })
    }

    #[cfg(test)]
    fn without_openat2(self) -> Self {
        self.openat2.store(false, Ordering::Relaxed);
        self
    }

    /// The directory at `rel` (`""` is the target itself), reached without
    /// following any symlink and without leaving the target.
    pub fn dir(&self, rel: &str) -> io::Result<OwnedFd> {
        if rel.is_empty() {
            return self.root.try_clone();
        }
        for part in rel.split('/') {
            // Restore validates names; this is the last line.
            if part.is_empty() || part == "." || part == ".." {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unsafe path component {part:?}"),
                ));
            }
        }
        if self.openat2.load(Ordering::Relaxed) {
            match self.dir_openat2(rel) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                    self.openat2.store(false, Ordering::Relaxed);
                }
                r => return r.map_err(symlink_error),
            }
        }
        self.dir_walk(rel).map_err(symlink_error)
    }

    fn dir_openat2(&self, rel: &str) -> io::Result<OwnedFd> {
        let c = cstr(rel)?;
        // SAFETY: open_how is plain data; zero is a valid start (it is
        // non_exhaustive, so it cannot be built with a literal).
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (DIR_FLAGS | libc::O_NOFOLLOW) as u64;
        how.resolve =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: valid dirfd, NUL-terminated path, and how/size as the
        // kernel expects.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    fn dir_walk(&self, rel: &str) -> io::Result<OwnedFd> {
        let mut cur = self.root.try_clone()?;
        for part in rel.split('/') {
            let c = cstr(part)?;
            // SAFETY: cur is an open directory; c is NUL-terminated.
            let fd = check(unsafe {
                libc::openat(cur.as_raw_fd(), c.as_ptr(), DIR_FLAGS | libc::O_NOFOLLOW)
            })?;
            // SAFETY: a fresh descriptor owned by nobody else.
            cur = unsafe { OwnedFd::from_raw_fd(fd) };
        }
        Ok(cur)
    }
}

/// `ELOOP`/`EXDEV` from a symlink in the way, said plainly.
fn symlink_error(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP | libc::EXDEV) => io::Error::new(
            e.kind(),
            "a symbolic link is in the way (restore never writes through one)",
        ),
        // Kernels differ on a symlink opened with O_DIRECTORY|O_NOFOLLOW:
        // some say ELOOP, newer ones ENOTDIR; the message covers both.
        Some(libc::ENOTDIR) => io::Error::new(
            e.kind(),
            "a symbolic link or something else that is not a directory is in the way \
             (restore never writes through one)",
        ),
        _ => e,
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn stat_at(dir: &OwnedFd, name: &str) -> io::Result<libc::stat> {
    let c = cstr(name)?;
    // SAFETY: zeroed stat is valid plain data filled in by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: open dirfd, NUL-terminated name, valid out pointer.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

pub fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(root: &std::path::Path) -> [Beneath; 2] {
        let p = root.to_str().expect("utf-8");
        [
            Beneath::open(p).expect("open"),
            Beneath::open(p).expect("open").without_openat2(),
        ]
    }

    #[test]
    fn symlinks_and_dotdot_are_refused_with_and_without_openat2() {
        let t = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(t.path().join("a/b")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), t.path().join("a/link")).expect("symlink");
        std::os::unix::fs::symlink("b", t.path().join("a/rel")).expect("symlink");
        for b in both(t.path()) {
            assert!(b.dir("a/b").is_ok());
            assert!(b.dir("").is_ok());
            for bad in [
                "a/link", "a/rel", "a/link/x", "..", "a/../a", "a//b", "/etc",
            ] {
                let e = b.dir(bad).expect_err(bad);
                assert!(
                    e.raw_os_error().is_some()
                        || e.kind() == io::ErrorKind::InvalidInput
                        || e.to_string().contains("symbolic link"),
                    "{bad}: {e}"
                );
            }
            let e = b.dir("a/link").expect_err("link");
            assert!(e.to_string().contains("symbolic link"), "{e}");
        }
    }
}
