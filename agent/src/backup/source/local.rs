//! A local directory (or file). Unix metadata: permission bits, owner,
//! nanosecond times and the inode number as file id. Names that are not
//! UTF-8 are stored lossily (a known gap; Windows shares are UTF-16 anyway).
//! Extended attributes (and with them POSIX ACLs) are read without following
//! symlinks.

use std::fs::{self, File, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use levee_proto::repo::NodeKind;

use super::{Source, SourceEntry, SourceError, Xattrs};

/// The only `system.*` attributes kept: POSIX ACLs. The others are file
/// system internals (ext4's `system.data`, NFS's `system.nfs4_acl`) that
/// setxattr would refuse or misapply on another file system.
const KEPT_SYSTEM: [&str; 2] = ["system.posix_acl_access", "system.posix_acl_default"];

pub struct LocalSource {
    root: PathBuf,
}

impl LocalSource {
    pub fn new(path: &str) -> Result<Self, SourceError> {
        let root = fs::canonicalize(path).map_err(|e| io_err(path, e))?;
        Ok(Self { root })
    }

    fn full(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }
}

pub fn io_err(path: &str, e: std::io::Error) -> SourceError {
    match e.kind() {
        std::io::ErrorKind::NotFound => SourceError::NotFound(path.into()),
        std::io::ErrorKind::PermissionDenied => SourceError::AccessDenied(path.into()),
        _ => SourceError::Io {
            path: path.into(),
            source: e,
        },
    }
}

pub fn entry_from_metadata(name: String, md: &Metadata, path: &Path) -> SourceEntry {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else {
        NodeKind::File
    };
    let link_target = if kind == NodeKind::Symlink {
        fs::read_link(path)
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    } else {
        None
    };
    SourceEntry {
        name,
        kind,
        size: if kind == NodeKind::File { md.len() } else { 0 },
        mode: md.mode() & 0o7777,
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        atime_ns: md.atime() * 1_000_000_000 + md.atime_nsec(),
        ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        btime_ns: 0,
        attributes: 0,
        file_id: md.ino(),
        uid: md.uid(),
        gid: md.gid(),
        link_target,
        security_descriptor: None,
    }
}

impl Source for LocalSource {
    fn root(&self) -> Result<SourceEntry, SourceError> {
        let md = fs::symlink_metadata(&self.root)
            .map_err(|e| io_err(&self.root.to_string_lossy(), e))?;
        let name = self
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".into());
        Ok(entry_from_metadata(name, &md, &self.root))
    }

    fn list(&self, dir: &str) -> Result<Vec<SourceEntry>, SourceError> {
        let p = self.full(dir);
        let mut out = Vec::new();
        for ent in fs::read_dir(&p).map_err(|e| io_err(dir, e))? {
            let ent = ent.map_err(|e| io_err(dir, e))?;
            let path = ent.path();
            // Entries that vanish between listing and stat are skipped.
            // DirEntry::metadata is fstatat on the open directory, not an
            // lstat of the full path (path walks were a tenth of an
            // unchanged backup's time).
            let Ok(md) = ent.metadata() else {
                continue;
            };
            let ft = md.file_type();
            if !(ft.is_dir() || ft.is_file() || ft.is_symlink()) {
                continue; // sockets, fifos, devices: not backed up
            }
            out.push(entry_from_metadata(
                ent.file_name().to_string_lossy().into_owned(),
                &md,
                &path,
            ));
        }
        Ok(out)
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + Send>, SourceError> {
        let f = File::open(self.full(path)).map_err(|e| io_err(path, e))?;
        Ok(Box::new(f))
    }

    fn xattrs(&self, path: &str) -> Result<Xattrs, SourceError> {
        read_xattrs(&self.full(path), path)
    }

    fn parallelism(&self) -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2)
    }

    fn describe(&self) -> String {
        self.root.to_string_lossy().into_owned()
    }
}

fn read_xattrs(full: &Path, rel: &str) -> Result<Xattrs, SourceError> {
    let names = match xattr::list(full) {
        Ok(names) => names,
        // A file system without xattrs: nothing to keep.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Xattrs::default()),
        Err(e) => return Err(io_err(rel, e)),
    };
    let mut out = Xattrs::default();
    for raw in names {
        let Some(name) = raw.to_str() else {
            // Tree names are JSON strings; a lossy name would restore as a
            // different attribute.
            out.skipped
                .push(format!("xattr {raw:?}: name is not UTF-8, not kept"));
            continue;
        };
        if name.starts_with("system.") && !KEPT_SYSTEM.contains(&name) {
            continue;
        }
        match xattr::get(full, name) {
            Ok(Some(v)) => {
                out.values.insert(name.to_string(), v);
            }
            // Removed since the listing.
            Ok(None) => {}
            // A security label the kernel will not show us is left out.
            Err(e)
                if name.starts_with("security.")
                    && e.kind() == std::io::ErrorKind::PermissionDenied => {}
            Err(e) => out.skipped.push(format!("xattr {name}: {e}, not kept")),
        }
    }
    Ok(out)
}
