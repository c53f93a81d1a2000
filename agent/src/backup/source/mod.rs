//! What a backup reads: a local directory or an SMB share, behind one trait.
//! Paths are relative to the source's root, `/`-separated, `""` = root.

pub mod local;
pub mod smb;

use std::collections::BTreeMap;
use std::io::Read;

use levee_proto::repo::NodeKind;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The file is open elsewhere with a sharing mode that forbids reading
    /// (a Windows lock): reported and skipped, not fatal.
    #[error("{0}: locked by another program (sharing violation), skipped")]
    Locked(String),
    #[error("{0}: access denied")]
    AccessDenied(String),
    #[error("{0}: not found")]
    NotFound(String),
    #[error("SMB: {0}")]
    Smb(String),
    #[error("invalid source {0:?}: {1}")]
    Invalid(String, String),
}

/// Metadata of one entry, as the source gives it.
#[derive(Debug, Clone)]
pub struct SourceEntry {
    pub name: String,
    pub kind: NodeKind,
    pub size: u64,
    pub mode: u32,
    pub mtime_ns: i64,
    pub atime_ns: i64,
    pub ctime_ns: i64,
    pub btime_ns: i64,
    pub attributes: u32,
    pub file_id: u64,
    pub uid: u32,
    pub gid: u32,
    pub link_target: Option<String>,
    pub security_descriptor: Option<Vec<u8>>,
}

/// Extended attributes read from one entry.
#[derive(Debug, Default)]
pub struct Xattrs {
    pub values: BTreeMap<String, Vec<u8>>,
    /// One message per attribute that could not be kept (name not UTF-8,
    /// read failed): the backup reports them and goes on.
    pub skipped: Vec<String>,
}

pub trait Source: Send + Sync {
    /// The root's metadata (its `name` is what the snapshot calls it).
    fn root(&self) -> Result<SourceEntry, SourceError>;
    /// Entries of a directory, in any order.
    fn list(&self, dir: &str) -> Result<Vec<SourceEntry>, SourceError>;
    /// A reader over a file's bytes.
    fn open(&self, path: &str) -> Result<Box<dyn Read + Send>, SourceError>;
    /// Extended attributes of an entry, symlinks not followed. Sources
    /// without them (SMB keeps its ACL in the security descriptor) have none.
    fn xattrs(&self, _path: &str) -> Result<Xattrs, SourceError> {
        Ok(Xattrs::default())
    }
    /// How many files are worth reading in parallel.
    fn parallelism(&self) -> usize;
    /// The source as the user named it, minus secrets.
    fn describe(&self) -> String;
}

pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Opens `local path` or `smb://user@host[:port]/share/path`.
pub fn open_source(spec: &str, smb_password: Option<&str>) -> Result<Box<dyn Source>, SourceError> {
    if spec.starts_with("smb://") {
        Ok(Box::new(smb::SmbSource::connect(spec, smb_password)?))
    } else {
        Ok(Box::new(local::LocalSource::new(spec)?))
    }
}
