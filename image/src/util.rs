//! Small helpers: running tools with captured output, hashing, copying trees.

use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::ImageError;

/// Fails with the Debian package to install when `tool` is not on PATH.
pub(crate) fn require(tool: &str, package: &str) -> Result<(), ImageError> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(ImageError::ToolMissing {
            tool: tool.into(),
            package: package.into(),
        })
    }
}

/// Runs a command to completion; returns its stdout, or its stderr's tail
/// in the error.
pub(crate) fn run(cmd: &mut Command) -> Result<String, ImageError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| ImageError::Tool {
        command: shown.clone(),
        status: "could not start".into(),
        stderr: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(ImageError::Tool {
        command: shown,
        status: out.status.to_string(),
        stderr: tail(&out.stderr, 40),
    })
}

pub(crate) fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn sha256_file(path: &Path) -> Result<(String, u64), ImageError> {
    let mut f = std::fs::File::open(path).map_err(ImageError::io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(ImageError::io(path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), size))
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Files under `dir`, relative, sorted, directories before their contents.
pub(crate) fn walk(dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    fn go(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), ImageError> {
        let here = base.join(rel);
        let mut names: Vec<_> = std::fs::read_dir(&here)
            .map_err(ImageError::io(&here))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(ImageError::io(&here))?;
        names.sort();
        for name in names {
            let r = rel.join(&name);
            let meta =
                std::fs::symlink_metadata(base.join(&r)).map_err(ImageError::io(base.join(&r)))?;
            out.push(r.clone());
            if meta.is_dir() {
                go(base, &r, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(dir, Path::new(""), &mut out)?;
    Ok(out)
}

/// Copies a tree of directories, files and symlinks into `dest`, replacing
/// what is there. Modes are normalised (0755 for directories and executable
/// files, else 0644) so a checkout's umask does not leak into the image.
pub(crate) fn copy_tree(src: &Path, dest: &Path) -> Result<(), ImageError> {
    for rel in walk(src)? {
        let from = src.join(&rel);
        let to = dest.join(&rel);
        let meta = std::fs::symlink_metadata(&from).map_err(ImageError::io(&from))?;
        if meta.is_dir() {
            if !to.is_dir() {
                std::fs::create_dir_all(&to).map_err(ImageError::io(&to))?;
            }
            set_mode(&to, 0o755)?;
            continue;
        }
        remove_any(&to)?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&from).map_err(ImageError::io(&from))?;
            symlink(&target, &to).map_err(ImageError::io(&to))?;
        } else {
            std::fs::copy(&from, &to).map_err(ImageError::io(&to))?;
            let exec = meta.permissions().mode() & 0o111 != 0;
            set_mode(&to, if exec { 0o755 } else { 0o644 })?;
        }
    }
    Ok(())
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(ImageError::io(path))
}

/// Removes a file, symlink or tree if it exists.
pub(crate) fn remove_any(path: &Path) -> Result<(), ImageError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::Io {
            path: path.into(),
            source: e,
        }),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(ImageError::io(path)),
        Ok(_) => std::fs::remove_file(path).map_err(ImageError::io(path)),
    }
}

pub(crate) fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<(), ImageError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(ImageError::io(parent))?;
    }
    std::fs::write(path, data).map_err(ImageError::io(path))
}

/// Where an artifact is written before it is renamed into place: a hidden
/// name in the same directory, so the rename is atomic.
fn partial_of(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

/// Writes an artifact under a temporary name, syncs it and renames it into
/// place: whoever reads (serves) `path` meanwhile sees the old file or the
/// new one, never half of either.
pub(crate) fn publish(path: &Path, data: impl AsRef<[u8]>) -> Result<(), ImageError> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(ImageError::io(parent))?;
    }
    let partial = partial_of(path);
    let mut f = std::fs::File::create(&partial).map_err(ImageError::io(&partial))?;
    f.write_all(data.as_ref())
        .and_then(|()| f.sync_all())
        .map_err(ImageError::io(&partial))?;
    std::fs::rename(&partial, path).map_err(ImageError::io(path))
}

/// [`publish`] for a copy of the file `from`.
pub(crate) fn publish_copy(from: &Path, to: &Path) -> Result<(), ImageError> {
    let partial = partial_of(to);
    std::fs::copy(from, &partial).map_err(ImageError::io(from))?;
    std::fs::File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(ImageError::io(&partial))?;
    std::fs::rename(&partial, to).map_err(ImageError::io(to))
}

/// An exclusive lock on a file, held until dropped; it lets parallel
/// builds (tests) share one cache directory. std's `File::lock` (flock on
/// Linux, Rust 1.89) does the work; no hand-written flock.
pub(crate) struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    pub(crate) fn acquire(path: &Path) -> Result<FileLock, ImageError> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(ImageError::io(path))?;
        f.lock().map_err(ImageError::io(path))?;
        Ok(FileLock { _file: f })
    }
}

/// `YYYY.MM.DD` (UTC) of a Unix time, for image versions.
pub(crate) fn date_of(epoch: u64) -> String {
    // Howard Hinnant's civil-from-days.
    let z = (epoch / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}.{m:02}.{d:02}")
}

/// Removes a scratch directory when dropped, unless [`Scratch::keep`] was
/// called: failed builds leave nothing half-made in the cache.
pub(crate) struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    pub(crate) fn new(path: PathBuf) -> Result<Scratch, ImageError> {
        remove_any(&path)?;
        std::fs::create_dir_all(&path).map_err(ImageError::io(&path))?;
        Ok(Scratch { path, keep: false })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = remove_any(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::date_of(0), "1970.01.01");
        assert_eq!(super::date_of(1_767_225_600), "2026.01.01");
        assert_eq!(super::date_of(1_709_164_800), "2024.02.29");
    }
}
