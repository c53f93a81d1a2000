//! Where served files come from: a directory on disk, memory, or a chain.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};

use thiserror::Error;

/// Why a file cannot be served; each becomes a TFTP error packet.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error("file not found: {0}")]
    NotFound(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("cannot open {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// An open file to serve.
#[derive(Debug)]
pub enum TftpFile {
    /// A file on disk, read with `pread` one window at a time.
    Disk { file: File, len: u64 },
    /// Generated content.
    Memory(Arc<[u8]>),
}

impl TftpFile {
    pub fn len(&self) -> u64 {
        match self {
            TftpFile::Disk { len, .. } => *len,
            TftpFile::Memory(bytes) => bytes.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Something that can open files by the name a client asked for.
pub trait FileSource: Send + Sync + 'static {
    /// `path` is the client's requested name as sent. Err(NotFound/AccessDenied/..) becomes a TFTP error packet.
    fn open(&self, path: &str) -> Result<TftpFile, OpenError>;

    /// [`FileSource::open`] for a client at `peer` (the server calls this
    /// one): a source whose answer depends on who asks (a boot script with
    /// an enrollment token bound to the client's address) overrides it.
    fn open_from(
        &self,
        path: &str,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<TftpFile, OpenError> {
        let _ = peer;
        self.open(path)
    }
}

/// Splits a requested name into plain components. Backslashes count as
/// separators (some Windows-born boot loaders send them); a leading `/`
/// means the served root; `..` is refused outright.
fn components(path: &str) -> Result<Vec<&str>, OpenError> {
    let mut parts = Vec::new();
    for part in path.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(OpenError::AccessDenied(format!("{path:?} contains '..'"))),
            p if p.contains('\0') => {
                return Err(OpenError::AccessDenied(format!("{path:?} contains NUL")))
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(OpenError::NotFound(format!("{path:?} names no file")));
    }
    Ok(parts)
}

/// Files under one directory, confined to it: `..` is refused, absolute
/// names resolve inside the root, and symlinks whose target lies outside the
/// root are refused.
#[derive(Debug, Clone)]
pub struct DirSource {
    root: PathBuf,
}

impl DirSource {
    /// Serves `root`. The root is resolved on each open, so it may be created
    /// or replaced (for example by a symlink swap) while the server runs.
    pub fn new(root: impl Into<PathBuf>) -> DirSource {
        DirSource { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn io_error(path: &str, err: io::Error) -> OpenError {
    match err.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
            OpenError::NotFound(path.to_owned())
        }
        io::ErrorKind::PermissionDenied => {
            OpenError::AccessDenied(format!("{path:?}: permission denied"))
        }
        _ => OpenError::Io {
            path: path.to_owned(),
            source: err,
        },
    }
}

impl FileSource for DirSource {
    fn open(&self, path: &str) -> Result<TftpFile, OpenError> {
        let parts = components(path)?;
        // A root that does not exist (yet) holds no files: NotFound lets a
        // ChainSource go on to its next source.
        let root = self.root.canonicalize().map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => OpenError::NotFound(format!(
                "{path:?} (served root {} does not exist)",
                self.root.display()
            )),
            _ => OpenError::Io {
                path: format!("served root {}", self.root.display()),
                source: err,
            },
        })?;
        let mut candidate = root.clone();
        candidate.extend(parts);
        // canonicalize resolves every symlink; the result must still be under
        // the canonical root.
        let real = candidate
            .canonicalize()
            .map_err(|err| io_error(path, err))?;
        if !real.starts_with(&root) || real.components().any(|c| c == Component::ParentDir) {
            return Err(OpenError::AccessDenied(format!(
                "{path:?} leads outside the served root"
            )));
        }
        // `real` has no symlinks left; O_NOFOLLOW stops a last-moment swap of
        // the final component for one.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&real)
            .map_err(|err| io_error(path, err))?;
        let meta = file.metadata().map_err(|err| io_error(path, err))?;
        if !meta.is_file() {
            return Err(OpenError::AccessDenied(format!(
                "{path:?} is not a regular file"
            )));
        }
        Ok(TftpFile::Disk {
            file,
            len: meta.len(),
        })
    }
}

/// Generated files held in memory, by name (leading `/` ignored).
#[derive(Debug, Default)]
pub struct MemorySource {
    files: RwLock<HashMap<String, Arc<[u8]>>>,
}

impl MemorySource {
    pub fn new() -> MemorySource {
        MemorySource::default()
    }

    fn key(path: &str) -> Option<String> {
        components(path).ok().map(|parts| parts.join("/"))
    }

    /// Adds or replaces a file.
    pub fn insert(&self, path: &str, bytes: impl Into<Arc<[u8]>>) {
        if let Some(key) = Self::key(path) {
            // A poisoned lock only means a writer panicked; the map is still usable.
            let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
            files.insert(key, bytes.into());
        }
    }

    pub fn remove(&self, path: &str) {
        if let Some(key) = Self::key(path) {
            self.files
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
    }
}

impl FileSource for MemorySource {
    fn open(&self, path: &str) -> Result<TftpFile, OpenError> {
        let key = components(path)?.join("/");
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        files
            .get(&key)
            .map(|bytes| TftpFile::Memory(Arc::clone(bytes)))
            .ok_or_else(|| OpenError::NotFound(path.to_owned()))
    }
}

/// Several sources in order: the first that has the file wins. NotFound
/// falls through to the next; any other error stops the search.
pub struct ChainSource(Vec<Arc<dyn FileSource>>);

impl ChainSource {
    pub fn new(sources: Vec<Arc<dyn FileSource>>) -> ChainSource {
        ChainSource(sources)
    }
}

impl FileSource for ChainSource {
    fn open(&self, path: &str) -> Result<TftpFile, OpenError> {
        self.open_from(path, None)
    }

    fn open_from(
        &self,
        path: &str,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<TftpFile, OpenError> {
        for source in &self.0 {
            match source.open_from(path, peer) {
                Err(OpenError::NotFound(_)) => continue,
                other => return other,
            }
        }
        Err(OpenError::NotFound(path.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    fn read_all(file: TftpFile) -> Vec<u8> {
        match file {
            TftpFile::Disk { mut file, .. } => {
                let mut out = Vec::new();
                file.read_to_end(&mut out).expect("read");
                out
            }
            TftpFile::Memory(bytes) => bytes.to_vec(),
        }
    }

    fn setup() -> (tempfile::TempDir, DirSource) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("a.txt"), b"hello").expect("write");
        std::fs::write(root.join("sub/b.txt"), b"bee").expect("write");
        std::fs::write(dir.path().join("secret"), b"secret").expect("write");
        symlink(dir.path().join("secret"), root.join("out-link")).expect("symlink");
        symlink("sub/b.txt", root.join("in-link")).expect("symlink");
        symlink(dir.path(), root.join("out-dir")).expect("symlink");
        (dir, DirSource::new(root))
    }

    #[test]
    fn serves_files_inside_root() {
        let (_dir, src) = setup();
        assert_eq!(read_all(src.open("a.txt").expect("open")), b"hello");
        assert_eq!(read_all(src.open("/sub/b.txt").expect("absolute")), b"bee");
        assert_eq!(read_all(src.open("sub\\b.txt").expect("backslash")), b"bee");
        assert_eq!(read_all(src.open("./sub//b.txt").expect("dots")), b"bee");
        assert_eq!(
            read_all(src.open("in-link").expect("symlink inside")),
            b"bee"
        );
        assert_eq!(src.open("a.txt").expect("open").len(), 5);
    }

    #[test]
    fn refuses_escapes() {
        let (dir, src) = setup();
        assert!(matches!(
            src.open("../secret"),
            Err(OpenError::AccessDenied(_))
        ));
        assert!(matches!(
            src.open("sub/../../secret"),
            Err(OpenError::AccessDenied(_))
        ));
        assert!(matches!(
            src.open("sub/../a.txt"),
            Err(OpenError::AccessDenied(_))
        ));
        assert!(matches!(
            src.open("..\\secret"),
            Err(OpenError::AccessDenied(_))
        ));
        assert!(matches!(
            src.open("out-link"),
            Err(OpenError::AccessDenied(_))
        ));
        assert!(matches!(
            src.open("out-dir/secret"),
            Err(OpenError::AccessDenied(_))
        ));
        // An absolute path names a file inside the root, not the host's.
        let abs = dir.path().join("secret");
        assert!(matches!(
            src.open(&abs.to_string_lossy()),
            Err(OpenError::NotFound(_))
        ));
        assert!(matches!(
            src.open("/etc/passwd"),
            Err(OpenError::NotFound(_))
        ));
    }

    #[test]
    fn missing_and_odd_names() {
        let (_dir, src) = setup();
        assert!(matches!(src.open("nope"), Err(OpenError::NotFound(_))));
        assert!(matches!(src.open("a.txt/x"), Err(OpenError::NotFound(_))));
        assert!(matches!(src.open("/"), Err(OpenError::NotFound(_))));
        assert!(matches!(src.open("sub"), Err(OpenError::AccessDenied(_))));
        let gone = DirSource::new("/nonexistent/levee-tftp-root");
        assert!(matches!(gone.open("a"), Err(OpenError::NotFound(_))));
    }

    #[test]
    fn memory_and_chain() {
        let (_dir, disk) = setup();
        let mem = Arc::new(MemorySource::new());
        mem.insert("/boot.ipxe", b"#!ipxe\n".to_vec());
        mem.insert("a.txt", b"from memory".to_vec());
        assert_eq!(read_all(mem.open("boot.ipxe").expect("mem")), b"#!ipxe\n");
        let chain = ChainSource::new(vec![mem.clone(), Arc::new(disk)]);
        assert_eq!(
            read_all(chain.open("a.txt").expect("first wins")),
            b"from memory"
        );
        assert_eq!(
            read_all(chain.open("sub/b.txt").expect("falls through")),
            b"bee"
        );
        assert!(matches!(chain.open("nope"), Err(OpenError::NotFound(_))));
        // A source whose root is missing is skipped.
        let chain = ChainSource::new(vec![
            Arc::new(DirSource::new("/nonexistent/levee")),
            mem.clone(),
        ]);
        assert_eq!(
            read_all(chain.open("boot.ipxe").expect("second source")),
            b"#!ipxe\n"
        );
        // AccessDenied from an earlier source stops the chain.
        let (_dir2, disk2) = setup();
        let chain = ChainSource::new(vec![Arc::new(disk2), mem]);
        assert!(matches!(
            chain.open("out-link"),
            Err(OpenError::AccessDenied(_))
        ));
    }
}
